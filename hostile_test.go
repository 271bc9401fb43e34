package main

// Hostile clients: what the worst clients on the internet send, each beside canary
// streams, and what must hold afterwards. The scenarios that exhaust a process-wide
// resource run the real binary as a child process.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// openFilesEnv sets RLIMIT_NOFILE of a process started by startProcessWith, so that a test
// can run out of file descriptors without opening 20,000 sockets.
const openFilesEnv = "SSE_DASHBOARD_NOFILE"

// limitOpenFiles lowers this process's open-file limit to value, if it is set. It runs in
// a re-executed test binary before main, so the limit is the child's alone.
func limitOpenFiles(value string) {
	if value == "" {
		return
	}
	n, err := strconv.ParseUint(value, 10, 64)
	if err == nil {
		err = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: n, Max: n})
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s=%q: %v\n", openFilesEnv, value, err)
		os.Exit(2)
	}
}

// running fails the test if the process has exited.
func (p *serverProcess) running(t *testing.T) {
	t.Helper()
	select {
	case <-p.exited:
		t.Fatalf("the server process exited (%s), want it serving", p.cmd.ProcessState)
	default:
	}
}

func TestHostile_RunningOutOfFileDescriptorsIsSurvived(t *testing.T) {
	skipShort(t, "about 20 s: a child process run out of file descriptors until its idle connections time out")
	nofile := scale(512, 10000)
	// The idle connections must outlive the time it takes to open them all.
	readTimeout := time.Duration(scale(1, 10)) * time.Second
	proc := startProcessWith(t, processOptions{nofile: nofile}, "-interval", "20ms", "-read-timeout", readTimeout.String())
	canary := openCanaries(t, proc.url, 2)
	proc.noteGoroutines(t)
	errorsBefore := metric(t, proc.adminURL, "sse_accept_errors_total")
	start := time.Now()

	// Idle connections, more than the process can hold: the kernel queues the rest until
	// the server can accept them.
	idle := make([]net.Conn, 0, nofile+100)
	for range nofile + 100 {
		conn, err := net.DialTimeout("tcp", strings.TrimPrefix(proc.url, "http://"), 5*time.Second)
		if err != nil {
			t.Fatalf("dial idle connection %d: %v", len(idle), err)
		}
		idle = append(idle, conn)
	}
	t.Cleanup(func() {
		for _, c := range idle {
			c.Close()
		}
	})
	eventually(t, 2*readTimeout+20*time.Second, "the server runs out of file descriptors and says so", func() bool {
		proc.running(t)
		samples, err := tryScrape(proc.adminURL)
		return err == nil && samples["sse_accept_errors_total"] > errorsBefore
	})
	// -read-timeout closes every idle connection, the queued ones once they are accepted.
	var wg sync.WaitGroup
	var open atomic.Int64
	for _, c := range idle {
		wg.Go(func() {
			c.SetReadDeadline(time.Now().Add(3*readTimeout + 20*time.Second))
			if _, err := io.Copy(io.Discard, c); err != nil {
				open.Add(1)
			}
		})
	}
	wg.Wait()
	if n := open.Load(); n > 0 {
		t.Errorf("%d of %d idle connections still open after %s, want every one closed by -read-timeout", n, len(idle), 3*readTimeout+20*time.Second)
	}
	proc.running(t)
	gaps := canary.check(canaryMaxWait)
	// New clients are served again.
	openStream(t, proc.url, nil).next(t)
	leaks := expectBaseline(t, proc, 3)
	errs := metric(t, proc.adminURL, "sse_accept_errors_total")
	t.Logf("%d idle connections against %d open files: %v accept errors retried, all closed in %s",
		len(idle), nofile, errs-errorsBefore, time.Since(start).Round(time.Millisecond))
	record(soakRow{fmt.Sprintf("idle connections over the open-file limit (%d)", nofile), len(idle), time.Since(start), leaks, gaps, 2})
}

