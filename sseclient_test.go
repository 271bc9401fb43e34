package main

// An EventSource written in Go, for tests that need hundreds of them, or need to see when each
// event and comment arrived. It follows the HTML standard's "Server-sent events" section, so a
// test of it shows what a browser's EventSource would live through:
//   - every request sends Accept: text/event-stream and Cache-Control: no-cache, and once an event
//     carried an id, Last-Event-ID with the last one;
//   - a response that is not 200 with Content-Type text/event-stream fails the source for good,
//     as a browser's does;
//   - a stream that ends, or a connection that fails, is opened again after the reconnection
//     time, which starts at sseDefaultRetry and which every retry: field sets;
//   - lines end in CRLF, LF or CR; a blank line dispatches the event if it has data; an id with
//     no data still becomes the last event id; a stream that ends mid-event drops that event.
//
// Below it, sseStream reads one stream frame by frame, comments and retry: included, for tests
// that check the bytes on the wire. Both parse with readFrames.

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// sseDefaultRetry is the reconnection time until the server sends retry:, as in Chromium.
const sseDefaultRetry = 3 * time.Second

// sseEvent is one dispatched event, with the time its blank line arrived.
type sseEvent struct {
	id   string // the last event id once this event was dispatched
	typ  string // "message" unless an event: field said otherwise
	data string
	at   time.Time
}

// sseFailure is why an sseClient gave up for good: the server answered something other than
// an event stream, which makes a browser's EventSource close and never reconnect.
type sseFailure struct {
	status      int
	contentType string
}

// Error says what the server answered instead of an event stream.
func (f *sseFailure) Error() string {
	return fmt.Sprintf("not an event stream: status %d, Content-Type %q (EventSource closes for good)", f.status, f.contentType)
}

// sseClient is one EventSource on url. Set its hooks, then call run; every hook is optional and
// is called on run's goroutine.
type sseClient struct {
	url    string
	client *http.Client

	retry       time.Duration // the reconnection time
	lastEventID string        // sent as Last-Event-ID on every reconnect once set

	onOpen    func(resp *http.Response)        // each connection that opened
	onEvent   func(ev sseEvent)                // each dispatched event
	onComment func(text string, at time.Time)  // each comment line, without its colon and one space
	onEnd     func(err error, retry time.Time) // each connection that ended (err nil at a clean end), and when the next one starts
}

// newSSEClient returns an EventSource on url that connects through client.
func newSSEClient(url string, client *http.Client) *sseClient {
	return &sseClient{url: url, client: client, retry: sseDefaultRetry}
}

// run connects, reads, and reconnects after every end, until ctx is done (it then returns
// nil) or the server answers something other than an event stream (an *sseFailure).
func (c *sseClient) run(ctx context.Context) error {
	for {
		err := c.connect(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if failure := (*sseFailure)(nil); errors.As(err, &failure) {
			return err
		}
		next := time.Now().Add(c.retry)
		if c.onEnd != nil {
			c.onEnd(err, next)
		}
		wait := time.NewTimer(time.Until(next))
		select {
		case <-ctx.Done():
			wait.Stop()
			return nil
		case <-wait.C:
		}
	}
}

// connect makes one request and reads its stream to the end: nil if the server ended it, the
// error if the connection failed, an *sseFailure if the answer was not an event stream.
func (c *sseClient) connect(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url, nil)
	if err != nil {
		return &sseFailure{} // a bad URL fails for good, as new EventSource throws
	}
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Cache-Control", "no-cache")
	if c.lastEventID != "" {
		req.Header.Set("Last-Event-ID", c.lastEventID)
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return fmt.Errorf("GET %s: %w", c.url, err)
	}
	defer resp.Body.Close()
	mediaType, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if resp.StatusCode != http.StatusOK || mediaType != "text/event-stream" {
		return &sseFailure{status: resp.StatusCode, contentType: resp.Header.Get("Content-Type")}
	}
	if c.onOpen != nil {
		c.onOpen(resp)
	}

	cut, err := readFrames(resp.Body, func(f frame) {
		c.apply(f)
		if f.hasID {
			c.lastEventID = f.id
		}
		if f.isEvent && c.onEvent != nil {
			typ := cmp.Or(f.event, "message")
			c.onEvent(sseEvent{id: c.lastEventID, typ: typ, data: f.data, at: time.Now()})
		}
	})
	c.apply(cut) // an event cut off is not dispatched, but its retry: and comments count
	if err != nil {
		return fmt.Errorf("read %s: %w", c.url, err)
	}
	return nil
}

// apply takes what a frame says to the client besides its event: the reconnection time
// and the comments.
func (c *sseClient) apply(f frame) {
	if ms, err := strconv.ParseUint(f.retry, 10, 32); err == nil {
		c.retry = time.Duration(ms) * time.Millisecond
	}
	if c.onComment != nil {
		for _, text := range f.comments {
			c.onComment(text, time.Now())
		}
	}
}

