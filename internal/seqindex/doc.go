// Package seqindex keeps values under increasing sequence numbers without a
// map: what the data path holds between a send and its acknowledgement.
// Values are appended at the tail in sequence order and removed in any order,
// one at a time or by inclusive ranges, as acknowledgements arrive.
//
//	var unacked seqindex.Index[*outMsg]
//	unacked.Push(seq, m)
//	unacked.RemoveRange(first, last, func(seq uint64, m *outMsg) { settle(m) })
//	for seq, m := range unacked.All() { ... }
//
// The index is a slice of slots in sequence order. A removed slot stays as a
// tombstone until the head passes it or tombstones outnumber the live slots;
// then the live slots are copied down, so the backing array stays within a
// small multiple of the largest number of live values. A lookup is one
// offset computation when the sequence numbers are contiguous, else a binary
// search. An Index is not safe for concurrent use.
//
// A Ring holds values whose seqs arrive in any order within a bounded span
// (a producer's messages reaching a consumer through several
// intermediates): a slot per seq from the lowest held to the highest,
// addressed by offset, the array doubling as the span grows up to a limit
// the caller sets.
package seqindex
