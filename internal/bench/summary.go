package bench

import (
	"cmp"
	"encoding/json"
	"fmt"
	"slices"
)

// Summary is what a report made of several runs adds: how many runs, and
// the lowest and highest value each figure took in them.
type Summary struct {
	Runs   int                   `json:"runs,omitempty"`
	Ranges map[string][2]float64 `json:"ranges,omitempty"`
}

func (s *Summary) setSummary(x Summary) { *s = x }

// worstOf are the figures a summary takes the highest of rather than the
// median: counts that must be zero, where one run's miss is the result.
var worstOf = map[string]bool{
	"failover_lost":    true,
	"lost":             true,
	"handled_twice":    true,
	"unknown_messages": true,

	"consumer_registrations_lapsed": true,
	"unacknowledged":                true,
}

// Summarize returns the report of an odd number of runs of one
// configuration: the median of every figure, so that each is a value a run
// measured; the highest of the counts that must be zero; and each figure's
// lowest and highest in Ranges. A negative figure is an event a run did not
// see (a fault's time is -1 then): it counts as worse than any measured
// one. Figures computed from others (a report's ratios) are computed again
// from the medians. Series (samples, events) are not carried over.
func Summarize[T any, PT interface {
	*T
	setSummary(Summary)
}](reps []*T) (*T, error) {
	if len(reps)%2 == 0 {
		return nil, fmt.Errorf("bench: %d runs to summarize, want an odd number: the median of an even number is no run's", len(reps))
	}
	runs := make([]map[string]any, len(reps))
	for i, r := range reps {
		b, err := json.Marshal(r)
		if err != nil {
			return nil, err
		}
		if err := json.Unmarshal(b, &runs[i]); err != nil {
			return nil, err
		}
	}
	out := make(map[string]any, len(runs[0]))
	ranges := make(map[string][2]float64)
	for key, first := range runs[0] {
		if _, ok := first.(float64); !ok {
			out[key] = first // text, such as the mode: the same in every run
			continue
		}
		vals := make([]float64, 0, len(runs))
		for i, run := range runs {
			v, ok := run[key].(float64)
			if !ok {
				return nil, fmt.Errorf("bench: run %d has no figure %q", i+1, key)
			}
			vals = append(vals, v)
		}
		// Not seen (negative) sorts last, as the worst.
		slices.SortFunc(vals, func(a, b float64) int {
			switch {
			case a < 0 && b >= 0:
				return 1
			case b < 0 && a >= 0:
				return -1
			}
			return cmp.Compare(a, b)
		})
		if worstOf[key] {
			out[key] = vals[len(vals)-1]
		} else {
			out[key] = vals[len(vals)/2]
		}
		lo, hi := slices.Min(vals), slices.Max(vals)
		if lo != hi {
			ranges[key] = [2]float64{lo, hi}
		}
	}
	b, err := json.Marshal(out)
	if err != nil {
		return nil, err
	}
	sum := new(T)
	if err := json.Unmarshal(b, sum); err != nil {
		return nil, err
	}
	PT(sum).setSummary(Summary{Runs: len(reps), Ranges: ranges})
	if d, ok := any(sum).(interface{ derive() }); ok {
		d.derive()
	}
	return sum, nil
}
