package registry

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// control is the JSON stored at a control key.
type control struct {
	Drain bool `json:"drain"`
}

// RequestDrain writes {"drain":true} to the control key of an instance. The
// key has no lease: it waits for the instance, which deletes it when it
// closes its registration (and a new incarnation deletes a stale one when it
// registers).
func RequestDrain(ctx context.Context, cli *clientv3.Client, service, instance string, opts ...Option) error {
	o := newOptions(opts)
	for _, n := range [][2]string{{"prefix", o.prefix}, {"service", service}, {"instance", instance}} {
		if err := ValidateName(n[0], n[1]); err != nil {
			return err
		}
	}
	b, err := json.Marshal(control{Drain: true})
	if err != nil {
		return fmt.Errorf("registry: encode control value: %w", err)
	}
	key := ControlKey(o.prefix, service, instance)
	if _, err := cli.Put(ctx, key, string(b)); err != nil {
		return fmt.Errorf("registry: put %s: %w", key, err)
	}
	return nil
}

// watchControl watches the control key from the registration's first put
// (which deleted any stale control value) until a drain is requested.
func (r *Registration) watchControl() {
	defer r.wg.Done()
	bo := newBackoff(50*time.Millisecond, 2*time.Second)
	rev := r.startRev
	for {
		if rev == 0 {
			if !bo.wait(r.ctx) {
				return
			}
			ctx, cancel := context.WithTimeout(r.ctx, r.callTimeout)
			get, err := r.cli.Get(ctx, r.ctlKey)
			cancel()
			if err != nil {
				if r.ctx.Err() != nil {
					return
				}
				r.logger.Warn("registry: get control key", "err", err)
				continue
			}
			if len(get.Kvs) > 0 && r.applyControl(get.Kvs[0].Value) {
				return
			}
			rev = get.Header.Revision
			bo.reset()
		}
		if r.watchControlFrom(rev) {
			return
		}
		if r.ctx.Err() != nil {
			return
		}
		rev = 0
	}
}

// watchControlFrom watches the control key from rev+1; it reports whether a
// drain was requested.
func (r *Registration) watchControlFrom(rev int64) bool {
	ctx, cancel := context.WithCancel(r.ctx)
	defer cancel()
	wch := r.cli.Watch(clientv3.WithRequireLeader(ctx), r.ctlKey, clientv3.WithRev(rev+1))
	for wr := range wch {
		if err := wr.Err(); err != nil {
			r.logger.Warn("registry: watch of control key halted", "err", err)
			return false
		}
		for _, ev := range wr.Events {
			if ev.Type == clientv3.EventTypePut && r.applyControl(ev.Kv.Value) {
				return true
			}
		}
	}
	return false
}

// applyControl acts on a control value; it reports whether a drain was
// requested.
func (r *Registration) applyControl(data []byte) bool {
	var c control
	if err := json.Unmarshal(data, &c); err != nil {
		r.logger.Warn("registry: malformed control value", "control_key", r.ctlKey, "err", err)
		return false
	}
	if !c.Drain {
		return false
	}
	r.drainOnce.Do(func() {
		r.logger.Info("registry: drain requested")
		close(r.drain)
	})
	return true
}
