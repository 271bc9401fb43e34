package main

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
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
	if got := h.Clients(); got != 0 {
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
