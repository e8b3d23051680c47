package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestBenchCommand_Processes runs `bench --processes` on the built binary,
// with every component a process of its own, and checks that every message
// arrived exactly once, that the run measured a throughput and the
// messages per frame, from the intermediates' metrics, and that its
// half-load phase ran at the rate given.
func TestBenchCommand_Processes(t *testing.T) {
	binary := filepath.Join(t.TempDir(), "butterfly")
	if out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build = %v, output:\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, binary, "bench", "--processes", "--json", "--duration", "1s", "--warmup", "200ms",
		"--producers", "1", "--intermediates", "2", "--consumers", "2", "--window", "2000", "--half-load-rate", "5000", "--log-level", "warn")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("bench --processes = %v, stderr:\n%s\nstdout:\n%s", err, stderr.String(), stdout.String())
	}
	var got struct {
		Mode         string  `json:"mode"`
		Rate         float64 `json:"butterfly_msgs_per_s"`
		Sent         uint64  `json:"sent"`
		Delivered    uint64  `json:"delivered"`
		Lost         *uint64 `json:"lost"`
		HandledTwice *uint64 `json:"handled_twice"`
		Strangers    uint64  `json:"unknown_messages"`
		AllBusyMax   float64 `json:"platform_all_busy_stall_max_us"`
		OneBusyMax   float64 `json:"platform_one_busy_stall_max_us"`
		IdleWakeMax  float64 `json:"platform_idle_wake_late_max_us"`
		HalfOffered  float64 `json:"half_load_offered_msgs_per_s"`
		HalfGiven    bool    `json:"half_load_rate_given"`
		Half         float64 `json:"half_load_msgs_per_s"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &got); err != nil {
		t.Fatalf("json.Unmarshal(bench --processes output) = %v, output:\n%s", err, stdout.String())
	}
	if got.Lost == nil || *got.Lost != 0 || got.HandledTwice == nil || *got.HandledTwice != 0 {
		t.Errorf("bench --processes lost, handled twice = %v, %v, want 0, 0", deref(got.Lost), deref(got.HandledTwice))
	}
	if got.Mode != "processes" || got.Rate <= 0 || got.Sent == 0 || got.Delivered != got.Sent || got.Strangers != 0 {
		t.Errorf("bench --processes mode %q, msgs/s %v, sent %d, delivered %d, unknown %d, want processes, > 0, equal and > 0, 0",
			got.Mode, got.Rate, got.Sent, got.Delivered, got.Strangers)
	}
	// The half-load phase at the rate given, which any machine keeps up
	// with: about it (a short phase may also count what the phase before
	// left in flight, and a producer held back catches up), well under
	// half of saturation.
	if got.HalfOffered != 5000 || !got.HalfGiven || got.Half < 2500 || got.Half > 10000 {
		t.Errorf("bench --processes --half-load-rate 5000: offered %v (given: %v), measured %v msgs/s, want 5000 given and about 5000 measured", got.HalfOffered, got.HalfGiven, got.Half)
	}
	if got.AllBusyMax <= 0 || got.OneBusyMax <= 0 || got.IdleWakeMax <= 0 {
		t.Errorf("bench --processes longest gaps of the machine's spinning threads = %v, %v µs, latest wake-up of its sleeping one %v µs, want all measured (> 0)", got.AllBusyMax, got.OneBusyMax, got.IdleWakeMax)
	}
	// Read from the intermediates' metrics: at least a message a frame, no
	// more than a batch's limits (64 from the producer, 256 to a consumer)
	// or, for acknowledgements, what may be unanswered (the window of
	// 2 000, the default credit of 1 000).
	var figures map[string]any
	if err := json.Unmarshal(stdout.Bytes(), &figures); err != nil {
		t.Fatalf("json.Unmarshal(bench --processes output) = %v", err)
	}
	for _, phase := range []string{"", "_half_load"} {
		for name, limit := range map[string]float64{
			"msgs_per_publish_batch": 64, "msgs_per_publish_ack_frame": 2000,
			"msgs_per_delivery_batch": 256, "msgs_per_delivery_ack_frame": 1000,
		} {
			if v, ok := figures[name+phase].(float64); !ok || v < 1 || v > limit {
				t.Errorf("bench --processes %s = %v (present %v), want 1 to %v", name+phase, v, ok, limit)
			}
		}
	}
	if t.Failed() {
		t.Logf("bench --processes output:\n%s", stdout.String())
	}
}

func deref(p *uint64) any {
	if p == nil {
		return "missing"
	}
	return *p
}
