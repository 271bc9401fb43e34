package main

import (
	"bytes"
	"context"
	"errors"
	"expvar"
	"log/slog"
	"math"
	"mime"
	"net/http"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Process-wide counters, served at /debug/vars.
var (
	clientsOpen    = expvar.NewInt("clients")
	clientsTotal   = expvar.NewInt("clients_total")
	eventsSent     = expvar.NewInt("events_sent")
	keepalivesSent = expvar.NewInt("keepalives_sent")
	rejected       = expvar.NewInt("rejected")
)

// init publishes the goroutine count, which shows at a glance whether streams leak.
func init() {
	expvar.Publish("goroutines", expvar.Func(func() any { return runtime.NumGoroutine() }))
}

// keepaliveFrame is an SSE comment: clients ignore it, but writing it reveals a vanished client.
var keepaliveFrame = []byte(": keepalive\n\n")

// streamConfig holds the settings of every stream the SSE handler serves.
type streamConfig struct {
	Interval     time.Duration // how often a producer makes an event
	Keepalive    time.Duration // longest silence before a keepalive comment
	Retry        time.Duration // reconnect delay announced to clients
	MaxLifetime  time.Duration // a stream older than this ends; 0 means never
	WriteTimeout time.Duration // deadline for each write to a client
	Buffer       int           // events a client's channel holds
	MaxClients   int           // open streams allowed at once
}

// sseHandler serves the event stream: one producer goroutine per client, events framed
// as SSE, keepalives while idle, and a bounded number of open streams.
type sseHandler struct {
	cfg     streamConfig
	logger  *slog.Logger
	verbose bool
	opening []byte       // the first bytes of every stream: the retry delay and a comment
	open    atomic.Int64 // streams open now, for MaxClients and /healthz

	shuttingDown atomic.Bool
	writeBound   atomic.Int64 // once shutting down: the latest deadline of any write, in Unix ns
	mu           sync.Mutex
	writers      map[*http.ResponseController]struct{} // every open stream's, for Shutdown
}

// handleSSE returns the SSE handler for cfg. With verbose, every event is logged at debug level.
func handleSSE(cfg streamConfig, logger *slog.Logger, verbose bool) *sseHandler {
	opening := []byte("retry: ")
	opening = strconv.AppendInt(opening, cfg.Retry.Milliseconds(), 10)
	opening = append(opening, "\n: stream opened\n\n"...)
	return &sseHandler{cfg: cfg, logger: logger, verbose: verbose, opening: opening,
		writers: make(map[*http.ResponseController]struct{})}
}

// Shutdown tells the streams that the server is shutting down, and makes every write, under
// way or to come, end by deadline, so that a client that stopped reading cannot hold the
// shutdown for a whole write timeout. Call it before shutting the server down: the streams
// themselves end when their request's context does.
func (h *sseHandler) Shutdown(deadline time.Time) {
	h.writeBound.Store(deadline.UnixNano())
	h.shuttingDown.Store(true)
	h.mu.Lock()
	defer h.mu.Unlock()
	for rc := range h.writers {
		_ = rc.SetWriteDeadline(deadline) // a stream that has just ended may refuse: nothing to bound
	}
}

// Clients returns the number of streams open now.
func (h *sseHandler) Clients() int64 {
	return h.open.Load()
}

// ServeHTTP checks the request, takes a place among MaxClients, and streams until the
// client goes, the server shuts down, or the stream reaches MaxLifetime.
func (h *sseHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	header := w.Header()
	header.Set("Access-Control-Allow-Origin", "*")
	if !acceptsEventStream(r.Header.Values("Accept")) {
		http.Error(w, "406 not acceptable: /sse only serves text/event-stream", http.StatusNotAcceptable)
		return
	}
	if r.Method == http.MethodHead {
		setStreamHeaders(header)
		w.WriteHeader(http.StatusOK)
		return
	}
	if h.open.Add(1) > int64(h.cfg.MaxClients) {
		h.open.Add(-1)
		rejected.Add(1)
		header.Set("Retry-After", strconv.Itoa(retryAfterSeconds(h.cfg.Retry)))
		http.Error(w, "503 service unavailable: too many open streams, retry later", http.StatusServiceUnavailable)
		return
	}
	defer h.open.Add(-1)
	setStreamHeaders(header)

	clientsOpen.Add(1)
	clientsTotal.Add(1)
	defer clientsOpen.Add(-1)

	client := newClient(r.RemoteAddr, h.cfg.Buffer)
	lastID, resumed := parseLastEventID(r.Header.Get("Last-Event-ID"))
	h.logger.Info("client connected", "client", client.name, "last_event_id", lastID, "resumed", resumed)

	// The producer gets a context of its own: deriving one from r.Context() would cost
	// a goroutine per stream under the adaptor, and that context ends only at shutdown.
	ctx, stopProducer := context.WithCancel(context.Background())
	defer stopProducer()
	go produce(ctx, client.events, h.cfg.Interval)

	s := stream{
		h:         h,
		w:         w,
		rc:        http.NewResponseController(w),
		keepalive: time.NewTimer(h.cfg.Keepalive),
		nextID:    lastID + 1,
		lastID:    lastID,
		name:      client.name,
	}
	defer s.keepalive.Stop()
	h.mu.Lock()
	h.writers[s.rc] = struct{}{}
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		delete(h.writers, s.rc)
		h.mu.Unlock()
	}()
	start := time.Now()
	reason, err := h.serve(&s, client, r.Context().Done())
	attrs := []any{"client", client.name, "duration", time.Since(start).Round(time.Millisecond),
		"events", s.sent, "last_id", s.lastID, "reason", reason}
	if err != nil {
		attrs = append(attrs, "error", err.Error())
	}
	h.logger.Info("client disconnected", attrs...)
}

