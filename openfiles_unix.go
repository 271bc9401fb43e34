//go:build unix

package main

import (
	"fmt"
	"syscall"
)

// openFileLimit returns the process's limit on open files. Go raises the soft limit to the
// hard one at start-up, so this is the most the process can open.
func openFileLimit() (uint64, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, fmt.Errorf("read the open-file limit: %w", err)
	}
	return rl.Cur, nil
}
