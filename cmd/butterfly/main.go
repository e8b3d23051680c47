// Command butterfly runs every role of a Butterfly mesh: an embedded etcd for
// development, intermediates, producers, consumers and stages, plus operator
// commands (ls, drain), the demo and the benchmark.
//
// Exit codes: 0 success; 1 a runtime error; 2 a usage error (a wrong or
// missing flag or argument); 3 the work did not complete without loss (a
// producer exited with unacknowledged messages, the demo counted a lost
// message).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

// Exit codes, documented in every --help and in the README.
const (
	exitOK         = 0
	exitError      = 1
	exitUsage      = 2
	exitIncomplete = 3
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		// The first signal starts a clean shutdown; restoring the default
		// handling lets a second one end the process at once.
		<-ctx.Done()
		stop()
	}()
	code := run(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}

// run executes the command line and returns the exit code.
func run(ctx context.Context, args []string) int {
	root := newRootCommand()
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	fmt.Fprintln(os.Stderr, errorLine(err))
	var ue *usageError
	var ie *incompleteError
	switch {
	case errors.As(err, &ue) || !root.ran:
		return exitUsage
	case errors.As(err, &ie):
		return exitIncomplete
	default:
		return exitError
	}
}

// errorLine is the command's last line for err: one line, errors joined
// (a stage's two sides that both failed to close) separated by "; ".
func errorLine(err error) string {
	msg := err.Error()
	// cobra's suggestion for a misspelt command, on lines of its own.
	if before, after, ok := strings.Cut(msg, "\n\nDid you mean this?\n"); ok {
		msg = before + "; did you mean " + strings.Join(strings.Fields(after), " or ") + "?"
	}
	var parts []string
	for line := range strings.Lines(msg) {
		if line = strings.TrimSpace(line); line != "" {
			parts = append(parts, line)
		}
	}
	return "butterfly: " + strings.Join(parts, "; ")
}

// usageError is a wrong or missing flag or argument.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error {
	return &usageError{fmt.Errorf(format, args...)}
}

// incompleteError means the command ran but did not finish its work without
// loss.
type incompleteError struct{ err error }

func (e *incompleteError) Error() string { return e.err.Error() }
func (e *incompleteError) Unwrap() error { return e.err }
