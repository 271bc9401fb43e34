package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// delta is what every sample moved by between two scrapes.
func delta(before, after map[string]float64) map[string]float64 {
	d := make(map[string]float64)
	for k, v := range after {
		d[k] = v - before[k]
	}
	return d
}

// readAll reads a stream until the server ends it, and returns its frames.
func readAll(t *testing.T, s *sseStream) []frame {
	t.Helper()
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, s.reader); err != nil {
		t.Fatalf("stream cut with %v, want a clean end", err)
	}
	return parseFrames(buf.Bytes())
}

func TestMetrics_CountExactlyWhatTheWireCarried(t *testing.T) {
	t.Parallel()
	srv := startServer(t, "-interval", "10ms", "-keepalive", "1h", "-max-lifetime", "400ms", "-max-clients", "1")
	before := scrape(t, srv.adminURL)

	// A stream that runs to its lifetime: everything the server wrote reached this client.
	events := 0
	for _, f := range readAll(t, openStream(t, srv.url, nil)) {
		if f.isEvent {
			events++
		}
	}
	if events < 5 {
		t.Fatalf("read %d events in a 400ms stream at 10ms, want several", events)
	}
	var d map[string]float64
	eventually(t, 5*time.Second, "the metrics count the stream's end", func() bool {
		d = delta(before, scrape(t, srv.adminURL))
		return d[`sse_streams_ended_total{reason="max_lifetime"}`] == 1
	})
	want := map[string]float64{
		"sse_streams_opened_total":                             1,
		"sse_events_total":                                     float64(events),
		"sse_keepalives_total":                                 0,
		"sse_streams_open":                                     0,
		"sse_stream_duration_seconds_count":                    1,
		`sse_streams_ended_total{reason="client_gone"}`:        0,
		`sse_requests_rejected_total{reason="max_clients"}`:    0,
		`sse_requests_rejected_total{reason="not_acceptable"}`: 0,
	}
	for k, v := range want {
		if d[k] != v {
			t.Errorf("%s moved by %v, want %v", k, d[k], v)
		}
	}
	// One write for the opening, then one per batch of events.
	if writes := d["sse_write_duration_seconds_count"]; writes < 2 || writes > float64(events)+1 {
		t.Errorf("sse_write_duration_seconds_count moved by %v for %d events, want 2 to %d", writes, events, events+1)
	}

	// Overload and a refused Accept, while one stream holds the only place, on a server
	// whose streams have no lifetime to end them first.
	srv = startServer(t, "-interval", "10ms", "-max-clients", "1")
	before = scrape(t, srv.adminURL)
	held := openStream(t, srv.url, nil)
	held.next(t)
	srv.get(t, http.MethodGet, "/sse", http.Header{"Accept": {"text/event-stream"}})
	srv.get(t, http.MethodGet, "/sse", http.Header{"Accept": {"application/json"}})
	d = delta(before, scrape(t, srv.adminURL))
	for k, v := range map[string]float64{
		"sse_streams_open":                                     1,
		"sse_streams_opened_total":                             1,
		`sse_requests_rejected_total{reason="max_clients"}`:    1,
		`sse_requests_rejected_total{reason="not_acceptable"}`: 1,
	} {
		if d[k] != v {
			t.Errorf("with one stream held and two requests turned away: %s moved by %v, want %v", k, d[k], v)
		}
	}
	held.close()
	eventually(t, 5*time.Second, "a closed stream counts as client_gone", func() bool {
		d = delta(before, scrape(t, srv.adminURL))
		return d[`sse_streams_ended_total{reason="client_gone"}`] == 1 && d["sse_streams_open"] == 0
	})
	if got := srv.healthClients(t); got != 0 {
		t.Errorf("/healthz clients = %d, want 0 as sse_streams_open says", got)
	}
}

func TestMetrics_CountKeepalives(t *testing.T) {
	t.Parallel()
	srv := startServer(t, "-interval", "1h", "-keepalive", "50ms", "-max-lifetime", "400ms")
	before := scrape(t, srv.adminURL)
	keepalives := 0
	for _, f := range readAll(t, openStream(t, srv.url, nil)) {
		if len(f.comments) == 1 && f.comments[0] == "keepalive" {
			keepalives++
		}
	}
	if keepalives < 2 {
		t.Fatalf("read %d keepalives in a 400ms idle stream at 50ms, want several", keepalives)
	}
	eventually(t, 5*time.Second, "the metrics count every keepalive written", func() bool {
		d := delta(before, scrape(t, srv.adminURL))
		return d["sse_keepalives_total"] == float64(keepalives) && d["sse_events_total"] == 0
	})
}

