package intermediate_test

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/intermediate"
	"github.com/butterfly-mesh/butterfly/internal/etcdtest"
	"github.com/butterfly-mesh/butterfly/registry"
)

const (
	defaultTestTimeout = 10 * time.Second
	prefix             = "it"
	service            = "intermediate"
	quietHeartbeatMs   = 60000 // raw test clients send no heartbeats
)

// rig is one intermediate on an embedded etcd, with a raw client
// connection to it.
type rig struct {
	t    *testing.T
	cli  *clientv3.Client
	srv  *intermediate.Server
	conn *grpc.ClientConn
	done chan error
	regs map[string]*registry.Registration // consumer registrations by "<group>/<id>"
}

func newRig(t *testing.T, opts ...intermediate.Option) *rig {
	t.Helper()
	cli := etcdtest.Start(t).Client(t)
	return rigOn(t, cli, cli, opts...)
}

// rigOn is newRig on etcd client cli, with the intermediate on its own
// client of the same etcd, own.
func rigOn(t *testing.T, cli, own *clientv3.Client, opts ...intermediate.Option) *rig {
	t.Helper()
	base := []intermediate.Option{
		intermediate.WithPrefix(prefix),
		intermediate.WithLeaseTTL(2 * time.Second),
		intermediate.WithStopTimeout(300 * time.Millisecond),
		intermediate.WithVersion("v-test"),
	}
	srv, err := intermediate.New(own, service, "i1", append(base, opts...)...)
	if err != nil {
		t.Fatalf("New() = %v", err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("net.Listen() = %v", err)
	}
	r := &rig{t: t, cli: cli, srv: srv, done: make(chan error, 1), regs: map[string]*registry.Registration{}}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { r.done <- srv.Serve(ctx, lis) }()
	select {
	case <-srv.Ready():
	case err := <-r.done:
		t.Fatalf("Serve() = %v before it was ready", err)
	case <-time.After(defaultTestTimeout):
		t.Fatalf("Serve() not ready in time")
	}
	r.conn, err = grpc.NewClient(srv.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("grpc.NewClient() = %v", err)
	}
	t.Cleanup(func() {
		r.conn.Close()
		cancel()
		r.wait()
	})
	return r
}

// connFrom is a connection to the intermediate from the local address ip,
// a peer of its own for the limits kept by peer.
func (r *rig) connFrom(ip string) *grpc.ClientConn {
	r.t.Helper()
	conn, err := grpc.NewClient(r.srv.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
			return d.DialContext(ctx, "tcp", addr)
		}))
	if err != nil {
		r.t.Fatalf("grpc.NewClient() = %v", err)
	}
	r.t.Cleanup(func() { conn.Close() })
	return conn
}

// wait returns Serve's result.
func (r *rig) wait() error {
	r.t.Helper()
	select {
	case err := <-r.done:
		r.done <- err
		return err
	case <-time.After(defaultTestTimeout):
		r.t.Fatalf("Serve() did not return")
		return nil
	}
}

func (r *rig) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	r.t.Cleanup(cancel)
	return ctx
}

// publish opens a publish stream and reads the welcome.
func (r *rig) publish(hello *deliveryv1.PublishHello) (deliveryv1.PublishService_PublishClient, *deliveryv1.PublishWelcome) {
	r.t.Helper()
	ctx, cancel := context.WithCancel(r.ctx())
	r.t.Cleanup(cancel)
	return r.publishOn(ctx, r.conn, hello)
}

// publishOn opens a publish stream on conn that ends with ctx and reads the
// welcome, nil when the stream was refused.
func (r *rig) publishOn(ctx context.Context, conn *grpc.ClientConn, hello *deliveryv1.PublishHello) (deliveryv1.PublishService_PublishClient, *deliveryv1.PublishWelcome) {
	r.t.Helper()
	stream, w, _ := r.openPublishOn(ctx, conn, hello)
	return stream, w
}