func TestHostile_MaxClientsFitsTheOpenFileLimit(t *testing.T) {
	skipShort(t, "child processes at low open-file limits (3 s)")
	t.Parallel()
	const nofile, margin = 512, 64
	proc := startProcessWith(t, processOptions{nofile: nofile}, "-interval", "1h", "-keepalive", "1h")
	fitted := nofile - margin
	if !strings.Contains(proc.logs.String(), "lowering -max-clients") ||
		!strings.Contains(proc.logs.String(), fmt.Sprintf("max_clients=%d ", fitted)) {
		t.Fatalf("start-up under %d open files with -max-clients 10000: want a warning and max_clients=%d; log:\n%s",
			nofile, fitted, proc.logs.String())
	}
	start := time.Now()
	statuses := map[int]int{}
	for i := range fitted + 20 {
		conn := dialRaw(t, proc.url)
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(conn, streamRequest)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("stream %d: no HTTP answer: %v", i, err)
		}
		statuses[resp.StatusCode]++
		if resp.StatusCode != http.StatusOK {
			conn.Close()
		}
	}
	proc.running(t)
	if statuses[http.StatusOK] != fitted || statuses[http.StatusServiceUnavailable] != 20 {
		t.Errorf("statuses = %v, want %d × 200 and 20 × the overload answer (503)", statuses, fitted)
	}
	if n := metric(t, proc.adminURL, "sse_streams_open"); int(n) != fitted {
		t.Errorf("open streams = %v, want %d", n, fitted)
	}
	record(soakRow{"streams over an open-file limit of 512", fitted + 20, time.Since(start), "process kept serving", 0, 0})
}

// errListener is a listener whose Accept fails with errs in turn, then waits to be closed.
type errListener struct {
	net.Listener
	mu     sync.Mutex
	errs   []error
	closed chan struct{}
}

// Accept returns the next error, or net.ErrClosed once the listener is closed.
func (l *errListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	if len(l.errs) > 0 {
		err := l.errs[0]
		l.errs = l.errs[1:]
		l.mu.Unlock()
		return nil, err
	}
	l.mu.Unlock()
	<-l.closed
	return nil, net.ErrClosed
}

// Close ends the Accept that waits.
func (l *errListener) Close() error {
	close(l.closed)
	return nil
}

func TestConnListener_BacksOffOnTemporaryErrorsUntilClosed(t *testing.T) {
	t.Parallel()
	emfile := &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	inner := &errListener{errs: []error{emfile, emfile, emfile, emfile}, closed: make(chan struct{})}
	acceptErrors := prometheus.NewCounter(prometheus.CounterOpts{Name: "accept_errors_total", Help: "Failed accepts."})
	ln := newConnListener(inner, slog.New(slog.NewTextHandler(io.Discard, nil)), acceptErrors)
	accepted := make(chan error, 1)
	start := time.Now()
	go func() {
		_, err := ln.Accept()
		accepted <- err
	}()
	// The fourth try comes after 5 + 10 + 20 ms of back-off.
	eventually(t, 5*time.Second, "every failed accept is retried", func() bool {
		inner.mu.Lock()
		defer inner.mu.Unlock()
		return len(inner.errs) == 0
	})
	if took := time.Since(start); took < 35*time.Millisecond {
		t.Errorf("the fourth try came %s after the first, want a back-off of 5+10+20ms between them", took)
	}
	var counted dto.Metric
	if err := acceptErrors.Write(&counted); err != nil || counted.GetCounter().GetValue() != 4 {
		t.Errorf("accept errors counted: %v (%v), want 4", counted.GetCounter().GetValue(), err)
	}
	ln.Close()
	select {
	case err := <-accepted:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("Accept after Close = %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Accept did not return after Close")
	}
	if err := ln.Close(); err != nil {
		t.Errorf("a second Close = %v, want nil: fasthttp's shutdown closes the listener again", err)
	}

	// Any other error ends Accept at once.
	other := &errListener{errs: []error{errors.New("bad descriptor")}, closed: make(chan struct{})}
	if _, err := newConnListener(other, slog.New(slog.NewTextHandler(io.Discard, nil)), acceptErrors).Accept(); err == nil {
		t.Error("Accept on a permanent error = nil, want the error")
	}
}

