package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// executeBench runs `butterfly bench args...` and returns what it printed
// to stdout.
func executeBench(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRootCommand()
	registered := false
	for _, c := range root.Commands() {
		registered = registered || c.Name() == "bench"
	}
	if !registered {
		root.AddCommand(newBenchCommand(root))
	}
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(append([]string{"bench"}, args...))
	err := root.ExecuteContext(t.Context())
	return out.String(), err
}

// TestBenchCommand_QuickJSON checks that a quick run prints one JSON object
// with every reported field, that nothing was lost under the faults, and
// that every fault was seen and the plot written.
func TestBenchCommand_QuickJSON(t *testing.T) {
	plot := filepath.Join(t.TempDir(), "bench.svg")
	out, err := executeBench(t, "--quick", "--json", "--plot", plot, "--log-level", "error")
	if err != nil {
		t.Fatalf("bench --quick --json = %v, output:\n%s", err, out)
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("json.Unmarshal(bench output) = %v, output:\n%s", err, out)
	}
	for _, field := range []string{
		"baseline_1hop_msgs_per_s", "baseline_relay_msgs_per_s", "butterfly_msgs_per_s",
		"ratio_vs_1hop", "ratio_vs_relay", "p50_us", "p99_us", "p99_half_load_us",
		"failover_lost", "failover_recover_ms", "move_reroute_ms", "freeze_detect_ms", "drain_ms",
		"allocs_per_msg", "alloc_bytes_per_msg", "baseline_relay_allocs_per_msg", "baseline_relay_alloc_bytes_per_msg",
	} {
		if _, ok := got[field]; !ok {
			t.Errorf("bench JSON has no %q, want every reported field", field)
		}
	}
	if lost := got["failover_lost"]; lost != 0.0 {
		t.Errorf("bench JSON failover_lost = %v, want 0", lost)
	}
	for _, field := range []string{"baseline_1hop_msgs_per_s", "baseline_relay_msgs_per_s", "butterfly_msgs_per_s", "p50_us", "p99_half_load_us", "allocs_per_msg", "baseline_relay_allocs_per_msg",
		"platform_all_busy_stall_max_us", "platform_one_busy_stall_max_us", "platform_idle_wake_late_max_us"} {
		if v, _ := got[field].(float64); v <= 0 {
			t.Errorf("bench JSON %s = %v, want > 0", field, got[field])
		}
	}
	for _, field := range []string{"failover_resend_ms", "move_reroute_ms", "freeze_detect_ms", "drain_ms"} {
		if v, _ := got[field].(float64); v < 0 {
			t.Errorf("bench JSON %s = %v, want the fault seen (>= 0)", field, got[field])
		}
	}
	if sent, delivered := got["sent"].(float64), got["delivered"].(float64); sent <= 0 || delivered != sent {
		t.Errorf("bench JSON sent, delivered = %v, %v, want equal and > 0", sent, delivered)
	}
	if t.Failed() {
		t.Logf("bench output:\n%s", out)
	}
	svg, err := os.ReadFile(plot)
	if err != nil {
		t.Fatalf("os.ReadFile(%s) = %v", plot, err)
	}
	if !bytes.Contains(svg, []byte("<svg")) || !bytes.Contains(svg, []byte("stop i0")) {
		t.Errorf("plot %s is not an SVG with the stop marked (%d bytes)", plot, len(svg))
	}
}

// TestBenchCommand_RunsMedian runs the quick benchmark three times and
// checks that the report is their summary: three runs, the rate a run's
// within the range, the ratio to the relay computed from the medians,
// nothing lost.
func TestBenchCommand_RunsMedian(t *testing.T) {
	out, err := executeBench(t, "--quick", "--json", "--runs", "3", "--duration", "150ms", "--warmup", "100ms", "--log-level", "error")
	if err != nil {
		t.Fatalf("bench --quick --json --runs 3 = %v, output:\n%s", err, out)
	}
	var got struct {
		Runs      int                   `json:"runs"`
		Ranges    map[string][2]float64 `json:"ranges"`
		Rate      float64               `json:"butterfly_msgs_per_s"`
		Relay     float64               `json:"baseline_relay_msgs_per_s"`
		Ratio     float64               `json:"ratio_vs_relay"`
		Lost      *float64              `json:"failover_lost"`
		Sent      float64               `json:"sent"`
		Delivered float64               `json:"delivered"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("json.Unmarshal(bench output) = %v, output:\n%s", err, out)
	}
	if got.Runs != 3 || got.Lost == nil || *got.Lost != 0 || got.Sent <= 0 || got.Delivered != got.Sent {
		t.Errorf("bench --runs 3: runs %d, lost %v, sent %v, delivered %v; want 3, 0, > 0 and equal", got.Runs, got.Lost, got.Sent, got.Delivered)
	}
	r, ok := got.Ranges["butterfly_msgs_per_s"]
	if !ok || got.Rate <= r[0] || got.Rate >= r[1] {
		t.Errorf("bench --runs 3: rate %v, range %v (present %v); want three runs' rates, the middle one the median", got.Rate, r, ok)
	}
	if got.Relay <= 0 || got.Ratio != got.Rate/got.Relay {
		t.Errorf("bench --runs 3: ratio to the relay %v, want the medians' %v / %v", got.Ratio, got.Rate, got.Relay)
	}
}

// TestBenchCommand_BadFlags checks that wrong flags are usage errors that
// name the flag.
func TestBenchCommand_BadFlags(t *testing.T) {
	// A file in a directory that does not exist: refused before the runs.
	nowhere := filepath.Join(t.TempDir(), "missing")
	for _, tc := range []struct {
		args []string
		flag string
	}{
		{[]string{"--intermediates", "1"}, "--intermediates"},
		{[]string{"--producers", "0"}, "--producers"},
		{[]string{"--fault-load", "1.5"}, "--fault-load"},
		{[]string{"--duration", "0s"}, "--duration"},
		{[]string{"--heartbeat", "0s"}, "--heartbeat"},
		{[]string{"--half-load-rate", "-1"}, "--half-load-rate"},
		{[]string{"--half-load-rate", "+Inf"}, "--half-load-rate"},
		{[]string{"--processes", "--trace", "t.out"}, "--trace"},
		{[]string{"--runs", "0"}, "--runs"},
		{[]string{"--runs", "2"}, "--runs"},
		{[]string{"--runs", "101"}, "--runs"},
		{[]string{"--runs", "3", "--plot", "b.svg"}, "--plot"},
		{[]string{"--runs", "3", "--cpuprofile", "c.out"}, "--cpuprofile"},
		{[]string{"--runs", "3", "--trace", "t.out"}, "--trace"},
		{[]string{"--runs", "3", "--memprofile", "m.out"}, "--memprofile"},
		{[]string{"--processes", "--memprofile", "m.out"}, "--memprofile"},
		{[]string{"--plot", filepath.Join(nowhere, "b.svg")}, "--plot"},
		{[]string{"--cpuprofile", filepath.Join(nowhere, "c.out")}, "--cpuprofile"},
		{[]string{"--memprofile", filepath.Join(nowhere, "m.out")}, "--memprofile"},
		{[]string{"--trace", filepath.Join(nowhere, "t.out")}, "--trace"},
	} {
		t.Run(tc.flag, func(t *testing.T) {
			_, err := executeBench(t, tc.args...)
			var ue *usageError
			if !errors.As(err, &ue) || !strings.Contains(err.Error(), tc.flag) {
				t.Errorf("bench %v = %v, want a usage error naming %s", tc.args, err, tc.flag)
			}
		})
	}
}
