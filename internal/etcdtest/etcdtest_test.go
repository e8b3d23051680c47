package etcdtest

import (
	"context"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, LeakOptions()...)
}

// TestServer_RestartKeepsData checks that a restarted server serves the data
// written before it stopped.
func TestServer_RestartKeepsData(t *testing.T) {
	srv := Start(t)
	cli := srv.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "k", "v"); err != nil {
		t.Fatalf("Put() = %v", err)
	}
	srv.Stop(t)
	srv.Restart(t)
	resp, err := cli.Get(ctx, "k")
	if err != nil {
		t.Fatalf("Get() after restart = %v", err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
		t.Fatalf("Get(k) after restart = %v, want v", resp.Kvs)
	}
	srv.Compact(t, cli)
}
