package bench

import (
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
}

// Summarize returns the report of several runs of one configuration: the
// median of every figure (the lower middle one of an even number, so that
// every figure is a value a run measured), the highest of the counts that
// must be zero, and each figure's range in Ranges. Series (samples,
// events) are not carried over.
func Summarize[T any, PT interface {
	*T
	setSummary(Summary)
}](reps []*T) (*T, error) {
	if len(reps) == 0 {
		return nil, fmt.Errorf("bench: no runs to summarize")
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
		slices.Sort(vals)
		if worstOf[key] {
			out[key] = vals[len(vals)-1]
		} else {
			out[key] = vals[(len(vals)-1)/2]
		}
		if vals[0] != vals[len(vals)-1] {
			ranges[key] = [2]float64{vals[0], vals[len(vals)-1]}
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
	return sum, nil
}
