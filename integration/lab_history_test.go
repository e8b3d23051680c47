package integration

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// history is everything that happened in a lab: the nemesis events (also
// written to events.log), the consumer incarnations with their --out files,
// and the producers. Its checker judges the whole run.
type history struct {
	t     *testing.T
	dir   string
	path  string
	start time.Time

	mu     sync.Mutex
	f      *os.File
	events []labEvent
	incs   []*incarnation
	prods  []*producerRec
	// deleted are the groups deleted during the run: what they did not
	// handle was released, not lost.
	deleted map[string]bool

	stopOnce sync.Once
	stopc    chan struct{}
	donec    chan struct{}
}

type labEvent struct {
	at         time.Time
	kind, what string
}

func (e labEvent) String() string {
	return fmt.Sprintf("%s %-7s %s", e.at.Format("15:04:05.000"), e.kind, e.what)
}

// incarnation is one consumer process: its handled ids are in file.
type incarnation struct {
	id, group, host, file string
	proc                  *proc
	lostLine              int       // lines before it were handled before the registration could go; -1: never lost
	lostAt                time.Time // when it was recorded lost
	samples               []sizeSample
}

// sizeSample is when a file was seen to have size bytes.
type sizeSample struct {
	at   time.Time
	size int64
}

type producerRec struct {
	id          string
	count, rate int
	p           *proc
	started     time.Time
}

func newHistory(t *testing.T, dir string) *history {
	h := &history{t: t, dir: dir, path: filepath.Join(dir, "events.log"), start: time.Now(),
		stopc: make(chan struct{}), donec: make(chan struct{})}
	f, err := os.Create(h.path)
	if err != nil {
		t.Fatalf("os.Create() = %v", err)
	}
	h.f = f
	go h.sample()
	return h
}

// event records a nemesis or lab event.
func (h *history) event(kind, format string, args ...any) {
	e := labEvent{at: time.Now(), kind: kind, what: fmt.Sprintf(format, args...)}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.events = append(h.events, e)
	if h.f != nil {
		fmt.Fprintln(h.f, e)
	}
}

// sample records the --out file sizes every 100ms, so a line's offset
// tells when it was written.
func (h *history) sample() {
	defer close(h.donec)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		h.mu.Lock()
		for _, inc := range h.incs {
			fi, err := os.Stat(inc.file)
			if err != nil {
				continue
			}
			if n := len(inc.samples); n == 0 || inc.samples[n-1].size != fi.Size() {
				inc.samples = append(inc.samples, sizeSample{time.Now(), fi.Size()})
			}
		}
		h.mu.Unlock()
		select {
		case <-h.stopc:
			return
		case <-tick.C:
		}
	}
}

// stop ends the sampler and closes the events log.
func (h *history) stop() {
	h.stopOnce.Do(func() {
		close(h.stopc)
		<-h.donec
		h.mu.Lock()
		h.f.Close()
		h.f = nil
		h.mu.Unlock()
	})
}

// newIncarnation records a consumer process about to start.
func (h *history) newIncarnation(id, group, host string) *incarnation {
	h.mu.Lock()
	defer h.mu.Unlock()
	inc := &incarnation{id: id, group: group, host: host, lostLine: -1,
		file: filepath.Join(h.dir, fmt.Sprintf("%s.%d.tsv", id, len(h.incs)+1))}
	h.incs = append(h.incs, inc)
	return inc
}

func (h *history) producer(id string, count, rate int, p *proc) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.prods = append(h.prods, &producerRec{id: id, count: count, rate: rate, p: p, started: time.Now()})
}

// lose records that p's registration may be gone from now on (killed,
// drained, frozen or cut off from etcd for long enough): what it handled
// until now may be handled again elsewhere.
func (h *history) lose(p *proc, why string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, inc := range h.incs {
		if inc.proc == p {
			inc.lostLine, inc.lostAt = countLines(inc.file), time.Now()
			if h.f != nil {
				fmt.Fprintln(h.f, labEvent{time.Now(), "lost", fmt.Sprintf("%s (%s) after %d lines", p.name, why, inc.lostLine)})
			}
			h.events = append(h.events, labEvent{time.Now(), "lost", fmt.Sprintf("%s (%s)", p.name, why)})
		}
	}
}