func TestHostile_AnnouncedBodyGets413Unread(t *testing.T) {
	skipShort(t, "about 20 s: 2,000 announced bodies against a child process")
	proc := startProcess(t, "-interval", "20ms")
	canary := openCanaries(t, proc.url, 2)
	proc.noteGoroutines(t)
	rss := func() int {
		kb, err := rssKB(proc.cmd.Process.Pid)
		if err != nil {
			t.Fatal(err)
		}
		return kb
	}
	start := rss()
	// A first round lets the pools, the worker goroutines and the garbage between two
	// collections grow to what 50 clients at once need; a second as long must cost
	// nothing more. Either way nothing near the 4 MiB announced by each.
	n := scale(1000, 10000)
	began := time.Now()
	announceBodies(t, proc.url, n)
	first := rss()
	announceBodies(t, proc.url, n)
	took := time.Since(began)
	proc.running(t)
	second := rss()
	t.Logf("%d announced 4 MiB bodies answered 413 in %s; RSS %d KB, then %d KB after %d, %d KB after %d",
		2*n, took.Round(time.Millisecond), start, first, n, second, 2*n)
	const marginKB, totalKB = 8 << 10, 64 << 10
	if second-first > marginKB || second-start > totalKB {
		t.Errorf("RSS %d KB before, %d KB after %d announced bodies, %d KB after %d: want at most %d KB more the second time, %d KB in all",
			start, first, n, second, 2*n, marginKB, totalKB)
	}
	gaps := canary.check(canaryMaxWait)
	leaks := expectBaseline(t, proc, 2)
	record(soakRow{fmt.Sprintf("announced 4 MiB bodies (RSS %+d KB)", second-start), 2 * n, took, leaks, gaps, 2})
}

// announceBodies sends n header blocks that announce a 4 MiB body and send none of it
// (62 bytes each), from 50 clients at once, and checks that each gets 413 at once.
func announceBodies(t *testing.T, baseURL string, n int) {
	t.Helper()
	const request = "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 4194304\r\n\r\n"
	var (
		next   atomic.Int64
		failed atomic.Bool
		wg     sync.WaitGroup
	)
	for range 50 {
		wg.Go(func() {
			for next.Add(1) <= int64(n) && !failed.Load() {
				conn, err := net.DialTimeout("tcp", strings.TrimPrefix(baseURL, "http://"), 5*time.Second)
				if err != nil {
					t.Errorf("dial: %v", err)
					failed.Store(true)
					return
				}
				conn.SetDeadline(time.Now().Add(5 * time.Second))
				io.WriteString(conn, request)
				resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
				var body []byte
				if err == nil {
					body, _ = io.ReadAll(io.LimitReader(resp.Body, 1<<10))
				}
				conn.Close()
				if err != nil || resp.StatusCode != http.StatusRequestEntityTooLarge || bytes.Count(bytes.TrimSpace(body), []byte("\n")) != 0 {
					if failed.CompareAndSwap(false, true) {
						t.Errorf("an announced 4 MiB body: %v %q, want 413 at once with a one-line reason", err, body)
					}
					return
				}
			}
		})
	}
	wg.Wait()
}

// browserHeaders are the headers a browser sends beside its cookies when it opens an
// EventSource.
const browserHeaders = "Host: sse-dashboard\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n" +
	"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36\r\n" +
	"Referer: http://sse-dashboard/\r\nAccept-Encoding: gzip, deflate, br, zstd\r\nAccept-Language: en-US,en;q=0.9\r\n" +
	"Sec-Fetch-Dest: empty\r\nSec-Fetch-Mode: cors\r\nSec-Fetch-Site: same-origin\r\n"

