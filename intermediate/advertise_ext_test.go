package intermediate_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/types/known/timestamppb"

	adminv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/admin/v1"
	"github.com/butterfly-mesh/butterfly/intermediate"
	"github.com/butterfly-mesh/butterfly/internal/etcdtest"
	"github.com/butterfly-mesh/butterfly/internal/logtest"
	"github.com/butterfly-mesh/butterfly/internal/tcpproxy"
	"github.com/butterfly-mesh/butterfly/internal/tlsutil"
	"github.com/butterfly-mesh/butterfly/registry"
)

// Log messages of the check of the advertised address.
const (
	msgAdvertiseWrong     = "intermediate: the advertised address reaches another server; not registering"
	msgAdvertiseUnchecked = "intermediate: could not check who answers at the advertised address; registering anyway"
	msgAdvertiseSelf      = "intermediate: the advertised address reaches this server"
)

// served is a Server started by startAdvertised, with what it logs.
type served struct {
	srv  *intermediate.Server
	logs *logtest.Recorder
	done chan error
}

// startAdvertised starts intermediate instance of svc on lis (nil: a
// listener of its own) and r's etcd, advertised at advertise, and returns
// at once.
func startAdvertised(t *testing.T, r *rig, svc, instance string, lis net.Listener, advertise string, opts ...intermediate.Option) *served {
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
	return s
}

// serveAdvertised is startAdvertised, and waits until the server is
// registered.
func serveAdvertised(t *testing.T, r *rig, svc, instance string, lis net.Listener, advertise string, opts ...intermediate.Option) *served {
	t.Helper()
	s := startAdvertised(t, r, svc, instance, lis, advertise, opts...)
	select {
	case <-s.srv.Ready():
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

// listen returns a listener on a free port of 127.0.0.1.
func listen(t *testing.T) net.Listener {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("net.Listen() = %v", err)
	}
	return lis
}

// healthOnly starts a gRPC server in plaintext that serves the health
// service alone, and returns its address.
func healthOnly(t *testing.T) string {
	t.Helper()
	lis := listen(t)
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = gs.Serve(lis)
	}()
	t.Cleanup(func() {
		gs.Stop()
		<-served
	})
	return lis.Addr().String()
}

// tlsServer returns the gRPC server option of a TLS server holding the
// server certificate of a new development PKI, without client
// certificates.
func tlsServer(t *testing.T) grpc.ServerOption {
	t.Helper()
	pki := t.TempDir()
	if err := tlsutil.GenerateDev(pki, []string{"127.0.0.1"}); err != nil {
		t.Fatalf("GenerateDev() = %v", err)
	}
	cfg, err := tlsutil.ServerConfig(t.Context(), tlsutil.Files{
		Cert: filepath.Join(pki, tlsutil.ServerFile),
		Key:  filepath.Join(pki, tlsutil.ServerKeyFile),
	}, nil)
	if err != nil {
		t.Fatalf("tlsutil.ServerConfig() = %v", err)
	}
	return grpc.Creds(credentials.NewTLS(cfg))
}

// registeredKey returns the key of instance of svc and the revision of
// the store when it was read.
func (r *rig) registeredKey(svc, instance string) (key string, rev int64) {
	r.t.Helper()
	key = registry.ServiceKey(prefix, svc, instance)
	resp, err := r.cli.Get(r.ctx(), key)
	if err != nil {
		r.t.Fatalf("etcd get %s = %v", key, err)
	}
	return key, resp.Header.Revision
}

