package deploy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

const startTimeout = 30 * time.Second

// proc is a running butterfly process whose stdout lines are collected.
type proc struct {
	cmd    *exec.Cmd
	stderr bytes.Buffer
	mu     sync.Mutex
	lines  []string
	added  chan struct{} // closed and replaced on every new line
	exited chan struct{}
	err    error
}

// start runs args with exactly env, killing it at the end of the test.
func start(t *testing.T, args, env []string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(args[0], args[1:]...), added: make(chan struct{}), exited: make(chan struct{})}
	p.cmd.Env = env
	p.cmd.Stderr = &lockedWriter{w: &p.stderr, mu: &p.mu}
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %q: %v", args, err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, sc.Text())
			close(p.added)
			p.added = make(chan struct{})
			p.mu.Unlock()
		}
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.exited
	})
	return p
}

// waitLine returns the first stdout line containing s, failing the test if
// none comes within timeout or the process exits first.
func (p *proc) waitLine(t *testing.T, s string, timeout time.Duration) string {
	t.Helper()
	deadline := time.After(timeout)
	for {
		p.mu.Lock()
		for _, l := range p.lines {
			if strings.Contains(l, s) {
				p.mu.Unlock()
				return l
			}
		}
		added := p.added
		p.mu.Unlock()
		select {
		case <-added:
		case <-p.exited:
			t.Fatalf("%q exited (%v) before printing %q; stderr:\n%s", p.cmd.Args, p.err, s, p.stderrText())
		case <-deadline:
			t.Fatalf("%q printed no %q within %v; stderr:\n%s", p.cmd.Args, s, timeout, p.stderrText())
		}
	}
}

func (p *proc) stderrText() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.String()
}

