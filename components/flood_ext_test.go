package components_test

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/butterfly-mesh/butterfly/components"
	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/intermediate"
)

// flooder is a misbehaving peer speaking raw gRPC from its own loopback
// address, so that the per-peer stream limit counts it alone.
type flooder struct {
	t    *testing.T
	conn *grpc.ClientConn
}

func newFlooder(t *testing.T, addr string) *flooder {
	t.Helper()
	dial := func(ctx context.Context, target string) (net.Conn, error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
		return d.DialContext(ctx, "tcp", target)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithContextDialer(dial))
	if err != nil {
		t.Fatalf("grpc.NewClient(%s) = %v", addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	return &flooder{t: t, conn: conn}
}

// open opens a publish stream that ends with ctx and sends hello unless it
// is nil.
func (f *flooder) open(ctx context.Context, hello *deliveryv1.PublishHello) deliveryv1.PublishService_PublishClient {
	f.t.Helper()
	stream, err := deliveryv1.NewPublishServiceClient(f.conn).Publish(ctx)
	if err != nil {
		f.t.Fatalf("Publish() = %v", err)
	}
	if hello != nil {
		f.send(stream, &deliveryv1.PublishRequest{Kind: &deliveryv1.PublishRequest_Hello{Hello: hello}})
	}
	return stream
}

// accepted opens publish streams until one is welcomed: streams of the
// previous round may still count against max-streams-per-peer until their
// handlers returned.
func (f *flooder) accepted(ctx context.Context, hello *deliveryv1.PublishHello) deliveryv1.PublishService_PublishClient {
	f.t.Helper()
	for {
		stream := f.open(ctx, hello)
		resp, err := stream.Recv()
		if err == nil && resp.GetWelcome() != nil {
			return stream
		}
		if status.Code(err) != codes.ResourceExhausted || ctx.Err() != nil {
			f.t.Fatalf("publish stream = %v, %v, want a welcome", resp, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (f *flooder) send(stream deliveryv1.PublishService_PublishClient, req *deliveryv1.PublishRequest) {
	f.t.Helper()
	// A send on a stream the server already ended fails with io.EOF; the
	// status comes from Recv.
	_ = stream.Send(req)
}

func batchReq(first uint64, msgs ...*messagev1.Message) *deliveryv1.PublishRequest {
	return &deliveryv1.PublishRequest{Kind: &deliveryv1.PublishRequest_Batch{Batch: &deliveryv1.PublishBatch{FirstSeq: first, Messages: msgs}}}
}

func badMsg(seq uint64, size int) *messagev1.Message {
	return &messagev1.Message{Id: &messagev1.MessageId{ProducerId: "bad", Incarnation: 1, Seq: seq}, Payload: []byte(strings.Repeat("b", size))}
}

// end reads the stream until it ends and returns its status.
func end(stream deliveryv1.PublishService_PublishClient) error {
	for {
		if _, err := stream.Recv(); err != nil {
			return err
		}
	}
}

// nacks reads the stream until n nacks arrived and returns them.
func nacks(t *testing.T, stream deliveryv1.PublishService_PublishClient, n int) []*messagev1.Nack {
	t.Helper()
	var out []*messagev1.Nack
	for len(out) < n {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("Recv() waiting for %d nacks = %v", n, err)
		}
		out = append(out, resp.GetAck().GetNacked()...)
	}
	return out
}

// round sends every kind of bad frame once and checks each answer.
func (f *flooder) round(ctx context.Context) {
	t := f.t
	t.Helper()
	hello := &deliveryv1.PublishHello{ProducerId: "bad", Incarnation: 1, HeartbeatIntervalMs: 60000}
	ctx, cancel := context.WithTimeout(ctx, defaultTestTimeout)
	defer cancel()
	expectEnd := func(what string, stream deliveryv1.PublishService_PublishClient, code codes.Code, text string) {
		t.Helper()
		if err := end(stream); status.Code(err) != code || !strings.Contains(err.Error(), text) {
			t.Fatalf("%s ended the stream with %v, want %v containing %q", what, err, code, text)
		}
	}

	s := f.accepted(ctx, hello)
	f.send(s, batchReq(1, badMsg(1, 1), badMsg(2, 1), badMsg(3, 1), badMsg(4, 1), badMsg(5, 1), badMsg(6, 1), badMsg(7, 1), badMsg(8, 1), badMsg(9, 1)))
	expectEnd("a batch of 9 messages", s, codes.ResourceExhausted, "max-batch-messages 8")

	s = f.accepted(ctx, hello)
	f.send(s, batchReq(1, badMsg(1, 900), badMsg(2, 900), badMsg(3, 900), badMsg(4, 900), badMsg(5, 900)))
	expectEnd("a batch of 4.5 KB", s, codes.ResourceExhausted, "max-batch-bytes 4096")

	s = f.accepted(ctx, hello)
	f.send(s, batchReq(1, badMsg(1, 200_000)))
	expectEnd("a frame over the gRPC receive limit", s, codes.ResourceExhausted, "larger than max")

	s = f.accepted(ctx, hello)
	f.send(s, batchReq(7, badMsg(7, 1)))
	expectEnd("a sequence gap", s, codes.InvalidArgument, "first_seq 7, want 1")

	s = f.open(ctx, nil)
	f.send(s, batchReq(1, badMsg(1, 1)))
	expectEnd("a batch before the hello", s, codes.InvalidArgument, "hello")

	s = f.open(ctx, &deliveryv1.PublishHello{ProducerId: "bad\nid"})
	expectEnd("a hello with a control character", s, codes.InvalidArgument, "producer_id")

	// Bad messages in a well-formed batch are handed back one by one and
	// the stream goes on.
	s = f.accepted(ctx, hello)
	noID := &messagev1.Message{Payload: []byte("x")}
	headers := badMsg(3, 1)
	headers.Headers = map[string]string{"a": "", "b": "", "c": ""}
	f.send(s, batchReq(1, badMsg(1, 2000), noID, headers))
	got := nacks(t, s, 3)
	for _, n := range got {
		if n.GetReason() != messagev1.NackReason_NACK_REASON_INVALID {
			t.Fatalf("nack %v, want NACK_REASON_INVALID", n)
		}
	}
	// The per-peer stream limit: s plus 3 more are open, the next is refused.
	open := []deliveryv1.PublishService_PublishClient{s}
	for range 3 {
		open = append(open, f.accepted(ctx, hello))
	}
	expectEnd("a fifth stream", f.open(ctx, hello), codes.ResourceExhausted, "max-streams-per-peer")
	// Close the streams and wait for the server to end them, so that the
	// next round starts with none open.
	for _, st := range open {
		if err := st.CloseSend(); err != nil {
			t.Fatalf("CloseSend() = %v", err)
		}
		if err := end(st); !errors.Is(err, io.EOF) {
			t.Fatalf("stream closed by the peer ended with %v, want io.EOF", err)
		}
	}
}

// TestFlood_OtherProducersLoseNothing checks that a peer sending oversized
// and malformed frames is refused with a status naming the limit, and that
// the producers sending alongside it lose nothing.
func TestFlood_OtherProducersLoseNothing(t *testing.T) {
	m := newMesh(t)
	h := m.startHub(components.DefaultService, "i1", "127.0.0.1",
		intermediate.WithMaxBatch(8, 4096), intermediate.WithMaxMessageBytes(1024),
		intermediate.WithMaxHeaders(2, 256), intermediate.WithMaxStreamsPerPeer(4))
	led := newLedger()
	m.consumer("c1", led.handler())
	waitConsumers(t, 1, h)
	p1, p2 := m.producer("p1"), m.producer("p2")
	n := messageCount(t, 2000)
	ld := startLoad(context.Background(), n, p1, p2)
	f := newFlooder(t, h.addr)
	rounds := 0
	for {
		f.round(context.Background())
		rounds++
		if led.handled() >= n || rounds >= 50 {
			break
		}
	}
	sent := ld.wait(t)
	closeProducers(t, p1, p2)
	led.waitHandled(t, 2*n)
	led.checkExactlyOnce(t, sent)
	// Closed producers' streams end asynchronously: poll.
	waitUntil(t, "no producer stream and nothing in flight on i1", func() bool {
		st := h.status(t)
		return len(st.GetProducers()) == 0 && st.GetInFlight() == 0
	})
	t.Logf("%d flood rounds; %d messages from p1 and p2 handled exactly once", rounds, led.handled())
}