// writesSince returns the revisions after rev, up to now, at which key was
// put or deleted, reading the key at every revision in between.
func (r *rig) writesSince(key string, rev int64) []int64 {
	r.t.Helper()
	at := func(rev int64) (modRev, storeRev int64) {
		resp, err := r.cli.Get(r.ctx(), key, clientv3.WithRev(rev))
		if err != nil {
			r.t.Fatalf("etcd get %s at revision %d = %v", key, rev, err)
		}
		if len(resp.Kvs) == 1 {
			modRev = resp.Kvs[0].ModRevision
		}
		return modRev, resp.Header.Revision
	}
	last, now := at(rev)
	var writes []int64
	for rev++; rev <= now; rev++ {
		mod, _ := at(rev)
		if mod != last {
			writes = append(writes, rev)
		}
		last = mod
	}
	return writes
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

// TestServe_AdvertisedAtAnotherServer checks that a server whose advertised
// address reaches another server (a neighbour's --advertise copied with or
// without its name, a gRPC server that is not an intermediate, a plaintext
// server for a TLS one) returns an *AdvertiseError naming who answers
// without registering: it never announced itself ready, never wrote its
// key, and the instance it found serves on, not fenced.
func TestServe_AdvertisedAtAnotherServer(t *testing.T) {
	for _, tc := range []struct {
		name, service, instance string
		// addr is the address the server advertises: i1's when nil.
		addr func(t *testing.T) string
		opts []intermediate.Option
		// want is the error's, with Addr set by the test; Epoch is i1's
		// when Instance is i1.
		want intermediate.AdvertiseError
	}{
		{name: "another process of the same instance", service: service, instance: "i1",
			want: intermediate.AdvertiseError{Service: service, Instance: "i1"}},
		{name: "another instance", service: service, instance: "i2",
			want: intermediate.AdvertiseError{Service: service, Instance: "i1"}},
		{name: "another service", service: "other", instance: "i1",
			want: intermediate.AdvertiseError{Service: service, Instance: "i1"}},
		{name: "a gRPC server without AdminService", service: service, instance: "i2", addr: healthOnly,
			want: intermediate.AdvertiseError{Reason: "it is not a Butterfly intermediate (it does not serve butterfly.admin.v1.AdminService)"}},
		{name: "a plaintext server for a TLS one", service: service, instance: "i2", addr: healthOnly,
			opts: []intermediate.Option{
				intermediate.WithGRPCServerOptions(tlsServer(t)),
				intermediate.WithAdvertiseCheck(credentials.NewTLS(&tls.Config{InsecureSkipVerify: true})), //nolint:gosec // the check knows the server by its answer
			},
			want: intermediate.AdvertiseError{Reason: "it answers in plaintext, and this server speaks TLS"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t)
			addr := r.srv.Addr()
			if tc.addr != nil {
				addr = tc.addr(t)
			}
			want := tc.want
			want.Addr = addr
			if want.Instance == "i1" {
				want.Epoch = r.srv.Epoch()
			}
			i1Key, before := r.registeredKey(service, "i1")
			key, _ := r.registeredKey(tc.service, tc.instance)

			s := startAdvertised(t, r, tc.service, tc.instance, nil, addr, tc.opts...)
			err := s.wait(t)
			var ae *intermediate.AdvertiseError
			if !errors.As(err, &ae) {
				t.Fatalf("Serve(%s/%s advertised at %s) = %v, want an *AdvertiseError", tc.service, tc.instance, addr, err)
			}
			if diff := cmp.Diff(want, *ae); diff != "" {
				t.Errorf("Serve(%s/%s advertised at %s) = %v, diff (-want +got):\n%s", tc.service, tc.instance, addr, err, diff)
			}
			select {
			case <-s.srv.Ready():
				t.Errorf("Ready() of %s/%s closed, want never: it was not registered", tc.service, tc.instance)
			default:
			}
			if attrs := s.logs.Attrs(msgAdvertiseWrong); len(attrs) != 1 || attrs[0]["addr"] != addr {
				t.Errorf("logged %q %v, want once, with addr %s", msgAdvertiseWrong, attrs, addr)
			}
			if w := r.writesSince(key, before); len(w) != 0 {
				t.Errorf("%s written at revisions %v since %d, want never", key, w, before)
			}

			// i1 serves on: not fenced, its key and epoch as they were.
			select {
			case err := <-r.done:
				r.done <- err
				t.Fatalf("Serve(i1) = %v, want it serving on", err)
			default:
			}
			if w := r.writesSince(i1Key, before); len(w) != 0 {
				t.Errorf("i1's key %s written at revisions %v since %d, want never", i1Key, w, before)
			}
			st, err := adminv1.NewAdminServiceClient(r.conn).GetStatus(r.ctx(), &adminv1.GetStatusRequest{})
			if err != nil || st.GetDraining() || st.GetEpoch() != r.srv.Epoch() || r.srv.Draining() {
				t.Errorf("GetStatus(i1) = %v, %v, want i1 serving at epoch %d, not draining", st, err, r.srv.Epoch())
			}
		})
	}
}

