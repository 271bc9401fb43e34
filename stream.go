package main

import (
	"errors"
	"log/slog"
	"net/http"
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
	logger *slog.Logger // set only when every event is logged

	keepalive *time.Timer
	lastWrite time.Time
	buf       []byte // frames waiting for the next write
	json      []byte // scratch for one event's data
	pending   int    // events in buf
	nextID    uint64 // id of the next event framed
	lastID    uint64 // id of the last event written
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
	s.keepalive = time.NewTimer(s.cfg.Keepalive)
	defer s.keepalive.Stop()
	var lifetime <-chan time.Time
	if s.cfg.MaxLifetime > 0 {
		timer := time.NewTimer(s.cfg.MaxLifetime)
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
		case <-s.stop.done:
			return endShutdown, nil
		case <-requestDone:
			if s.stop.started() {
				return endShutdown, nil
			}
			return endClientGone, nil
		}
	}
}

// whyWriteFailed tells why a write failed. Under the adaptor every failure is the same
// closed pipe, so the reason comes from the shutdown state and the time the write took.
func (s *stream) whyWriteFailed() endReason {
	switch {
	case s.stop.started():
		return endShutdown
	case time.Since(s.lastWrite) >= s.cfg.WriteTimeout:
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
		s.logger.Debug("event", "client", s.name, "id", s.nextID, "user", ev.User)
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
	s.m.events.Add(float64(s.pending))
	s.pending = 0
	return nil
}

// write sends p to the client and flushes it, within the write timeout (or the shutdown's
// bound, if sooner). A client that stopped reading makes it fail once the deadline passes.
func (s *stream) write(p []byte) error {
	s.lastWrite = time.Now()
	if err := s.setWriteDeadline(s.lastWrite.Add(s.cfg.WriteTimeout)); err != nil {
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
	_, err := s.w.Write(nil)
	s.m.writeTime.Observe(time.Since(s.lastWrite).Seconds())
	return err
}

// setWriteDeadline sets the deadline of the writes to come, or the shutdown's bound if that
// is sooner. The bound is read after the deadline is set: a shutdown that starts in between
// sets its bound on every stream after that, so it always has the last word.
func (s *stream) setWriteDeadline(deadline time.Time) error {
	err := s.rc.SetWriteDeadline(deadline)
	if bound, ok := s.stop.writeBound(); ok && bound.Before(deadline) {
		err = s.rc.SetWriteDeadline(bound)
	}
	if err != nil && !errors.Is(err, http.ErrNotSupported) {
		return err
	}
	return nil
}
