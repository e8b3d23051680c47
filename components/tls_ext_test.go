package components_test

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/butterfly-mesh/butterfly/components"
	adminv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/admin/v1"
	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/intermediate"
	"github.com/butterfly-mesh/butterfly/internal/logtest"
	"github.com/butterfly-mesh/butterfly/internal/tlsutil"
)

// devPKI writes a development PKI for 127.0.0.1 whose client certificate is
// bound to producer id clientID, with the role certificates of consumer c1,
// producer p2, stage s1 and admin ops beside it (see roleFiles).
func devPKI(t *testing.T, clientID string) string {
	t.Helper()
	dir := t.TempDir()
	if err := tlsutil.GenerateDev(dir, []string{"127.0.0.1", "localhost"}, tlsutil.WithClientID(clientID),
		tlsutil.WithIdentity(tlsutil.RoleConsumer, "c1"), tlsutil.WithIdentity(tlsutil.RoleProducer, "p2"),
		tlsutil.WithIdentity(tlsutil.RoleStage, "s1"), tlsutil.WithIdentity(tlsutil.RoleAdmin, "ops")); err != nil {
		t.Fatalf("GenerateDev(%s) = %v", dir, err)
	}
	return dir
}

// clientFiles names the client certificate of pki, trusting caDir's CA.
func clientFiles(pki, caDir string) tlsutil.Files {
	return tlsutil.Files{
		Cert: filepath.Join(pki, tlsutil.ClientFile),
		Key:  filepath.Join(pki, tlsutil.ClientKeyFile),
		CA:   filepath.Join(caDir, tlsutil.CAFile),
	}
}

// roleFiles names the role certificate of pki for role and id.
func roleFiles(pki string, role tlsutil.Role, id string) tlsutil.Files {
	cert, key := tlsutil.IdentityFiles(role, id)
	return tlsutil.Files{Cert: filepath.Join(pki, cert), Key: filepath.Join(pki, key), CA: filepath.Join(pki, tlsutil.CAFile)}
}

// writeExpiredClient issues, with the CA of pki, a client certificate of
// common name id that expired an hour ago, and returns its files.
func writeExpiredClient(t *testing.T, pki, id string) tlsutil.Files {
	t.Helper()
	now := time.Now()
	f, err := tlsutil.IssueClient(pki, t.TempDir(), &x509.Certificate{Subject: pkix.Name{CommonName: id}, NotBefore: now.Add(-2 * time.Hour), NotAfter: now.Add(-time.Hour)})
	if err != nil {
		t.Fatalf("tlsutil.IssueClient() = %v", err)
	}
	return f
}

// startTLSHub starts an intermediate that requires client certificates
// signed by the CA of pki, with opts.
func (m *mesh) startTLSHub(pki, instance string, opts ...intermediate.Option) *hub {
	m.t.Helper()
	return m.startTLSHubFor(pki, components.DefaultService, instance, opts...)
}

// startTLSHubFor is startTLSHub for an instance of service.
func (m *mesh) startTLSHubFor(pki, service, instance string, opts ...intermediate.Option) *hub {
	m.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	m.t.Cleanup(cancel)
	cfg, err := tlsutil.ServerConfig(ctx, tlsutil.Files{
		Cert:       filepath.Join(pki, tlsutil.ServerFile),
		Key:        filepath.Join(pki, tlsutil.ServerKeyFile),
		CA:         filepath.Join(pki, tlsutil.CAFile),
		ClientAuth: tlsutil.ClientAuthRequire,
	}, m.log)
	if err != nil {
		m.t.Fatalf("tlsutil.ServerConfig() = %v", err)
	}
	return m.startHub(service, instance, "127.0.0.1",
		append([]intermediate.Option{intermediate.WithGRPCServerOptions(grpc.Creds(credentials.NewTLS(cfg)))}, opts...)...)
}

