package main

import "net"

// sendBufferListener caps the kernel send buffer of every accepted connection. Linux grows
// it up to 4 MiB otherwise, so a client that stops reading would pin that much memory and,
// at one small event a second, take a day to fill it before the write deadline could bite.
type sendBufferListener struct {
	net.Listener
	size int
}

// Accept accepts the next connection and sets its send buffer size.
func (l sendBufferListener) Accept() (net.Conn, error) {
	conn, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if tcp, ok := conn.(*net.TCPConn); ok {
		// A failure leaves the kernel's default, which costs memory but breaks nothing.
		_ = tcp.SetWriteBuffer(l.size)
	}
	return conn, nil
}