// TestServe_AdvertisedAtStoppedInstance checks that a server started with
// the name and address of an instance that already stopped (nothing listens
// there any more) says at once that it could not check the address, and
// registers in the instance's place.
func TestServe_AdvertisedAtStoppedInstance(t *testing.T) {
	r := newRig(t)
	addr, epoch := r.srv.Addr(), r.srv.Epoch()
	if err := r.srv.Drain(r.ctx()); err != nil {
		t.Fatalf("Drain(i1) = %v", err)
	}
	// A refused connection ends the check at once, not at its timeout.
	s := serveAdvertised(t, r, service, "i1", nil, addr, intermediate.WithAdvertiseCheckTimeout(time.Minute))
	attrs := s.logs.Attrs(msgAdvertiseUnchecked)
	if len(attrs) != 1 || attrs[0]["addr"] != addr {
		t.Fatalf("logged %q %v once registered, want once, with addr %s", msgAdvertiseUnchecked, attrs, addr)
	}
	if why, _ := attrs[0]["why"].(string); !strings.Contains(why, "refused") {
		t.Errorf("logged %q with why %q, want it to say the connection is refused", msgAdvertiseUnchecked, why)
	}
	if got := s.srv.Epoch(); got <= epoch {
		t.Errorf("Epoch() of the new i1 = %d, want above the stopped one's %d", got, epoch)
	}
	if !r.registered(service, "i1") {
		t.Errorf("registration of i1: absent, want the new one's")
	}
}

// TestServe_AdvertisedAddressUnchecked checks that a server whose
// advertised address it cannot read from its own host says so once, and
// why, before it registers, and serves on.
func TestServe_AdvertisedAddressUnchecked(t *testing.T) {
	for _, tc := range []struct {
		name string
		addr func(t *testing.T) string
		// why starts the warning's why.
		why string
	}{
		{"nothing listens", func(t *testing.T) string {
			lis := listen(t)
			addr := lis.Addr().String()
			lis.Close()
			return addr
		}, "the connection is refused from this host"},
		{"no answer", func(t *testing.T) string {
			lis := listen(t) // connections wait in its backlog, never accepted
			t.Cleanup(func() { lis.Close() })
			return lis.Addr().String()
		}, "no answer within 300ms"},
		{"a TLS server for a plaintext one", func(t *testing.T) string {
			srv := httptest.NewUnstartedServer(http.NotFoundHandler())
			srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the check's handshakes fail, as they should
			srv.StartTLS()
			t.Cleanup(srv.Close)
			return srv.Listener.Addr().String()
		}, "the connection closed before gRPC's preface"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t)
			addr := tc.addr(t)
			s := serveAdvertised(t, r, service, "i2", nil, addr, intermediate.WithAdvertiseCheckTimeout(300*time.Millisecond))
			attrs := s.logs.Attrs(msgAdvertiseUnchecked)
			if len(attrs) != 1 || attrs[0]["addr"] != addr || attrs[0]["err"] == nil {
				t.Fatalf("logged %q %v once registered, want once, with addr %s and err", msgAdvertiseUnchecked, attrs, addr)
			}
			if why, _ := attrs[0]["why"].(string); !strings.HasPrefix(why, tc.why) {
				t.Errorf("logged %q with why %q, want it to start %q", msgAdvertiseUnchecked, why, tc.why)
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
// at its own address, or at a proxy in front of itself, finds itself there
// before it is registered and says nothing above debug.
func TestServe_AdvertisedAddressReachesItself(t *testing.T) {
	for _, tc := range []struct {
		name  string
		proxy bool
	}{
		{"its own address", false},
		{"a proxy in front of it", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t)
			lis := listen(t)
			addr := lis.Addr().String()
			if tc.proxy {
				px, err := tcpproxy.Listen("127.0.0.1:0", addr)
				if err != nil {
					t.Fatalf("tcpproxy.Listen() = %v", err)
				}
				t.Cleanup(func() { px.Close() })
				addr = px.Addr()
			}
			s := serveAdvertised(t, r, service, "i2", lis, addr)
			if !s.logs.Has(msgAdvertiseSelf) {
				t.Errorf("logged %q once registered: no, want it logged before", msgAdvertiseSelf)
			}
			if s.logs.Has(msgAdvertiseUnchecked) || s.logs.Has(msgAdvertiseWrong) {
				t.Errorf("logged %q or %q, want neither", msgAdvertiseUnchecked, msgAdvertiseWrong)
			}
			if !r.registered(service, "i2") {
				t.Errorf("registration of i2: absent, want present")
			}
		})
	}
}

// leavingAdmin answers GetStatus as a process of service/instance that
// drains: a predecessor still answering at an address its successor shares.
type leavingAdmin struct {
	adminv1.UnimplementedAdminServiceServer
	service, instance string
}

func (a leavingAdmin) GetStatus(context.Context, *adminv1.GetStatusRequest) (*adminv1.GetStatusResponse, error) {
	return &adminv1.GetStatusResponse{Service: a.service, Instance: a.instance, Epoch: 7, Draining: true, StartTime: timestamppb.New(time.Unix(1, 0))}, nil
}

// TestServe_AdvertisedAtDrainingPredecessor checks that a process of an
// instance finding, at the address it advertises, another process of the
// same instance that drains (both behind one address, a load balancer in
// front of the instance) registers as its successor, with a warning; one
// of another instance that drains is still refused.
func TestServe_AdvertisedAtDrainingPredecessor(t *testing.T) {
	r := newRig(t)
	for _, tc := range []struct {
		instance, answers string
		wantRegistered    bool
	}{
		{"i7", "i7", true},
		{"i8", "i9", false},
	} {
		lis := listen(t)
		gs := grpc.NewServer()
		adminv1.RegisterAdminServiceServer(gs, leavingAdmin{service: service, instance: tc.answers})
		go func() { _ = gs.Serve(lis) }()
		t.Cleanup(gs.Stop)
		s := startAdvertised(t, r, service, tc.instance, nil, lis.Addr().String())
		if !tc.wantRegistered {
			var ae *intermediate.AdvertiseError
			if err := s.wait(t); !errors.As(err, &ae) || ae.Instance != tc.answers {
				t.Errorf("Serve(%s) at a draining %s = %v, want an *AdvertiseError naming %s", tc.instance, tc.answers, err, tc.answers)
			}
			continue
		}
		select {
		case <-s.srv.Ready():
		case err := <-s.done:
			t.Fatalf("Serve(%s) = %v, want it registered as the draining process's successor", tc.instance, err)
		case <-time.After(defaultTestTimeout):
			t.Fatalf("Serve(%s) not registered in time", tc.instance)
		}
		if n := len(s.logs.Attrs("intermediate: a previous process of this instance answers at the advertised address while it drains; registering as its successor")); n != 1 {
			t.Errorf("Serve(%s): %d successor warnings, want 1", tc.instance, n)
		}
	}
}

// TestNew_AdvertiseEveryAddress checks that an advertised address naming
// every address of the host is refused where it is given, as the
// intermediate command refuses it: the check would find this server there,
// and every client would dial its own host.
func TestNew_AdvertiseEveryAddress(t *testing.T) {
	cli := etcdtest.Start(t).Client(t)
	for _, addr := range []string{"0.0.0.0:7001", "[::]:7001", "[::%lo]:7001", "[::ffff:0.0.0.0]:7001"} {
		_, err := intermediate.New(cli, "svc", "i1", intermediate.WithAdvertiseAddr(addr))
		want := "advertise address " + strconv.Quote(addr) + " names every address of the host, which others cannot dial"
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("New(WithAdvertiseAddr(%s)) = %v, want an error containing %q", addr, err, want)
		}
	}
}

