package bufpool

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestPool_Sizes checks that Get returns the length asked for, with a
// capacity of the tier's power of two, and a plain buffer outside the tiers.
func TestPool_Sizes(t *testing.T) {
	p := New()
	for _, tc := range []struct {
		size, wantCap int
	}{
		{0, 0},
		{1, 256},
		{256, 256},
		{257, 512},
		{18 << 10, 32 << 10},
		{4 << 20, 4 << 20},
		{4<<20 + 1, 4<<20 + 1},
	} {
		bp := p.Get(tc.size)
		if len(*bp) != tc.size || cap(*bp) != tc.wantCap {
			t.Errorf("Get(%d) = len %d cap %d, want len %d cap %d", tc.size, len(*bp), cap(*bp), tc.size, tc.wantCap)
		}
		p.Put(bp)
	}
}

// TestPool_Reuse checks that a buffer put back is handed out again for a
// size of its tier, without being zeroed, and never for a larger size.
func TestPool_Reuse(t *testing.T) {
	p := New()
	bp := p.Get(1000)
	for i := range *bp {
		(*bp)[i] = 0xAB
	}
	p.Put(bp)
	// sync.Pool may drop what it holds (always, under the race detector
	// some of the time): reuse is checked only when it happens.
	got := p.Get(1024)
	if got == bp {
		if (*got)[0] != 0xAB {
			t.Errorf("reused buffer[0] = %#x, want %#x (not zeroed)", (*got)[0], 0xAB)
		}
	}
	if cap(*got) < 1024 {
		t.Errorf("Get(1024) cap = %d, want at least 1024", cap(*got))
	}
	p.Put(got)
	if big := p.Get(1025); cap(*big) < 1025 {
		t.Errorf("Get(1025) cap = %d, want at least 1025", cap(*big))
	}
}

// TestPool_PutForeign checks that a buffer of a capacity that is not a
// power of two goes to the tier it can serve in full.
func TestPool_PutForeign(t *testing.T) {
	p := New()
	for _, c := range []int{100, 300, 700, 5 << 20} {
		b := make([]byte, 10, c)
		p.Put(&b)
	}
	for _, size := range []int{256, 512} {
		if bp := p.Get(size); cap(*bp) < size || len(*bp) != size {
			t.Errorf("Get(%d) = len %d cap %d, want len %d and cap at least that", size, len(*bp), cap(*bp), size)
		}
	}
}
