package main

// Tests of the production deployment: deploy/nginx.conf itself, run by a real nginx in front of
// replicas of the real binary, with a self-signed certificate the test makes. They need Debian's
// nginx (apt-get install nginx); without it they skip, loudly, except on CI.
// docs/deployment.md quotes the figures they log: go test -run '^TestProxy_' -v .

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	mathrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// shippedNginxConfig is the file the tests run, the one users copy.
const shippedNginxConfig = "deploy/nginx.conf"

// freeLoopbackPort returns a port on 127.0.0.1 that is free now and lies below the kernel's
// ephemeral range. No outgoing connection takes such a port as its own, so a replica that
// stops can always come back on it, and nginx can be told it before it starts.
func freeLoopbackPort(t *testing.T) int {
	t.Helper()
	const floor = 10000
	ephemeral := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if fields := strings.Fields(string(b)); len(fields) == 2 {
			if low, err := strconv.Atoi(fields[0]); err == nil && low > floor+1000 {
				ephemeral = low
			}
		}
	}
	for range 100 {
		port := floor + mathrand.IntN(ephemeral-floor)
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err == nil {
			ln.Close()
			return port
		}
	}
	t.Fatalf("no free loopback port in [%d, %d) after 100 tries", floor, ephemeral)
	return 0
}

// writeTestCert writes a self-signed certificate for 127.0.0.1, localhost and
// dashboard.example.com, valid for a day, and its key into dir. It returns the two paths
// and a pool that trusts the certificate.
func writeTestCert(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("generate a key: %v", err)
	}
	template := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "dashboard.example.com"},
		DNSNames:              []string{"dashboard.example.com", "localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("create a certificate: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// nginxEdit replaces one exact piece of the shipped configuration for a test.
type nginxEdit struct {
	old, new string
}

// renderNginxConfig returns the shipped configuration with edits made. Each old text must
// occur exactly once in the file, so a change to the file that the tests do not follow
// fails them instead of going untested.
func renderNginxConfig(t *testing.T, edits []nginxEdit) string {
	t.Helper()
	shipped, err := os.ReadFile(shippedNginxConfig)
	if err != nil {
		t.Fatalf("read the shipped configuration: %v", err)
	}
	conf := string(shipped)
	for _, e := range edits {
		if n := strings.Count(string(shipped), e.old); n != 1 {
			t.Fatalf("%s has %q %d times, want once: update the test's edits with the file", shippedNginxConfig, e.old, n)
		}
		conf = strings.Replace(conf, e.old, e.new, 1)
	}
	return conf
}

// proxy is nginx running the shipped configuration for one test.
type proxy struct {
	url     string // the HTTPS side, https://127.0.0.1:port
	httpURL string // the plain-HTTP side, which only redirects
	dir     string // nginx's prefix: configuration, pid file, logs, temporary files
	pool    *x509.CertPool
	output  *logBuffer // what nginx writes to stderr
	cmd     *exec.Cmd
}

// startNginx runs nginx in the foreground with the shipped configuration, rendered for the
// test: its loopback ports, a certificate it makes, replicas (one address fills both server
// lines), and pid file, logs and temporary files in a directory of its own; edits come on
// top. It returns once nginx accepts connections, and stops nginx when the test ends,
// failing the test if nginx logged anything critical.
func startNginx(t *testing.T, replicas []string, edits ...nginxEdit) *proxy {
	t.Helper()
	bin := requireTool(t, "NGINX_PATH", "nginx", "nginx")
	if len(replicas) == 1 {
		replicas = []string{replicas[0], replicas[0]}
	}
	dir := t.TempDir()
	certFile, keyFile, pool := writeTestCert(t, dir)
	httpsAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freeLoopbackPort(t)))
	httpAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freeLoopbackPort(t)))
	var temp strings.Builder
	for _, kind := range []string{"client_body", "proxy", "fastcgi", "uwsgi", "scgi"} {
		fmt.Fprintf(&temp, "    %s_temp_path %s;\n", kind, filepath.Join(dir, kind))
	}
	base := []nginxEdit{
		{"pid /run/nginx.pid;", "pid " + filepath.Join(dir, "nginx.pid") + ";"},
		{"error_log /var/log/nginx/error.log warn;", "error_log " + filepath.Join(dir, "error.log") + " warn;"},
		{"access_log /var/log/nginx/access.log replicas;", "access_log " + filepath.Join(dir, "access.log") + " replicas;"},
		{"http {\n", "http {\n" + temp.String()},
		{"server 127.0.0.1:3000 ", "server " + replicas[0] + " "},
		{"server 127.0.0.1:3002 ", "server " + replicas[1] + " "},
		{"listen 80;", "listen " + httpAddr + ";"},
		{"        listen [::]:80;\n", ""},
		{"listen 443 ssl http2;", "listen " + httpsAddr + " ssl http2;"},
		{"        listen [::]:443 ssl http2;\n", ""},
		{"ssl_certificate /etc/letsencrypt/live/dashboard.example.com/fullchain.pem;", "ssl_certificate " + certFile + ";"},
		{"ssl_certificate_key /etc/letsencrypt/live/dashboard.example.com/privkey.pem;", "ssl_certificate_key " + keyFile + ";"},
	}
	conf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(conf, []byte(renderNginxConfig(t, append(base, edits...))), 0o644); err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command(bin, "-p", dir+"/", "-c", conf, "-e", "stderr", "-g", "daemon off;")
	p := &proxy{url: "https://" + httpsAddr, httpURL: "http://" + httpAddr, dir: dir, pool: pool, output: newLogBuffer(), cmd: cmd}
	cmd.Stdout = p.output
	cmd.Stderr = p.output
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		// SIGTERM is nginx's fast shutdown: it closes open streams rather than wait for them.
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			t.Errorf("nginx did not exit within 10s of SIGTERM")
			cmd.Process.Kill()
			<-exited
		}
		errorLog := p.errorLog()
		for _, level := range []string{"[emerg]", "[alert]", "[crit]"} {
			if strings.Contains(errorLog, level) {
				t.Errorf("nginx logged %s, want nothing worse than [error]", level)
			}
		}
		if t.Failed() {
			t.Logf("nginx output:\n%s\nnginx error log:\n%s", p.output, errorLog)
		}
	})
	eventually(t, 10*time.Second, "nginx accepts on "+httpsAddr, func() bool {
		select {
		case <-exited:
			t.Fatalf("nginx exited: %v\n%s", cmd.ProcessState, p.output)
		default:
		}
		conn, err := net.DialTimeout("tcp", httpsAddr, time.Second)
		if err == nil {
			conn.Close()
		}
		return err == nil
	})
	return p
}

