//go:build !linux

package bench

import (
	"errors"
	"os"
	"syscall"
	"time"
)

// childAttr has no way on this platform to tie a child's life to the bench
// process: children stop when their standard input ends, intermediates
// when the run kills them.
func childAttr() *syscall.SysProcAttr { return nil }

// processCPU is not measured on this platform.
func processCPU(int) (time.Duration, error) {
	return 0, errors.New("bench: CPU time of another process is not measured on this platform")
}

// peakRSS is not measured on this platform.
func peakRSS(*os.ProcessState) uint64 { return 0 }
