package components

import (
	"context"
	"errors"
	"fmt"
	"sync"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/butterfly-mesh/butterfly"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
)

// Processor is a processing step a stage runs on every message before it
// forwards it. The result keeps the id and the low-water mark of the
// message whatever the processor sets. The intermediate package's
// processors satisfy it.
type Processor interface {
	Name() string
	Process(ctx context.Context, msg *messagev1.Message) (*messagev1.Message, error)
}

// StageStats are a stage's counters.
type StageStats struct {
	Consumer ConsumerStats
	Producer ProducerStats
}

// Stage consumes from one service and forwards every message, optionally
// processed, to another under its original id. It acknowledges a message
// upstream only once the downstream send was acknowledged (ack chaining), so
// a pipeline of stages stays loss-free end to end.
type Stage struct {
	id       string
	producer *Producer
	consumer *Consumer
	proc     Processor
	// watchStop ends the goroutine that stops the consumer side when the
	// producer side stops on its own; watchDone is closed when it returned.
	watchStop, watchDone chan struct{}
	closeOnce            sync.Once
}

// NewStage returns a stage named id (its consumer and producer name) that
// consumes from service from and produces to service to, and starts it.
// Handler concurrency defaults to DefaultStageConcurrency, and so does the
// credit per stream: each handler call waits for a downstream acknowledgement.
func NewStage(cli *clientv3.Client, id, from, to string, opts ...StageOption) (*Stage, error) {
	cfg := stageConfig{commonConfig: defaultCommon()}
	for _, o := range opts {
		o.applyStage(&cfg)
	}
	if from == to {
		return nil, fmt.Errorf("components: stage %s consumes from and produces to the same service %q", id, from)
	}
	common := []Option{
		WithPrefix(cfg.prefix),
		WithLogger(cfg.logger),
		WithHeartbeatInterval(cfg.heartbeat),
		WithDialOptions(cfg.dialOptions...),
		withCreds(cfg.creds),
	}
	s := &Stage{id: id, proc: cfg.processor}
	popts := []ProducerOption{WithService(to)}
	for _, o := range common {
		popts = append(popts, o)
	}
	p, err := NewProducer(cli, id, append(popts, cfg.producer...)...)
	if err != nil {
		return nil, fmt.Errorf("components: stage %s: %w", id, err)
	}
	copts := []ConsumerOption{
		consumerOption(func(c *consumerConfig) { c.stage = true }),
		WithService(from),
		WithConcurrency(DefaultStageConcurrency),
		WithCredit(DefaultStageConcurrency),
	}
	for _, o := range common {
		copts = append(copts, o)
	}
	s.producer = p
	c, err := NewConsumer(cli, id, s.forward, append(copts, cfg.consumer...)...)
	if err != nil {
		perr := p.Close(cli.Ctx())
		return nil, errors.Join(fmt.Errorf("components: stage %s: %w", id, err), perr)
	}
	s.consumer = c
	s.watchStop, s.watchDone = make(chan struct{}), make(chan struct{})
	go s.watchProducer()
	return s, nil
}

// watchProducer stops the consumer side with the producer's error when the
// producer side stops on its own (refused downstream): nothing it takes
// could be forwarded. It closes the producer side then, without waiting:
// nothing in hand can be acknowledged downstream any more, and its forwards
// are left unanswered upstream for the stage that takes over, whether or
// not the application closes the stage (Close returns the producer side's
// result).
//
// It watches until Close, whether or not the consumer side stopped first: a
// producer side that stops after it still holds forwards in hand.
func (s *Stage) watchProducer() {
	defer close(s.watchDone)
	select {
	case <-s.producer.Done():
		s.consumer.stop(s.producer.Err())
		now, cancel := context.WithCancel(context.Background())
		cancel()
		_ = s.producer.Close(now)
	case <-s.watchStop:
	}
}

// forward is the stage's handler.
func (s *Stage) forward(ctx context.Context, d *Delivery) error {
	msg := d.Message
	if s.proc != nil {
		out, err := s.proc.Process(ctx, msg)
		if err != nil {
			return fmt.Errorf("%s: %w", s.proc.Name(), err)
		}
		if out == nil {
			return fmt.Errorf("%s: processor returned no message", s.proc.Name())
		}
		butterfly.KeepIdentity(out, msg)
		msg = out
	}
	err := s.producer.SendWait(ctx, msg)
	if err == nil {
		return nil
	}
	// Only a hand-back for good from downstream says the message failed.
	// The producer side stopped (refused downstream) or closed, or the
	// forward was stopped by Close: the message did not fail, and is left
	// unanswered upstream for the stage that takes over.
	var nack *NackError
	failed := errors.As(err, &nack) && ctx.Err() == nil
	stopped := ctx.Err() != nil || errors.Is(err, ErrClosed)
	select {
	case <-s.producer.Done():
		stopped = true
	default:
	}
	if failed || !stopped {
		return err
	}
	return fmt.Errorf("%w: %w", errUnanswered, err)
}

// Done is closed when the stage stops on its own: its consumer side stops
// (see Consumer.Done), or its producer side does (see Producer.Done), which
// stops the consumer side too. Err says why.
func (s *Stage) Done() <-chan struct{} { return s.consumer.Done() }

// Err returns why Done was closed, nil before.
func (s *Stage) Err() error { return s.consumer.Err() }

// Stats returns the stage's counters.
func (s *Stage) Stats() StageStats {
	return StageStats{Consumer: s.consumer.Stats(), Producer: s.producer.Stats()}
}

// Close drains the consumer side (finishing the forwards in hand, each
// waiting for its downstream acknowledgement), then closes the producer
// side. When the producer side stops on its own (refused downstream),
// before Close or while the consumer side drains, nothing in hand can be
// acknowledged downstream any more: it closes the producer side then, and
// the forwards in hand are left unanswered upstream, for the stage that
// takes over. Close is safe to call twice.
func (s *Stage) Close(ctx context.Context) error {
	s.closeOnce.Do(func() { close(s.watchStop) })
	<-s.watchDone
	drained := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		select {
		case <-s.producer.Done():
			// The producer's Close keeps its first result for the call
			// below.
			_ = s.producer.Close(ctx)
		case <-drained:
		}
	}()
	cerr := s.consumer.Close(ctx)
	close(drained)
	<-watched
	return errors.Join(cerr, s.producer.Close(ctx))
}
