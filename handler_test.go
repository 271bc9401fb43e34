package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// sseStream is one open GET /sse read frame by frame, as a real client reads it.
type sseStream struct {
	resp   *http.Response
	reader *bufio.Reader
}

// openStream opens GET /sse with header and checks that it is an event stream.
func openStream(t *testing.T, baseURL string, header http.Header) *sseStream {
	t.Helper()
	return openStreamAt(t, baseURL+"/sse", header)
}

// openStreamAt is openStream for the stream at url.
func openStreamAt(t *testing.T, url string, header http.Header) *sseStream {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	// A transport of its own: closing the stream closes its connection, as a leaving browser does.
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET /sse: %v", err)
	}
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		t.Fatalf("GET /sse = %d %q, want 200", resp.StatusCode, body)
	}
	s := &sseStream{resp: resp, reader: bufio.NewReader(resp.Body)}
	t.Cleanup(s.close)
	return s
}

func (s *sseStream) close() {
	s.resp.Body.Close()
}

// nextRaw returns the next frame's bytes, up to and including its blank line, failing
// the test if none arrives within 5s.
func (s *sseStream) nextRaw(t *testing.T) []byte {
	t.Helper()
	type result struct {
		frame []byte
		err   error
	}
	got := make(chan result, 1)
	go func() {
		var frame []byte
		for {
			line, err := s.reader.ReadBytes('\n')
			frame = append(frame, line...)
			if err != nil || string(line) == "\n" {
				got <- result{frame, err}
				return
			}
		}
	}()
	select {
	case r := <-got:
		if r.err != nil {
			t.Fatalf("reading a frame: %v (read %q)", r.err, r.frame)
		}
		return r.frame
	case <-time.After(5 * time.Second):
		s.close()
		t.Fatal("no frame within 5s")
		return nil
	}
}

// next returns the next frame, parsed.
func (s *sseStream) next(t *testing.T) frame {
	t.Helper()
	raw := s.nextRaw(t)
	frames := parseFrames(raw)
	if len(frames) != 1 {
		t.Fatalf("frame %q parsed into %d frames, want 1", raw, len(frames))
	}
	return frames[0]
}

// nextEvent skips keepalives and returns the next event.
func (s *sseStream) nextEvent(t *testing.T) frame {
	t.Helper()
	for {
		if f := s.next(t); f.isEvent {
			return f
		}
	}
}

// readToEnd reads until the server ends the stream: nil for a clean end of a chunked
// body, an error if the connection was cut.
func (s *sseStream) readToEnd() error {
	_, err := io.Copy(io.Discard, s.reader)
	return err
}

// frame is what a WHATWG-conforming SSE parser makes of one blank-line-terminated block.
type frame struct {
	isEvent  bool // data lines were present, so EventSource dispatches a message
	id       string
	hasID    bool
	data     string
	event    string
	retry    string
	comments []string
}

// parseFrames parses an SSE byte stream as the HTML standard describes (lines end in
// CRLF, LF or CR), returning one frame per blank line; a trailing unterminated block is
// returned too, so a test can see it.
func parseFrames(b []byte) []frame {
	var frames []frame
	var cur frame
	var data strings.Builder
	var started bool
	for len(b) > 0 {
		i := bytes.IndexAny(b, "\r\n")
		line := b
		rest := []byte(nil)
		if i >= 0 {
			line = b[:i]
			rest = b[i+1:]
			if b[i] == '\r' && len(rest) > 0 && rest[0] == '\n' {
				rest = rest[1:]
			}
		}
		b = rest
		if len(line) == 0 {
			if cur.isEvent {
				cur.data = strings.TrimSuffix(data.String(), "\n")
			}
			frames = append(frames, cur)
			cur, started = frame{}, false
			data.Reset()
			continue
		}
		started = true
		if line[0] == ':' {
			cur.comments = append(cur.comments, strings.TrimPrefix(string(line[1:]), " "))
			continue
		}
		field, value, _ := strings.Cut(string(line), ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "data":
			cur.isEvent = true
			data.WriteString(value)
			data.WriteByte('\n')
		case "id":
			if !strings.ContainsRune(value, 0) {
				cur.id, cur.hasID = value, true
			}
		case "event":
			cur.event = value
		case "retry":
			cur.retry = value
		}
	}
	if started {
		frames = append(frames, cur)
	}
	return frames
}

// eventPattern is the exact shape of every event on the wire.
var eventPattern = regexp.MustCompile(`^id: ([1-9][0-9]*)\ndata: \{"User":(0|[1-9][0-9]*)\}\n\n$`)

