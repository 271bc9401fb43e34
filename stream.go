package main

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync/atomic"
	"time"
)

// endReason says why a stream ended. It is logged once per stream, and its text is the
// label a metric counts it under.
type endReason string

// The ways a stream ends.
const (
	endClientGone   endReason = "client_gone"   // a write failed: the client left
	endWriteTimeout endReason = "write_timeout" // a write outlasted -write-timeout: the client stopped reading
	endShutdown     endReason = "shutdown"      // the server is shutting down
	endMaxLifetime  endReason = "max_lifetime"  // the stream reached -max-lifetime
	endTooSlow      endReason = "too_slow"      // a topic stream fell a whole queue behind its topics
	endAuthExpired  endReason = "auth_expired"  // a private topic stream's token expired
	endError        endReason = "error"         // the stream could not go on: its HTTP/1.0 take-over failed, or its handler panicked
	endUnavailable  endReason = "unavailable"   // a topic stream could not be resumed: the event store was unreachable
	endResync       endReason = "resync"        // events of a topic stream's sequence never reached this process: it resumes from history
)

// stream is the writing side of one client's connection: reused buffers, the next id, and
// when it last wrote, which the keepalive timer checks.
type stream struct {
	w      http.ResponseWriter
	rc     *http.ResponseController
	cfg    *streamConfig
	stop   *shutdown
	m      *metrics
	name   string       // the client, for the per-event log line
	addr   netip.Addr   // the client address counted in MaxClientsPerIP, if any
	logger *slog.Logger // set only when every event is logged
	watch  *closeWatch  // says when the client closes its connection; nil where nothing watches it

	// A topic stream's: what the fan-out sends it (nil on a random stream, where events
	// come from its producer), what it replays first, and the broker's counters.
	topicEvents *eventQueue
	ready       <-chan struct{} // topicEvents' ready, or nil on a random stream
	replay      []*topicEvent
	replayMore  func(from uint64) ([]*topicEvent, uint64, bool, error) // reads the next chunk of a replay too long for one: the events, where it read to, whether that was the last
	replayFrom  uint64                                                 // where the replay's next chunk starts
	hubMetrics  *hubMetrics
	queuedSeq   uint64        // sequence number of the last topic event in buf: later ones only are written
	dropped     *atomic.Int32 // a dropCause, set once the fan-out has dropped the subscription

	// A private topic stream's: fires when its token expires (nil on every other stream).
	authExpired <-chan time.Time
	expiry      *time.Timer

	keepalive *time.Timer
	lastWrite time.Time
	deadline  time.Time   // the write deadline last set
	direct    bool        // w writes straight to the connection, taken over: nothing to flush after a write
	buf       []byte      // frames waiting for the next write
	json      []byte      // scratch for one event's data
	pending   int         // events in buf
	logged    []DashBoard // the events in buf, kept only when every event is logged
	nextID    uint64      // id of the next event framed
	lastID    uint64      // id of the last event written
	sent      int
}

// run writes opening, then every event from events, and a keepalive comment whenever the
// stream was silent for cfg.Keepalive. Its one select names every way a stream goes on or
// ends, and it returns why it ended. requestDone is the request context's Done channel,
// taken once by the caller because the adaptor may recycle that context once the client
// is gone: under the adaptor it closes only at shutdown, under net/http also when the
// client leaves.
func (s *stream) run(opening []byte, events <-chan DashBoard, requestDone <-chan struct{}) (endReason, error) {
	// Headers go out before any byte of body: under the adaptor a write before the first
	// flush pins a 32 KB buffer for the life of the stream.
	if err := s.rc.Flush(); err != nil {
		return s.whyWriteFailed(), err
	}
	if err := s.write(opening); err != nil {
		return s.whyWriteFailed(), err
	}
	if reason, err := s.writeReplay(); err != nil {
		return reason, err
	}
	s.keepalive = time.NewTimer(s.cfg.Keepalive)
	defer s.keepalive.Stop()
	var lifetime <-chan time.Time
	if s.cfg.MaxLifetime > 0 {
		timer := time.NewTimer(jitterLifetime(s.cfg.MaxLifetime))
		defer timer.Stop()
		lifetime = timer.C
	}
	for {
		select {
		case ev := <-events:
			s.queue(ev)
			// Events that queued up while the last write was under way go out in the same write.
			for n := len(events); n > 0; n-- {
				s.queue(<-events)
			}
			if err := s.flushEvents(); err != nil {
				return s.whyWriteFailed(), err
			}
		case <-s.ready:
			if dropped, err := s.writeTopicEvents(); err != nil {
				return s.whyWriteFailed(), err
			} else if dropped {
				return s.sayDropped(), nil
			}
		case <-s.keepalive.C:
			// Writes do not reset the timer, which would cost a timer-heap update per
			// event; a timer that fires early is set again for the rest of the silence.
			if silent := time.Since(s.lastWrite); silent < s.cfg.Keepalive {
				s.keepalive.Reset(s.cfg.Keepalive - silent)
				continue
			}
			if err := s.write(keepaliveFrame); err != nil {
				return s.whyWriteFailed(), err
			}
			s.keepalive.Reset(s.cfg.Keepalive)
			s.m.keepalives.Inc()
		case <-lifetime:
			return endMaxLifetime, nil
		case <-s.authExpired:
			s.sayAuthExpired()
			return endAuthExpired, nil
		case <-s.stop.done:
			s.sayGoodbye()
			return endShutdown, nil
		case <-s.watch.closed():
			return endClientGone, nil
		case <-requestDone:
			if s.stop.started() {
				s.sayGoodbye()
				return endShutdown, nil
			}
			return endClientGone, nil
		}
	}
}

