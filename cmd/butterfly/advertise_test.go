package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/butterfly-mesh/butterfly/intermediate"
	"github.com/butterfly-mesh/butterfly/internal/etcdtest"
	"github.com/butterfly-mesh/butterfly/internal/logtest"
	"github.com/butterfly-mesh/butterfly/internal/tlsutil"
	"github.com/butterfly-mesh/butterfly/registry"
)

// TestIntermediateCommand_AdvertiseOfAnother checks that `butterfly
// intermediate` started elsewhere with the command line of a running
// instance, its --name and --advertise, over mutual TLS with the files of
// `butterfly certs`, finds that instance answering there and ends with one
// line naming --advertise and who answers, not a usage error (exit 1),
// without registering: the running instance is not fenced and its key not
// written.
func TestIntermediateCommand_AdvertiseOfAnother(t *testing.T) {
	etc := etcdtest.Start(t)
	cli := etc.Client(t)
	dir := filepath.Join(t.TempDir(), "certs")
	if out, err := executeCommand(t, "certs", "--dir", dir, "--hosts", "127.0.0.1"); err != nil {
		t.Fatalf("butterfly certs = %v; output:\n%s", err, out)
	}
	common := []string{"--name", "i1", "--listen", "127.0.0.1:0", "--stop-timeout", "300ms",
		"--tls-cert", filepath.Join(dir, tlsutil.ServerFile), "--tls-key", filepath.Join(dir, tlsutil.ServerKeyFile),
		"--tls-ca", filepath.Join(dir, tlsutil.CAFile),
		"--etcd-endpoints", etc.Endpoint(), "--prefix", "adv", "--log-level", "error"}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	ictx, stop := context.WithCancel(ctx)
	iout, idone := startCLI(ictx, append([]string{"intermediate"}, common...)...)
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
	key := registry.ServiceKey("adv", registry.DefaultService, "i1")
	before, err := cli.Get(ctx, key)
	if err != nil || len(before.Kvs) != 1 {
		t.Fatalf("etcd get %s = %v, %v, want i1's registration", key, before, err)
	}

	out, done := startCLI(ctx, append([]string{"intermediate", "--advertise", i1.Addr}, common...)...)
	select {
	case err = <-done:
	case <-ctx.Done():
		t.Fatalf("butterfly intermediate --name i1 --advertise %s (i1's address) still running; output:\n%s", i1.Addr, out.String())
	}
	want := fmt.Sprintf("--advertise %s reaches another process of instance i1 (it answers as intermediate/i1 epoch %d): nothing was registered", i1.Addr, i1.Epoch)
	var ue *usageError
	if err == nil || !strings.HasPrefix(err.Error(), want) || strings.Contains(errorLine(err), "\n") || errors.As(err, &ue) {
		t.Fatalf("butterfly intermediate --name i1 --advertise %s = %v, want one line starting %q, not a usage error; output:\n%s", i1.Addr, err, want, out.String())
	}
	if strings.Contains(out.String(), `"event":"serving"`) {
		t.Errorf("butterfly intermediate --advertise %s printed %q, want no serving event", i1.Addr, out.String())
	}
	after, err := cli.Get(ctx, key)
	if err != nil || len(after.Kvs) != 1 || after.Kvs[0].ModRevision != before.Kvs[0].ModRevision {
		t.Errorf("etcd get %s after the second i1 exited = %v, %v, want i1's registration untouched (mod revision %d)", key, after, err, before.Kvs[0].ModRevision)
	}
	select {
	case err := <-idone:
		i1Exited = true
		t.Errorf("butterfly intermediate --name i1 = %v after the second exited, want it serving on; output:\n%s", err, iout.String())
	default:
	}
}

