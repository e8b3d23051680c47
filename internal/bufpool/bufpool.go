package bufpool

import (
	"math/bits"
	"sync"

	"google.golang.org/grpc/mem"
)

const (
	minShift = 8  // 256 B, the smallest tier
	maxShift = 22 // 4 MiB, the largest tier
)

// Pool is a mem.BufferPool of power-of-two tiers. Buffers above the largest
// tier are allocated on Get and dropped on Put.
type Pool struct {
	tiers [maxShift - minShift + 1]sync.Pool // tiers[i] holds buffers of capacity at least 1<<(minShift+i)
}

var _ mem.BufferPool = (*Pool)(nil)

// New returns an empty pool.
func New() *Pool { return &Pool{} }

// Get returns a buffer of length size. Its contents are whatever the
// buffer last held: the caller writes before it reads.
func (p *Pool) Get(size int) *[]byte {
	if size <= 0 || size > 1<<maxShift {
		b := make([]byte, max(size, 0))
		return &b
	}
	i := tierFor(size)
	if bp, ok := p.tiers[i].Get().(*[]byte); ok {
		*bp = (*bp)[:size]
		return bp
	}
	b := make([]byte, size, 1<<(minShift+i))
	return &b
}

// Put returns a buffer to the tier of the largest power of two its capacity
// holds; one below the smallest tier or above the largest is dropped.
func (p *Pool) Put(bp *[]byte) {
	c := cap(*bp)
	if c < 1<<minShift || c > 1<<maxShift {
		return
	}
	i := bits.Len(uint(c)) - 1 - minShift
	*bp = (*bp)[:0]
	p.tiers[i].Put(bp)
}

// tierFor returns the tier of the smallest power of two not below size, for
// 0 < size <= 1<<maxShift.
func tierFor(size int) int {
	s := bits.Len(uint(size - 1))
	if s < minShift {
		return 0
	}
	return s - minShift
}
