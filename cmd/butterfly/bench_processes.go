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
	rep, runErr := bench.RunProcesses(cmd.Context(), bench.ProcessConfig{Config: cfg, Executable: exe})
	if rep == nil {
		return runErr
	}
	if err := f.print(cmd.OutOrStdout(), rep, rep.WriteTable); err != nil {
		return errors.Join(runErr, err)
	}
	if rep.Lost > 0 {
		return &incompleteError{errors.Join(fmt.Errorf("%d messages lost", rep.Lost), runErr)}
	}
	return runErr
}
