package main

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"net/http"
	"net/netip"
	"net/url"
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
	// MaxClientsPerIP is the most streams one client address holds at once; 0 means no limit.
	MaxClientsPerIP int
	// TrustedProxies are the peers whose Forwarded or X-Forwarded-For names the client.
	TrustedProxies []netip.Prefix
	LogRate        int // stream-end lines logged per second at most; 0 means every one

	History         historyLimits // what the topic hub keeps for clients that resume
	SubscriberQueue int           // topic events queued for a subscriber before it counts as too slow
	Auth            authConfig    // the keys, patterns and origins of private topics
	Mercure         mercureConfig // the hub's URL and who may subscribe, for the Mercure routes
}

// shutdown is the SSE handler's own done signal. It works the same under any server: the
// adaptor's request context ends only at shutdown, and net/http's ends when the client
// leaves but not when the server shuts down.
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
	opening []byte  // the first bytes of every stream: the retry delay and a comment
	broker  *broker // where topic events are published and resumed from: memory, or JetStream
	// observer, if set, sees every event the broker stores, in sequence order.
	observer func(seq uint64, p *publication)
	endLog   *logLimit // bounds the lines that say why a stream ended

	auth *authorizer // checks the tokens of private topics; nil when every topic is public
	cors corsPolicy  // the origins whose pages may send credentials
	// streamsOpen counts the streams open now, for MaxClients, /healthz and the metrics.
	// A stream counts from its sse_streams_opened_total to its sse_streams_ended_total.
	streamsOpen atomic.Int64
	perAddr     addrCounts // streams open by client address, for MaxClientsPerIP
	stop        shutdown
	// stopCtx ends when Shutdown begins: a stream waiting for its replay gives up then.
	stopCtx    context.Context
	cancelStop context.CancelFunc
	streams    sync.WaitGroup // every ServeHTTP that holds a place, so Wait can wait for their last log line

	mu      sync.Mutex
	writers map[*stream]struct{} // every open stream, for Shutdown

	closes *closeWatcher // tells streams that their clients have closed their connections
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
		writers: make(map[*stream]struct{}),
		closes:  newCloseWatcher(logger),
	}
	h.metrics = newMetrics(func() float64 { return float64(h.streamsOpen.Load()) }, cfg.WriteTimeout)
	current := func() *broker { return h.broker }
	h.broker = newMemoryBroker(cfg.History, cfg.SubscriberQueue, newHubMetrics(h.metrics.registry, current))
	registerHistoryGauges(h.metrics.registry, current)
	h.auth = newAuthorizer(cfg.Auth, h.metrics.registry)
	h.cors = corsPolicy{origins: cfg.Auth.origins}
	h.stopCtx, h.cancelStop = context.WithCancel(context.Background())
	return h
}

// observe has fn see every event the broker stores, in sequence order, under the fan-out's
// lock: it must be quick. Call it before the handler serves anyone.
func (h *sseHandler) observe(fn func(seq uint64, p *publication)) {
	h.observer = fn
	h.broker.fan.observe = fn
}

