package intermediate

import (
	"cmp"
	"context"
	"slices"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/butterfly-mesh/butterfly"
	adminv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/admin/v1"
	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/internal/tlsutil"
)

// adminService serves AdminService.
type adminService struct {
	adminv1.UnimplementedAdminServiceServer
	s *Server
}

var _ adminv1.AdminServiceServer = (*adminService)(nil)

// GetStatus reports the instance, its streams and its counters.
// A peer that is not an admin sees only its own streams (see authz.go).
func (as *adminService) GetStatus(ctx context.Context, _ *adminv1.GetStatusRequest) (*adminv1.GetStatusResponse, error) {
	s := as.s
	a := s.accessOf(ctx)
	all := a.may("", tlsutil.RoleAdmin)
	s.mu.Lock()
	resp := &adminv1.GetStatusResponse{
		Service:   s.service,
		Instance:  s.instance,
		Epoch:     s.epoch,
		Addr:      s.addr,
		Draining:  s.draining,
		StartTime: timestamppb.New(s.started),
		Processor: s.opts.processor.Name(),
		InFlight:  uint64(s.heldTotal),
		Version:   s.opts.version,
	}
	for p := range s.pubs {
		if !all && !a.may(p.producerID, tlsutil.RoleProducer, tlsutil.RoleStage) {
			continue
		}
		resp.Producers = append(resp.Producers, &adminv1.ProducerStatus{
			ProducerId:  p.producerID,
			Incarnation: p.incarnation,
			Peer:        p.peer,
			InFlight:    uint64(p.inFlight),
			Received:    p.received,
			Acked:       p.ackedN,
			Nacked:      p.nackedN,
		})
	}
	for sub := range s.subs {
		if !all && !a.may(sub.consumerID, tlsutil.RoleConsumer, tlsutil.RoleStage) {
			continue
		}
		resp.Consumers = append(resp.Consumers, &adminv1.ConsumerStatus{
			ConsumerId: sub.consumerID,
			Group:      sub.group,
			Peer:       sub.peer,
			InFlight:   uint64(sub.unacked.len()),
			Credit:     sub.credit,
			Delivered:  sub.delivered,
			Acked:      sub.ackedN,
			Draining:   sub.draining,
		})
	}
	s.mu.Unlock()
	resp.Received = s.received.Load()
	resp.Acked = s.acked.Load()
	resp.Nacked = s.nacked.total()
	resp.Delivered = s.delivered.Load()
	slices.SortFunc(resp.Producers, func(a, b *adminv1.ProducerStatus) int {
		return cmp.Or(cmp.Compare(a.ProducerId, b.ProducerId), cmp.Compare(a.Incarnation, b.Incarnation), cmp.Compare(a.Peer, b.Peer))
	})
	slices.SortFunc(resp.Consumers, func(a, b *adminv1.ConsumerStatus) int {
		return cmp.Or(cmp.Compare(a.Group, b.Group), cmp.Compare(a.ConsumerId, b.ConsumerId), cmp.Compare(a.Peer, b.Peer))
	})
	return resp, nil
}

// Drain starts a drain and returns once it started.
func (as *adminService) Drain(ctx context.Context, req *adminv1.DrainRequest) (*adminv1.DrainResponse, error) {
	s := as.s
	if err := s.accessOf(ctx).admin("drain the instance"); err != nil {
		return nil, err
	}
	timeout := s.opts.drainTimeout
	if d := req.GetTimeout(); d != nil {
		if err := d.CheckValid(); err != nil || d.AsDuration() < 0 {
			return nil, status.Errorf(codes.InvalidArgument, "intermediate: invalid drain timeout %v", d)
		}
		timeout = d.AsDuration()
	}
	st, err := s.requestDrain(ctx, messagev1.DrainReason_DRAIN_REASON_OPERATOR, timeout)
	if err != nil {
		if ctx.Err() != nil {
			return nil, status.FromContextError(ctx.Err()).Err()
		}
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	return &adminv1.DrainResponse{AlreadyDraining: st.already, InFlight: st.held}, nil
}

// processService serves ProcessService.
type processService struct {
	deliveryv1.UnimplementedProcessServiceServer
	s *Server
}

var _ deliveryv1.ProcessServiceServer = (*processService)(nil)

// Process runs the processor on one message.
func (ps *processService) Process(ctx context.Context, req *deliveryv1.ProcessRequest) (*deliveryv1.ProcessResponse, error) {
	s := ps.s
	if a := s.accessOf(ctx); !a.may("", tlsutil.Roles...) {
		return nil, a.denied("process messages")
	}
	if req.GetMessage() == nil {
		return nil, status.Error(codes.InvalidArgument, "intermediate: request has no message")
	}
	if err := butterfly.CheckMessage(req.GetMessage()); err != nil {
		return nil, status.Error(codes.InvalidArgument, "intermediate: message "+err.Error())
	}
	s.mu.Lock()
	draining := s.draining
	s.mu.Unlock()
	if draining {
		return nil, status.Error(codes.Unavailable, "intermediate: draining")
	}
	res, err := s.process(ctx, req.GetMessage())
	if err != nil {
		return nil, status.Error(codes.Aborted, "intermediate: "+err.Error())
	}
	return &deliveryv1.ProcessResponse{Message: res, Instance: s.instance, Processor: s.opts.processor.Name()}, nil
}
