package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestHandler_SendsEventStreamHeaders(t *testing.T) {
	t.Parallel()
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

func TestHandler_PreflightAllowsAnyOrigin(t *testing.T) {
	t.Parallel()
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

func TestHandler_ShutdownEndsStreamsUnderNetHTTP(t *testing.T) {
	t.Parallel()
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
	if got := h.StreamsOpen(); got != 0 {
		t.Errorf("%d streams open after Shutdown, want 0", got)
	}
}

func TestHandler_AnswersOverMaxClients(t *testing.T) {
	t.Parallel()
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

// hidesHijack is a net/http middleware's writer that cannot take a connection over, as
// many logging and compressing writers are: it has no Hijack and no Unwrap.
type hidesHijack struct{ http.ResponseWriter }

// panicsOnWrite is a net/http middleware's writer whose Write panics, as a broken one may.
type panicsOnWrite struct{ http.ResponseWriter }

// Write panics.
func (w panicsOnWrite) Write([]byte) (int, error) { panic("write panicked") }

// Unwrap lets http.ResponseController flush and set deadlines on the writer underneath.
func (w panicsOnWrite) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Hijack refuses to hand the connection over, so that the stream writes through Write.
func (w panicsOnWrite) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return nil, nil, http.ErrNotSupported
}

func TestHandler_OpenedMinusEndedIsOpenAfterEveryFailure(t *testing.T) {
	cfg, err := parseConfig([]string{"-interval", "1h", "-keepalive", "1h"}, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	h := handleSSE(cfg.stream, slog.New(slog.NewTextHandler(io.Discard, nil)))
	wrap := map[string]func(http.ResponseWriter) http.ResponseWriter{
		"/plain":          func(w http.ResponseWriter) http.ResponseWriter { return w },
		"/cannot-hijack":  func(w http.ResponseWriter) http.ResponseWriter { return hidesHijack{w} },
		"/panics-writing": func(w http.ResponseWriter) http.ResponseWriter { return panicsOnWrite{w} },
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(wrap[r.URL.Path](w), r)
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the panic's own report
	srv.Start()
	t.Cleanup(srv.Close) // after the stream's own cleanup closes it
	admin := httptest.NewServer(adminHandler(h.metrics, handlePublish(h.broker, "", nil)))
	t.Cleanup(admin.Close)

	balanced := func(what string) {
		t.Helper()
		eventually(t, 5*time.Second, what+": opened - ended == open", func() bool {
			m := scrape(t, admin.URL)
			ended := 0.0
			for key, v := range m {
				if strings.HasPrefix(key, "sse_streams_ended_total{") {
					ended += v
				}
			}
			return m["sse_streams_opened_total"]-ended == m["sse_streams_open"]
		})
	}
	open := openStreamAt(t, srv.URL+"/plain", nil)
	open.next(t)
	balanced("one stream open")

	// An HTTP/1.0 request needs the take-over; an HTTP/1.1 one writes through the writer.
	for _, request := range []string{"GET /cannot-hijack HTTP/1.0\r\nHost: x\r\n\r\n", "GET /panics-writing HTTP/1.1\r\nHost: x\r\n\r\n"} {
		conn, err := net.Dial("tcp", strings.TrimPrefix(srv.URL, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(conn, request)
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.Copy(io.Discard, conn); err != nil {
			t.Errorf("%q: %v, want the server to close the connection", request, err)
		}
		conn.Close()
		balanced(strings.Fields(request)[1])
	}
	if got := metric(t, admin.URL, "sse_streams_open"); got != 1 {
		t.Errorf("sse_streams_open = %v after two failed streams beside one open, want 1", got)
	}
}

func TestHandler_StreamsOpenNeverExceedsMaxClients(t *testing.T) {
	cfg, err := parseConfig([]string{"-interval", "1h", "-keepalive", "1h", "-max-clients", "1"}, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	h := handleSSE(cfg.stream, slog.New(slog.NewTextHandler(io.Discard, nil)))
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close) // after the stream's own cleanup closes it
	openStreamAt(t, srv.URL, nil).next(t)

	var highest atomic.Int64
	done := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for {
			select {
			case <-done:
				return
			default:
			}
			if n := h.StreamsOpen(); n > highest.Load() {
				highest.Store(n)
			}
		}
	}()
	var wg sync.WaitGroup
	client := &http.Client{Timeout: 5 * time.Second}
	for range 4 {
		wg.Go(func() {
			for range 100 {
				resp, err := client.Get(srv.URL)
				if err != nil {
					t.Errorf("GET over -max-clients: %v", err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusServiceUnavailable {
					t.Errorf("GET over -max-clients = %d, want 503", resp.StatusCode)
					return
				}
			}
		})
	}
	wg.Wait()
	close(done)
	<-watched
	if got := highest.Load(); got > 1 {
		t.Errorf("streams open read %d at -max-clients 1 while 400 requests were turned away, want never above 1", got)
	}
}

func TestHandler_HealthReportsStreamsOpen(t *testing.T) {
	srv := startServer(t)
	openStream(t, srv.url, nil).next(t)
	_, body := srv.get(t, http.MethodGet, "/healthz", nil)
	var got map[string]any
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatalf("GET /healthz = %q: %v", body, err)
	}
	want := map[string]any{"status": "ok", "streams_open": 1.0}
	if len(got) != len(want) || got["status"] != want["status"] || got["streams_open"] != want["streams_open"] {
		t.Errorf("GET /healthz = %s, want %v: the number sse_streams_open counts, under the same name", body, want)
	}
}

func TestHandler_AnswersOverMaxClientsPerIP(t *testing.T) {
	srv := startServer(t, "-max-clients-per-ip", "2", "-retry", "2s", "-retry-spread", "1s")
	first := openStream(t, srv.url, nil)
	first.next(t)
	openStream(t, srv.url, nil).next(t)

	resp, body := srv.get(t, http.MethodGet, "/sse", nil)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "2" || !strings.Contains(body, "too many") {
		t.Fatalf("third stream from one address without Accept = %d %q, Retry-After %q, want 503 saying why and 2", resp.StatusCode, body, resp.Header.Get("Retry-After"))
	}
	resp, body = srv.get(t, http.MethodGet, "/sse", http.Header{"Accept": {"text/event-stream"}})
	frames := parseFrames([]byte(body))
	if resp.StatusCode != http.StatusOK || len(frames) != 1 || frames[0].isEvent || frames[0].retry == "" {
		t.Fatalf("third stream from one address with Accept: text/event-stream = %d %q, want 200 with only a retry: and a comment", resp.StatusCode, body)
	}
	if got := metric(t, srv.adminURL, `sse_requests_rejected_total{reason="max_clients_per_ip"}`); got != 2 {
		t.Errorf("rejected for max_clients_per_ip = %v, want 2", got)
	}
	if got := metric(t, srv.adminURL, "sse_streams_open"); got != 2 {
		t.Errorf("sse_streams_open = %v after two refusals, want 2", got)
	}
	first.close()
	eventually(t, 20*time.Second, "the closed stream gives its address's place back", func() bool {
		return metric(t, srv.adminURL, "sse_streams_open") < 2
	})
	openStream(t, srv.url, nil).next(t)
}

func TestHandler_MaxClientsPerIPReadsForwardedOnlyFromTrustedProxies(t *testing.T) {
	forwarded := func(header, value string) http.Header {
		return http.Header{header: {value}, "Accept": {"text/event-stream"}}
	}
	t.Run("trusted", func(t *testing.T) {
		srv := startServer(t, "-max-clients-per-ip", "1", "-trusted-proxies", "10.0.0.0/8, 127.0.0.1")
		// Each proxy appends who it got the request from: the client's own entries are on the left.
		openStream(t, srv.url, forwarded("X-Forwarded-For", "198.51.100.7, 203.0.113.1")).next(t)
		openStream(t, srv.url, forwarded("X-Forwarded-For", "203.0.113.2, 10.1.2.3")).next(t)
		openStream(t, srv.url, forwarded("Forwarded", `for=203.0.113.3;proto=https, for="10.0.0.1:4711"`)).next(t)
		openStream(t, srv.url, forwarded("Forwarded", `for="[2001:db8::1]:4711"`)).next(t)
		for _, again := range []http.Header{
			forwarded("X-Forwarded-For", "203.0.113.1"),
			forwarded("X-Forwarded-For", "203.0.113.2"),
			forwarded("Forwarded", "for=203.0.113.3"),
			forwarded("Forwarded", `for="[2001:db8::2]"`), // the same /64
		} {
			resp, body := srv.get(t, http.MethodGet, "/sse", again)
			if frames := parseFrames([]byte(body)); resp.StatusCode != http.StatusOK || len(frames) != 1 || frames[0].isEvent {
				t.Errorf("a second stream for %v = %d %q, want the overload answer", again, resp.StatusCode, body)
			}
		}
		if got := metric(t, srv.adminURL, `sse_requests_rejected_total{reason="max_clients_per_ip"}`); got != 4 {
			t.Errorf("rejected for max_clients_per_ip = %v, want 4", got)
		}
	})
	t.Run("untrusted", func(t *testing.T) {
		srv := startServer(t, "-max-clients-per-ip", "1", "-trusted-proxies", "10.0.0.0/8")
		openStream(t, srv.url, forwarded("X-Forwarded-For", "203.0.113.1")).next(t)
		resp, body := srv.get(t, http.MethodGet, "/sse", forwarded("X-Forwarded-For", "203.0.113.2"))
		if frames := parseFrames([]byte(body)); resp.StatusCode != http.StatusOK || len(frames) != 1 || frames[0].isEvent {
			t.Errorf("a second stream from an untrusted peer naming another client = %d %q, want the overload answer", resp.StatusCode, body)
		}
	})
}
