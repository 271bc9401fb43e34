package main

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// closesWatched says that streams here learn at once that their client closed its connection.
const closesWatched = true

// rawStream is a stream opened on a connection of its own, read frame by frame; closing
// the connection is a client leaving.
type rawStream struct {
	conn net.Conn
	*sseStream
}

// openRawStream opens GET target on a new connection to baseURL in proto ("HTTP/1.1" or
// "HTTP/1.0"), as an EventSource asks, and reads the first frame. It returns an error,
// never failing the test, so that goroutines may call it: when the connection or the
// answer fails, and when the first frame is not a stream's opening but an answer over a
// limit.
func openRawStream(baseURL, target, proto string) (*rawStream, error) {
	conn, err := net.DialTimeout("tcp", strings.TrimPrefix(baseURL, "http://"), 10*time.Second)
	if err != nil {
		return nil, fmt.Errorf("dial: %w", err)
	}
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(conn, "GET %s %s\r\nHost: sse-dashboard\r\nAccept: text/event-stream\r\n\r\n", target, proto); err != nil {
		conn.Close()
		return nil, fmt.Errorf("send GET %s: %w", target, err)
	}
	reader := bufio.NewReader(conn)
	resp, err := http.ReadResponse(reader, nil)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("GET %s: %w", target, err)
	}
	s := &rawStream{conn: conn, sseStream: &sseStream{resp: resp, reader: bufio.NewReader(resp.Body)}}
	var opening []byte
	for {
		line, err := s.reader.ReadBytes('\n')
		opening = append(opening, line...)
		if err != nil {
			conn.Close()
			return nil, fmt.Errorf("GET %s = %d, read the opening %q: %w", target, resp.StatusCode, opening, err)
		}
		if string(line) == "\n" {
			break
		}
	}
	if resp.StatusCode != http.StatusOK || !slices.Contains(parseFrames(opening)[0].comments, "stream opened") {
		conn.Close()
		return nil, fmt.Errorf("GET %s = %d %q, want a stream's opening, not a refusal", target, resp.StatusCode, opening)
	}
	_ = conn.SetDeadline(time.Time{})
	return s, nil
}

// nextEventWithin returns the next event on s, failing the test if none arrives within d.
func (s *rawStream) nextEventWithin(t *testing.T, d time.Duration) frame {
	t.Helper()
	_ = s.conn.SetReadDeadline(time.Now().Add(d))
	defer s.conn.SetReadDeadline(time.Time{})
	return s.nextEvent(t)
}

// closedAndCounted waits until the server at srv holds open streams and has counted ended
// more client_gone ends than before, and returns how long that took.
func closedAndCounted(t *testing.T, srv *testServer, before map[string]float64, open, ended float64) time.Duration {
	t.Helper()
	start := time.Now()
	var d map[string]float64
	// The bound is for a busy machine: an hour of keepalive ends none of these streams.
	eventually(t, 10*time.Second, fmt.Sprintf("%v streams open and %v more ended as client_gone", open, ended), func() bool {
		after := scrape(t, srv.adminURL)
		d = delta(before, after)
		return after["sse_streams_open"] == open && d[`sse_streams_ended_total{reason="client_gone"}`] == ended
	})
	return time.Since(start)
}

func TestStream_ClosedClientGivesItsPlaceBackAtOnce(t *testing.T) {
	t.Parallel()
	// Nothing writes on these streams for an hour: only the closed connection can end them.
	tests := []struct {
		name, target, proto string
	}{
		{"quiet topic", "/sse?topic=quiet", "HTTP/1.1"},
		{"random stream", "/sse", "HTTP/1.1"},
		{"HTTP/1.0 topic", "/sse?topic=quiet", "HTTP/1.0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := startServer(t, "-max-clients", "40", "-keepalive", "1h", "-interval", "1h")
			before := scrape(t, srv.adminURL)
			// More clients than places, one after the other: each finds the places of those
			// before it free, or about to be.
			for i := range 45 {
				s, err := openRawStream(srv.url, tt.target, tt.proto)
				if err != nil {
					t.Fatalf("client %d of 45, after %d connected and closed: %v", i+1, i, err)
				}
				s.conn.Close()
			}
			took := closedAndCounted(t, srv, before, 0, 45)
			t.Logf("45 streams closed by their clients: sse_streams_open read 0 %s after the last close", took.Round(time.Millisecond))
			d := delta(before, scrape(t, srv.adminURL))
			if d["sse_streams_opened_total"] != 45 || d[`sse_requests_rejected_total{reason="max_clients"}`] != 0 {
				t.Errorf("opened %v streams and refused %v, want 45 and 0", d["sse_streams_opened_total"], d[`sse_requests_rejected_total{reason="max_clients"}`])
			}
		})
	}
}