// errorLog returns nginx's error log so far.
func (p *proxy) errorLog() string {
	b, _ := os.ReadFile(filepath.Join(p.dir, "error.log"))
	return string(b)
}

// client returns an HTTP client of its own that trusts the test certificate and speaks
// HTTP/2 to nginx, as a browser does: one connection, kept across reconnects.
func (p *proxy) client() *http.Client {
	return &http.Client{Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: p.pool},
		ForceAttemptHTTP2: true,
	}}
}

// get fetches path through nginx and returns the response with its body read.
func (p *proxy) get(t *testing.T, path string) (*http.Response, string) {
	t.Helper()
	client := p.client()
	client.Timeout = 10 * time.Second
	defer client.CloseIdleConnections()
	resp, err := client.Get(p.url + path)
	if err != nil {
		t.Fatalf("GET %s through nginx: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s through nginx: read body: %v", path, err)
	}
	return resp, string(body)
}

// replica is one sse-dashboard process behind the proxy, on a port of its own that it keeps
// across restarts, as a replica under a service manager does.
type replica struct {
	addr string
	args []string
	proc *serverProcess
}

// startReplica starts the real binary with args on a free port and waits until it listens.
func startReplica(t *testing.T, args ...string) *replica {
	t.Helper()
	r := &replica{addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(freeLoopbackPort(t))), args: args}
	r.start(t)
	return r
}

// start starts the replica on its port, again after a stop, and waits until it listens.
func (r *replica) start(t *testing.T) {
	t.Helper()
	// A later -addr overrides the one startProcess puts first.
	r.proc = startProcess(t, append([]string{"-addr", r.addr}, r.args...)...)
	if r.proc.url != "http://"+r.addr {
		t.Fatalf("replica listens on %s, want http://%s", r.proc.url, r.addr)
	}
}

// stop sends SIGTERM, waits for the exit within the shutdown timeout and a margin, and fails
// the test unless the exit code is 0. It returns how long the replica took to exit.
func (r *replica) stop(t *testing.T) time.Duration {
	t.Helper()
	took := r.proc.signal(t, syscall.SIGTERM, 10*time.Second)
	if code := r.proc.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("replica %s exited with %d after SIGTERM, want 0; log:\n%s", r.addr, code, r.proc.logs)
	}
	return took
}

