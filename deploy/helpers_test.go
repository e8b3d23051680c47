package deploy

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/kustomize/api/krusty"
	kusttypes "sigs.k8s.io/kustomize/api/types"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// binary is the butterfly binary TestMain builds from ../cmd/butterfly.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "butterfly-deploy-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "butterfly")
	build := exec.Command("go", "build", "-o", binary, "./cmd/butterfly")
	build.Dir = ".."
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go build ./cmd/butterfly: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// manifests is one rendered kustomization, decoded into API types.
type manifests struct {
	StatefulSets    []*appsv1.StatefulSet
	Deployments     []*appsv1.Deployment
	Services        []*corev1.Service
	ConfigMaps      []*corev1.ConfigMap
	PDBs            []*policyv1.PodDisruptionBudget
	NetworkPolicies []*networkingv1.NetworkPolicy
	// Custom are the resources of CRDs (cert-manager, Prometheus Operator),
	// whose Go types this module does not import.
	Custom []map[string]any
}

// decodeStrict decodes one YAML document into m by its apiVersion and kind,
// refusing unknown and duplicate fields.
func (m *manifests) decodeStrict(doc []byte) error {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return err
	}
	into := func(obj any) error { return yaml.UnmarshalStrict(doc, obj) }
	switch tm.APIVersion + "/" + tm.Kind {
	case "apps/v1/StatefulSet":
		o := new(appsv1.StatefulSet)
		m.StatefulSets = append(m.StatefulSets, o)
		return into(o)
	case "apps/v1/Deployment":
		o := new(appsv1.Deployment)
		m.Deployments = append(m.Deployments, o)
		return into(o)
	case "v1/Service":
		o := new(corev1.Service)
		m.Services = append(m.Services, o)
		return into(o)
	case "v1/ConfigMap":
		o := new(corev1.ConfigMap)
		m.ConfigMaps = append(m.ConfigMaps, o)
		return into(o)
	case "policy/v1/PodDisruptionBudget":
		o := new(policyv1.PodDisruptionBudget)
		m.PDBs = append(m.PDBs, o)
		return into(o)
	case "networking.k8s.io/v1/NetworkPolicy":
		o := new(networkingv1.NetworkPolicy)
		m.NetworkPolicies = append(m.NetworkPolicies, o)
		return into(o)
	case "kustomize.config.k8s.io/v1beta1/Kustomization", "kustomize.config.k8s.io/v1alpha1/Component":
		return into(new(kusttypes.Kustomization))
	case "cert-manager.io/v1/Issuer", "cert-manager.io/v1/Certificate", "monitoring.coreos.com/v1/ServiceMonitor":
		var o map[string]any
		if err := into(&o); err != nil {
			return err
		}
		m.Custom = append(m.Custom, o)
		return nil
	}
	return fmt.Errorf("unexpected kind %s %s", tm.APIVersion, tm.Kind)
}

// splitDocs splits a multi-document YAML file, dropping empty documents.
func splitDocs(data []byte) [][]byte {
	var docs [][]byte
	for _, d := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(data), -1) {
		if strings.TrimSpace(stripComments(d)) != "" {
			docs = append(docs, []byte(d))
		}
	}
	return docs
}

