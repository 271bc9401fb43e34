package main

// End-to-end tests that drive the dashboard page in a real headless Chromium with chromedp.
// They need Debian's chromium (apt-get install chromium); without it they skip, except on CI.
// The README screenshot comes from the first test:
//
//	SCREENSHOT=$PWD/docs/dashboard.png go test -run TestBrowser_SameOrigin .

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image/png"
	"iter"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/chromedp"
)

const (
	// browserTestTimeout bounds a whole browser test: starting Chromium, every page action
	// and every wait. Nothing a test does can hang past it.
	browserTestTimeout = 60 * time.Second

	// pageWait is how long one wait on the page may take; generous, because the machine
	// may have two cores and the tests run with -race.
	pageWait = 15 * time.Second

	// consoleMarker starts the console.debug messages that checkConsole writes to learn
	// that every earlier console message has arrived.
	consoleMarker = "browser-test-console-flush-"
)

// chromePath returns the Chromium that the browser tests drive: $CHROME_PATH, else Debian's
// /usr/bin/chromium, else chromium on $PATH. Without one the test is skipped, loudly, or
// fails when CI=true, because CI must run these tests.
func chromePath(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("CHROME_PATH"); p != "" {
		path, err := exec.LookPath(p)
		if err != nil {
			t.Fatalf("CHROME_PATH=%q: %v; unset it or point it at Chromium", p, err)
		}
		return path
	}
	for _, p := range []string{"/usr/bin/chromium", "chromium"} {
		if path, err := exec.LookPath(p); err == nil {
			return path
		}
	}
	const missing = "no Chromium: neither $CHROME_PATH, /usr/bin/chromium nor chromium on $PATH"
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s; CI must run the browser tests (.ci/run installs it with apt-get install chromium)", missing)
	}
	t.Skipf("SKIPPING BROWSER TEST: %s. Install it with `apt-get install chromium`, or set CHROME_PATH.", missing)
	return ""
}

// browser is one headless Chromium with one tab. It records the tab's console, and when
// the test ends it fails the test on every console error or uncaught exception (CSP
// violations among them) that the test did not excuse.
type browser struct {
	ctx     context.Context // the tab; ends at the latest browserTestTimeout after newBrowser
	flushed chan string     // console markers that came back

	mu       sync.Mutex
	messages []chromedp.ConsoleMessage // everything but the markers, in order
	excuses  []consoleExcuse
}

// consoleExcuse is a console error that a test expects, with the reason.
type consoleExcuse struct {
	why   string
	match func(chromedp.ConsoleMessage) bool
}

// newBrowser starts Chromium for the test, offline and sandboxless (the tests run as root),
// with flags on top, and closes it when the test ends. Start the servers the page talks to
// before it, so that the browser is gone before they stop.
func newBrowser(t *testing.T, flags ...chromedp.ExecAllocatorOption) *browser {
	t.Helper()
	execPath := chromePath(t)
	ctx, cancelTimeout := context.WithTimeout(context.Background(), browserTestTimeout)
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(execPath),
		chromedp.NoSandbox,
		chromedp.Headless,
		chromedp.DisableGPU,
		chromedp.UserDataDir(t.TempDir()),
		// The network is closed: Chromium must not try to call home.
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-quic", true),
	)
	opts = append(opts, flags...)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	tabCtx, cancelTab := chromedp.NewContext(allocCtx)
	t.Cleanup(func() {
		cancelTab()
		cancelAlloc() // waits for Chromium to exit, before t.TempDir is removed
		cancelTimeout()
	})
	if err := chromedp.Do(tabCtx); err != nil {
		t.Fatalf("start %s: %v", execPath, err)
	}

	b := &browser{ctx: tabCtx, flushed: make(chan string, 16)}
	messages := chromedp.Console(tabCtx) // subscribes now, before any page loads
	recorded := make(chan struct{})
	go func() {
		defer close(recorded)
		b.record(messages)
	}()
	t.Cleanup(func() {
		b.checkConsole(t)
		cancelTab()
		<-recorded
	})
	return b
}