func TestHandler_ClientsRightAfterClosedOnesGetStreamsNotRefusals(t *testing.T) {
	t.Parallel()
	const places = 40
	srv := startServer(t, "-max-clients", fmt.Sprint(places), "-keepalive", "1h")
	before := scrape(t, srv.adminURL)
	first := make([]*rawStream, places)
	for i := range first {
		s, err := openRawStream(srv.url, "/sse?topic=quiet", "HTTP/1.1")
		if err != nil {
			t.Fatalf("first client %d: %v", i+1, err)
		}
		first[i] = s
	}
	for _, s := range first {
		s.conn.Close()
	}
	// At once, all together: the closed streams' places may not be given back yet.
	second := make([]*rawStream, places)
	errs := make([]error, places)
	var wg sync.WaitGroup
	for i := range second {
		wg.Go(func() { second[i], errs[i] = openRawStream(srv.url, "/sse?topic=quiet", "HTTP/1.1") })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("client %d right after %d closed: %v", i+1, places, err)
			continue
		}
		t.Cleanup(func() { second[i].conn.Close() })
	}
	if t.Failed() {
		t.FailNow()
	}
	closedAndCounted(t, srv, before, places, places)

	// The new streams are served, and the limit still holds, without a wait: no stream is ending.
	publishAs(t, srv.adminURL, "", "quiet", "after the ghosts")
	for i, s := range second {
		if ev := s.nextEventWithin(t, 5*time.Second); ev.data != "after the ghosts" {
			t.Fatalf("client %d got %q, want the event published", i+1, ev.data)
		}
	}
	start := time.Now()
	if _, err := openRawStream(srv.url, "/sse?topic=quiet", "HTTP/1.1"); err == nil || !strings.Contains(err.Error(), overloadComment) {
		t.Fatalf("a client over %d open streams: %v, want the refusal", places, err)
	}
	t.Logf("with %d live streams the next client was refused in %s", places, time.Since(start).Round(time.Millisecond))
}

func TestHandler_ReconnectRightAfterCloseIsNotRefusedPerAddress(t *testing.T) {
	t.Parallel()
	// A page reloaded: its stream closes and the same address opens the next one at once.
	srv := startServer(t, "-max-clients-per-ip", "1", "-keepalive", "1h")
	for i := range 10 {
		s, err := openRawStream(srv.url, "/sse?topic=quiet", "HTTP/1.1")
		if err != nil {
			t.Fatalf("reconnect %d of one address with -max-clients-per-ip 1: %v", i, err)
		}
		s.conn.Close()
	}
}

func TestStream_OpenClientIsNotEndedByTheCloseWatch(t *testing.T) {
	t.Parallel()
	srv := startServer(t, "-keepalive", "1h")
	before := scrape(t, srv.adminURL)
	quiet, err := openRawStream(srv.url, "/sse?topic=quiet", "HTTP/1.1")
	if err != nil {
		t.Fatal(err)
	}
	defer quiet.conn.Close()
	// A client that sends bytes the server does not read makes its socket readable: that is
	// not a close.
	chatty, err := openRawStream(srv.url, "/sse?topic=quiet", "HTTP/1.1")
	if err != nil {
		t.Fatal(err)
	}
	defer chatty.conn.Close()
	if _, err := chatty.conn.Write([]byte("GET /ignored HTTP/1.1\r\n")); err != nil {
		t.Fatal(err)
	}
	// One client that leaves: once its end is counted, the watcher has seen everything before it.
	gone, err := openRawStream(srv.url, "/sse?topic=quiet", "HTTP/1.1")
	if err != nil {
		t.Fatal(err)
	}
	gone.conn.Close()
	closedAndCounted(t, srv, before, 2, 1)

	publishAs(t, srv.adminURL, "", "quiet", "still here")
	for name, s := range map[string]*rawStream{"quiet": quiet, "chatty": chatty} {
		if ev := s.nextEventWithin(t, 5*time.Second); ev.data != "still here" {
			t.Errorf("the %s client got %q, want the event published", name, ev.data)
		}
	}
	d := delta(before, scrape(t, srv.adminURL))
	for _, reason := range []endReason{endClientGone, endWriteTimeout, endShutdown, endMaxLifetime, endTooSlow, endAuthExpired, endError, endUnavailable, endResync} {
		want := 0.0
		if reason == endClientGone {
			want = 1
		}
		if got := d[`sse_streams_ended_total{reason="`+string(reason)+`"}`]; got != want {
			t.Errorf("sse_streams_ended_total{reason=%q} moved by %v, want %v", reason, got, want)
		}
	}
}