func TestStream_FramingIsExact(t *testing.T) {
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

func TestStream_Headers(t *testing.T) {
	srv := startServer(t)
	conn, err := net.Dial("tcp", strings.TrimPrefix(srv.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// A raw request, because Go's client hides the Connection header.
	if _, err := io.WriteString(conn, "GET /sse HTTP/1.1\r\nHost: x\r\nOrigin: https://elsewhere.example\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	// No Connection header: it is hop-by-hop, and HTTP/1.1 keeps the connection open
	// without one (RFC 9112, section 9.3).
	want := map[string]string{
		"Content-Type":                "text/event-stream",
		"Cache-Control":               "no-cache",
		"Connection":                  "",
		"Access-Control-Allow-Origin": "*",
		"X-Accel-Buffering":           "no",
		"Content-Length":              "",
	}
	if resp.StatusCode != http.StatusOK {
		t.Errorf("status = %d, want 200", resp.StatusCode)
	}
	if len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked" {
		t.Errorf("Transfer-Encoding = %q, want chunked", resp.TransferEncoding)
	}
	for k, v := range want {
		if got := resp.Header.Get(k); got != v {
			t.Errorf("header %s = %q, want %q", k, got, v)
		}
	}
}

func TestStream_PreflightAllowsAnyOrigin(t *testing.T) {
	srv := startServer(t)
	resp, _ := srv.get(t, http.MethodOptions, "/sse", http.Header{
		"Origin":                         {"https://elsewhere.example"},
		"Access-Control-Request-Method":  {"GET"},
		"Access-Control-Request-Headers": {"last-event-id, cache-control"},
	})
	if resp.StatusCode/100 != 2 {
		t.Fatalf("OPTIONS /sse = %d, want 2xx", resp.StatusCode)
	}
	if got := resp.Header.Get("Access-Control-Allow-Origin"); got != "*" {
		t.Errorf("Access-Control-Allow-Origin = %q, want *", got)
	}
	allowed := strings.ToLower(resp.Header.Get("Access-Control-Allow-Headers"))
	for _, h := range []string{"last-event-id", "cache-control", "content-type"} {
		if !strings.Contains(allowed, h) {
			t.Errorf("Access-Control-Allow-Headers = %q, want it to allow %s", allowed, h)
		}
	}
	if methods := resp.Header.Get("Access-Control-Allow-Methods"); !strings.Contains(methods, "GET") {
		t.Errorf("Access-Control-Allow-Methods = %q, want GET", methods)
	}
}

func TestStream_ManyEventsOnOneConnection(t *testing.T) {
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

func TestStream_ShutdownEndsStreamsUnderNetHTTP(t *testing.T) {
	cfg, err := parseConfig([]string{"-interval", "1h", "-keepalive", "1h"}, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	h := handleSSE(cfg.stream, slog.New(slog.NewTextHandler(io.Discard, nil)))
	// net/http never ends a request's context on its own shutdown: the handler's own
	// signal must end the streams.
	srv := httptest.NewServer(h)
	defer srv.Close()
	streams := make([]*sseStream, 3)
	for i := range streams {
		streams[i] = openStream(t, srv.URL, nil)
		streams[i].next(t)
	}
	h.Shutdown(time.Now().Add(time.Second))
	for i, s := range streams {
		if err := s.readToEnd(); err != nil {
			t.Errorf("stream %d ended with %v, want a clean end", i, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := h.Wait(ctx); err != nil {
		t.Fatalf("Wait after Shutdown = %v, want every stream ended", err)
	}
	if got := h.Clients(); got != 0 {
		t.Errorf("%d streams open after Shutdown, want 0", got)
	}
}

func TestStream_KeepaliveWhenIdle(t *testing.T) {
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

func TestStream_RejectsOverMaxClients(t *testing.T) {
	srv := startServer(t, "-max-clients", "2", "-retry", "2s", "-retry-spread", "1s")
	first := openStream(t, srv.url, nil)
	first.next(t)
	second := openStream(t, srv.url, nil)
	second.next(t)
	rejectedBefore := metric(t, srv.adminURL, `sse_requests_rejected_total{reason="max_clients"}`)

	// A client that does not ask for an event stream by name gets 503.
	resp, body := srv.get(t, http.MethodGet, "/sse", nil)
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("third stream without Accept = %d, want 503", resp.StatusCode)
	}
	if got := resp.Header.Get("Retry-After"); got != "2" {
		t.Errorf("Retry-After = %q, want 2 (the -retry delay)", got)
	}
	if strings.Count(strings.TrimSpace(body), "\n") != 0 || !strings.Contains(body, "too many") {
		t.Errorf("503 body = %q, want a one-line reason", body)
	}

	// EventSource (Accept: text/event-stream) would give up for good on a 503: it gets a
	// stream that says when to come back and why, then ends.
	resp, body = srv.get(t, http.MethodGet, "/sse", http.Header{"Accept": {"text/event-stream"}})
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("third stream with Accept: text/event-stream = %d %q, want 200 text/event-stream", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	frames := parseFrames([]byte(body))
	if len(frames) != 1 || frames[0].isEvent || len(frames[0].comments) != 1 || !strings.Contains(frames[0].comments[0], "too many open streams") {
		t.Fatalf("refusal body = %q, want one frame with a retry: and a comment that says why", body)
	}
	if ms, err := strconv.Atoi(frames[0].retry); err != nil || ms < 2000 || ms > 3000 {
		t.Errorf("refusal retry: %q, want -retry plus up to -retry-spread: 2000 to 3000 ms", frames[0].retry)
	}
	if got := metric(t, srv.adminURL, `sse_requests_rejected_total{reason="max_clients"}`) - rejectedBefore; got != 2 {
		t.Errorf("rejected went up by %v for a 503 and a refusal stream, want 2", got)
	}
	if got := srv.healthClients(t); got != 2 {
		t.Errorf("clients = %d after two rejections, want 2", got)
	}

	first.close()
	eventually(t, 20*time.Second, "the closed stream frees its place", func() bool { return srv.healthClients(t) < 2 })
	openStream(t, srv.url, http.Header{"Accept": {"text/event-stream"}}).nextEvent(t)
}

func TestStream_MaxLifetimeEndsAndNextResumes(t *testing.T) {
	srv := startServer(t, "-interval", "10ms", "-max-lifetime", "300ms")
	stream := openStream(t, srv.url, nil)
	start := time.Now()
	var lastID string
	frames := 0
	for {
		line, err := stream.reader.ReadBytes('\n')
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("stream cut with %v, want a clean end", err)
		}
		if id, ok := strings.CutPrefix(string(line), "id: "); ok {
			lastID = strings.TrimSpace(id)
			frames++
		}
	}
	if took := time.Since(start); took < 250*time.Millisecond || took > 3*time.Second {
		t.Errorf("stream lasted %s, want about 300ms", took)
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
	const keepalive = time.Second
	tests := []struct {
		name string
		args []string
		// within bounds how soon every client is forgotten, generously for a busy machine.
		within time.Duration
		// keepalives is how many keepalives each vanished client is written, if known. A
		// client that closes its end (FIN) lets one more write succeed, and the next fails.
		keepalives float64
	}{
		// With no events, only the keepalive reveals that the client is gone.
		{"idle", []string{"-interval", "1h", "-keepalive", keepalive.String()}, 2*keepalive + 3*time.Second, 1},
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
				return goroutinesIn(produce) == before && goroutinesIn((*sseHandler).ServeHTTP) == 0
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
		got := srv.logs.count("msg=event ")
		if verbose && got < 5 || !verbose && got != 0 {
			t.Errorf("verbose=%t: %d event lines for 5 events", verbose, got)
		}
	}
}

func TestDashBoard_AppendJSONMatchesEncodingJSON(t *testing.T) {
	for _, user := range []uint{0, 1, 42, maxUsers, math.MaxUint} {
		d := DashBoard{User: user}
		want, _ := json.Marshal(d)
		if got := d.AppendJSON(nil); !bytes.Equal(got, want) {
			t.Errorf("AppendJSON(%d) = %s, want %s", user, got, want)
		}
	}
}

func TestNextUsers_StaysWithinBounds(t *testing.T) {
	for _, start := range []uint{0, 10, maxUsers / 2, maxUsers - 3, maxUsers} {
		u := start
		for range 1000 {
			next := nextUsers(u)
			if next > maxUsers || max(next, u)-min(next, u) > 25 {
				t.Fatalf("nextUsers(%d) = %d, want a step of at most 25 within [0, %d]", u, next, maxUsers)
			}
			u = next
		}
	}
}

func TestAcceptsEventStream(t *testing.T) {
	tests := []struct {
		name    string
		accept  []string
		want    bool
		wantErr bool
	}{
		{"no header", nil, true, false},
		{"empty header", []string{""}, true, false},
		{"only commas and spaces", []string{" , ,"}, true, false},
		{"exact", []string{"text/event-stream"}, true, false},
		{"any", []string{"*/*"}, true, false},
		{"text wildcard with weight", []string{"text/html, text/*;q=0.5"}, true, false},
		{"JSON only", []string{"application/json"}, false, false},
		{"refused", []string{"text/event-stream;q=0"}, false, false},
		{"refused with decimals", []string{"text/event-stream;q=0.000"}, false, false},
		{"refused beside a wildcard", []string{"text/event-stream;q=0, */*"}, false, false},
		{"wildcard refused", []string{"*/*;q=0"}, false, false},
		{"full weight", []string{"text/event-stream;q=1.000"}, true, false},
		{"weight with a bare point", []string{"text/event-stream;q=1."}, true, false},
		{"second header, any case", []string{"application/json", "Text/Event-Stream"}, true, false},
		{"unparsable", []string{"garbage;;;"}, false, false},
		{"negative q", []string{"text/event-stream;q=-1"}, false, true},
		{"q over 1", []string{"text/event-stream;q=2"}, false, true},
		{"q just over 1", []string{"text/event-stream;q=1.001"}, false, true},
		{"q not a number", []string{"text/event-stream;q=NaN"}, false, true},
		{"q with four decimals", []string{"*/*;q=0.1234"}, false, true},
		{"q empty makes the item unparsable", []string{"*/*;q="}, false, false},
		{"q exponent", []string{"*/*;q=1e-1"}, false, true},
		{"bad q on another type", []string{"text/event-stream, text/html;q=9"}, false, true},
	}
	for _, tt := range tests {
		got, err := acceptsEventStream(tt.accept)
		if got != tt.want || (err != nil) != tt.wantErr {
			t.Errorf("%s: acceptsEventStream(%q) = %t, %v; want %t, error %t", tt.name, tt.accept, got, err, tt.want, tt.wantErr)
		}
	}
}

// FuzzAppendEvent checks that any data makes exactly one event that a conforming parser
// reads back with the same id and the data's lines (line breaks become LF).
func FuzzAppendEvent(f *testing.F) {
	for _, seed := range []string{`{"User":1}`, "", "a\nb", "a\r\nb", "a\rb", "\n", "\r\n\r\n", "data: x\n\nid: 9", ": c", " lead"} {
		f.Add(uint64(1), []byte(seed))
	}
	f.Fuzz(func(t *testing.T, id uint64, data []byte) {
		out := appendEvent([]byte("prefix kept\n\n"), id, data)
		frames := parseFrames(out)
		if len(frames) != 2 {
			t.Fatalf("appendEvent(%d, %q) = %q: %d frames, want the prefix and one event", id, data, out, len(frames))
		}
		ev := frames[1]
		want := strings.NewReplacer("\r\n", "\n", "\r", "\n").Replace(string(data))
		if !ev.isEvent || ev.id != strconv.FormatUint(id, 10) || ev.data != want {
			t.Fatalf("appendEvent(%d, %q) = %q parsed as %+v, want id %d and data %q", id, data, out, ev, id, want)
		}
		if !bytes.HasSuffix(out, []byte("\n\n")) || bytes.HasSuffix(out, []byte("\n\n\n")) {
			t.Fatalf("appendEvent(%d, %q) = %q, want exactly one blank line at the end", id, data, out)
		}
	})
}

// FuzzParseLastEventID checks that only a decimal id up to maxLastEventID is taken, so
// the ids that follow never wrap around.
func FuzzParseLastEventID(f *testing.F) {
	for _, seed := range []string{"", "0", "41", "-1", "+1", "18446744073709551615", "18446744073709551616", "\xff"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, value string) {
		id, ok := parseLastEventID(value)
		want, err := strconv.ParseUint(value, 10, 64)
		wantOK := err == nil && want <= maxLastEventID && utf8.ValidString(value)
		if ok != wantOK || ok && id != want || !ok && id != 0 {
			t.Fatalf("parseLastEventID(%q) = %d, %t; want %d, %t", value, id, ok, want, wantOK)
		}
		if ok && id+1 == 0 {
			t.Fatalf("parseLastEventID(%q) = %d: the next id would wrap around", value, id)
		}
	})
}

// FuzzParseQValue checks the weight parser against RFC 9110's grammar for a qvalue:
// "0" [ "." 0*3DIGIT ] or "1" [ "." 0*3("0") ], read as a decimal number.
func FuzzParseQValue(f *testing.F) {
	for _, seed := range []string{"0", "1", "0.5", "1.000", "1.001", "0.1234", "-1", "2", "NaN", "1e-1", "", ".5", "0."} {
		f.Add(seed)
	}
	grammar := regexp.MustCompile(`^(0(\.[0-9]{0,3})?|1(\.0{0,3})?)$`)
	f.Fuzz(func(t *testing.T, q string) {
		weight, ok := parseQValue(q)
		if want := grammar.MatchString(q); ok != want {
			t.Fatalf("parseQValue(%q) ok = %t, want %t", q, ok, want)
		}
		if !ok {
			return
		}
		want, err := strconv.ParseFloat(q, 64)
		if err != nil || weight != want || weight < 0 || weight > 1 {
			t.Fatalf("parseQValue(%q) = %v, want %v within [0, 1]", q, weight, want)
		}
	})
}
