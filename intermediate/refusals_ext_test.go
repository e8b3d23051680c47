package intermediate_test

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	adminv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/admin/v1"
	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/intermediate"
	"github.com/butterfly-mesh/butterfly/internal/tlsutil"
	"github.com/butterfly-mesh/butterfly/registry"
)

// heldDrain is a rig draining with one message of producer p1 held open:
// delivered to consumer c1, not acknowledged, so the drain stays in its
// first phase until the test acknowledges it.
type heldDrain struct {
	*rig
	pub      deliveryv1.PublishService_PublishClient
	sub      deliveryv1.SubscribeService_SubscribeClient
	delivery uint64
}

func startHeldDrain(t *testing.T) *heldDrain {
	t.Helper()
	r := newRig(t)
	h := &heldDrain{rig: r, sub: r.subscribe("c1", 10), pub: r.producer("p1")}
	sendBatch(t, h.pub, 1, msg("p1", 1, "held"))
	ds := nextDeliveries(t, h.sub)
	if len(ds) != 1 {
		t.Fatalf("deliveries = %v, want 1", ds)
	}
	h.delivery = ds[0].GetDeliveryId()
	resp, err := adminv1.NewAdminServiceClient(r.conn).Drain(r.ctx(), &adminv1.DrainRequest{Timeout: durationpb.New(time.Minute)})
	if err != nil || resp.GetInFlight() != 1 || resp.GetAlreadyDraining() {
		t.Fatalf("Drain() = %v, %v, want in_flight 1, not already draining", resp, err)
	}
	if !r.srv.Draining() {
		t.Fatalf("Draining() after Drain = false, want true")
	}
	return h
}

// finish acknowledges the held delivery and checks that nothing was lost:
// its producer gets the ack (and no nack) before its stream ends with OK,
// the consumer gets a drain notice before its stream ends with OK, and
// Serve returns nil.
func (h *heldDrain) finish(t *testing.T) {
	t.Helper()
	ackDeliveries(t, h.sub, &deliveryv1.DeliveryAck{Acked: []*messagev1.SeqRange{{First: h.delivery, Last: h.delivery}}})
	acked := false
	for {
		resp, err := h.pub.Recv()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				t.Errorf("publish stream of p1 ended with %v, want OK", err)
			}
			break
		}
		for _, rg := range resp.GetAck().GetAcked() {
			acked = acked || (rg.GetFirst() <= 1 && 1 <= rg.GetLast())
		}
		if n := resp.GetAck().GetNacked(); len(n) != 0 {
			t.Errorf("nacks on the stream of p1 = %v, want none", n)
		}
	}
	if !acked {
		t.Errorf("seq 1 of p1 not acknowledged before its stream ended")
	}
	endsAfterNotice(t, h.sub)
	if err := h.wait(); err != nil {
		t.Errorf("Serve() after the drain = %v, want nil", err)
	}
}

// endsAfterNotice reads sub until a DrainNotice and checks that the stream
// then ends with OK.
func endsAfterNotice(t *testing.T, sub deliveryv1.SubscribeService_SubscribeClient) {
	t.Helper()
	for {
		resp, err := sub.Recv()
		if err != nil {
			t.Fatalf("subscribe stream ended with %v before a drain notice", err)
		}
		if n := resp.GetDrain(); n != nil {
			if n.GetInstance() != "i1" || n.GetReason() != messagev1.DrainReason_DRAIN_REASON_OPERATOR {
				t.Errorf("drain notice = %v, want instance i1 reason OPERATOR", n)
			}
			break
		}
	}
	for {
		resp, err := sub.Recv()
		if err == nil {
			if resp.GetBatch() != nil || resp.GetDrain() != nil {
				t.Errorf("after the drain notice the subscribe stream sent %v, want nothing but heartbeats", resp)
			}
			continue
		}
		if !errors.Is(err, io.EOF) {
			t.Errorf("subscribe stream ended with %v after the drain notice, want OK", err)
		}
		return
	}
}