func clientCreds(t *testing.T, f tlsutil.Files) credentials.TransportCredentials {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	creds, err := tlsutil.ClientCredentials(ctx, f, "", nil)
	if err != nil {
		t.Fatalf("tlsutil.ClientCredentials(%+v) = %v", f, err)
	}
	return creds
}

// rawConn dials addr with creds, closed when the test ends.
func rawConn(t *testing.T, addr string, creds credentials.TransportCredentials) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatalf("grpc.NewClient(%s) = %v", addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// TestMutualTLS_EndToEnd checks that a producer and a consumer with
// certificates of the mesh's CA exchange every message exactly once through
// an intermediate requiring client certificates, while a client without a
// certificate, with one of another CA, or with an expired one is refused,
// and a certificate bound to p1 cannot publish as p2.
func TestMutualTLS_EndToEnd(t *testing.T) {
	m := newMesh(t)
	pki := devPKI(t, "p1")
	h := m.startTLSHub(pki, "i1")
	good := clientCreds(t, clientFiles(pki, pki))
	led := newLedger()
	m.consumer("c1", led.handler(), components.WithTransportCredentials(clientCreds(t, roleFiles(pki, tlsutil.RoleConsumer, "c1"))))
	admin := clientCreds(t, roleFiles(pki, tlsutil.RoleAdmin, "ops"))
	waitUntil(t, "consumer c1 on i1", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		st, err := adminv1.NewAdminServiceClient(rawConn(t, h.addr, admin)).GetStatus(ctx, &adminv1.GetStatusRequest{})
		return err == nil && len(st.GetConsumers()) == 1
	})
	p := m.producer("p1", components.WithTransportCredentials(good))
	const n = 50
	for i := range n {
		if _, err := p.Send(context.Background(), &messagev1.Message{Payload: []byte(fmt.Sprint(i))}); err != nil {
			t.Fatalf("Send(#%d) = %v", i+1, err)
		}
	}
	closeProducers(t, p)
	led.waitHandled(t, n)
	led.checkExactlyOnce(t, map[string]int{"p1": n})

	other := devPKI(t, "p1")
	for _, tc := range []struct {
		name  string
		files tlsutil.Files
	}{
		{"no certificate", tlsutil.Files{CA: filepath.Join(pki, tlsutil.CAFile)}},
		{"another CA", clientFiles(other, pki)},
		{"expired", writeExpiredClient(t, pki, "p1")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
			defer cancel()
			_, err := adminv1.NewAdminServiceClient(rawConn(t, h.addr, clientCreds(t, tc.files))).GetStatus(ctx, &adminv1.GetStatusRequest{})
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("GetStatus() with %s = %v, want UNAVAILABLE (handshake refused)", tc.name, err)
			}
		})
	}

	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	stream, err := deliveryv1.NewPublishServiceClient(rawConn(t, h.addr, good)).Publish(ctx)
	if err != nil {
		t.Fatalf("Publish() = %v", err)
	}
	hello := &deliveryv1.PublishHello{ProducerId: "p2", Incarnation: 1}
	if err := stream.Send(&deliveryv1.PublishRequest{Kind: &deliveryv1.PublishRequest_Hello{Hello: hello}}); err != nil {
		t.Fatalf("Send(hello p2) = %v", err)
	}
	_, err = stream.Recv()
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), `(producer/p1) may not publish as producer "p2"`) {
		t.Fatalf("publish as p2 with the certificate of p1 = %v, want PERMISSION_DENIED naming both", err)
	}
}

