package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// maxAcceptDelay is the longest wait between two tries after an accept failed, as in net/http.
const maxAcceptDelay = time.Second

// connListener keeps serving through accept errors that pass, sets each accepted
// connection's socket options, and keeps track of the connections it accepted. Running out of file descriptors (EMFILE) makes Accept fail until
// some connection closes; fasthttp would end Serve on it, so the listener waits and tries
// again instead, 5 ms doubling to 1 s. Closing the listener also ends every read under way
// on its connections: a connection waiting for a request, or in the middle of one, would
// otherwise hold the shutdown until its read timeout, while a stream, which is only
// written, is not disturbed.
type connListener struct {
	net.Listener
	// sendBuffer caps each connection's kernel send buffer (0 = the kernel's). Linux grows
	// it up to 4 MiB otherwise, so a client that stops reading would pin that much memory
	// and, at one small event a second, take a day to fill it before the write deadline bit.
	sendBuffer int
	// userTimeout is each connection's TCP_USER_TIMEOUT (0 = the kernel's): how long sent
	// data may stay unacknowledged, or the client's receive window shut, before the kernel
	// drops the connection. It finds a client that vanished without a FIN or a reset (a
	// phone off Wi-Fi), which otherwise counts as connected for about 15 minutes.
	userTimeout time.Duration

	logger       *slog.Logger
	errLog       *logLimit // accept errors, at most one line a second
	acceptErrors prometheus.Counter
	closed       chan struct{}
	once         sync.Once
	err          error // what closing the listener returned

	mu    sync.Mutex
	conns map[*trackedConn]struct{}
}

// listen opens the public listener on cfg.addr, with the send buffer and TCP_USER_TIMEOUT
// that cfg asks for on every connection, and warns when the system cannot apply
// -dead-client-timeout.
func listen(cfg config, logger *slog.Logger, acceptErrors prometheus.Counter) (*connListener, error) {
	tcp, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", cfg.addr, err)
	}
	ln := newConnListener(tcp, logger, acceptErrors)
	ln.sendBuffer, ln.userTimeout = cfg.sendBuffer, cfg.deadClientAfter
	if cfg.deadClientAfter > 0 {
		if err := checkUserTimeout(); err != nil {
			logger.Warn("-dead-client-timeout does not work on this system: a client that vanishes without closing its connection stays counted until the kernel gives up (about 15 minutes)", "error", err)
		}
	}
	return ln, nil
}

// newConnListener wraps ln, logging accept errors to logger and counting them in acceptErrors.
func newConnListener(ln net.Listener, logger *slog.Logger, acceptErrors prometheus.Counter) *connListener {
	return &connListener{
		Listener:     ln,
		logger:       logger,
		errLog:       newLogLimit(logger, 1, "accept errors not logged"),
		acceptErrors: acceptErrors,
		closed:       make(chan struct{}),
		conns:        make(map[*trackedConn]struct{}),
	}
}

// Accept waits for the next connection. An error that passes is retried after a delay
// that doubles up to maxAcceptDelay; any other error, or closing the listener, ends it.
func (l *connListener) Accept() (net.Conn, error) {
	var delay time.Duration
	for {
		conn, err := l.Listener.Accept()
		if err == nil {
			return l.track(conn), nil
		}
		if !temporaryAcceptError(err) {
			return nil, err
		}
		l.acceptErrors.Inc()
		delay = min(max(2*delay, 5*time.Millisecond), maxAcceptDelay)
		if l.errLog.allow("accept") {
			l.logger.Warn("accept failed, retrying", "error", err.Error(), "retry_in", delay)
		}
		timer := time.NewTimer(delay)
		select {
		case <-timer.C:
		case <-l.closed:
			timer.Stop()
			return nil, net.ErrClosed
		}
	}
}

// temporaryAcceptError reports whether a failed accept can succeed later: the process or
// the system is out of file descriptors or memory for now. A client that left before its
// connection was accepted (ECONNABORTED) and an interrupted call (EINTR) never get here:
// Go's accept tries again by itself.
func temporaryAcceptError(err error) bool {
	for _, errno := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM} {
		if errors.Is(err, errno) {
			return true
		}
	}
	return false
}

// track sets conn's socket options and wraps it, so that the listener knows it until it closes.
func (l *connListener) track(conn net.Conn) net.Conn {
	if tcp, ok := conn.(*net.TCPConn); ok {
		// A failure leaves the kernel's default, which costs memory but breaks nothing.
		if l.sendBuffer > 0 {
			_ = tcp.SetWriteBuffer(l.sendBuffer)
		}
		if l.userTimeout > 0 {
			_ = setUserTimeout(tcp, l.userTimeout) // run warned at start-up where it cannot work
		}
	}
	c := &trackedConn{Conn: conn, listener: l}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.conns[c] = struct{}{}
	select {
	case <-l.closed:
		// Accepted while the listener closed: its reads end too.
		_ = conn.SetReadDeadline(time.Unix(1, 0))
	default:
	}
	return c
}

// Close stops accepting and ends every read under way or to come on the connections the
// listener accepted. Only the first call does anything; every call returns its error.
func (l *connListener) Close() error {
	l.once.Do(func() {
		close(l.closed)
		l.err = l.Listener.Close()
		l.mu.Lock()
		defer l.mu.Unlock()
		for c := range l.conns {
			// A connection that has just closed may refuse: nothing left to end.
			_ = c.SetReadDeadline(time.Unix(1, 0))
		}
	})
	return l.err
}

// trackedConn is a connection that its listener keeps track of until it closes.
type trackedConn struct {
	net.Conn
	listener *connListener
	once     sync.Once
	// taken is set once a stream has taken the connection over and sets its deadlines on the
	// socket itself: the server, letting go of the connection, must not clear them.
	taken atomic.Bool
}

// SetDeadline sets the connection's deadlines, unless a stream has taken it over.
func (c *trackedConn) SetDeadline(t time.Time) error {
	if c.taken.Load() {
		return nil
	}
	return c.Conn.SetDeadline(t)
}

// SetWriteDeadline sets the connection's write deadline, unless a stream has taken it over.
func (c *trackedConn) SetWriteDeadline(t time.Time) error {
	if c.taken.Load() {
		return nil
	}
	return c.Conn.SetWriteDeadline(t)
}

// connOf returns the connection under r, where r's context names it, as the adaptor's
// *fasthttp.RequestCtx does, unwrapped from the listener's trackedConn, and that
// trackedConn if there is one; nil otherwise.
func connOf(r *http.Request) (net.Conn, *trackedConn) {
	owner, ok := r.Context().(interface{ Conn() net.Conn })
	if !ok {
		return nil, nil
	}
	conn := owner.Conn()
	if tracked, ok := conn.(*trackedConn); ok {
		return tracked.Conn, tracked
	}
	return conn, nil
}

// Close closes the connection and lets the listener forget it.
func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.listener.mu.Lock()
		delete(c.listener.conns, c)
		c.listener.mu.Unlock()
	})
	return c.Conn.Close()
}