// wantStatus checks that err has code and a message containing want.
func wantStatus(t *testing.T, what string, err error, code codes.Code, want string) {
	t.Helper()
	if status.Code(err) != code || !strings.Contains(status.Convert(err).Message(), want) {
		t.Errorf("%s = %v, want %v containing %q", what, err, code, want)
	}
}

// TestRefusal_PublishWhileDraining checks that a publish stream opened while
// the intermediate drains is refused UNAVAILABLE ("draining") after its
// hello, and that the message the drain holds is still delivered and
// acknowledged to its producer.
func TestRefusal_PublishWhileDraining(t *testing.T) {
	h := startHeldDrain(t)
	hello := &deliveryv1.PublishHello{ProducerId: "p2", Incarnation: 1, Instance: "i1", HeartbeatIntervalMs: quietHeartbeatMs}
	_, err := openPublish(t, h.rig, h.ctx(), hello)
	wantStatus(t, "publish hello during the drain", err, codes.Unavailable, "intermediate: draining")
	h.finish(t)
}

// TestRefusal_ProcessWhileDraining checks that Process of a valid message is
// refused UNAVAILABLE ("draining") while the intermediate drains, and that
// the message the drain holds is still delivered and acknowledged.
func TestRefusal_ProcessWhileDraining(t *testing.T) {
	h := startHeldDrain(t)
	_, err := deliveryv1.NewProcessServiceClient(h.conn).Process(h.ctx(), &deliveryv1.ProcessRequest{Message: &messagev1.Message{Payload: []byte("abc")}})
	wantStatus(t, "Process(abc) during the drain", err, codes.Unavailable, "intermediate: draining")
	h.finish(t)
}

// TestRefusal_SubscribeWhileLeaving checks that a subscribe stream whose
// hello passes its checks once the intermediate is leaving (the end of a
// drain, when subscribe streams get their DrainNotice) is refused
// UNAVAILABLE ("leaving"), while the stream already open gets its
// DrainNotice and then ends with OK.
func TestRefusal_SubscribeWhileLeaving(t *testing.T) {
	// The refused stream's handler holds the graceful stop open: give it
	// time to be refused rather than cut.
	r := newRig(t, intermediate.WithStopTimeout(5*time.Second))
	c1 := r.subscribe("c1", 10)

	// c2's hello reaches the server before the drain does (one connection):
	// it waits there for c2's registration, which comes once the drain is
	// leaving.
	ctx, cancel := context.WithCancel(r.ctx())
	defer cancel()
	c2, err := deliveryv1.NewSubscribeServiceClient(r.conn).Subscribe(ctx)
	if err != nil {
		t.Fatalf("Subscribe() = %v", err)
	}
	// c2's key is written by hand below, at an epoch the hello can name
	// before it exists (a registration's is the store's revision).
	const epoch = 1 << 40
	hello := &deliveryv1.SubscribeHello{ConsumerId: "c2", Group: intermediate.DefaultGroup, Instance: "i1",
		HeartbeatIntervalMs: quietHeartbeatMs, InitialCredit: 10, RegistrationEpoch: epoch}
	if err := c2.Send(&deliveryv1.SubscribeRequest{Kind: &deliveryv1.SubscribeRequest_Hello{Hello: hello}}); err != nil {
		t.Fatalf("Send(hello of c2) = %v", err)
	}
	if _, err := adminv1.NewAdminServiceClient(r.conn).Drain(r.ctx(), &adminv1.DrainRequest{}); err != nil {
		t.Fatalf("Drain() = %v", err)
	}
	// The DrainNotice on c1 comes once the intermediate is leaving.
	endsAfterNotice(t, c1)
	key := registry.ConsumerKey(prefix, service, intermediate.DefaultGroup, "c2")
	if _, err := r.cli.Put(r.ctx(), key, fmt.Sprintf(`{"consumer":"c2","group":%q,"epoch":%d}`, intermediate.DefaultGroup, epoch)); err != nil {
		t.Fatalf("Put(%s) = %v", key, err)
	}
	t.Cleanup(func() { _, _ = r.cli.Delete(context.Background(), key) })
	resp, err := c2.Recv()
	if err == nil {
		t.Fatalf("subscribe stream of c2 while leaving got %v, want it refused", resp)
	}
	wantStatus(t, "subscribe hello while leaving", err, codes.Unavailable, "intermediate: leaving")
	if err := r.wait(); err != nil {
		t.Errorf("Serve() after the drain = %v, want nil", err)
	}
}

