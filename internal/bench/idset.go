package bench

import (
	"bytes"
	"encoding/binary"
	"math/bits"
	"sync"
)

// idSet is the set of sequence numbers of one producer incarnation that
// reached a handler, as a bitmap grown in chunks. It tells exactly which
// messages were lost or handled twice. Safe for concurrent use.
type idSet struct {
	mu     sync.Mutex
	chunks [][]uint64 // chunk i holds seqs [i*chunkBits, (i+1)*chunkBits)
	low    uint64     // every seq in [1, low] is in the set
}

const chunkBits = 1 << 16

// add puts seq in the set and reports whether it was new.
func (s *idSet) add(seq uint64) bool {
	c, w, b := seq/chunkBits, seq%chunkBits/64, uint64(1)<<(seq%64)
	s.mu.Lock()
	defer s.mu.Unlock()
	for uint64(len(s.chunks)) <= c {
		s.chunks = append(s.chunks, nil)
	}
	if s.chunks[c] == nil {
		s.chunks[c] = make([]uint64, chunkBits/64)
	}
	if s.chunks[c][w]&b != 0 {
		return false
	}
	s.chunks[c][w] |= b
	return true
}

func (s *idSet) hasLocked(seq uint64) bool {
	c := seq / chunkBits
	if c >= uint64(len(s.chunks)) || s.chunks[c] == nil {
		return false
	}
	return s.chunks[c][seq%chunkBits/64]&(1<<(seq%64)) != 0
}

// contiguous returns the largest n such that every seq in [1, n] is in the
// set.
func (s *idSet) contiguous() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.hasLocked(s.low + 1) {
		s.low++
	}
	return s.low
}

// missing counts the seqs in [1, n] that are not in the set.
func (s *idSet) missing(n uint64) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var miss uint64
	for seq := uint64(1); seq <= n; seq++ {
		if !s.hasLocked(seq) {
			miss++
		}
	}
	return miss
}

// bitmap returns the set as little-endian bytes, bit seq%8 of byte seq/8
// set for every seq in it, for a worker process to report.
func (s *idSet) bitmap() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]byte, 0, len(s.chunks)*chunkBits/8)
	for _, c := range s.chunks {
		if c == nil {
			out = append(out, make([]byte, chunkBits/8)...)
			continue
		}
		for _, w := range c {
			out = binary.LittleEndian.AppendUint64(out, w)
		}
	}
	return bytes.TrimRight(out, "\x00")
}

// merge adds the seqs of bitmap b to the set and returns how many of them
// were in it already.
func (s *idSet) merge(b []byte) (overlap uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := 0; i < len(b); i += 8 {
		var buf [8]byte
		copy(buf[:], b[i:])
		w := binary.LittleEndian.Uint64(buf[:])
		if w == 0 {
			continue
		}
		seq := uint64(i) * 8
		c, k := seq/chunkBits, seq%chunkBits/64
		for uint64(len(s.chunks)) <= c {
			s.chunks = append(s.chunks, nil)
		}
		if s.chunks[c] == nil {
			s.chunks[c] = make([]uint64, chunkBits/64)
		}
		overlap += uint64(bits.OnesCount64(s.chunks[c][k] & w))
		s.chunks[c][k] |= w
	}
	return overlap
}