// scanSSELines is a bufio.SplitFunc for event streams: a line ends in CRLF, LF or CR. A last
// line without its end is returned too, so that a test sees it; it ends no frame, so the
// event it belongs to is never dispatched, as the standard drops an event cut off mid-way.
func scanSSELines(data []byte, atEOF bool) (advance int, token []byte, err error) {
	i := bytes.IndexAny(data, "\r\n")
	switch {
	case i < 0 && atEOF && len(data) > 0:
		return len(data), data, nil
	case i < 0:
		return 0, nil, nil // more data
	case data[i] == '\n':
		return i + 1, data[:i], nil
	case i+1 < len(data):
		if data[i+1] == '\n' {
			return i + 2, data[:i], nil
		}
		return i + 1, data[:i], nil
	case atEOF:
		return i + 1, data[:i], nil
	default:
		return 0, nil, nil // a CR last in the buffer: an LF may follow
	}
}

func TestSSEClient_FollowsTheStandard(t *testing.T) {
	t.Parallel()
	// Each request gets the next answer: a stream with every kind of line end, then a stream
	// cut off mid-event, then a status an EventSource gives up on.
	answers := []string{
		"\uFEFFretry: 50\n: hello\nid: 1\ndata: a\n\nid: 2\r\ndata: b\r\ndata: c\r\n\r\nid: 3\revent: tick\rdata: d\r\rid: 4\n\n",
		"id: 5\ndata: e\n\nid: 6\ndata: cut",
		"",
	}
	var mu sync.Mutex
	var lastEventIDs []string
	var requests []time.Time
	srv := startOtherOrigin(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		n := len(requests)
		requests = append(requests, time.Now())
		lastEventIDs = append(lastEventIDs, r.Header.Get("Last-Event-ID"))
		if n >= 2 || r.Header.Get("Accept") != "text/event-stream" {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream; charset=utf-8")
		io.WriteString(w, answers[n])
	}))

	c := newSSEClient(srv+"/", &http.Client{Timeout: 5 * time.Second})
	var events []string
	var comments []string
	c.onEvent = func(ev sseEvent) { events = append(events, ev.id+" "+ev.typ+" "+strconv.Quote(ev.data)) }
	c.onComment = func(text string, _ time.Time) { comments = append(comments, text) }
	err := c.run(context.Background())
	mu.Lock()
	defer mu.Unlock()

	var failure *sseFailure
	if !errors.As(err, &failure) || failure.status != http.StatusNoContent {
		t.Errorf("run = %v, want an *sseFailure for status 204", err)
	}
	want := []string{`1 message "a"`, `2 message "b\nc"`, `3 tick "d"`, `5 message "e"`}
	if !slices.Equal(events, want) {
		t.Errorf("events = %q, want %q (the id of a data-less event counts, a cut-off event does not)", events, want)
	}
	if !slices.Equal(comments, []string{"hello"}) {
		t.Errorf("comments = %q, want [hello] (the byte order mark is not part of the first line)", comments)
	}
	if !slices.Equal(lastEventIDs, []string{"", "4", "5"}) {
		t.Errorf("Last-Event-ID of each request = %q, want none, then 4, then 5", lastEventIDs)
	}
	for i := 1; i < len(requests); i++ {
		if gap := requests[i].Sub(requests[i-1]); gap < 50*time.Millisecond {
			t.Errorf("request %d came %s after the one before, want at least the 50ms of retry:", i+1, gap)
		}
	}
}

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
	started  bool // a line other than the blank one was read
}

// readFrames parses the event stream r as the HTML standard describes, calling each with
// every frame that a blank line ends, until r ends; it returns the block cut off at the end
// (empty if none was), and the read error, nil at a clean end. A byte order mark before the
// first line is not part of it.
func readFrames(r io.Reader, each func(frame)) (cut frame, err error) {
	lines := bufio.NewScanner(r)
	lines.Buffer(make([]byte, 4096), 1<<20)
	lines.Split(scanSSELines)
	var cur frame
	for first := true; lines.Scan(); first = false {
		line := lines.Text()
		if first {
			line = strings.TrimPrefix(line, "\uFEFF")
		}
		if cur.add(line) {
			each(cur)
			cur = frame{}
		}
	}
	return cur, lines.Err()
}

// add adds one line of an event stream, without its end, to f, and reports whether it was
// the blank line that ends the frame.
func (f *frame) add(line string) (ended bool) {
	if line == "" {
		return true
	}
	f.started = true
	if line[0] == ':' {
		f.comments = append(f.comments, strings.TrimPrefix(line[1:], " "))
		return false
	}
	field, value, _ := strings.Cut(line, ":")
	value = strings.TrimPrefix(value, " ")
	switch field {
	case "data":
		if f.isEvent {
			f.data += "\n"
		}
		f.isEvent = true
		f.data += value
	case "id":
		if !strings.ContainsRune(value, 0) {
			f.id, f.hasID = value, true
		}
	case "event":
		f.event = value
	case "retry":
		f.retry = value
	}
	return false
}

// parseFrames parses the event stream b with readFrames, returning one frame per blank line
// and, so that a test can see it, the block cut off at the end if there is one.
func parseFrames(b []byte) []frame {
	var frames []frame
	cut, _ := readFrames(bytes.NewReader(b), func(f frame) { frames = append(frames, f) })
	if cut.started {
		frames = append(frames, cut)
	}
	return frames
}
