package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"reflect"
	"regexp"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// helperEnv marks a re-executed test binary that runs main instead of the tests.
const helperEnv = "SSE_DASHBOARD_MAIN"

// TestMain is the one place where the test binary becomes another program. Tests that need
// a process of their own re-execute it:
//   - SSE_DASHBOARD_MAIN=1 (startProcess): the real command, main itself, so that signals,
//     exit codes and process limits are tested as a user meets them; SSE_DASHBOARD_NOFILE
//     lowers its open-file limit first, and CPUPROFILE profiles it;
//   - SSE_DASHBOARD_BENCH_SERVER=kind (make bench): one of the comparison servers;
//   - SSE_DASHBOARD_NETNS_CASE=name, under unshare -n (network_test.go): the ordinary test
//     run, inside a network namespace of its own, where that test reads the variable.
//
// Otherwise it runs the tests, then prints the soak table when -soak asked for one.
func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" {
		limitOpenFiles(os.Getenv(openFilesEnv))
		runMainProfiled(os.Getenv("CPUPROFILE"))
		os.Exit(0)
	}
	if kind := os.Getenv(benchServerEnv); kind != "" {
		if err := serveComparison(kind, os.Args[1:]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	code := m.Run()
	printSoakTable(os.Stdout)
	os.Exit(code)
}

// runMainProfiled runs main, writing a CPU profile of it to path unless path is empty:
// that is how the profile in the README was made (CPUPROFILE=file make bench).
func runMainProfiled(path string) {
	if path != "" {
		f, err := os.Create(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err == nil {
			defer pprof.StopCPUProfile()
		}
	}
	main()
}

// serverProcess is the command running in a process of its own.
type serverProcess struct {
	cmd        *exec.Cmd
	url        string
	adminURL   string // empty for servers without an admin listener
	logs       *logBuffer
	exited     chan struct{}
	goroutines int // what noteGoroutines saw, for expectBaseline
}

// startProcess starts the command with args (after -addr 127.0.0.1:0) in a new process
// with an empty environment, waits until it listens, and kills it if the test leaves it running.
func startProcess(t testing.TB, args ...string) *serverProcess {
	t.Helper()
	return startProcessWith(t, processOptions{}, args...)
}

// processOptions are what a test sets on a server process besides its flags.
type processOptions struct {
	env    []string // added to the process's otherwise empty environment
	nofile int      // its open-file limit (RLIMIT_NOFILE), when not 0
}

// startProcessWith is startProcess with opts.
func startProcessWith(t testing.TB, opts processOptions, args ...string) *serverProcess {
	t.Helper()
	env := append([]string{helperEnv + "=1"}, opts.env...)
	if opts.nofile != 0 {
		env = append(env, openFilesEnv+"="+strconv.Itoa(opts.nofile))
	}
	logs := newLogBuffer()
	cmd := exec.Command(os.Args[0], append([]string{"-addr", "127.0.0.1:0", "-admin-addr", "127.0.0.1:0"}, args...)...)
	// GORACE: a race-enabled binary otherwise sleeps a second before it exits, which
	// would count against every shutdown time measured here.
	cmd.Env = append(env, "CPUPROFILE="+os.Getenv("CPUPROFILE"), "GORACE=atexit_sleep_ms=0")
	cmd.Stdout = logs
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("start the server process: %v", err)
	}
	p := &serverProcess{cmd: cmd, logs: logs, exited: make(chan struct{})}
	go func() {
		cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.exited
		if t.Failed() {
			t.Logf("server process log:\n%s", logs.String())
		}
	})
	p.url, p.adminURL = waitListening(t, logs, processStartBound)
	return p
}

// processStartBound bounds how long a server process may take to listen: a replica on a
// NATS cluster may wait for the cluster's leaders at start, up to streamSetupTimeout for its
// stream and as long again for the ids of its history.
const processStartBound = 2*streamSetupTimeout + 5*time.Second