func TestHostile_BigRequestHeadersAreServed(t *testing.T) {
	srv := startServer(t, "-interval", "20ms")
	canary := openCanaries(t, srv.url, 2)
	start := time.Now()
	tests := []struct {
		name   string
		cookie int // bytes of cookie value
		want   int
	}{
		{"4 KB cookie", 4 << 10, http.StatusOK},
		{"15 KB cookie", 15 << 10, http.StatusOK},
		{"17 KB cookie", 17 << 10, http.StatusRequestHeaderFieldsTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn := dialRaw(t, srv.url)
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			io.WriteString(conn, "GET /sse HTTP/1.1\r\n"+browserHeaders+"Cookie: session="+strings.Repeat("x", tt.cookie)+"\r\n\r\n")
			reader := bufio.NewReader(conn)
			resp, err := http.ReadResponse(reader, nil)
			if err != nil {
				t.Fatalf("no HTTP answer: %v", err)
			}
			if resp.StatusCode != tt.want {
				t.Fatalf("status = %d, want %d", resp.StatusCode, tt.want)
			}
			if tt.want != http.StatusOK {
				body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
				if bytes.Count(bytes.TrimSpace(body), []byte("\n")) != 0 || len(body) == 0 {
					t.Errorf("body = %q, want a one-line reason", body)
				}
				return
			}
			stream := &sseStream{resp: resp, reader: bufio.NewReader(resp.Body)}
			stream.next(t)
			if ev := stream.nextEvent(t); ev.id != "1" {
				t.Errorf("first event id %q, want 1", ev.id)
			}
		})
	}
	gaps := canary.check(canaryMaxWait)
	leaks := expectBaseline(t, srv, 2)
	record(soakRow{"request headers of 4, 15 and 17 KB", len(tests), time.Since(start), leaks, gaps, 2})
}

// streamCostPerStream opens n streams with browser-like headers on a fresh process started
// with args and returns what each one added to the process's heap in use, in KB. A buffer
// that a stream kept would show there in full, while RSS counts only the pages written.
func streamCostPerStream(t *testing.T, n int, args ...string) float64 {
	t.Helper()
	// GOGC=10 keeps the garbage between two collections within a tenth of the live heap,
	// which the default would let grow as large as the live heap itself.
	proc := startProcessWith(t, processOptions{env: []string{"GOGC=10"}}, append([]string{"-interval", "1h", "-keepalive", "1h"}, args...)...)
	heap := func() float64 { return metric(t, proc.adminURL, "go_memstats_heap_inuse_bytes") }
	// One stream first, so the pools and the runtime have grown before the baseline.
	warm := dialRaw(t, proc.url)
	defer warm.Close()
	io.WriteString(warm, "GET /sse HTTP/1.1\r\n"+browserHeaders+"\r\n")
	eventually(t, 5*time.Second, "the first stream is open", func() bool {
		samples, _ := tryScrape(proc.adminURL)
		return samples["sse_streams_open"] == 1
	})
	before := heap()
	for range n {
		conn := dialRaw(t, proc.url)
		defer conn.Close()
		io.WriteString(conn, "GET /sse HTTP/1.1\r\n"+browserHeaders+"\r\n")
	}
	eventually(t, 20*time.Second, "every stream is open", func() bool {
		samples, _ := tryScrape(proc.adminURL)
		return int(samples["sse_streams_open"]) == n+1
	})
	return (heap() - before) / 1024 / float64(n)
}

func TestHostile_HeaderLimitCostsOpenStreamsNothing(t *testing.T) {
	skipShort(t, "two child processes holding 500 streams each")
	t.Parallel()
	n := scale(500, 2000)
	small := streamCostPerStream(t, n, "-max-header-bytes", "4096")
	big := streamCostPerStream(t, n, "-max-header-bytes", "16384")
	t.Logf("heap in use per open stream: %.1f KB with a 4 KiB header limit, %.1f KB with 16 KiB (%d streams)", small, big, n)
	// A read buffer kept for the life of a stream would add 12 KB to each.
	if big > small+4 {
		t.Errorf("heap per stream %.1f KB with -max-header-bytes 16384, %.1f KB with 4096: want at most 4 KB more", big, small)
	}
}