// sayGoodbye tells the client, as the server shuts down, to reconnect after a delay drawn at
// random, so that its clients do not all come back at the same instant. The stream ends
// either way, so a failed write changes nothing.
func (s *stream) sayGoodbye() {
	s.sayComeBack("server shutting down")
}

// sayDropped tells a topic stream's client that the fan-out has dropped its subscription,
// and why, to reconnect after a spread delay and resume from history with its
// Last-Event-ID; it returns the reason the stream ends.
func (s *stream) sayDropped() endReason {
	reason, comment := endTooSlow, "too far behind: reconnect to resume"
	if dropCause(s.dropped.Load()) == dropResync {
		reason, comment = endResync, "events were lost on the way here: reconnect to resume"
	}
	s.sayComeBack(comment)
	return reason
}

// sayComeBack tells the client to reconnect after a spread delay, with a one-line comment
// that says why. The stream ends either way, so a failed write changes nothing.
func (s *stream) sayComeBack(comment string) {
	s.buf = appendRetry(s.buf[:0], s.cfg.spreadRetry(), comment)
	_ = s.write(s.buf)
	s.buf = s.buf[:0]
}

// authExpiredData is the data of the auth-expired event that ends a stream whose token
// expired.
const authExpiredData = `{"reason":"token_expired"}`

// expired reports whether the stream's token has expired, and if so tells its client, so
// that a long replay never goes on past the token's exp; the stream then ends.
func (s *stream) expired() bool {
	select {
	case <-s.authExpired:
		s.sayAuthExpired()
		return true
	default:
		return false
	}
}

// sayAuthExpired tells a topic stream's client that its token has expired: a retry: with
// the usual delay, then an auth-expired event without an id, so that the page can get a
// fresh token or cookie and reconnect with the Last-Event-ID of its last event.
func (s *stream) sayAuthExpired() {
	s.buf = appendRetry(s.buf[:0], s.cfg.Retry, "token expired")
	s.buf = append(s.buf, "event: auth-expired\n"...)
	s.buf = appendData(s.buf, []byte(authExpiredData))
	_ = s.write(s.buf) // the stream ends either way
	s.buf = s.buf[:0]
}

// maxReplayWrite is how many bytes of replayed events go out in one write: enough to
// amortise the flush, small enough that a long replay does not hold a huge buffer.
const maxReplayWrite = 32 << 10