// clients returns the open streams that the replica's own /healthz reports.
func (r *replica) clients(t *testing.T) int64 {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + r.addr + "/healthz")
	if err != nil {
		t.Fatalf("GET /healthz of replica %s: %v", r.addr, err)
	}
	defer resp.Body.Close()
	var h health
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /healthz of replica %s = %d (%v), want 200 with JSON", r.addr, resp.StatusCode, err)
	}
	return h.StreamsOpen
}

// reconnectMargin is what a busy machine may add to a client's wait across a reconnect: a
// race-enabled replica taking 200 streams at once on two shared cores. A client sent to the
// fallback instead of a replica is caught apart from the wait (followers.check).
const reconnectMargin = 5 * time.Second

// follower is what one client of a followers group has seen.
type follower struct {
	lastID     uint64
	lastAt     time.Time
	events     int
	opens      int
	openedAt   time.Time     // when the last connection opened
	fallbacks  int           // streams that nginx answered itself because no replica did
	gaps       []string      // each id that did not follow the one before
	longest    time.Duration // longest wait from one event to the next, reconnects included
	longestEnd time.Time     // when that wait ended
	failure    error         // why the client gave up for good, if it did
}

// followers are many sseClients on one URL, each with an HTTP/2 connection of its own, like
// as many browsers, recording what each one sees.
type followers struct {
	mu      sync.Mutex
	seen    []follower
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	clients []*http.Client
}

// startFollowers starts n clients on url through p, and stops them when the test ends.
func startFollowers(t *testing.T, p *proxy, url string, n int) *followers {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	f := &followers{seen: make([]follower, n), cancel: cancel}
	for i := range n {
		client := p.client()
		f.clients = append(f.clients, client)
		c := newSSEClient(url, client)
		c.onOpen = func(*http.Response) {
			f.mu.Lock()
			f.seen[i].opens++
			f.seen[i].openedAt = time.Now()
			f.mu.Unlock()
		}
		c.onComment = func(text string, _ time.Time) {
			if text == "no replica available" {
				f.mu.Lock()
				f.seen[i].fallbacks++
				f.mu.Unlock()
			}
		}
		c.onEvent = func(ev sseEvent) {
			id, err := strconv.ParseUint(ev.id, 10, 64)
			f.mu.Lock()
			defer f.mu.Unlock()
			s := &f.seen[i]
			if err != nil || (s.events > 0 && id != s.lastID+1) {
				s.gaps = append(s.gaps, fmt.Sprintf("%q after %d", ev.id, s.lastID))
			}
			if s.events > 0 && ev.at.Sub(s.lastAt) > s.longest {
				s.longest, s.longestEnd = ev.at.Sub(s.lastAt), ev.at
			}
			s.lastID, s.lastAt = id, ev.at
			s.events++
		}
		f.wg.Go(func() {
			if err := c.run(ctx); err != nil {
				f.mu.Lock()
				f.seen[i].failure = err
				f.mu.Unlock()
			}
		})
	}
	t.Cleanup(f.stop)
	return f
}

// stop ends every client and waits until they have returned.
func (f *followers) stop() {
	f.cancel()
	f.wg.Wait()
	for _, c := range f.clients {
		c.CloseIdleConnections()
	}
}

// snapshot returns what each client has seen so far.
func (f *followers) snapshot() []follower {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.seen)
}

// waitAllSince waits until every client has had an event after since, failing the test
// after within or as soon as one client has given up.
func (f *followers) waitAllSince(t *testing.T, since time.Time, within time.Duration, what string) {
	t.Helper()
	eventually(t, within, what, func() bool {
		for i, s := range f.snapshot() {
			if s.failure != nil {
				t.Fatalf("client %d gave up: %v", i, s.failure)
			}
			if !s.lastAt.After(since) {
				return false
			}
		}
		return true
	})
}

