package intermediate

import (
	"context"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	adminv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/admin/v1"
	"github.com/butterfly-mesh/butterfly/internal/tlsutil"
)

// defaultAdvertiseCheckTimeout bounds the one call of the check of the
// advertised address: its dial, TLS handshake and GetStatus. A refused
// connection ends the call at once; an address whose packets are dropped
// waits this long.
const defaultAdvertiseCheckTimeout = 3 * time.Second

// advertiseCheckMaxRecv is the largest GetStatus answer the check takes.
const advertiseCheckMaxRecv = 256 << 20

// AdvertiseError is returned by Serve when the address of WithAdvertiseAddr
// reaches another server than this one: another instance, another process
// of this instance (a command line copied with its name), or a server that
// is not an intermediate. Components would send this instance's share of
// the work there, and a registration would take over that of the instance
// answering under the same name: Serve returns it without registering.
type AdvertiseError struct {
	// Addr is the advertised address.
	Addr string
	// Service, Instance and Epoch are those of the intermediate that
	// answers at Addr (Epoch 0 while it is not registered); empty when what
	// answers is not an intermediate.
	Service, Instance string
	Epoch             uint64
	// Reason says what answers at Addr when it is not an intermediate, ""
	// when it is one.
	Reason string
}

func (e *AdvertiseError) Error() string {
	return "intermediate: advertised address " + e.Addr + " reaches another server, not this one: " + e.Answers()
}

// Answers says who answers at Addr: the service, instance and epoch of an
// intermediate, or Reason.
func (e *AdvertiseError) Answers() string {
	if e.Reason != "" {
		return e.Reason
	}
	return fmt.Sprintf("it answers as %s/%s epoch %d", e.Service, e.Instance, e.Epoch)
}

// checkAdvertised dials the address of WithAdvertiseAddr, addr, with the
// credentials of WithAdvertiseCheck and asks who answers there
// (AdminService.GetStatus). Serve calls it once its gRPC server serves and
// before it registers, so that a wrong address takes nothing over: with no
// epoch yet, this server is told from another process by its service,
// instance and start time, which no other process shares. It returns an
// *AdvertiseError when another server answers; nil when this one does, when
// there is nothing to check, when ctx ends or Stop is called, or when the
// address cannot be read from this host, which proves nothing and is
// logged once as a warning.
func (s *Server) checkAdvertised(ctx context.Context, addr string) error {
	creds := s.opts.advertiseCheck
	if s.opts.advertiseAddr == "" || creds == nil {
		return nil
	}
	ctx, cancel := s.untilStopped(ctx)
	defer cancel()
	warn := func(why string, err error) {
		if ctx.Err() != nil {
			return // Serve ends: the check did not fail
		}
		s.log.Warn("intermediate: could not check who answers at the advertised address; registering anyway",
			"addr", addr, "why", why, "err", err)
	}
	// Not through an HTTP proxy of the environment: reaching its own
	// address through one proves nothing.
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds), grpc.WithNoProxy())
	if err != nil {
		warn("the address cannot be dialled", err)
		return nil
	}
	defer conn.Close()
	cctx, ccancel := context.WithTimeout(ctx, s.opts.advertiseCheckTimeout)
	defer ccancel()
	// Not WaitForReady: a refused connection ends the call at once, and
	// only an address that drops packets waits for the timeout. Another
	// instance's status lists every stream connected to it: thousands are
	// over gRPC's default 4 MiB.
	st, err := adminv1.NewAdminServiceClient(conn).GetStatus(cctx, &adminv1.GetStatusRequest{},
		grpc.MaxCallRecvMsgSize(advertiseCheckMaxRecv))
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		plaintext := tlsutil.IsPlaintext(creds)
		if reason := notIntermediate(err, plaintext); reason != "" {
			return s.misadvertised(&AdvertiseError{Addr: addr, Reason: reason})
		}
		why := uncheckedWhy(err, plaintext, s.opts.advertiseCheckTimeout)
		if plaintext && !s.opts.advertiseCheckSet {
			why += " (the check dials in plaintext unless WithAdvertiseCheck gives it TLS credentials)"
		}
		warn(why, err)
		return nil
	}
	if st.GetService() != s.service || st.GetInstance() != s.instance || !proto.Equal(st.GetStartTime(), timestamppb.New(s.started)) {
		if st.GetService() == s.service && st.GetInstance() == s.instance && st.GetDraining() {
			// A process of this instance that is leaving, still answering
			// at an address both share (a load balancer in front of each
			// instance): this one is its successor, as after a move.
			s.log.Warn("intermediate: a previous process of this instance answers at the advertised address while it drains; registering as its successor",
				"addr", addr, "epoch", st.GetEpoch())
			return nil
		}
		return s.misadvertised(&AdvertiseError{Addr: addr, Service: st.GetService(), Instance: st.GetInstance(), Epoch: st.GetEpoch()})
	}
	s.log.Debug("intermediate: the advertised address reaches this server", "addr", addr)
	return nil
}

// misadvertised logs e and returns it.
func (s *Server) misadvertised(e *AdvertiseError) error {
	s.log.Error("intermediate: the advertised address reaches another server; not registering", "addr", e.Addr, "answers", e.Answers())
	return e
}

// notIntermediate says what answers when the failure err of the check's
// GetStatus proves that the server at the address is not this one, ""
// when it does not. plaintext tells whether the check dialled without TLS.
//
// A server that does not know AdminService is no intermediate. A server
// that answers a TLS handshake in plaintext is not this TLS server. The
// reverse, a server that speaks TLS to a check in plaintext, proves
// nothing: a TLS proxy in front of this plaintext server looks the same
// from here, and it is said as a warning (uncheckedWhy).
func notIntermediate(err error, plaintext bool) string {
	if status.Code(err) == codes.Unimplemented {
		return "it is not a Butterfly intermediate (it does not serve " + adminv1.AdminService_ServiceDesc.ServiceName + ")"
	}
	if !plaintext && strings.Contains(err.Error(), "first record does not look like a TLS handshake") {
		return "it answers in plaintext, and this server speaks TLS"
	}
	return ""
}

// uncheckedWhy says, for the intermediate's operator, why the failure err of
// the check's GetStatus leaves the address unchecked. plaintext tells
// whether the check dialled without TLS; timeout is the check's.
func uncheckedWhy(err error, plaintext bool, timeout time.Duration) string {
	msg := err.Error()
	switch {
	case status.Code(err) == codes.DeadlineExceeded:
		return fmt.Sprintf("no answer within %v: a firewall that drops the connection, or no route from this host to its own public address (hairpin NAT)", timeout)
	case strings.Contains(msg, "connection refused"):
		return "the connection is refused from this host: nothing listens at the address, or it is reachable from other hosts only"
	case strings.Contains(msg, "remote error: tls:"):
		return "the server there ended the TLS handshake: it requires a client certificate and does not accept the one the check presents"
	case strings.Contains(msg, "x509:"):
		return "the certificate of the server there does not verify with the check's credentials"
	case plaintext && (strings.Contains(msg, "server preface") || strings.Contains(msg, "EOF") || strings.Contains(msg, "connection reset")):
		return "the connection closed before gRPC's preface: the server there may speak TLS while this one speaks plaintext (a TLS proxy in front of this server, or another server), or it went away"
	}
	return "the call failed"
}
