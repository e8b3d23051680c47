package intermediate

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
)

// ErrProcessorPanicked is wrapped by the error of a processor that panicked:
// the message is handed back with NACK_REASON_PROCESSING_FAILED and the
// stream goes on.
var ErrProcessorPanicked = errors.New("processor panicked")

// interceptorOptions installs, outermost first: panic recovery, the limit of
// streams per peer, and the validation of incoming frames. Options given with
// WithGRPCServerOptions add their interceptors inside these.
func (s *Server) interceptorOptions() []grpc.ServerOption {
	rec := recovery.WithRecoveryHandlerContext(s.recovered)
	l := s.opts.limits()
	streams := newStreamLimiter(s.opts.maxStreamsPerPeer, s.opts.maxStreams)
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(recovery.UnaryServerInterceptor(rec), validateUnary(l)),
		grpc.ChainStreamInterceptor(recovery.StreamServerInterceptor(rec), limitStreams(streams), validateStream(l)),
	}
}

// recovered turns a handler's panic into an Internal status for that call,
// with a log line that keeps the details the peer is not told.
func (s *Server) recovered(ctx context.Context, p any) error {
	s.log.Error("intermediate: handler panicked", "peer", peerKey(ctx), "panic", p, "stack", string(debug.Stack()))
	return status.Error(codes.Internal, "intermediate: internal error")
}

// runProcessor runs the processor on m, turning a panic into an error for m
// alone.
func (s *Server) runProcessor(ctx context.Context, m *messagev1.Message) (res *messagev1.Message, err error) {
	defer func() {
		if p := recover(); p != nil {
			id := m.GetId()
			s.log.Error("intermediate: processor panicked; handing the message back",
				"processor", s.opts.processor.Name(), "producer", id.GetProducerId(), "seq", id.GetSeq(),
				"panic", p, "stack", string(debug.Stack()))
			res, err = nil, fmt.Errorf("%w: %v", ErrProcessorPanicked, p)
		}
	}()
	return s.opts.processor.Process(ctx, m)
}

// limitStreams refuses a stream of a peer that has max-streams-per-peer
// open, or any stream while the server has max-streams open.
func limitStreams(l *streamLimiter) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		key := peerKey(ss.Context())
		open, total, ok := l.acquire(key)
		if !ok {
			if l.maxTotal > 0 && total >= l.maxTotal {
				return status.Errorf(codes.ResourceExhausted, "intermediate: %d streams open, the limit of max-streams", total)
			}
			return status.Errorf(codes.ResourceExhausted, "intermediate: %s has %d streams open, the limit of max-streams-per-peer", key, open)
		}
		defer l.release(key)
		return handler(srv, ss)
	}
}

// validateStream checks every frame of a publish stream as it is received:
// the hello's producer id and the size of batches. A violation ends the
// stream with its status; each message's own envelope is checked later, so
// that one bad message is handed back without ending the stream.
func validateStream(l limits) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if info.FullMethod != deliveryv1.PublishService_Publish_FullMethodName {
			return handler(srv, ss)
		}
		return handler(srv, &validatingStream{ServerStream: ss, limits: l})
	}
}

type validatingStream struct {
	grpc.ServerStream
	limits limits
}

func (v *validatingStream) RecvMsg(m any) error {
	if err := v.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if req, ok := m.(*deliveryv1.PublishRequest); ok {
		return validateFrame(req, v.limits)
	}
	return nil
}

// validateFrame checks one publish frame on its own.
func validateFrame(req *deliveryv1.PublishRequest, l limits) error {
	switch k := req.GetKind().(type) {
	case *deliveryv1.PublishRequest_Hello:
		if err := validateProducerID(k.Hello.GetProducerId()); err != nil {
			return status.Errorf(codes.InvalidArgument, "intermediate: hello: %v", err)
		}
	case *deliveryv1.PublishRequest_Batch:
		if err := checkBatch(k.Batch.GetMessages(), l); err != nil {
			return status.Error(codes.ResourceExhausted, "intermediate: "+err.Error())
		}
	}
	return nil
}

// checkBatch checks the message count of a batch and, for a batch of more
// than one message, its size, the sum of its messages' envelope sizes (a
// single message is held to max-message-bytes instead).
func checkBatch(msgs []*messagev1.Message, l limits) error {
	if len(msgs) > l.maxBatchMessages {
		return fmt.Errorf("batch of %d messages %w max-batch-messages %d", len(msgs), ErrBatchTooLarge, l.maxBatchMessages)
	}
	if len(msgs) < 2 {
		return nil
	}
	total := 0
	for _, m := range msgs {
		total += envelopeSize(m)
	}
	if total > l.maxBatchBytes {
		return fmt.Errorf("batch of %d bytes %w max-batch-bytes %d", total, ErrBatchTooLarge, l.maxBatchBytes)
	}
	return nil
}

// validateUnary holds the message of a Process call to the message limits.
func validateUnary(l limits) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if r, ok := req.(*deliveryv1.ProcessRequest); ok && r.GetMessage() != nil {
			m := r.GetMessage()
			if err := checkMessageLimits(m, envelopeSize(m), l); err != nil {
				return nil, status.Error(codes.ResourceExhausted, "intermediate: "+err.Error())
			}
		}
		return handler(ctx, req)
	}
}
