package main

// Tests of the clients a dashboard meets on real networks: a client that vanishes without a
// FIN or a reset (its packets dropped by nftables in a network namespace the test makes
// itself), a reader that stops reading at a low event rate, EventSource over -max-clients,
// and reconnects spread out rather than all at once. The namespace tests need unshare
// (util-linux), ip (iproute2) and nft (nftables), and root; without them they skip, except
// on CI.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// netnsEnv marks a test binary re-executed inside a network namespace of its own; its value
// names the ghost-client case to run there.
const netnsEnv = "SSE_DASHBOARD_NETNS_CASE"

// ghostCase is one run of the ghost-client scenario: the server's flags, and the dead-client
// timeout and event interval they amount to, from which the bound follows.
type ghostCase struct {
	name     string
	args     []string
	timeout  time.Duration
	interval time.Duration
}

// ghostCases are the ghost-client scenarios: a short timeout in every run, the defaults
// (30 s, one event a second) under -soak only, because that one takes half a minute.
func ghostCases() []ghostCase {
	cases := []ghostCase{{"short timeout", []string{"-dead-client-timeout", "2s", "-interval", "100ms"}, 2 * time.Second, 100 * time.Millisecond}}
	if *soak {
		cases = append(cases, ghostCase{"default flags", nil, 30 * time.Second, time.Second})
	}
	return cases
}

// ghostMargin is how much later than its dead-client timeout plus one interval a ghost may
// be dropped: scheduling on a busy machine, and the write that notices the dropped connection.
const ghostMargin = 3 * time.Second

func TestFault_GhostClientIsDropped(t *testing.T) {
	if name := os.Getenv(netnsEnv); name != "" {
		for _, c := range ghostCases() {
			if c.name == name {
				ghostClient(t, c)
				return
			}
		}
		t.Fatalf("%s=%q names no ghost case", netnsEnv, name)
	}
	unshare := requireTool(t, "", "unshare", "util-linux")
	requireTool(t, "", "ip", "iproute2")
	requireTool(t, "", "nft", "nftables")
	if out, err := exec.Command(unshare, "-n", "true").CombinedOutput(); err != nil {
		const why = "cannot create a network namespace (unshare -n needs root or CAP_SYS_ADMIN)"
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s: %v: %s", why, err, out)
		}
		t.Skipf("SKIPPING NETWORK TEST: %s: %v: %s", why, err, out)
	}
	for _, c := range ghostCases() {
		t.Run(c.name, func(t *testing.T) {
			// The test binary again, alone in a namespace whose loopback only it uses.
			args := []string{"-n", "--", os.Args[0], "-test.run=^TestFault_GhostClientIsDropped$", "-test.count=1", "-test.v", "-test.timeout=5m"}
			if *soak {
				args = append(args, "-soak")
			}
			cmd := exec.Command(unshare, args...)
			cmd.Env = append(os.Environ(), netnsEnv+"="+c.name)
			start := time.Now()
			out, err := cmd.CombinedOutput()
			if err != nil || !strings.Contains(string(out), "--- PASS: TestFault_GhostClientIsDropped") {
				t.Fatalf("the ghost-client test in its own network namespace: %v, want a pass; its output:\n%s", err, out)
			}
			m := regexp.MustCompile(`ghost dropped (\S+) after its packets stopped`).FindSubmatch(out)
			if m == nil {
				t.Fatalf("the namespace's test did not say when the ghost was dropped; its output:\n%s", out)
			}
			took, _ := time.ParseDuration(string(m[1]))
			reason := "reason not logged"
			if r := regexp.MustCompile(`ended with (reason \S+)`).FindSubmatch(out); r != nil {
				reason = string(r[1])
			}
			t.Logf("-dead-client-timeout %s, -interval %s: ghost dropped %s after its packets stopped (%s)", c.timeout, c.interval, took, reason)
			record(soakRow{fmt.Sprintf("ghost client (timeout %s, interval %s): dropped after %s", c.timeout, c.interval, took.Round(100*time.Millisecond)),
				1, time.Since(start), "none", 0, 0})
		})
	}
}