// TestRefusal_DrainInvalidTimeout checks that AdminService.Drain with a
// negative or a malformed timeout is refused INVALID_ARGUMENT and starts no
// drain: the intermediate still admits and delivers messages.
func TestRefusal_DrainInvalidTimeout(t *testing.T) {
	r := newRig(t)
	admin := adminv1.NewAdminServiceClient(r.conn)
	for name, d := range map[string]*durationpb.Duration{
		"negative":  durationpb.New(-time.Second),
		"malformed": {Seconds: 1, Nanos: -1},
	} {
		resp, err := admin.Drain(r.ctx(), &adminv1.DrainRequest{Timeout: d})
		if err == nil {
			t.Errorf("Drain(%s timeout %v) = %v, want it refused", name, d, resp)
			continue
		}
		wantStatus(t, "Drain("+name+" timeout)", err, codes.InvalidArgument, "invalid drain timeout")
	}
	if r.srv.Draining() {
		t.Fatalf("the intermediate drains after refused Drain calls")
	}
	sub := r.subscribe("c1", 10)
	pub := r.producer("p1")
	sendBatch(t, pub, 1, msg("p1", 1, "after"))
	ds := nextDeliveries(t, sub)
	if len(ds) != 1 || string(ds[0].GetMessage().GetPayload()) != "after" {
		t.Fatalf("deliveries after the refused drains = %v, want the message", ds)
	}
	ackDeliveries(t, sub, &deliveryv1.DeliveryAck{Acked: []*messagev1.SeqRange{{First: ds[0].GetDeliveryId(), Last: ds[0].GetDeliveryId()}}})
	if a := nextAck(t, pub); len(a.GetAcked()) != 1 || a.GetAcked()[0].GetFirst() != 1 {
		t.Errorf("PublishAck after the refused drains = %v, want seq 1 acknowledged", a)
	}
}

