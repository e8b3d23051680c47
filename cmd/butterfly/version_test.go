package main

import (
	"bytes"
	"errors"
	"runtime"
	"strings"
	"testing"
)

// TestVersionCommand checks that `butterfly version` prints its version,
// the Go version it was built with and its platform, as its help says.
func TestVersionCommand(t *testing.T) {
	out, err := executeCommand(t, "version")
	if err != nil {
		t.Fatalf("butterfly version = %v", err)
	}
	want := "butterfly " + buildVersion() + " " + runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH + "\n"
	if out != want {
		t.Errorf("butterfly version printed %q, want %q", out, want)
	}
}

// TestSubcommands_UnknownIsUsageError checks that an unknown subcommand of
// a command that has subcommands is a usage error naming it (exit code 2),
// not its help with exit code 0, as is none (after the help), and that every subcommand's help has
// examples and the exit codes (but the hidden workers').
func TestSubcommands_UnknownIsUsageError(t *testing.T) {
	_, err := executeCommand(t, "group", "frob")
	var ue *usageError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), `"frob"`) {
		t.Errorf("butterfly group frob = %v, want a usage error naming frob", err)
	}
	root := newRootCommand()
	var stdout, stderr bytes.Buffer
	root.SetOut(&stdout)
	root.SetErr(&stderr)
	root.SetArgs([]string{"group"})
	if err := root.ExecuteContext(t.Context()); !errors.As(err, &ue) || !strings.Contains(err.Error(), "a subcommand is required") || !strings.Contains(stderr.String(), "butterfly group create") || stdout.Len() != 0 {
		t.Errorf("butterfly group = %v, stdout %q, stderr %q; want its help on stderr and a usage error saying a subcommand is required", err, stdout.String(), stderr.String())
	}
	for _, c := range newRootCommand().Commands() {
		for _, sub := range c.Commands() {
			if !sub.Hidden && (sub.Example == "" || !strings.Contains(sub.Long, "Exit codes:")) {
				t.Errorf("%s: help without examples or exit codes", sub.CommandPath())
			}
		}
	}
}
