//go:build !linux

package main

import (
	"errors"
	"fmt"
	"syscall"
	"time"
)

// setUserTimeout does nothing where TCP_USER_TIMEOUT does not exist; checkUserTimeout says so.
func setUserTimeout(syscall.Conn, time.Duration) error {
	return fmt.Errorf("TCP_USER_TIMEOUT: %w", errors.ErrUnsupported)
}

// checkUserTimeout reports that this system has no TCP_USER_TIMEOUT, so that start-up says
// -dead-client-timeout cannot work here.
func checkUserTimeout() error {
	return fmt.Errorf("TCP_USER_TIMEOUT: %w", errors.ErrUnsupported)
}
