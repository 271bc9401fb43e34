package main

import (
	"bufio"
	"context"
	"encoding/json"
	"expvar"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/gofiber/adaptor/v2"
	"github.com/gofiber/fiber/v2"
)

// benchServerEnv names the comparison server a re-executed test binary runs for
// BenchmarkStreams: "net/http" or "fiber-native". This service itself runs as main.
const benchServerEnv = "SSE_DASHBOARD_BENCH_SERVER"

func BenchmarkWriteEvent(b *testing.B) {
	buf := make([]byte, 0, 256)
	data := make([]byte, 0, 64)
	ev := &DashBoard{User: 512}
	b.ReportAllocs()
	for i := range b.N {
		data = ev.AppendJSON(data[:0])
		buf = appendEvent(buf[:0], uint64(i), data)
	}
}

// serveComparison runs one of the comparison servers on addr until SIGTERM, with the
// same producer, framing and settings as this service.
func serveComparison(kind string, args []string) error {
	cfg, err := parseConfig(args, func(string) string { return "" }, io.Discard)
	if err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return err
	}
	fmt.Printf("msg=listening addr=%s\n", ln.Addr())
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	// What sample reads from /debug/vars; the service itself reports both in its metrics.
	var open func() int64
	expvar.Publish("clients", expvar.Func(func() any { return open() }))
	expvar.Publish("goroutines", expvar.Func(func() any { return runtime.NumGoroutine() }))
	switch kind {
	case "net/http":
		streams := handleSSE(cfg.stream, logger)
		open = streams.Clients
		mux := http.NewServeMux()
		mux.Handle("GET /sse", streams)
		mux.Handle("GET /debug/vars", expvar.Handler())
		// Requests share ctx, so that streams end at shutdown as they do under Fiber.
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: cfg.readTimeout,
			BaseContext: func(net.Listener) context.Context { return ctx }}
		go srv.Serve(ln)
		<-ctx.Done()
		return srv.Shutdown(context.Background())
	case "fiber-native":
		app := fiber.New(fiber.Config{DisableStartupMessage: true, ReadTimeout: cfg.readTimeout})
		var streams atomic.Int64
		open = streams.Load
		app.Get("/sse", fiberNativeStream(cfg.stream, &streams))
		app.Get("/debug/vars", adaptor.HTTPHandler(expvar.Handler()))
		go app.Listener(ln)
		<-ctx.Done()
		return app.Shutdown()
	}
	return fmt.Errorf("unknown comparison server %q", kind)
}

// fiberNativeStream is the same stream written with fasthttp's SetBodyStreamWriter instead
// of net/http and the adaptor: the same producer, framing, batching and keepalive, without
// the write deadline, the client limit and the logs, which that API has no place for.
func fiberNativeStream(cfg streamConfig, open *atomic.Int64) fiber.Handler {
	return func(c *fiber.Ctx) error {
		c.Set("Content-Type", "text/event-stream")
		c.Set("Cache-Control", "no-cache")
		c.Set("Access-Control-Allow-Origin", "*")
		// The writer runs after the handler returns, when c may serve another request.
		shutdown, name := c.Context().Done(), c.Context().RemoteAddr().String()
		c.Context().SetBodyStreamWriter(func(w *bufio.Writer) {
			open.Add(1)
			defer open.Add(-1)
			client := newClient(name, cfg.Buffer)
			ctx, stop := context.WithCancel(context.Background())
			defer stop()
			go produce(ctx, client.events, cfg.Interval)
			keepalive := time.NewTimer(cfg.Keepalive)
			defer keepalive.Stop()
			var buf, data []byte
			var lastWrite time.Time
			id := uint64(1)
			write := func(p []byte) bool {
				lastWrite = time.Now()
				if _, err := w.Write(p); err != nil {
					return false
				}
				return w.Flush() == nil
			}
			opening := strconv.AppendInt([]byte("retry: "), cfg.Retry.Milliseconds(), 10)
			if !write(append(opening, "\n: stream opened\n\n"...)) {
				return
			}
			for {
				select {
				case ev := <-client.events:
					buf = buf[:0]
					for {
						data = ev.AppendJSON(data[:0])
						buf = appendEvent(buf, id, data)
						id++
						if len(client.events) == 0 {
							break
						}
						ev = <-client.events
					}
					if !write(buf) {
						return
					}
				case <-keepalive.C:
					if silent := time.Since(lastWrite); silent < cfg.Keepalive {
						keepalive.Reset(cfg.Keepalive - silent)
						continue
					}
					if !write(keepaliveFrame) {
						return
					}
					keepalive.Reset(cfg.Keepalive)
				case <-shutdown:
					return
				}
			}
		})
		return nil
	}
}

