package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/gofiber/adaptor/v2"
)

var soak = flag.Bool("soak", false, "run the long versions of the fault scenarios and print their table")

// scale returns short in an ordinary test run and long under -soak.
func scale(short, long int) int {
	if *soak {
		return long
	}
	return short
}

// soakRow is one line of the table that -soak prints: a scenario and what it left behind.
type soakRow struct {
	scenario    string
	clients     int
	duration    time.Duration
	leaks       string
	canaryGaps  int
	canaryCount int
}

var (
	soakMu   sync.Mutex
	soakRows []soakRow
)

// record adds a scenario's outcome to the soak table.
func record(row soakRow) {
	soakMu.Lock()
	defer soakMu.Unlock()
	soakRows = append(soakRows, row)
}

// printSoakTable prints the table of every scenario that ran, under -soak only.
func printSoakTable(w io.Writer) {
	if !*soak || len(soakRows) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "scenario\tclients\tduration\tleaks\tcanary gaps")
	for _, r := range soakRows {
		canaries := "no canaries"
		if r.canaryCount > 0 {
			canaries = fmt.Sprintf("%d in %d streams", r.canaryGaps, r.canaryCount)
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\n", r.scenario, r.clients, r.duration.Round(100*time.Millisecond), r.leaks, canaries)
	}
	tw.Flush()
}

// canaryMaxWait is the longest a canary may wait for an event while a scenario runs. A
// busy 2-core machine delays events by up to about a second; a server that stops serving
// its healthy streams holds them much longer.
const canaryMaxWait = 2 * time.Second

// canaries are healthy streams read in the background while a scenario runs; each must
// receive every event, in order, without a long wait.
type canaries struct {
	t       *testing.T
	mu      sync.Mutex
	lastIDs []uint64
	gaps    int
	maxWait time.Duration
	wg      sync.WaitGroup
	streams []*sseStream
}

// openCanaries opens n streams on srv and reads them until the test ends.
func openCanaries(t *testing.T, baseURL string, n int) *canaries {
	t.Helper()
	c := &canaries{t: t, lastIDs: make([]uint64, n)}
	for i := range n {
		s := openStream(t, baseURL, nil)
		s.next(t)
		c.streams = append(c.streams, s)
		c.wg.Add(1)
		go c.read(i, s)
	}
	t.Cleanup(func() {
		for _, s := range c.streams {
			s.close()
		}
		c.wg.Wait()
	})
	return c
}

// read follows one canary, counting every id that does not follow the one before.
func (c *canaries) read(i int, s *sseStream) {
	defer c.wg.Done()
	last := time.Now()
	readFrames(s.reader, func(f frame) {
		if !f.isEvent {
			return
		}
		id, _ := strconv.ParseUint(f.id, 10, 64)
		c.mu.Lock()
		if id != c.lastIDs[i]+1 {
			c.gaps++
		}
		c.lastIDs[i] = id
		c.maxWait = max(c.maxWait, time.Since(last))
		c.mu.Unlock()
		last = time.Now()
	})
}

// check asserts that every canary is still receiving, with no gap and no wait over maxWait.
func (c *canaries) check(maxWait time.Duration) int {
	c.t.Helper()
	c.mu.Lock()
	before := append([]uint64(nil), c.lastIDs...)
	c.mu.Unlock()
	eventually(c.t, 5*time.Second, "every canary receives more events", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for i := range before {
			if c.lastIDs[i] <= before[i] {
				return false
			}
		}
		return true
	})
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gaps != 0 {
		c.t.Errorf("canaries saw %d gaps in their ids, want 0", c.gaps)
	}
	if c.maxWait > maxWait {
		c.t.Errorf("a canary waited %s for an event, want at most %s", c.maxWait, maxWait)
	}
	return c.gaps
}

// streamHandlers counts the goroutines that serve a stream: a request's handler, or the
// goroutine a stream goes on on once its connection is taken over.
func streamHandlers() int {
	return goroutinesIn((*sseHandler).ServeHTTP, (*sseHandler).follow, (*sseHandler).followTaken)
}

// streamGoroutines counts the goroutines that belong to open streams: handlers and producers.
func streamGoroutines() int {
	return goroutinesIn(produce) + streamHandlers()
}

