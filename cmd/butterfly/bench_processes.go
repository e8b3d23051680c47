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
	var (
		reps   []*bench.ProcessReport
		rep    *bench.ProcessReport
		runErr error
		lost   uint64 // in every run so far
	)
	for i := range f.runs {
		if f.runs > 1 {
			cfg.Logger.Info("bench: run", "run", i+1, "of", f.runs)
		}
		rep, runErr = bench.RunProcesses(cmd.Context(), bench.ProcessConfig{Config: cfg, Executable: exe})
		if rep != nil {
			lost += rep.Lost
		}
		if runErr != nil && f.runs > 1 {
			runErr = fmt.Errorf("run %d of %d: %w", i+1, f.runs, runErr)
		}
		if rep == nil {
			return withLosses(runErr, lost)
		}
		if runErr != nil {
			break // report what this run measured, not a median
		}
		reps = append(reps, rep)
	}
	if runErr == nil && f.runs > 1 {
		if rep, err = bench.Summarize(reps); err != nil {
			return withLosses(err, lost)
		}
	}
	if err := f.print(cmd.OutOrStdout(), rep, f.table(rep.Runs, rep.WriteTable)); err != nil {
		return withLosses(errors.Join(runErr, err), lost)
	}
	return withLosses(runErr, lost)
}

// withLosses is err, made an incompleteError (exit code 3) naming them when
// lost messages were lost in the runs.
func withLosses(err error, lost uint64) error {
	if lost == 0 {
		return err
	}
	return &incompleteError{errors.Join(fmt.Errorf("%d messages lost", lost), err)}
}