type lockedWriter struct {
	w  io.Writer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// freePort returns a TCP port free on host at the time of the call.
func freePort(t *testing.T, host string) int {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startEtcd runs `butterfly etcd` on free loopback ports and returns its
// client URL.
func startEtcd(t *testing.T) string {
	t.Helper()
	client := fmt.Sprintf("http://127.0.0.1:%d", freePort(t, "127.0.0.1"))
	peer := fmt.Sprintf("http://127.0.0.1:%d", freePort(t, "127.0.0.1"))
	p := start(t, []string{binary, "etcd", "--data-dir", t.TempDir(), "--listen-client", client, "--listen-peer", peer}, nil)
	p.waitLine(t, "etcd ready", startTimeout)
	return client
}

// podIP returns a random loopback address (127.x.y.z) on which the
// manifest's fixed ports are free: the test's stand-in for a pod IP.
func podIP(t *testing.T, ports ...int32) string {
	t.Helper()
	for range 20 {
		ip := fmt.Sprintf("127.%d.%d.%d", 1+rand.IntN(250), rand.IntN(256), 2+rand.IntN(250))
		free := true
		for _, port := range ports {
			l, err := net.Listen("tcp", net.JoinHostPort(ip, fmt.Sprint(port)))
			if err != nil {
				free = false
				break
			}
			l.Close()
		}
		if free {
			return ip
		}
	}
	t.Fatal("no loopback address with the ports free")
	return ""
}

// TestContainer_IntermediateServes runs the intermediate container of each
// variant as the kubelet would, as a process here: the command line from the
// Dockerfile's ENTRYPOINT and the manifest's args, the manifest's
// environment with the downward API set to a loopback pod
// (POD_IP=127.x.y.z, pod name butterfly-intermediate-0), its ConfigMap's
// etcd endpoints pointing at a `butterfly etcd` started here, and for mTLS
// its Secrets written by `butterfly certs` at their mount paths. It checks
// that the instance registers under the pod name at the pod IP and the
// listen port, that grpc.health.v1 answers SERVING to a client configured as
// the components are, that the readiness probe passes as the kubelet runs
// it, and that SIGTERM drains and exits 0 within the grace period, its registration removed.
func TestContainer_IntermediateServes(t *testing.T) {
	d := readDockerfile(t)
	for _, v := range variants {
		if v.name == "external-etcd" {
			continue // needs an etcd with TLS and users; `butterfly etcd` has neither
		}
		t.Run(v.name, func(t *testing.T) {
			t.Parallel()
			m := render(t, v.dir)
			var sts, consumer *corev1.PodTemplateSpec
			var grace time.Duration
			for _, s := range m.StatefulSets {
				if s.Name == "butterfly-intermediate" {
					sts = &s.Spec.Template
					grace = time.Duration(*s.Spec.Template.Spec.TerminationGracePeriodSeconds) * time.Second
				}
			}
			for _, dep := range m.Deployments {
				if dep.Name == "butterfly-consumer" {
					consumer = &dep.Spec.Template
				}
			}
			if sts == nil || consumer == nil {
				t.Fatal("no butterfly-intermediate StatefulSet or butterfly-consumer Deployment")
			}
			c := &sts.Spec.Containers[0]
			grpcPort, _ := containerPortOf(c, intstr.FromString("grpc"))
			adminPort, _ := containerPortOf(c, intstr.FromString("admin"))
			pod := pod{name: "butterfly-intermediate-0", ip: podIP(t, grpcPort, adminPort), namespace: "butterfly"}
			etcd := startEtcd(t)
			configMaps := map[string]map[string]string{}
			for _, cm := range m.ConfigMaps {
				configMaps[cm.Name] = cm.Data
			}
			configMaps["butterfly-etcd"]["endpoints"] = etcd

			var certDir string
			mounts := map[string]string{} // mount path -> directory here
			if v.tls {
				certDir = t.TempDir()
				out, err := exec.Command(binary, "certs", "--dir", certDir, "--hosts", "butterfly-intermediate").CombinedOutput()
				if err != nil {
					t.Fatalf("butterfly certs: %v\n%s", err, out)
				}
				for _, vm := range c.VolumeMounts {
					dir := t.TempDir()
					mounts[vm.MountPath] = dir
					for key, file := range map[string]string{"tls.crt": "server.pem", "tls.key": "server-key.pem", "ca.crt": "ca.pem"} {
						copyFile(t, filepath.Join(certDir, file), filepath.Join(dir, key))
					}
				}
			}
			env := pod.env(t, c.Env, configMaps, mounts)
			args := argv(d, c)
			vars := map[string]string{}
			for _, kv := range env {
				k, val, _ := strings.Cut(kv, "=")
				vars[k] = val
			}
			for i := range args {
				args[i] = expand(args[i], vars)
			}
			if args[0] != "/butterfly" {
				t.Fatalf("container runs %q, not the image's /butterfly", args)
			}
			args[0] = binary
			p := start(t, args, env)

			var serving struct {
				Event, Service, Instance, Addr string
				Epoch                          uint64
			}
			line := p.waitLine(t, `"event":"serving"`, startTimeout)
			if err := json.Unmarshal([]byte(line), &serving); err != nil {
				t.Fatalf("serving line %q: %v", line, err)
			}
			wantAddr := net.JoinHostPort(pod.ip, fmt.Sprint(grpcPort))
			if serving.Instance != pod.name || serving.Addr != wantAddr || serving.Service != "intermediate" || serving.Epoch == 0 {
				t.Fatalf("serving %+v, want instance %s at %s of service intermediate", serving, pod.name, wantAddr)
			}

			// A client configured as the consumer Deployment configures its
			// own: CA, client certificate and the server name it verifies.
			creds := insecure.NewCredentials()
			if v.tls {
				_, cv, _ := flagValues(t, argv(d, &consumer.Spec.Containers[0]), consumer.Spec.Containers[0].Env)
				creds = clientCreds(t, certDir, cv["tls-server-name"])
			}
			if got := healthCheck(t, wantAddr, creds, ""); got != healthpb.HealthCheckResponse_SERVING {
				t.Fatalf("grpc.health.v1 Check: %v, want SERVING", got)
			}
			probe(t, c, pod.ip)

			// SIGTERM: the drain ends, the process exits 0, within the
			// grace period the kubelet gives it.
			began := time.Now()
			if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			select {
			case <-p.exited:
				if p.err != nil {
					t.Fatalf("after SIGTERM: %v; stderr:\n%s", p.err, p.stderrText())
				}
				t.Logf("drained and exited in %v (grace period %v)", time.Since(began).Round(time.Millisecond), grace)
				// The drain removed the registration.
				out, err := exec.Command(binary, "ls", "--json", "--etcd-endpoints", etcd).Output()
				if err != nil {
					t.Fatalf("butterfly ls: %v", err)
				}
				if strings.Contains(string(out), pod.name) {
					t.Fatalf("butterfly ls after the drain still lists %s: %s", pod.name, out)
				}
			case <-time.After(grace):
				t.Fatalf("still running %v after SIGTERM, when the kubelet would kill it; stderr:\n%s", grace, p.stderrText())
			}
		})
	}
}

// pod is the downward API of the test's stand-in pod.
type pod struct{ name, ip, namespace string }

// env resolves a container's environment as the kubelet does: fieldRef
// from the pod, configMapKeyRef from configMaps, $(VAR) references to
// earlier variables; paths under a Secret's mount path are moved to the
// directory here that holds its files.
func (p pod) env(t *testing.T, vars []corev1.EnvVar, configMaps map[string]map[string]string, mounts map[string]string) []string {
	t.Helper()
	resolved := map[string]string{}
	var env []string
	for _, e := range vars {
		val := expand(e.Value, resolved)
		if r := e.ValueFrom; r != nil {
			switch {
			case r.FieldRef != nil:
				val = map[string]string{"metadata.name": p.name, "status.podIP": p.ip, "metadata.namespace": p.namespace}[r.FieldRef.FieldPath]
				if val == "" {
					t.Fatalf("%s: fieldRef %s is not one the test sets", e.Name, r.FieldRef.FieldPath)
				}
			case r.ConfigMapKeyRef != nil:
				var ok bool
				if val, ok = configMaps[r.ConfigMapKeyRef.Name][r.ConfigMapKeyRef.Key]; !ok {
					t.Fatalf("%s: no ConfigMap %s key %s", e.Name, r.ConfigMapKeyRef.Name, r.ConfigMapKeyRef.Key)
				}
			default:
				t.Fatalf("%s: a source the test does not provide: %+v", e.Name, r)
			}
		}
		for mount, dir := range mounts {
			if strings.HasPrefix(val, mount+"/") {
				val = dir + strings.TrimPrefix(val, mount)
			}
		}
		resolved[e.Name] = val
		env = append(env, e.Name+"="+val)
	}
	return env
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// clientCreds are mutual TLS credentials with the client certificate of dir
// that verify the server as serverName.
func clientCreds(t *testing.T, dir, serverName string) credentials.TransportCredentials {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "client.pem"), filepath.Join(dir, "client-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(readFile(t, filepath.Join(dir, "ca.pem"))) {
		t.Fatal("ca.pem: no certificate")
	}
	return credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, ServerName: serverName, MinVersion: tls.VersionTLS12})
}