// service is a running sse-dashboard as expectBaseline sees it: a *testServer in this
// process, or a *serverProcess of its own.
type service interface {
	// leftovers returns how many streams are open and how many goroutines there are
	// beyond what those streams need, or ok false if the service did not answer.
	leftovers(t *testing.T, streams int) (open, extra int, ok bool)
}

// leftovers counts the goroutines inside the stream handler and the producer, exactly two
// for each open stream, and the open streams that /healthz reports.
func (s *testServer) leftovers(t *testing.T, streams int) (open, extra int, ok bool) {
	return int(s.healthClients(t)), streamGoroutines() - 2*streams, true
}

// noteGoroutines records the process's goroutines now as those it must come back to: a
// process's goroutines show only as a number in its metrics.
func (p *serverProcess) noteGoroutines(t *testing.T) {
	t.Helper()
	p.goroutines = int(metric(t, p.adminURL, "go_goroutines"))
}

// leftovers reads the open streams and the goroutines from the process's metrics, allowing
// four goroutines more than noteGoroutines saw for the runtime's own. fasthttp keeps an idle
// worker goroutine for 10s and removes it at the next sweep, so a burst of connections
// leaves goroutines behind for up to 20s.
func (p *serverProcess) leftovers(t *testing.T, streams int) (open, extra int, ok bool) {
	samples, err := tryScrape(p.adminURL)
	if err != nil {
		return 0, 0, false
	}
	return int(samples["sse_streams_open"]), max(0, int(samples["go_goroutines"])-p.goroutines-4), true
}

// expectBaseline waits until s holds only its streams open streams again and no goroutine
// left over from what ended, failing the test after 30s, and returns what is left over as
// text for the soak table ("none" when nothing is).
func expectBaseline(t *testing.T, s service, streams int) string {
	t.Helper()
	var open, extra int
	var ok bool
	deadline := time.Now().Add(30 * time.Second)
	for {
		open, extra, ok = s.leftovers(t, streams)
		if ok && open == streams && extra == 0 {
			return "none"
		}
		if time.Now().After(deadline) {
			t.Errorf("%d open streams and %d goroutines left over (answered: %t), want %d and none", open, extra, ok, streams)
			return fmt.Sprintf("%d goroutines", extra)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// streamRequest is a bare request for the stream, written on raw connections.
const streamRequest = "GET /sse HTTP/1.1\r\nHost: sse-dashboard\r\n\r\n"

// dialRaw opens a plain TCP connection to the server, for requests no HTTP client would send.
func dialRaw(t *testing.T, baseURL string) *net.TCPConn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", strings.TrimPrefix(baseURL, "http://"), 5*time.Second)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	return conn.(*net.TCPConn)
}

// dialStalled opens a stream on a connection that never reads, with a 4 KiB receive buffer
// set before it connects, so that the client's window shuts within seconds even at a few
// small events a second; from then on the server's writes wait in its own send buffer.
func dialStalled(t *testing.T, baseURL string) *net.TCPConn {
	t.Helper()
	dialer := net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) {
			syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
	}}
	conn, err := dialer.Dial("tcp", strings.TrimPrefix(baseURL, "http://"))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := io.WriteString(conn, streamRequest); err != nil {
		t.Fatalf("write request: %v", err)
	}
	return conn.(*net.TCPConn)
}

// waitWriteBlocked waits until a write of the server's one open stream is blocked: its
// completed writes (sse_write_duration_seconds_count) stay the same for 100 event intervals
// and at least half a second, which happens, while its producer sends every interval, only
// when the client's window and the server's send buffer are full. A test that relies on a
// stalled reader calls it before asserting what follows from the stall.
func waitWriteBlocked(t *testing.T, adminURL string, interval time.Duration) {
	t.Helper()
	const key = "sse_write_duration_seconds_count"
	still := max(100*interval, 500*time.Millisecond)
	last, since := -1.0, time.Now()
	eventually(t, 30*time.Second, "a write to the stalled reader is blocked", func() bool {
		n := metric(t, adminURL, key)
		if n != last {
			last, since = n, time.Now()
		}
		return n > 0 && time.Since(since) >= still
	})
}