// openPublishOn opens a publish stream on conn that ends with ctx, sends
// hello and returns the welcome, or the error that refused the stream.
func (r *rig) openPublishOn(ctx context.Context, conn *grpc.ClientConn, hello *deliveryv1.PublishHello) (deliveryv1.PublishService_PublishClient, *deliveryv1.PublishWelcome, error) {
	r.t.Helper()
	stream, err := deliveryv1.NewPublishServiceClient(conn).Publish(ctx)
	if dl, ok := ctx.Deadline(); err != nil && (ctx.Err() != nil || ok && !time.Now().Before(dl)) {
		// ctx ended before the stream opened (a short-lived stream on a
		// loaded machine): refused, as far as the caller is concerned.
		// gRPC says DeadlineExceeded once the deadline is past, which
		// can be before ctx's own timer has ended it.
		return nil, nil, err
	}
	if err != nil {
		r.t.Fatalf("Publish() = %v", err)
	}
	// A stream the server refused at once may end before the hello goes
	// out (io.EOF); Recv returns the refusal either way.
	if err := stream.Send(&deliveryv1.PublishRequest{Kind: &deliveryv1.PublishRequest_Hello{Hello: hello}}); err != nil && !errors.Is(err, io.EOF) {
		r.t.Fatalf("Send(hello) = %v", err)
	}
	resp, err := stream.Recv()
	if err != nil {
		return stream, nil, err
	}
	if resp.GetWelcome() == nil {
		r.t.Fatalf("first publish response = %v, want a welcome", resp)
	}
	return stream, resp.GetWelcome(), nil
}

func (r *rig) producer(id string) deliveryv1.PublishService_PublishClient {
	r.t.Helper()
	stream, w := r.publish(&deliveryv1.PublishHello{ProducerId: id, Incarnation: 1, Instance: "i1", HeartbeatIntervalMs: quietHeartbeatMs})
	if w == nil {
		r.t.Fatalf("publish stream of %s got no welcome", id)
	}
	return stream
}

// subscribe opens a subscribe stream and reads the welcome.
func (r *rig) subscribe(id string, credit uint32) deliveryv1.SubscribeService_SubscribeClient {
	r.t.Helper()
	ctx, cancel := context.WithCancel(r.ctx())
	r.t.Cleanup(cancel)
	return r.subscribeCtx(ctx, id, credit)
}

// subscribeCtx is subscribe on a stream that ends with ctx.
func (r *rig) subscribeCtx(ctx context.Context, id string, credit uint32) deliveryv1.SubscribeService_SubscribeClient {
	r.t.Helper()
	return r.subscribeGroup(ctx, id, intermediate.DefaultGroup, credit)
}

// register declares group and registers consumer id in it, once per test;
// it returns the registration's epoch.
func (r *rig) register(group, id string) uint64 {
	r.t.Helper()
	key := group + "/" + id
	if reg := r.regs[key]; reg != nil {
		return reg.Epoch()
	}
	if _, err := registry.CreateGroup(r.ctx(), r.cli, service, group, "test", registry.WithPrefix(prefix)); err != nil {
		r.t.Fatalf("CreateGroup(%s) = %v", group, err)
	}
	reg, err := registry.RegisterConsumer(r.ctx(), r.cli, service, group, id, registry.WithPrefix(prefix), registry.WithTTL(2*time.Second))
	if err != nil {
		r.t.Fatalf("RegisterConsumer(%s) = %v", key, err)
	}
	r.t.Cleanup(func() { reg.Close(context.Background()) })
	r.regs[key] = reg
	return reg.Epoch()
}

// unregister removes the registration of consumer id in group.
func (r *rig) unregister(group, id string) {
	r.t.Helper()
	key := group + "/" + id
	if err := r.regs[key].Close(r.ctx()); err != nil {
		r.t.Fatalf("Close(registration %s) = %v", key, err)
	}
	delete(r.regs, key)
}

// subscribeGroup opens a subscribe stream of consumer id in group, ending
// with ctx, registering the consumer first, and reads the welcome.
func (r *rig) subscribeGroup(ctx context.Context, id, group string, credit uint32) deliveryv1.SubscribeService_SubscribeClient {
	r.t.Helper()
	stream, _ := r.subscribeWelcome(ctx, id, group, credit)
	return stream
}

