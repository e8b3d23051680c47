package freeport

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"
)

// TestPair checks that Pair gives start two distinct loopback addresses
// nothing listens on, picks again while start finds one taken, at most
// three times, and stops at any other result.
func TestPair(t *testing.T) {
	taken := fmt.Errorf("listen: %w", syscall.EADDRINUSE)
	other := errors.New("bad config")
	for _, tc := range []struct {
		name    string
		results []error // start's result at each call
		calls   int
		want    error
	}{
		{"free", []error{nil}, 1, nil},
		{"taken once", []error{taken, nil}, 2, nil},
		{"taken every time", []error{taken, taken, taken, nil}, 3, taken},
		{"another error", []error{other, nil}, 1, other},
	} {
		calls := 0
		err := Pair(func(a, b string) error {
			if a == b || !strings.HasPrefix(a, "127.0.0.1:") || !strings.HasPrefix(b, "127.0.0.1:") {
				t.Errorf("%s: start(%s, %s), want two distinct loopback addresses", tc.name, a, b)
			}
			for _, addr := range []string{a, b} {
				l, err := net.Listen("tcp", addr)
				if err != nil {
					t.Errorf("%s: %s is not free: %v", tc.name, addr, err)
					continue
				}
				l.Close()
			}
			calls++
			return tc.results[calls-1]
		})
		if calls != tc.calls || !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
			t.Errorf("%s: Pair() = %v after %d calls, want %v after %d", tc.name, err, calls, tc.want, tc.calls)
		}
	}
}
