package main

import (
	"net"
	"time"
)

// sendBufferListener caps the kernel send buffer of every accepted connection. Linux grows
// it up to 4 MiB otherwise, so a client that stops reading would pin that much memory and,
// at one small event a second, take a day to fill it before the write deadline could bite.
type sendBufferListener struct {
	net.Listener
	size int
	// deadClientAfter is each connection's TCP_USER_TIMEOUT: how long sent data may stay
	// unacknowledged, or the client's receive window shut, before the kernel drops the
	// connection. It finds a client that vanished without a FIN or a reset (a phone off
	// Wi-Fi), which otherwise counts as connected for about 15 minutes.
	deadClientAfter time.Duration
}

// Accept accepts the next connection and sets its send buffer size and user timeout.
func (l sendBufferListener) Accept() (net.Conn, error) {
	conn, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if tcp, ok := conn.(*net.TCPConn); ok {
		// A failure leaves the kernel's default, which costs memory but breaks nothing.
		if l.size > 0 {
			_ = tcp.SetWriteBuffer(l.size)
		}
		if l.deadClientAfter > 0 {
			_ = setUserTimeout(tcp, l.deadClientAfter) // run warned at start-up where it cannot work
		}
	}
	return conn, nil
}