// check fails the test if any client gave up, saw an id out of order, met no replica, or
// waited longer than maxWait between two events, naming the first few of each; it returns
// every client's longest wait, sorted.
func (f *followers) check(t *testing.T, maxWait time.Duration) []time.Duration {
	t.Helper()
	var failed, gapped, fellBack, slow []string
	var waits []time.Duration
	seen := f.snapshot()
	for i, s := range seen {
		if s.failure != nil {
			failed = append(failed, fmt.Sprintf("client %d: %v", i, s.failure))
		}
		if len(s.gaps) > 0 {
			gapped = append(gapped, fmt.Sprintf("client %d: ids %s", i, strings.Join(s.gaps, ", ")))
		}
		if s.fallbacks > 0 {
			fellBack = append(fellBack, fmt.Sprintf("client %d: %d times", i, s.fallbacks))
		}
		if s.longest > maxWait {
			slow = append(slow, fmt.Sprintf("client %d: %s until %s", i, s.longest.Round(time.Millisecond), s.longestEnd.Format("15:04:05.000")))
		}
		waits = append(waits, s.longest)
	}
	for _, c := range []struct {
		want   string
		broken []string
	}{
		{"want none to give up", failed},
		{"want each id one more than the last, across reconnects too (the count goes on from Last-Event-ID)", gapped},
		{"want a replica every time one was up, never nginx's own answer", fellBack},
		{fmt.Sprintf("want no wait for an event over %s", maxWait), slow},
	} {
		if len(c.broken) > 0 {
			t.Errorf("%d of %d clients: %s, ...; %s", len(c.broken), len(seen), strings.Join(c.broken[:min(5, len(c.broken))], "; "), c.want)
		}
	}
	slices.Sort(waits)
	return waits
}

// quantile returns the q-quantile of sorted, nearest rank.
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(q*float64(len(sorted))))]
}

// streamTap stands between nginx and a replica and forwards bytes both ways. It notes when
// each event id came from the replica, the moment against which the delay nginx adds is
// measured.
type streamTap struct {
	addr string
	mu   sync.Mutex
	from map[string]time.Time // event id → when the replica's bytes with it were read
}

// startTap forwards connections on a loopback port to target until the test ends.
func startTap(t *testing.T, target string) *streamTap {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tap := &streamTap{addr: ln.Addr().String(), from: make(map[string]time.Time)}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			down, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				down.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, down, up)
			mu.Unlock()
			wg.Go(func() { io.Copy(up, down) })
			wg.Go(func() { tap.forward(down, up) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return tap
}

// forward copies the replica's bytes to nginx, noting the time each "id: N" line was read.
func (tap *streamTap) forward(down, up net.Conn) {
	buf := make([]byte, 32<<10)
	var line []byte
	for {
		n, err := up.Read(buf)
		if n > 0 {
			at := time.Now()
			for _, c := range buf[:n] {
				if c != '\n' {
					line = append(line, c)
					continue
				}
				if id, ok := strings.CutPrefix(string(line), "id: "); ok {
					tap.mu.Lock()
					if _, seen := tap.from[id]; !seen {
						tap.from[id] = at
					}
					tap.mu.Unlock()
				}
				line = line[:0]
			}
			if _, err := down.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			down.(*net.TCPConn).CloseWrite()
			return
		}
	}
}

// readAt returns when the replica's bytes with event id were read, if they were.
func (tap *streamTap) readAt(id string) (time.Time, bool) {
	tap.mu.Lock()
	defer tap.mu.Unlock()
	at, ok := tap.from[id]
	return at, ok
}

// timedStream is one stream read through nginx by an sseClient that stops at the first end,
// with the time of everything that arrived.
type timedStream struct {
	mu       sync.Mutex
	proto    string
	opening  time.Time // the first comment, which the service sends at once
	events   []sseEvent
	comments []time.Time
	ended    time.Time
	endErr   error
}

// openTimed opens url with client and records it until the stream ends or the test does.
func openTimed(t *testing.T, client *http.Client, url string) (*timedStream, time.Time) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &timedStream{}
	c := newSSEClient(url, client)
	c.onOpen = func(resp *http.Response) {
		s.mu.Lock()
		s.proto = resp.Proto
		s.mu.Unlock()
	}
	c.onComment = func(_ string, at time.Time) {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.opening.IsZero() {
			s.opening = at
		}
		s.comments = append(s.comments, at)
	}
	c.onEvent = func(ev sseEvent) {
		s.mu.Lock()
		s.events = append(s.events, ev)
		s.mu.Unlock()
	}
	c.onEnd = func(err error, _ time.Time) {
		s.mu.Lock()
		s.ended, s.endErr = time.Now(), err
		s.mu.Unlock()
		cancel()
	}
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- c.run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("stream %s: %v", url, err)
		}
		client.CloseIdleConnections()
	})
	return s, start
}