// benchKinds are the servers BenchmarkStreams compares, this service first.
var benchKinds = []struct{ name, env string }{
	{"fiber+adaptor", helperEnv + "=1"},
	{"net/http", benchServerEnv + "=net/http"},
	{"fiber-native", benchServerEnv + "=fiber-native"},
}

// benchRuns is how many times each figure is measured; the table shows medians.
const benchRuns = 3

// BenchmarkStreams measures the three servers, each in a process of its own, alternating
// within each run, and prints a table of medians. Run it with make bench.
func BenchmarkStreams(b *testing.B) {
	if b.N > 1 {
		b.Skip("run with -benchtime 1x: one pass already takes minutes")
	}
	figures := map[string]map[string][]float64{}
	for _, k := range benchKinds {
		figures[k.name] = map[string][]float64{}
	}
	for run := range benchRuns {
		for _, k := range benchKinds {
			f := figures[k.name]
			hold := 2 * time.Second
			if run == 0 && k.name == "fiber+adaptor" {
				hold = 30 * time.Second // the target: 15k streams held for 30s, every event delivered
			}
			measureHeld(b, k.env, f, hold)
			measureChurn(b, k.env, f)
			measureThroughput(b, k.env, f)
		}
	}
	printBenchTable(os.Stdout, figures)
	for _, k := range benchKinds {
		b.Run(strings.ReplaceAll(k.name, "/", "-"), func(b *testing.B) {
			for _, m := range benchMetrics {
				b.ReportMetric(median(figures[k.name][m.key]), m.unit)
			}
		})
	}
}

// benchMetrics are the table's rows: a key, the unit for b.ReportMetric, and a label.
var benchMetrics = []struct{ key, unit, label string }{
	{"rss1k", "rss-KB/stream@1k", "RSS per stream, 1k streams (KB)"},
	{"rss5k", "rss-KB/stream@5k", "RSS per stream, 5k streams (KB)"},
	{"rss15k", "rss-KB/stream@15k", "RSS per stream, 15k streams (KB)"},
	{"heap15k", "heap-KB/stream@15k", "heap per stream, 15k streams (KB)"},
	{"stack15k", "stack-KB/stream@15k", "goroutine stacks per stream, 15k streams (KB)"},
	{"gor15k", "goroutines/stream@15k", "goroutines per stream, 15k streams"},
	{"evcpu", "events/cpu-s", "events per server CPU-second, 1k streams x 1ms"},
	{"evs", "events/s", "delivered events/s, 1k streams x 1ms"},
	{"accept", "accept5k-ms", "time to accept 5k streams (ms)"},
	{"vanish", "vanish5k-ms", "5k clients vanish to clients=0 (ms)"},
	{"shutdown", "shutdown5k-ms", "shutdown with 5k open streams (ms)"},
}

// measureHeld holds 1k, then 5k, then 15k streams at one event a second and records the
// memory and goroutines each costs.
func measureHeld(b *testing.B, env string, f map[string][]float64, hold time.Duration) {
	proc := startProcessAs(b, env, "-interval", "1s", "-max-clients", "20000")
	defer proc.signal(b, syscall.SIGTERM, 30*time.Second)
	clients := &benchClients{addr: strings.TrimPrefix(proc.url, "http://")}
	defer clients.closeAll()
	base := sample(b, proc)
	for _, level := range []struct {
		name    string
		streams int
		hold    time.Duration
	}{{"1k", 1000, 2 * time.Second}, {"5k", 5000, 2 * time.Second}, {"15k", 15000, hold}} {
		clients.open(b, level.streams-clients.count())
		before := clients.lastIDs()
		time.Sleep(level.hold)
		perStream(f, level.name, base, sample(b, proc), level.streams)
		// At one event a second, a stream held for n seconds gets n events, give or take one.
		clients.checkProgress(b, level.name+" streams", before, uint64(level.hold/time.Second)-1)
	}
	clients.checkDelivery(b, "15k streams")
}

// measureChurn records how long the server takes to accept 5k streams, to notice that 5k
// clients vanished, and to shut down with 5k streams open.
func measureChurn(b *testing.B, env string, f map[string][]float64) {
	proc := startProcessAs(b, env, "-interval", "1s", "-max-clients", "20000")
	clients := &benchClients{addr: strings.TrimPrefix(proc.url, "http://")}
	defer clients.closeAll()

	start := time.Now()
	clients.open(b, 5000)
	f["accept"] = append(f["accept"], ms(time.Since(start)))
	time.Sleep(1500 * time.Millisecond)
	start = time.Now()
	clients.closeAll()
	waitClients(b, proc, 0)
	f["vanish"] = append(f["vanish"], ms(time.Since(start)))

	clients.open(b, 5000)
	waitClients(b, proc, 5000)
	f["shutdown"] = append(f["shutdown"], ms(proc.signal(b, syscall.SIGTERM, 30*time.Second)))
	clients.checkDelivery(b, "5k streams")
}

