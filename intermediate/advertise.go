package intermediate

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	adminv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/admin/v1"
	"github.com/butterfly-mesh/butterfly/internal/tlsutil"
)

// defaultAdvertiseCheckTimeout bounds the one call of the check of the
// advertised address: its dial, TLS handshake and GetStatus, retried by gRPC
// while the connection fails within it.
const defaultAdvertiseCheckTimeout = 5 * time.Second

// advertiseCheckMaxRecv is the largest GetStatus answer the check takes.
const advertiseCheckMaxRecv = 256 << 20

// AdvertiseError is returned by Serve when the address it registered
// (WithAdvertiseAddr) reaches another server: another instance, or another
// incarnation of this one. Components would send this instance's share of
// the work there, and nothing reaches this one through its registration.
type AdvertiseError struct {
	// Addr is the advertised address.
	Addr string
	// Service, Instance and Epoch are those of the server that answers at
	// Addr.
	Service, Instance string
	Epoch             uint64
}

func (e *AdvertiseError) Error() string {
	return fmt.Sprintf("intermediate: advertised address %s reaches another server: it answers as %s/%s epoch %d",
		e.Addr, e.Service, e.Instance, e.Epoch)
}

// checkAdvertised starts the check of the advertised address addr, at
// which the server registered with epoch, when it has one to make (an
// address given by WithAdvertiseAddr, and credentials to dial it with). The
// returned channel receives the error once another server answers there; it
// is nil when there is no check. The goroutine is counted in s.wg and ends
// with ctx.
func (s *Server) checkAdvertised(ctx context.Context, addr string, epoch uint64) <-chan *AdvertiseError {
	if s.opts.advertiseAddr == "" || s.opts.advertiseCheck == nil {
		return nil
	}
	wrong := make(chan *AdvertiseError, 1)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := s.whoAnswers(ctx, addr, epoch); err != nil {
			wrong <- err
		}
	}()
	return wrong
}

// whoAnswers dials addr as a client would, with the credentials of
// WithAdvertiseCheck, and reads who answers there with
// AdminService.GetStatus. It returns an *AdvertiseError when another
// service, instance or epoch than this server's answers. An address it
// cannot read within the timeout (no hairpin NAT, a firewall, a TLS
// handshake it cannot complete, a server without AdminService) proves
// nothing: it logs one warning and returns nil.
func (s *Server) whoAnswers(ctx context.Context, addr string, epoch uint64) *AdvertiseError {
	creds := s.opts.advertiseCheck
	warn := func(err error, attrs ...any) {
		if ctx.Err() != nil {
			return // Serve ends: the check did not fail
		}
		s.log.Warn("intermediate: could not check who answers at the advertised address; serving on",
			append([]any{"addr", addr, "err", err}, attrs...)...)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		warn(err)
		return nil
	}
	defer conn.Close()
	cctx, cancel := context.WithTimeout(ctx, s.opts.advertiseCheckTimeout)
	defer cancel()
	// Another instance's status lists every stream connected to it:
	// thousands are over gRPC's default 4 MiB.
	st, err := adminv1.NewAdminServiceClient(conn).GetStatus(cctx, &adminv1.GetStatusRequest{},
		grpc.WaitForReady(true), grpc.MaxCallRecvMsgSize(advertiseCheckMaxRecv))
	if err != nil {
		// A connection that never came up because the two ends disagree
		// on TLS is said as such (at the cost of a handshake of its own).
		if c := status.Code(err); c == codes.Unavailable || c == codes.DeadlineExceeded {
			if why := tlsutil.Mismatch(ctx, addr, creds, status.Convert(err).Message()); why != "" {
				warn(err, "tls", why)
				return nil
			}
		}
		warn(err)
		return nil
	}
	if st.GetService() != s.service || st.GetInstance() != s.instance || st.GetEpoch() != epoch {
		return &AdvertiseError{Addr: addr, Service: st.GetService(), Instance: st.GetInstance(), Epoch: st.GetEpoch()}
	}
	s.log.Debug("intermediate: the advertised address reaches this server", "addr", addr)
	return nil
}
