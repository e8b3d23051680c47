package deploy

import (
	"flag"
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// The kustomizations a user applies, each checked as kubectl apply -k
// renders it.
var variants = []struct {
	name, dir string
	// tls: the gRPC connections use mutual TLS from Secrets.
	tls bool
}{
	{"mtls", "kubernetes", true},
	{"trial", "kubernetes/trial", false},
	{"external-etcd", "kubernetes/external-etcd", true},
}

// drainFlushes is how long a drain waits for publish and then subscribe
// streams to end (intermediate/drain.go: defaultDrainFlushTimeout, twice).
const drainFlushes = 2 * time.Second

// TestManifests_DecodeStrictly decodes every YAML document under kubernetes/,
// the patches and kustomizations included, into its API type with unknown
// and duplicate fields refused.
func TestManifests_DecodeStrictly(t *testing.T) {
	files := yamlFiles(t, "kubernetes")
	if len(files) < 10 {
		t.Fatalf("found %d manifests under kubernetes/: %v", len(files), files)
	}
	for _, f := range files {
		t.Run(filepath.ToSlash(f), func(t *testing.T) {
			data := readFile(t, f)
			docs := splitDocs(data)
			if len(docs) == 0 {
				t.Fatal("no YAML document")
			}
			m := new(manifests)
			for i, d := range docs {
				if err := m.decodeStrict(d); err != nil {
					t.Errorf("document %d: %v", i+1, err)
				}
			}
		})
	}
}

// TestManifests_Consistent checks, in every rendered variant, that names,
// labels and ports agree: every workload's selector selects its own pods and
// no other workload's; a StatefulSet's serviceName is a headless Service
// selecting its pods; every Service port targets a container port of the
// pods it selects; every PodDisruptionBudget covers one StatefulSet and lets
// one pod away at a time; every ConfigMap a pod reads exists.
func TestManifests_Consistent(t *testing.T) {
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			m := render(t, v.dir)
			ws := m.workloads()
			if len(ws) == 0 {
				t.Fatal("no workloads")
			}
			for _, w := range ws {
				if got := matching(t, ws, w.Selector); !slices.Equal(got, []string{w.Name}) {
					t.Errorf("%s %s: its selector selects the pods of %v, want only its own", w.Kind, w.Name, got)
				}
			}
			services := map[string]*corev1.Service{}
			for _, s := range m.Services {
				services[s.Name] = s
				sel := labelSelector(s.Spec.Selector)
				pods := matching(t, ws, sel)
				if len(pods) != 1 {
					t.Errorf("Service %s selects the pods of %v, want one workload", s.Name, pods)
					continue
				}
				w := find(ws, pods[0])
				for _, p := range s.Spec.Ports {
					if _, ok := containerPort(w.Template, p.TargetPort); !ok {
						t.Errorf("Service %s port %s targets %s, which no container of %s has", s.Name, p.Name, p.TargetPort.String(), w.Name)
					}
				}
			}
			for _, s := range m.StatefulSets {
				svc, ok := services[s.Spec.ServiceName]
				switch {
				case !ok:
					t.Errorf("StatefulSet %s: serviceName %q is no Service", s.Name, s.Spec.ServiceName)
				case svc.Spec.ClusterIP != corev1.ClusterIPNone:
					t.Errorf("StatefulSet %s: Service %s is not headless", s.Name, svc.Name)
				case !slices.Contains(matching(t, ws, labelSelector(svc.Spec.Selector)), s.Name):
					t.Errorf("StatefulSet %s: Service %s does not select its pods", s.Name, svc.Name)
				}
			}
			covered := map[string]bool{}
			for _, p := range m.PDBs {
				pods := matching(t, ws, p.Spec.Selector)
				if len(pods) != 1 || find(ws, pods[0]).Kind != "StatefulSet" {
					t.Errorf("PodDisruptionBudget %s selects the pods of %v, want one StatefulSet", p.Name, pods)
					continue
				}
				covered[pods[0]] = true
				if p.Spec.MaxUnavailable == nil || *p.Spec.MaxUnavailable != intstr.FromInt32(1) || p.Spec.MinAvailable != nil {
					t.Errorf("PodDisruptionBudget %s: want maxUnavailable 1 alone, got maxUnavailable %v minAvailable %v", p.Name, p.Spec.MaxUnavailable, p.Spec.MinAvailable)
				}
			}
			for _, s := range m.StatefulSets {
				if !covered[s.Name] {
					t.Errorf("StatefulSet %s has no PodDisruptionBudget", s.Name)
				}
			}
			configMaps := map[string]*corev1.ConfigMap{}
			for _, c := range m.ConfigMaps {
				configMaps[c.Name] = c
			}
			for _, w := range ws {
				for _, c := range w.Template.Spec.Containers {
					for _, e := range c.Env {
						if r := e.ValueFrom; r != nil && r.ConfigMapKeyRef != nil {
							if cm, ok := configMaps[r.ConfigMapKeyRef.Name]; !ok || cm.Data[r.ConfigMapKeyRef.Key] == "" {
								t.Errorf("%s %s: %s reads ConfigMap %s key %s, which is not there", w.Kind, w.Name, e.Name, r.ConfigMapKeyRef.Name, r.ConfigMapKeyRef.Key)
							}
						}
					}
				}
				for _, vol := range w.Template.Spec.Volumes {
					if cmv := vol.ConfigMap; cmv != nil {
						cm, ok := configMaps[cmv.Name]
						for _, it := range cmv.Items {
							if !ok || cm.Data[it.Key] == "" {
								t.Errorf("%s %s: volume %s reads ConfigMap %s key %s, which is not there", w.Kind, w.Name, vol.Name, cmv.Name, it.Key)
							}
						}
					}
				}
			}
		})
	}
}