// setStreamHeaders sets the headers of an event stream: no caching, and no buffering in
// proxies that honour X-Accel-Buffering, such as nginx.
func setStreamHeaders(header http.Header) {
	header.Set("Content-Type", "text/event-stream")
	header.Set("Cache-Control", "no-cache")
	header.Set("Connection", "keep-alive")
	header.Set("X-Accel-Buffering", "no")
}

// Why a stream ended, logged once per client.
const (
	endClientGone   = "client gone"
	endWriteTimeout = "write timeout"
	endShutdown     = "server shutdown"
	endMaxLifetime  = "max lifetime reached"
)

// serve runs the stream loop: one select whose cases are every way a stream goes on or ends.
// requestDone is taken once, up front, because the adaptor may recycle the request's
// context once the client is gone. Under the adaptor it closes only at shutdown; under
// net/http it also closes when the client leaves.
func (h *sseHandler) serve(s *stream, client *Client, requestDone <-chan struct{}) (string, error) {
	// Headers go out before any byte of body: under the adaptor a write before the first
	// flush pins a 32 KB buffer for the life of the stream.
	if err := s.rc.Flush(); err != nil {
		return h.whyWriteFailed(s), err
	}
	if err := s.write(h.opening); err != nil {
		return h.whyWriteFailed(s), err
	}

	var lifetime <-chan time.Time
	if h.cfg.MaxLifetime > 0 {
		timer := time.NewTimer(h.cfg.MaxLifetime)
		defer timer.Stop()
		lifetime = timer.C
	}
	for {
		select {
		case ev := <-client.events:
			s.queue(ev)
			// Events that queued up while the last write was under way go out in the same write.
			for n := len(client.events); n > 0; n-- {
				s.queue(<-client.events)
			}
			if err := s.flushEvents(); err != nil {
				return h.whyWriteFailed(s), err
			}
		case <-s.keepalive.C:
			// Writes do not reset the timer, which would cost a timer-heap update per
			// event; a timer that fires early is set again for the rest of the silence.
			if silent := time.Since(s.lastWrite); silent < h.cfg.Keepalive {
				s.keepalive.Reset(h.cfg.Keepalive - silent)
				continue
			}
			if err := s.write(keepaliveFrame); err != nil {
				return h.whyWriteFailed(s), err
			}
			s.keepalive.Reset(h.cfg.Keepalive)
			keepalivesSent.Add(1)
		case <-lifetime:
			return endMaxLifetime, nil
		case <-requestDone:
			if h.shuttingDown.Load() {
				return endShutdown, nil
			}
			return endClientGone, nil
		}
	}
}

// whyWriteFailed tells why a write of s failed. Under the adaptor every failure is the same
// closed pipe, so the reason comes from the handler's state and the time the write took.
func (h *sseHandler) whyWriteFailed(s *stream) string {
	switch {
	case h.shuttingDown.Load():
		return endShutdown
	case time.Since(s.lastWrite) >= h.cfg.WriteTimeout:
		return endWriteTimeout
	default:
		return endClientGone
	}
}

// stream is the writing side of one client's connection: reused buffers, the next id,
// and when it last wrote, which the keepalive timer checks.
type stream struct {
	h         *sseHandler
	w         http.ResponseWriter
	rc        *http.ResponseController
	keepalive *time.Timer
	lastWrite time.Time
	name      string
	buf       []byte // frames waiting for the next write
	json      []byte // scratch for one event's data
	pending   int    // events in buf
	nextID    uint64 // id of the next event framed
	lastID    uint64 // id of the last event written
	sent      int
}