// signal sends sig and waits for the process to exit, failing the test if that takes
// longer than within; it returns how long it took.
func (p *serverProcess) signal(t testing.TB, sig os.Signal, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	p.cmd.Process.Signal(sig)
	p.wait(t, within)
	return time.Since(start)
}

// wait waits for the process to exit, failing the test if that takes longer than within.
func (p *serverProcess) wait(t testing.TB, within time.Duration) {
	t.Helper()
	select {
	case <-p.exited:
	case <-time.After(within):
		t.Fatalf("the process did not exit within %s", within)
	}
}

// listeningLine is the log line that names the addresses a server listens on; servers
// without an admin listener leave admin_addr out.
var listeningLine = regexp.MustCompile(`msg=listening addr=(\S+)(?: admin_addr=(\S*))?|"msg":"listening","addr":"([^"]+)","admin_addr":"([^"]*)"`)

// waitListening waits for the server's listening line and returns its base URL and its
// admin listener's, if it has one.
func waitListening(t testing.TB, logs *logBuffer, within time.Duration) (url, adminURL string) {
	t.Helper()
	logs.waitFor(t, listeningLine, within)
	m := listeningLine.FindStringSubmatch(logs.String())
	addr, admin := m[1]+m[3], m[2]+m[4]
	if admin != "" && admin != `""` {
		adminURL = "http://" + admin
	}
	return "http://" + addr, adminURL
}

// scrape reads the metrics that the admin listener at adminURL serves, parsed as the
// Prometheus text format, each sample under its name and labels as the format writes
// them: sse_streams_ended_total{reason="shutdown"}.
func scrape(t testing.TB, adminURL string) map[string]float64 {
	t.Helper()
	samples, err := tryScrape(adminURL)
	if err != nil {
		t.Fatal(err)
	}
	return samples
}

// tryScrape is scrape for a server that may not answer at once: it returns the error
// instead of failing the test.
func tryScrape(adminURL string) (map[string]float64, error) {
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(adminURL + "/metrics")
	if err != nil {
		return nil, fmt.Errorf("GET /metrics: %w", err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("/metrics is not the Prometheus text format: %w", err)
	}
	samples := make(map[string]float64)
	for name, family := range families {
		for _, m := range family.GetMetric() {
			key := name
			if labels := m.GetLabel(); len(labels) > 0 {
				pairs := make([]string, len(labels))
				for i, l := range labels {
					pairs[i] = fmt.Sprintf("%s=%q", l.GetName(), l.GetValue())
				}
				key += "{" + strings.Join(pairs, ",") + "}"
			}
			switch {
			case m.Counter != nil:
				samples[key] = m.GetCounter().GetValue()
			case m.Gauge != nil:
				samples[key] = m.GetGauge().GetValue()
			case m.Histogram != nil:
				samples[key+"_count"] = float64(m.GetHistogram().GetSampleCount())
				samples[key+"_sum"] = m.GetHistogram().GetSampleSum()
			}
		}
	}
	return samples, nil
}

// metric returns one sample that scrape finds, failing the test if there is none.
func metric(t testing.TB, adminURL, key string) float64 {
	t.Helper()
	v, ok := scrape(t, adminURL)[key]
	if !ok {
		t.Fatalf("/metrics has no sample %s", key)
	}
	return v
}

// testServer is the whole service started by run on a free loopback port.
type testServer struct {
	url      string
	adminURL string
	logs     *logBuffer
	cancel   context.CancelFunc
	done     chan error
}

// startServer runs the service in-process on 127.0.0.1:0 with args (the environment is
// empty), waits until it listens, and stops it when the test ends.
func startServer(t *testing.T, args ...string) *testServer {
	t.Helper()
	return startServerEnv(t, nil, args...)
}

// startServerEnv is startServer with the environment variables of env.
func startServerEnv(t *testing.T, env map[string]string, args ...string) *testServer {
	t.Helper()
	logs := newLogBuffer()
	ctx, cancel := context.WithCancel(context.Background())
	srv := &testServer{logs: logs, cancel: cancel, done: make(chan error, 1)}
	args = append([]string{"-addr", "127.0.0.1:0", "-admin-addr", "127.0.0.1:0"}, args...)
	go func() { srv.done <- run(ctx, args, func(k string) string { return env[k] }, logs) }()

	srv.url, srv.adminURL = waitListening(t, logs, 5*time.Second)
	t.Cleanup(func() {
		if err := srv.stop(t, 10*time.Second); err != nil {
			t.Errorf("run returned %v, want nil", err)
		}
		if t.Failed() {
			t.Logf("server log:\n%s", logs.String())
		}
	})
	return srv
}

// stop cancels run's context and returns what run returned, at most once.
func (s *testServer) stop(t *testing.T, within time.Duration) error {
	t.Helper()
	s.cancel()
	select {
	case err, ok := <-s.done:
		if !ok {
			return nil
		}
		close(s.done)
		return err
	case <-time.After(within):
		t.Fatalf("run did not return within %s of cancellation", within)
		return nil
	}
}

// get fetches path and returns the response with its body read.
func (s *testServer) get(t *testing.T, method, path string, header http.Header) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, s.url+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return resp, string(body)
}

