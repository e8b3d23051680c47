package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/butterfly-mesh/butterfly/internal/bench"
)

// runProcesses runs `butterfly bench --processes`: the mesh with every
// component a process of this binary, on an embedded etcd in this one.
func (f *benchFlags) runProcesses(cmd *cobra.Command, cfg bench.Config) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("bench --processes: finding this binary: %w", err)
	}
	// A run that fails after measuring still has a report: it is printed
	// as it is, not summarized with the others.
	var reps []*bench.ProcessReport
	var failed *bench.ProcessReport
	lost, runErr := f.repeat(cfg.Logger, func() (uint64, error) {
		rep, err := bench.RunProcesses(cmd.Context(), bench.ProcessConfig{Config: cfg, Executable: exe})
		switch {
		case rep == nil:
			return 0, err
		case err != nil:
			failed = rep
			return rep.Lost, err
		}
		reps = append(reps, rep)
		return rep.Lost, nil
	})
	rep := failed
	switch {
	case runErr != nil && rep == nil:
		return withLosses(runErr, lost)
	case runErr == nil && f.runs > 1:
		if rep, err = bench.Summarize(reps); err != nil {
			return withLosses(err, lost)
		}
	case runErr == nil:
		rep = reps[0]
	}
	if err := f.print(cmd.OutOrStdout(), rep, f.table(rep.Runs, rep.WriteTable)); err != nil {
		return withLosses(errors.Join(runErr, err), lost)
	}
	return withLosses(runErr, lost)
}

// withLosses is err, made an incompleteError (exit code 3) that names them
// when messages were lost in the runs.
func withLosses(err error, lost uint64) error {
	if lost == 0 {
		return err
	}
	return &incompleteError{errors.Join(fmt.Errorf("%d messages lost", lost), err)}
}