// queue frames ev under the next id into the stream's buffer.
func (s *stream) queue(ev *DashBoard) {
	s.json = ev.AppendJSON(s.json[:0])
	s.buf = appendEvent(s.buf, s.nextID, s.json)
	if s.h.verbose {
		s.h.logger.Debug("event", "client", s.name, "id", s.nextID, "user", ev.User)
	}
	s.nextID++
	s.pending++
}

// flushEvents writes the buffered events in one write and counts them.
func (s *stream) flushEvents() error {
	err := s.write(s.buf)
	s.buf = s.buf[:0]
	if err != nil {
		return err
	}
	s.sent += s.pending
	s.lastID = s.nextID - 1
	eventsSent.Add(int64(s.pending))
	s.pending = 0
	return nil
}

// write sends p to the client and flushes it, within the write timeout (or the shutdown's
// bound, if sooner). A client that stopped reading makes it fail once the deadline passes.
func (s *stream) write(p []byte) error {
	s.lastWrite = time.Now()
	deadline := s.lastWrite.Add(s.h.cfg.WriteTimeout)
	if bound := s.h.writeBound.Load(); bound != 0 && bound < deadline.UnixNano() {
		deadline = time.Unix(0, bound)
	}
	err := s.rc.SetWriteDeadline(deadline)
	if err != nil && !errors.Is(err, http.ErrNotSupported) {
		return err
	}
	if _, err := s.w.Write(p); err != nil {
		return err
	}
	if err := s.rc.Flush(); err != nil {
		return err
	}
	// Under the adaptor a write returns once fasthttp's worker has taken the bytes, before
	// it writes them to the connection. An empty write returns only when the worker is
	// done with them, with an error if the client is gone, so a vanished client shows on
	// this write rather than on the next. Elsewhere an empty write does nothing.
	_, err = s.w.Write(nil)
	return err
}

// appendEvent appends one SSE event with the given id and data to dst. Every line break in
// data (CRLF, CR or LF) starts a new data: line, so no data can split or merge events.
func appendEvent(dst []byte, id uint64, data []byte) []byte {
	dst = append(dst, "id: "...)
	dst = strconv.AppendUint(dst, id, 10)
	dst = append(dst, '\n')
	for {
		i := bytes.IndexAny(data, "\r\n")
		if i < 0 {
			break
		}
		dst = append(dst, "data: "...)
		dst = append(dst, data[:i]...)
		dst = append(dst, '\n')
		if data[i] == '\r' && i+1 < len(data) && data[i+1] == '\n' {
			i++
		}
		data = data[i+1:]
	}
	dst = append(dst, "data: "...)
	dst = append(dst, data...)
	return append(dst, "\n\n"...)
}

// maxLastEventID is the largest Last-Event-ID a stream goes on from. No stream sends 2^63
// events, so the ids that follow it never wrap around.
const maxLastEventID = 1<<63 - 1

// parseLastEventID returns the id a reconnecting client last saw. Anything but a decimal
// number up to maxLastEventID counts as no id, and the stream starts at 1.
func parseLastEventID(value string) (id uint64, ok bool) {
	id, err := strconv.ParseUint(value, 10, 64)
	if err != nil || id > maxLastEventID {
		return 0, false
	}
	return id, true
}

// acceptsEventStream reports whether a request's Accept headers allow text/event-stream.
// No Accept header means anything goes, as for curl; text/event-stream;q=0 refuses it even
// beside a wildcard.
func acceptsEventStream(accept []string) bool {
	if len(accept) == 0 {
		return true
	}
	accepted := false
	for _, value := range accept {
		for item := range strings.SplitSeq(value, ",") {
			mediaType, params, err := mime.ParseMediaType(item)
			if err != nil {
				continue
			}
			q, err := strconv.ParseFloat(params["q"], 64)
			refused := err == nil && q == 0
			switch mediaType {
			case "text/event-stream":
				if refused {
					return false
				}
				accepted = true
			case "text/*", "*/*":
				accepted = accepted || !refused
			}
		}
	}
	return accepted
}

// retryAfterSeconds turns the reconnect delay into a Retry-After value of at least one second.
func retryAfterSeconds(retry time.Duration) int {
	return max(1, int(math.Ceil(retry.Seconds())))
}

// recoverStream logs a panic in h with its stack, then panics again, so that the server
// answers 500 (or cuts a stream already under way) and keeps serving everyone else.
func recoverStream(h http.Handler, logger *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// A copy: under the adaptor the path points into a buffer that fasthttp reuses
		// once the client is gone.
		path := strings.Clone(r.URL.Path)
		defer func() {
			if v := recover(); v != nil {
				if v != http.ErrAbortHandler {
					logger.Error("panic in handler", "path", path, "panic", v, "stack", string(debug.Stack()))
				}
				panic(v)
			}
		}()
		h.ServeHTTP(w, r)
	})
}