// TestRefusal_ProcessUnboundCertificate checks, with mutual TLS, that
// Process from a verified client certificate that binds no role (CommonName
// only) is refused PERMISSION_DENIED naming the certificate, while a
// producer's certificate of the same CA is served, and that an intermediate
// trusting unbound certificates serves it but not one whose role is
// unreadable.
func TestRefusal_ProcessUnboundCertificate(t *testing.T) {
	pki := t.TempDir()
	if err := tlsutil.GenerateDev(pki, []string{"127.0.0.1"}, tlsutil.WithIdentity(tlsutil.RoleProducer, "p1")); err != nil {
		t.Fatalf("GenerateDev() = %v", err)
	}
	ca := filepath.Join(pki, tlsutil.CAFile)
	unbound := tlsutil.Files{Cert: filepath.Join(pki, tlsutil.ClientFile), Key: filepath.Join(pki, tlsutil.ClientKeyFile), CA: ca}
	cert, key := tlsutil.IdentityFiles(tlsutil.RoleProducer, "p1")
	producer := tlsutil.Files{Cert: filepath.Join(pki, cert), Key: filepath.Join(pki, key), CA: ca}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start := func(opts ...intermediate.Option) *rig {
		cfg, err := tlsutil.ServerConfig(ctx, tlsutil.Files{
			Cert:       filepath.Join(pki, tlsutil.ServerFile),
			Key:        filepath.Join(pki, tlsutil.ServerKeyFile),
			CA:         ca,
			ClientAuth: tlsutil.ClientAuthRequire,
		}, nil)
		if err != nil {
			t.Fatalf("tlsutil.ServerConfig() = %v", err)
		}
		return newRig(t, append(opts, intermediate.WithGRPCServerOptions(grpc.Creds(credentials.NewTLS(cfg))))...)
	}
	process := func(r *rig, f tlsutil.Files) (*deliveryv1.ProcessResponse, error) {
		creds, err := tlsutil.ClientCredentials(ctx, f, "", nil)
		if err != nil {
			t.Fatalf("tlsutil.ClientCredentials() = %v", err)
		}
		conn, err := grpc.NewClient(r.srv.Addr(), grpc.WithTransportCredentials(creds))
		if err != nil {
			t.Fatalf("grpc.NewClient() = %v", err)
		}
		defer conn.Close()
		return deliveryv1.NewProcessServiceClient(conn).Process(r.ctx(), &deliveryv1.ProcessRequest{Message: &messagev1.Message{Payload: []byte("abc")}})
	}

	r := start()
	_, err := process(r, unbound)
	wantStatus(t, "Process() with the unbound certificate", err, codes.PermissionDenied, "(cn=butterfly-client) may not process messages")
	if resp, err := process(r, producer); err != nil || string(resp.GetMessage().GetPayload()) != "abc" {
		t.Errorf("Process() with the certificate of producer/p1 = %v, %v, want abc", resp, err)
	}

	trusting := start(intermediate.WithTrustUnboundCertificates(true))
	if resp, err := process(trusting, unbound); err != nil || string(resp.GetMessage().GetPayload()) != "abc" {
		t.Errorf("Process() with the unbound certificate, unbound certificates trusted = %v, %v, want abc", resp, err)
	}
	// A certificate meant to be bound whose role cannot be read is not an
	// unbound one: refused even where unbound certificates are trusted.
	for _, uris := range [][]string{
		{"butterfly://producer/p7", "butterfly://consumer/c7"},
		{"butterfly://viewer/v1"},
		{"butterfly://consumer/team/c8"},
	} {
		unreadable := issueWithURIs(t, pki, "odd", uris...)
		_, err := process(trusting, unreadable)
		wantStatus(t, fmt.Sprintf("Process() with a certificate of %v, unbound certificates trusted", uris), err, codes.PermissionDenied, "(cn=odd, role unreadable) may not process messages")
	}
}

// issueWithURIs signs, with the development CA in pki, a client certificate
// of common name cn with uris as its URI SANs, and returns its files.
func issueWithURIs(t *testing.T, pki, cn string, uris ...string) tlsutil.Files {
	t.Helper()
	tmpl := &x509.Certificate{Subject: pkix.Name{CommonName: cn}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	for _, u := range uris {
		parsed, err := url.Parse(u)
		if err != nil {
			t.Fatalf("url.Parse(%q) = %v", u, err)
		}
		tmpl.URIs = append(tmpl.URIs, parsed)
	}
	f, err := tlsutil.IssueClient(pki, t.TempDir(), tmpl)
	if err != nil {
		t.Fatalf("tlsutil.IssueClient() = %v", err)
	}
	return f
}

// TestRefusal_PublishSecondHello checks that a second hello on a publish
// stream ends the stream INVALID_ARGUMENT, naming the second hello.
func TestRefusal_PublishSecondHello(t *testing.T) {
	r := newRig(t)
	pub := r.producer("p1")
	hello := &deliveryv1.PublishHello{ProducerId: "p1", Incarnation: 1, Instance: "i1", HeartbeatIntervalMs: quietHeartbeatMs}
	if err := pub.Send(&deliveryv1.PublishRequest{Kind: &deliveryv1.PublishRequest_Hello{Hello: hello}}); err != nil {
		t.Fatalf("Send(second hello) = %v", err)
	}
	wantStatus(t, "publish stream after a second hello", recvEnd(pub), codes.InvalidArgument, "second hello on a publish stream")
}