// snapshot returns a copy of what the stream has seen.
func (s *timedStream) snapshot() timedStream {
	s.mu.Lock()
	defer s.mu.Unlock()
	return timedStream{proto: s.proto, opening: s.opening, events: slices.Clone(s.events),
		comments: slices.Clone(s.comments), ended: s.ended, endErr: s.endErr}
}

func TestProxy_StreamsEventsUnbuffered(t *testing.T) {
	skipShort(t, "nginx")
	const interval, events = 100 * time.Millisecond, 30
	r := startReplica(t, "-interval", interval.String())
	tap := startTap(t, r.addr)
	p := startNginx(t, []string{tap.addr})

	stream, start := openTimed(t, p.client(), p.url+"/sse")
	eventually(t, 20*time.Second, fmt.Sprintf("%d events through nginx", events), func() bool {
		s := stream.snapshot()
		return len(s.events) >= events || !s.ended.IsZero()
	})
	s := stream.snapshot()
	if !s.ended.IsZero() {
		t.Fatalf("the stream ended after %d events: %v", len(s.events), s.endErr)
	}
	if s.proto != "HTTP/2.0" {
		t.Errorf("protocol through nginx = %s, want HTTP/2.0", s.proto)
	}
	// The first bytes come through before the replica has even written its first event.
	first, ok := tap.readAt(s.events[0].id)
	if !ok || !s.opening.Before(first) {
		t.Errorf("the opening comment arrived at +%s, the replica wrote event %s at +%s: want the opening first, at once",
			s.opening.Sub(start), s.events[0].id, first.Sub(start))
	}
	// Each event arrives on its own, right after the replica wrote it.
	var delays []time.Duration
	for _, ev := range s.events {
		from, ok := tap.readAt(ev.id)
		if !ok {
			t.Fatalf("event %s reached the client, but the tap never saw it leave the replica", ev.id)
		}
		delays = append(delays, ev.at.Sub(from))
	}
	slices.Sort(delays)
	const bound = 50 * time.Millisecond
	if worst := delays[len(delays)-1]; worst > bound {
		t.Errorf("an event took %s from the replica through nginx to the client, want at most %s each (delays: %v)", worst, bound, delays)
	}
	t.Logf("nginx (HTTP/2, TLS) added per event, over %d events at -interval %s: median %s, p90 %s, max %s; opening at +%s",
		len(delays), interval, quantile(delays, 0.5).Round(10*time.Microsecond), quantile(delays, 0.9).Round(10*time.Microsecond),
		delays[len(delays)-1].Round(10*time.Microsecond), s.opening.Sub(start).Round(100*time.Microsecond))
}

func TestProxy_ServesOnlyThePublicRoutes(t *testing.T) {
	skipShort(t, "nginx")
	r := startReplica(t, "-interval", "100ms", "-retry", "200ms")
	p := startNginx(t, []string{r.addr})

	tests := []struct {
		path        string
		status      int
		contentType string
	}{
		{"/", http.StatusOK, "text/html"},
		{"/app.js", http.StatusOK, "javascript"},
		{"/style.css", http.StatusOK, "text/css"},
		{"/healthz", http.StatusOK, "application/json"},
		{"/readyz", http.StatusNotFound, ""},
		{"/debug/vars", http.StatusNotFound, ""},
		{"/debug/pprof/", http.StatusNotFound, ""},
		{"/metrics", http.StatusNotFound, ""},
		{"/nope", http.StatusNotFound, ""},
	}
	for _, tt := range tests {
		resp, body := p.get(t, tt.path)
		if resp.StatusCode != tt.status || !strings.Contains(resp.Header.Get("Content-Type"), tt.contentType) {
			t.Errorf("GET %s through nginx = %d %s, want %d %s", tt.path, resp.StatusCode, resp.Header.Get("Content-Type"), tt.status, tt.contentType)
		}
		if resp.ProtoMajor != 2 {
			t.Errorf("GET %s through nginx spoke %s, want HTTP/2", tt.path, resp.Proto)
		}
		if tt.path == "/readyz" && strings.Contains(body, "ready") {
			t.Errorf("GET /readyz through nginx shows the replica's answer: %q", body)
		}
	}
	// The replica does serve /readyz, so the 404 above is nginx's doing.
	direct := &http.Client{Timeout: 5 * time.Second}
	if resp, err := direct.Get("http://" + r.addr + "/readyz"); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("GET /readyz straight from the replica = %v, %v; want 200, or the 404 through nginx proves nothing", resp, err)
	} else {
		resp.Body.Close()
	}

	// Plain HTTP only redirects.
	noRedirects := &http.Client{Timeout: 5 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := noRedirects.Get(p.httpURL + "/?src=x")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if loc := resp.Header.Get("Location"); resp.StatusCode != http.StatusMovedPermanently || !strings.HasPrefix(loc, "https://") || !strings.HasSuffix(loc, "/?src=x") {
		t.Errorf("GET / over plain HTTP = %d Location %q, want 301 to the same path over https", resp.StatusCode, loc)
	}

	// With no replica up, /sse still answers an event stream that asks for a retry, which
	// keeps a browser's EventSource reconnecting instead of failing for good.
	r.stop(t)
	c := newSSEClient(p.url+"/sse", p.client())
	defer c.client.CloseIdleConnections()
	var comments []string
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c.onComment = func(text string, _ time.Time) { comments = append(comments, text) }
	c.onEnd = func(error, time.Time) { cancel() }
	if err := c.run(ctx); err != nil {
		t.Fatalf("/sse through nginx with no replica: %v, want an event stream", err)
	}
	if c.retry != 5*time.Second || !slices.Contains(comments, "no replica available") {
		t.Errorf("/sse through nginx with no replica: retry %s, comments %q; want 5s and \"no replica available\"", c.retry, comments)
	}
}

