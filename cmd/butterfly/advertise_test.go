package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/butterfly-mesh/butterfly/internal/etcdtest"
	"github.com/butterfly-mesh/butterfly/internal/tlsutil"
	"github.com/butterfly-mesh/butterfly/registry"
)

// TestIntermediateCommand_AdvertiseOfAnother checks that `butterfly
// intermediate` given the --advertise of another instance, over mutual TLS
// with the files of `butterfly certs`, finds that instance answering there,
// removes its registration and ends with one line naming --advertise and
// who answers, not a usage error (exit 1); the other instance serves on.
func TestIntermediateCommand_AdvertiseOfAnother(t *testing.T) {
	etc := etcdtest.Start(t)
	cli := etc.Client(t)
	dir := filepath.Join(t.TempDir(), "certs")
	if out, err := executeCommand(t, "certs", "--dir", dir, "--hosts", "127.0.0.1"); err != nil {
		t.Fatalf("butterfly certs = %v; output:\n%s", err, out)
	}
	common := []string{"--listen", "127.0.0.1:0", "--stop-timeout", "300ms",
		"--tls-cert", filepath.Join(dir, tlsutil.ServerFile), "--tls-key", filepath.Join(dir, tlsutil.ServerKeyFile),
		"--tls-ca", filepath.Join(dir, tlsutil.CAFile),
		"--etcd-endpoints", etc.Endpoint(), "--prefix", "adv", "--log-level", "error"}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	ictx, stop := context.WithCancel(ctx)
	iout, idone := startCLI(ictx, append([]string{"intermediate", "--name", "i1"}, common...)...)
	i1Exited := false
	defer func() {
		stop()
		if i1Exited {
			return
		}
		if err := <-idone; err != nil {
			t.Errorf("butterfly intermediate --name i1 = %v; output:\n%s", err, iout.String())
		}
	}()
	waitServing(ctx, t, iout, idone)
	var i1 struct {
		Addr  string `json:"addr"`
		Epoch uint64 `json:"epoch"`
	}
	if err := json.Unmarshal([]byte(strings.TrimSpace(iout.String())), &i1); err != nil || i1.Addr == "" {
		t.Fatalf("serving line of i1 %q: %v, want its addr", iout.String(), err)
	}

	out, done := startCLI(ctx, append([]string{"intermediate", "--name", "i2", "--advertise", i1.Addr}, common...)...)
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		t.Fatalf("butterfly intermediate --name i2 --advertise %s (i1's address) still serving; output:\n%s", i1.Addr, out.String())
	}
	want := fmt.Sprintf("--advertise %s reaches another server (it answers as intermediate/i1 epoch %d), not this instance", i1.Addr, i1.Epoch)
	var ue *usageError
	if err == nil || !strings.HasPrefix(err.Error(), want) || strings.Contains(errorLine(err), "\n") || errors.As(err, &ue) {
		t.Fatalf("butterfly intermediate --name i2 --advertise %s = %v, want one line starting %q, not a usage error; output:\n%s", i1.Addr, err, want, out.String())
	}
	key := registry.ServiceKey("adv", registry.DefaultService, "i2")
	if resp, err := cli.Get(ctx, key); err != nil || len(resp.Kvs) != 0 {
		t.Errorf("etcd get %s after i2 exited = %v, %v, want no key", key, resp, err)
	}
	if resp, err := cli.Get(ctx, registry.ServiceKey("adv", registry.DefaultService, "i1")); err != nil || len(resp.Kvs) != 1 {
		t.Errorf("etcd get i1's key after i2 exited = %v, %v, want i1's registration", resp, err)
	}
	select {
	case err := <-idone:
		i1Exited = true
		t.Errorf("butterfly intermediate --name i1 = %v after i2 exited, want it serving on; output:\n%s", err, iout.String())
	default:
	}
}