// TestManifests_ButterflyContainers checks every container that runs the
// butterfly image against the real command: each --flag and BUTTERFLY_*
// variable it passes is a flag of its subcommand; $(VAR) references name
// variables defined before; it runs as the image's non-root user; an
// intermediate takes its name from the pod name and listens on the pod IP,
// its readiness probe asks the right port (the kubelet's gRPC probe only on
// a plaintext listener), it spreads over nodes, and its grace period outlasts
// the longest drain; a consumer takes its id from the pod name; every
// component outlasts its --close-timeout; with TLS every certificate file is
// in a mounted Secret.
func TestManifests_ButterflyContainers(t *testing.T) {
	d := readDockerfile(t)
	if !slices.Equal(d.Entrypoint, []string{"/butterfly"}) || d.User != "65532:65532" {
		t.Fatalf("Dockerfile: ENTRYPOINT %q USER %q, want [/butterfly] and 65532:65532", d.Entrypoint, d.User)
	}
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			m := render(t, v.dir)
			seen := map[string]int{}
			for _, w := range m.workloads() {
				for i := range w.Template.Spec.Containers {
					c := &w.Template.Spec.Containers[i]
					if !strings.HasPrefix(c.Image, "butterfly:") {
						continue
					}
					sub := checkButterflyContainer(t, v.tls, d, w, c)
					seen[sub]++
				}
			}
			if seen["intermediate"] != 2 || seen["consume"] != 1 || seen["stage"] != 1 {
				t.Errorf("butterfly containers by subcommand: %v, want 2 intermediate, 1 consume, 1 stage", seen)
			}
		})
	}
}