// record keeps every console message until the tab ends, and passes markers to flushed.
func (b *browser) record(messages iter.Seq2[chromedp.ConsoleMessage, error]) {
	for m, err := range messages {
		if err != nil {
			return
		}
		if m.Type == chromedp.ConsoleDebug && strings.HasPrefix(m.Text, consoleMarker) {
			select {
			case b.flushed <- m.Text:
			default:
			}
			continue
		}
		b.mu.Lock()
		b.messages = append(b.messages, m)
		b.mu.Unlock()
	}
}

// excuse makes checkConsole log, rather than fail on, the console errors that match;
// why says why the test expects them.
func (b *browser) excuse(why string, match func(chromedp.ConsoleMessage) bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.excuses = append(b.excuses, consoleExcuse{why, match})
}

// seen returns how many console messages so far match.
func (b *browser) seen(match func(chromedp.ConsoleMessage) bool) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for _, m := range b.messages {
		if match(m) {
			n++
		}
	}
	return n
}

// checkConsole fails the test for every console error and uncaught exception of the tab
// that no excuse covers. It first writes a marker to the console and waits for it, so
// that every message the page wrote before is in.
func (b *browser) checkConsole(t *testing.T) {
	t.Helper()
	marker := consoleMarker + strconv.FormatInt(time.Now().UnixNano(), 10)
	if err := chromedp.Do(b.ctx, chromedp.Evaluate[chromedp.Void]("console.debug("+strconv.Quote(marker)+")")); err != nil {
		t.Errorf("write a marker to the console: %v; messages the page wrote last may be missing", err)
	} else {
		timeout := time.After(5 * time.Second)
	wait:
		for {
			select {
			case got := <-b.flushed:
				if got == marker {
					break wait
				}
			case <-timeout:
				t.Errorf("console marker did not come back within 5s; messages the page wrote last may be missing")
				break wait
			}
		}
	}

	b.mu.Lock()
	defer b.mu.Unlock()
	for _, m := range b.messages {
		if m.Type != chromedp.ConsoleError && !m.IsException() {
			continue
		}
		if why := b.excused(m); why != "" {
			t.Logf("expected page console message (%s): %s", why, m)
			continue
		}
		t.Errorf("page console at %s:%d: got %s, want no console errors or uncaught exceptions", m.URL, m.Line+1, m)
	}
}

// excused returns why m is expected, or "" if it is not. b.mu must be held.
func (b *browser) excused(m chromedp.ConsoleMessage) string {
	for _, e := range b.excuses {
		if e.match(m) {
			return e.why
		}
	}
	return ""
}

// navigate loads url in the tab and waits for its load event.
func (b *browser) navigate(t *testing.T, url string) {
	t.Helper()
	if err := chromedp.Do(b.ctx, chromedp.Navigate(url)); err != nil {
		t.Fatalf("navigate to %s: %v", url, err)
	}
}

// waitFor polls the JavaScript expression cond in the page until it is truthy. After
// within, it fails the test with what was awaited and the text the page shows.
func (b *browser) waitFor(t *testing.T, within time.Duration, what, cond string) {
	t.Helper()
	_, err := chromedp.Run(b.ctx, chromedp.Poll[chromedp.Void](cond,
		chromedp.WithPollingInterval(20*time.Millisecond), chromedp.WithPollingTimeout(within)))
	if err != nil {
		text, textErr := chromedp.Run(b.ctx, chromedp.Evaluate[string](`document.body ? document.body.innerText : ""`))
		if textErr != nil {
			text = textErr.Error()
		}
		t.Fatalf("waiting for %s: %v (waited up to %s); the page shows:\n%s", what, err, within, text)
	}
}