// healthClients returns the open-stream count that /healthz reports.
func (s *testServer) healthClients(t *testing.T) int64 {
	t.Helper()
	resp, body := s.get(t, http.MethodGet, "/healthz", nil)
	var h health
	if err := json.Unmarshal([]byte(body), &h); err != nil || resp.StatusCode != http.StatusOK || h.Status != "ok" {
		t.Fatalf("GET /healthz = %d %q (%v), want 200 with status ok", resp.StatusCode, body, err)
	}
	return h.StreamsOpen
}

// logBuffer collects the server's log output so tests can wait for and count lines.
type logBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	written chan struct{}
}

func newLogBuffer() *logBuffer {
	return &logBuffer{written: make(chan struct{}, 1)}
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case l.written <- struct{}{}:
	default:
	}
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// count returns how many log lines contain substr.
func (l *logBuffer) count(substr string) int {
	return strings.Count(l.String(), substr)
}

// waitFor waits until a log line matches re and returns its first submatch.
func (l *logBuffer) waitFor(t testing.TB, re *regexp.Regexp, within time.Duration) string {
	t.Helper()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	for {
		if m := re.FindStringSubmatch(l.String()); m != nil {
			return m[len(m)-1]
		}
		select {
		case <-l.written:
		case <-deadline.C:
			t.Fatalf("no log line matched %s within %s; log:\n%s", re, within, l.String())
		}
	}
}

// skipShort skips the test under go test -short (make check), saying in one line what it
// needs that the fast loop does not give it: an external program, a process of its own,
// or more than a few seconds.
func skipShort(t *testing.T, needs string) {
	t.Helper()
	if testing.Short() {
		t.Skipf("-short: needs %s", needs)
	}
}

// requireTool returns the path of an external program a test needs: $env if env names a
// variable that is set, else name on $PATH or in /usr/sbin, /sbin or /usr/bin. Without it
// the test is skipped, loudly, or fails when CI=true, because CI must run every test;
// .ci/run installs the Debian package pkg. Under -short it skips at once, since the fast
// loop runs no external program.
func requireTool(t *testing.T, env, name, pkg string) string {
	t.Helper()
	skipShort(t, name)
	if env != "" {
		if p := os.Getenv(env); p != "" {
			path, err := exec.LookPath(p)
			if err != nil {
				t.Fatalf("%s=%q: %v; unset it or point it at %s", env, p, err, name)
			}
			return path
		}
	}
	for _, p := range []string{name, "/usr/sbin/" + name, "/sbin/" + name, "/usr/bin/" + name} {
		if path, err := exec.LookPath(p); err == nil {
			return path
		}
	}
	missing := fmt.Sprintf("no %s on $PATH or in /usr/sbin, /sbin, /usr/bin", name)
	if env != "" {
		missing += " and no $" + env
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s: CI must run this test (.ci/run installs it with apt-get install %s)", missing, pkg)
	}
	t.Skipf("SKIPPING %s: %s. Install it with `apt-get install %s`.", t.Name(), missing, pkg)
	return ""
}