func checkButterflyContainer(t *testing.T, tls bool, d dockerfile, w workload, c *corev1.Container) string {
	t.Helper()
	where := w.Kind + " " + w.Name + " container " + c.Name
	args := argv(d, c)
	if len(args) == 0 || args[0] != "/butterfly" {
		t.Errorf("%s: runs %q, not the image's /butterfly", where, args)
		return ""
	}
	sub, values, source := flagValues(t, args, c.Env)
	fs := subcommandFlags(t, sub)
	for name, src := range source {
		if _, ok := fs[name]; !ok {
			t.Errorf("%s: %s: butterfly %s has no flag --%s", where, src, sub, name)
		}
	}
	defined := map[string]bool{}
	for _, e := range c.Env {
		for _, ref := range references(e.Value) {
			if !defined[ref] {
				t.Errorf("%s: %s refers to $(%s), not defined before it", where, e.Name, ref)
			}
		}
		defined[e.Name] = true
	}
	for _, a := range args {
		for _, ref := range references(a) {
			if !defined[ref] {
				t.Errorf("%s: argument %q refers to $(%s), which is not defined", where, a, ref)
			}
		}
	}
	sc := w.Template.Spec.SecurityContext
	if sc == nil || !ptrOr(sc.RunAsNonRoot, false) || ptrOr(sc.RunAsUser, 0) != 65532 {
		t.Errorf("%s: the pod must run as non-root user 65532, the image's USER", where)
	}
	grace := time.Duration(ptrOr(w.Template.Spec.TerminationGracePeriodSeconds, corev1.DefaultTerminationGracePeriodSeconds)) * time.Second
	fromPodName := func(env string) {
		for _, e := range c.Env {
			if e.Name == env && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.name" {
				return
			}
		}
		t.Errorf("%s: %s does not come from the pod name (fieldRef metadata.name)", where, env)
	}
	switch sub {
	case "intermediate":
		fromPodName("BUTTERFLY_NAME")
		if w.Kind != "StatefulSet" {
			t.Errorf("%s: an intermediate must be a StatefulSet: its pod name is its instance name", where)
		}
		drain := duration(t, fs, values, "drain-timeout")
		stop := duration(t, fs, values, "stop-timeout")
		// drain.go: mark draining (stop), drain, two flushes, remove the
		// key (stop), graceful stop (stop).
		if longest := drain + 3*stop + drainFlushes; grace <= longest {
			t.Errorf("%s: terminationGracePeriodSeconds %v is not longer than the longest drain %v (drain %v, stop %v)", where, grace, longest, drain, stop)
		}
		listenPort := checkListen(t, where, values["listen"], c)
		checkReadiness(t, where, c, listenPort, values)
		spread := false
		for _, tsc := range w.Template.Spec.TopologySpreadConstraints {
			if tsc.TopologyKey == "kubernetes.io/hostname" && tsc.WhenUnsatisfiable == corev1.DoNotSchedule &&
				slices.Equal(matching(t, []workload{w}, tsc.LabelSelector), []string{w.Name}) {
				spread = true
			}
		}
		if !spread {
			t.Errorf("%s: no topologySpreadConstraint over kubernetes.io/hostname (DoNotSchedule) selecting its own pods", where)
		}
	case "consume", "stage":
		if sub == "consume" {
			fromPodName("BUTTERFLY_ID")
		}
		if values["group"] == "" {
			t.Errorf("%s: no --group", where)
		}
		if ct := duration(t, fs, values, "close-timeout"); grace <= ct {
			t.Errorf("%s: terminationGracePeriodSeconds %v is not longer than --close-timeout %v", where, grace, ct)
		}
	default:
		t.Errorf("%s: unexpected subcommand %q", where, sub)
	}
	tlsFlags := []string{"tls-cert", "tls-key", "tls-ca"}
	if sub != "intermediate" && tls {
		tlsFlags = append(tlsFlags, "tls-server-name")
	}
	for _, f := range tlsFlags {
		_, set := values[f]
		switch {
		case tls && !set:
			t.Errorf("%s: mutual TLS without --%s", where, f)
		case !tls && set:
			t.Errorf("%s: plaintext variant sets --%s", where, f)
		case tls && f != "tls-server-name" && secretMount(w.Template, c, values[f]) == "":
			t.Errorf("%s: --%s %s is not in a mounted Secret", where, f, values[f])
		}
	}
	if _, insecure := values["insecure"]; insecure == tls {
		t.Errorf("%s: --insecure set %v with TLS %v", where, insecure, tls)
	}
	return sub
}