// evaluate returns the value of the JavaScript expression in the page, decoded into T.
func evaluate[T any](t *testing.T, b *browser, expr string) T {
	t.Helper()
	v, err := chromedp.Run(b.ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// screenshot captures the viewport as a PNG, checks that it is width x height pixels,
// saves it in the test's temporary directory as name and returns it.
func (b *browser) screenshot(t *testing.T, name string, width, height int) []byte {
	t.Helper()
	buf, err := chromedp.Run(b.ctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Fatalf("capture screenshot: %v", err)
	}
	cfg, err := png.DecodeConfig(bytes.NewReader(buf))
	if err != nil {
		t.Fatalf("screenshot is not a PNG: %v", err)
	}
	if cfg.Width != width || cfg.Height != height {
		t.Errorf("screenshot is %dx%d, want %dx%d", cfg.Width, cfg.Height, width, height)
	}
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, buf, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", path)
	return buf
}

// dashboard is what the dashboard page shows, read in one evaluation so the fields agree.
type dashboard struct {
	State        string `json:"state"`     // #state text
	DataState    string `json:"dataState"` // #state data-state
	Value        string `json:"value"`
	ValueInvalid bool   `json:"valueInvalid"` // #value has data-invalid
	Events       int    `json:"events"`
	LastID       string `json:"lastId"`
	Reconnects   int    `json:"reconnects"`
	Points       int    `json:"points"` // #chart data-points
	Src          string `json:"src"`
	TryCurl      string `json:"tryCurl"`
}

// dashboardJS evaluates to the fields of dashboard.
const dashboardJS = `(() => {
	const el = (id) => document.getElementById(id);
	return {
		state: el("state").textContent,
		dataState: el("state").dataset.state || "",
		value: el("value").textContent,
		valueInvalid: el("value").hasAttribute("data-invalid"),
		events: Number(el("events").textContent),
		lastId: el("last-id").textContent,
		reconnects: Number(el("reconnects").textContent),
		points: Number(el("chart").getAttribute("data-points")),
		src: el("src").textContent,
		tryCurl: el("try-curl").textContent,
	};
})()`

// readDashboard returns what the dashboard page shows now.
func (b *browser) readDashboard(t *testing.T) dashboard {
	t.Helper()
	return evaluate[dashboard](t, b, dashboardJS)
}

// waitForDashboard waits until cond, a JavaScript expression over d (the fields of
// dashboard, e.g. `d.events >= 3 && d.state === "open"`), holds, and returns what the
// page then shows.
func (b *browser) waitForDashboard(t *testing.T, what, cond string) dashboard {
	t.Helper()
	b.waitFor(t, pageWait, what, "((d) => "+cond+")("+dashboardJS+")")
	return b.readDashboard(t)
}

// checkNoGap fails the test unless the last id the page shows equals its event count:
// with ids that count up from 1, that means no event was lost or repeated.
func checkNoGap(t *testing.T, d dashboard) {
	t.Helper()
	if d.LastID != strconv.Itoa(d.Events) {
		t.Errorf("#last-id = %q after %d events, want %d (ids are 1, 2, 3, ...: an id was lost or repeated)", d.LastID, d.Events, d.Events)
	}
}

// startOtherOrigin serves handler on another loopback port, which makes it another origin
// than the service, and returns its base URL. When the test ends, every request's context
// is cancelled, so streaming handlers must return when it is, and the server shuts down
// once they have.
func startOtherOrigin(t *testing.T, handler http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	base, cancelRequests := context.WithCancel(context.Background())
	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 5 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return base },
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		cancelRequests()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shut down the other origin: %v, want nil", err)
		}
		if err := <-served; err != http.ErrServerClosed {
			t.Errorf("other origin's Serve = %v, want %v", err, http.ErrServerClosed)
		}
	})
	return "http://" + ln.Addr().String()
}

// serveHTML answers with the HTML page body.
func serveHTML(body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprint(w, body)
	}
}