// TestRefusal_StopCountsNoResend checks that the messages another stream
// holds when a refusal stops the producer are not counted as resent: they
// wait for Close, which ends them unacknowledged, and nothing sends them
// again. A TLS instance appears beside i1, which holds every message: the
// plaintext producer goes on through i1 (one more message reaches it), and
// stops once i1 drains, leaving only the instance that refuses it.
func TestRefusal_StopCountsNoResend(t *testing.T) {
	m := newMesh(t)
	// No consumer: i1 holds what it receives, longer than the test runs.
	h1 := m.startHub(components.DefaultService, "i1", "127.0.0.1", intermediate.WithNoConsumerTimeout(time.Minute))
	m.waitMembers(components.DefaultService, 1)
	p := m.producer("p1")
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	const n = 10
	send := func(i int) {
		t.Helper()
		if _, err := p.Send(ctx, &messagev1.Message{Payload: fmt.Appendf(nil, "m%d", i)}); err != nil {
			t.Fatalf("Send(%d) = %v", i, err)
		}
	}
	for i := range n - 1 {
		send(i)
	}
	m.startTLSHub(devPKI(t, "p1"), "i2")
	m.waitMembers(components.DefaultService, 2)
	send(n - 1)
	waitUntil(t, "i1 holding every message of p1", func() bool {
		ps := h1.producerStream(t, "p1")
		return ps != nil && ps.GetInFlight() == n
	})
	select {
	case <-p.Done():
		t.Fatalf("producer p1 stopped on the TLS instance while i1 takes it: %v", p.Err())
	default:
	}

	// i1 drains (holding what it has until its drain timeout): only the
	// instance that refuses the producer is left, and it stops.
	go func() { _ = h1.srv.Drain(context.Background()) }()
	select {
	case <-p.Done():
	case <-ctx.Done():
		t.Fatalf("producer p1 not stopped with only the TLS instance left")
	}
	if err := p.Err(); !errors.Is(err, components.ErrTLSMismatch) || !strings.Contains(err.Error(), "instance i2") {
		t.Fatalf("Err() = %v, want %v naming i2", err, components.ErrTLSMismatch)
	}
	// The stop ends the stream to i1 before Close does: wait for i1 to see
	// it go, so the messages come back while the producer is stopped and
	// not yet closed.
	waitUntil(t, "i1 without p1's stream", func() bool { return h1.producerStream(t, "p1") == nil })
	if st := p.Stats(); st.Resent != 0 {
		t.Errorf("Stats() after the stop = %+v, want Resent=0", st)
	}
	var ce *components.CloseError
	if err := p.Close(ctx); !errors.As(err, &ce) || ce.Unacked != n {
		t.Fatalf("Close() = %v, want a CloseError with %d unacknowledged", err, n)
	}
	if st := p.Stats(); st.Sent != n || st.Resent != 0 || st.Acked != 0 {
		t.Errorf("Stats() = %+v, want Sent=%d Resent=0 Acked=0: a stopped producer sends nothing again", st, n)
	}
}

// TestRefusal_OneInstanceDoesNotStopTheMesh checks a misconfigured replica:
// an instance with TLS beside a plaintext one that serves. Plaintext
// producers and consumers go on through the one that takes them, every
// message handled exactly once, neither stopped; each says which instance
// refused it. A consumer that starts after the replica appeared does too.
func TestRefusal_OneInstanceDoesNotStopTheMesh(t *testing.T) {
	m := newMesh(t)
	h1 := m.startHub(components.DefaultService, "i1", "127.0.0.1")
	m.waitMembers(components.DefaultService, 1)
	led, audit := newLedger(), newLedger()
	var clogs logtest.Recorder
	c1 := m.consumer("c1", led.handler(), components.WithLogger(clogs.Logger()))
	waitConsumers(t, 1, h1)

	m.startTLSHub(devPKI(t, "p1"), "i2")
	m.waitMembers(components.DefaultService, 2)
	var plogs logtest.Recorder
	p := m.producer("p1", components.WithLogger(plogs.Logger()))
	c2 := m.consumer("c2", audit.handler(), components.WithGroup("audit"))
	waitConsumers(t, 2, h1)
	const n = 200
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	sent := startLoad(ctx, n, p).wait(t)
	closeProducers(t, p)
	led.checkExactlyOnce(t, sent)
	audit.checkExactlyOnce(t, sent)
	for name, done := range map[string]<-chan struct{}{"producer p1": p.Done(), "consumer c1": c1.Done(), "consumer c2": c2.Done()} {
		select {
		case <-done:
			t.Errorf("%s stopped on the TLS instance while i1 takes it", name)
		default:
		}
	}
	const warning = "TLS mismatch with this instance; %s going on with the other instances, trying it again"
	for who, logs := range map[string]*logtest.Recorder{"producer": &plogs, "consumer": &clogs} {
		attrs := logs.Attrs(fmt.Sprintf(warning, who))
		if len(attrs) == 0 || !strings.Contains(fmt.Sprint(attrs[0]["err"]), who+" "+map[string]string{"producer": "p1", "consumer": "c1"}[who]+": TLS mismatch with instance i2") {
			t.Errorf("%s warnings of the refusal = %v, want one naming i2 and the TLS mismatch", who, attrs)
		}
	}
}

