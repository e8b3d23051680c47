package components_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/butterfly-mesh/butterfly/components"
	adminv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/admin/v1"
	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/intermediate"
	"github.com/butterfly-mesh/butterfly/internal/tlsutil"
	"github.com/butterfly-mesh/butterfly/registry"
)

// unboundFiles issues, with the CA of pki, a client certificate without a
// butterfly URI (CommonName only) and returns its files.
func unboundFiles(t *testing.T, pki string) tlsutil.Files {
	t.Helper()
	dir := t.TempDir()
	for _, name := range []string{tlsutil.CAFile, tlsutil.CAKeyFile} {
		b, err := os.ReadFile(filepath.Join(pki, name))
		if err != nil {
			t.Fatalf("os.ReadFile(%s) = %v", name, err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatalf("os.WriteFile(%s) = %v", name, err)
		}
	}
	if err := tlsutil.GenerateDev(dir, []string{"127.0.0.1"}); err != nil {
		t.Fatalf("GenerateDev(%s) = %v", dir, err)
	}
	return clientFiles(dir, pki)
}

// rawSubscribe opens a subscribe stream with hello and returns the error
// that ended it before a welcome, or nil after a welcome.
func rawSubscribe(t *testing.T, addr string, creds credentials.TransportCredentials, hello *deliveryv1.SubscribeHello) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	stream, err := deliveryv1.NewSubscribeServiceClient(rawConn(t, addr, creds)).Subscribe(ctx)
	if err != nil {
		t.Fatalf("Subscribe() = %v", err)
	}
	if err := stream.Send(&deliveryv1.SubscribeRequest{Kind: &deliveryv1.SubscribeRequest_Hello{Hello: hello}}); err != nil {
		t.Fatalf("Send(hello) = %v", err)
	}
	_, err = stream.Recv()
	return err
}