// writeReplay writes the events a resuming topic stream missed, oldest first, in writes of
// up to maxReplayWrite bytes, reading a long replay a chunk at a time. A chunk that cannot
// be read ends the stream with a retry: its client resumes from the last event written.
func (s *stream) writeReplay() (endReason, error) {
	for {
		for i, ev := range s.replay {
			if len(s.buf) > 0 && len(s.buf)+len(ev.frame) > maxReplayWrite {
				if s.expired() {
					return endAuthExpired, nil
				}
				if err := s.flushTopicEvents(true); err != nil {
					return s.whyWriteFailed(), err
				}
			}
			s.queueTopicEvent(ev)
			s.replay[i] = nil // written events need not stay in memory for the stream's life
		}
		s.replay = nil
		if s.expired() {
			return endAuthExpired, nil
		}
		if len(s.buf) > 0 {
			if err := s.flushTopicEvents(true); err != nil {
				return s.whyWriteFailed(), err
			}
		}
		if s.replayMore == nil {
			return "", nil
		}
		events, readTo, last, err := s.replayMore(s.replayFrom)
		if err != nil && s.stop.started() {
			s.sayGoodbye()
			return endShutdown, nil
		}
		if err != nil {
			s.sayComeBack("history unavailable: reconnect to resume")
			return endUnavailable, err
		}
		s.replay, s.replayFrom = events, readTo
		if last {
			s.replayMore = nil
		}
	}
}

// writeTopicEvents writes the topic events waiting in the stream's queue in one write, and
// reports whether the fan-out has dropped the subscription, so that the stream ends after
// them. It is a function of its own so that run's frame, which every open stream keeps,
// stays small.
//
//go:noinline
func (s *stream) writeTopicEvents() (dropped bool, err error) {
	events, dropped := s.topicEvents.take()
	for _, ev := range events {
		s.queueTopicEvent(ev)
	}
	if s.pending == 0 {
		return dropped, nil
	}
	return dropped, s.flushTopicEvents(false)
}

// queueTopicEvent adds a topic event's frame, framed once, to the stream's buffer, unless the
// stream has sent it or a later one: a client that came from a replica further on has it,
// and an id never moves backwards.
func (s *stream) queueTopicEvent(ev *topicEvent) {
	if ev.seq <= s.queuedSeq {
		return
	}
	s.buf = append(s.buf, ev.frame...)
	s.queuedSeq = ev.seq
	s.pending++
}

// flushTopicEvents writes the buffered topic events in one write and counts them as
// delivered, and as replayed if they came from history.
func (s *stream) flushTopicEvents(replayed bool) error {
	err := s.write(s.buf)
	s.buf = s.buf[:0]
	if err != nil {
		return err
	}
	s.sent += s.pending
	s.lastID = s.queuedSeq
	s.hubMetrics.delivered.Add(float64(s.pending))
	if replayed {
		s.hubMetrics.replayed.Add(float64(s.pending))
	}
	s.pending = 0
	return nil
}

// whyWriteFailed tells why a write failed. A writer may say little of why (the adaptor's
// is the same closed pipe for every failure), so the reason comes from the shutdown state,
// the fan-out's drop, and whether the write's deadline has passed. A
// client dropped by -dead-client-timeout counts as gone: the kernel's ETIMEDOUT reaches
// neither the adaptor's writer nor, under net/http, the request's context. The flush of
// the headers, before any write, has no deadline: when it fails, the client left.
func (s *stream) whyWriteFailed() endReason {
	switch {
	case s.stop.started():
		return endShutdown
	case s.dropped != nil && dropCause(s.dropped.Load()) == dropTooSlow:
		return endTooSlow
	case s.dropped != nil && dropCause(s.dropped.Load()) == dropResync:
		return endResync
	case !s.deadline.IsZero() && !time.Now().Before(s.deadline):
		return endWriteTimeout
	default:
		return endClientGone
	}
}

// queue frames ev under the next id into the stream's buffer.
func (s *stream) queue(ev DashBoard) {
	s.json = ev.AppendJSON(s.json[:0])
	s.buf = appendEvent(s.buf, s.nextID, s.json)
	if s.logger != nil {
		s.logged = append(s.logged, ev)
	}
	s.nextID++
	s.pending++
}

// flushEvents writes the buffered events in one write and counts them. When every event is
// logged, each is logged once the write has succeeded, so the log holds what the client got.
func (s *stream) flushEvents() error {
	err := s.write(s.buf)
	s.buf = s.buf[:0]
	logged := s.logged
	s.logged = s.logged[:0]
	if err != nil {
		return err
	}
	if len(logged) > 0 {
		s.logWritten(logged)
	}
	s.sent += s.pending
	s.lastID = s.nextID - 1
	s.m.events.Add(float64(s.pending))
	s.pending = 0
	return nil
}

