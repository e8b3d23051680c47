package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// child is one process of a run in separate processes, with pipes to its
// standard input and output and the tail of its standard error.
type child struct {
	name   string
	cmd    *exec.Cmd
	in     *os.File // its standard input, our end
	out    *os.File // its standard output, our end
	enc    *json.Encoder
	dec    *json.Decoder
	stderr *tailBuffer
	done   chan struct{} // closed once the process was waited for
	state  *os.ProcessState
}

// startChild starts exe with args as name. A goroutine waits for the
// process; kill and wait end it.
func startChild(name, exe string, args []string) (*child, error) {
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("bench: %s: %w", name, err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return nil, fmt.Errorf("bench: %s: %w", name, err)
	}
	c := &child{name: name, in: inW, out: outR, stderr: &tailBuffer{max: 8 << 10}, done: make(chan struct{})}
	c.cmd = exec.Command(exe, args...)
	c.cmd.Stdin, c.cmd.Stdout, c.cmd.Stderr = inR, outW, c.stderr
	c.cmd.SysProcAttr = childAttr()
	err = c.cmd.Start()
	inR.Close()
	outW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		return nil, fmt.Errorf("bench: start %s: %w", name, err)
	}
	c.enc, c.dec = json.NewEncoder(c.in), json.NewDecoder(c.out)
	go func() {
		c.cmd.Wait() //nolint:errcheck // the state tells how it ended
		c.state = c.cmd.ProcessState
		close(c.done)
	}()
	return c, nil
}

// pid is the child's process id.
func (c *child) pid() int { return c.cmd.Process.Pid }

// read decodes the next JSON value the child writes into v, within timeout
// and while ctx lasts.
func (c *child) read(ctx context.Context, timeout time.Duration, v any) error {
	if err := c.out.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return fmt.Errorf("bench: %s: %w", c.name, err)
	}
	stop := context.AfterFunc(ctx, func() { c.out.SetReadDeadline(time.Now()) }) //nolint:errcheck // best effort: the timeout still holds
	defer stop()
	if err := c.dec.Decode(v); err != nil {
		return c.failed(errors.Join(ctx.Err(), err))
	}
	return nil
}

// failed wraps err with the child's name, how it ended if it did, and the
// tail of its standard error.
func (c *child) failed(err error) error {
	msg := fmt.Sprintf("bench: %s: %v", c.name, err)
	select {
	case <-c.done:
		msg += fmt.Sprintf(" (%v)", c.state)
	default:
	}
	if tail := strings.TrimSpace(c.stderr.String()); tail != "" {
		msg += "; its last output:\n" + tail
	}
	return errors.New(msg)
}

// stop asks the child to stop (SIGTERM: an intermediate drains) and waits
// for it up to timeout, then kills it.
func (c *child) stop(timeout time.Duration) {
	c.cmd.Process.Signal(syscall.SIGTERM) //nolint:errcheck // it may have exited already
	c.wait(timeout)
}

// wait waits for the child to exit on its own up to timeout, then kills it.
func (c *child) wait(timeout time.Duration) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-c.done:
	case <-t.C:
		c.kill()
	}
}

// kill kills the child if it still runs, waits for it and closes the
// pipes. Safe to call twice.
func (c *child) kill() {
	select {
	case <-c.done:
	default:
		c.cmd.Process.Kill() //nolint:errcheck // it may have exited meanwhile
		<-c.done
	}
	c.in.Close()
	c.out.Close()
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	max int

	// mu guards b.
	mu sync.Mutex
	b  []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if over := len(t.b) - t.max; over > 0 {
		t.b = append(t.b[:0], t.b[over:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}