func TestProxy_BrowserOpensTwelveStreamsOverHTTP2(t *testing.T) {
	skipShort(t, "nginx")
	const streams = 12
	r := startReplica(t, "-interval", "100ms")
	p := startNginx(t, []string{r.addr})
	b := newBrowser(t, chromedp.Flag("ignore-certificate-errors", true))

	// open starts the EventSources on the page's own /sse; each counts its events.
	open := `(() => {
		window.sources = [];
		for (let i = 0; i < ` + strconv.Itoa(streams) + `; i++) {
			const s = { events: 0, es: new EventSource("/sse") };
			s.es.onmessage = () => { s.events++; };
			window.sources.push(s);
		}
		return true;
	})()`
	type counts struct {
		Protocol string `json:"protocol"`
		Events   []int  `json:"events"`
		States   []int  `json:"states"`
	}
	read := `({
		protocol: performance.getEntriesByType("navigation")[0].nextHopProtocol,
		events: window.sources.map((s) => s.events),
		states: window.sources.map((s) => s.es.readyState),
	})`

	// Through nginx: one HTTP/2 connection carries the page's own stream and all twelve.
	b.navigate(t, p.url+"/")
	b.waitForDashboard(t, "the page's own stream through nginx", `d.events >= 1 && d.state === "open"`)
	evaluate[bool](t, b, open)
	b.waitFor(t, pageWait, "every EventSource through nginx to get 3 events", `window.sources.every((s) => s.events >= 3)`)
	got := evaluate[counts](t, b, read)
	if got.Protocol != "h2" {
		t.Errorf("nextHopProtocol through nginx = %q, want h2", got.Protocol)
	}
	t.Logf("through nginx (%s): the page's stream and %d EventSources, events each: %v", got.Protocol, streams, got.Events)

	// Straight to a replica, over HTTP/1.1: Chromium opens six connections to an origin,
	// and the page's own stream holds one of them.
	b.navigate(t, r.proc.url+"/")
	b.waitForDashboard(t, "the page's own stream from the replica", `d.events >= 1 && d.state === "open"`)
	evaluate[bool](t, b, open)
	b.waitFor(t, pageWait, "some EventSources straight to the replica to get 10 events",
		`window.sources.filter((s) => s.events >= 10).length >= 1`)
	got = evaluate[counts](t, b, read)
	receiving, stalled := 0, 0
	for i, n := range got.Events {
		switch {
		case n > 0:
			receiving++
		case got.States[i] == 0: // CONNECTING: the request waits for a free connection
			stalled++
		}
	}
	if got.Protocol != "http/1.1" || receiving+1 > 6 || stalled == 0 {
		t.Errorf("straight to the replica: protocol %q, %d of %d EventSources receiving besides the page's own, %d stalled; want http/1.1, at most 6 streams in all, the rest stalled",
			got.Protocol, receiving, streams, stalled)
	}
	t.Logf("straight to the replica (%s): %d of %d EventSources receive besides the page's own, %d stalled while the others got 10 events; events each: %v",
		got.Protocol, receiving, streams, stalled, got.Events)
}