// checkListen checks that an intermediate listens on the pod IP at its
// container port named grpc, and returns the port.
func checkListen(t *testing.T, where, listen string, c *corev1.Container) int32 {
	t.Helper()
	host, port, err := net.SplitHostPort(listen)
	if err != nil || host != "$(POD_IP)" {
		t.Errorf("%s: --listen %q, want [$(POD_IP)]:PORT (the registered address is the pod IP)", where, listen)
		return 0
	}
	var podIP bool
	for _, e := range c.Env {
		podIP = podIP || e.Name == "POD_IP" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "status.podIP"
	}
	if !podIP {
		t.Errorf("%s: POD_IP does not come from status.podIP", where)
	}
	p, _ := strconv.Atoi(port)
	if cp, ok := containerPortOf(c, intstr.FromString("grpc")); !ok || cp != int32(p) {
		t.Errorf("%s: --listen port %s is not the container port named grpc (%d)", where, port, cp)
	}
	return int32(p)
}

// checkReadiness checks an intermediate's readiness probe: the kubelet's
// gRPC probe (plaintext only) on the listen port, or HTTP /readyz on the
// admin port.
func checkReadiness(t *testing.T, where string, c *corev1.Container, listenPort int32, values map[string]string) {
	t.Helper()
	p := c.ReadinessProbe
	switch {
	case p == nil:
		t.Errorf("%s: no readiness probe", where)
	case p.GRPC != nil:
		if p.GRPC.Port != listenPort {
			t.Errorf("%s: gRPC probe on port %d, listening on %d", where, p.GRPC.Port, listenPort)
		}
		if _, tls := values["tls-cert"]; tls {
			t.Errorf("%s: the kubelet's gRPC probe speaks plaintext and presents no client certificate: it fails on a TLS listener", where)
		}
	case p.HTTPGet != nil:
		_, adminPort, err := net.SplitHostPort(values["admin"])
		cp, ok := containerPortOf(c, p.HTTPGet.Port)
		if err != nil || !ok || strconv.Itoa(int(cp)) != adminPort || p.HTTPGet.Path != "/readyz" {
			t.Errorf("%s: HTTP readiness probe %s port %s, want /readyz on the --admin port (--admin %q)", where, p.HTTPGet.Path, p.HTTPGet.Port.String(), values["admin"])
		}
	default:
		t.Errorf("%s: readiness probe is neither gRPC nor HTTP", where)
	}
}

// TestManifests_Etcd checks the trial etcd: every flag is one of the etcd
// server's own, of the version its image runs; the initial cluster is the
// StatefulSet's members at their stable DNS names; the endpoints the mesh
// is given are those members' client URLs.
func TestManifests_Etcd(t *testing.T) {
	fs := flag.NewFlagSet("etcd", flag.ContinueOnError)
	embed.NewConfig().AddFlags(fs)
	// The flags etcdmain adds to embed's (go.etcd.io/etcd/server/v3/etcdmain/config.go).
	for _, name := range []string{"config-file", "discovery-fallback", "initial-cluster-state", "v2-deprecation", "version"} {
		fs.Bool(name, false, "")
	}
	m := render(t, "kubernetes")
	var found bool
	for _, s := range m.StatefulSets {
		c := s.Spec.Template.Spec.Containers[0]
		if !strings.Contains(c.Image, "/etcd:") {
			continue
		}
		found = true
		if want := "v" + strings.TrimPrefix(moduleVersion(t, "go.etcd.io/etcd/server/v3"), "v"); !strings.HasSuffix(c.Image, ":"+want) {
			t.Errorf("etcd image %s: want the tag %s whose flags this test knows", c.Image, want)
		}
		values := map[string]string{}
		for _, a := range c.Args {
			name, val, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
			if fs.Lookup(name) == nil {
				t.Errorf("etcd: %s is not an etcd flag", a)
			}
			values[name] = val
		}
		peer, _ := containerPortOf(&c, intstr.FromString("peer"))
		client, _ := containerPortOf(&c, intstr.FromString("client"))
		var members, endpoints []string
		for i := range ptrOr(s.Spec.Replicas, 1) {
			pod := fmt.Sprintf("%s-%d", s.Name, i)
			members = append(members, fmt.Sprintf("%s=http://%s.%s:%d", pod, pod, s.Spec.ServiceName, peer))
			endpoints = append(endpoints, fmt.Sprintf("http://%s.%s:%d", pod, s.Spec.ServiceName, client))
		}
		if got := values["initial-cluster"]; got != strings.Join(members, ",") {
			t.Errorf("etcd --initial-cluster %s\nwant %s", got, strings.Join(members, ","))
		}
		for flagName, want := range map[string]string{
			"name":                        "$(POD_NAME)",
			"initial-advertise-peer-urls": fmt.Sprintf("http://$(POD_NAME).%s:%d", s.Spec.ServiceName, peer),
			"advertise-client-urls":       fmt.Sprintf("http://$(POD_NAME).%s:%d", s.Spec.ServiceName, client),
		} {
			if values[flagName] != want {
				t.Errorf("etcd --%s %q, want %q", flagName, values[flagName], want)
			}
		}
		for _, cm := range m.ConfigMaps {
			if cm.Name == "butterfly-etcd" && cm.Data["endpoints"] != strings.Join(endpoints, ",") {
				t.Errorf("ConfigMap butterfly-etcd endpoints %s\nwant %s", cm.Data["endpoints"], strings.Join(endpoints, ","))
			}
		}
		if ptrOr(s.Spec.Replicas, 1) != 3 {
			t.Errorf("etcd StatefulSet has %d members, want 3", ptrOr(s.Spec.Replicas, 1))
		}
	}
	if !found {
		t.Fatal("no etcd StatefulSet in kubernetes/")
	}
}