// jsString returns s as a JavaScript string literal.
func jsString(t *testing.T, s string) string {
	t.Helper()
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestBrowser_SameOriginPageShowsLiveEvents(t *testing.T) {
	srv := startServer(t, "-interval", "100ms")
	b := newBrowser(t)

	const width, height = 1280, 800
	if err := chromedp.Do(b.ctx, chromedp.EmulateViewport(width, height)); err != nil {
		t.Fatal(err)
	}
	b.navigate(t, srv.url+"/")
	d := b.waitForDashboard(t, "3 events, state open and 3 points in the chart",
		`d.events >= 3 && d.state === "open" && d.dataState === "open" && d.points >= 3`)
	checkNoGap(t, d)
	if want := srv.url + "/sse"; d.Src != want {
		t.Errorf("#src = %q, want %q", d.Src, want)
	}
	if want := srv.url + "/sse"; !strings.Contains(d.TryCurl, want) {
		t.Errorf("#try-curl = %q, want it to contain %q", d.TryCurl, want)
	}
	if d.Reconnects != 0 {
		t.Errorf("#reconnects = %d on a stream that never dropped, want 0", d.Reconnects)
	}
	if _, err := strconv.Atoi(d.Value); err != nil {
		t.Errorf("#value = %q, want the last User as a number", d.Value)
	}

	shot := os.Getenv("SCREENSHOT")
	if shot != "" {
		// The README image shows the chart full: all 60 points.
		b.waitForDashboard(t, "a full chart for the screenshot", `d.points >= 60`)
	}
	desktop := b.screenshot(t, "dashboard-desktop.png", width, height)
	if shot != "" {
		if err := os.MkdirAll(filepath.Dir(shot), 0o755); err != nil {
			t.Fatalf("SCREENSHOT: %v", err)
		}
		if err := os.WriteFile(shot, desktop, 0o644); err != nil {
			t.Fatalf("write SCREENSHOT: %v", err)
		}
		t.Logf("screenshot: %s", shot)
	}

	// Phone: the layout must fit the width, with nothing to scroll sideways. A mobile
	// browser widens the layout viewport to fit content that is too wide, so innerWidth
	// must stay the device's width too, or scrollWidth <= innerWidth would prove nothing.
	const phoneWidth, phoneHeight = 390, 844
	if err := chromedp.Do(b.ctx, chromedp.EmulateViewport(phoneWidth, phoneHeight, chromedp.EmulateMobile)); err != nil {
		t.Fatal(err)
	}
	fit := evaluate[struct {
		ScrollWidth int      `json:"scrollWidth"`
		InnerWidth  int      `json:"innerWidth"`
		Wide        []string `json:"wide"`
	}](t, b, `(() => {
		const wide = [...document.querySelectorAll("body *")]
			.filter((e) => e.getBoundingClientRect().right > `+strconv.Itoa(phoneWidth)+` + 0.5)
			.slice(0, 5)
			.map((e) => e.tagName.toLowerCase() + (e.id ? "#" + e.id : "") +
				(typeof e.className === "string" && e.className ? "." + e.className.trim().split(/\s+/).join(".") : ""));
		return { scrollWidth: document.documentElement.scrollWidth, innerWidth, wide };
	})()`)
	if fit.InnerWidth != phoneWidth || fit.ScrollWidth > fit.InnerWidth {
		t.Errorf("at %dx%d: innerWidth = %d, scrollWidth = %d, want innerWidth %d and scrollWidth <= innerWidth (no horizontal scrolling); wider than the phone: %q",
			phoneWidth, phoneHeight, fit.InnerWidth, fit.ScrollWidth, phoneWidth, fit.Wide)
	}
	b.screenshot(t, "dashboard-phone.png", phoneWidth, phoneHeight)

	// Dark mode: the page follows prefers-color-scheme.
	background := func(scheme string) string {
		t.Helper()
		_, err := chromedp.Call(b.ctx, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{
			Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: scheme}},
		})
		if err != nil {
			t.Fatalf("emulate prefers-color-scheme: %s: %v", scheme, err)
		}
		return evaluate[string](t, b, `getComputedStyle(document.body).backgroundColor`)
	}
	light := background("light")
	dark := background("dark")
	if dark == light {
		t.Errorf("body background with prefers-color-scheme: dark = %s, want a colour other than the light one (%s)", dark, light)
	}
	b.screenshot(t, "dashboard-phone-dark.png", phoneWidth, phoneHeight)
}