// everyAddressListener is a listener that says it listens on every
// address, without binding one.
type everyAddressListener struct{ closed chan struct{} }

func (l everyAddressListener) Accept() (net.Conn, error) { <-l.closed; return nil, net.ErrClosed }
func (l everyAddressListener) Close() error {
	select {
	case <-l.closed:
	default:
		close(l.closed)
	}
	return nil
}
func (l everyAddressListener) Addr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4zero, Port: 7001}
}

// TestServe_ListenerOnEveryAddress checks that a server without an
// advertised address, on a listener of every address, refuses to serve,
// having registered nothing and closed the listener: the address it would
// register, 0.0.0.0:7001, is one no client can dial.
func TestServe_ListenerOnEveryAddress(t *testing.T) {
	r := newRig(t)
	srv, err := intermediate.New(r.cli, "svc", "i1", intermediate.WithPrefix(prefix))
	if err != nil {
		t.Fatalf("New() = %v", err)
	}
	lis := everyAddressListener{closed: make(chan struct{})}
	err = srv.Serve(r.ctx(), lis)
	want := "intermediate: 0.0.0.0:7001 listens on every address, which others cannot dial: give WithAdvertiseAddr the address they reach this server at"
	if err == nil || err.Error() != want {
		t.Errorf("Serve(listener on 0.0.0.0:7001) = %v, want %q", err, want)
	}
	select {
	case <-lis.closed:
	default:
		t.Errorf("Serve() returned with the listener open")
	}
	if r.registered("svc", "i1") {
		t.Errorf("svc/i1 registered at an address no client can dial")
	}
}