// TestProxy_RollingRestartContinuesIdsAfterAShortWait restarts both replicas in turn under
// 200 clients and measures what a client of the random stream lives through: the longest
// wait for an event, and ids that go on from its Last-Event-ID on the other replica. Those
// ids only continue a count: the random stream replays nothing, and the values of the gap
// were never produced. Delivery of every event across a reconnect is what topics are for.
func TestProxy_RollingRestartContinuesIdsAfterAShortWait(t *testing.T) {
	skipShort(t, "nginx")
	const clients, interval, retry = 200, 200 * time.Millisecond, time.Second
	args := []string{"-interval", interval.String(), "-retry", retry.String()}
	replicas := []*replica{startReplica(t, args...), startReplica(t, args...)}
	p := startNginx(t, []string{replicas[0].addr, replicas[1].addr})

	f := startFollowers(t, p, p.url+"/sse", clients)
	f.waitAllSince(t, time.Now(), 30*time.Second, fmt.Sprintf("all %d clients receive events", clients))
	eventually(t, 10*time.Second, "both replicas hold streams", func() bool {
		return replicas[0].clients(t)+replicas[1].clients(t) == clients
	})
	t.Logf("before the restarts: replicas hold %d and %d streams", replicas[0].clients(t), replicas[1].clients(t))

	rollingRestart(t, f, replicas, interval+retry)

	// A wait: the event before the replica stopped, the reconnection time, the new stream's
	// first event one interval later, and what a busy machine adds.
	maxWait := retry + 2*interval + reconnectMargin
	waits := f.check(t, maxWait)
	moved := 0
	for _, s := range f.snapshot() {
		if s.opens > 1 {
			moved++
		}
	}
	t.Logf("rolling restart of 2 replicas, %d clients over HTTP/2 through nginx, -interval %s -retry %s: %d clients reconnected; "+
		"longest wait for an event per client: median %s, p99 %s, max %s; every client's ids went on from its Last-Event-ID",
		clients, interval, retry, moved, quantile(waits, 0.5).Round(time.Millisecond), quantile(waits, 0.99).Round(time.Millisecond),
		waits[len(waits)-1].Round(time.Millisecond))
	t.Logf("after the restarts, without -max-lifetime: replicas hold %d and %d streams", replicas[0].clients(t), replicas[1].clients(t))
}

// rollingRestart stops each replica in turn with SIGTERM, waits until every client has had
// an event since (so all of them have moved to the other replica, within settle and a
// margin), and starts it again on its port.
func rollingRestart(t *testing.T, f *followers, replicas []*replica, settle time.Duration) {
	t.Helper()
	for i, r := range replicas {
		stopped := time.Now()
		took := r.stop(t)
		f.waitAllSince(t, stopped.Add(took), settle+15*time.Second, fmt.Sprintf("every client receives events after replica %d stopped", i))
		t.Logf("replica %d exited %s after SIGTERM; every client had an event again %s after it exited",
			i, took.Round(time.Millisecond), time.Since(stopped.Add(took)).Round(time.Millisecond))
		r.start(t)
	}
}

func TestProxy_MaxLifetimeRebalancesAfterRestarts(t *testing.T) {
	skipShort(t, "nginx")
	const clients, interval, retry, lifetime = 200, 200 * time.Millisecond, time.Second, 5 * time.Second
	args := []string{"-interval", interval.String(), "-retry", retry.String(), "-max-lifetime", lifetime.String()}
	replicas := []*replica{startReplica(t, args...), startReplica(t, args...)}
	p := startNginx(t, []string{replicas[0].addr, replicas[1].addr})

	f := startFollowers(t, p, p.url+"/sse", clients)
	f.waitAllSince(t, time.Now(), 30*time.Second, fmt.Sprintf("all %d clients receive events", clients))
	rollingRestart(t, f, replicas, interval+retry)

	back := time.Now()
	var held [2]int64
	eventually(t, 2*lifetime, "each replica holds a third of the clients or more", func() bool {
		held = [2]int64{replicas[0].clients(t), replicas[1].clients(t)}
		return 3*held[0] >= clients && 3*held[1] >= clients
	})
	t.Logf("-max-lifetime %s: %s after the last replica was back, the replicas hold %d and %d of %d streams",
		lifetime, time.Since(back).Round(100*time.Millisecond), held[0], held[1], clients)
	f.check(t, retry+2*interval+reconnectMargin)
}

