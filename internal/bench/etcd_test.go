package bench

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestStartEtcd_FailureIsAnError checks that an embedded etcd that cannot
// start returns its error, and that the cleanup of the partial start does
// not panic in its place.
func TestStartEtcd_FailureIsAnError(t *testing.T) {
	t.Setenv("TMPDIR", filepath.Join(t.TempDir(), "missing"))
	e, err := startEtcd(t.Context())
	if err == nil {
		e.close()
		t.Fatal("startEtcd() with no temporary directory = nil error, want one")
	}
	if !strings.Contains(err.Error(), "missing") {
		t.Errorf("startEtcd() = %v, want the temporary directory's error", err)
	}
}
