package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/butterfly-mesh/butterfly/components"
)

// A run in separate processes drives its producer and consumer processes
// through their standard input and output: the bench process writes one
// workerRequest per line, the worker answers each with one workerReply, and
// says hello with a first reply once its component is up. A worker stops
// when it has answered "finish", or when its input ends (the bench process
// is gone).

// The operations of a worker.
const (
	opRate   = "rate"   // producer: send at Rate messages per second (0: as fast as the window allows)
	opCount  = "count"  // consumer: how many messages were handled so far
	opStart  = "start"  // consumer: start recording latencies
	opStop   = "stop"   // consumer: stop recording latencies, return them
	opFinish = "finish" // producer: stop sending, close, report; consumer: close, report
)

// workerRequest is one request to a worker.
type workerRequest struct {
	Op   string  `json:"op"`
	Rate float64 `json:"rate,omitempty"`
}

// workerReply is a worker's hello or its answer to one request.
type workerReply struct {
	Err string `json:"err,omitempty"`

	// A producer's hello and its report.
	Incarnation uint64 `json:"incarnation,omitempty"`
	Sent        uint64 `json:"sent,omitempty"`
	Acked       uint64 `json:"acked,omitempty"`
	Resent      uint64 `json:"resent,omitempty"`
	Nacked      uint64 `json:"nacked,omitempty"`

	// A consumer's: messages handled a first time, latencies recorded
	// since start (stop), and its report (finish): messages handled again,
	// duplicates its component dropped, and every id it handled.
	Delivered         uint64        `json:"delivered,omitempty"`
	Latency           []bucketCount `json:"latency,omitempty"`
	Twice             uint64        `json:"twice,omitempty"`
	DuplicatesDropped uint64        `json:"duplicates_dropped,omitempty"`
	Seen              []seenIDs     `json:"seen,omitempty"`
}

// seenIDs are the seqs of one producer incarnation a consumer handled.
type seenIDs struct {
	Producer    string `json:"producer"`
	Incarnation uint64 `json:"incarnation"`
	Bitmap      []byte `json:"bitmap"` // idSet.bitmap
}

// workerCloseTimeout bounds a worker's closing of its component.
const workerCloseTimeout = 30 * time.Second

// ServeProducer runs producer id of a run in separate processes on the
// mesh cli reaches: it sends cfg's messages as fast as the window allows,
// then as the requests read from in say, answering on out, until "finish".
func ServeProducer(ctx context.Context, cli *clientv3.Client, id string, cfg Config, in io.Reader, out io.Writer) error {
	p, err := components.NewProducer(cli, id,
		components.WithService(service), components.WithLogger(workerLogger(cfg)),
		components.WithWindow(cfg.Window),
		components.WithBatch(cfg.BatchMessages, cfg.BatchBytes, cfg.Linger),
		components.WithHeartbeatInterval(cfg.Heartbeat))
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	payload := make([]byte, cfg.Payload)
	for i := range payload {
		payload[i] = byte(i)
	}
	var level atomic.Pointer[loadLevel]
	level.Store(newLoadLevel(0))
	lctx, stopLoad := context.WithCancel(ctx)
	sendErr := make(chan error, 1)
	go func() { sendErr <- sendAtLevel(lctx, p, payload, &level) }()
	finish := func() workerReply {
		stopLoad()
		errs := []error{<-sendErr}
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), workerCloseTimeout)
		errs = append(errs, p.Close(cctx))
		cancel()
		st := p.Stats()
		return workerReply{Err: errText(errors.Join(errs...)), Sent: st.Sent, Acked: st.Acked, Resent: st.Resent, Nacked: st.Nacked}
	}
	return serveWorker(in, out, workerReply{Incarnation: p.Incarnation()}, finish, func(req workerRequest) workerReply {
		if req.Op != opRate {
			return workerReply{Err: fmt.Sprintf("producer: unknown op %q", req.Op)}
		}
		level.Store(newLoadLevel(req.Rate))
		return workerReply{}
	})
}