func stripComments(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(s, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// render builds the kustomization in dir as kubectl apply -k would, and
// decodes every resource strictly.
func render(t *testing.T, dir string) *manifests {
	t.Helper()
	resMap, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	m := new(manifests)
	for _, r := range resMap.Resources() {
		doc, err := r.AsYAML()
		if err != nil {
			t.Fatalf("%s: %v", r.CurId(), err)
		}
		if err := m.decodeStrict(doc); err != nil {
			t.Fatalf("kustomize build %s: %s: %v", dir, r.CurId(), err)
		}
	}
	return m
}

// yamlFiles returns every .yaml file under dir.
func yamlFiles(t *testing.T, dir string) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(path, ".yaml") {
			files = append(files, path)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// workload is a StatefulSet or a Deployment: what the checks need of both.
type workload struct {
	Kind, Name string
	Selector   *metav1.LabelSelector
	Template   *corev1.PodTemplateSpec
	Replicas   int32
}

func (m *manifests) workloads() []workload {
	var ws []workload
	for _, s := range m.StatefulSets {
		ws = append(ws, workload{"StatefulSet", s.Name, s.Spec.Selector, &s.Spec.Template, ptrOr(s.Spec.Replicas, 1)})
	}
	for _, d := range m.Deployments {
		ws = append(ws, workload{"Deployment", d.Name, d.Spec.Selector, &d.Spec.Template, ptrOr(d.Spec.Replicas, 1)})
	}
	return ws
}

func ptrOr[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

// matching returns the names of the workloads whose pods sel selects.
func matching(t *testing.T, ws []workload, sel *metav1.LabelSelector) []string {
	t.Helper()
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		t.Fatalf("selector %v: %v", sel, err)
	}
	var names []string
	for _, w := range ws {
		if !s.Empty() && s.Matches(labels.Set(w.Template.Labels)) {
			names = append(names, w.Name)
		}
	}
	return names
}

// flagSet is the flags of one butterfly subcommand, from its --help, with
// their defaults as printed.
type flagSet map[string]string

var (
	helpMu    sync.Mutex
	helpCache = map[string]flagSet{}
	flagLine  = regexp.MustCompile(`^\s+(?:-\w, )?--([a-z0-9][a-z0-9-]*)(?: \S+)?\s{2,}(.*)$`)
	defaultRe = regexp.MustCompile(`\(default (.*)\)$`)
)

// subcommandFlags runs `butterfly <sub> --help` and parses its flags, the
// global ones included.
func subcommandFlags(t *testing.T, sub string) flagSet {
	t.Helper()
	helpMu.Lock()
	defer helpMu.Unlock()
	if fs, ok := helpCache[sub]; ok {
		return fs
	}
	out, err := exec.Command(binary, sub, "--help").Output()
	if err != nil {
		t.Fatalf("butterfly %s --help: %v", sub, err)
	}
	fs := flagSet{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		m := flagLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		def := ""
		if d := defaultRe.FindStringSubmatch(m[2]); d != nil {
			def = strings.Trim(d[1], `"`)
		}
		fs[m[1]] = def
	}
	if _, ok := fs["etcd-endpoints"]; !ok {
		t.Fatalf("butterfly %s --help: no --etcd-endpoints among %v: the help format changed", sub, fs)
	}
	helpCache[sub] = fs
	return fs
}

// dockerfile is what the final stage of deploy/Dockerfile says about the
// container.
type dockerfile struct {
	Entrypoint, Cmd []string
	User            string
}

func readDockerfile(t *testing.T) dockerfile {
	t.Helper()
	data, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	var d dockerfile
	for _, line := range strings.Split(string(data), "\n") {
		instr, rest, _ := strings.Cut(strings.TrimSpace(line), " ")
		switch strings.ToUpper(instr) {
		case "FROM":
			d = dockerfile{} // only the final stage counts
		case "ENTRYPOINT", "CMD":
			var argv []string
			if err := json.Unmarshal([]byte(rest), &argv); err != nil {
				t.Fatalf("Dockerfile: %s %s: not the exec (JSON) form: %v", instr, rest, err)
			}
			if strings.ToUpper(instr) == "ENTRYPOINT" {
				d.Entrypoint = argv
			} else {
				d.Cmd = argv
			}
		case "USER":
			d.User = rest
		}
	}
	return d
}

// argv is the command line Kubernetes runs for c in an image with d's
// ENTRYPOINT and CMD, before $(VAR) expansion.
func argv(d dockerfile, c *corev1.Container) []string {
	switch {
	case len(c.Command) > 0:
		return append(append([]string(nil), c.Command...), c.Args...)
	case len(c.Args) > 0:
		return append(append([]string(nil), d.Entrypoint...), c.Args...)
	default:
		return append(append([]string(nil), d.Entrypoint...), d.Cmd...)
	}
}

// expand replaces $(NAME) with vars[NAME] as the kubelet does: an unknown
// name stays as written, and $$ is a literal $.
func expand(s string, vars map[string]string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 == len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '(':
			end := strings.IndexByte(s[i:], ')')
			if end < 0 {
				b.WriteString(s[i:])
				return b.String()
			}
			name := s[i+2 : i+end]
			if v, ok := vars[name]; ok {
				b.WriteString(v)
			} else {
				b.WriteString(s[i : i+end+1])
			}
			i += end
		default:
			b.WriteByte('$')
		}
	}
	return b.String()
}

// references returns the $(NAME) names in s.
func references(s string) []string {
	var names []string
	for _, m := range regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`).FindAllStringSubmatch(strings.ReplaceAll(s, "$$", ""), -1) {
		names = append(names, m[1])
	}
	return names
}

// flagValues returns the --flag values a butterfly container sets, from its
// arguments (after the subcommand) and its BUTTERFLY_* variables, and the
// subcommand. Values are as written, before expansion; a variable from a
// reference (fieldRef, configMapKeyRef, …) has the value "<from>".
func flagValues(t *testing.T, args []string, env []corev1.EnvVar) (sub string, values map[string]string, source map[string]string) {
	t.Helper()
	if len(args) < 2 {
		t.Fatalf("command line %q has no subcommand", args)
	}
	sub = args[1]
	values, source = map[string]string{}, map[string]string{}
	for _, e := range env {
		if !strings.HasPrefix(e.Name, "BUTTERFLY_") {
			continue
		}
		name := strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(e.Name, "BUTTERFLY_")), "_", "-")
		values[name], source[name] = e.Value, e.Name
		if e.ValueFrom != nil {
			values[name] = "<from>"
		}
	}
	// The command line wins over the environment, as in the binary.
	for i := 2; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "--") {
			t.Fatalf("argument %q of %q is not a --flag", a, args)
		}
		name, v, ok := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !ok {
			if i+1 < len(args) && !strings.HasPrefix(args[i+1], "--") {
				v = args[i+1]
				i++
			} else {
				v = "true"
			}
		}
		values[name], source[name] = v, a
	}
	return sub, values, source
}

// duration returns the duration a flag has: its value, else its default.
func duration(t *testing.T, fs flagSet, values map[string]string, name string) time.Duration {
	t.Helper()
	v, ok := values[name]
	if !ok {
		v, ok = fs[name]
	}
	if !ok {
		t.Fatalf("no flag --%s", name)
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("--%s %q: %v", name, v, err)
	}
	return d
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func labelSelector(m map[string]string) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchLabels: m}
}

func find(ws []workload, name string) workload {
	for _, w := range ws {
		if w.Name == name {
			return w
		}
	}
	return workload{}
}

// containerPort resolves a port (number or name) on the pod's containers.
func containerPort(pod *corev1.PodTemplateSpec, p intstr.IntOrString) (int32, bool) {
	for i := range pod.Spec.Containers {
		if n, ok := containerPortOf(&pod.Spec.Containers[i], p); ok {
			return n, true
		}
	}
	return 0, false
}

func containerPortOf(c *corev1.Container, p intstr.IntOrString) (int32, bool) {
	for _, cp := range c.Ports {
		if p.Type == intstr.String && cp.Name == p.StrVal || p.Type == intstr.Int && cp.ContainerPort == p.IntVal {
			return cp.ContainerPort, true
		}
	}
	return 0, false
}

// secretMount returns the Secret whose volume c mounts at a directory
// holding path, or "".
func secretMount(pod *corev1.PodTemplateSpec, c *corev1.Container, path string) string {
	if path == "" {
		return ""
	}
	for _, vm := range c.VolumeMounts {
		if filepath.Dir(path) != vm.MountPath {
			continue
		}
		for _, v := range pod.Spec.Volumes {
			if v.Name == vm.Name && v.Secret != nil {
				return v.Secret.SecretName
			}
		}
	}
	return ""
}
