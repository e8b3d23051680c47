package intermediate_test

import (
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/intermediate"
)

// TestServer_MaxStreams checks that the cap on all streams holds whatever
// address they come from: a peer on a second address gets no fresh
// allowance once the server has max-streams open.
func TestServer_MaxStreams(t *testing.T) {
	r := newRig(t, intermediate.WithMaxStreams(2), intermediate.WithMaxStreamsPerPeer(0))
	r.producer("p1")
	r.producer("p2")
	for _, ip := range []string{"127.0.0.1", "127.0.0.2"} {
		stream, err := deliveryv1.NewPublishServiceClient(r.connFrom(ip)).Publish(r.ctx())
		if err != nil {
			t.Fatalf("Publish() = %v", err)
		}
		hello := &deliveryv1.PublishHello{ProducerId: "p3", Incarnation: 1, HeartbeatIntervalMs: quietHeartbeatMs}
		// A stream the server refused at once may end before the hello
		// goes out (io.EOF); Recv returns the refusal either way.
		if err := stream.Send(&deliveryv1.PublishRequest{Kind: &deliveryv1.PublishRequest_Hello{Hello: hello}}); err != nil && !errors.Is(err, io.EOF) {
			t.Fatalf("Send(hello) = %v", err)
		}
		_, err = stream.Recv()
		if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "2 streams open, the limit of max-streams") {
			t.Errorf("third stream from %s = %v, want RESOURCE_EXHAUSTED naming max-streams", ip, err)
		}
	}
}

// TestServer_ConnectionTimeout checks that raw TCP connections that never
// send the HTTP/2 preface are closed by the server within the connection
// timeout, while a real client beside them is served.
func TestServer_ConnectionTimeout(t *testing.T) {
	const timeout = 300 * time.Millisecond
	r := newRig(t, intermediate.WithConnectionTimeout(timeout))
	const n = 50
	conns := make([]net.Conn, n)
	start := time.Now()
	for i := range conns {
		c, err := net.Dial("tcp", r.srv.Addr())
		if err != nil {
			t.Fatalf("net.Dial() #%d = %v", i+1, err)
		}
		t.Cleanup(func() { c.Close() })
		conns[i] = c
	}
	r.producer("p1") // served beside them
	for i, c := range conns {
		c.SetReadDeadline(start.Add(defaultTestTimeout))
		// The server's settings frame comes first; then the connection ends.
		if _, err := io.Copy(io.Discard, c); err != nil {
			t.Fatalf("connection #%d: read = %v, want the server to close it (EOF)", i+1, err)
		}
	}
	if elapsed := time.Since(start); elapsed > timeout+2*time.Second {
		t.Fatalf("silent connections closed after %v, want about %v", elapsed, timeout)
	}
}

// TestPublish_OversizedMessageNotOverBudget checks that a single message
// larger than the in-flight byte limit is handed back INVALID at once, not
// held back as over the budget to be sent again forever.
func TestPublish_OversizedMessageNotOverBudget(t *testing.T) {
	r := newRig(t, intermediate.WithMaxBatch(16, 4096), intermediate.WithMaxInFlightBytes(4096),
		intermediate.WithMemoryBudget(4096, time.Minute))
	pub := r.producer("p1")
	sendBatch(t, pub, 1, msg("p1", 1, strings.Repeat("x", 6000)))
	a := nextAck(t, pub)
	if n := a.GetNacked(); len(n) != 1 || n[0].GetReason() != messagev1.NackReason_NACK_REASON_INVALID || !strings.Contains(n[0].GetDetail(), "max-message-bytes 4096") {
		t.Fatalf("ack = %v, want one INVALID nack naming max-message-bytes", a)
	}
}