func TestFault_ChurnLeavesNothingBehind(t *testing.T) {
	srv := startServer(t, "-interval", "10ms")
	canary := openCanaries(t, srv.url, 3)
	cycles := scale(600, 10000)
	const workers = 20
	start := time.Now()
	rssBefore, err := rssKB(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	openedBefore := metric(t, srv.adminURL, "sse_streams_opened_total")

	var wg sync.WaitGroup
	jobs := make(chan int)
	for range workers {
		wg.Go(func() {
			for i := range jobs {
				churnOnce(t, srv.url, i%3)
			}
		})
	}
	for i := range cycles {
		jobs <- i
	}
	close(jobs)
	wg.Wait()

	leaks := expectBaseline(t, srv, 3)
	gaps := canary.check(canaryMaxWait)
	if opened := metric(t, srv.adminURL, "sse_streams_opened_total") - openedBefore; opened < float64(cycles) {
		t.Errorf("the server opened %v streams, want at least %d", opened, cycles)
	}
	if *soak {
		rssAfter, err := rssKB(os.Getpid())
		if err != nil {
			t.Fatal(err)
		}
		if grown := rssAfter - rssBefore; grown > 64<<10 {
			t.Errorf("RSS grew by %d KB over %d cycles, want under 64 MB", grown, cycles)
		}
	}
	record(soakRow{"churn: close, half-read, RST", cycles, time.Since(start), leaks, gaps, 3})
}

// churnOnce opens a stream and leaves in one of three ways: closing before reading,
// closing after reading part of the stream, or resetting the connection. It runs on
// worker goroutines, so it reports failures with Errorf.
func churnOnce(t *testing.T, baseURL string, how int) {
	c, err := net.DialTimeout("tcp", strings.TrimPrefix(baseURL, "http://"), 5*time.Second)
	if err != nil {
		t.Errorf("dial: %v", err)
		return
	}
	conn := c.(*net.TCPConn)
	if _, err := io.WriteString(conn, streamRequest); err != nil {
		t.Errorf("write request: %v", err)
	}
	switch how {
	case 0:
	case 1:
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 300)
		io.ReadAtLeast(conn, buf, 200)
	case 2:
		conn.SetLinger(0)
	}
	conn.Close()
}

func TestFault_StalledReadersAreDropped(t *testing.T) {
	skipShort(t, "about 5 s for 20 stalled readers to reach their write timeout")
	// A write timeout longer than canaryMaxWait, so that a canary held up by the stalled
	// readers would show.
	srv := startServer(t, "-interval", "1ms", "-send-buffer", "16384", "-write-timeout", "3s")
	canary := openCanaries(t, srv.url, 3)
	stalled := scale(20, 200)
	start := time.Now()
	for range stalled {
		dialStalled(t, srv.url)
	}
	eventually(t, 30*time.Second, "every stalled reader is dropped", func() bool {
		return metric(t, srv.adminURL, `sse_streams_ended_total{reason="write_timeout"}`) >= float64(stalled)
	})
	took := time.Since(start)
	leaks := expectBaseline(t, srv, 3)
	gaps := canary.check(canaryMaxWait)
	t.Logf("%d stalled readers dropped in %s", stalled, took)
	record(soakRow{"stalled readers (1ms events, 16 KiB send buffer, 3s write timeout)", stalled, took, leaks, gaps, 3})
}

