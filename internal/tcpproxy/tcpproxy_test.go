package tcpproxy

import (
	"bufio"
	"errors"
	"net"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// echoServer echoes lines until the test ends.
func echoServer(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("net.Listen() = %v", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadBytes('\n')
					if err != nil {
						return
					}
					c.Write(line)
				}
			}()
		}
	}()
	t.Cleanup(func() { lis.Close(); <-done })
	return lis.Addr().String()
}

// TestProxy_Blackhole checks that a blackholed connection stays open but
// carries nothing, and once the blackhole ends delivers what was held, in
// order, and then new traffic.
func TestProxy_Blackhole(t *testing.T) {
	p, err := Listen("127.0.0.1:0", echoServer(t))
	if err != nil {
		t.Fatalf("Listen() = %v", err)
	}
	defer p.Close()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatalf("Dial() = %v", err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	roundTrip := func(msg string, wait time.Duration) (string, error) {
		c.SetDeadline(time.Now().Add(wait))
		if _, err := c.Write([]byte(msg + "\n")); err != nil {
			return "", err
		}
		line, err := r.ReadString('\n')
		return line, err
	}
	if got, err := roundTrip("one", 10*time.Second); err != nil || got != "one\n" {
		t.Fatalf("roundTrip(one) = %q, %v, want one", got, err)
	}
	p.Blackhole(true)
	got, err := roundTrip("two", 50*time.Millisecond)
	if ne := net.Error(nil); !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("roundTrip(two) while blackholed = %q, %v, want a timeout", got, err)
	}
	p.Blackhole(false)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if got, err := r.ReadString('\n'); err != nil || got != "two\n" {
		t.Fatalf("held line after blackhole = %q, %v, want two", got, err)
	}
	if got, err := roundTrip("three", 10*time.Second); err != nil || got != "three\n" {
		t.Fatalf("roundTrip(three) after blackhole = %q, %v, want three", got, err)
	}
}
