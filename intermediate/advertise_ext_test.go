package intermediate_test

import (
	"context"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	adminv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/admin/v1"
	"github.com/butterfly-mesh/butterfly/intermediate"
	"github.com/butterfly-mesh/butterfly/internal/logtest"
	"github.com/butterfly-mesh/butterfly/internal/tcpproxy"
	"github.com/butterfly-mesh/butterfly/registry"
)

// Log messages of the check of the advertised address.
const (
	msgAdvertiseWrong     = "intermediate: the advertised address reaches another server; leaving"
	msgAdvertiseUnchecked = "intermediate: could not check who answers at the advertised address; serving on"
	msgAdvertiseSelf      = "intermediate: the advertised address reaches this server"
)

// served is a Server started by serveAdvertised, with what it logs.
type served struct {
	srv  *intermediate.Server
	logs *logtest.Recorder
	done chan error
}

// serveAdvertised starts intermediate instance of svc on lis (nil: a
// listener of its own) and r's etcd, registered at advertise, and waits
// until it is registered.
func serveAdvertised(t *testing.T, r *rig, svc, instance string, lis net.Listener, advertise string, opts ...intermediate.Option) *served {
	t.Helper()
	s := &served{logs: &logtest.Recorder{}, done: make(chan error, 1)}
	base := []intermediate.Option{
		intermediate.WithPrefix(prefix),
		intermediate.WithLeaseTTL(2 * time.Second),
		intermediate.WithStopTimeout(300 * time.Millisecond),
		intermediate.WithLogger(s.logs.Logger()),
		intermediate.WithAdvertiseAddr(advertise),
	}
	srv, err := intermediate.New(r.cli, svc, instance, append(base, opts...)...)
	if err != nil {
		t.Fatalf("New(%s) = %v", instance, err)
	}
	s.srv = srv
	if lis == nil {
		lis = listen(t)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { s.done <- srv.Serve(ctx, lis) }()
	t.Cleanup(func() {
		cancel()
		s.wait(t)
	})
	select {
	case <-srv.Ready():
	case err := <-s.done:
		s.done <- err
		t.Fatalf("Serve(%s) = %v before it was registered", instance, err)
	case <-time.After(defaultTestTimeout):
		t.Fatalf("Serve(%s) not registered in time", instance)
	}
	return s
}

// wait returns Serve's result.
func (s *served) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-s.done:
		s.done <- err
		return err
	case <-time.After(defaultTestTimeout):
		t.Fatalf("Serve(%s) did not return", s.srv.Instance())
		return nil
	}
}

// listen returns a listener on a free port of 127.0.0.1.
func listen(t *testing.T) net.Listener {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("net.Listen() = %v", err)
	}
	return lis
}

// serving reports whether Serve still runs.
func (s *served) serving() bool {
	select {
	case err := <-s.done:
		s.done <- err
		return false
	default:
		return true
	}
}

// registered reports whether instance of svc has its key in etcd.
func (r *rig) registered(svc, instance string) bool {
	r.t.Helper()
	resp, err := r.cli.Get(r.ctx(), registry.ServiceKey(prefix, svc, instance))
	if err != nil {
		r.t.Fatalf("etcd get %s/%s = %v", svc, instance, err)
	}
	return len(resp.Kvs) == 1
}

// TestServe_AdvertisedAddressOfAnother checks that a server registered at
// the address of another instance (a neighbour's --advertise copied) sees
// that instance answer there, removes its registration and returns an
// *AdvertiseError naming who answers, while the instance it named serves
// on.
func TestServe_AdvertisedAddressOfAnother(t *testing.T) {
	for _, tc := range []struct {
		name, service, instance string
	}{
		{"another instance", service, "i2"},
		{"another service", "other", "i1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t)
			s := serveAdvertised(t, r, tc.service, tc.instance, nil, r.srv.Addr())
			err := s.wait(t)
			var ae *intermediate.AdvertiseError
			if !errors.As(err, &ae) || *ae != (intermediate.AdvertiseError{Addr: r.srv.Addr(), Service: service, Instance: "i1", Epoch: r.srv.Epoch()}) {
				t.Fatalf("Serve(%s/%s at i1's address) = %v, want an *AdvertiseError saying %s/i1 epoch %d answers at %s",
					tc.service, tc.instance, err, service, r.srv.Epoch(), r.srv.Addr())
			}
			if r.registered(tc.service, tc.instance) {
				t.Errorf("registration of %s/%s after Serve returned: present, want removed", tc.service, tc.instance)
			}
			if attrs := s.logs.Attrs(msgAdvertiseWrong); len(attrs) != 1 || attrs[0]["addr"] != r.srv.Addr() {
				t.Errorf("logged %q %v, want once, with addr %s", msgAdvertiseWrong, attrs, r.srv.Addr())
			}

			// The instance it named serves on, and is still registered.
			select {
			case err := <-r.done:
				r.done <- err
				t.Fatalf("Serve(i1) = %v, want it serving on", err)
			default:
			}
			if !r.registered(service, "i1") {
				t.Errorf("registration of i1: absent, want present")
			}
			if st, err := adminv1.NewAdminServiceClient(r.conn).GetStatus(r.ctx(), &adminv1.GetStatusRequest{}); err != nil || st.GetDraining() {
				t.Errorf("GetStatus(i1) = %v, %v, want i1 serving, not draining", st, err)
			}
		})
	}
}

