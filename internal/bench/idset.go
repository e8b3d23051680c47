package bench

import "sync"

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