func TestFault_SlowlorisAndIdleConnectionsAreClosed(t *testing.T) {
	const timeout = 500 * time.Millisecond
	srv := startServer(t, "-interval", "20ms", "-read-timeout", timeout.String(), "-idle-timeout", timeout.String())
	canary := openCanaries(t, srv.url, 2)
	start := time.Now()
	n := scale(10, 100)

	var wg sync.WaitGroup
	closedAfter := make(chan time.Duration, 2*n)
	for range n {
		// A request header trickled byte by byte.
		trickle := dialRaw(t, srv.url)
		wg.Go(func() {
			defer trickle.Close()
			opened := time.Now()
			header := "GET /sse HTTP/1.1\r\nHost: x\r\nX-Slow: " + strings.Repeat("a", 1000)
			for i := range len(header) {
				if _, err := trickle.Write([]byte{header[i]}); err != nil {
					break
				}
				if !readClosed(trickle, 100*time.Millisecond) {
					continue
				}
				break
			}
			closedAfter <- time.Since(opened)
		})
		// A keep-alive connection left idle after one request.
		idle := dialRaw(t, srv.url)
		wg.Go(func() {
			defer idle.Close()
			opened := time.Now()
			io.WriteString(idle, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
			resp, err := http.ReadResponse(bufio.NewReader(idle), nil)
			if err != nil || resp.StatusCode != http.StatusOK {
				t.Errorf("GET /healthz on a raw connection: %v", err)
			}
			for !readClosed(idle, 100*time.Millisecond) {
				if time.Since(opened) > 10*time.Second {
					break
				}
			}
			closedAfter <- time.Since(opened)
		})
	}
	wg.Wait()
	close(closedAfter)
	for d := range closedAfter {
		if d > 4*timeout {
			t.Errorf("a slow or idle connection stayed open %s, want it closed within about %s", d, timeout)
		}
	}
	// The canaries have lived past both timeouts many times over.
	if time.Since(start) < 2*timeout {
		time.Sleep(2*timeout - time.Since(start))
	}
	gaps := canary.check(canaryMaxWait)
	leaks := expectBaseline(t, srv, 2)
	record(soakRow{"slowloris and idle keep-alive", 2 * n, time.Since(start), leaks, gaps, 2})
}

// readClosed reports whether the server closed conn, waiting up to wait for it.
func readClosed(conn net.Conn, wait time.Duration) bool {
	conn.SetReadDeadline(time.Now().Add(wait))
	_, err := conn.Read(make([]byte, 512))
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return false
	}
	return err != nil
}

func TestFault_BadRequestsGetClearErrors(t *testing.T) {
	srv := startServer(t, "-interval", "20ms")
	canary := openCanaries(t, srv.url, 2)
	start := time.Now()
	tests := []struct {
		name    string
		request string
		want    int
	}{
		{"garbage request line", "\x00\x01GARBAGE\r\n\r\n", http.StatusBadRequest},
		{"no HTTP version", "GET /sse\r\n\r\n", http.StatusBadRequest},
		{"oversized header block", "GET /sse HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 16<<10) + "\r\n\r\n", http.StatusRequestHeaderFieldsTooLarge},
		{"huge Last-Event-ID", "GET /sse HTTP/1.1\r\nHost: x\r\nLast-Event-ID: " + strings.Repeat("9", 16<<10) + "\r\n\r\n", http.StatusRequestHeaderFieldsTooLarge},
		{"POST /sse", "POST /sse HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", http.StatusMethodNotAllowed},
		{"PUT /sse", "PUT /sse HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", http.StatusMethodNotAllowed},
		{"DELETE /sse", "DELETE /sse HTTP/1.1\r\nHost: x\r\n\r\n", http.StatusMethodNotAllowed},
		{"dot segments", "GET /../sse HTTP/1.1\r\nHost: x\r\n\r\n", http.StatusBadRequest},
		{"dot segments inside", "GET /web/../sse HTTP/1.1\r\nHost: x\r\n\r\n", http.StatusBadRequest},
		{"encoded dots", "GET /%2e%2e/sse HTTP/1.1\r\nHost: x\r\n\r\n", http.StatusBadRequest},
		{"encoded slash", "GET /sse%2Fx HTTP/1.1\r\nHost: x\r\n\r\n", http.StatusBadRequest},
		{"backslash", "GET /..\\sse HTTP/1.1\r\nHost: x\r\n\r\n", http.StatusBadRequest},
		{"JSON wanted", "GET /sse HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\n\r\n", http.StatusNotAcceptable},
		{"HTTP/9.9", "GET /sse HTTP/9.9\r\nHost: x\r\n\r\n", http.StatusHTTPVersionNotSupported},
		{"HTTP/2.0 on a page", "GET / HTTP/2.0\r\nHost: x\r\n\r\n", http.StatusHTTPVersionNotSupported},
		{"HTTP/0.9", "GET /healthz HTTP/0.9\r\nHost: x\r\n\r\n", http.StatusHTTPVersionNotSupported},
		{"HTTP/1.2 is served as 1.1", "GET /healthz HTTP/1.2\r\nHost: x\r\n\r\n", http.StatusOK},
		{"q=-1", "GET /sse HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream;q=-1\r\n\r\n", http.StatusBadRequest},
		{"q=2", "GET /sse HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream;q=2\r\n\r\n", http.StatusBadRequest},
		{"q=NaN", "GET /sse HTTP/1.1\r\nHost: x\r\nAccept: */*;q=NaN\r\n\r\n", http.StatusBadRequest},
		{"empty Accept means anything", "GET /sse HTTP/1.1\r\nHost: x\r\nAccept:\r\n\r\n", http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn := dialRaw(t, srv.url)
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.WriteString(conn, tt.request); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatalf("no HTTP answer: %v", err)
			}
			if resp.StatusCode != tt.want {
				t.Fatalf("status = %d, want %d", resp.StatusCode, tt.want)
			}
			if resp.StatusCode == http.StatusOK {
				return // a stream or /healthz, not an error
			}
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
			if len(bytes.TrimSpace(body)) == 0 || bytes.Count(bytes.TrimSpace(body), []byte("\n")) != 0 {
				t.Errorf("body = %q, want a one-line reason", body)
			}
		})
	}
	gaps := canary.check(canaryMaxWait)
	leaks := expectBaseline(t, srv, 2)
	record(soakRow{"bad requests", len(tests), time.Since(start), leaks, gaps, 2})
}