// TestManifests_NetworkPolicy checks that the NetworkPolicy covers every
// intermediate, opens their gRPC port only to the consumer and stage pods
// (not to the intermediates or etcd), and that its ports are the
// intermediates' named ports.
func TestManifests_NetworkPolicy(t *testing.T) {
	m := render(t, "kubernetes")
	ws := m.workloads()
	if len(m.NetworkPolicies) != 1 {
		t.Fatalf("%d NetworkPolicies, want 1", len(m.NetworkPolicies))
	}
	np := m.NetworkPolicies[0]
	got := matching(t, ws, &np.Spec.PodSelector)
	want := []string{"butterfly-intermediate", "butterfly-replies"}
	if !slices.Equal(got, want) {
		t.Fatalf("NetworkPolicy %s selects %v, want %v", np.Name, got, want)
	}
	hub := find(ws, want[0])
	grpcPort, _ := containerPort(hub.Template, intstr.FromString("grpc"))
	var grpcFrom []string
	for _, rule := range np.Spec.Ingress {
		for _, p := range rule.Ports {
			if _, ok := containerPort(hub.Template, *p.Port); !ok {
				t.Errorf("NetworkPolicy %s: port %s is no port of the intermediates", np.Name, p.Port.String())
			}
			if n, _ := containerPort(hub.Template, *p.Port); n == grpcPort {
				for _, peer := range rule.From {
					if peer.NamespaceSelector != nil || peer.IPBlock != nil || peer.PodSelector == nil {
						t.Errorf("NetworkPolicy %s: the gRPC port is open beyond pods of the namespace: %+v", np.Name, peer)
						continue
					}
					grpcFrom = append(grpcFrom, matching(t, ws, peer.PodSelector)...)
				}
			}
		}
	}
	slices.Sort(grpcFrom)
	if want := []string{"butterfly-consumer", "butterfly-stage-upper"}; !slices.Equal(grpcFrom, want) {
		t.Errorf("NetworkPolicy %s lets %v reach the gRPC port, want %v", np.Name, grpcFrom, want)
	}
}