// TestRoles_HostileClients checks, with mutual TLS and role certificates,
// that a producer's certificate cannot subscribe, a consumer's cannot
// subscribe as another consumer, a producer's cannot put another producer's
// id on a message, and only an admin's can drain or see other producers,
// while a legitimate producer and consumer beside them exchange every
// message exactly once.
func TestRoles_HostileClients(t *testing.T) {
	m := newMesh(t)
	pki := devPKI(t, "p1")
	h := m.startTLSHub(pki, "i1")
	creds := func(role tlsutil.Role, id string) credentials.TransportCredentials {
		return clientCreds(t, roleFiles(pki, role, id))
	}
	p1 := clientCreds(t, clientFiles(pki, pki))
	p2 := creds(tlsutil.RoleProducer, "p2")
	c1 := creds(tlsutil.RoleConsumer, "c1")
	admin := creds(tlsutil.RoleAdmin, "ops")
	led := newLedger()
	m.consumer("c1", led.handler(), components.WithTransportCredentials(c1))
	getStatus := func(c credentials.TransportCredentials) (*adminv1.GetStatusResponse, error) {
		ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
		defer cancel()
		return adminv1.NewAdminServiceClient(rawConn(t, h.addr, c)).GetStatus(ctx, &adminv1.GetStatusRequest{})
	}
	waitUntil(t, "consumer c1 on i1", func() bool {
		st, err := getStatus(admin)
		return err == nil && len(st.GetConsumers()) == 1
	})
	p := m.producer("p1", components.WithTransportCredentials(p1))
	const n = 200
	ld := startLoad(context.Background(), n, p)

	t.Run("subscribe", func(t *testing.T) {
		for _, tc := range []struct {
			name  string
			creds credentials.TransportCredentials
			as    string
			want  string
		}{
			{"producer certificate", p1, "c1", `(producer/p1) may not subscribe as consumer "c1"`},
			{"another consumer", c1, "c2", `(consumer/c1) may not subscribe as consumer "c2"`},
			{"admin certificate", admin, "c1", `(admin/ops) may not subscribe`},
			{"unbound certificate", clientCreds(t, unboundFiles(t, pki)), "c1", `(cn=butterfly-client) may not subscribe`},
		} {
			err := rawSubscribe(t, h.addr, tc.creds, &deliveryv1.SubscribeHello{ConsumerId: tc.as, Group: "default", RegistrationEpoch: 1, InitialCredit: 100})
			if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("subscribe as %s with the %s = %v, want PERMISSION_DENIED containing %q", tc.as, tc.name, err, tc.want)
			}
		}
	})

	t.Run("consumer with a producer certificate", func(t *testing.T) {
		c := m.consumer("c9", func(context.Context, *components.Delivery) error {
			t.Errorf("consumer c9 with the certificate of p1 handled a message")
			return nil
		}, components.WithTransportCredentials(p1))
		select {
		case <-c.Done():
		case <-time.After(defaultTestTimeout):
			t.Fatalf("consumer c9 with the certificate of p1 still runs, want it stopped")
		}
		if err := c.Err(); !errors.Is(err, components.ErrPermissionDenied) || !strings.Contains(err.Error(), `(producer/p1) may not subscribe as consumer "c9"`) {
			t.Fatalf("Err() = %v, want ErrPermissionDenied naming the certificate", err)
		}
	})

	t.Run("producer with another's certificate", func(t *testing.T) {
		p3 := m.producer("p3", components.WithTransportCredentials(p1))
		if _, err := p3.Send(context.Background(), &messagev1.Message{Payload: []byte("p3")}); err != nil {
			t.Fatalf("Send() = %v", err)
		}
		select {
		case <-p3.Done():
		case <-time.After(defaultTestTimeout):
			t.Fatalf("producer p3 not stopped within %v", defaultTestTimeout)
		}
		var refused *components.RefusedError
		if err := p3.Err(); !errors.As(err, &refused) || refused.Code != codes.PermissionDenied || !errors.Is(err, components.ErrRefused) {
			t.Fatalf("Err() of p3 = %v, want a PermissionDenied RefusedError", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		var ce *components.CloseError
		if err := p3.Close(ctx); !errors.As(err, &ce) || ce.Unacked != 1 || !errors.Is(err, components.ErrRefused) {
			t.Fatalf("Close() of p3 = %v, want a CloseError with its 1 unacknowledged message and the refusal", err)
		}
	})

	t.Run("forged producer id", func(t *testing.T) {
		forged := &messagev1.Message{Id: &messagev1.MessageId{ProducerId: "p1", Incarnation: p.Incarnation(), Seq: 1 << 40}, LowWaterSeq: 1 << 40, Payload: []byte("forged")}
		err := publishOne(t, h.addr, p2, "p2", forged)
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), `producer_id "p1"`) {
			t.Fatalf("forged message = %v, want the stream refused PERMISSION_DENIED naming p1", err)
		}
	})

	t.Run("status", func(t *testing.T) {
		st, err := getStatus(p2)
		if err != nil {
			t.Fatalf("GetStatus() as producer p2 = %v", err)
		}
		if len(st.GetProducers()) != 0 || len(st.GetConsumers()) != 0 {
			t.Errorf("GetStatus() as producer p2 = producers %v consumers %v, want none of p1 or c1", st.GetProducers(), st.GetConsumers())
		}
		st, err = getStatus(admin)
		if err != nil || len(st.GetProducers()) == 0 || st.GetProducers()[0].GetProducerId() != "p1" {
			t.Errorf("GetStatus() as admin = %v, %v, want producer p1", st, err)
		}
	})

	t.Run("drain refused", func(t *testing.T) {
		for _, tc := range []struct {
			name  string
			creds credentials.TransportCredentials
		}{
			{"producer/p1", p1}, {"consumer/c1", c1}, {"stage/s1", creds(tlsutil.RoleStage, "s1")},
			{"cn=butterfly-client", clientCreds(t, unboundFiles(t, pki))},
		} {
			ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
			_, err := adminv1.NewAdminServiceClient(rawConn(t, h.addr, tc.creds)).Drain(ctx, &adminv1.DrainRequest{})
			cancel()
			if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "("+tc.name+") may not drain") {
				t.Errorf("Drain() as %s = %v, want PERMISSION_DENIED naming it", tc.name, err)
			}
		}
		if h.srv.Draining() {
			t.Fatalf("the intermediate drains after refused Drain calls")
		}
	})

	sent := ld.wait(t)
	closeProducers(t, p)
	led.waitHandled(t, n)
	led.checkExactlyOnce(t, sent)

	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	if _, err := adminv1.NewAdminServiceClient(rawConn(t, h.addr, admin)).Drain(ctx, &adminv1.DrainRequest{}); err != nil {
		t.Fatalf("Drain() as admin = %v, want nil", err)
	}
	if err := h.wait(t); err != nil {
		t.Fatalf("Serve() after the admin's drain = %v, want nil", err)
	}
	if got := fmt.Sprint(sent); got != fmt.Sprintf("map[p1:%d]", n) {
		t.Errorf("sent = %s, want map[p1:%d]", got, n)
	}
}