// TestRefusal_StopsComponent checks that a refusal retrying cannot mend
// stops a producer or consumer at once through Done and Err, naming the
// instance: mutual TLS binds another producer id to the certificate
// (ErrRefused, PERMISSION_DENIED), or a plaintext client meets a TLS server
// (ErrTLSMismatch). Send then fails with the same error and Close returns at
// once with the messages still held.
func TestRefusal_StopsComponent(t *testing.T) {
	m := newMesh(t)
	pki := devPKI(t, "p1")
	h := m.startTLSHub(pki, "i1")
	good := clientCreds(t, clientFiles(pki, pki))
	for _, tc := range []struct {
		name     string
		opts     []components.ProducerOption
		wantKind error
		want     string
	}{
		{"another id", []components.ProducerOption{components.WithTransportCredentials(good)}, components.ErrRefused,
			"producer p2: instance i1 at " + h.addr + " refused it: PermissionDenied"},
		{"plaintext", nil, components.ErrTLSMismatch,
			"producer p2: TLS mismatch with instance i1 at " + h.addr + ": the instance speaks TLS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := m.producer("p2", tc.opts...)
			ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
			defer cancel()
			if _, err := p.Send(ctx, &messagev1.Message{Payload: []byte("x")}); err != nil {
				t.Fatalf("Send() before the refusal = %v", err)
			}
			select {
			case <-p.Done():
			case <-ctx.Done():
				t.Fatalf("producer p2 not stopped by the refusal")
			}
			var re *components.RefusedError
			if err := p.Err(); !errors.As(err, &re) || !errors.Is(err, tc.wantKind) || re.Instance != "i1" || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Err() = %v, want a RefusedError (%v) containing %q", err, tc.wantKind, tc.want)
			}
			if _, err := p.Send(ctx, &messagev1.Message{Payload: []byte("y")}); !errors.Is(err, tc.wantKind) {
				t.Errorf("Send() after the refusal = %v, want %v", err, tc.wantKind)
			}
			start := time.Now()
			var ce *components.CloseError
			if err := p.Close(ctx); !errors.As(err, &ce) || ce.Unacked != 1 || !errors.Is(err, tc.wantKind) {
				t.Errorf("Close() = %v, want a CloseError with 1 unacknowledged, wrapping %v", err, tc.wantKind)
			}
			if took := time.Since(start); took > time.Second {
				t.Errorf("Close() took %v, want at once", took)
			}
		})
	}

	c, err := components.NewConsumer(m.cli, "c1", func(context.Context, *components.Delivery) error { return nil },
		components.WithPrefix(testPrefix), components.WithLogger(m.log))
	if err != nil {
		t.Fatalf("NewConsumer(c1) = %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	select {
	case <-c.Done():
	case <-ctx.Done():
		t.Fatalf("plaintext consumer c1 not stopped by the TLS mismatch")
	}
	if err := c.Err(); !errors.Is(err, components.ErrTLSMismatch) || !strings.Contains(err.Error(), "consumer c1: TLS mismatch with instance i1") {
		t.Errorf("consumer Err() = %v, want ErrTLSMismatch naming c1 and i1", err)
	}
	if err := c.Close(ctx); err != nil {
		t.Errorf("consumer Close() = %v, want nil", err)
	}
}