// deleteGroup records that group was deleted: its consumers need not have
// handled every id, but none twice.
func (h *history) deleteGroup(group string) {
	h.mu.Lock()
	if h.deleted == nil {
		h.deleted = map[string]bool{}
	}
	h.deleted[group] = true
	h.mu.Unlock()
	h.event("delete", "group %s", group)
}

func countLines(file string) int {
	b, _ := os.ReadFile(file)
	return strings.Count(string(b), "\n")
}

// lostHandlingGrace is how long after a consumer was recorded lost (a
// thaw, a healed cut) what it handled still counts as handled while lost:
// a consumer that wakes up first finishes the deliveries it held, then
// learns its registration is gone.
const lostHandlingGrace = 2 * time.Second

// lostHandling reports whether o happened while its consumer's
// registration may have been gone: at least once is then allowed.
func (inc *incarnation) lostHandling(o occurrence) bool {
	return inc.lostLine >= 0 && (o.line < inc.lostLine || !o.at.After(inc.lostAt.Add(lostHandlingGrace)))
}

// occurrence is one handling of an id.
type occurrence struct {
	inc  *incarnation
	line int
	at   time.Time
}

// read parses every --out file: group -> producer -> seq -> handlings.
func (h *history) read() map[string]map[string]map[uint64][]occurrence {
	h.t.Helper()
	h.mu.Lock()
	incs := append([]*incarnation(nil), h.incs...)
	h.mu.Unlock()
	all := map[string]map[string]map[uint64][]occurrence{}
	for _, inc := range incs {
		if all[inc.group] == nil {
			all[inc.group] = map[string]map[uint64][]occurrence{}
		}
		f, err := os.Open(inc.file)
		if err != nil {
			continue // never started, or wrote nothing
		}
		h.mu.Lock()
		samples := append([]sizeSample(nil), inc.samples...)
		h.mu.Unlock()
		sc := bufio.NewScanner(f)
		var off int64
		for line := 0; sc.Scan(); line++ {
			text := sc.Text()
			off += int64(len(text)) + 1
			parts := strings.Split(text, "\t")
			seq, err := strconv.ParseUint(parts[min(1, len(parts)-1)], 10, 64)
			if len(parts) != 4 || err != nil {
				h.t.Errorf("%s:%d: bad line %q", inc.file, line+1, text)
				continue
			}
			at := time.Now()
			for _, s := range samples {
				if s.size >= off {
					at = s.at
					break
				}
			}
			byProd := all[inc.group]
			if byProd[parts[0]] == nil {
				byProd[parts[0]] = map[uint64][]occurrence{}
			}
			byProd[parts[0]][seq] = append(byProd[parts[0]][seq], occurrence{inc, line, at})
		}
		f.Close()
	}
	return all
}