// TestRoles_StreamsPerIdentity checks that with mutual TLS the streams of a
// peer are counted per certificate identity, not per address: a producer
// certificate at its limit is refused a third stream while a consumer on the
// same address subscribes and receives.
func TestRoles_StreamsPerIdentity(t *testing.T) {
	m := newMesh(t)
	pki := devPKI(t, "p1")
	h := m.startTLSHub(pki, "i1", intermediate.WithMaxStreamsPerPeer(2))
	p2 := clientCreds(t, roleFiles(pki, tlsutil.RoleProducer, "p2"))
	open := func() error {
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		stream, err := deliveryv1.NewPublishServiceClient(rawConn(t, h.addr, p2)).Publish(ctx)
		if err != nil {
			t.Fatalf("Publish() = %v", err)
		}
		hello := &deliveryv1.PublishHello{ProducerId: "p2", Incarnation: 1, HeartbeatIntervalMs: 60000}
		// A stream the server refused at once may end before the hello
		// goes out (io.EOF); Recv returns the refusal either way.
		if err := stream.Send(&deliveryv1.PublishRequest{Kind: &deliveryv1.PublishRequest_Hello{Hello: hello}}); err != nil && !errors.Is(err, io.EOF) {
			t.Fatalf("Send(hello) = %v", err)
		}
		_, err = stream.Recv()
		return err
	}
	for i := range 2 {
		if err := open(); err != nil {
			t.Fatalf("stream #%d of producer p2 = %v, want a welcome", i+1, err)
		}
	}
	if err := open(); status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "identity producer/p2 has 2 streams open") {
		t.Fatalf("third stream of producer p2 = %v, want RESOURCE_EXHAUSTED naming its identity", err)
	}
	led := newLedger()
	m.consumer("c1", led.handler(), components.WithTransportCredentials(clientCreds(t, roleFiles(pki, tlsutil.RoleConsumer, "c1"))))
	p := m.producer("p1", components.WithTransportCredentials(clientCreds(t, clientFiles(pki, pki))))
	const n = 20
	for i := range n {
		if _, err := p.Send(context.Background(), &messagev1.Message{Payload: []byte(fmt.Sprint(i))}); err != nil {
			t.Fatalf("Send(#%d) = %v", i+1, err)
		}
	}
	closeProducers(t, p)
	led.waitHandled(t, n)
	led.checkExactlyOnce(t, map[string]int{"p1": n})
}

