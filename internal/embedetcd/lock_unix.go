//go:build unix

package embedetcd

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// checkDataDir fails when another process holds the database of dir: etcd
// itself would wait for its lock without end, saying nothing below info.
func checkDataDir(dir string) error {
	db := filepath.Join(dir, "member", "snap", "db")
	f, err := os.OpenFile(db, os.O_RDWR, 0)
	if err != nil {
		return nil // none yet, or etcd will say what is wrong with it
	}
	defer f.Close()
	switch err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); {
	case errors.Is(err, syscall.EWOULDBLOCK):
		return fmt.Errorf("--data-dir %s is in use by another etcd (%s is locked)", dir, db)
	case err != nil:
		return nil
	}
	return syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
}
