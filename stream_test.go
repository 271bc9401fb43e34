package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// eventPattern is the exact shape of every event on the wire.
var eventPattern = regexp.MustCompile(`^id: ([1-9][0-9]*)\ndata: \{"User":(0|[1-9][0-9]*)\}\n\n$`)

func TestStream_FramingIsExact(t *testing.T) {
	t.Parallel()
	srv := startServer(t, "-interval", "5ms", "-retry", "1500ms")
	stream := openStream(t, srv.url, nil)
	if got, want := string(stream.nextRaw(t)), "retry: 1500\n: stream opened\n\n"; got != want {
		t.Fatalf("opening = %q, want %q", got, want)
	}
	for want := 1; want <= 20; want++ {
		raw := stream.nextRaw(t)
		m := eventPattern.FindSubmatch(raw)
		if m == nil {
			t.Fatalf("event %d = %q, want id, one data line, one blank line and nothing else", want, raw)
		}
		if id, _ := strconv.Atoi(string(m[1])); id != want {
			t.Fatalf("event id = %d, want %d", id, want)
		}
		var d DashBoard
		if err := json.Unmarshal(bytes.TrimPrefix(bytes.Split(raw, []byte("\n"))[1], []byte("data: ")), &d); err != nil || d.User > maxUsers {
			t.Fatalf("event data of %q: %+v, %v; want a DashBoard within [0, %d]", raw, d, err, maxUsers)
		}
	}
}

func TestStream_ManyEventsOnOneConnection(t *testing.T) {
	t.Parallel()
	srv := startServer(t, "-interval", "2ms")
	before := metric(t, srv.adminURL, "sse_streams_opened_total")
	stream := openStream(t, srv.url, nil)
	stream.next(t)
	for want := uint64(1); want <= 300; want++ {
		ev := stream.nextEvent(t)
		if ev.id != strconv.FormatUint(want, 10) {
			t.Fatalf("event %d has id %q, want ids counting up by one", want, ev.id)
		}
		if ev.event != "" {
			t.Fatalf("event %d has type %q, want none (so onmessage receives it)", want, ev.event)
		}
	}
	if got := metric(t, srv.adminURL, "sse_streams_opened_total") - before; got != 1 {
		t.Errorf("%v streams served 300 events, want 1", got)
	}
}

func TestStream_LastEventID(t *testing.T) {
	t.Parallel()
	srv := startServer(t, "-interval", "5ms")
	tests := []struct {
		name, header string
		want         uint64
	}{
		{"none", "", 1},
		{"numeric", "41", 42},
		{"zero", "0", 1},
		{"leading zeros", "007", 8},
		{"largest that can continue", "9223372036854775807", 1 << 63},
		{"too close to wrapping around", "9223372036854775808", 1},
		{"would wrap around", "18446744073709551615", 1},
		{"overflows", "18446744073709551616", 1},
		{"negative", "-5", 1},
		{"plus sign", "+5", 1},
		{"not a number", "abc", 1},
		{"two numbers", "5 6", 1},
		{"fraction", "5.5", 1},
		{"binary", "\x80\xfe\xff", 1},
		{"long", strings.Repeat("9", 1000), 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			header := http.Header{}
			if tt.header != "" {
				header.Set("Last-Event-ID", tt.header)
			}
			stream := openStream(t, srv.url, header)
			stream.next(t)
			ev := stream.nextEvent(t)
			if ev.id != strconv.FormatUint(tt.want, 10) {
				t.Fatalf("Last-Event-ID %q: first id %q, want %d", tt.header, ev.id, tt.want)
			}
			stream.close()
		})
	}
}

func TestStream_ResumesAfterLastEventIDQuery(t *testing.T) {
	t.Parallel()
	srv := startServer(t, "-interval", "5ms")
	tests := []struct {
		name, query, header string
		want                uint64
	}{
		{"query alone", "?lastEventID=41", "", 42},
		{"header wins over query", "?lastEventID=41", "99", 100},
		{"invalid query", "?lastEventID=x", "", 1},
		{"other parameters", "?src=a&lastEventID=7", "", 8},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			header := http.Header{}
			if tt.header != "" {
				header.Set("Last-Event-ID", tt.header)
			}
			stream := openStreamAt(t, srv.url+"/sse"+tt.query, header)
			stream.next(t)
			if ev := stream.nextEvent(t); ev.id != strconv.FormatUint(tt.want, 10) {
				t.Fatalf("GET /sse%s with Last-Event-ID %q: first id %q, want %d", tt.query, tt.header, ev.id, tt.want)
			}
		})
	}
}