// TestRefusal_ForeignIDStopsProducer checks that a producer whose
// certificate binds it to its own id, sending a message under another
// producer's id, stops with a PERMISSION_DENIED RefusedError naming that id
// when the intermediate ends its stream after the welcome, instead of
// sending it again forever.
func TestRefusal_ForeignIDStopsProducer(t *testing.T) {
	m := newMesh(t)
	pki := devPKI(t, "p1")
	m.startTLSHub(pki, "i1")
	p := m.producer("p1", components.WithTransportCredentials(clientCreds(t, clientFiles(pki, pki))))
	foreign := &messagev1.Message{Id: &messagev1.MessageId{ProducerId: "p2", Incarnation: 1, Seq: 1}, LowWaterSeq: 1, Payload: []byte("not mine")}
	if _, err := p.Send(context.Background(), foreign); err != nil {
		t.Fatalf("Send(message of p2) = %v", err)
	}
	select {
	case <-p.Done():
	case <-time.After(defaultTestTimeout):
		t.Fatalf("producer p1 still runs %v after sending a message of p2; stats %+v", defaultTestTimeout, p.Stats())
	}
	var refused *components.RefusedError
	if err := p.Err(); !errors.As(err, &refused) || refused.Code != codes.PermissionDenied || !errors.Is(err, components.ErrRefused) ||
		refused.Instance != "i1" || !strings.Contains(refused.Reason, `producer_id "p2"`) {
		t.Fatalf("Err() = %v, want a PermissionDenied RefusedError of i1 naming producer_id \"p2\"", err)
	}
	if _, err := p.Send(context.Background(), &messagev1.Message{Payload: []byte("more")}); !errors.As(err, &refused) {
		t.Errorf("Send() after the refusal = %v, want the RefusedError", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	var ce *components.CloseError
	if err := p.Close(ctx); !errors.As(err, &ce) || ce.Unacked != 1 || !errors.Is(err, components.ErrRefused) {
		t.Fatalf("Close() = %v, want a CloseError with its 1 unacknowledged message and the refusal", err)
	}
	// The refused message went out once and was never sent again.
	if st := p.Stats(); st.Sent != 1 || st.Resent != 0 {
		t.Errorf("Stats() = %+v, want Sent=1 Resent=0: a stopped producer sends nothing again", st)
	}
}

// TestRoles_StageAndConsumerShareAnID checks, with mutual TLS, that a
// stage's certificate cannot subscribe under a consumer's registration of
// the same id, nor a consumer's certificate under a stage's, while the
// consumer and the stage beside them each handle every message of their
// group once; a registration that names no role (written by hand) is not
// checked.
func TestRoles_StageAndConsumerShareAnID(t *testing.T) {
	m := newMesh(t)
	pki := t.TempDir()
	if err := tlsutil.GenerateDev(pki, []string{"127.0.0.1", "localhost"}, tlsutil.WithClientID("p1"),
		tlsutil.WithIdentity(tlsutil.RoleConsumer, "x1"), tlsutil.WithIdentity(tlsutil.RoleStage, "x1"),
		tlsutil.WithIdentity(tlsutil.RoleStage, "s1"), tlsutil.WithIdentity(tlsutil.RoleConsumer, "s1"),
		tlsutil.WithIdentity(tlsutil.RoleConsumer, "d1"), tlsutil.WithIdentity(tlsutil.RoleStage, "h1")); err != nil {
		t.Fatalf("GenerateDev() = %v", err)
	}
	creds := func(role tlsutil.Role, id string) credentials.TransportCredentials {
		return clientCreds(t, roleFiles(pki, role, id))
	}
	up := m.startTLSHub(pki, "i1")
	m.startTLSHubFor(pki, "down", "i2")
	led, down := newLedger(), newLedger()
	m.consumer("x1", led.handler(), components.WithTransportCredentials(creds(tlsutil.RoleConsumer, "x1")))
	m.consumer("d1", down.handler(), components.WithService("down"), components.WithTransportCredentials(creds(tlsutil.RoleConsumer, "d1")))
	stage, err := components.NewStage(m.cli, "s1", components.DefaultService, "down",
		components.WithPrefix(testPrefix), components.WithLogger(m.log),
		components.WithTransportCredentials(creds(tlsutil.RoleStage, "s1")),
		components.WithConsumerOptions(components.WithGroup("st")))
	if err != nil {
		t.Fatalf("NewStage(s1) = %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
		defer cancel()
		_ = stage.Close(ctx)
	})

	registration := func(group, id string) (registry.ConsumerValue, bool) {
		resp, err := m.cli.Get(context.Background(), registry.ConsumerKey(testPrefix, components.DefaultService, group, id))
		if err != nil || len(resp.Kvs) != 1 {
			return registry.ConsumerValue{}, false
		}
		v, err := registry.ParseConsumerValue(group, id, resp.Kvs[0].Value)
		return v, err == nil
	}
	var x1, s1 registry.ConsumerValue
	waitUntil(t, "x1 and s1 registered", func() bool {
		var ok1, ok2 bool
		x1, ok1 = registration(components.DefaultGroup, "x1")
		s1, ok2 = registration("st", "s1")
		return ok1 && ok2
	})
	if x1.Role != registry.RoleConsumer || s1.Role != registry.RoleStage {
		t.Fatalf("roles registered: x1 %q, s1 %q; want %q and %q", x1.Role, s1.Role, registry.RoleConsumer, registry.RoleStage)
	}
	for _, tc := range []struct {
		name      string
		creds     credentials.TransportCredentials
		group, as string
		epoch     uint64
		want      string
	}{
		{"stage/x1", creds(tlsutil.RoleStage, "x1"), components.DefaultGroup, "x1", x1.Epoch, `(stage/x1) may not subscribe as "x1" of group "default", registered by a consumer`},
		{"consumer/s1", creds(tlsutil.RoleConsumer, "s1"), "st", "s1", s1.Epoch, `(consumer/s1) may not subscribe as "s1" of group "st", registered by a stage`},
	} {
		err := rawSubscribe(t, up.addr, tc.creds, &deliveryv1.SubscribeHello{ConsumerId: tc.as, Group: tc.group, RegistrationEpoch: tc.epoch, InitialCredit: 100})
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("subscribe as %s of %s with the certificate of %s = %v, want PERMISSION_DENIED containing %q", tc.as, tc.group, tc.name, err, tc.want)
		}
	}

	lease, err := m.cli.Grant(context.Background(), 60)
	if err != nil {
		t.Fatalf("Grant() = %v", err)
	}
	handWritten := registry.ConsumerKey(testPrefix, components.DefaultService, "hand", "h1")
	if _, err := m.cli.Put(context.Background(), registry.GroupKey(testPrefix, components.DefaultService, "hand"), ""); err != nil {
		t.Fatalf("Put(group hand) = %v", err)
	}
	if _, err := m.cli.Put(context.Background(), handWritten, `{"consumer":"h1","group":"hand","epoch":1}`, clientv3.WithLease(lease.ID)); err != nil {
		t.Fatalf("Put(%s) = %v", handWritten, err)
	}
	if err := rawSubscribe(t, up.addr, creds(tlsutil.RoleStage, "h1"), &deliveryv1.SubscribeHello{ConsumerId: "h1", Group: "hand", RegistrationEpoch: 1, InitialCredit: 100}); err != nil {
		t.Errorf("subscribe as h1 of hand (a registration naming no role) with the certificate of stage/h1 = %v, want the welcome", err)
	}
	if _, err := m.cli.Delete(context.Background(), registry.GroupKey(testPrefix, components.DefaultService, "hand")); err != nil {
		t.Fatalf("Delete(group hand) = %v", err)
	}
	if _, err := m.cli.Revoke(context.Background(), lease.ID); err != nil {
		t.Fatalf("Revoke() = %v", err)
	}

	p := m.producer("p1", components.WithTransportCredentials(clientCreds(t, clientFiles(pki, pki))))
	const n = 100
	sent := startLoad(context.Background(), n, p).wait(t)
	closeProducers(t, p)
	led.waitHandled(t, n)
	led.checkExactlyOnce(t, sent)
	down.waitHandled(t, n)
	down.checkExactlyOnce(t, sent)
}

// publishOne opens a publish stream as helloID with creds, sends msg and
// returns nil when the intermediate answers it (acknowledged, or handed
// back), the stream's error when the stream is refused or ended.
func publishOne(t *testing.T, addr string, creds credentials.TransportCredentials, helloID string, msg *messagev1.Message) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	r, err := openRawPublisher(ctx, t, addr, creds, helloID)
	if err != nil {
		return err
	}
	batch := &deliveryv1.PublishBatch{FirstSeq: 1, Messages: []*messagev1.Message{msg}}
	if err := r.stream.Send(&deliveryv1.PublishRequest{Kind: &deliveryv1.PublishRequest_Batch{Batch: batch}}); err != nil {
		t.Fatalf("Send(batch) = %v", err)
	}
	for {
		resp, err := r.stream.Recv()
		if err != nil {
			return err
		}
		if a := resp.GetAck(); len(a.GetAcked())+len(a.GetNacked()) > 0 {
			return nil
		}
	}
}

