package main

// End-to-end tests that drive the dashboard page in a real headless Chromium with chromedp.
// They need Debian's chromium (apt-get install chromium); without it they skip, except on CI.
// The README's screenshot is taken by screenshot_test.go.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image/png"
	"io"
	"iter"
	"log"
	"math"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/target"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
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

// browser is one headless Chromium with one tab. It records the tab's console and the URL
// of every request the tab sends, and when the test ends it fails the test on every
// console error or uncaught exception (CSP violations among them) that the test did not excuse.
type browser struct {
	ctx     context.Context // the tab; ends at the latest browserTestTimeout after newBrowser
	flushed chan string     // console markers that came back

	mu       sync.Mutex
	messages []chromedp.ConsoleMessage // everything but the markers, in order
	excuses  []consoleExcuse
	requests []string // URL of every request the tab sent, in order
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
	execPath := requireTool(t, "CHROME_PATH", "chromium", "chromium")
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
	requests := chromedp.Events(tabCtx, network.RequestWillBeSent)
	recorded := make(chan struct{})
	go func() {
		defer close(recorded)
		b.record(messages)
	}()
	requestsRecorded := make(chan struct{})
	go func() {
		defer close(requestsRecorded)
		for ev, err := range requests {
			if err != nil {
				return
			}
			b.mu.Lock()
			b.requests = append(b.requests, ev.Request.URL)
			b.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		b.checkConsole(t)
		cancelTab()
		<-recorded
		<-requestsRecorded
	})
	return b
}

// requestsSent returns the URL of every request the tab has sent so far.
func (b *browser) requestsSent() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.requests)
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
	StateNote    string `json:"stateNote"`
	Value        string `json:"value"`
	ValueInvalid bool   `json:"valueInvalid"` // #value has data-invalid
	ValueStale   bool   `json:"valueStale"`   // #value has data-stale
	ValueNote    string `json:"valueNote"`
	Events       int    `json:"events"`
	LastID       string `json:"lastId"`
	Reconnects   int    `json:"reconnects"`
	Points       int    `json:"points"` // #chart data-points
	ChartStale   bool   `json:"chartStale"`
	ChartLabel   string `json:"chartLabel"` // the chart's text alternative
	Src          string `json:"src"`
	SrcNote      string `json:"srcNote"`    // the line under the stream's URL
	SrcProblem   bool   `json:"srcProblem"` // #src-note has data-problem
	Announced    string `json:"announced"`  // the live region's text
	TryCurl      string `json:"tryCurl"`
}