func TestHostile_IdleAndHalfSentConnectionsDoNotHoldShutdown(t *testing.T) {
	t.Parallel()
	// The default timeouts: -read-timeout 10s is longer than -shutdown-timeout 5s.
	proc := startProcess(t, "-interval", "50ms")
	stream := dialRaw(t, proc.url)
	defer stream.Close()
	io.WriteString(stream, streamRequest)
	streamReader := bufio.NewReader(stream)
	stream.SetReadDeadline(time.Now().Add(20 * time.Second))
	if resp, err := http.ReadResponse(streamReader, nil); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("stream: %v", err)
	}
	// One connection that never sends a byte, one idle after a request, one trickling a header.
	silent := dialRaw(t, proc.url)
	defer silent.Close()
	keepAlive := dialRaw(t, proc.url)
	defer keepAlive.Close()
	io.WriteString(keepAlive, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	keepAlive.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := http.ReadResponse(bufio.NewReader(keepAlive), nil); err != nil {
		t.Fatalf("GET /healthz: %v", err)
	}
	trickle := dialRaw(t, proc.url)
	defer trickle.Close()
	stopTrickle := make(chan struct{})
	defer close(stopTrickle)
	go func() {
		header := "GET /sse HTTP/1.1\r\nHost: x\r\nX-Slow: " + strings.Repeat("a", 1000)
		for i := range len(header) {
			select {
			case <-stopTrickle:
				return
			case <-time.After(50 * time.Millisecond):
			}
			if _, err := trickle.Write([]byte{header[i]}); err != nil {
				return
			}
		}
	}()
	// Long enough for the silent one to count as new, and the trickle to be under way.
	time.Sleep(500 * time.Millisecond)

	took := proc.signal(t, syscall.SIGTERM, 5*time.Second)
	if code := proc.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit code = %d, want 0", code)
	}
	// 1s wanted; twice that for a busy machine, still far below the 5s it would take.
	if took > 2*time.Second {
		t.Errorf("exit took %s after SIGTERM with idle and half-sent connections open, want about 1s at most", took)
	}
	rest, _ := io.ReadAll(streamReader)
	if !bytes.HasSuffix(rest, []byte("\r\n0\r\n\r\n")) {
		t.Errorf("the stream ended with %q, want its last chunk", rest[max(0, len(rest)-40):])
	}
	t.Logf("SIGTERM with a silent, an idle keep-alive and a trickling connection: exited in %s", took)
	record(soakRow{"SIGTERM with idle and half-sent connections", 4, took, "process exited", 0, 0})
}

func TestHostile_HTTP10GetsACloseDelimitedStream(t *testing.T) {
	srv := startServer(t, "-interval", "5ms", "-retry", "1500ms")
	canary := openCanaries(t, srv.url, 2)
	start := time.Now()

	conn := dialRaw(t, srv.url)
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(conn, "GET /sse HTTP/1.0\r\nHost: x\r\n\r\n")
	reader := bufio.NewReader(conn)
	status, fields := readHeaderBlock(t, reader)
	if !strings.HasPrefix(status, "HTTP/1.1 200 ") && !strings.HasPrefix(status, "HTTP/1.0 200 ") {
		t.Fatalf("status line %q, want 200", status)
	}
	if te := fields["Transfer-Encoding"]; te != nil {
		t.Errorf("Transfer-Encoding %q to an HTTP/1.0 client, want none (RFC 9112, section 6.1)", te)
	}
	if cl := fields["Content-Length"]; cl != nil {
		t.Errorf("Content-Length %q on a stream, want none", cl)
	}
	if c := fields["Connection"]; len(c) > 1 || len(c) == 1 && c[0] != "close" {
		t.Errorf("Connection %q, want at most one, close", c)
	}
	if ct := fields["Content-Type"]; len(ct) != 1 || ct[0] != "text/event-stream" {
		t.Errorf("Content-Type %q, want text/event-stream", ct)
	}
	// The body is the stream itself, byte for byte: no chunk sizes.
	opening := make([]byte, len("retry: 1500\n: stream opened\n\n"))
	if _, err := io.ReadFull(reader, opening); err != nil || string(opening) != "retry: 1500\n: stream opened\n\n" {
		t.Fatalf("opening = %q, %v; want the retry frame alone", opening, err)
	}
	for want := 1; want <= 20; want++ {
		var raw []byte
		for !bytes.HasSuffix(raw, []byte("\n\n")) {
			line, err := reader.ReadBytes('\n')
			if err != nil {
				t.Fatalf("event %d: %v (read %q)", want, err, raw)
			}
			raw = append(raw, line...)
		}
		m := eventPattern.FindSubmatch(raw)
		if m == nil || string(m[1]) != strconv.Itoa(want) {
			t.Fatalf("event %d = %q, want id %d and one data line", want, raw, want)
		}
	}
	conn.Close()
	gaps := canary.check(canaryMaxWait)
	leaks := expectBaseline(t, srv, 2)
	record(soakRow{"HTTP/1.0 stream", 1, time.Since(start), leaks, gaps, 2})
}