func TestFault_OverloadServesExactlyMaxClients(t *testing.T) {
	const maxClients = 20
	srv := startServer(t, "-max-clients", strconv.Itoa(maxClients), "-interval", "50ms")
	start := time.Now()
	rejectedBefore := metric(t, srv.adminURL, `sse_requests_rejected_total{reason="max_clients"}`)
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		answers  = map[string]int{}
		conns    []net.Conn
		requests = map[bool]string{ // by whether the client asks for text/event-stream by name, as EventSource does
			false: streamRequest,
			true:  "GET /sse HTTP/1.1\r\nHost: sse-dashboard\r\nAccept: text/event-stream\r\n\r\n",
		}
	)
	ready := make(chan struct{})
	for i := range 2 * maxClients {
		eventSource := i%2 == 0
		wg.Go(func() {
			conn, err := net.DialTimeout("tcp", strings.TrimPrefix(srv.url, "http://"), 5*time.Second)
			if err != nil {
				t.Errorf("dial: %v", err)
				return
			}
			<-ready
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			io.WriteString(conn, requests[eventSource])
			reader := bufio.NewReader(conn)
			resp, err := http.ReadResponse(reader, nil)
			answer := "no answer"
			if err == nil {
				answer = overloadAnswer(resp, eventSource)
			}
			mu.Lock()
			defer mu.Unlock()
			conns = append(conns, conn)
			answers[answer]++
		})
	}
	close(ready)
	wg.Wait()
	served := answers["EventSource: stream"] + answers["other: stream"]
	refused := answers["EventSource: retry later"] + answers["other: 503"]
	if served != maxClients || refused != maxClients {
		t.Errorf("answers = %v, want %d streams and %d refusals: a retry: stream for EventSource, 503 + Retry-After for others", answers, maxClients, maxClients)
	}
	// Which requests got in is up to the scheduler: one more of each kind gets each answer.
	for eventSource, want := range map[bool]string{true: "EventSource: retry later", false: "other: 503"} {
		conn := dialRaw(t, srv.url)
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(conn, requests[eventSource])
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("no HTTP answer at the limit: %v", err)
		}
		if got := overloadAnswer(resp, eventSource); got != want {
			t.Errorf("at the limit: got %q, want %q", got, want)
		}
		conn.Close()
	}
	if got := metric(t, srv.adminURL, `sse_requests_rejected_total{reason="max_clients"}`) - rejectedBefore; got != maxClients+2 {
		t.Errorf("rejected went up by %v, want %d", got, maxClients+2)
	}
	if got := srv.healthClients(t); got != maxClients {
		t.Errorf("open streams = %d, want %d", got, maxClients)
	}
	for _, c := range conns {
		c.Close()
	}
	leaks := expectBaseline(t, srv, 0)
	record(soakRow{"overload: 2 × max clients at once", 2 * maxClients, time.Since(start), leaks, 0, 0})
}