// Shutdown ends every stream, open or to come, and makes every write, under way or to come,
// end by deadline, so that a client that stopped reading cannot hold the shutdown for a
// whole write timeout. Call it before shutting the server down.
func (h *sseHandler) Shutdown(deadline time.Time) {
	h.stop.begin(deadline)
	h.cancelStop()
	h.closes.close()
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.writers {
		_ = s.rc.SetWriteDeadline(deadline) // a stream that has just ended may refuse: nothing to bound
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

// StreamsOpen returns the number of streams open now: what /healthz reports as
// streams_open and the metrics as sse_streams_open.
func (h *sseHandler) StreamsOpen() int64 {
	return h.streamsOpen.Load()
}

// admit takes a place among MaxClients for a new stream, or reports that there is none.
// The count never goes above MaxClients, not even for a moment, so that nothing that reads
// it sees more streams than are allowed.
func (h *sseHandler) admit() bool {
	for {
		n := h.streamsOpen.Load()
		if n >= int64(h.cfg.MaxClients) {
			return false
		}
		if h.streamsOpen.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// admitAddr takes a place among MaxClientsPerIP for the client address of r, and returns
// that address, or the zero Addr when there is no such limit; it reports false when the
// address holds as many streams as it may. It is a function of its own so that ServeHTTP's
// stack frame, which every open stream keeps, stays small.
//
//go:noinline
func (h *sseHandler) admitAddr(r *http.Request) (netip.Addr, bool) {
	if h.cfg.MaxClientsPerIP == 0 {
		return netip.Addr{}, true
	}
	addr, ok := clientAddr(r, h.cfg.TrustedProxies)
	if !ok {
		return netip.Addr{}, true // a peer that is no IP address (a test's pipe): nothing to count
	}
	take := func() bool { return h.perAddr.take(addr, h.cfg.MaxClientsPerIP) }
	return addr, take() || h.admitOnceGoneEnd(take)
}

// errPanicked is the error a stream ends with when its handler panics; recoverStream logs
// the panic itself.
var errPanicked = errors.New("the stream's handler panicked")

// ServeHTTP checks the request (its Accept, its topics and, for private topics, its token),
// takes a place among MaxClients, and streams random values, or the topics asked for, until
// the client goes, the server shuts down, or the stream reaches MaxLifetime.
func (h *sseHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	header := w.Header()
	h.cors.setHeaders(header, r.Header.Get("Origin"))
	if ok, err := acceptsEventStream(r.Header.Values("Accept")); err != nil {
		h.metrics.rejected[rejectBadRequest].Inc()
		http.Error(w, "400 bad request: "+err.Error(), http.StatusBadRequest)
		return
	} else if !ok {
		h.metrics.rejected[rejectNotAcceptable].Inc()
		http.Error(w, "406 not acceptable: /sse only serves text/event-stream", http.StatusNotAcceptable)
		return
	}
	topics, ok := h.topicsOf(w, r)
	if !ok {
		return
	}
	h.serve(w, r, topics)
}

// topicRequest is what a topic stream asks for, in the hub's own dialect or Mercure's: what
// it reads, where it resumes, and when its token expires (never, if zero).
type topicRequest struct {
	sel       selection
	lastID    string
	hasLastID bool
	expires   time.Time
	mercure   bool // no reset event; a Mercure-Last-Event-ID header when the client sent an id
	// announce, if set, publishes that the subscription started (true) or ended.
	announce func(active bool)
}

// serve takes a place among MaxClients for a request already checked, and streams random
// values (topics nil), or the topic events it asks for, until the client goes, the server
// shuts down, or the stream reaches MaxLifetime.
func (h *sseHandler) serve(w http.ResponseWriter, r *http.Request, topics *topicRequest) {
	header := w.Header()
	if r.Method == http.MethodHead {
		setStreamHeaders(header)
		w.WriteHeader(http.StatusOK)
		return
	}
	if !h.admit() && !h.admitOnceGoneEnd(h.admit) {
		h.metrics.rejected[rejectMaxClients].Inc()
		h.refuse(w, r)
		return
	}
	addr, ok := h.admitAddr(r)
	if !ok {
		h.streamsOpen.Add(-1)
		h.metrics.rejected[rejectMaxClientsPerIP].Inc()
		h.refuse(w, r)
		return
	}
	h.streams.Add(1)
	h.metrics.opened.Inc()
	// On the heap, where the set of open streams holds it: a frame this size on the stack
	// would double the stack that every open stream keeps.
	s := &stream{
		addr: addr,
		cfg:  &h.cfg,
		stop: &h.stop,
		m:    h.metrics,
		name: r.RemoteAddr,
	}
	// However the stream ends, a panic and a failed take-over included, its end is counted
	// and its place given back, so that opened - ended is the streams open at every moment.
	life := &streamLife{s: s, start: time.Now(), reason: endError, err: errPanicked}
	handedOver := false
	defer func() {
		if !handedOver {
			h.end(life)
		}
	}()
	setStreamHeaders(header)
	s.watch = h.closes.watch(r)
	s.w, s.rc = w, http.NewResponseController(w)
	taken, err := h.takeOver(s, r)
	if err != nil {
		life.err = err
		return
	}
	life.taken = taken
	h.track(s)
	life.tracked = true
	if topics != nil && !h.start(life, topics) {
		return
	} else if topics == nil {
		h.startRandom(life, r)
	}
	life.requestDone = r.Context().Done()
	if life.taken == nil {
		handedOver = true
		h.follow(life)
		return
	}
	// The connection is the stream's now, and the handler may return: the stream goes on
	// on a goroutine of its own, whose stack holds only what the stream needs, not the
	// frames of the request's conversion and checks below this one.
	handedOver = true
	go h.followTaken(life)
}

// streamLife is what a stream holds from the moment it is admitted to its end, so that
// its end gives back everything, whichever goroutine it ends on.
type streamLife struct {
	s     *stream
	start time.Time
	// why the stream ended; until it runs, the reason a panic or a failed start leaves
	reason endReason
	err    error

	taken       *takenConn // the connection taken over from the server, if it was
	tracked     bool       // among the streams whose writes Shutdown bounds
	opening     []byte
	events      <-chan DashBoard // a random stream's producer's events
	requestDone <-chan struct{}

	sub          *subscriber        // a topic stream's subscription
	announce     func(active bool)  // publishes the subscription's end, once its start is out
	announced    chan struct{}      // closed once the start is published
	stopProducer context.CancelFunc // a random stream's producer
}

// start subscribes a topic stream to what it asks for, and publishes that the subscription
// started if asked to. It reports false if the stream cannot go on: history it must
// resume from is unavailable now.
//
//go:noinline
func (h *sseHandler) start(life *streamLife, topics *topicRequest) bool {
	sub, opening, unavailable := h.subscribe(life.s, topics)
	if unavailable != nil {
		life.reason, life.err = endUnavailable, unavailable
		return false
	}
	life.sub, life.opening = sub, opening
	if topics.announce != nil {
		// The start is published beside the stream, which need not wait for it; the end
		// after the start, whatever came first.
		life.announce, life.announced = topics.announce, make(chan struct{})
		go func() {
			defer close(life.announced)
			topics.announce(true)
		}()
	}
	return true
}

// startRandom starts the producer of a stream of random values, from the id after the
// client's Last-Event-ID.
//
//go:noinline
func (h *sseHandler) startRandom(life *streamLife, r *http.Request) {
	s := life.s
	client := newClient(s.name, h.cfg.Buffer)
	lastID, resumed := resumeID(r)
	s.nextID, s.lastID = lastID+1, lastID
	h.logger.Debug("client connected", "client", client.name, "last_event_id", lastID, "resumed", resumed)
	// The producer gets a context of its own: deriving one from r.Context() would cost
	// a goroutine per stream under the adaptor, and that context ends only at shutdown.
	ctx, stopProducer := context.WithCancel(context.Background())
	go produce(ctx, client.events, h.cfg.Interval)
	if h.logger.Enabled(ctx, slog.LevelDebug) {
		s.logger = h.logger
	}
	life.events, life.opening, life.stopProducer = client.events, h.opening, stopProducer
}

// follow runs the stream until it ends, then ends it.
func (h *sseHandler) follow(life *streamLife) {
	defer h.end(life)
	opening := life.opening
	life.opening = nil // sent once: the stream need not keep it
	life.reason, life.err = life.s.run(opening, life.events, life.requestDone)
}

// followTaken runs a stream whose connection was taken over, on a goroutine of its own: a
// panic ends the stream and is logged, and the server goes on. It does what follow does
// itself, one frame less on a stack that every open stream keeps.
func (h *sseHandler) followTaken(life *streamLife) {
	defer func() {
		if v := recover(); v != nil {
			h.logger.Error("panic in stream", "client", life.s.name, "panic", v, "stack", string(debug.Stack()))
		}
	}()
	defer h.end(life)
	opening := life.opening
	life.opening = nil
	life.reason, life.err = life.s.run(opening, life.events, life.requestDone)
}

// end gives back what the stream held, in the reverse order of taking it, and counts and
// logs its end. It is a function of its own so that the stack frames that every open
// stream keeps stay small.
//
//go:noinline
func (h *sseHandler) end(life *streamLife) {
	// Last, once the connection is closed: Wait returns when every stream has ended so.
	defer h.streams.Done()
	if life.announce != nil {
		<-life.announced
		life.announce(false)
	}
	if life.sub != nil {
		h.unsubscribe(life.s, life.sub)
	}
	if life.stopProducer != nil {
		life.stopProducer()
	}
	if life.tracked {
		h.untrack(life.s)
	}
	// Counted and logged before the client sees the end, as a stream the server writes.
	h.ended(life.s, life.reason, life.err, time.Since(life.start))
	if life.taken != nil {
		// The last chunk goes out within droppedWriteBound, or the shutdown's bound if sooner.
		by := time.Now().Add(droppedWriteBound)
		if bound, ok := h.stop.writeBound(); ok && bound.Before(by) {
			by = bound
		}
		life.taken.end(by)
	}
}

// takeOver takes the stream's connection over from the server where that helps, and
// returns the writer that now carries the stream, or nil where the stream goes on through
// the server's writer. Under the adaptor every write would be handed over a pipe to
// fasthttp's worker goroutine, which holds its buffers for the stream's life: taken over,
// each write is one write to the socket. Under net/http, writes already go to the
// connection and net/http notices a client that leaves, which a take-over would stop, so
// only HTTP/1.0, which has no chunked framing, needs it there. An HTTP/1.1 stream whose
// server's writer cannot hand its connection over (a middleware's) goes on through it. It
// is a function of its own so that serve's stack frame, which every open stream keeps,
// stays small.
//
//go:noinline
func (h *sseHandler) takeOver(s *stream, r *http.Request) (*takenConn, error) {
	chunked := r.ProtoAtLeast(1, 1)
	socket, tracked := connOf(r)
	if r.ProtoMajor > 1 || (chunked && socket == nil) {
		return nil, nil
	}
	// fasthttp clears the connection's deadlines as it lets go of it, on its own goroutine,
	// which may come after the stream has set its first one.
	if tracked != nil {
		tracked.taken.Store(true)
	}
	taken, err := takeConn(s.rc, s.w.Header(), chunked, socket)
	if err != nil && chunked {
		if tracked != nil {
			tracked.taken.Store(false)
		}
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	s.w, s.rc, s.direct = taken, http.NewResponseController(taken), true
	return taken, nil
}

// topicsOf returns what r asks for in the hub's own dialect (nil for the random stream), or
// answers 400 with the rule a topic breaks, or 401/403 for a private topic, and reports
// false. A private topic is refused before a place is taken or a byte of stream is sent,
// and a HEAD gets the same answer, so that a page can learn why its EventSource closed. It
// is a function of its own so that ServeHTTP's stack frame, which every open stream keeps,
// stays small.
//
//go:noinline
func (h *sseHandler) topicsOf(w http.ResponseWriter, r *http.Request) (*topicRequest, bool) {
	if r.URL.RawQuery == "" {
		return nil, true
	}
	query, err := url.ParseQuery(r.URL.RawQuery)
	names, ok := query["topic"]
	if err != nil && (ok || strings.Contains(r.URL.RawQuery, "topic=")) {
		h.metrics.rejected[rejectBadRequest].Inc()
		http.Error(w, "400 bad request: the query is not application/x-www-form-urlencoded: "+err.Error(), http.StatusBadRequest)
		return nil, false
	}
	if !ok {
		return nil, true
	}
	topics, err := parseTopics(names)
	if err != nil {
		h.metrics.rejected[rejectBadRequest].Inc()
		http.Error(w, "400 bad request: "+err.Error(), http.StatusBadRequest)
		return nil, false
	}
	expires, reader, refused := h.auth.authorizeSubscribe(r, topics)
	if refused != nil {
		refuseAuth(w, refused)
		return nil, false
	}
	req := &topicRequest{sel: selection{topics: topics, reader: reader}, expires: expires}
	req.lastID, req.hasLastID = lastEventID(r)
	return req, true
}

// subscribe subscribes the topic stream s to topics, from the client's Last-Event-ID if it
// sent one, and returns the subscription and the stream's first bytes. The stream then
// writes what it missed (or a reset event, if the hub cannot resume there), then live
// events, until the client goes, the server shuts down, the stream reaches MaxLifetime or
// falls a whole queue behind, or its token expires at expires (never, if zero). A topic
// stream has no producer: it waits on its subscription.
//
//go:noinline
func (h *sseHandler) subscribe(s *stream, req *topicRequest) (*subscriber, []byte, error) {
	if !req.expires.IsZero() {
		s.expiry = time.NewTimer(time.Until(req.expires))
		s.authExpired = s.expiry.C
	}
	// A subscriber dropped while its client holds a write up gets that write cut at once.
	rc := s.rc
	cut := func() { _ = rc.SetWriteDeadline(time.Now().Add(droppedWriteBound)) }
	ctx, cancel := context.WithTimeout(h.stopCtx, resumeTimeout)
	sub, err := h.broker.Subscribe(ctx, req.sel, req.lastID, req.hasLastID, cut)
	cancel()
	if err != nil {
		if s.expiry != nil {
			s.expiry.Stop()
		}
		h.comeBackLater(s, err)
		return nil, nil, err
	}
	h.logger.Debug("client subscribed", "client", s.name, "topics", req.sel.topics, "matchers", len(req.sel.matchers),
		"last_event_id", req.lastID, "reset", string(sub.reset))
	s.topicEvents, s.dropped, s.replay, s.hubMetrics = &sub.sub.queue, &sub.sub.dropped, sub.replay, h.broker.metrics
	s.ready = s.topicEvents.ready
	s.lastID, s.queuedSeq = sub.at, sub.at
	if sub.readTo != 0 && sub.readTo < sub.upTo {
		s.replayFrom, s.replayMore = sub.readTo, h.replayMore(&sub.sub.selection, sub.upTo)
	}
	if !req.mercure {
		return sub.sub, h.topicOpening(sub), nil
	}
	if !req.hasLastID {
		return sub.sub, h.topicOpening(sub), nil
	}
	// Mercure says where the stream resumed in a header, not with a reset event, and a
	// client that resumed where it asked keeps its own id.
	s.w.Header().Set("Mercure-Last-Event-ID", mercureLastEventID(req.lastID, sub))
	if sub.reset == "" && req.lastID != earliestID {
		return sub.sub, h.opening, nil
	}
	sub.reset = ""
	return sub.sub, h.topicOpening(sub), nil
}

// replayMore returns the function with which a stream reads the rest of its replay of sel,
// up to upTo, a chunk at a time from where the last chunk was read to, each within
// resumeTimeout.
func (h *sseHandler) replayMore(sel *selection, upTo uint64) func(from uint64) ([]*topicEvent, uint64, bool, error) {
	return func(from uint64) ([]*topicEvent, uint64, bool, error) {
		ctx, cancel := context.WithTimeout(h.stopCtx, resumeTimeout)
		defer cancel()
		events, readTo, err := h.broker.ReplayMore(ctx, sel, from, upTo)
		return events, readTo, readTo >= upTo, err
	}
}

// unsubscribe ends the subscription of the topic stream s once it has ended.
func (h *sseHandler) unsubscribe(s *stream, sub *subscriber) {
	h.broker.Unsubscribe(sub)
	if s.expiry != nil {
		s.expiry.Stop()
	}
}

// resumeTimeout bounds how long a topic stream waits for its place to resume: a turn among
// the replays under way, and the replay itself.
const resumeTimeout = 10 * time.Second

// comeBackLater tells a topic stream's client that it cannot be resumed now, because
// err, to reconnect after a spread delay, and ends the stream. A failed write changes
// nothing: the stream ends either way.
func (h *sseHandler) comeBackLater(s *stream, err error) {
	h.logger.Debug("topic stream cannot resume now", "client", s.name, "error", err)
	if s.rc.Flush() == nil {
		_ = s.write(appendRetry(nil, h.cfg.spreadRetry(), "history unavailable: reconnect later"))
	}
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

// track adds an open stream to those whose writes Shutdown bounds.
func (h *sseHandler) track(s *stream) {
	h.mu.Lock()
	h.writers[s] = struct{}{}
	h.mu.Unlock()
}

// untrack removes a stream once it has ended.
func (h *sseHandler) untrack(s *stream) {
	h.mu.Lock()
	delete(h.writers, s)
	h.mu.Unlock()
}

// ended counts the end of the stream s, gives its place back and stops watching its
// connection, then logs, within the log rate, why it ended and how long it lasted.
//
//go:noinline
func (h *sseHandler) ended(s *stream, reason endReason, err error, lasted time.Duration) {
	h.metrics.ended[reason].Inc()
	if s.addr.IsValid() {
		h.perAddr.give(s.addr)
	}
	h.streamsOpen.Add(-1)
	// After the place is given back: a request waiting for it stops when no ending stream is left.
	h.closes.unwatch(s.watch)
	h.metrics.streamLength.Observe(lasted.Seconds())
	if !h.endLog.allow(string(reason)) {
		return
	}
	var lastID any = s.lastID
	if s.topicEvents != nil {
		lastID = h.broker.ids.format(s.lastID) // a topic stream's ids are the broker's, with its epoch
	}
	attrs := []any{"client", s.name, "duration", lasted.Round(time.Millisecond),
		"events", s.sent, "last_id", lastID, "reason", string(reason)}
	// A client that leaves is ordinary: what the write said about it would only mislead.
	if err != nil && reason != endClientGone {
		attrs = append(attrs, "error", err.Error())
	}
	h.logger.Info("client disconnected", attrs...)
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