func TestHostile_HTTP10StreamEndsCleanlyAtShutdown(t *testing.T) {
	t.Parallel()
	srv := startServer(t, "-interval", "20ms")
	conn := dialRaw(t, srv.url)
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(conn, "GET /sse HTTP/1.0\r\nHost: x\r\n\r\n")
	req, _ := http.NewRequest(http.MethodGet, srv.url+"/sse", nil)
	req.ProtoMajor, req.ProtoMinor = 1, 0
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil || resp.StatusCode != http.StatusOK || resp.ContentLength != -1 || len(resp.TransferEncoding) != 0 {
		t.Fatalf("HTTP/1.0 stream: %v, %+v; want 200 with a close-delimited body", err, resp)
	}
	stream := &sseStream{resp: resp, reader: bufio.NewReader(resp.Body)}
	stream.next(t)
	stream.nextEvent(t)
	if err := srv.stop(t, 5*time.Second); err != nil {
		t.Fatalf("run = %v, want nil", err)
	}
	if err := stream.readToEnd(); err != nil {
		t.Errorf("the HTTP/1.0 stream ended with %v, want the connection closed cleanly", err)
	}
	if got := srv.logs.count(`reason=shutdown`); got != 1 {
		t.Errorf("%d streams ended with the shutdown, want 1", got)
	}
}

func TestHostile_CurlReadsAnHTTP10Stream(t *testing.T) {
	t.Parallel()
	curl := requireTool(t, "", "curl", "curl")
	srv := startServer(t, "-interval", "5ms", "-max-lifetime", "300ms")
	out, err := exec.Command(curl, "--http1.0", "-sS", "-N", "--max-time", "10", srv.url+"/sse").CombinedOutput()
	if err != nil {
		t.Fatalf("curl --http1.0: %v\n%s", err, out)
	}
	frames := parseFrames(out)
	if len(frames) < 5 || frames[0].retry != "3000" {
		t.Fatalf("curl --http1.0 read %q, want the opening and several events", out)
	}
	for i, f := range frames[1:] {
		if !f.isEvent || f.id != strconv.Itoa(i+1) || !strings.HasPrefix(f.data, `{"User":`) {
			t.Fatalf("frame %d read by curl = %+v, want event %d", i+1, f, i+1)
		}
	}
	if !bytes.HasSuffix(out, []byte("\n\n")) {
		t.Errorf("curl's output ends with %q, want the end of a frame", out[max(0, len(out)-20):])
	}
}

// readHeaderBlock reads a response's status line and header fields as they are on the
// wire: Go's client hides Connection and repeated fields.
func readHeaderBlock(t *testing.T, reader *bufio.Reader) (string, map[string][]string) {
	t.Helper()
	var head []string
	for {
		line, err := reader.ReadString('\n')
		if err != nil {
			t.Fatalf("header block: %v (read %q)", err, head)
		}
		if line == "\r\n" {
			break
		}
		head = append(head, strings.TrimRight(line, "\r\n"))
	}
	fields := map[string][]string{}
	for _, line := range head[1:] {
		name, value, _ := strings.Cut(line, ":")
		key := http.CanonicalHeaderKey(name)
		fields[key] = append(fields[key], strings.TrimSpace(value))
	}
	return head[0], fields
}