// TestServe_AdvertisedAddressUnchecked checks that a server whose
// advertised address it cannot read from its own host says so once, and
// why, and serves on, registered.
func TestServe_AdvertisedAddressUnchecked(t *testing.T) {
	for _, tc := range []struct {
		name string
		addr func(t *testing.T) string
		// tlsWhy starts the warning's tls, when the check names a TLS
		// disagreement.
		tlsWhy string
	}{
		{"nothing listens", func(t *testing.T) string {
			lis := listen(t)
			addr := lis.Addr().String()
			lis.Close()
			return addr
		}, ""},
		{"TLS the check cannot complete", func(t *testing.T) string {
			srv := httptest.NewUnstartedServer(http.NotFoundHandler())
			srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the check's handshakes fail, as they should
			srv.StartTLS()
			t.Cleanup(srv.Close)
			return srv.Listener.Addr().String()
		}, "the instance speaks TLS and this client plaintext gRPC"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t)
			addr := tc.addr(t)
			s := serveAdvertised(t, r, service, "i2", nil, addr, intermediate.WithAdvertiseCheckTimeout(300*time.Millisecond))
			waitFor(t, "the warning that the check could not be made", func() bool { return s.logs.Has(msgAdvertiseUnchecked) })
			attrs := s.logs.Attrs(msgAdvertiseUnchecked)
			if len(attrs) != 1 || attrs[0]["addr"] != addr || attrs[0]["err"] == nil {
				t.Errorf("logged %q %v, want once, with addr %s and err", msgAdvertiseUnchecked, attrs, addr)
			}
			if why, _ := attrs[0]["tls"].(string); !strings.HasPrefix(why, tc.tlsWhy) || (tc.tlsWhy == "") != (why == "") {
				t.Errorf("logged %q with tls %q, want %q", msgAdvertiseUnchecked, why, tc.tlsWhy)
			}
			if !s.serving() {
				t.Fatalf("Serve(i2) = %v after the check, want it serving on", s.wait(t))
			}
			if !r.registered(service, "i2") {
				t.Errorf("registration of i2 after the check: absent, want present")
			}
			if s.logs.Has(msgAdvertiseWrong) {
				t.Errorf("logged %q, want not", msgAdvertiseWrong)
			}
		})
	}
}

// TestServe_AdvertisedAddressReachesItself checks that a server advertised
// at a proxy in front of itself finds itself there and says nothing above
// debug.
func TestServe_AdvertisedAddressReachesItself(t *testing.T) {
	r := newRig(t)
	lis := listen(t)
	px, err := tcpproxy.Listen("127.0.0.1:0", lis.Addr().String())
	if err != nil {
		t.Fatalf("tcpproxy.Listen() = %v", err)
	}
	t.Cleanup(func() { px.Close() })
	s := serveAdvertised(t, r, service, "i2", lis, px.Addr())
	waitFor(t, "the check to find the server itself", func() bool { return s.logs.Has(msgAdvertiseSelf) })
	if s.logs.Has(msgAdvertiseUnchecked) || s.logs.Has(msgAdvertiseWrong) {
		t.Errorf("logged %q or %q, want neither", msgAdvertiseUnchecked, msgAdvertiseWrong)
	}
	if !s.serving() {
		t.Fatalf("Serve(i2) = %v after the check, want it serving on", s.wait(t))
	}
	if !r.registered(service, "i2") {
		t.Errorf("registration of i2 after the check: absent, want present")
	}
}