// subscribeWelcome is subscribeGroup that returns the welcome too.
func (r *rig) subscribeWelcome(ctx context.Context, id, group string, credit uint32) (deliveryv1.SubscribeService_SubscribeClient, *deliveryv1.SubscribeWelcome) {
	r.t.Helper()
	stream, welcome, err := r.trySubscribe(ctx, &deliveryv1.SubscribeHello{ConsumerId: id, Group: group, Instance: "i1",
		HeartbeatIntervalMs: quietHeartbeatMs, InitialCredit: credit, RegistrationEpoch: r.register(group, id)})
	if err != nil {
		r.t.Fatalf("subscribe %s/%s: %v", group, id, err)
	}
	if welcome.GetEpoch() != r.srv.Epoch() || welcome.GetInstance() != "i1" {
		r.t.Errorf("welcome = %v, want instance i1 epoch %d", welcome, r.srv.Epoch())
	}
	return stream, welcome
}

// trySubscribe opens a subscribe stream with hello and returns the welcome,
// or the error that refused the stream.
func (r *rig) trySubscribe(ctx context.Context, hello *deliveryv1.SubscribeHello) (deliveryv1.SubscribeService_SubscribeClient, *deliveryv1.SubscribeWelcome, error) {
	r.t.Helper()
	stream, err := deliveryv1.NewSubscribeServiceClient(r.conn).Subscribe(ctx)
	if err != nil {
		r.t.Fatalf("Subscribe() = %v", err)
	}
	// A stream the server refused at once may end before the hello goes
	// out (io.EOF); Recv returns the refusal either way.
	if err := stream.Send(&deliveryv1.SubscribeRequest{Kind: &deliveryv1.SubscribeRequest_Hello{Hello: hello}}); err != nil && !errors.Is(err, io.EOF) {
		r.t.Fatalf("Send(hello) = %v", err)
	}
	resp, err := stream.Recv()
	if err != nil {
		return nil, nil, err
	}
	if resp.GetWelcome() == nil {
		r.t.Fatalf("first subscribe response = %v, want a welcome", resp)
	}
	return stream, resp.GetWelcome(), nil
}

func msg(producer string, seq uint64, payload string) *messagev1.Message {
	return &messagev1.Message{Id: &messagev1.MessageId{ProducerId: producer, Incarnation: 1, Seq: seq}, Payload: []byte(payload)}
}

// msgs returns messages seq first..last of producer, payload "x".
func msgs(producer string, first, last uint64) []*messagev1.Message {
	var out []*messagev1.Message
	for seq := first; seq <= last; seq++ {
		out = append(out, msg(producer, seq, "x"))
	}
	return out
}

func sendBatch(t *testing.T, stream deliveryv1.PublishService_PublishClient, first uint64, msgs ...*messagev1.Message) {
	t.Helper()
	b := &deliveryv1.PublishBatch{FirstSeq: first, Messages: msgs}
	if err := stream.Send(&deliveryv1.PublishRequest{Kind: &deliveryv1.PublishRequest_Batch{Batch: b}}); err != nil {
		t.Fatalf("Send(batch) = %v", err)
	}
}

// nextAck returns the next PublishAck, skipping heartbeats.
func nextAck(t *testing.T, stream deliveryv1.PublishService_PublishClient) *deliveryv1.PublishAck {
	t.Helper()
	for {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("Recv() waiting for an ack = %v", err)
		}
		if a := resp.GetAck(); a != nil {
			return a
		}
	}
}

// nextDeliveries returns the next DeliveryBatch, skipping heartbeats.
func nextDeliveries(t *testing.T, stream deliveryv1.SubscribeService_SubscribeClient) []*deliveryv1.Delivery {
	t.Helper()
	for {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("Recv() waiting for deliveries = %v", err)
		}
		if b := resp.GetBatch(); b != nil {
			return b.GetDeliveries()
		}
	}
}

func ackDeliveries(t *testing.T, stream deliveryv1.SubscribeService_SubscribeClient, a *deliveryv1.DeliveryAck) {
	t.Helper()
	if err := stream.Send(&deliveryv1.SubscribeRequest{Kind: &deliveryv1.SubscribeRequest_Ack{Ack: a}}); err != nil {
		t.Fatalf("Send(ack) = %v", err)
	}
}