func TestProxy_KeepaliveOutlivesReadTimeout(t *testing.T) {
	skipShort(t, "nginx")
	// The shipped timeout is a minute; this test renders 2s, and keepalives 4 times as often,
	// to see three timeouts pass in a few seconds.
	const readTimeout, keepalive = 2 * time.Second, 500 * time.Millisecond
	shorter := nginxEdit{"proxy_read_timeout 1m;", "proxy_read_timeout " + strconv.Itoa(int(readTimeout.Seconds())) + "s;"}
	kept := startNginx(t, []string{startReplica(t, "-interval", "1h", "-keepalive", keepalive.String()).addr}, shorter)
	// The contrast: keepalives rarer than the timeout, so nginx does cut the stream.
	cut := startNginx(t, []string{startReplica(t, "-interval", "1h", "-keepalive", "1h").addr}, shorter)

	live, liveStart := openTimed(t, kept.client(), kept.url+"/sse")
	silent, silentStart := openTimed(t, cut.client(), cut.url+"/sse")

	eventually(t, 3*readTimeout+10*time.Second, "nginx cuts the stream without keepalives", func() bool {
		return !silent.snapshot().ended.IsZero()
	})
	s := silent.snapshot()
	if lasted := s.ended.Sub(silentStart); lasted < readTimeout {
		t.Errorf("the stream without keepalives ended after %s, before the %s proxy_read_timeout: %v", lasted, readTimeout, s.endErr)
	}
	eventually(t, 3*readTimeout+10*time.Second, "keepalives for three read timeouts", func() bool {
		l := live.snapshot()
		return !l.ended.IsZero() || (len(l.comments) > 0 && l.comments[len(l.comments)-1].Sub(liveStart) > 3*readTimeout)
	})
	l := live.snapshot()
	if !l.ended.IsZero() {
		t.Fatalf("the stream with keepalives every %s ended after %s: %v; want it open past 3 × proxy_read_timeout %s",
			keepalive, l.ended.Sub(liveStart), l.endErr, readTimeout)
	}
	if len(l.events) != 0 {
		t.Errorf("got %d events at -interval 1h, want none: only keepalives may keep this stream open", len(l.events))
	}
	t.Logf("proxy_read_timeout %s: a stream with -keepalive %s lasted %s on %d comments alone; one with no keepalive was cut after %s (%v)",
		readTimeout, keepalive, l.comments[len(l.comments)-1].Sub(liveStart).Round(10*time.Millisecond), len(l.comments),
		s.ended.Sub(silentStart).Round(10*time.Millisecond), s.endErr)
}

func TestProxy_ReloadMovesStreamsToNewWorkers(t *testing.T) {
	skipShort(t, "nginx")
	// The shipped worker_shutdown_timeout is 10s; this test renders 2s.
	const clients, interval, retry, shutdown = 20, 100 * time.Millisecond, time.Second, 2 * time.Second
	r := startReplica(t, "-interval", interval.String(), "-retry", retry.String())
	p := startNginx(t, []string{r.addr}, nginxEdit{"worker_shutdown_timeout 10s;", "worker_shutdown_timeout 2s;"})
	f := startFollowers(t, p, p.url+"/sse", clients)
	f.waitAllSince(t, time.Now(), 20*time.Second, fmt.Sprintf("all %d clients receive events", clients))

	reloaded := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatalf("reload nginx: %v", err)
	}
	// The old workers hold the streams until worker_shutdown_timeout, then every client
	// reconnects to a new worker.
	eventually(t, shutdown+retry+15*time.Second, "every client reconnects after the reload and gets events", func() bool {
		for _, s := range f.snapshot() {
			if s.opens < 2 || !s.openedAt.After(reloaded) || !s.lastAt.After(s.openedAt) {
				return false
			}
		}
		return true
	})
	waits := f.check(t, shutdown+retry+2*interval+reconnectMargin)
	t.Logf("nginx reload with worker_shutdown_timeout %s: %d clients reconnected to the new workers, ids unbroken; "+
		"longest wait for an event per client: median %s, max %s (-retry %s)",
		shutdown, clients, quantile(waits, 0.5).Round(time.Millisecond), waits[len(waits)-1].Round(time.Millisecond), retry)
}