// logWritten logs each of the events just written, the last with the id before nextID. It is
// a function of its own so that the frames of the write path, which every open stream's
// stack must hold, stay small.
//
//go:noinline
func (s *stream) logWritten(events []DashBoard) {
	first := s.nextID - uint64(len(events))
	for i, ev := range events {
		s.logger.Debug("event", "client", s.name, "id", first+uint64(i), "user", ev.User)
	}
}

// write sends p to the client and flushes it, within the write timeout (or the shutdown's
// bound, if sooner). A client that stopped reading makes it fail once the deadline passes.
// Setting a deadline moves a timer in the runtime, so a deadline that is still nearly the
// whole timeout away serves this write too: each write gets at least the timeout less
// deadlineSlack.
func (s *stream) write(p []byte) error {
	s.lastWrite = time.Now()
	if deadline := s.lastWrite.Add(s.cfg.WriteTimeout); deadline.Sub(s.deadline) > s.cfg.deadlineSlack() ||
		s.stop.started() || (s.dropped != nil && s.dropped.Load() != int32(notDropped)) {
		if err := s.setWriteDeadline(deadline); err != nil {
			return err
		}
		s.deadline = deadline
	}
	if _, err := s.w.Write(p); err != nil {
		return err
	}
	var err error
	if !s.direct {
		err = s.flushThroughServer()
	}
	s.m.writeTime.Observe(time.Since(s.lastWrite).Seconds())
	return err
}

// flushThroughServer flushes a write made through the server's writer. Under the adaptor a
// write returns once fasthttp's worker has taken the bytes, before it writes them to the
// connection; an empty write returns only when the worker is done with them, with an error
// if the client is gone, so a vanished client shows on this write rather than on the next.
// Elsewhere an empty write does nothing.
func (s *stream) flushThroughServer() error {
	if err := s.rc.Flush(); err != nil {
		return err
	}
	_, err := s.w.Write(nil)
	return err
}

// maxDeadlineSlack is the most by which a write's deadline may come before the write
// timeout has passed since the write began.
const maxDeadlineSlack = time.Second

// deadlineSlack is how far a write's deadline may have moved towards it before it is set
// again: a tenth of the write timeout, at most maxDeadlineSlack.
func (c *streamConfig) deadlineSlack() time.Duration {
	return min(c.WriteTimeout/10, maxDeadlineSlack)
}

// droppedWriteBound bounds each write of a stream whose subscription the fan-out dropped: a
// client that reads gets the events queued before the drop and the word to resume, one that
// stopped reading holds its stream no longer.
const droppedWriteBound = 250 * time.Millisecond

// setWriteDeadline sets the deadline of the writes to come, or a sooner bound: the
// shutdown's, or droppedWriteBound from now once the fan-out has dropped the stream's
// subscription. Both are read after the deadline is set: a shutdown or a drop that comes
// in between cuts the writes after that too, so it always has the last word.
func (s *stream) setWriteDeadline(deadline time.Time) error {
	err := s.rc.SetWriteDeadline(deadline)
	bound, ok := s.stop.writeBound()
	if s.dropped != nil && s.dropped.Load() != int32(notDropped) {
		if cut := time.Now().Add(droppedWriteBound); !ok || cut.Before(bound) {
			bound, ok = cut, true
		}
	}
	if ok && bound.Before(deadline) {
		err = s.rc.SetWriteDeadline(bound)
	}
	if err != nil && !errors.Is(err, http.ErrNotSupported) {
		return err
	}
	return nil
}

// lifetimeJitter is the share of -max-lifetime by which each stream's lifetime moves at
// random, up or down, so that streams opened together do not all end, and come back,
// together.
const lifetimeJitter = 0.1

// jitterLifetime returns lifetime moved at random by up to lifetimeJitter of itself.
func jitterLifetime(lifetime time.Duration) time.Duration {
	spread := time.Duration(float64(lifetime) * lifetimeJitter)
	if spread <= 0 {
		return lifetime
	}
	return lifetime - spread + rand.N(2*spread+1)
}

// spreadRetry returns the reconnect delay to send when many clients may be told to come back
// at once (at shutdown, over MaxClients): Retry plus a random share of RetrySpread.
func (c *streamConfig) spreadRetry() time.Duration {
	if c.RetrySpread <= 0 {
		return c.Retry
	}
	return c.Retry + rand.N(c.RetrySpread+1)
}

