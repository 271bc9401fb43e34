package main

import (
	"fmt"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// setUserTimeout sets TCP_USER_TIMEOUT on conn: the kernel drops the connection once data it
// sent has gone unacknowledged, or the peer's receive window has stayed shut, for d.
func setUserTimeout(conn syscall.Conn, d time.Duration) error {
	return controlSocket(conn, func(fd int) error {
		return unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(d.Milliseconds()))
	})
}

// checkUserTimeout reports whether the kernel knows TCP_USER_TIMEOUT, by reading it from the
// listening socket, so that start-up can say so when -dead-client-timeout cannot work.
func checkUserTimeout(ln syscall.Conn) error {
	return controlSocket(ln, func(fd int) error {
		_, err := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT)
		return err
	})
}

// controlSocket runs fn on the file descriptor of conn.
func controlSocket(conn syscall.Conn, fn func(fd int) error) error {
	raw, err := conn.SyscallConn()
	if err != nil {
		return fmt.Errorf("TCP_USER_TIMEOUT: %w", err)
	}
	var opErr error
	if err := raw.Control(func(fd uintptr) { opErr = fn(int(fd)) }); err != nil {
		return fmt.Errorf("TCP_USER_TIMEOUT: %w", err)
	}
	if opErr != nil {
		return fmt.Errorf("TCP_USER_TIMEOUT: %w", opErr)
	}
	return nil
}