// measureThroughput runs 1,000 streams at an event a millisecond and records events per
// server CPU-second and delivered events per second.
func measureThroughput(b *testing.B, env string, f map[string][]float64) {
	proc := startProcessAs(b, env, "-interval", "1ms", "-buffer", "64")
	clients := &benchClients{addr: strings.TrimPrefix(proc.url, "http://")}
	defer clients.closeAll()
	clients.open(b, 1000)
	time.Sleep(time.Second)
	before := clients.lastIDs()
	cpu0, events0, t0 := procCPU(b, proc), clients.events.Load(), time.Now()
	time.Sleep(5 * time.Second)
	cpu1, events1, t1 := procCPU(b, proc), clients.events.Load(), time.Now()
	// A stream starved while the others run would not show in the totals.
	clients.checkProgress(b, "1k streams x 1ms", before, 100)
	events := float64(events1 - events0)
	f["evcpu"] = append(f["evcpu"], events/(cpu1-cpu0).Seconds())
	f["evs"] = append(f["evs"], events/t1.Sub(t0).Seconds())
	clients.checkDelivery(b, "1k streams x 1ms")
	proc.signal(b, syscall.SIGTERM, 30*time.Second)
}

// perStream records memory and goroutines per stream at one level.
func perStream(f map[string][]float64, level string, base, now procSample, streams int) {
	n := float64(streams)
	f["rss"+level] = append(f["rss"+level], float64(now.rssKB-base.rssKB)/n)
	f["heap"+level] = append(f["heap"+level], float64(now.heapKB-base.heapKB)/n)
	f["stack"+level] = append(f["stack"+level], float64(now.stackKB-base.stackKB)/n)
	f["gor"+level] = append(f["gor"+level], float64(now.goroutines-base.goroutines)/n)
}

// procSample is what the server process uses at one moment.
type procSample struct {
	rssKB, heapKB, stackKB float64
	goroutines, client     int
}

