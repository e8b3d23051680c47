package integration

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// labProbeEnv makes this test binary, started inside a lab host, a probe
// instead of a test run: the test itself lives in the root namespace and
// cannot reach lab addresses.
//
//	listen ADDR        accept connections on ADDR, answer each with "ok"
//	dial ADDR          exit 0 if ADDR answers "ok" within a second
//	etcd-leader EPS    print the client endpoint of the etcd leader
//	etcd-keys=P EPS    print the keys under prefix P
const labProbeEnv = "BUTTERFLY_LAB_PROBE"

func init() {
	if mode := os.Getenv(labProbeEnv); mode != "" {
		os.Exit(runProbe(strings.Fields(mode)))
	}
}

func runProbe(args []string) int {
	if len(args) != 2 {
		fmt.Fprintf(os.Stderr, "%s: want MODE ARG, got %q\n", labProbeEnv, args)
		return 2
	}
	switch args[0] {
	case "listen":
		l, err := net.Listen("tcp", args[1])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Println("listening")
		for {
			c, err := l.Accept()
			if err != nil {
				return 1
			}
			c.Write([]byte("ok\n"))
			c.Close()
		}
	case "dial":
		c, err := net.DialTimeout("tcp", args[1], time.Second)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if line != "ok\n" {
			fmt.Fprintf(os.Stderr, "read %q: %v\n", line, err)
			return 1
		}
		return 0
	case "etcd-leader":
		eps := strings.Split(args[1], ",")
		cli, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer cli.Close()
		for _, ep := range eps {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			st, err := cli.Status(ctx, ep)
			cancel()
			if err == nil && st.Leader != 0 && st.Header.GetMemberId() == st.Leader {
				fmt.Println(ep)
				return 0
			}
		}
		fmt.Fprintln(os.Stderr, "no endpoint says it leads")
		return 1
	}
	if strings.HasPrefix(args[0], "etcd-keys=") {
		cli, err := clientv3.New(clientv3.Config{Endpoints: strings.Split(args[1], ","), DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer cli.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		resp, err := cli.Get(ctx, strings.TrimPrefix(args[0], "etcd-keys="), clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		for _, kv := range resp.Kvs {
			fmt.Println(string(kv.Key))
		}
		return 0
	}
	fmt.Fprintf(os.Stderr, "%s: unknown mode %q\n", labProbeEnv, args[0])
	return 2
}

// probe runs this test binary as a probe on h and returns whether it
// succeeded, with its output.
func (h *host) probe(mode string) (bool, string) {
	exe, err := os.Executable()
	if err != nil {
		h.lab.t.Fatalf("os.Executable() = %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := h.command(ctx, exe)
	// The race detector would otherwise sleep a second at exit.
	c.Env = append(os.Environ(), labProbeEnv+"="+mode, "GORACE=atexit_sleep_ms=0")
	out, err := c.CombinedOutput()
	return err == nil, strings.TrimSpace(string(out))
}

// listen starts a probe listener on h, port 9000.
func (h *host) listen() *proc {
	h.lab.t.Helper()
	exe, err := os.Executable()
	if err != nil {
		h.lab.t.Fatalf("os.Executable() = %v", err)
	}
	p := h.spawn("listener@"+h.name, []string{labProbeEnv + "=listen " + h.ip + ":9000"}, exe)
	p.waitOutput("listening", defaultTestTimeout)
	return p
}

// reaches reports whether a TCP connection from a to b's probe listener
// gets its answer.
func (l *lab) reaches(a, b *host) bool {
	ok, _ := a.probe("dial " + b.ip + ":9000")
	return ok
}

// etcdKeys returns the keys under prefix, read from h.
func (l *lab) etcdKeys(from *host, prefix string) []string {
	ok, out := from.probe("etcd-keys=" + prefix + " " + strings.Join(l.etcdEndpoints(), ","))
	if !ok || out == "" {
		return nil
	}
	return strings.Split(out, "\n")
}

// etcdLeader returns the host of the etcd leader, asked from h.
func (l *lab) etcdLeader(from *host) *host {
	l.t.Helper()
	var out string
	deadline := time.Now().Add(defaultTestTimeout)
	for time.Now().Before(deadline) {
		var ok bool
		if ok, out = from.probe("etcd-leader " + strings.Join(l.etcdEndpoints(), ",")); ok {
			ip, _, _ := net.SplitHostPort(out)
			l.mu.Lock()
			hosts := append([]*host(nil), l.hosts...)
			l.mu.Unlock()
			for _, h := range hosts {
				if h.ip == ip {
					return h
				}
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	l.t.Fatalf("no etcd leader found: %s", out)
	return nil
}