// TestRoles_Forwarders checks that an intermediate with forwarders lets
// only the stages it names forward other producers' messages, while any
// stage still publishes under its own id, and that by default every stage
// forwards.
func TestRoles_Forwarders(t *testing.T) {
	m := newMesh(t)
	pki := t.TempDir()
	if err := tlsutil.GenerateDev(pki, []string{"127.0.0.1", "localhost"}, tlsutil.WithIdentity(tlsutil.RoleStage, "s1"),
		tlsutil.WithIdentity(tlsutil.RoleStage, "s2"), tlsutil.WithIdentity(tlsutil.RoleConsumer, "c1")); err != nil {
		t.Fatalf("GenerateDev() = %v", err)
	}
	creds := func(role tlsutil.Role, id string) credentials.TransportCredentials {
		return clientCreds(t, roleFiles(pki, role, id))
	}
	s1, s2 := creds(tlsutil.RoleStage, "s1"), creds(tlsutil.RoleStage, "s2")
	every := m.startTLSHub(pki, "i1")
	onlyS2 := m.startTLSHub(pki, "i2", intermediate.WithForwarders("s2"))
	none := m.startTLSHub(pki, "i3", intermediate.WithForwarders())
	m.consumer("c1", newLedger().handler(), components.WithTransportCredentials(creds(tlsutil.RoleConsumer, "c1")))
	refused := `(stage "s1" is not among this intermediate's --forwarders)`
	for _, tc := range []struct {
		hub                *hub
		name               string
		creds              credentials.TransportCredentials
		as, under, refused string
	}{
		{every, "s1 forwarding p1, every stage", s1, "s1", "p1", ""},
		{onlyS2, "s1 under its own id, forwarders s2", s1, "s1", "s1", ""},
		{onlyS2, "s1 forwarding p1, forwarders s2", s1, "s1", "p1", refused},
		{onlyS2, "s2 forwarding p1, forwarders s2", s2, "s2", "p1", ""},
		{none, "s2 forwarding p1, no forwarders", s2, "s2", "p1", `(stage "s2" is not among this intermediate's --forwarders)`},
		{none, "s2 under its own id, no forwarders", s2, "s2", "s2", ""},
	} {
		msg := &messagev1.Message{Id: &messagev1.MessageId{ProducerId: tc.under, Incarnation: 7, Seq: 1}, LowWaterSeq: 1, Payload: []byte("x")}
		err := publishOne(t, tc.hub.addr, tc.creds, tc.as, msg)
		switch {
		case tc.refused == "" && err != nil:
			t.Errorf("%s: %v, want the message acknowledged", tc.name, err)
		case tc.refused != "" && (status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), tc.refused)):
			t.Errorf("%s: %v, want PERMISSION_DENIED containing %q", tc.name, err, tc.refused)
		}
	}
}
