package components

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	"github.com/butterfly-mesh/butterfly/registry"
)

// endedStream is a publish stream the server ended before the client's
// first Send, as grpc-go's ClientStream behaves then: SendMsg returns
// io.EOF, and RecvMsg the stream's status.
type endedStream struct {
	grpc.ClientStream
	st    error
	recvs int
}

func (s *endedStream) Send(*deliveryv1.PublishRequest) error { return io.EOF }

func (s *endedStream) Recv() (*deliveryv1.PublishResponse, error) {
	s.recvs++
	return nil, s.st
}

func (s *endedStream) CloseSend() error { return nil }

// TestHandshake_RefusalBeforeTheHello checks that a stream an intermediate
// refused before the hello went (a stream limit refuses at once; a busy
// client sends after that) fails with the refusal, which the component
// reports and judges, not with the io.EOF of its Send.
func TestHandshake_RefusalBeforeTheHello(t *testing.T) {
	refusal := status.Error(codes.ResourceExhausted, "intermediate: 127.0.0.1 has 1 streams open, the limit of max-streams-per-peer")
	l := &link{inst: registry.Instance{Name: "i1"}, log: slog.New(slog.DiscardHandler)}
	stream := &endedStream{st: refusal}
	var life streamLife
	_, _, failed := handshake(context.Background(), l, "publish", &life, time.Second,
		func(context.Context) (grpc.BidiStreamingClient[deliveryv1.PublishRequest, deliveryv1.PublishResponse], error) {
			return stream, nil
		},
		&deliveryv1.PublishRequest{Kind: &deliveryv1.PublishRequest_Hello{Hello: &deliveryv1.PublishHello{ProducerId: "p1"}}},
		func(r *deliveryv1.PublishResponse) (*deliveryv1.PublishWelcome, bool) {
			return r.GetWelcome(), r.GetWelcome() != nil
		})
	if failed == nil {
		t.Fatal("handshake() = nil, want a failure")
	}
	if got := failed.refusal(); status.Code(got) != codes.ResourceExhausted || got.Error() != refusal.Error() {
		t.Errorf("handshake() failed at step %d with %v, refusal %v; want the refusal %v", failed.step, failed.err, got, refusal)
	}
	if stream.recvs != 1 {
		t.Errorf("Recv called %d times, want once, for the status", stream.recvs)
	}
}