// consumerWorker is what a consumer process handled.
type consumerWorker struct {
	delivered atomic.Uint64 // first handling of a message
	twice     atomic.Uint64 // handled again
	lat       atomic.Pointer[histogram]

	// mu guards seen.
	mu   sync.Mutex
	seen map[seenKey]*idSet
}

// seenKey is one producer incarnation.
type seenKey struct {
	producer    string
	incarnation uint64
}

func (w *consumerWorker) handle(_ context.Context, d *components.Delivery) error {
	now := time.Now()
	id := d.Message.GetId()
	k := seenKey{id.GetProducerId(), id.GetIncarnation()}
	w.mu.Lock()
	s := w.seen[k]
	if s == nil {
		s = &idSet{}
		w.seen[k] = s
	}
	w.mu.Unlock()
	if s.add(id.GetSeq()) {
		w.delivered.Add(1)
	} else {
		w.twice.Add(1)
	}
	if h := w.lat.Load(); h != nil {
		h.record(now.Sub(time.Unix(0, d.Message.GetCreateTimeUnixNano())))
	}
	return nil
}

// ServeConsumer runs consumer id of a run in separate processes on the
// mesh cli reaches: it records what it handles, answering the requests
// read from in on out, until "finish".
func ServeConsumer(ctx context.Context, cli *clientv3.Client, id string, cfg Config, in io.Reader, out io.Writer) error {
	w := &consumerWorker{seen: map[seenKey]*idSet{}}
	c, err := components.NewConsumer(cli, id, w.handle,
		components.WithService(service), components.WithLogger(workerLogger(cfg)),
		components.WithCredit(cfg.Credit),
		components.WithHeartbeatInterval(cfg.Heartbeat))
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	finish := func() workerReply {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), workerCloseTimeout)
		err := c.Close(cctx)
		cancel()
		r := workerReply{Err: errText(err), Delivered: w.delivered.Load(), Twice: w.twice.Load(), DuplicatesDropped: c.Stats().DuplicatesDropped}
		w.mu.Lock()
		defer w.mu.Unlock()
		for k, s := range w.seen {
			r.Seen = append(r.Seen, seenIDs{Producer: k.producer, Incarnation: k.incarnation, Bitmap: s.bitmap()})
		}
		return r
	}
	return serveWorker(in, out, workerReply{}, finish, func(req workerRequest) workerReply {
		switch req.Op {
		case opCount:
		case opStart:
			w.lat.Store(&histogram{})
		case opStop:
			var lat []bucketCount
			if h := w.lat.Swap(nil); h != nil {
				lat = h.buckets()
			}
			return workerReply{Delivered: w.delivered.Load(), Latency: lat}
		default:
			return workerReply{Err: fmt.Sprintf("consumer: unknown op %q", req.Op)}
		}
		return workerReply{Delivered: w.delivered.Load()}
	})
}

// serveWorker writes hello, then answers each request read from in with
// answer, and "finish" with finish, after which it returns. When in ends
// first, it finishes without answering and returns an error.
func serveWorker(in io.Reader, out io.Writer, hello workerReply, finish func() workerReply, answer func(workerRequest) workerReply) error {
	enc, dec := json.NewEncoder(out), json.NewDecoder(in)
	if err := enc.Encode(hello); err != nil {
		finish()
		return fmt.Errorf("bench: worker: %w", err)
	}
	for {
		var req workerRequest
		if err := dec.Decode(&req); err != nil {
			finish()
			return fmt.Errorf("bench: worker: reading requests: %w", err)
		}
		if req.Op == opFinish {
			if err := enc.Encode(finish()); err != nil {
				return fmt.Errorf("bench: worker: %w", err)
			}
			return nil
		}
		if err := enc.Encode(answer(req)); err != nil {
			finish()
			return fmt.Errorf("bench: worker: %w", err)
		}
	}
}

func workerLogger(cfg Config) *slog.Logger {
	if cfg.Logger != nil {
		return cfg.Logger
	}
	return slog.New(slog.DiscardHandler)
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