func TestBrowser_CrossOriginEventSource(t *testing.T) {
	srv := startServer(t, "-interval", "50ms")
	// The page of another origin reads the stream with its own inline script, as the
	// README tells anyone to do.
	page := `<!doctype html>
<meta charset="utf-8">
<title>another origin</title>
<link rel="icon" href="data:,">
<p>ids: <span id="ids"></span></p>
<script>
window.ids = [];
window.users = [];
window.errors = 0;
const es = new EventSource(` + jsString(t, srv.url+"/sse") + `);
es.onmessage = (e) => {
	window.ids.push(Number(e.lastEventId));
	window.users.push(JSON.parse(e.data).User);
	document.getElementById("ids").textContent = window.ids.join(" ");
};
es.onerror = () => { window.errors++; };
</script>`
	other := startOtherOrigin(t, serveHTML(page))
	if other == srv.url {
		t.Fatalf("the other origin is %s, the service's own", other)
	}
	b := newBrowser(t)

	b.navigate(t, other+"/")
	// An error event (CORS refused, say) ends the wait early; the checks below report it.
	b.waitFor(t, pageWait, "3 events or an error on the page of another origin", `window.ids.length >= 3 || window.errors > 0`)
	got := evaluate[struct {
		Origin string    `json:"origin"`
		IDs    []int     `json:"ids"`
		Users  []float64 `json:"users"`
		Errors int       `json:"errors"`
	}](t, b, `({ origin: location.origin, ids: window.ids, users: window.users, errors: window.errors })`)
	if got.Origin != other {
		t.Errorf("page origin = %s, want %s", got.Origin, other)
	}
	if len(got.IDs) < 3 {
		t.Errorf("got %d events, want at least 3", len(got.IDs))
	}
	for i, id := range got.IDs {
		if id != i+1 {
			t.Fatalf("ids = %v, want 1, 2, 3, ... in order", got.IDs)
		}
	}
	for i, user := range got.Users {
		if user < 0 || user > maxUsers || user != float64(int(user)) {
			t.Errorf("event %d: User = %v, want a whole number in [0, %d]", i+1, user, maxUsers)
		}
	}
	if got.Errors != 0 {
		t.Errorf("EventSource error events = %d, want 0 (CORS refused or the stream dropped)", got.Errors)
	}
}