// ghostClient runs inside the namespace: the server and a client on its loopback, a stream
// that runs, then nftables drops every packet to and from the client's port, as when a phone
// leaves Wi-Fi. The server must drop the stream by its dead-client timeout, and no sooner.
func ghostClient(t *testing.T, c ghostCase) {
	if out, err := exec.Command(requireTool(t, "", "ip", "iproute2"), "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("ip link set lo up: %v: %s", err, out)
	}
	srv := startServer(t, c.args...)
	producersBefore := goroutinesIn(produce)
	conn := dialRaw(t, srv.url)
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	io.WriteString(conn, streamRequest)
	reader := bufio.NewReader(conn)
	resp, err := http.ReadResponse(reader, nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /sse: %v", err)
	}
	body := bufio.NewReader(resp.Body)
	for ids := 0; ids < 2; {
		line, err := body.ReadString('\n')
		if err != nil {
			t.Fatalf("reading the stream before the packets stop: %v", err)
		}
		if strings.HasPrefix(line, "id: ") {
			ids++
		}
	}
	if got := srv.healthClients(t); got != 1 {
		t.Fatalf("/healthz clients = %d with the stream running, want 1", got)
	}
	sentBefore := metric(t, srv.adminURL, "sse_events_total")

	port := conn.LocalAddr().(*net.TCPAddr).Port
	rules := fmt.Sprintf(`table inet ghost {
	chain input {
		type filter hook input priority 0; policy accept;
		tcp sport %d drop
		tcp dport %d drop
	}
}
`, port, port)
	nft := exec.Command(requireTool(t, "", "nft", "nftables"), "-f", "-")
	nft.Stdin = strings.NewReader(rules)
	if out, err := nft.CombinedOutput(); err != nil {
		t.Fatalf("nft -f: %v: %s\n%s", err, out, rules)
	}
	cut := time.Now()

	bound := c.timeout + c.interval + ghostMargin
	var took time.Duration
	for {
		if srv.healthClients(t) == 0 {
			took = time.Since(cut)
			break
		}
		if time.Since(cut) > bound {
			t.Fatalf("the ghost is still counted %s after its packets stopped, want it dropped within %s (timeout %s + interval %s + %s)",
				time.Since(cut).Round(time.Millisecond), bound, c.timeout, c.interval, ghostMargin)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Data is unacknowledged from the first event after the cut at the latest: the kernel
	// may give up no sooner than the timeout after that.
	if took < c.timeout-c.interval {
		t.Errorf("the ghost was dropped %s after its packets stopped, before the %s timeout: something else ended it", took, c.timeout)
	}
	eventually(t, 5*time.Second, "the ghost's producer and handler return", func() bool {
		return goroutinesIn(produce) == producersBefore && streamHandlers() == 0
	})
	if got := metric(t, srv.adminURL, "sse_streams_open"); got != 0 {
		t.Errorf("sse_streams_open = %v after the ghost was dropped, want 0", got)
	}
	// Nothing goes on "sending" into the kernel buffer.
	sent := metric(t, srv.adminURL, "sse_events_total")
	time.Sleep(3 * c.interval)
	if after := metric(t, srv.adminURL, "sse_events_total"); after != sent {
		t.Errorf("sse_events_total went from %v to %v after the ghost was dropped, want no more events", sent, after)
	}
	reason := srv.logs.waitFor(t, regexp.MustCompile(`msg="client disconnected" .*reason=(\S+)`), 5*time.Second)
	t.Logf("%d events were sent into the dropped connection; the stream ended with reason %s", int(sent-sentBefore), reason)
	t.Logf("ghost dropped %s after its packets stopped", took.Round(time.Millisecond))
}

// receiveQueue returns how many bytes wait unread in conn's receive buffer, by peeking at
// them: nothing is read, so the window stays as the stalled client left it.
func receiveQueue(t *testing.T, conn *net.TCPConn) int {
	t.Helper()
	raw, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 256<<10) // more than any receive buffer the test sets
	var n int
	var peekErr error
	if err := raw.Control(func(fd uintptr) {
		n, _, peekErr = syscall.Recvfrom(int(fd), buf, syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	}); err != nil {
		t.Fatal(err)
	}
	if peekErr == syscall.EAGAIN {
		return 0
	}
	if peekErr != nil {
		t.Fatalf("peek at the receive queue: %v", peekErr)
	}
	return n
}

func TestFault_StalledReaderIsDroppedAtAnyRate(t *testing.T) {
	skipShort(t, "about 15 s for a receive window to shut at ten events a second")
	const (
		deadAfter = 2 * time.Second
		interval  = 100 * time.Millisecond
		margin    = 3 * time.Second
		// sendBuffer is -send-buffer's default: at this rate it would take minutes to fill,
		// and only then could -write-timeout bite.
		sendBuffer = 64 << 10
	)
	srv := startServer(t, "-interval", interval.String(), "-dead-client-timeout", deadAfter.String())
	canary := openCanaries(t, srv.url, 3)
	start := time.Now()
	conn := dialStalled(t, srv.url)
	eventually(t, 10*time.Second, "the stalled reader's stream is open", func() bool { return srv.healthClients(t) == 4 })
	// The client never reads. Its receive queue grows until its window is shut; from
	// then on the server's data waits in its own send buffer.
	queued, grewAt := 0, start
	var dropped time.Time
	for dropped.IsZero() {
		if n := receiveQueue(t, conn); n > queued {
			queued, grewAt = n, time.Now()
		}
		if srv.healthClients(t) == 3 {
			dropped = time.Now()
			break
		}
		if time.Since(start) > 2*time.Minute {
			t.Fatalf("the stalled reader is still counted after %s (its queue last grew to %d bytes %s ago)",
				time.Since(start).Round(time.Second), queued, time.Since(grewAt).Round(time.Millisecond))
		}
		time.Sleep(interval / 2)
	}
	windowClosed := grewAt.Sub(start)
	afterClose := dropped.Sub(grewAt)
	rate := float64(queued) / windowClosed.Seconds() // bytes a second the stream sends
	fill := time.Duration(float64(sendBuffer) / rate * float64(time.Second))
	t.Logf("window shut after %s (%d bytes queued, %.0f bytes/s); dropped %s later; the %d-byte send buffer would have taken %s to fill",
		windowClosed.Round(time.Millisecond), queued, rate, afterClose.Round(time.Millisecond), sendBuffer, fill.Round(time.Second))
	if bound := deadAfter + interval + margin; afterClose > bound {
		t.Errorf("dropped %s after its window shut, want within %s (timeout %s + interval %s + %s)", afterClose, bound, deadAfter, interval, margin)
	}
	if afterClose < deadAfter-interval {
		t.Errorf("dropped %s after its window shut, before the %s timeout: something else ended it", afterClose, deadAfter)
	}
	if took := dropped.Sub(start); took > fill/2 {
		t.Errorf("dropped after %s, want well before the send buffer could fill (%s)", took, fill)
	}
	gaps := canary.check(canaryMaxWait)
	leaks := expectBaseline(t, srv, 3)
	record(soakRow{fmt.Sprintf("stalled reader at 100ms events: window shut %s, dropped %s later", windowClosed.Round(100*time.Millisecond), afterClose.Round(100*time.Millisecond)),
		1, time.Since(start), leaks, gaps, 3})
}

// refusedThenServed is what an EventSource on a server at -max-clients lived through.
type refusedThenServed struct {
	mu       sync.Mutex
	refusals int             // streams that only said "too many open streams"
	retries  []time.Duration // the reconnection time after each refusal
	ids      []string        // of every event, in order
	resumed  []string        // the Last-Event-ID of each connection that got events
	ended    chan struct{}   // a signal at each clean end of a stream that had events
	resume   chan struct{}   // lets the client reconnect after such an end
}

func TestNetwork_RefusedEventSourceReconnectsByItself(t *testing.T) {
	skipShort(t, "clients that wait out retry: (4 s)")
	t.Parallel()
	// A Go client that follows the HTML standard's reconnection rules, as the npm
	// eventsource package does: it honours retry:, resends Last-Event-ID, and reconnects
	// after a clean end.
	srv := startServer(t, "-max-clients", "1", "-interval", "50ms", "-retry", "200ms", "-retry-spread", "200ms",
		"-max-lifetime", "3s")
	rejectedBefore := metric(t, srv.adminURL, `sse_requests_rejected_total{reason="max_clients"}`)
	holder := openStream(t, srv.url, nil)
	holder.next(t)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	seen := &refusedThenServed{ended: make(chan struct{}), resume: make(chan struct{})}
	client := newSSEClient(srv.url+"/sse", &http.Client{Transport: &http.Transport{DisableKeepAlives: true}})
	// On the client's goroutine only: the Last-Event-ID the current connection sent, and
	// how many events it has had.
	var sentID string
	var events int
	client.onOpen = func(*http.Response) {
		sentID, events = client.lastEventID, 0
	}
	client.onComment = func(text string, _ time.Time) {
		if strings.Contains(text, "too many open streams") {
			seen.mu.Lock()
			seen.refusals++
			seen.mu.Unlock()
		}
	}
	client.onEvent = func(ev sseEvent) {
		seen.mu.Lock()
		defer seen.mu.Unlock()
		if events == 0 {
			seen.resumed = append(seen.resumed, sentID)
		}
		events++
		seen.ids = append(seen.ids, ev.id)
	}
	client.onEnd = func(err error, next time.Time) {
		if err != nil || events == 0 {
			seen.mu.Lock()
			seen.retries = append(seen.retries, client.retry)
			seen.mu.Unlock()
			return
		}
		// The served stream reached -max-lifetime: another client takes the place before
		// this one comes back.
		select {
		case seen.ended <- struct{}{}:
		case <-ctx.Done():
			return
		}
		select {
		case <-seen.resume:
		case <-ctx.Done():
		}
	}
	done := make(chan error, 1)
	go func() { done <- client.run(ctx) }()

	refusals := func() int {
		seen.mu.Lock()
		defer seen.mu.Unlock()
		return seen.refusals
	}
	eventually(t, 10*time.Second, "the client is refused twice while the place is taken", func() bool { return refusals() >= 2 })
	holder.close()

	// The client gets in by itself, is served until -max-lifetime, and is then refused again.
	select {
	case <-seen.ended:
		second := openStream(t, srv.url, nil)
		second.next(t)
		before := refusals()
		seen.resume <- struct{}{}
		eventually(t, 10*time.Second, "the client is refused again", func() bool { return refusals() > before })
		second.close()
	case err := <-done:
		t.Fatalf("the client gave up: %v, want it to reconnect by itself", err)
	case <-time.After(20 * time.Second):
		t.Fatal("the client was not served within 20s of the place coming free")
	}
	// And gets in once more, resuming after the last id it saw.
	eventually(t, 10*time.Second, "the client is served again", func() bool {
		seen.mu.Lock()
		defer seen.mu.Unlock()
		return len(seen.resumed) >= 2
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("client.run = %v, want nil: EventSource must never give up", err)
	}

	seen.mu.Lock()
	defer seen.mu.Unlock()
	for i, id := range seen.ids {
		if id != strconv.Itoa(i+1) {
			t.Fatalf("ids = %q, want 1, 2, 3, ... across every reconnect", seen.ids)
		}
	}
	if seen.resumed[0] != "" || seen.resumed[1] == "" {
		t.Errorf("Last-Event-ID of the served connections = %q, want none, then the last id seen", seen.resumed)
	}
	for _, retry := range seen.retries {
		if retry < 200*time.Millisecond || retry > 400*time.Millisecond {
			t.Errorf("reconnection time after a refusal = %s, want -retry plus up to -retry-spread: 200ms to 400ms", retry)
		}
	}
	if got := metric(t, srv.adminURL, `sse_requests_rejected_total{reason="max_clients"}`) - rejectedBefore; got < float64(seen.refusals) || seen.refusals < 3 {
		t.Errorf("rejected went up by %v, with %d refusals seen, want at least 3 and every one counted", got, seen.refusals)
	}
}

func TestBrowser_RefusedEventSourceReconnectsByItself(t *testing.T) {
	srv := startServer(t, "-max-clients", "1", "-interval", "100ms", "-retry", "200ms", "-retry-spread", "200ms")
	// One EventSource and no script of ours that reconnects: whatever reconnects is the browser.
	page := `<!doctype html>
<meta charset="utf-8">
<title>a page that reads the stream</title>
<link rel="icon" href="data:,">
<script>
window.log = [];

const es = new EventSource(` + jsString(t, srv.url+"/sse") + `);
es.onopen = () => { window.log.push("open"); };
es.onerror = () => { window.log.push("error " + es.readyState); };
es.onmessage = (e) => { window.log.push("message " + e.lastEventId); };
</script>`
	other := startOtherOrigin(t, serveHTML(page))
	rejectedBefore := metric(t, srv.adminURL, `sse_requests_rejected_total{reason="max_clients"}`)
	b := newBrowser(t)

	// The first page, in a tab of its own, takes the only place.
	first, closeFirst := chromedp.NewContext(b.ctx)
	defer closeFirst()
	if err := chromedp.Do(first, chromedp.Navigate(other+"/")); err != nil {
		t.Fatalf("open the first page: %v", err)
	}
	if _, err := chromedp.Run(first, chromedp.Poll[chromedp.Void](`window.log.includes("message 1")`,
		chromedp.WithPollingInterval(20*time.Millisecond), chromedp.WithPollingTimeout(pageWait))); err != nil {
		t.Fatalf("the first page's first event: %v", err)
	}

	// The second page is refused, again and again, with an EventSource that stays alive.
	b.navigate(t, other+"/")
	b.waitFor(t, pageWait, "the second page refused twice", `window.log.filter((e) => e === "error 0").length >= 2`)
	if got := evaluate[[]string](t, b, `window.log.filter((e) => e.startsWith("message"))`); len(got) != 0 {
		t.Fatalf("the second page got %q while the first held the only place", got)
	}
	if err := chromedp.Cancel(first); err != nil {
		t.Fatalf("close the first page: %v", err)
	}

	b.waitFor(t, pageWait, "the second page's EventSource to get in by itself", `window.log.includes("message 3")`)
	log := evaluate[[]string](t, b, `window.log`)
	var ids []string
	for _, entry := range log {
		if id, ok := strings.CutPrefix(entry, "message "); ok {
			ids = append(ids, id)
		}
		if entry == "error 2" {
			t.Errorf("the EventSource closed for good (readyState 2); log %q", log)
		}
	}
	if len(ids) < 3 || !slices.Equal(ids[:3], []string{"1", "2", "3"}) {
		t.Errorf("event ids = %q, want 1, 2, 3, ...", ids)
	}
	if got := metric(t, srv.adminURL, `sse_requests_rejected_total{reason="max_clients"}`) - rejectedBefore; got < 2 {
		t.Errorf("rejected went up by %v, want at least the 2 refusals the page saw", got)
	}
	t.Logf("the second page's EventSource: %q", log)
}

func TestNetwork_MaxLifetimeEndsAreSpread(t *testing.T) {
	skipShort(t, "streams that live out -max-lifetime (5 s)")
	t.Parallel()
	const (
		streams  = 200
		lifetime = 2 * time.Second
		window   = lifetime / 5 // ±10 %
	)
	// -log-rate 0: every stream's end line, with its duration, is the evidence.
	srv := startServer(t, "-max-lifetime", lifetime.String(), "-interval", "1h", "-keepalive", "1h", "-log-rate", "0")
	lasted := make(chan time.Duration, streams)
	var wg sync.WaitGroup
	for range streams {
		conn := dialRaw(t, srv.url)
		defer conn.Close()
		wg.Go(func() {
			conn.SetDeadline(time.Now().Add(30 * time.Second))
			io.WriteString(conn, streamRequest)
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Errorf("GET /sse: %v", err)
				return
			}
			body := bufio.NewReader(resp.Body)
			if line, err := body.ReadString('\n'); err != nil || !strings.HasPrefix(line, "retry: ") {
				t.Errorf("first line %q (%v), want the opening retry:", line, err)
				return
			}
			opened := time.Now()
			if _, err := io.Copy(io.Discard, body); err != nil {
				t.Errorf("stream cut with %v, want a clean end at its lifetime", err)
				return
			}
			lasted <- time.Since(opened)
		})
	}
	wg.Wait()
	close(lasted)
	var seen []time.Duration // by the clients, from the opening frame to the end
	for d := range lasted {
		seen = append(seen, d)
	}
	if len(seen) != streams {
		t.Fatalf("%d of %d streams ended cleanly", len(seen), streams)
	}
	// The clients see the ends spread: uniform over 400ms, the middle 90 % of 200 ends span
	// about 360ms. A busy machine delays some reads, which only widens it.
	slices.Sort(seen)
	if span := seen[streams*95/100] - seen[streams*5/100]; span < window/2 {
		t.Errorf("the middle 90 %% of stream ends span %s as the clients saw them, want at least %s of the %s window", span, window/2, window)
	}

	// The server's own durations, free of the clients' scheduling: a timer never fires
	// early, so none is under the window, and some are 100ms or more under -max-lifetime,
	// which only the jitter can do (a quarter of them on an idle machine; a busy one fires
	// many timers late). Its duration starts just before the opening is written, a little
	// before the lifetime's timer.
	ended := regexp.MustCompile(`msg="client disconnected" .*duration=(\S+) .*reason=max_lifetime`)
	var durations []time.Duration
	for _, m := range ended.FindAllStringSubmatch(srv.logs.String(), -1) {
		d, err := time.ParseDuration(m[1])
		if err != nil {
			t.Fatalf("duration=%s in the log: %v", m[1], err)
		}
		durations = append(durations, d)
	}
	if len(durations) != streams {
		t.Fatalf("%d streams logged an end at max lifetime, want %d", len(durations), streams)
	}
	slices.Sort(durations)
	low, high := lifetime-window/2, lifetime+window/2
	if durations[0] < low || durations[streams-1] > high+time.Second {
		t.Errorf("streams lasted %s to %s, want %s to %s (-max-lifetime ±10 %%, and up to 1s late on a busy machine)", durations[0], durations[streams-1], low, high)
	}
	if early, _ := slices.BinarySearch(durations, lifetime-window/4); early < streams/40 {
		t.Errorf("%d of %d streams lasted %s or more less than -max-lifetime, want about a quarter", early, streams, window/4)
	}
	t.Logf("%d streams with -max-lifetime %s lasted %s to %s; the clients saw the middle 90 %% of ends spread over %s", streams, lifetime,
		durations[0], durations[streams-1], (seen[streams*95/100] - seen[streams*5/100]).Round(time.Millisecond))
}

func TestNetwork_ShutdownSpreadsReconnects(t *testing.T) {
	skipShort(t, "clients that wait out a spread retry: (3 s)")
	t.Parallel()
	const (
		streams = 200
		retry   = time.Second
		spread  = 2 * time.Second
	)
	proc := startProcess(t, "-interval", "1h", "-keepalive", "1h", "-retry", retry.String(), "-retry-spread", spread.String(),
		"-max-clients", strconv.Itoa(streams))
	bodies := make([]*bufio.Reader, streams)
	for i := range bodies {
		conn := dialRaw(t, proc.url)
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(30 * time.Second))
		io.WriteString(conn, streamRequest)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("stream %d: %v", i, err)
		}
		bodies[i] = bufio.NewReader(resp.Body)
		if line, _ := bodies[i].ReadString('\n'); line != "retry: 1000\n" {
			t.Fatalf("stream %d opened with %q, want retry: 1000", i, line)
		}
	}
	proc.signal(t, syscall.SIGTERM, 5*time.Second)
	retries := make([]int, 0, streams)
	for i, body := range bodies {
		rest, err := io.ReadAll(body)
		if err != nil {
			t.Errorf("stream %d cut with %v, want a clean end", i, err)
			continue
		}
		frames := parseFrames(rest)
		last := frames[len(frames)-1]
		ms, err := strconv.Atoi(last.retry)
		if err != nil || !slices.Contains(last.comments, "server shutting down") {
			t.Errorf("stream %d ended with %q, want a retry: and a comment that says why", i, rest)
			continue
		}
		if ms < int(retry.Milliseconds()) || ms > int((retry+spread).Milliseconds()) {
			t.Errorf("stream %d was told retry: %d at shutdown, want %s to %s", i, ms, retry, retry+spread)
		}
		retries = append(retries, ms)
	}
	slices.Sort(retries)
	distinct := len(slices.Compact(slices.Clone(retries)))
	// Drawn uniformly from 2001 values, 200 retries are nearly all different.
	if distinct < streams*3/4 {
		t.Errorf("%d different retry: values among %d streams, want nearly all different", distinct, len(retries))
	}
	if len(retries) > 0 {
		if span := retries[len(retries)-1] - retries[0]; span < int(spread.Milliseconds())*3/4 {
			t.Errorf("retry: values at shutdown span %d ms, want most of the %s spread", span, spread)
		}
		t.Logf("SIGTERM with %d streams: retry: from %d to %d ms, %d different", streams, retries[0], retries[len(retries)-1], distinct)
	}
}
