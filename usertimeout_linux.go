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

// checkUserTimeout reports whether the kernel takes TCP_USER_TIMEOUT, by setting it on a TCP
// socket of its own, so that start-up can say so when -dead-client-timeout cannot work.
func checkUserTimeout() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		fd, err = unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	}
	if err != nil {
		return fmt.Errorf("TCP_USER_TIMEOUT: open a TCP socket to try it on: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, 1000); err != nil {
		return fmt.Errorf("TCP_USER_TIMEOUT: %w", err)
	}
	return nil
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