// overloadAnswer names what a stream request got from a server at its limit: "stream" (a
// served stream), "retry later" (the refusal stream EventSource survives) or "503", after
// "EventSource: " or "other: " for the kind of request; anything else is described as is.
func overloadAnswer(resp *http.Response, eventSource bool) string {
	kind := map[bool]string{false: "other: ", true: "EventSource: "}[eventSource]
	if resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") != "" {
		return kind + "503"
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		return fmt.Sprintf("%s%d %s", kind, resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var first []byte
	reader := bufio.NewReader(resp.Body)
	for {
		line, err := reader.ReadBytes('\n')
		first = append(first, line...)
		if err != nil || string(line) == "\n" {
			break
		}
	}
	frames := parseFrames(first)
	switch {
	case len(frames) != 1 || frames[0].retry == "" || len(frames[0].comments) != 1:
		return fmt.Sprintf("%sfirst frame %q", kind, first)
	case frames[0].comments[0] == "stream opened":
		return kind + "stream"
	case strings.Contains(frames[0].comments[0], "too many open streams"):
		if rest, err := io.ReadAll(reader); err != nil || len(rest) != 0 {
			return fmt.Sprintf("%srefusal went on with %q (%v)", kind, rest, err)
		}
		return kind + "retry later"
	}
	return fmt.Sprintf("%sfirst frame %q", kind, first)
}

func TestFault_SigtermEndsEveryStreamCleanly(t *testing.T) {
	t.Parallel()
	streams := scale(200, 1000)
	proc := startProcess(t, "-interval", "100ms", "-max-clients", strconv.Itoa(streams))
	conns := make([]net.Conn, streams)
	readers := make([]*bufio.Reader, streams)
	for i := range conns {
		conns[i] = dialRaw(t, proc.url)
		defer conns[i].Close()
		io.WriteString(conns[i], streamRequest)
		readers[i] = bufio.NewReader(conns[i])
		conns[i].SetReadDeadline(time.Now().Add(20 * time.Second))
		if resp, err := http.ReadResponse(readers[i], nil); err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("stream %d: %v", i, err)
		}
	}
	took := proc.signal(t, syscall.SIGTERM, 5*time.Second) // -shutdown-timeout
	if code := proc.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit code = %d after SIGTERM, want 0", code)
	}
	var wg sync.WaitGroup
	unclean := make(chan int, streams)
	for i, r := range readers {
		wg.Go(func() {
			// A chunked body ends cleanly with its last, empty chunk.
			rest, _ := io.ReadAll(r)
			if !bytes.HasSuffix(rest, []byte("\r\n0\r\n\r\n")) {
				unclean <- i
			}
		})
	}
	wg.Wait()
	close(unclean)
	if n := len(unclean); n > 0 {
		t.Errorf("%d of %d streams were cut instead of ending cleanly", n, streams)
	}
	t.Logf("SIGTERM with %d open streams: exited in %s", streams, took)
	record(soakRow{"SIGTERM with open streams", streams, took, "process exited", 0, 0})
}

func TestFault_SecondSignalExitsAtOnce(t *testing.T) {
	skipShort(t, "a child process and a stalled reader (2 s)")
	t.Parallel()
	proc := startProcess(t, "-interval", "1ms", "-send-buffer", "4096", "-write-timeout", "1m", "-shutdown-timeout", "1m")
	// A reader that never reads keeps shutdown waiting on its write.
	dialStalled(t, proc.url)
	waitWriteBlocked(t, proc.adminURL, time.Millisecond)

	proc.cmd.Process.Signal(syscall.SIGTERM)
	proc.logs.waitFor(t, regexp.MustCompile(`msg="(shutting down)"`), 5*time.Second)
	select {
	case <-proc.exited:
		t.Fatal("the process exited on the first signal, so this test proves nothing: want it waiting on the stalled stream")
	case <-time.After(500 * time.Millisecond):
	}
	took := proc.signal(t, syscall.SIGINT, 2*time.Second)
	if code := proc.cmd.ProcessState.ExitCode(); code != 1 || !strings.Contains(proc.logs.String(), "second signal") {
		t.Errorf("exit code %d, want 1 with a line that says why", code)
	}
	t.Logf("second signal: exited in %s", took)
	record(soakRow{"second signal during shutdown", 1, took, "process exited", 0, 0})
}