func TestMetrics_CountShutdownEnds(t *testing.T) {
	t.Parallel()
	cfg, err := parseConfig([]string{"-interval", "1h", "-keepalive", "1h"}, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	h := handleSSE(cfg.stream, slog.New(slog.NewTextHandler(io.Discard, nil)))
	public := httptest.NewServer(h)
	defer public.Close()
	admin := httptest.NewServer(adminHandler(h.metrics, handlePublish(h.broker, "", nil)))
	defer admin.Close()
	for range 3 {
		openStream(t, public.URL, nil).next(t)
	}
	if got := metric(t, admin.URL, "sse_streams_open"); got != 3 {
		t.Fatalf("sse_streams_open = %v with 3 streams, want 3", got)
	}
	h.Shutdown(time.Now().Add(time.Second))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := h.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	m := scrape(t, admin.URL)
	if got := m[`sse_streams_ended_total{reason="shutdown"}`]; got != 3 {
		t.Errorf(`sse_streams_ended_total{reason="shutdown"} = %v, want 3`, got)
	}
	if got := m["sse_streams_open"]; got != 0 {
		t.Errorf("sse_streams_open = %v after shutdown, want 0", got)
	}
}

func TestMetrics_RuntimeProcessAndBuildInfo(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	m := scrape(t, srv.adminURL)
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes", "process_open_fds"} {
		if m[name] <= 0 {
			t.Errorf("%s = %v, want a positive sample", name, m[name])
		}
	}
	found := false
	for k := range m {
		found = found || strings.HasPrefix(k, "go_build_info{")
	}
	if !found {
		t.Error("/metrics has no go_build_info")
	}
}

func TestAdmin_OperatorRoutesOnlyOnTheAdminListener(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	for _, path := range []string{"/metrics", "/debug/vars", "/debug/pprof/", "/debug/pprof/goroutine?debug=1"} {
		if resp, _ := srv.get(t, http.MethodGet, path, nil); resp.StatusCode != http.StatusNotFound {
			t.Errorf("public GET %s = %d, want 404", path, resp.StatusCode)
		}
		resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(srv.adminURL + path)
		if err != nil {
			t.Fatalf("admin GET %s: %v", path, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("admin GET %s = %d, want 200", path, resp.StatusCode)
		}
	}
	if !strings.HasPrefix(srv.adminURL, "http://127.0.0.1:") {
		t.Errorf("admin listener at %s, want loopback", srv.adminURL)
	}
	cfg, err := parseConfig(nil, func(string) string { return "" }, io.Discard)
	if err != nil || !strings.HasPrefix(cfg.adminAddr, "127.0.0.1:") {
		t.Errorf("default -admin-addr = %q (%v), want a loopback address", cfg.adminAddr, err)
	}
}

func TestAdmin_EmptyAddressTurnsItOff(t *testing.T) {
	t.Parallel()
	logs := newLogBuffer()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-addr", "127.0.0.1:0", "-admin-addr", ""}, func(string) string { return "" }, logs)
	}()
	url, adminURL := waitListening(t, logs, 5*time.Second)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run = %v", err)
	}
	if adminURL != "" || url == "" {
		t.Errorf("with -admin-addr \"\": listening on %q, admin on %q; want no admin listener", url, adminURL)
	}
}