// check waits for the producers to exit, then judges every group: every id
// a producer had acknowledged (it exited 0) handled by the group, nothing
// handled twice while the handler's registration lived, nothing that no
// producer sent. It reports what fails with ids and the events around them.
func (h *history) check(timeout time.Duration) {
	h.t.Helper()
	h.mu.Lock()
	prods := append([]*producerRec(nil), h.prods...)
	h.mu.Unlock()
	deadline := time.After(timeout)
	sent := map[string]*producerRec{}
	acked := map[string]bool{}
	for _, pr := range prods {
		sent[pr.id] = pr
		select {
		case <-pr.p.done:
		case <-deadline:
			h.t.Errorf("producer %s still running after %v", pr.id, timeout)
			continue
		}
		var s producerSummary
		lines := strings.Split(strings.TrimSpace(pr.p.output()), "\n")
		_ = json.Unmarshal([]byte(lines[len(lines)-1]), &s)
		if code := pr.p.cmd.ProcessState.ExitCode(); code != 0 || s.Acked != uint64(pr.count) {
			h.t.Errorf("producer %s: exit %d, summary %+v: not every message was acknowledged", pr.id, code, s)
			continue
		}
		acked[pr.id] = true
	}
	h.event("check", "producers done")
	all := h.read()
	var groups []string
	for g := range all {
		groups = append(groups, g)
	}
	sort.Strings(groups)
	var badTimes []time.Time
	for _, g := range groups {
		var lost, twice, unsent []string
		after := 0
		h.mu.Lock()
		released := h.deleted[g]
		h.mu.Unlock()
		for _, pr := range prods {
			if !acked[pr.id] || released {
				continue
			}
			for seq := uint64(1); seq <= uint64(pr.count); seq++ {
				if len(all[g][pr.id][seq]) == 0 {
					lost = append(lost, fmt.Sprintf("%s/%d", pr.id, seq))
					badTimes = append(badTimes, pr.started.Add(time.Duration(seq)*time.Second/time.Duration(pr.rate)))
				}
			}
		}
		for pid, seqs := range all[g] {
			for seq, occ := range seqs {
				if pr := sent[pid]; pr == nil || seq == 0 || seq > uint64(pr.count) {
					unsent = append(unsent, fmt.Sprintf("%s/%d", pid, seq))
					continue
				}
				if len(occ) < 2 {
					continue
				}
				live := 0
				var where []string
				for _, o := range occ {
					if !o.inc.lostHandling(o) {
						live++
					}
					where = append(where, fmt.Sprintf("%s@%s", o.inc.id, o.at.Format("15:04:05.0")))
				}
				if live < 2 {
					after++
					continue
				}
				twice = append(twice, fmt.Sprintf("%s/%d(%s)", pid, seq, strings.Join(where, ",")))
				for _, o := range occ {
					badTimes = append(badTimes, o.at)
				}
			}
		}
		h.t.Logf("group %s: %d producers' ids checked; lost %d, handled twice while registered %d, twice after a consumer was lost %d (allowed), unsent %d",
			g, len(acked), len(lost), len(twice), after, len(unsent))
		if len(lost) > 0 {
			h.t.Errorf("group %s: %d acknowledged ids handled by no consumer: %s", g, len(lost), firstIDs(lost))
		}
		if len(twice) > 0 {
			h.t.Errorf("group %s: %d ids handled twice while the handler's registration lived: %s", g, len(twice), firstIDs(twice))
		}
		if len(unsent) > 0 {
			h.t.Errorf("group %s: %d ids no producer sent: %s", g, len(unsent), firstIDs(unsent))
		}
	}
	if len(badTimes) > 0 {
		h.t.Logf("events around the failing ids:\n%s", h.around(badTimes))
	}
}

// firstIDs sorts ids (by producer, then seq) and lists the first 30.
func firstIDs(ids []string) string {
	sort.Slice(ids, func(i, j int) bool {
		pi, si, _ := strings.Cut(ids[i], "/")
		pj, sj, _ := strings.Cut(ids[j], "/")
		if pi != pj {
			return pi < pj
		}
		a, _ := strconv.Atoi(strings.SplitN(si, "(", 2)[0])
		b, _ := strconv.Atoi(strings.SplitN(sj, "(", 2)[0])
		return a < b
	})
	if len(ids) > 30 {
		return strings.Join(ids[:30], " ") + fmt.Sprintf(" … (%d more)", len(ids)-30)
	}
	return strings.Join(ids, " ")
}

// around lists the events from 3s before the first of times to 3s after
// the last.
func (h *history) around(times []time.Time) string {
	sort.Slice(times, func(i, j int) bool { return times[i].Before(times[j]) })
	from, to := times[0].Add(-3*time.Second), times[len(times)-1].Add(3*time.Second)
	h.mu.Lock()
	defer h.mu.Unlock()
	var b strings.Builder
	fmt.Fprintf(&b, "  (ids handled or sent from %s to %s)\n", times[0].Format("15:04:05.000"), times[len(times)-1].Format("15:04:05.000"))
	for _, e := range h.events {
		if !e.at.Before(from) && !e.at.After(to) {
			fmt.Fprintf(&b, "  %s\n", e)
		}
	}
	return b.String()
}