// rssKB returns the resident memory (VmRSS) of the process pid in KB.
func rssKB(pid int) (int, error) {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("read the resident memory of process %d: %w", pid, err)
	}
	m := vmRSS.FindSubmatch(status)
	if m == nil {
		return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
	}
	return strconv.Atoi(string(m[1]))
}

// vmRSS finds the resident memory in a /proc/<pid>/status file.
var vmRSS = regexp.MustCompile(`VmRSS:\s+(\d+) kB`)

// eventually polls cond every 10ms until it holds, failing the test after within.
func eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true within %s", what, within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// goroutinesIn counts the running goroutines that are inside any of fns, such as produce:
// the direct proof that a client's goroutines have ended.
func goroutinesIn(fns ...any) int {
	var frames [][]byte
	for _, fn := range fns {
		frames = append(frames, []byte(runtime.FuncForPC(reflect.ValueOf(fn).Pointer()).Name()+"("))
	}
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	count := 0
	for g := range bytes.SplitSeq(buf, []byte("\n\n")) {
		if slices.ContainsFunc(frames, func(frame []byte) bool { return bytes.Contains(g, frame) }) {
			count++
		}
	}
	return count
}

func TestRun_StopsWhenCancelledAsSoonAsItListens(t *testing.T) {
	t.Parallel()
	// A cancellation can come before Serve has taken the listener.
	for i := range 20 {
		logs := newLogBuffer()
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			done <- run(ctx, []string{"-addr", "127.0.0.1:0", "-admin-addr", "127.0.0.1:0"}, func(string) string { return "" }, logs)
		}()
		logs.waitFor(t, regexp.MustCompile(`msg=(listening)`), 5*time.Second)
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("run %d = %v, want nil", i, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("run %d did not return within 5s of a cancellation right after it listened", i)
		}
	}
}

func TestRun_RefusesBusyAddress(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	err = run(context.Background(), []string{"-addr", ln.Addr().String()}, func(string) string { return "" }, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "listen on "+ln.Addr().String()) {
		t.Fatalf("run on a busy address = %v, want a listen error naming it", err)
	}
}

func TestRoutes_StatusCodes(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	tests := []struct {
		method, path string
		header       http.Header
		want         int
	}{
		{http.MethodGet, "/", nil, http.StatusOK},
		{http.MethodGet, "/app.js", nil, http.StatusOK},
		{http.MethodGet, "/style.css", nil, http.StatusOK},
		{http.MethodGet, "/healthz", nil, http.StatusOK},
		{http.MethodGet, "/readyz", nil, http.StatusOK},
		{http.MethodOptions, "/sse", nil, http.StatusNoContent},
		{http.MethodPost, "/sse", nil, http.StatusMethodNotAllowed},
		{http.MethodDelete, "/healthz", nil, http.StatusMethodNotAllowed},
		{http.MethodGet, "/nope", nil, http.StatusNotFound},
		{http.MethodGet, "/sse", http.Header{"Accept": {"application/json"}}, http.StatusNotAcceptable},
		{http.MethodHead, "/sse", nil, http.StatusOK},
	}
	for _, tt := range tests {
		resp, body := srv.get(t, tt.method, tt.path, tt.header)
		if resp.StatusCode != tt.want {
			t.Errorf("%s %s = %d %q, want %d", tt.method, tt.path, resp.StatusCode, body, tt.want)
		}
		if resp.StatusCode >= 400 && strings.Count(strings.TrimSpace(body), "\n") != 0 {
			t.Errorf("%s %s body = %q, want a one-line reason", tt.method, tt.path, body)
		}
		if resp.StatusCode == http.StatusMethodNotAllowed && !strings.Contains(resp.Header.Get("Allow"), "GET") {
			t.Errorf("%s %s: Allow = %q, want the methods that work", tt.method, tt.path, resp.Header.Get("Allow"))
		}
	}
	if got := srv.healthClients(t); got != 0 {
		t.Errorf("clients after plain requests = %d, want 0", got)
	}
}