// TestManifests_Examples checks the cert-manager and ServiceMonitor
// examples against the manifests: a Certificate issues every Secret the mTLS
// pods mount, the hubs' certificate is valid for the name the components
// verify, the stage's is bound to its producer id, and the ServiceMonitor
// selects the hubs' Services by a port they have.
func TestManifests_Examples(t *testing.T) {
	m := render(t, "kubernetes")
	ex := new(manifests)
	for _, f := range yamlFiles(t, "kubernetes/examples") {
		for _, d := range splitDocs(readFile(t, f)) {
			if err := ex.decodeStrict(d); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
		}
	}
	certs := map[string]map[string]any{}
	var monitors []map[string]any
	for _, o := range ex.Custom {
		spec, _ := o["spec"].(map[string]any)
		switch o["kind"] {
		case "Certificate":
			certs[spec["secretName"].(string)] = spec
		case "ServiceMonitor":
			monitors = append(monitors, spec)
		}
	}
	ws := m.workloads()
	for _, w := range ws {
		for _, vol := range w.Template.Spec.Volumes {
			if vol.Secret != nil && certs[vol.Secret.SecretName] == nil {
				t.Errorf("%s %s mounts Secret %s, which no Certificate in examples/ issues", w.Kind, w.Name, vol.Secret.SecretName)
			}
		}
		for _, c := range w.Template.Spec.Containers {
			_, values, _ := flagValues(t, argv(dockerfile{Entrypoint: []string{"/butterfly"}}, &c), c.Env)
			sec := secretMount(w.Template, &c, values["tls-cert"])
			if sec == "" {
				continue
			}
			spec := certs[sec]
			if name := values["tls-server-name"]; name != "" {
				if dns := anyStrings(spec["dnsNames"]); len(dns) != 0 {
					t.Errorf("%s: client certificate %s has DNS names %v", w.Name, sec, dns)
				}
				hubCert := certs[hubSecret(t, m)]
				if !slices.Contains(anyStrings(hubCert["dnsNames"]), name) {
					t.Errorf("%s verifies the name %s, which the hubs' certificate (%v) is not valid for", w.Name, name, hubCert["dnsNames"])
				}
			}
			if id := values["id"]; strings.HasPrefix(c.Args[0], "stage") && !slices.Contains(anyStrings(spec["uris"]), "butterfly://stage/"+id) {
				t.Errorf("%s: stage --id %s, certificate %s is not bound to it (uris %v)", w.Name, id, sec, spec["uris"])
			}
		}
	}
	if len(monitors) != 1 {
		t.Fatalf("%d ServiceMonitors, want 1", len(monitors))
	}
	sel := monitors[0]["selector"].(map[string]any)["matchLabels"].(map[string]any)
	port := monitors[0]["endpoints"].([]any)[0].(map[string]any)["port"]
	var selected []string
	for _, s := range m.Services {
		ok := true
		for k, v := range sel {
			ok = ok && s.Labels[k] == v
		}
		if !ok {
			continue
		}
		selected = append(selected, s.Name)
		if !slices.ContainsFunc(s.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == port }) {
			t.Errorf("ServiceMonitor scrapes port %v, which Service %s has not", port, s.Name)
		}
	}
	if want := []string{"butterfly-intermediate", "butterfly-replies"}; !slices.Equal(selected, want) {
		t.Errorf("ServiceMonitor selects Services %v, want %v", selected, want)
	}
}

// hubSecret returns the Secret the intermediates' certificate comes from.
func hubSecret(t *testing.T, m *manifests) string {
	t.Helper()
	for _, s := range m.StatefulSets {
		c := &s.Spec.Template.Spec.Containers[0]
		if c.Name == "intermediate" {
			_, values, _ := flagValues(t, argv(dockerfile{Entrypoint: []string{"/butterfly"}}, c), c.Env)
			return secretMount(&s.Spec.Template, c, values["tls-cert"])
		}
	}
	t.Fatal("no intermediate")
	return ""
}

func anyStrings(v any) []string {
	var out []string
	l, _ := v.([]any)
	for _, s := range l {
		out = append(out, fmt.Sprint(s))
	}
	return out
}

// moduleVersion returns the version of module path this module requires.
func moduleVersion(t *testing.T, path string) string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^\s*` + regexp.QuoteMeta(path) + ` (v\S+)`).FindSubmatch(readFile(t, "go.mod"))
	if m == nil {
		t.Fatalf("go.mod does not require %s", path)
	}
	return string(m[1])
}