// takenConn writes a stream straight to its connection, taken over from the server once
// the stream is admitted: each write is one write to the socket, with no hand-off to
// another goroutine and no server buffers held for the stream's life. An HTTP/1.1 body is
// chunked (RFC 9112, section 7.1), each write one chunk whose size line and CRLF go out
// with it in one writev; HTTP/1.0 has no chunked framing, so its body is sent as it is and
// ends when the connection closes (RFC 9112, section 6.3). It serves
// http.ResponseController: Flush sends the header block, SetWriteDeadline bounds writes.
type takenConn struct {
	conn        net.Conn    // as the server handed it over: closing it ends the server's hold
	w           net.Conn    // the socket under conn, which writes a net.Buffers in one writev
	header      http.Header // until the header block is written
	chunked     bool
	wroteHeader bool
	broken      bool // a write failed: the body cannot be ended cleanly
	size        [20]byte
	vec         [3][]byte
	bufs        net.Buffers
}

// crlf ends a chunk's size line and its data.
var crlf = []byte("\r\n")

// takeConn takes the connection over from the server and returns a writer that sends header,
// then the body, on it, chunked unless the request is HTTP/1.0; socket, if not nil, is the
// connection under the one the server hands over. End it to end the stream.
func takeConn(rc *http.ResponseController, header http.Header, chunked bool, socket net.Conn) (*takenConn, error) {
	conn, _, err := rc.Hijack()
	if err != nil {
		return nil, fmt.Errorf("take over the connection: %w", err)
	}
	if socket == nil {
		socket = conn
	}
	return &takenConn{conn: conn, w: socket, header: header, chunked: chunked}, nil
}

// Header returns the headers that the first write or flush sends; after that, headers
// that go nowhere.
func (c *takenConn) Header() http.Header {
	if c.header == nil {
		return http.Header{}
	}
	return c.header
}

// WriteHeader does nothing: a stream is always 200.
func (c *takenConn) WriteHeader(int) {}

// Write sends the header block if it has not gone yet, then p as one chunk. An empty p sends
// nothing: an empty chunk would end the body.
func (c *takenConn) Write(p []byte) (int, error) {
	if err := c.FlushError(); err != nil || len(p) == 0 {
		return 0, err
	}
	var err error
	if c.chunked {
		c.vec = [3][]byte{append(strconv.AppendUint(c.size[:0], uint64(len(p)), 16), crlf...), p, crlf}
		c.bufs = c.vec[:]
		_, err = c.bufs.WriteTo(c.w)
	} else {
		_, err = c.w.Write(p)
	}
	if err != nil {
		c.broken = true
		return 0, err
	}
	return len(p), nil
}

// FlushError sends the header block if it has not gone yet. Writes are not buffered, so
// there is nothing else to flush.
func (c *takenConn) FlushError() error {
	if c.wroteHeader {
		return nil
	}
	c.wroteHeader = true
	return c.writeHeaderBlock()
}

// writeHeaderBlock sends the status line and the headers, with the Date an origin server
// sends (RFC 9110, section 6.6.1), the body's framing, and word that the connection closes
// when the stream ends.
//
//go:noinline
func (c *takenConn) writeHeaderBlock() error {
	var block bytes.Buffer
	block.WriteString("HTTP/1.1 200 OK\r\nDate: ")
	block.WriteString(time.Now().UTC().Format(http.TimeFormat))
	block.WriteString("\r\n")
	if err := c.header.Write(&block); err != nil {
		return err
	}
	if c.chunked {
		block.WriteString("Transfer-Encoding: chunked\r\n")
	}
	block.WriteString("Connection: close\r\n\r\n") // the connection ends with the stream
	c.header = nil
	if _, err := c.w.Write(block.Bytes()); err != nil {
		c.broken = true
		return err
	}
	return nil
}

// SetWriteDeadline sets the deadline of the writes to come.
func (c *takenConn) SetWriteDeadline(deadline time.Time) error {
	return c.w.SetWriteDeadline(deadline)
}

// end ends the stream: a chunked body whose writes all succeeded gets its last chunk, if it
// goes out by deadline, and the connection closes.
func (c *takenConn) end(deadline time.Time) {
	if c.chunked && c.wroteHeader && !c.broken {
		_ = c.w.SetWriteDeadline(deadline)
		_, _ = c.w.Write([]byte("0\r\n\r\n")) // the connection closes either way
	}
	_ = c.conn.Close()
}