func TestStream_KeepaliveWhenIdle(t *testing.T) {
	t.Parallel()
	const keepalive = time.Second
	srv := startServer(t, "-interval", "1h", "-keepalive", keepalive.String())
	stream := openStream(t, srv.url, nil)
	stream.next(t)
	last := time.Now()
	for range 3 {
		raw := stream.nextRaw(t)
		gap := time.Since(last)
		last = time.Now()
		if string(raw) != ": keepalive\n\n" {
			t.Fatalf("idle stream sent %q, want a keepalive comment", raw)
		}
		// Generous bounds: a busy machine delays both writes and reads.
		if gap < keepalive/2 || gap > keepalive+3*time.Second {
			t.Errorf("keepalive came %s after the previous write, want about %s", gap, keepalive)
		}
	}
}

func TestStream_KeepaliveOnlyWhenSilent(t *testing.T) {
	t.Parallel()
	// A keepalive period far above any scheduling delay: one that came would mean the
	// server sent it while events were flowing.
	srv := startServer(t, "-interval", "10ms", "-keepalive", "5s")
	stream := openStream(t, srv.url, nil)
	stream.next(t)
	for range 50 {
		if f := stream.next(t); !f.isEvent {
			t.Fatalf("got %+v while events flow every 10ms, want only events", f)
		}
	}
}

func TestStream_MaxLifetimeEndsAndNextResumes(t *testing.T) {
	t.Parallel()
	srv := startServer(t, "-interval", "10ms", "-max-lifetime", "300ms")
	stream := openStream(t, srv.url, nil)
	start := time.Now()
	var lastID string
	frames := 0
	if _, err := readFrames(stream.reader, func(f frame) {
		if f.isEvent {
			lastID = f.id
			frames++
		}
	}); err != nil {
		t.Fatalf("stream cut with %v, want a clean end", err)
	}
	// The lifetime is 300ms moved by up to 10 %, counted from before the client's clock started.
	if took := time.Since(start); took < 200*time.Millisecond || took > 3*time.Second {
		t.Errorf("stream lasted %s, want about 300ms (270 to 330 on the server)", took)
	}
	if frames < 5 {
		t.Fatalf("got %d events before the end, want several", frames)
	}
	eventually(t, 5*time.Second, "the server counts the stream's end", func() bool {
		return metric(t, srv.adminURL, `sse_streams_ended_total{reason="max_lifetime"}`) == 1
	})
	last, _ := strconv.ParseUint(lastID, 10, 64)
	next := openStream(t, srv.url, http.Header{"Last-Event-ID": {lastID}})
	next.next(t)
	if ev := next.nextEvent(t); ev.id != strconv.FormatUint(last+1, 10) {
		t.Fatalf("after Last-Event-ID %s the first id is %q, want %d", lastID, ev.id, last+1)
	}
}

func TestStream_VanishedClientLeavesNoGoroutines(t *testing.T) {
	const keepalive = 500 * time.Millisecond
	// Where closes are watched, an idle stream learns at once that its client closed the
	// connection; elsewhere only the keepalive reveals it.
	idleKeepalives := 1.0
	if closesWatched {
		idleKeepalives = 0
	}
	tests := []struct {
		name string
		args []string
		// within bounds how soon every client is forgotten, generously for a busy machine.
		within time.Duration
		// keepalives is how many keepalives each vanished client is written, if known. A
		// client that closes its end (FIN) lets one more write succeed, and the next fails.
		keepalives float64
	}{
		{"idle", []string{"-interval", "1h", "-keepalive", keepalive.String()}, 2*keepalive + 3*time.Second, idleKeepalives},
		{"busy", []string{"-interval", "1ms", "-keepalive", "1h"}, 3 * time.Second, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := startServer(t, tt.args...)
			const clients = 20
			before := goroutinesIn(produce)
			streams := make([]*sseStream, clients)
			for i := range streams {
				streams[i] = openStream(t, srv.url, nil)
				streams[i].next(t)
			}
			if got := goroutinesIn(produce) - before; got != clients {
				t.Fatalf("%d producers run for %d clients, want one each", got, clients)
			}
			closed := time.Now()
			for _, s := range streams {
				s.close()
			}
			eventually(t, 10*time.Second, "every producer and handler returns", func() bool {
				return goroutinesIn(produce) == before && streamHandlers() == 0
			})
			if took := time.Since(closed); took > tt.within {
				t.Errorf("the server took %s to forget %d vanished clients, want at most %s", took, clients, tt.within)
			}
			m := scrape(t, srv.adminURL)
			if got := m[`sse_streams_ended_total{reason="client_gone"}`]; got != clients {
				t.Errorf("%v streams ended with the client gone, want %d", got, clients)
			}
			// The write after the one that succeeded fails: the empty write after each
			// flush brings the failure back on that write, not on the next.
			if got := m["sse_keepalives_total"]; got != tt.keepalives*clients {
				t.Errorf("%v keepalives written to %d vanished clients, want %v each", got, clients, tt.keepalives)
			}
			if got := srv.healthClients(t); got != 0 {
				t.Errorf("/healthz clients = %d after every client left, want 0", got)
			}
		})
	}
}