func TestHostile_ConnectionCloseGetsOneConnectionHeader(t *testing.T) {
	t.Parallel()
	srv := startServer(t, "-interval", "5ms")
	conn := dialRaw(t, srv.url)
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(conn, "GET /sse HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	reader := bufio.NewReader(conn)
	status, fields := readHeaderBlock(t, reader)
	if !strings.HasPrefix(status, "HTTP/1.1 200 ") {
		t.Fatalf("status line %q, want 200", status)
	}
	if got := fields["Connection"]; len(got) != 1 || got[0] != "close" {
		t.Errorf("Connection = %q, want exactly close", got)
	}
	if got := fields["Transfer-Encoding"]; len(got) != 1 || got[0] != "chunked" {
		t.Errorf("Transfer-Encoding = %q, want chunked", got)
	}
	stream := &sseStream{resp: &http.Response{Body: conn}, reader: bufio.NewReader(httputil.NewChunkedReader(reader))}
	stream.next(t)
	if ev := stream.nextEvent(t); ev.id != "1" {
		t.Errorf("first id %q, want 1", ev.id)
	}
}

func TestHostile_ChurnLogIsBounded(t *testing.T) {
	// The default -log-rate.
	srv := startServer(t, "-interval", "10ms")
	canary := openCanaries(t, srv.url, 2)
	const rate = 50
	before := metric(t, srv.adminURL, "sse_streams_opened_total")
	n := scale(1000, 10000)
	start := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for next.Add(1) <= int64(n) {
				churnOnce(t, srv.url, 2) // connect, ask for the stream, reset
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	leaks := expectBaseline(t, srv, 2)
	ended := int(metric(t, srv.adminURL, "sse_streams_opened_total") - before)

	// Every stream that ended is either logged or counted in a summary line.
	disconnect := regexp.MustCompile(`msg="client disconnected" .*`)
	summary := regexp.MustCompile(`msg="client disconnected lines not logged" lines=(\d+)`)
	var lines, held int
	var logged []string
	eventually(t, 5*time.Second, "every stream that ended is logged or counted", func() bool {
		logged = disconnect.FindAllString(srv.logs.String(), -1)
		lines, held = len(logged), 0
		for _, m := range summary.FindAllStringSubmatch(srv.logs.String(), -1) {
			k, _ := strconv.Atoi(m[1])
			held += k
		}
		return lines+held == ended
	})
	seconds := int(time.Since(start)/time.Second) + 2
	if lines > rate*seconds {
		t.Errorf("%d disconnect lines for %d streams in %s, want at most %d a second", lines, ended, took, rate)
	}
	for _, line := range logged {
		if strings.Contains(line, "reason=client_gone") && strings.Contains(line, "error=") {
			t.Errorf("a client that left is logged with an error: %s", line)
			break
		}
	}
	if n := srv.logs.count(`msg="client connected"`); n != 0 {
		t.Errorf("%d connect lines at the default level, want none (debug only)", n)
	}
	gaps := canary.check(canaryMaxWait)
	t.Logf("%d connect-and-reset cycles in %s: %d streams, %d lines logged, %d counted in summaries, %d bytes of log",
		n, took.Round(time.Millisecond), ended, lines, held, len(srv.logs.String()))
	record(soakRow{fmt.Sprintf("connect-and-reset churn (%d log lines)", lines), n, took, leaks, gaps, 2})
}

func TestLogLimit_SummarisesWhatItHoldsBack(t *testing.T) {
	t.Parallel()
	logs := newLogBuffer()
	limit := newLogLimit(slog.New(slog.NewTextHandler(logs, nil)), 3, "held back")
	passed := 0
	for i := range 10 {
		if limit.allow([]string{"a", "b"}[i%2]) {
			passed++
		}
	}
	if passed != 3 {
		t.Errorf("%d of 10 lines let through within a second, want 3", passed)
	}
	logs.waitFor(t, regexp.MustCompile(`msg="(held back)" lines=7 limit_per_second=3 a=3 b=4`), 5*time.Second)
	if !limit.allow("a") {
		t.Error("the first line of the next second was held back")
	}
	limit.flush()
	if got := logs.count("held back"); got != 1 {
		t.Errorf("%d summary lines, want 1: a flush with nothing held logs nothing", got)
	}
	unlimited := newLogLimit(slog.New(slog.NewTextHandler(io.Discard, nil)), 0, "held back")
	for range 1000 {
		if !unlimited.allow("a") {
			t.Fatal("a rate of 0 held a line back, want no limit")
		}
	}
}

func TestHostile_AdminClosesIdleKeepAliveConnections(t *testing.T) {
	proc := startProcess(t, "-idle-timeout", "1s")
	kept, err := net.DialTimeout("tcp", strings.TrimPrefix(proc.adminURL, "http://"), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer kept.Close()
	io.WriteString(kept, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
	reader := bufio.NewReader(kept)
	resp, err := http.ReadResponse(reader, nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics on a raw connection: %v, %v", resp, err)
	}
	io.Copy(io.Discard, resp.Body)
	kept.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := reader.ReadByte(); err != io.EOF {
		t.Errorf("an idle keep-alive connection to the admin port read %v within 10s at -idle-timeout 1s, want it closed (EOF)", err)
	}
}

func TestHostile_AdminConnectionsLeaveThePublicPortItsFiles(t *testing.T) {
	skipShort(t, "a child process at a low open-file limit (3 s)")
	const nofile = 256
	proc := startProcessWith(t, processOptions{nofile: nofile}, "-interval", "50ms")
	// More keep-alive connections to the admin port than the process has files, each
	// with a request it then leaves idle.
	flood := make([]net.Conn, 0, nofile+50)
	t.Cleanup(func() {
		for _, c := range flood {
			c.Close()
		}
	})
	var answered atomic.Int64
	for range nofile + 50 {
		conn, err := net.DialTimeout("tcp", strings.TrimPrefix(proc.adminURL, "http://"), 5*time.Second)
		if err != nil {
			t.Fatalf("dial admin connection %d: %v", len(flood), err)
		}
		io.WriteString(conn, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
		flood = append(flood, conn)
		go func() {
			if resp, err := http.ReadResponse(bufio.NewReader(conn), nil); err == nil {
				resp.Body.Close()
				answered.Add(1)
			}
		}()
	}
	// Wait until the admin server has taken all it will take: no answer for 3 s.
	last, stable := int64(-1), 0
	eventually(t, 60*time.Second, "the admin server stops taking connections", func() bool {
		if n := answered.Load(); n != last || n == 0 {
			last, stable = n, 0
			return false
		}
		stable++
		time.Sleep(500 * time.Millisecond)
		return stable >= 6
	})
	if last > adminMaxConns {
		t.Errorf("the admin server answered %d connections at once, want at most %d", last, adminMaxConns)
	}
	// The public port still answers every time, and still opens streams.
	client := &http.Client{Timeout: 5 * time.Second}
	for i := range 5 {
		resp, err := client.Get(proc.url + "/healthz")
		if err != nil {
			t.Fatalf("GET /healthz %d with %d connections on the admin port: %v", i, len(flood), err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /healthz %d = %d, want 200", i, resp.StatusCode)
		}
	}
	openStream(t, proc.url, nil).nextEvent(t)
	proc.running(t)
}

func TestHostile_ServerErrorLinesAreStructuredAndRateLimited(t *testing.T) {
	const nofile = 128
	proc := startProcessWith(t, processOptions{nofile: nofile}, "-log-format", "json", "-read-timeout", "20s")
	// Idle connections to the public port take every file the process has.
	idle := make([]net.Conn, 0, nofile+50)
	t.Cleanup(func() {
		for _, c := range idle {
			c.Close()
		}
	})
	for range nofile + 50 {
		conn, err := net.DialTimeout("tcp", strings.TrimPrefix(proc.url, "http://"), 5*time.Second)
		if err != nil {
			t.Fatalf("dial idle connection %d: %v", len(idle), err)
		}
		idle = append(idle, conn)
	}
	proc.logs.waitFor(t, regexp.MustCompile(`"msg":"accept failed, retrying"`), 20*time.Second)
	// A connection to the admin port makes its server's accept fail too, for as long as
	// the files stay taken.
	conn, err := net.DialTimeout("tcp", strings.TrimPrefix(proc.adminURL, "http://"), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	proc.logs.waitFor(t, regexp.MustCompile(`(?i)"msg":"admin listener".*accept`), 20*time.Second)
	// Its server retries after 5 ms, doubling to 1 s: more lines in the first second than
	// the limit lets through, so a summary counts the rest.
	proc.logs.waitFor(t, regexp.MustCompile(`"msg":"admin listener lines not logged"`), 20*time.Second)
	for _, c := range idle {
		c.Close()
	}
	proc.signal(t, os.Interrupt, 20*time.Second)
	took := time.Since(start)

	adminLines := 0
	for line := range strings.SplitSeq(strings.TrimSpace(proc.logs.String()), "\n") {
		var entry map[string]any
		if err := json.Unmarshal([]byte(line), &entry); err != nil {
			t.Errorf("output line %q is not JSON under -log-format json: %v", line, err)
			continue
		}
		if entry["msg"] == "admin listener" {
			adminLines++
		}
	}
	if limit := int(took/time.Second) + 2; adminLines > limit {
		t.Errorf("%d admin listener lines in %s, want at most one a second (%d)", adminLines, took, limit)
	}
}