func TestRoutes_PageIsEmbeddedWithStrictHeaders(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	resp, body := srv.get(t, http.MethodGet, "/", nil)
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
		t.Errorf("GET / Content-Type = %q, want text/html", ct)
	}
	if !strings.Contains(body, `src="app.js"`) || !strings.Contains(body, `href="style.css"`) {
		t.Errorf("GET / does not load app.js and style.css by relative URLs, which a path prefix keeps:\n%s", body)
	}
	csp := resp.Header.Get("Content-Security-Policy")
	for _, want := range []string{"script-src 'self'", "style-src 'self'", "connect-src 'self';"} {
		if !strings.Contains(csp, want) {
			t.Errorf("Content-Security-Policy = %q, want it to contain %q", csp, want)
		}
	}
	if strings.Contains(csp, "unsafe") {
		t.Errorf("Content-Security-Policy = %q allows unsafe sources", csp)
	}
	if got := resp.Header.Get("X-Content-Type-Options"); got != "nosniff" {
		t.Errorf("X-Content-Type-Options = %q, want nosniff", got)
	}
	resp, _ = srv.get(t, http.MethodGet, "/app.js", nil)
	if ct := resp.Header.Get("Content-Type"); !strings.Contains(ct, "javascript") {
		t.Errorf("GET /app.js Content-Type = %q, want javascript", ct)
	}
}

func TestRoutes_PageSourcesInCSPAndPage(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, sources, connectSrc, meta string
	}{
		{"none", "", "connect-src 'self';", `<meta name="page-sources" content="">`},
		{"two", "https://a.example, http://127.0.0.1:8081",
			"connect-src 'self' https://a.example http://127.0.0.1:8081;",
			`<meta name="page-sources" content="https://a.example http://127.0.0.1:8081">`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := startServer(t, "-page-sources", tt.sources)
			for _, path := range []string{"/", "/app.js"} {
				resp, body := srv.get(t, http.MethodGet, path, nil)
				if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, tt.connectSrc) {
					t.Errorf("-page-sources %q: GET %s Content-Security-Policy = %q, want %q in it", tt.sources, path, csp, tt.connectSrc)
				}
				if path == "/" && strings.Count(body, tt.meta) != 1 {
					t.Errorf("-page-sources %q: GET / has no %s:\n%s", tt.sources, tt.meta, body)
				}
			}
		})
	}
}

func TestShutdown_EndsOpenStreamsPromptly(t *testing.T) {
	srv := startServer(t, "-interval", "1h", "-keepalive", "1h")
	streams := make([]*sseStream, 5)
	for i := range streams {
		streams[i] = openStream(t, srv.url, nil)
		streams[i].next(t)
	}
	start := time.Now()
	if err := srv.stop(t, 5*time.Second); err != nil {
		t.Fatalf("run = %v, want nil", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("shutdown with 5 open streams took %s, want under 2s", took)
	}
	for i, s := range streams {
		if err := s.readToEnd(); err != nil {
			t.Errorf("stream %d ended with %v, want a clean end", i, err)
		}
	}
	if got := srv.logs.count(`reason=shutdown`); got != 5 {
		t.Errorf("%d streams logged a shutdown end, want 5 (each logs its end before run returns)", got)
	}
	// A producer returns soon after its stream is cancelled, not at once.
	eventually(t, 2*time.Second, "every producer returns after shutdown", func() bool { return goroutinesIn(produce) == 0 })
}