func TestReadyz_AnswersServiceUnavailableOnceShutdownStarts(t *testing.T) {
	t.Parallel()
	proc := startProcess(t, "-interval", "20ms", "-shutdown-delay", "1s")
	get := func() int {
		resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(proc.url + "/readyz")
		if err != nil {
			t.Fatalf("GET /readyz: %v", err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := get(); got != http.StatusOK {
		t.Fatalf("/readyz while serving = %d, want 200", got)
	}
	stream := openStream(t, proc.url, nil)
	stream.next(t)
	proc.cmd.Process.Signal(syscall.SIGTERM)
	proc.logs.waitFor(t, regexp.MustCompile(`msg=(draining)`), 5*time.Second)
	if got := get(); got != http.StatusServiceUnavailable {
		t.Errorf("/readyz once shutdown started = %d, want 503", got)
	}
	// Streams go on while the load balancers catch up.
	for range 3 {
		stream.nextEvent(t)
	}
	proc.wait(t, time.Second+5*time.Second)
	if code := proc.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit code = %d, want 0", code)
	}
}

func TestLog_JSONFormatHasTheSameFields(t *testing.T) {
	t.Parallel()
	srv := startServer(t, "-log-format", "json", "-interval", "5ms", "-max-lifetime", "100ms")
	readAll(t, openStream(t, srv.url, nil))
	eventually(t, 5*time.Second, "the stream's end is logged", func() bool {
		return strings.Contains(srv.logs.String(), `"msg":"client disconnected"`)
	})
	ended := false
	for line := range strings.SplitSeq(strings.TrimSpace(srv.logs.String()), "\n") {
		var entry map[string]any
		if err := json.Unmarshal([]byte(line), &entry); err != nil {
			t.Fatalf("log line %q is not JSON: %v", line, err)
		}
		if entry["msg"] == "client disconnected" {
			ended = true
			for _, field := range []string{"time", "level", "client", "duration", "events", "last_id", "reason"} {
				if _, ok := entry[field]; !ok {
					t.Errorf("disconnect line %s lacks %q", line, field)
				}
			}
			if entry["reason"] != string(endMaxLifetime) {
				t.Errorf("reason = %v, want %s", entry["reason"], endMaxLifetime)
			}
		}
	}
	if !ended {
		t.Error("no disconnect line")
	}
}

func TestVersion_PrintsTheRevision(t *testing.T) {
	skipShort(t, "go build and git, which take seconds")
	t.Parallel()
	bin := filepath.Join(t.TempDir(), "sse-dashboard")
	// -buildvcs=true, because GOFLAGS may turn the stamp off.
	if out, err := exec.Command("go", "build", "-buildvcs=true", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "-version").Output()
	if err != nil {
		t.Fatalf("-version: %v", err)
	}
	// In a git checkout the build stamps the commit; elsewhere it says it does not know.
	want := regexp.MustCompile(`^sse-dashboard \S+ revision ([0-9a-f]{40}(\+modified)?|unknown) \S* go1\.\d+`)
	if !want.Match(out) {
		t.Fatalf("-version printed %q, want it to match %s", out, want)
	}
	// Go stamps the revision of a plain checkout; a git worktree (.git is a file) gets none.
	if info, err := os.Stat(".git"); err != nil || !info.IsDir() {
		t.Logf("not a plain git checkout: -version printed %q", out)
		return
	}
	head, err := exec.Command("git", "rev-parse", "HEAD").Output()
	if err != nil {
		t.Fatalf("git rev-parse HEAD: %v", err)
	}
	if rev := strings.TrimSpace(string(head)); !strings.Contains(string(out), rev) {
		t.Errorf("-version printed %q, want the checkout's revision %s", out, rev)
	}
}

func TestLog_DurationsAreGoDurationsInBothFormats(t *testing.T) {
	for _, format := range []string{"text", "json"} {
		t.Run(format, func(t *testing.T) {
			srv := startServer(t, "-log-format", format, "-interval", "5ms", "-max-lifetime", "100ms")
			readAll(t, openStream(t, srv.url, nil))
			srv.logs.waitFor(t, regexp.MustCompile(`client disconnected`), 5*time.Second)
			var interval, lasted string
			for line := range strings.SplitSeq(strings.TrimSpace(srv.logs.String()), "\n") {
				if format == "text" {
					if m := regexp.MustCompile(`msg=listening .* interval=(\S+)`).FindStringSubmatch(line); m != nil {
						interval = m[1]
					}
					if m := regexp.MustCompile(`msg="client disconnected" .*duration=(\S+)`).FindStringSubmatch(line); m != nil {
						lasted = m[1]
					}
					continue
				}
				var entry map[string]any
				if err := json.Unmarshal([]byte(line), &entry); err != nil {
					t.Fatalf("log line %q is not JSON: %v", line, err)
				}
				switch entry["msg"] {
				case "listening":
					interval = fmt.Sprint(entry["interval"])
				case "client disconnected":
					lasted = fmt.Sprint(entry["duration"])
				}
			}
			if interval != "5ms" {
				t.Errorf("-log-format %s: listening interval = %q, want 5ms", format, interval)
			}
			if d, err := time.ParseDuration(lasted); err != nil || d < 50*time.Millisecond || d > 10*time.Second {
				t.Errorf("-log-format %s: disconnect duration = %q (%v), want a Go duration near -max-lifetime 100ms", format, lasted, err)
			}
		})
	}
}

func TestAdmin_ProfilesRunForTheSecondsAsked(t *testing.T) {
	skipShort(t, "a CPU profile that runs for seconds")
	srv := startServer(t)
	client := &http.Client{Timeout: 20 * time.Second}
	for _, path := range []string{"/debug/pprof/profile?seconds=1", "/debug/pprof/trace?seconds=1"} {
		start := time.Now()
		resp, err := client.Get(srv.adminURL + path)
		if err != nil {
			t.Fatalf("admin GET %s: %v", path, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || err != nil || len(body) == 0 {
			t.Errorf("admin GET %s = %d, %d bytes (%v), want 200 with the profile", path, resp.StatusCode, len(body), err)
		}
		if took := time.Since(start); took < time.Second {
			t.Errorf("admin GET %s took %s, want the second it asked for", path, took)
		}
	}
}