func TestBrowser_HostileDataRendersInert(t *testing.T) {
	srv := startServer(t)
	// Each event goes out only when the test asks for it, so the test sees the page after each.
	events := []string{
		`{"User":"<img src=x onerror=window.pwned=1>"}`,            // valid JSON, User is markup
		`<img src=x onerror=window.pwned=2><script>window.pwned=3`, // not JSON at all
		`{"User":7}`, // a good event after the bad ones
	}
	release := make(chan struct{})
	mux := http.NewServeMux()
	mux.HandleFunc("GET /hostile", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		w.Header().Set("Access-Control-Allow-Origin", "*")
		rc := http.NewResponseController(w)
		fmt.Fprint(w, "retry: 60000\n\n")
		if rc.Flush() != nil {
			return
		}
		for i, data := range events {
			select {
			case <-release:
			case <-r.Context().Done():
				return
			}
			fmt.Fprintf(w, "id: %d\ndata: %s\n\n", i+1, data)
			if rc.Flush() != nil {
				return
			}
		}
		<-r.Context().Done()
	})
	hostile := startOtherOrigin(t, mux) + "/hostile"
	b := newBrowser(t)

	b.navigate(t, srv.url+"/?src="+url.QueryEscape(hostile))
	b.waitForDashboard(t, "the hostile stream open", `d.state === "open"`)
	send := func(n int) dashboard {
		t.Helper()
		select {
		case release <- struct{}{}:
		case <-time.After(pageWait):
			t.Fatalf("the page did not take event %d within %s", n, pageWait)
		}
		return b.waitForDashboard(t, fmt.Sprintf("event %d counted", n), "d.events === "+strconv.Itoa(n))
	}
	inert := func(after string) {
		t.Helper()
		got := evaluate[struct {
			Images   int      `json:"images"`
			Scripts  []string `json:"scripts"`
			Pwned    string   `json:"pwned"`
			Children int      `json:"children"`
		}](t, b, `({
			images: document.querySelectorAll("img").length,
			scripts: [...document.scripts].map((s) => s.getAttribute("src") || "inline"),
			pwned: typeof window.pwned,
			children: document.getElementById("value").childElementCount,
		})`)
		if got.Images != 0 {
			t.Errorf("after %s: %d img elements, want 0", after, got.Images)
		}
		if len(got.Scripts) != 1 || got.Scripts[0] != "/app.js" {
			t.Errorf("after %s: scripts = %q, want only /app.js", after, got.Scripts)
		}
		if got.Pwned != "undefined" {
			t.Errorf("after %s: typeof window.pwned = %s, want undefined", after, got.Pwned)
		}
		if got.Children != 0 {
			t.Errorf("after %s: #value has %d child elements, want 0 (text only)", after, got.Children)
		}
	}

	d := send(1)
	if d.Value != events[0] {
		t.Errorf("#value after a User that is markup = %q, want the raw data %q as text", d.Value, events[0])
	}
	if !d.ValueInvalid || d.Points != 0 {
		t.Errorf("after a User that is a string: data-invalid = %t, chart points = %d, want true and 0", d.ValueInvalid, d.Points)
	}
	inert("a User that is markup")

	d = send(2)
	if d.Value != events[1] {
		t.Errorf("#value after data that is not JSON = %q, want the raw data %q as text", d.Value, events[1])
	}
	if !d.ValueInvalid || d.Points != 0 {
		t.Errorf("after data that is not JSON: data-invalid = %t, chart points = %d, want true and 0", d.ValueInvalid, d.Points)
	}
	inert("data that is not JSON")

	d = send(3)
	if d.Value != "7" || d.ValueInvalid || d.Points != 1 {
		t.Errorf("after a good event: #value = %q, data-invalid = %t, chart points = %d, want \"7\", false and 1", d.Value, d.ValueInvalid, d.Points)
	}
	if d.State != "open" || d.LastID != "3" || d.Src != hostile {
		t.Errorf("after 3 events: state %q, #last-id %q, #src %q, want open, 3 and %s", d.State, d.LastID, d.Src, hostile)
	}
	inert("a good event")
}

