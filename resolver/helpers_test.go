package resolver

import (
	"testing"
	"time"
)

// waitUntil polls cond until it holds or defaultTestTimeout passes.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(defaultTestTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", defaultTestTimeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