func TestStream_VerboseLogsEveryEvent(t *testing.T) {
	t.Parallel()
	for _, verbose := range []bool{false, true} {
		args := []string{"-interval", "5ms"}
		if verbose {
			args = append(args, "-v")
		}
		srv := startServer(t, args...)
		stream := openStream(t, srv.url, nil)
		stream.next(t)
		for range 5 {
			stream.nextEvent(t)
		}
		if verbose {
			// Each event is logged once its write has succeeded, which may be after the client read it.
			eventually(t, 5*time.Second, "5 event lines for 5 events", func() bool { return srv.logs.count("msg=event ") >= 5 })
		} else if got := srv.logs.count("msg=event "); got != 0 {
			t.Errorf("verbose=false: %d event lines for 5 events, want none", got)
		}
	}
}

func TestStream_HTTP10ResetBeforeFirstWriteIsClientGone(t *testing.T) {
	srv := startServer(t, "-log-rate", "0")
	const clients = 100
	for range clients {
		conn := dialRaw(t, srv.url)
		if _, err := io.WriteString(conn, "GET /sse HTTP/1.0\r\nHost: x\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		conn.SetLinger(0)
		conn.Close()
	}
	disconnect := regexp.MustCompile(`msg="client disconnected" .*`)
	eventually(t, 10*time.Second, "every stream ends and logs why", func() bool {
		return len(disconnect.FindAllString(srv.logs.String(), -1)) == clients
	})
	m := scrape(t, srv.adminURL)
	if got := m[`sse_streams_ended_total{reason="write_timeout"}`]; got != 0 {
		t.Errorf("%v of %d reset HTTP/1.0 streams counted as write_timeout, want 0: none stopped reading", got, clients)
	}
	if got := m[`sse_streams_ended_total{reason="client_gone"}`]; got != clients {
		t.Errorf("%v of %d reset HTTP/1.0 streams counted as client_gone, want all", got, clients)
	}
	for _, line := range disconnect.FindAllString(srv.logs.String(), -1) {
		if strings.Contains(line, "error=") {
			t.Errorf("a client that left is logged with an error: %s", line)
			break
		}
	}
}

func TestStream_VerboseLogsOnlyEventsWritten(t *testing.T) {
	srv := startServer(t, "-v", "-interval", "5ms", "-log-rate", "0")
	stream := openStream(t, srv.url, nil)
	for range 3 {
		stream.nextEvent(t)
	}
	stream.close()
	end := srv.logs.waitFor(t, regexp.MustCompile(`msg="client disconnected" .*last_id=(\d+)`), 10*time.Second)
	lastID, _ := strconv.Atoi(end)
	events := regexp.MustCompile(`msg=event .*id=(\d+)`).FindAllStringSubmatch(srv.logs.String(), -1)
	if len(events) < 3 {
		t.Fatalf("%d event lines for at least 3 events written", len(events))
	}
	for _, m := range events {
		if id, _ := strconv.Atoi(m[1]); id > lastID {
			t.Errorf("event id=%d logged for a stream whose end says last_id=%d: only events written may be logged", id, lastID)
		}
	}
}

func TestStream_ATakenOverStreamIsChunkedAndEndsWithTheLastChunk(t *testing.T) {
	t.Parallel()
	srv := startServer(t, "-interval", "5ms", "-max-lifetime", "300ms")
	for _, path := range []string{"/sse", "/sse?topic=chunks"} {
		conn := dialRaw(t, srv.url)
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(conn, "GET "+path+" HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
		reader := bufio.NewReader(conn)
		resp, err := http.ReadResponse(reader, nil)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if resp.StatusCode != http.StatusOK || !slices.Equal(resp.TransferEncoding, []string{"chunked"}) ||
			resp.Header.Get("Content-Type") != "text/event-stream" || resp.Header.Get("Date") == "" || !resp.Close {
			t.Errorf("%s: %s, Transfer-Encoding %q, headers %v; want 200, chunked, text/event-stream, a Date and Connection: close",
				path, resp.Status, resp.TransferEncoding, resp.Header)
		}
		// The chunked reader fails with io.ErrUnexpectedEOF if the connection closes before
		// the last chunk.
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Errorf("%s: the body ended with %v after %d bytes, want the last chunk", path, err, len(body))
		}
		if frames := parseFrames(body); len(frames) == 0 || frames[0].retry != "3000" {
			t.Errorf("%s: body %q, want the opening first", path, body)
		}
		if n, err := reader.Read(make([]byte, 1)); n != 0 || err != io.EOF {
			t.Errorf("%s: after the last chunk read %d bytes, %v; want the connection closed", path, n, err)
		}
		conn.Close()
	}
	if got := metric(t, srv.adminURL, `sse_streams_ended_total{reason="max_lifetime"}`); got != 2 {
		t.Errorf("streams ended at -max-lifetime: %v, want 2", got)
	}
}