func TestFault_DuplicateSignalIsOneStopRequest(t *testing.T) {
	skipShort(t, "a child process and a stalled reader (3 s)")
	t.Parallel()
	// A stalled reader keeps the shutdown busy, so the duplicate arrives while it runs.
	proc := startProcess(t, "-interval", "1ms", "-send-buffer", "4096", "-shutdown-timeout", "2s")
	dialStalled(t, proc.url)
	waitWriteBlocked(t, proc.adminURL, time.Millisecond)
	// What timeout(1) and other supervisors do: the process, then its process group. The
	// kernel merges two signals sent before the first is handled, so the second one goes
	// once the first has started the shutdown.
	start := time.Now()
	proc.cmd.Process.Signal(syscall.SIGTERM)
	proc.logs.waitFor(t, regexp.MustCompile(`msg="(shutting down)"`), 5*time.Second)
	proc.cmd.Process.Signal(syscall.SIGTERM)
	proc.wait(t, 5*time.Second)
	took := time.Since(start)
	if code := proc.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit code = %d after one SIGTERM delivered twice, want 0", code)
	}
	t.Logf("SIGTERM delivered twice: exited in %s", took)
	record(soakRow{"SIGTERM delivered twice", 1, took, "process exited", 0, 0})
}

func TestFault_StalledReaderDoesNotHoldShutdown(t *testing.T) {
	skipShort(t, "a child process and a stalled reader (4 s)")
	t.Parallel()
	// The default timeouts: a write may wait 10s, shutdown only 5s.
	proc := startProcess(t, "-interval", "1ms", "-send-buffer", "4096")
	// The stalled reader alone first, so that the write count shows its write blocked.
	dialStalled(t, proc.url)
	waitWriteBlocked(t, proc.adminURL, time.Millisecond)
	canary := make([]net.Conn, 3)
	for i := range canary {
		canary[i] = dialRaw(t, proc.url)
		defer canary[i].Close()
		io.WriteString(canary[i], streamRequest)
		go io.Copy(io.Discard, canary[i])
	}
	eventually(t, 5*time.Second, "the canaries' streams are open", func() bool {
		return metric(t, proc.adminURL, "sse_streams_open") == float64(len(canary)+1)
	})

	took := proc.signal(t, syscall.SIGTERM, 5*time.Second) // -shutdown-timeout
	if code := proc.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit code = %d with a stalled reader, want 0", code)
	}
	// The healthy streams end with the shutdown, and so does the stalled one, cut short.
	if got := proc.logs.count(`reason=shutdown`); got != len(canary)+1 {
		t.Errorf("%d streams ended with the shutdown, want %d", got, len(canary)+1)
	}
	t.Logf("SIGTERM with a stalled reader: exited in %s", took)
	record(soakRow{"SIGTERM with a stalled reader", 4, took, "process exited", 0, 0})
}

func TestFault_PanicAnswers500AndStreamsContinue(t *testing.T) {
	logs := newLogBuffer()
	logger := slog.New(slog.NewTextHandler(logs, nil))
	cfg, err := parseConfig([]string{"-interval", "10ms"}, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	app, _ := newApp(cfg, logger, new(atomic.Bool))
	// The seam: a route on the same handler path as /sse (offWorker, adaptor and recoverStream) that panics.
	app.Get("/boom", offWorker(adaptor.HTTPHandler(recoverStream(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		panic("boom")
	}), logger))))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go app.Listener(ln)
	t.Cleanup(func() { app.ShutdownWithTimeout(5 * time.Second) })
	srv := &testServer{url: "http://" + ln.Addr().String(), logs: logs}
	canary := openCanaries(t, srv.url, 2)

	start := time.Now()
	for range 3 {
		resp, body := srv.get(t, http.MethodGet, "/boom", nil)
		if resp.StatusCode != http.StatusInternalServerError {
			t.Errorf("GET /boom = %d %q, want 500", resp.StatusCode, body)
		}
	}
	if !strings.Contains(logs.String(), "panic=boom") || !strings.Contains(logs.String(), "TestFault_PanicAnswers500AndStreamsContinue") {
		t.Errorf("log lacks the panic with its stack:\n%s", logs.String())
	}
	gaps := canary.check(canaryMaxWait)
	if got := srv.healthClients(t); got != 2 {
		t.Errorf("/healthz after a panic: clients = %d, want the 2 canaries", got)
	}
	leaks := expectBaseline(t, srv, 2)
	record(soakRow{"panic in a handler", 3, time.Since(start), leaks, gaps, 2})
}
