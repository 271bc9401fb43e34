package main

import (
	"context"
	"log/slog"
	"math"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// streamConfig holds the settings of every stream the SSE handler serves.
type streamConfig struct {
	Interval     time.Duration // how often a producer makes an event
	Keepalive    time.Duration // longest silence before a keepalive comment
	Retry        time.Duration // reconnect delay announced to clients
	RetrySpread  time.Duration // at most this is added at random to Retry at shutdown and over MaxClients
	MaxLifetime  time.Duration // a stream older than this ends; 0 means never
	WriteTimeout time.Duration // deadline for each write to a client
	Buffer       int           // events a client's channel holds
	MaxClients   int           // open streams allowed at once
	LogRate      int           // stream-end lines logged per second at most; 0 means every one

	History         historyLimits // what the topic hub keeps for clients that resume
	SubscriberQueue int           // topic events queued for a subscriber before it counts as too slow
}

// shutdown is the SSE handler's own done signal. It works the same under any server: the
// adaptor's request context ends only at shutdown, and net/http's never does.
type shutdown struct {
	done  chan struct{}
	once  sync.Once
	bound atomic.Int64 // the latest deadline of any write once shutting down, in Unix ns
}

// begin closes done and bounds every write from now on by deadline. Only the first call counts.
func (s *shutdown) begin(deadline time.Time) {
	s.once.Do(func() {
		s.bound.Store(deadline.UnixNano())
		close(s.done)
	})
}

// started reports whether the shutdown has begun.
func (s *shutdown) started() bool {
	return s.bound.Load() != 0
}

// writeBound returns the deadline that bounds every write, once the shutdown has begun.
func (s *shutdown) writeBound() (time.Time, bool) {
	ns := s.bound.Load()
	return time.Unix(0, ns), ns != 0
}

// sseHandler serves the event stream: one producer goroutine per client, events framed
// as SSE, keepalives while idle, and a bounded number of open streams.
type sseHandler struct {
	cfg     streamConfig
	logger  *slog.Logger
	metrics *metrics
	opening []byte       // the first bytes of every stream: the retry delay and a comment
	hub     *hub         // the topics' subscribers and history
	endLog  *logLimit    // bounds the lines that say why a stream ended
	open    atomic.Int64 // streams open now, for MaxClients, /healthz and the metrics
	stop    shutdown
	streams sync.WaitGroup // every ServeHTTP that holds a place, so Wait can wait for their last log line

	mu      sync.Mutex
	writers map[*http.ResponseController]struct{} // every open stream's, for Shutdown
}

// handleSSE returns the SSE handler for cfg. When logger logs at debug level, every event
// is logged.
func handleSSE(cfg streamConfig, logger *slog.Logger) *sseHandler {
	h := &sseHandler{
		cfg:     cfg,
		logger:  logger,
		opening: appendRetry(nil, cfg.Retry, "stream opened"),
		endLog:  newLogLimit(logger, cfg.LogRate, "client disconnected lines not logged"),
		stop:    shutdown{done: make(chan struct{})},
		writers: make(map[*http.ResponseController]struct{}),
	}
	h.metrics = newMetrics(func() float64 { return float64(h.open.Load()) }, cfg.WriteTimeout)
	h.hub = newHub(cfg.History, cfg.SubscriberQueue, newHubMetrics(h.metrics.registry))
	h.hub.registerGauges(h.metrics.registry)
	return h
}

// Shutdown ends every stream, open or to come, and makes every write, under way or to come,
// end by deadline, so that a client that stopped reading cannot hold the shutdown for a
// whole write timeout. Call it before shutting the server down.
func (h *sseHandler) Shutdown(deadline time.Time) {
	h.stop.begin(deadline)
	h.mu.Lock()
	defer h.mu.Unlock()
	for rc := range h.writers {
		_ = rc.SetWriteDeadline(deadline) // a stream that has just ended may refuse: nothing to bound
	}
}

// Wait waits until every stream has ended and logged why, with a summary of the lines over
// the log rate, or ctx ends first.
func (h *sseHandler) Wait(ctx context.Context) error {
	ended := make(chan struct{})
	go func() {
		h.streams.Wait()
		close(ended)
	}()
	select {
	case <-ended:
		h.endLog.flush()
		return nil
	case <-ctx.Done():
		return ctx.Err()
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
	if ok, err := acceptsEventStream(r.Header.Values("Accept")); err != nil {
		h.metrics.rejected[rejectBadRequest].Inc()
		http.Error(w, "400 bad request: "+err.Error(), http.StatusBadRequest)
		return
	} else if !ok {
		h.metrics.rejected[rejectNotAcceptable].Inc()
		http.Error(w, "406 not acceptable: /sse only serves text/event-stream", http.StatusNotAcceptable)
		return
	}
	var topics []string
	if r.URL.RawQuery != "" {
		if names, ok := r.URL.Query()["topic"]; ok {
			var err error
			if topics, err = parseTopics(names); err != nil {
				h.metrics.rejected[rejectBadRequest].Inc()
				http.Error(w, "400 bad request: "+err.Error(), http.StatusBadRequest)
				return
			}
		}
	}
	if r.Method == http.MethodHead {
		setStreamHeaders(header)
		w.WriteHeader(http.StatusOK)
		return
	}
	if h.open.Add(1) > int64(h.cfg.MaxClients) {
		h.open.Add(-1)
		h.metrics.rejected[rejectMaxClients].Inc()
		h.refuse(w, r)
		return
	}
	h.streams.Add(1)
	defer h.streams.Done()
	defer h.open.Add(-1)
	setStreamHeaders(header)

	h.metrics.opened.Inc()
	if topics != nil {
		h.serveTopics(w, r, topics)
		return
	}
	client := newClient(r.RemoteAddr, h.cfg.Buffer)
	lastID, resumed := resumeID(r)
	h.logger.Debug("client connected", "client", client.name, "last_event_id", lastID, "resumed", resumed)

	// The producer gets a context of its own: deriving one from r.Context() would cost
	// a goroutine per stream under the adaptor, and that context ends only at shutdown.
	ctx, stopProducer := context.WithCancel(context.Background())
	defer stopProducer()
	go produce(ctx, client.events, h.cfg.Interval)

	rc := http.NewResponseController(w)
	if !r.ProtoAtLeast(1, 1) {
		cd := h.closeDelimited(rc, header, client.name)
		if cd == nil {
			return
		}
		defer cd.Close()
		w, rc = cd, http.NewResponseController(cd)
	}
	s := stream{
		w:      w,
		rc:     rc,
		cfg:    &h.cfg,
		stop:   &h.stop,
		m:      h.metrics,
		name:   client.name,
		nextID: lastID + 1,
		lastID: lastID,
	}
	if h.logger.Enabled(ctx, slog.LevelDebug) {
		s.logger = h.logger
	}
	h.track(s.rc)
	defer h.untrack(s.rc)
	start := time.Now()
	reason, err := s.run(h.opening, client.events, r.Context().Done())
	h.ended(&s, reason, err, time.Since(start))
}

// serveTopics streams the events of topics from the hub: first those after the client's
// Last-Event-ID, or a reset event if the hub cannot resume there, then live ones, until the
// client goes, the server shuts down, the stream reaches MaxLifetime or falls too far behind.
// Topic streams have no producer: they wait on their subscription.
//
//go:noinline
func (h *sseHandler) serveTopics(w http.ResponseWriter, r *http.Request, topics []string) {
	lastID, hasLastID := lastEventID(r)
	name := strings.Clone(r.RemoteAddr)
	rc := http.NewResponseController(w)
	if !r.ProtoAtLeast(1, 1) {
		cd := h.closeDelimited(rc, w.Header(), name)
		if cd == nil {
			return
		}
		defer cd.Close()
		w, rc = cd, http.NewResponseController(cd)
	}
	// A subscriber dropped while its client holds a write up gets that write cut at once.
	cut := func() { _ = rc.SetWriteDeadline(time.Now()) }
	sub := h.hub.Subscribe(topics, lastID, hasLastID, cut)
	defer h.hub.Unsubscribe(sub.sub)
	h.logger.Debug("client subscribed", "client", name, "topics", topics, "last_event_id", lastID, "reset", string(sub.reset))
	s := stream{
		w:           w,
		rc:          rc,
		cfg:         &h.cfg,
		stop:        &h.stop,
		m:           h.metrics,
		name:        name,
		topicEvents: sub.sub.queue,
		dropped:     &sub.sub.dropped,
		replay:      sub.replay,
		hubMetrics:  h.hub.metrics,
	}
	h.track(s.rc)
	defer h.untrack(s.rc)
	start := time.Now()
	reason, err := s.run(h.topicOpening(sub), nil, r.Context().Done())
	h.ended(&s, reason, err, time.Since(start))
}

// topicOpening returns the first bytes of a topic stream: the retry delay, then the id the
// stream stands at, so that a client cut off before any event resumes from there, and a
// reset event first if the hub could not resume where the client asked.
func (h *sseHandler) topicOpening(sub subscription) []byte {
	opening := appendRetry(nil, h.cfg.Retry, "stream opened")
	if sub.reset == "" {
		opening = append(opening[:len(opening)-1], "id: "...)
		opening = append(opening, sub.position...)
		return append(opening, "\n\n"...)
	}
	data := `{"reason":"` + string(sub.reset) + `"}`
	return appendNamedEvent(opening, []byte(sub.position), "reset", []byte(data))
}

// closeDelimited takes over an HTTP/1.0 client's connection, which has no chunked framing
// (the only one fasthttp gives a stream), and returns the writer of a close-delimited
// stream on it, or nil if it cannot. It is a function of its own so that ServeHTTP's stack
// frame, which every open stream keeps, stays small.
//
//go:noinline
func (h *sseHandler) closeDelimited(rc *http.ResponseController, header http.Header, client string) *closeDelimited {
	cd, err := hijackCloseDelimited(rc, header)
	if err != nil {
		h.logger.Warn("HTTP/1.0 stream not opened", "client", client, "error", err.Error())
		return nil
	}
	return cd
}

// ended counts and logs, within the log rate, why the stream s ended and how long it lasted.
// It is a function of its own for the same reason as closeDelimited.
//
//go:noinline
func (h *sseHandler) ended(s *stream, reason endReason, err error, lasted time.Duration) {
	h.metrics.ended[reason].Inc()
	h.metrics.streamLength.Observe(lasted.Seconds())
	if !h.endLog.allow(string(reason)) {
		return
	}
	attrs := []any{"client", s.name, "duration", lasted.Round(time.Millisecond),
		"events", s.sent, "last_id", s.lastID, "reason", string(reason)}
	// A client that leaves is ordinary: what the write said about it would only mislead.
	if err != nil && reason != endClientGone {
		attrs = append(attrs, "error", err.Error())
	}
	h.logger.Info("client disconnected", attrs...)
}

// track adds an open stream's writer to those that Shutdown bounds.
func (h *sseHandler) track(rc *http.ResponseController) {
	h.mu.Lock()
	h.writers[rc] = struct{}{}
	h.mu.Unlock()
}

// untrack removes a stream's writer once the stream has ended.
func (h *sseHandler) untrack(rc *http.ResponseController) {
	h.mu.Lock()
	delete(h.writers, rc)
	h.mu.Unlock()
}

// refuse answers a request over MaxClients. A browser's EventSource fails for good on any
// status but 200, so a request that names text/event-stream in its Accept header gets a
// stream that only says when to come back (a retry: with a random share, so that refused
// clients do not return together) and why, then ends: EventSource reconnects by itself, with
// its Last-Event-ID. Anything else gets 503 with Retry-After.
func (h *sseHandler) refuse(w http.ResponseWriter, r *http.Request) {
	if !namesEventStream(r.Header.Values("Accept")) {
		w.Header().Set("Retry-After", strconv.Itoa(retryAfterSeconds(h.cfg.Retry)))
		http.Error(w, "503 service unavailable: too many open streams, retry later", http.StatusServiceUnavailable)
		return
	}
	setStreamHeaders(w.Header())
	_, _ = w.Write(appendRetry(nil, h.cfg.spreadRetry(), overloadComment)) // the request ends here either way
}

// overloadComment is the comment of the answer to an EventSource over MaxClients.
const overloadComment = "too many open streams, reconnect later"

// setStreamHeaders sets the headers of an event stream: no caching, and no buffering in
// proxies that honour X-Accel-Buffering, such as nginx. Connection is the server's: a
// hop-by-hop header that HTTP/1.1 needs no value in to keep the connection open.
func setStreamHeaders(header http.Header) {
	header.Set("Content-Type", "text/event-stream")
	header.Set("Cache-Control", "no-cache")
	header.Set("X-Accel-Buffering", "no")
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