// TestAdvertiseCheckCreds_FindsItself checks that the credentials with which
// an intermediate checks its --advertise find it at its own address, with
// no warning, whatever its TLS set-up: without a CA that verifies its
// certificate (server-only TLS with a private CA), with a certificate that
// names the host by DNS alone while the address is an IP, and under mutual
// TLS, where it presents its own certificate.
func TestAdvertiseCheckCreds_FindsItself(t *testing.T) {
	for _, tc := range []struct {
		name  string
		hosts []string
		// clientCA gives the intermediate --tls-ca: mutual TLS.
		clientCA bool
	}{
		{name: "server-only TLS with a private CA", hosts: []string{"127.0.0.1"}},
		{name: "a certificate for a DNS name only", hosts: []string{"localhost"}, clientCA: true},
		{name: "mutual TLS", hosts: []string{"127.0.0.1"}, clientCA: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pki := t.TempDir()
			if err := tlsutil.GenerateDev(pki, tc.hosts); err != nil {
				t.Fatalf("GenerateDev(%v) = %v", tc.hosts, err)
			}
			f := tlsFlags{server: true, files: tlsutil.Files{Cert: filepath.Join(pki, tlsutil.ServerFile), Key: filepath.Join(pki, tlsutil.ServerKeyFile)}}
			if tc.clientCA {
				f.files.CA = filepath.Join(pki, tlsutil.CAFile)
			}
			lis, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatalf("net.Listen() = %v", err)
			}
			addr := lis.Addr().String()
			sopt, err := f.serverOption(t.Context(), slog.New(slog.DiscardHandler), addr)
			if err != nil {
				lis.Close()
				t.Fatalf("serverOption() = %v", err)
			}
			creds, err := f.advertiseCheckCreds(t.Context())
			if err != nil {
				lis.Close()
				t.Fatalf("advertiseCheckCreds() = %v", err)
			}
			var logs logtest.Buffer
			srv, err := intermediate.New(etcdtest.Start(t).Client(t), registry.DefaultService, "i1",
				intermediate.WithPrefix("adv"),
				intermediate.WithStopTimeout(300*time.Millisecond),
				intermediate.WithLogger(slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))),
				intermediate.WithGRPCServerOptions(sopt),
				intermediate.WithAdvertiseCheck(creds),
				intermediate.WithAdvertiseAddr(addr))
			if err != nil {
				lis.Close()
				t.Fatalf("intermediate.New() = %v", err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- srv.Serve(ctx, lis) }()
			defer func() {
				cancel()
				<-done
			}()

			const self = `msg="intermediate: the advertised address reaches this server"`
			deadline := time.After(10 * time.Second)
			for !strings.Contains(logs.String(), self) && !strings.Contains(logs.String(), "level=WARN") {
				select {
				case err := <-done:
					done <- err
					t.Fatalf("Serve() = %v before the check was made; log:\n%s", err, logs.String())
				case <-deadline:
					t.Fatalf("the check neither found the intermediate nor warned; log:\n%s", logs.String())
				case <-time.After(10 * time.Millisecond):
				}
			}
			if got := logs.String(); !strings.Contains(got, self) || strings.Contains(got, "level=WARN") {
				t.Errorf("log of an intermediate advertised at its own address:\n%s\nwant %s and no warning", got, self)
			}
		})
	}
}

// TestIntermediateFlags_AdvertiseEveryAddress checks that an --advertise
// naming every address (0.0.0.0, ::), which others cannot dial,
// is a usage error naming it.
func TestIntermediateFlags_AdvertiseEveryAddress(t *testing.T) {
	for _, adv := range []string{"0.0.0.0:7001", "[::]:7001"} {
		_, err := executeCommand(t, "intermediate", "--name", "i1", "--listen", "127.0.0.1:0", "--advertise", adv)
		var ue *usageError
		if want := fmt.Sprintf("--advertise %q names every address", adv); !errors.As(err, &ue) || !strings.Contains(err.Error(), want) {
			t.Errorf("butterfly intermediate --advertise %s = %v, want a usage error containing %q", adv, err, want)
		}
	}
}