// dashboardJS evaluates to the fields of dashboard.
const dashboardJS = `(() => {
	const el = (id) => document.getElementById(id);
	return {
		state: el("state").textContent,
		dataState: el("state").dataset.state || "",
		stateNote: el("state-note").textContent,
		value: el("value").textContent,
		valueInvalid: el("value").hasAttribute("data-invalid"),
		valueStale: el("value").hasAttribute("data-stale"),
		valueNote: el("value-note").textContent,
		events: Number(el("events").textContent),
		lastId: el("last-id").textContent,
		reconnects: Number(el("reconnects").textContent),
		points: Number(el("chart").getAttribute("data-points")),
		chartStale: el("chart").hasAttribute("data-stale"),
		chartLabel: el("chart").getAttribute("aria-label"),
		src: el("src").textContent,
		srcNote: el("src-note").textContent,
		srcProblem: el("src-note").hasAttribute("data-problem"),
		announced: el("announce").textContent,
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

// setColorScheme makes the page see prefers-color-scheme as scheme ("light" or "dark").
func (b *browser) setColorScheme(t *testing.T, scheme string) {
	t.Helper()
	_, err := chromedp.Call(b.ctx, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{
		Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: scheme}},
	})
	if err != nil {
		t.Fatalf("emulate prefers-color-scheme: %s: %v", scheme, err)
	}
}

// lowContrast is a piece of text whose contrast with its background is below WCAG AA.
type lowContrast struct {
	Text       string  `json:"text"`
	Color      string  `json:"color"`
	Background string  `json:"background"`
	Ratio      float64 `json:"ratio"`
	Need       float64 `json:"need"`
}

// contrastJS evaluates to every visible text on the page whose contrast ratio with the
// background behind it (computed styles, WCAG 2 relative luminance) is below AA: 4.5:1, or
// 3:1 for large text. SVG text is measured by its fill.
const contrastJS = `(() => {
	const rgba = (s) => {
		const m = /rgba?\(([^)]+)\)/.exec(s);
		if (!m) return null;
		const p = m[1].split(/[\s,\/]+/).filter(Boolean).map(Number);
		return { r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1 };
	};
	const over = (top, bottom) => ({
		r: top.r * top.a + bottom.r * (1 - top.a),
		g: top.g * top.a + bottom.g * (1 - top.a),
		b: top.b * top.a + bottom.b * (1 - top.a),
		a: 1,
	});
	const background = (el) => {
		const layers = [];
		for (let e = el; e; e = e.parentElement) {
			const c = rgba(getComputedStyle(e).backgroundColor);
			if (c && c.a > 0) {
				layers.push(c);
				if (c.a >= 1) break;
			}
		}
		let bg = { r: 255, g: 255, b: 255, a: 1 };
		for (let i = layers.length - 1; i >= 0; i--) bg = over(layers[i], bg);
		return bg;
	};
	const lum = (c) => {
		const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
		return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b);
	};
	const ratio = (a, b) => {
		const [hi, lo] = [lum(a), lum(b)].sort((x, y) => y - x);
		return (hi + 0.05) / (lo + 0.05);
	};
	const css = (c) => "rgb(" + [c.r, c.g, c.b].map(Math.round).join(", ") + ")";
	const low = [];
	const seen = new Set();
	const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
	for (let n = walker.nextNode(); n; n = walker.nextNode()) {
		const el = n.parentElement;
		if (!n.textContent.trim() || seen.has(el)) continue;
		seen.add(el);
		if (el.closest("noscript, .visually-hidden") || el.getClientRects().length === 0) continue;
		const style = getComputedStyle(el);
		if (style.visibility !== "visible") continue;
		const bg = background(el);
		const fg = over(rgba(el instanceof SVGElement ? style.fill : style.color), bg);
		const size = parseFloat(style.fontSize);
		const need = size >= 24 || (size >= 18.66 && Number(style.fontWeight) >= 700) ? 3 : 4.5;
		const r = ratio(fg, bg);
		if (r < need) low.push({ text: n.textContent.trim().slice(0, 40), color: css(fg), background: css(bg), ratio: r, need });
	}
	return low;
})()`

// checkContrast fails the test for every text on the page below WCAG AA contrast, in
// both colour schemes, and leaves the page in the light one.
func (b *browser) checkContrast(t *testing.T, when string) {
	t.Helper()
	for _, scheme := range []string{"dark", "light"} {
		b.setColorScheme(t, scheme)
		for _, low := range evaluate[[]lowContrast](t, b, contrastJS) {
			t.Errorf("%s, %s scheme: %q is %s on %s, contrast %.2f:1, want at least %.1f:1 (WCAG AA)",
				when, scheme, low.Text, low.Color, low.Background, low.Ratio, low.Need)
		}
	}
}

// cardLayout is where the stat cards are, and which of their lines do not fit.
type cardLayout struct {
	Cards []struct {
		Name   string  `json:"name"`
		Top    float64 `json:"top"`
		Height float64 `json:"height"`
	} `json:"cards"`
	// Lines are the values and notes in the cards that wrap or are cut off.
	Lines []struct {
		Text        string `json:"text"`
		Lines       int    `json:"lines"`
		ScrollWidth int    `json:"scrollWidth"`
		ClientWidth int    `json:"clientWidth"`
	} `json:"lines"`
}

// cardLayoutJS evaluates to the fields of cardLayout.
const cardLayoutJS = `(() => {
	const cards = [...document.querySelectorAll(".stats .card")].map((c) => {
		const r = c.getBoundingClientRect();
		return { name: c.querySelector("dt").textContent, top: r.top, height: r.height };
	});
	const lines = [...document.querySelectorAll(".stats dt, .stats dd")].map((e) => {
		const range = document.createRange();
		range.selectNodeContents(e);
		const tops = new Set([...range.getClientRects()].filter((r) => r.width > 0).map((r) => Math.round(r.top)));
		return { text: e.textContent, lines: tops.size, scrollWidth: e.scrollWidth, clientWidth: e.clientWidth };
	}).filter((l) => l.lines > 1 || l.scrollWidth > l.clientWidth);
	return { cards, lines };
})()`

// chartGeometry is what the chart draws: its labels, plot area and the line's points.
type chartGeometry struct {
	YLabels  []string    `json:"yLabels"`
	XLabels  []string    `json:"xLabels"`
	Line     [][]float64 `json:"line"`     // x, y of each point of the line, all segments in order
	Plot     []float64   `json:"plot"`     // left, right, top, bottom of the plot area, from the grid lines
	Segments int         `json:"segments"` // runs of the line without a pause
}

// chartGeometryJS evaluates to the fields of chartGeometry.
const chartGeometryJS = `(() => {
	const chart = document.getElementById("chart");
	const texts = (cls) => [...chart.querySelectorAll("text." + cls)].map((e) => e.textContent);
	const d = chart.querySelector("path.line")?.getAttribute("d") || "";
	const line = [...d.matchAll(/(-?[\d.]+),(-?[\d.]+)/g)].map((m) => [Number(m[1]), Number(m[2])]);
	const grid = [...chart.querySelectorAll("line.grid")];
	const ys = grid.map((g) => Number(g.getAttribute("y1")));
	return {
		yLabels: texts("y-label"),
		xLabels: texts("x-label"),
		line,
		plot: grid.length ? [Number(grid[0].getAttribute("x1")), Number(grid[0].getAttribute("x2")), Math.min(...ys), Math.max(...ys)] : [],
		segments: (d.match(/M/g) || []).length,
	};
})()`

// announcements starts recording every text the page's live region speaks, and returns a
// function that reports them in order.
func (b *browser) announcements(t *testing.T) func() []string {
	t.Helper()
	evaluate[bool](t, b, `(() => {
		window.announced = [];
		const region = document.getElementById("announce");
		new MutationObserver(() => window.announced.push(region.textContent))
			.observe(region, { childList: true, characterData: true, subtree: true });
		return true;
	})()`)
	return func() []string {
		t.Helper()
		return evaluate[[]string](t, b, `window.announced`)
	}
}

// screenshotHost is the address the browser tests show the service under, mapped to the
// real one by Chromium's host resolver: the address that `go run .` serves, so that a
// screenshot shows what a reader will see, and no random port.
const screenshotHost = "localhost:3000"

func TestBrowser_SameOriginPageShowsLiveEvents(t *testing.T) {
	srv := startServer(t, "-interval", "100ms")
	b := newBrowser(t, chromedp.Flag("host-resolver-rules", "MAP "+screenshotHost+" "+strings.TrimPrefix(srv.url, "http://")))
	base := "http://" + screenshotHost

	const width, height = 1280, 800
	if err := chromedp.Do(b.ctx, chromedp.EmulateViewport(width, height)); err != nil {
		t.Fatal(err)
	}
	b.navigate(t, base+"/")
	d := b.waitForDashboard(t, "3 events, state open and 3 points in the chart",
		`d.events >= 3 && d.state === "open" && d.dataState === "open" && d.points >= 3`)
	checkNoGap(t, d)
	if got := srv.healthClients(t); got != 1 {
		t.Errorf("the service has %d open streams, want 1: the page at %s is not served by it", got, base)
	}
	if want := base + "/sse"; d.Src != want {
		t.Errorf("#src = %q, want %q", d.Src, want)
	}
	if want := base + "/sse"; !strings.Contains(d.TryCurl, want) {
		t.Errorf("#try-curl = %q, want it to contain %q", d.TryCurl, want)
	}
	if d.Reconnects != 0 {
		t.Errorf("#reconnects = %d on a stream that never dropped, want 0", d.Reconnects)
	}
	if _, err := strconv.Atoi(d.Value); err != nil {
		t.Errorf("#value = %q, want the last User as a number", d.Value)
	}
	if d.ValueStale || d.ValueNote != "live" || d.SrcProblem || d.SrcNote != "this server" {
		t.Errorf("open stream: #value stale %t, note %q; #src-note %q (problem %t), want live and this server",
			d.ValueStale, d.ValueNote, d.SrcNote, d.SrcProblem)
	}
	if d.Announced != "Stream open." {
		t.Errorf("live region = %q, want %q", d.Announced, "Stream open.")
	}
	regions := evaluate[[]string](t, b, `[...document.querySelectorAll("[aria-live], [role=status], [role=alert], [role=log]")]
		.map((e) => e.id + " " + (e.getAttribute("aria-live") || e.getAttribute("role")))`)
	if len(regions) != 1 || regions[0] != "announce status" {
		t.Errorf("live regions = %q, want only #announce, a status (polite)", regions)
	}

	// "Last event" counts events: before the first one it shows none, and once events flow
	// it is at most a few intervals old.
	since := evaluate[string](t, b, `document.getElementById("since").textContent`)
	if !regexp.MustCompile(`^\d+\.\d s ago$`).MatchString(since) {
		t.Errorf("#since = %q, want \"N.N s ago\"", since)
	}

	// The chart: a fixed y scale from 0 to the producer's maximum, x in seconds, the values
	// from the left edge on, placed by time, and a text alternative with latest, min and max.
	d = b.waitForDashboard(t, "10 points in the chart", `d.points >= 10`)
	g := evaluate[chartGeometry](t, b, chartGeometryJS)
	if len(g.YLabels) < 2 || g.YLabels[0] != "0" || g.YLabels[len(g.YLabels)-1] != strconv.Itoa(maxUsers) {
		t.Errorf("y labels = %q, want 0 up to %d (the producer's range)", g.YLabels, maxUsers)
	}
	if len(g.XLabels) < 2 || !strings.HasSuffix(g.XLabels[0], " s") {
		t.Errorf("x labels = %q, want at least two, in seconds", g.XLabels)
	}
	if len(g.Plot) != 4 || len(g.Line) < 10 {
		t.Fatalf("chart: plot area %v, %d points in the line, want a plot area and at least 10 points", g.Plot, len(g.Line))
	}
	if g.Segments != 1 {
		t.Errorf("the chart's line has %d segments on a stream that was never lost, want 1", g.Segments)
	}
	left, right, top, bottom := g.Plot[0], g.Plot[1], g.Plot[2], g.Plot[3]
	if first := g.Line[0][0]; first > left+1 {
		t.Errorf("first point at x = %.1f, plot starts at %.1f: want the chart to fill from the left edge", first, left)
	}
	n := len(g.Line)
	for i := 1; i < n; i++ {
		if g.Line[i][0] <= g.Line[i-1][0] {
			t.Fatalf("point %d at x = %.1f, after %.1f: want x to grow with time; line %v", i, g.Line[i][0], g.Line[i-1][0], g.Line)
		}
	}
	// 60 values span the plot: n values at a steady pace span about (n-1)/59 of it.
	if span, want := (g.Line[n-1][0]-g.Line[0][0])/(right-left), float64(n-1)/59; span < want*0.5 || span > want*1.5 {
		t.Errorf("%d points span %.2f of the plot's width, want about %.2f (spaced by time, 60 values in the width)", n, span, want)
	}
	latest := evaluate[string](t, b, `document.getElementById("chart-latest").textContent`)
	value, err := strconv.Atoi(latest)
	if err != nil {
		t.Fatalf("#chart-latest = %q, want a number", latest)
	}
	if y, want := g.Line[n-1][1], bottom-float64(value)/maxUsers*(bottom-top); math.Abs(y-want) > 1 {
		t.Errorf("latest point (%d) at y = %.1f, want %.1f on the 0-%d scale", value, y, want, maxUsers)
	}
	d = b.readDashboard(t)
	if !regexp.MustCompile(`latest \d+, min \d+, max \d+\.$`).MatchString(d.ChartLabel) {
		t.Errorf("chart aria-label = %q, want the latest, min and max values", d.ChartLabel)
	}

	// Keyboard: the code blocks, which may scroll sideways, take focus in turn.
	for _, want := range []string{"curl command", "JavaScript code"} {
		if err := chromedp.Do(b.ctx, chromedp.KeyEvent(kb.Tab)); err != nil {
			t.Fatal(err)
		}
		if got := evaluate[string](t, b, `document.activeElement.getAttribute("aria-label") || document.activeElement.tagName`); got != want {
			t.Errorf("after Tab, focus is on %q, want the code block %q", got, want)
		}
	}
	b.checkContrast(t, "open stream at 1280 px")

	shot := os.Getenv("SCREENSHOT")
	// The screenshot shows the top of the page, with no focus ring.
	evaluate[bool](t, b, `(document.activeElement.blur(), scrollTo(0, 0), true)`)
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
		b.setColorScheme(t, scheme)
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
	hostileOrigin := startOtherOrigin(t, mux)
	hostile := hostileOrigin + "/hostile"
	srv := startServer(t, "-page-sources", hostileOrigin)
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
		if len(got.Scripts) != 1 || got.Scripts[0] != "app.js" {
			t.Errorf("after %s: scripts = %q, want only app.js", after, got.Scripts)
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
	// -v logs each connect, with the id it resumed after. The chart spans 60 intervals, 12 s
	// at 200ms: the values from before the outage stay in sight however long it takes.
	flags := []string{"-interval", "200ms", "-retry", "200ms", "-retry-spread", "300ms", "-v"}
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
	announced := b.announcements(t)

	if err := srv.stop(t, 10*time.Second); err != nil {
		t.Fatalf("stop the first server: run = %v, want nil", err)
	}
	down := b.waitForDashboard(t, "the page to notice the server is gone", `d.state === "reconnecting"`)
	if down.DataState != down.State {
		t.Errorf("#state data-state = %q, text = %q, want them equal", down.DataState, down.State)
	}
	checkNoGap(t, down)
	// The browser reconnects by itself, and that counts; what the page still shows is old.
	if down.Reconnects != 1 {
		t.Errorf("#reconnects = %d while the browser reconnects, want 1", down.Reconnects)
	}
	if !down.ValueStale || !down.ChartStale || !regexp.MustCompile(`^as of \d\d:\d\d:\d\d$`).MatchString(down.ValueNote) ||
		!strings.Contains(down.ChartLabel, ", as of ") {
		t.Errorf("server gone: value stale %t (note %q), chart stale %t (label %q), want both marked stale with the time they are from",
			down.ValueStale, down.ValueNote, down.ChartStale, down.ChartLabel)
	}
	// Dimmed: drawn in the muted colour of the labels, not the accent of a live value.
	colors := evaluate[[]string](t, b, `["value", "value-note"].map((id) => getComputedStyle(document.getElementById(id)).color)`)
	if colors[0] != colors[1] {
		t.Errorf("stale #value colour = %s, want the muted %s of its note", colors[0], colors[1])
	}
	if !down.SrcProblem || down.SrcNote != "Lost; reconnecting" {
		t.Errorf("server gone: #src-note %q (problem %t), want \"Lost; reconnecting\" as a problem", down.SrcNote, down.SrcProblem)
	}
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
	if d.Reconnects != 1 || d.ValueStale || d.ChartStale || d.ValueNote != "live" || d.SrcProblem {
		t.Errorf("after the restart: #reconnects %d, value stale %t (note %q), chart stale %t, #src-note %q, want 1, live, no problem",
			d.Reconnects, d.ValueStale, d.ValueNote, d.ChartStale, d.SrcNote)
	}
	if g := evaluate[chartGeometry](t, b, chartGeometryJS); g.Segments != 2 {
		t.Errorf("the chart's line has %d segments after one outage, want 2 (broken where the stream was lost)", g.Segments)
	}
	// The live region spoke once per change of state, however often the browser retried.
	if got, want := announced(), []string{"Stream lost, reconnecting.", "Stream open."}; !slices.Equal(got, want) {
		t.Errorf("live region said %q, want %q", got, want)
	}
	// The new server saw where the page had got to.
	if want := fmt.Sprintf("last_event_id=%d resumed=true", down.Events); srv2.logs.count(want) != 1 {
		t.Errorf("new server's log has %d connects with %q, want 1; log:\n%s", srv2.logs.count(want), want, srv2.logs)
	}
}

// eventStream starts an event stream response: headers for any origin, then retry.
func eventStream(w http.ResponseWriter, retry time.Duration) *http.ResponseController {
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("Access-Control-Allow-Origin", "*")
	fmt.Fprintf(w, "retry: %d\n\n", retry.Milliseconds())
	rc := http.NewResponseController(w)
	rc.Flush()
	return rc
}

// failedWith returns a match for the console error Chromium writes for a request answered
// with status.
func failedWith(status int) func(chromedp.ConsoleMessage) bool {
	return func(m chromedp.ConsoleMessage) bool {
		return m.Type == chromedp.ConsoleError && m.Source == "network" &&
			strings.Contains(m.Text, fmt.Sprintf("responded with a status of %d ", status))
	}
}

func TestBrowser_CardsKeepOneLineInEveryState(t *testing.T) {
	mux := http.NewServeMux()
	// hang never answers, so the page stays connecting.
	mux.HandleFunc("GET /hang", func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	// drop sends one event and ends the stream; the browser waits a minute to reconnect.
	mux.HandleFunc("GET /drop", func(w http.ResponseWriter, r *http.Request) {
		rc := eventStream(w, time.Minute)
		fmt.Fprint(w, "id: 1\ndata: {\"User\":420}\n\n")
		rc.Flush()
	})
	// fail answers 503, so the browser gives up and the page waits to try again.
	mux.HandleFunc("GET /fail", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Access-Control-Allow-Origin", "*")
		http.Error(w, "503 service unavailable", http.StatusServiceUnavailable)
	})
	other := startOtherOrigin(t, mux)
	srv := startServer(t, "-interval", "100ms", "-page-sources", other)
	b := newBrowser(t)
	b.excuse("the /fail stream answers 503", failedWith(http.StatusServiceUnavailable))

	states := []struct {
		name, query, cond string
	}{
		{"open", "", `d.state === "open" && d.events >= 2`},
		{"connecting", "?src=" + url.QueryEscape(other+"/hang"), `d.state === "connecting" && d.stateNote === "opening the stream"`},
		{"reconnecting", "?src=" + url.QueryEscape(other+"/drop"), `d.state === "reconnecting" && d.valueStale && d.stateNote === "browser retrying"`},
		{"given up", "?src=" + url.QueryEscape(other+"/fail"), `d.srcProblem && d.stateNote.startsWith("next try in")`},
		{"refused", "?src=" + url.QueryEscape("http://127.0.0.1:9/sse"), `d.state === "refused" && d.srcProblem`},
	}
	for _, size := range []struct{ width, height int }{{1280, 900}, {320, 700}} {
		if err := chromedp.Do(b.ctx, chromedp.EmulateViewport(int64(size.width), int64(size.height), chromedp.EmulateMobile)); err != nil {
			t.Fatal(err)
		}
		openHeight := 0.0
		for _, state := range states {
			where := fmt.Sprintf("%s at %d px", state.name, size.width)
			b.navigate(t, srv.url+"/"+state.query)
			d := b.waitForDashboard(t, where, state.cond)
			layout := evaluate[cardLayout](t, b, cardLayoutJS)
			for _, l := range layout.Lines {
				t.Errorf("%s: %q takes %d lines and %d of %d px, want one line that fits", where, l.Text, l.Lines, l.ScrollWidth, l.ClientWidth)
			}
			if len(layout.Cards) != 6 || layout.Cards[0].Name != "State" {
				t.Fatalf("%s: cards %+v, want 6, State first", where, layout.Cards)
			}
			if state.name == "open" {
				openHeight = layout.Cards[0].Height
			}
			for _, card := range layout.Cards {
				if math.Abs(card.Height-openHeight) > 0.5 {
					t.Errorf("%s (state %q): %s card is %.1f px high, want %.1f like the state card with the stream open",
						where, d.State, card.Name, card.Height, openHeight)
				}
			}
			if size.width == 1280 {
				b.checkContrast(t, where)
			}
		}
	}
}

func TestBrowser_SrcOnlyFromListedOrigins(t *testing.T) {
	var unlistedRequests atomic.Int64
	unlisted := startOtherOrigin(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		unlistedRequests.Add(1)
		http.Error(w, "500 this origin is not listed", http.StatusInternalServerError)
	}))
	mux := http.NewServeMux()
	mux.HandleFunc("GET /stream", func(w http.ResponseWriter, r *http.Request) {
		rc := eventStream(w, time.Minute)
		for id := 1; id <= 3; id++ {
			fmt.Fprintf(w, "id: %d\ndata: {\"User\":%d}\n\n", id, 100*id)
		}
		rc.Flush()
		<-r.Context().Done()
	})
	listed := startOtherOrigin(t, mux)
	srv := startServer(t, "-page-sources", listed)
	resp, _ := srv.get(t, http.MethodGet, "/", nil)
	if csp, want := resp.Header.Get("Content-Security-Policy"), "connect-src 'self' "+listed+";"; !strings.Contains(csp, want) {
		t.Errorf("Content-Security-Policy = %q, want %q in it", csp, want)
	}
	b := newBrowser(t)

	src := unlisted + "/sse"
	b.navigate(t, srv.url+"/?src="+url.QueryEscape(src))
	d := b.waitForDashboard(t, "the unlisted source refused", `d.state === "refused"`)
	if d.Src != src || d.SrcNote != "Refused: not in -page-sources" || !d.SrcProblem || d.Events != 0 {
		t.Errorf("unlisted source: #src %q, #src-note %q (problem %t), %d events, want %s, the refusal as a problem, 0 events",
			d.Src, d.SrcNote, d.SrcProblem, d.Events, src)
	}
	if !strings.Contains(d.Announced, "refused") || !strings.Contains(d.Announced, unlisted) {
		t.Errorf("live region = %q, want it to say the stream from %s is refused", d.Announced, unlisted)
	}

	b.navigate(t, srv.url+"/?src="+url.QueryEscape(listed+"/stream"))
	d = b.waitForDashboard(t, "3 events from the listed source", `d.events === 3 && d.state === "open"`)
	checkNoGap(t, d)
	if d.Value != "300" || d.SrcNote != "allowed by this server" || d.SrcProblem {
		t.Errorf("listed source: #value %q, #src-note %q (problem %t), want 300 and allowed by this server", d.Value, d.SrcNote, d.SrcProblem)
	}

	// Only now, after the page has had the time to open the listed stream, look at what
	// the unlisted page did: nothing at all.
	for _, u := range b.requestsSent() {
		if strings.HasPrefix(u, unlisted) {
			t.Errorf("the tab requested %s, want no request to the unlisted origin %s", u, unlisted)
		}
	}
	if n := unlistedRequests.Load(); n != 0 {
		t.Errorf("the unlisted origin got %d requests, want 0", n)
	}
	if sent := b.requestsSent(); !slices.Contains(sent, listed+"/stream") {
		t.Errorf("requests sent %q, want %s/stream among them (the network log records)", sent, listed)
	}
}

// flakyRequest is one request for the flaky stream: when it came and where it asked to resume.
type flakyRequest struct {
	at          time.Time
	lastEventID string // the query parameter
	header      string // the Last-Event-ID header
}

func TestBrowser_BacksOffWhenBrowserGivesUpThenResumes(t *testing.T) {
	var mu sync.Mutex
	var requests []flakyRequest
	mux := http.NewServeMux()
	// The first request gets ids 1 to 3 and the end of the stream. The browser's own
	// reconnect and the page's first two retries get 503; the next goes on from the id
	// the request asks for.
	mux.HandleFunc("GET /flaky", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		requests = append(requests, flakyRequest{time.Now(), r.URL.Query().Get("lastEventID"), r.Header.Get("Last-Event-ID")})
		n := len(requests)
		mu.Unlock()
		switch {
		case n == 1:
			rc := eventStream(w, 50*time.Millisecond)
			fmt.Fprint(w, "id: 1\ndata: {\"User\":1}\n\nid: 2\ndata: {\"User\":2}\n\nid: 3\ndata: {\"User\":3}\n\n")
			rc.Flush()
		case n <= 4:
			w.Header().Set("Access-Control-Allow-Origin", "*")
			http.Error(w, "503 service unavailable", http.StatusServiceUnavailable)
		default:
			last, err := strconv.Atoi(r.Header.Get("Last-Event-ID"))
			if err != nil {
				last, _ = strconv.Atoi(r.URL.Query().Get("lastEventID"))
			}
			rc := eventStream(w, time.Minute)
			for id := last + 1; id <= last+3; id++ {
				fmt.Fprintf(w, "id: %d\ndata: {\"User\":%d}\n\n", id, id)
			}
			rc.Flush()
			<-r.Context().Done()
		}
	})
	other := startOtherOrigin(t, mux)
	srv := startServer(t, "-page-sources", other)
	b := newBrowser(t)
	b.excuse("the flaky stream answers 503 three times", failedWith(http.StatusServiceUnavailable))

	b.navigate(t, srv.url+"/?src="+url.QueryEscape(other+"/flaky"))
	d := b.waitForDashboard(t, "the page waiting after the browser gave up",
		`d.state === "reconnecting" && d.stateNote.startsWith("next try in")`)
	if d.SrcNote != "Error answer; retrying" || !d.SrcProblem || !d.ValueStale || d.Reconnects != 1 {
		t.Errorf("given up: #src-note %q (problem %t), value stale %t, reconnects %d, want the error as a problem, stale, 1",
			d.SrcNote, d.SrcProblem, d.ValueStale, d.Reconnects)
	}
	d = b.waitForDashboard(t, "3 more events after the retries", `d.events === 6 && d.state === "open"`)
	checkNoGap(t, d)
	if d.Reconnects != 1 || d.ValueStale || d.SrcProblem {
		t.Errorf("resumed: reconnects %d, value stale %t, #src-note %q, want 1 (one lost stream), live, no problem", d.Reconnects, d.ValueStale, d.SrcNote)
	}

	mu.Lock()
	got := slices.Clone(requests)
	mu.Unlock()
	if len(got) != 5 {
		t.Fatalf("%d requests for the stream, want 5: %+v", len(got), got)
	}
	if got[1].header != "3" || got[1].lastEventID != "" {
		t.Errorf("the browser's own reconnect: Last-Event-ID %q, lastEventID %q, want 3 and none", got[1].header, got[1].lastEventID)
	}
	for i := 2; i < 5; i++ {
		if got[i].lastEventID != "3" {
			t.Errorf("the page's retry %d asked for lastEventID=%q, want 3", i-1, got[i].lastEventID)
		}
	}
	// Retry k waits between 2^(k-1)/2 and 2^(k-1) seconds: a timer never fires early, so
	// the lower bounds hold however busy the machine is, and the waits grow.
	var waits []time.Duration
	for i := 2; i < 5; i++ {
		waits = append(waits, got[i].at.Sub(got[i-1].at))
	}
	for k, wait := range waits {
		if least := time.Second << k / 2; wait < least {
			t.Errorf("retry %d came %s after the previous request, want at least %s (back-off)", k+1, wait, least)
		}
	}
	if waits[2] <= waits[0] {
		t.Errorf("waits before the retries %v, want them to grow", waits)
	}
}

func TestBrowser_WorksUnderAPathPrefix(t *testing.T) {
	flags := []string{"-interval", "50ms", "-retry", "200ms", "-v"} // -v logs each connect with its last event id
	srv := startServer(t, flags...)
	target, err := url.Parse(srv.url)
	if err != nil {
		t.Fatal(err)
	}
	proxy := &httputil.ReverseProxy{
		Rewrite:  func(r *httputil.ProxyRequest) { r.SetURL(target) },
		ErrorLog: log.New(io.Discard, "", 0),
	}
	var mu sync.Mutex
	var streamRequests []string // query and Last-Event-ID of each request for the stream
	mux := http.NewServeMux()
	mux.Handle("/app/", http.StripPrefix("/app", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/sse" {
			mu.Lock()
			streamRequests = append(streamRequests, fmt.Sprintf("query %q header %q", r.URL.RawQuery, r.Header.Get("Last-Event-ID")))
			mu.Unlock()
		}
		proxy.ServeHTTP(w, r)
	})))
	base := startOtherOrigin(t, mux) + "/app/"
	b := newBrowser(t)

	b.navigate(t, base)
	d := b.waitForDashboard(t, "3 events through the proxy", `d.events >= 3 && d.state === "open"`)
	checkNoGap(t, d)
	if want := base + "sse"; d.Src != want {
		t.Errorf("#src = %q, want %q", d.Src, want)
	}
	for _, u := range b.requestsSent() {
		if !strings.HasPrefix(u, base) {
			t.Errorf("the tab requested %s, want every request under %s", u, base)
		}
	}

	// While the service restarts, the proxy answers 502: the browser gives up, and the page
	// tries again with ?lastEventID= until the service is back.
	b.excuse("the proxy answers 502 while the service restarts", failedWith(http.StatusBadGateway))
	if err := srv.stop(t, 10*time.Second); err != nil {
		t.Fatalf("stop the server: run = %v, want nil", err)
	}
	down := b.waitForDashboard(t, "the page waiting to try again", `d.state === "reconnecting" && d.stateNote.startsWith("next try in")`)
	srv2 := startServer(t, append(flags, "-addr", target.Host)...)
	d = b.waitForDashboard(t, "3 more events after the restart", fmt.Sprintf(`d.state === "open" && d.events >= %d`, down.Events+3))
	checkNoGap(t, d)
	if want := fmt.Sprintf("last_event_id=%d resumed=true", down.Events); srv2.logs.count(want) != 1 {
		t.Errorf("restarted server's log has %d connects with %q, want 1; log:\n%s", srv2.logs.count(want), want, srv2.logs)
	}
	// The page's own retries carried the last id in the URL, as a new EventSource cannot
	// send Last-Event-ID.
	mu.Lock()
	defer mu.Unlock()
	if want := fmt.Sprintf("query %q header %q", fmt.Sprintf("lastEventID=%d", down.Events), ""); !slices.Contains(streamRequests, want) {
		t.Errorf("requests for the stream: %q, want one with %s", streamRequests, want)
	}
}

func TestBrowser_TickingPausesInBackgroundTab(t *testing.T) {
	mux := http.NewServeMux()
	// One event, then silence: from then on only the ticking changes what the page shows.
	mux.HandleFunc("GET /once", func(w http.ResponseWriter, r *http.Request) {
		rc := eventStream(w, time.Minute)
		fmt.Fprint(w, "id: 1\ndata: {\"User\":1}\n\n")
		rc.Flush()
		<-r.Context().Done()
	})
	other := startOtherOrigin(t, mux)
	srv := startServer(t, "-page-sources", other)
	b := newBrowser(t)

	b.navigate(t, srv.url+"/?src="+url.QueryEscape(other+"/once"))
	b.waitForDashboard(t, "the event", `d.events === 1 && d.state === "open"`)
	evaluate[bool](t, b, `(() => {
		window.sinceChanges = 0;
		new MutationObserver(() => window.sinceChanges++)
			.observe(document.getElementById("since"), { childList: true, characterData: true, subtree: true });
		return true;
	})()`)
	b.waitFor(t, pageWait, "the time since the event to tick", `window.sinceChanges >= 2`)

	// A new tab in front puts the page in the background.
	created, err := chromedp.CallBrowser(b.ctx, target.CreateTarget, target.CreateTargetParams{URL: "about:blank"})
	if err != nil {
		t.Fatalf("open a second tab: %v", err)
	}
	secondTab := created.TargetID
	b.waitFor(t, pageWait, "the page hidden behind the new tab",
		`document.hidden && (window.sinceChanges = 0, window.hiddenAt = performance.now(), true)`)
	// Four ticks' worth of time by the page's own clock, in which the ticking would have
	// changed the text four times.
	b.waitFor(t, pageWait, "a second in the background", `performance.now() - window.hiddenAt > 1000`)
	if n := evaluate[int](t, b, `window.sinceChanges`); n != 0 {
		t.Errorf("#since changed %d times in a second in a background tab, want 0 (ticking paused)", n)
	}

	if _, err := chromedp.CallBrowser(b.ctx, target.ActivateTarget, target.ActivateTargetParams{TargetID: chromedp.FromContext(b.ctx).Target.TargetID}); err != nil {
		t.Fatalf("bring the page's tab to the front: %v", err)
	}
	if _, err := chromedp.CallBrowser(b.ctx, target.CloseTarget, target.CloseTargetParams{TargetID: secondTab}); err != nil {
		t.Fatalf("close the second tab: %v", err)
	}
	b.waitFor(t, pageWait, "the ticking to resume in front", `!document.hidden && window.sinceChanges >= 2`)
}

func TestPage_MercureTopicFillsTheChartFromHistory(t *testing.T) {
	// No demo topic: every value comes from the test, the first ones before the page opens.
	srv := startServer(t)
	const kept = 30
	var want []string
	for i := range kept {
		value := 10 + 30*i
		publishEvent(t, srv.adminURL, "dashboard", "", map[string]int{"User": value})
		want = append(want, strconv.Itoa(value))
	}
	b := newBrowser(t)
	if err := chromedp.Do(b.ctx, chromedp.EmulateViewport(1280, 800)); err != nil {
		t.Fatal(err)
	}

	b.navigate(t, srv.url+"/?match=dashboard")
	d := b.waitForDashboard(t, "the history in the chart", fmt.Sprintf(`d.state === "open" && d.events === %d`, kept))
	mercure := srv.url + mercurePath + "?match=dashboard"
	if d.Src != mercure || !strings.Contains(d.TryCurl, mercure) || d.Points != kept {
		t.Errorf("history shown: #src %q, #try-curl %q, %d points in the chart, want %s in both and %d points", d.Src, d.TryCurl, d.Points, mercure, kept)
	}
	if got := evaluate[string](t, b, `document.getElementById("chart").dataset.values`); got != strings.Join(want, " ") {
		t.Errorf("chart values after opening = %q, want the %d published before, in order: %q", got, kept, strings.Join(want, " "))
	}
	if sent := b.requestsSent(); !slices.Contains(sent, mercure+"&last_event_id=earliest") {
		t.Errorf("requests sent %q, want %s&last_event_id=earliest among them", sent, mercure)
	}
	// The burst is drawn as a run at the assumed pace of a value a second, from the left edge
	// of a chart 60 values wide, evenly spaced: the last half minute, not a spike.
	g := evaluate[chartGeometry](t, b, chartGeometryJS)
	if len(g.Plot) != 4 || len(g.Line) != kept {
		t.Fatalf("chart: plot area %v, %d points in the line, want a plot area and %d points", g.Plot, len(g.Line), kept)
	}
	left, right := g.Plot[0], g.Plot[1]
	if first := g.Line[0][0]; math.Abs(first-left) > 1 {
		t.Errorf("first replayed value at x = %.1f, want the plot's left edge %.1f", first, left)
	}
	step := (right - left) / 59
	for i := 1; i < kept; i++ {
		if gap := g.Line[i][0] - g.Line[i-1][0]; math.Abs(gap-step) > 0.5 {
			t.Fatalf("replayed value %d drawn %.1f px after the one before, want %.1f (one step of 60 in the plot); line %v", i, gap, step, g.Line)
		}
	}

	publishEvent(t, srv.adminURL, "dashboard", "", map[string]int{"User": 999})
	want = append(want, "999")
	b.waitFor(t, pageWait, "the live value after the history", `document.getElementById("chart").dataset.values === `+strconv.Quote(strings.Join(want, " ")))
	d = b.readDashboard(t)
	if d.Events != kept+1 || d.Value != "999" || d.State != "open" || d.Reconnects != 0 {
		t.Errorf("after the live value: %d events, #value %q, state %q, %d reconnects, want %d, 999, open, 0", d.Events, d.Value, d.State, d.Reconnects, kept+1)
	}
	g = evaluate[chartGeometry](t, b, chartGeometryJS)
	if n := len(g.Line); n != kept+1 || g.Segments != 1 || g.Line[n-1][0] <= g.Line[n-2][0] {
		t.Errorf("after the live value: %d points in %d segments, last two at x %v, want %d in one unbroken line, the live one to the right", n, g.Segments, g.Line[max(0, n-2):], kept+1)
	}
}