func TestBrowser_ReconnectResumesAfterLastEventID(t *testing.T) {
	// -v logs each connect, with the id it resumed after.
	srv := startServer(t, "-interval", "50ms", "-max-lifetime", "1s", "-retry", "200ms", "-v")
	b := newBrowser(t)

	b.navigate(t, srv.url+"/")
	d := b.waitForDashboard(t, "a reconnect after the first stream's max lifetime",
		`d.reconnects >= 1 && d.state === "open"`)
	d = b.waitForDashboard(t, "3 more events after the reconnect",
		fmt.Sprintf(`d.events >= %d && d.state === "open"`, d.Events+3))
	checkNoGap(t, d)
	if d.Reconnects < 1 {
		t.Errorf("#reconnects = %d, want at least 1", d.Reconnects)
	}

	// The server's side: the second stream started where the first one ended.
	connected := regexp.MustCompile(`msg="client connected" .*last_event_id=(\d+) resumed=(\w+)`)
	disconnected := regexp.MustCompile(`msg="client disconnected" .*last_id=(\d+) reason=(\S+)`)
	var connects []string // "last_event_id resumed" of each connect, in order
	firstEnd := ""        // last_id of the first stream that ended at max lifetime
	resumeAfterEnd := ""  // the first connect after that end
	for line := range strings.SplitSeq(srv.logs.String(), "\n") {
		if m := connected.FindStringSubmatch(line); m != nil {
			connects = append(connects, m[1]+" "+m[2])
			if firstEnd != "" && resumeAfterEnd == "" {
				resumeAfterEnd = m[1] + " " + m[2]
			}
		}
		if m := disconnected.FindStringSubmatch(line); m != nil && firstEnd == "" {
			if m[2] != string(endMaxLifetime) {
				t.Errorf("first stream ended with reason %q, want %q", m[2], endMaxLifetime)
			}
			firstEnd = m[1]
		}
	}
	if len(connects) < 2 || connects[0] != "0 false" {
		t.Fatalf("client connects (last_event_id resumed) = %q, want \"0 false\" then a resumed one; log:\n%s", connects, srv.logs)
	}
	if firstEnd == "" || firstEnd == "0" {
		t.Fatalf("first stream's last_id = %q, want the id of an event it sent; log:\n%s", firstEnd, srv.logs)
	}
	if want := firstEnd + " true"; resumeAfterEnd != want {
		t.Errorf("connect after the first stream ended: last_event_id resumed = %q, want %q", resumeAfterEnd, want)
	}
}

func TestBrowser_SurvivesServerRestartOnSamePort(t *testing.T) {
	// -v logs each connect, with the id it resumed after.
	flags := []string{"-interval", "50ms", "-retry", "200ms", "-v"}
	srv := startServer(t, flags...)
	b := newBrowser(t)

	sse := srv.url + "/sse"
	// While no server listens, each reconnect the browser makes is refused, and Chromium
	// logs every refused request as a console error. That is the outage this test makes.
	refused := func(m chromedp.ConsoleMessage) bool {
		return m.Type == chromedp.ConsoleError && m.Source == "network" && m.URL == sse &&
			strings.Contains(m.Text, "net::ERR_CONNECTION_REFUSED")
	}
	b.excuse("the server is down, so reconnects are refused", refused)

	b.navigate(t, srv.url+"/")
	b.waitForDashboard(t, "5 events before the restart", `d.events >= 5 && d.state === "open"`)

	if err := srv.stop(t, 10*time.Second); err != nil {
		t.Fatalf("stop the first server: run = %v, want nil", err)
	}
	down := b.waitForDashboard(t, "the page to notice the server is gone",
		`d.state === "reconnecting" || d.state === "connecting"`)
	if down.DataState != down.State {
		t.Errorf("#state data-state = %q, text = %q, want them equal", down.DataState, down.State)
	}
	checkNoGap(t, down)
	// A real outage: the browser keeps retrying while nothing listens.
	eventually(t, pageWait, "a reconnect refused while the server is down", func() bool {
		return b.seen(refused) > 0
	})

	addr := strings.TrimPrefix(srv.url, "http://")
	srv2 := startServer(t, append(flags, "-addr", addr)...)
	if srv2.url != srv.url {
		t.Fatalf("second server listens on %s, want %s", srv2.url, srv.url)
	}
	d := b.waitForDashboard(t, "the page to reconnect to the new server and get 3 more events",
		fmt.Sprintf(`d.state === "open" && d.events >= %d`, down.Events+3))
	checkNoGap(t, d)
	if d.Reconnects < 1 {
		t.Errorf("#reconnects = %d after a server restart, want at least 1", d.Reconnects)
	}
	// The new server saw where the page had got to.
	if want := fmt.Sprintf("last_event_id=%d resumed=true", down.Events); srv2.logs.count(want) != 1 {
		t.Errorf("new server's log has %d connects with %q, want 1; log:\n%s", srv2.logs.count(want), want, srv2.logs)
	}
}