// healthCheck asks grpc.health.v1 at addr about service.
func healthCheck(t *testing.T, addr string, creds credentials.TransportCredentials, service string) healthpb.HealthCheckResponse_ServingStatus {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: service}, grpc.WaitForReady(true))
	if err != nil {
		t.Fatalf("grpc.health.v1 Check %s: %v", addr, err)
	}
	return resp.GetStatus()
}

// probe runs c's readiness probe as the kubelet does (gRPC in plaintext,
// or HTTP GET) against the pod at ip, until it passes or startTimeout passes.
func probe(t *testing.T, c *corev1.Container, ip string) {
	t.Helper()
	pr := c.ReadinessProbe
	deadline := time.Now().Add(startTimeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		var got string
		switch {
		case pr.GRPC != nil:
			addr := net.JoinHostPort(ip, fmt.Sprint(pr.GRPC.Port))
			s := healthCheck(t, addr, insecure.NewCredentials(), ptrOr(pr.GRPC.Service, ""))
			if s == healthpb.HealthCheckResponse_SERVING {
				return
			}
			got = s.String()
		case pr.HTTPGet != nil:
			port, ok := containerPortOf(c, pr.HTTPGet.Port)
			if !ok {
				t.Fatalf("probe port %s is no container port", pr.HTTPGet.Port.String())
			}
			resp, err := http.Get(fmt.Sprintf("http://%s%s", net.JoinHostPort(ip, fmt.Sprint(port)), pr.HTTPGet.Path))
			if err != nil {
				got = err.Error()
				break
			}
			resp.Body.Close()
			if resp.StatusCode >= 200 && resp.StatusCode < 400 {
				return
			}
			got = resp.Status
		default:
			t.Fatalf("probe %+v: neither gRPC nor HTTP", pr)
		}
		if time.Now().After(deadline) {
			t.Fatalf("readiness probe still failing after %v: %s", startTimeout, got)
		}
		<-tick.C
	}
}