// sample reads the server's RSS from /proc, its heap from expvar, and its goroutines and
// clients from its metrics (the service) or from expvar (the comparison servers).
func sample(b testing.TB, proc *serverProcess) procSample {
	b.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", proc.cmd.Process.Pid))
	if err != nil {
		b.Fatal(err)
	}
	rss, _ := strconv.ParseFloat(string(regexp.MustCompile(`VmRSS:\s+(\d+)`).FindSubmatch(status)[1]), 64)
	varsURL := proc.url
	if proc.adminURL != "" {
		varsURL = proc.adminURL
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(varsURL + "/debug/vars")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	var vars struct {
		Clients    int `json:"clients"`
		Goroutines int `json:"goroutines"`
		Memstats   struct {
			HeapInuse  float64 `json:"HeapInuse"`
			StackInuse float64 `json:"StackInuse"`
		} `json:"memstats"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&vars); err != nil {
		b.Fatal(err)
	}
	s := procSample{rssKB: rss, heapKB: vars.Memstats.HeapInuse / 1024, stackKB: vars.Memstats.StackInuse / 1024, goroutines: vars.Goroutines, client: vars.Clients}
	if proc.adminURL != "" {
		m := scrape(b, proc.adminURL)
		s.goroutines, s.client = int(m["go_goroutines"]), int(m["sse_streams_open"])
	}
	return s
}

// waitClients waits until the server reports n open streams.
func waitClients(b *testing.B, proc *serverProcess, n int) {
	b.Helper()
	eventually(b, 30*time.Second, fmt.Sprintf("the server holds %d streams", n), func() bool {
		return sample(b, proc).client == n
	})
}

// procCPU returns the user and system CPU time the server process has used.
func procCPU(b *testing.B, proc *serverProcess) time.Duration {
	b.Helper()
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", proc.cmd.Process.Pid))
	if err != nil {
		b.Fatal(err)
	}
	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+2:]))
	utime, _ := strconv.Atoi(fields[11])
	stime, _ := strconv.Atoi(fields[12])
	return time.Duration(utime+stime) * time.Second / 100 // clock ticks at USER_HZ = 100
}

// benchClients are raw stream readers in this process, each checking that its ids have no gap.
type benchClients struct {
	addr   string
	mu     sync.Mutex
	conns  []*net.TCPConn
	lastID []*atomic.Uint64 // per stream, the last id it received
	dialed atomic.Int64
	events atomic.Int64
	gaps   atomic.Int64
	broken atomic.Int64
}

// open adds n streams, dialing in parallel from several loopback addresses so that the
// ephemeral ports of one address do not run out, and returns once each has its first bytes.
func (c *benchClients) open(b testing.TB, n int) {
	b.Helper()
	var wg sync.WaitGroup
	next := make(chan struct{})
	for range 64 {
		wg.Go(func() {
			for range next {
				ip := net.IPv4(127, 0, 0, byte(2+c.dialed.Add(1)%8))
				d := net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}, Timeout: 10 * time.Second}
				conn, err := d.Dial("tcp", c.addr)
				if err != nil {
					c.broken.Add(1)
					continue
				}
				tcp := conn.(*net.TCPConn)
				io.WriteString(tcp, streamRequest)
				r := bufio.NewReaderSize(tcp, 512)
				resp, err := http.ReadResponse(r, nil)
				if err != nil || resp.StatusCode != http.StatusOK {
					c.broken.Add(1)
					tcp.Close()
					continue
				}
				last := new(atomic.Uint64)
				c.mu.Lock()
				c.conns = append(c.conns, tcp)
				c.lastID = append(c.lastID, last)
				c.mu.Unlock()
				go c.read(bufio.NewReaderSize(resp.Body, 512), last)
			}
		})
	}
	for range n {
		next <- struct{}{}
	}
	close(next)
	wg.Wait()
	if broken := c.broken.Load(); broken > 0 {
		b.Fatalf("%d streams could not be opened", broken)
	}
}

// read counts a stream's events until it ends, and every id that does not follow the last.
func (c *benchClients) read(r *bufio.Reader, lastID *atomic.Uint64) {
	var last uint64
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			return
		}
		if rest, ok := strings.CutPrefix(string(line), "id: "); ok {
			id, _ := strconv.ParseUint(strings.TrimSpace(rest), 10, 64)
			if id != last+1 {
				c.gaps.Add(1)
			}
			last = id
			lastID.Store(id)
			c.events.Add(1)
		}
	}
}

// checkDelivery fails the benchmark if any stream missed an event, so no figure of a
// broken run counts.
func (c *benchClients) checkDelivery(b *testing.B, what string) {
	b.Helper()
	if gaps := c.gaps.Load(); gaps > 0 {
		b.Fatalf("%s: %d gaps in the ids: events were lost", what, gaps)
	}
}

// lastIDs returns the last id each open stream has received.
func (c *benchClients) lastIDs() []uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	ids := make([]uint64, len(c.lastID))
	for i, last := range c.lastID {
		ids[i] = last.Load()
	}
	return ids
}

// checkProgress fails the benchmark unless every stream received at least want events
// since the ids in before were taken.
func (c *benchClients) checkProgress(b *testing.B, what string, before []uint64, want uint64) {
	b.Helper()
	for i, now := range c.lastIDs()[:len(before)] {
		if now-before[i] < want {
			b.Fatalf("%s: stream %d received %d events, want at least %d", what, i, now-before[i], want)
		}
	}
}

// count returns how many streams are open.
func (c *benchClients) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.conns)
}

// closeAll resets every stream, as clients that vanish without a goodbye.
func (c *benchClients) closeAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, conn := range c.conns {
		conn.SetLinger(0) // no TIME_WAIT, so the next run finds free ports
		conn.Close()
	}
	c.conns, c.lastID = nil, nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func median(values []float64) float64 {
	if len(values) == 0 {
		return 0
	}
	s := slices.Clone(values)
	slices.Sort(s)
	return s[len(s)/2]
}

// printBenchTable prints the medians of every figure side by side, with each server's
// ratio to net/http.
func printBenchTable(w io.Writer, figures map[string]map[string][]float64) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "median of %d runs\t", benchRuns)
	for _, k := range benchKinds {
		fmt.Fprintf(tw, "%s\t", k.name)
	}
	fmt.Fprintln(tw, "fiber+adaptor / net/http\t")
	for _, m := range benchMetrics {
		fmt.Fprintf(tw, "%s\t", m.label)
		for _, k := range benchKinds {
			fmt.Fprintf(tw, "%.1f\t", median(figures[k.name][m.key]))
		}
		fmt.Fprintf(tw, "%.2f×\t\n", median(figures["fiber+adaptor"][m.key])/median(figures["net/http"][m.key]))
	}
	tw.Flush()
}
