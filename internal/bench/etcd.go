package bench

import (
	"context"
	"fmt"
	"os"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/butterfly-mesh/butterfly/internal/embedetcd"
)

// benchEtcd is the embedded etcd of a run, its data directory and a client.
type benchEtcd struct {
	dir string
	srv *embedetcd.Server
	cli *clientv3.Client
}

// startEtcd starts an embedded etcd on two free loopback ports, in a new
// temporary directory, and connects to it.
func startEtcd(ctx context.Context) (_ *benchEtcd, err error) {
	// e, not the result, is what a failed start cleans up: an error return
	// sets the result to nil before the deferred call runs.
	e := &benchEtcd{}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	if e.dir, err = os.MkdirTemp("", "butterfly-bench-etcd-"); err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	e.srv, err = embedetcd.StartOnLoopback(ctx, embedetcd.Config{DataDir: e.dir, LogLevel: "off"})
	if err != nil {
		return nil, fmt.Errorf("bench: embedded etcd: %w", err)
	}
	e.cli, err = clientv3.New(clientv3.Config{Endpoints: e.srv.ClientEndpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return nil, fmt.Errorf("bench: etcd client: %w", err)
	}
	return e, nil
}

// endpoints are the etcd's client URLs.
func (e *benchEtcd) endpoints() []string { return e.srv.ClientEndpoints() }

// close closes the client, stops etcd and removes its directory. Safe on a
// partial start.
func (e *benchEtcd) close() {
	if e.cli != nil {
		e.cli.Close()
	}
	if e.srv != nil {
		e.srv.Close()
	}
	if e.dir != "" {
		os.RemoveAll(e.dir)
	}
}
