package main

// The operators' listener (-admin-addr): publishing, metrics, the profiler and expvar, on a server of its
// own that the public cannot reach and whose connections cannot take the files the public
// port needs.

import (
	"context"
	"expvar"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// adminMaxConns is the most connections the admin server holds at once; more wait in the
// kernel's queue, where they take no file of the process. It is well inside -fd-margin,
// so that operators' tools, however many, leave the public port its files.
const adminMaxConns = 16

// adminWriteTimeout bounds the writing of every answer on the admin port, beyond the time
// a profile or a trace is asked to run.
const adminWriteTimeout = 30 * time.Second

// serveAdmin starts the operators' server, with publish serving POST /publish, on cfg.adminAddr and returns the address it
// listens on and a function that closes it; an empty -admin-addr starts nothing. Its
// timeouts are the public port's, and its error lines go to logger at most one a second.
func serveAdmin(cfg config, m *metrics, publish http.Handler, logger *slog.Logger) (string, func() error, error) {
	if cfg.adminAddr == "" {
		return "", func() error { return nil }, nil
	}
	ln, err := net.Listen("tcp", cfg.adminAddr)
	if err != nil {
		return "", nil, fmt.Errorf("listen on %s (-admin-addr): %w", cfg.adminAddr, err)
	}
	srv := &http.Server{
		Handler:           adminHandler(m, publish),
		ReadHeaderTimeout: cfg.readTimeout,
		ReadTimeout:       cfg.readTimeout,
		IdleTimeout:       cfg.idleTimeout,
		ErrorLog:          serverErrorLog(logger, "admin listener"),
	}
	go srv.Serve(newLimitListener(ln, adminMaxConns))
	return ln.Addr().String(), srv.Close, nil
}

// adminHandler serves the operators' routes: POST /publish, metrics in the Prometheus text
// format, the profiler and expvar. It belongs on a listener of its own that the public
// cannot reach.
func adminHandler(m *metrics, publish http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("POST /publish", publish)
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{Registry: m.registry}))
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.Handle("GET /debug/pprof/profile", forSeconds(http.HandlerFunc(pprof.Profile), 30))
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.Handle("GET /debug/pprof/trace", forSeconds(http.HandlerFunc(pprof.Trace), 1))
	mux.Handle("GET /debug/vars", expvar.Handler())
	return withWriteDeadline(mux)
}

// withWriteDeadline gives every answer of h adminWriteTimeout to be written, from the
// moment its request is read. The server's own WriteTimeout would also cut profiles that
// run longer, and pprof refuses a profile longer than it.
func withWriteDeadline(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(adminWriteTimeout))
		h.ServeHTTP(w, r)
	})
}

// forSeconds lets h, a profile or a trace that runs for its ?seconds= (defaultSeconds if
// none), write for that long beyond adminWriteTimeout.
func forSeconds(h http.Handler, defaultSeconds float64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seconds, err := strconv.ParseFloat(r.FormValue("seconds"), 64)
		if err != nil || seconds <= 0 {
			seconds = defaultSeconds
		}
		deadline := time.Now().Add(adminWriteTimeout + time.Duration(seconds*float64(time.Second)))
		_ = http.NewResponseController(w).SetWriteDeadline(deadline)
		h.ServeHTTP(w, r)
	})
}

// serverErrorLog returns a log.Logger for a net/http server's ErrorLog that writes each of
// its lines ("http: Accept error: ...", "http: TLS handshake error ...") to logger as a
// warning with message msg, at most one a second, and counts the rest in one summary line
// a second: the output stays one format, and a flood of failed accepts cannot flood it.
func serverErrorLog(logger *slog.Logger, msg string) *log.Logger {
	return log.New(&errorLogWriter{logger: logger, msg: msg, limit: newLogLimit(logger, 1, msg+" lines not logged")}, "", 0)
}

// errorLogWriter turns the lines a log.Logger writes into structured log lines.
type errorLogWriter struct {
	logger *slog.Logger
	msg    string
	limit  *logLimit
}

// Write logs p, one line of a log.Logger, if the rate limit allows it.
func (w *errorLogWriter) Write(p []byte) (int, error) {
	if w.limit.allow("error") {
		w.logger.LogAttrs(context.Background(), slog.LevelWarn, w.msg, slog.String("error", strings.TrimSpace(string(p))))
	}
	return len(p), nil
}

// limitListener accepts at most a fixed number of connections that are open at once; the
// rest wait in the kernel's queue until one closes.
type limitListener struct {
	net.Listener
	slots  chan struct{}
	closed chan struct{}
	once   sync.Once
}

// newLimitListener returns ln holding at most n connections open at once.
func newLimitListener(ln net.Listener, n int) *limitListener {
	return &limitListener{Listener: ln, slots: make(chan struct{}, n), closed: make(chan struct{})}
}

// Accept waits for a free slot, then for a connection.
func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.slots <- struct{}{}:
	case <-l.closed:
		return nil, net.ErrClosed
	}
	conn, err := l.Listener.Accept()
	if err != nil {
		<-l.slots
		return nil, err
	}
	return &limitConn{Conn: conn, release: func() { <-l.slots }}, nil
}

// Close stops accepting, including an Accept that waits for a slot.
func (l *limitListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

// limitConn is a connection that frees its slot when it closes, once.
type limitConn struct {
	net.Conn
	release func()
	once    sync.Once
}

// Close closes the connection and frees its slot.
func (c *limitConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}
