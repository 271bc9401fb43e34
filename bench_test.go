package main

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
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"
)

// BenchmarkWriteEvent frames one event: its JSON and its SSE lines, into reused buffers.
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

// BenchmarkStream runs one whole stream, producer included, through the SSE handler into
// a ResponseWriter that takes b.N events and then fails as a client that left. The
// stream's setup is spread over b.N events, so allocs/op is what each event costs.
func BenchmarkStream(b *testing.B) {
	cfg := streamConfig{Interval: time.Nanosecond, Keepalive: time.Hour, Retry: time.Second,
		WriteTimeout: time.Minute, Buffer: 10, MaxClients: 1}
	h := handleSSE(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	w := &eventCounter{header: make(http.Header), limit: b.N}
	r := httptest.NewRequest(http.MethodGet, "/sse", nil)
	b.ReportAllocs()
	b.ResetTimer()
	h.ServeHTTP(w, r)
	if w.events < b.N {
		b.Fatalf("the stream ended after %d events, want %d", w.events, b.N)
	}
}

// eventCounter is a ResponseWriter, with the Flush and SetWriteDeadline of a real one, that
// counts the events written to it and fails every write once it has limit of them, as a
// client that has gone.
type eventCounter struct {
	header        http.Header
	events, limit int
}

// Header returns the response headers, which nothing reads.
func (w *eventCounter) Header() http.Header { return w.header }

// WriteHeader ignores the status: the stream always starts with 200.
func (w *eventCounter) WriteHeader(int) {}

// Flush does nothing: every write is already counted.
func (w *eventCounter) Flush() {}

// SetWriteDeadline accepts every deadline, as the connection of a real stream does.
func (w *eventCounter) SetWriteDeadline(time.Time) error { return nil }

// Write counts the events in p.
func (w *eventCounter) Write(p []byte) (int, error) {
	if w.events >= w.limit {
		return 0, net.ErrClosed
	}
	w.events += bytes.Count(p, []byte("id: "))
	return len(p), nil
}

// benchServer is one server BenchmarkStreams compares, and the file its logs go to.
type benchServer struct {
	name    string // as the table shows it
	env     string // what the re-executed test binary serves
	file    string // name of its log file and profiles, without the extension
	admin   bool   // whether it serves /debug/vars on an admin listener
	metrics bool   // whether it also serves /metrics there: this service
	binary  string // the test binary to run, if not this one: another revision's
	// peer, if set, starts a server that is not this test binary (Centrifugo).
	peer func(p *benchPhase) (*benchProcess, fanoutTarget, error)
}

// benchServers are the servers BenchmarkStreams compares, this service first.
var benchServers = []benchServer{
	{name: "fiber+adaptor", env: helperEnv + "=1", file: "fiber-adaptor", admin: true, metrics: true},
	{name: "net/http", env: benchServerEnv + "=net/http", file: "net-http"},
	{name: "fiber-native", env: benchServerEnv + "=fiber-native", file: "fiber-native"},
}

// benchRuns is how many times each figure is measured; the table shows medians.
const benchRuns = 3

// benchLogDir is where the servers' logs and profiles go, one set per server; make bench
// prints the path, and git ignores it.
const benchLogDir = "bench-logs"

// BenchmarkStreams measures the three servers, each in a process of its own, alternating
// within each run, and prints a table of medians. A phase that falls short (a stream
// starved, a server that did not start or stop in time) is named in one line, and the
// figures it measured are marked, never dropped. Run it with make bench.
func BenchmarkStreams(b *testing.B) {
	if b.N > 1 {
		b.Skip("run with -benchtime 1x: one pass already takes minutes")
	}
	results := newBenchResults(b, benchServers)
	for run := range benchRuns {
		for _, s := range benchServers {
			var hold time.Duration
			if run == 0 && s.name == "fiber+adaptor" {
				hold = 60 * time.Second // the target: 19k streams held for 60s, every event delivered
			}
			measureHeld(results.phase(s, run, "held streams"), hold)
			measureChurn(results.phase(s, run, "churn"))
			measureThroughput(results.phase(s, run, "1k streams x 1ms"))
		}
	}
	results.print(os.Stdout)
	for _, s := range benchServers {
		b.Run(strings.ReplaceAll(s.name, "/", "-"), func(b *testing.B) {
			for _, m := range benchMetrics {
				if v, _, ok := results.median(s.name, m.key); ok {
					b.ReportMetric(v, m.unit)
				}
			}
		})
	}
	if results.lost > 0 {
		b.Errorf("%d gaps in the streams' ids: events were lost (see the notes above the table)", results.lost)
	}
}

// newBenchResults makes the directory of the servers' logs and profiles, empties the logs
// of servers, says where they are, and returns the results they will be recorded in.
func newBenchResults(b *testing.B, servers []benchServer) *benchResults {
	dir, err := filepath.Abs(benchLogDir)
	if err == nil {
		err = os.MkdirAll(dir, 0o755)
	}
	if err != nil {
		b.Fatalf("create the directory for the servers' logs: %v", err)
	}
	for _, s := range servers {
		os.Remove(filepath.Join(dir, s.file+".log"))
	}
	fmt.Printf("server logs and profiles: %s/\n", dir)
	return &benchResults{dir: dir, figures: map[string]map[string][]benchFigure{}}
}

// benchMetric is one row of a benchmark's table: the key its figures are recorded under,
// the unit for b.ReportMetric, its label, and the target it is held to, if any.
type benchMetric struct{ key, unit, label, target string }

// benchMetrics are BenchmarkStreams' rows.
var benchMetrics = []benchMetric{
	{"rss1k", "rss-KB/stream@1k", "RSS per stream, 1k streams (KB)", ""},
	{"rss10k", "rss-KB/stream@10k", "RSS per stream, 10k streams (KB)", ""},
	{"rss15k", "rss-KB/stream@15k", "RSS per stream, 15k streams (KB)", ""},
	{"rss19k", "rss-KB/stream@19k", "RSS per stream, 19k streams held 60s (KB)", ""},
	{"heap10k", "heap-KB/stream@10k", "heap per stream, 10k streams (KB)", ""},
	{"stack10k", "stack-KB/stream@10k", "goroutine stacks per stream, 10k streams (KB)", ""},
	{"gor10k", "goroutines/stream@10k", "goroutines per stream, 10k streams", ""},
	{"evcpu", "events/cpu-s", "events per server CPU-second, 1k streams x 1ms", ""},
	{"evs", "events/s", "delivered events/s, 1k streams x 1ms", ""},
	{"accept", "accept5k-ms", "time to accept 5k streams (ms)", ""},
	{"vanish", "vanish5k-ms", "5k clients vanish to clients=0 (ms)", ""},
	{"shutdown", "shutdown5k-ms", "shutdown with 5k open streams (ms)", ""},
}

// benchFigure is one measured value, and whether the phase that measured it fell short.
type benchFigure struct {
	value float64
	short bool
}

// benchResults collects every figure of every run, and a line for each shortfall.
type benchResults struct {
	dir     string
	figures map[string]map[string][]benchFigure // server, then figure key
	kinds   map[string][]string                 // per server, its goroutine kinds in order
	notes   []string
	lost    int64 // gaps in the ids, over every run
}

// benchPhase is one phase of one run against one server.
type benchPhase struct {
	results *benchResults
	server  benchServer
	run     int
	name    string
	short   bool
}

// phase starts recording a phase.
func (r *benchResults) phase(s benchServer, run int, name string) *benchPhase {
	return &benchPhase{results: r, server: s, run: run, name: name}
}

// record adds a figure, marked if the phase has fallen short so far.
func (p *benchPhase) record(key string, value float64) {
	f := p.results.figures[p.server.name]
	if f == nil {
		f = map[string][]benchFigure{}
		p.results.figures[p.server.name] = f
	}
	f[key] = append(f[key], benchFigure{value, p.short})
}

// fallShort notes in one line why the phase fell short; figures it records from then on
// are marked in the table.
func (p *benchPhase) fallShort(err error) {
	p.short = true
	p.results.notes = append(p.results.notes, fmt.Sprintf("%s, run %d, %s: %v", p.server.name, p.run+1, p.name, err))
}

// median returns the median of a figure over the runs that measured it, and whether any
// of those fell short.
func (r *benchResults) median(server, key string) (value float64, short, ok bool) {
	figures := r.figures[server][key]
	if len(figures) == 0 {
		return 0, false, false
	}
	values := make([]float64, len(figures))
	for i, f := range figures {
		values[i] = f.value
		short = short || f.short
	}
	slices.Sort(values)
	return values[len(values)/2], short, true
}

// measureHeld holds 1k, then 10k, then 15k streams at one event a second and records the
// memory and goroutines each costs; at 10k it also records the stacks of each goroutine
// kind, and in the first run it has the server write a heap and a goroutine profile. With
// a hold, it then holds 19k streams, near the machine's 20,000 open files, for that long.
func measureHeld(p *benchPhase, hold time.Duration) {
	proc, err := startBenchServer(p, "-interval", "1s", "-max-clients", "20000")
	if err != nil {
		p.fallShort(err)
		return
	}
	defer proc.stop(p, 30*time.Second)
	clients := &benchClients{addr: proc.addr}
	defer clients.closeAll()
	defer func() { p.results.lost += clients.gaps.Load() }()
	base, err := sampleProcess(proc)
	if err != nil {
		p.fallShort(err)
		return
	}
	baseKinds, _ := goroutineStacks(proc.cmd.Process.Pid)
	type heldLevel struct {
		name    string
		streams int
		hold    time.Duration
	}
	levels := []heldLevel{{"1k", 1000, 2 * time.Second}, {"10k", 10000, 2 * time.Second}, {"15k", 15000, 2 * time.Second}}
	if hold > 0 {
		levels = append(levels, heldLevel{"19k", 19000, hold})
	}
	for _, level := range levels {
		if err := clients.open(level.streams - clients.count()); err != nil {
			p.fallShort(fmt.Errorf("%s streams: %w", level.name, err))
			return
		}
		before := clients.lastIDs()
		time.Sleep(level.hold)
		now, err := sampleProcess(proc)
		if err != nil {
			p.fallShort(err)
			return
		}
		// At one event a second, a stream held for n seconds gets n events, give or take one.
		if err := clients.checkProgress(before, uint64(level.hold/time.Second)-1); err != nil {
			p.fallShort(fmt.Errorf("%s streams: %w", level.name, err))
		}
		n := float64(level.streams)
		p.record("rss"+level.name, (now.rssKB-base.rssKB)/n)
		p.record("heap"+level.name, (now.heapKB-base.heapKB)/n)
		p.record("stack"+level.name, (now.stackKB-base.stackKB)/n)
		p.record("gor"+level.name, float64(now.goroutines-base.goroutines)/n)
		if level.name == "10k" {
			p.recordKinds(proc, baseKinds, level.streams)
			if p.run == 0 {
				if err := proc.writeProfiles(p); err != nil {
					p.fallShort(fmt.Errorf("profiles: %w", err))
				}
			}
		}
	}
}

// recordKinds records, per goroutine kind, how many goroutines each stream adds and the
// stack memory they hold and use, from the stacks now less those in base.
func (p *benchPhase) recordKinds(proc *benchProcess, base []goroutineKind, streams int) {
	kinds, err := goroutineStacks(proc.cmd.Process.Pid)
	if err != nil {
		p.fallShort(fmt.Errorf("stacks per goroutine kind: %w", err))
		return
	}
	if p.results.kinds == nil {
		p.results.kinds = map[string][]string{}
	}
	n := float64(streams)
	for _, k := range kinds {
		if i := slices.IndexFunc(base, func(b goroutineKind) bool { return b.label == k.label }); i >= 0 {
			k.count -= base[i].count
			k.allocated -= min(k.allocated, base[i].allocated)
			k.used -= min(k.used, base[i].used)
		}
		if float64(k.count) < n/10 {
			continue // not a goroutine of every stream
		}
		if !slices.Contains(p.results.kinds[p.server.name], k.label) {
			p.results.kinds[p.server.name] = append(p.results.kinds[p.server.name], k.label)
		}
		p.record("kind:"+k.label+":n", float64(k.count)/n)
		p.record("kind:"+k.label+":kb", float64(k.allocated)/1024/n)
		p.record("kind:"+k.label+":each", float64(k.allocated)/1024/float64(k.count))
		p.record("kind:"+k.label+":used", float64(k.used)/1024/float64(k.count))
	}
}

// measureChurn records how long the server takes to accept 5k streams, to notice that 5k
// clients vanished, and to shut down with 5k streams open.
func measureChurn(p *benchPhase) {
	proc, err := startBenchServer(p, "-interval", "1s", "-max-clients", "20000")
	if err != nil {
		p.fallShort(err)
		return
	}
	stopped := false
	defer func() {
		if !stopped {
			proc.stop(p, 30*time.Second)
		}
	}()
	clients := &benchClients{addr: proc.addr}
	defer clients.closeAll()
	defer func() { p.results.lost += clients.gaps.Load() }()

	start := time.Now()
	if err := clients.open(5000); err != nil {
		p.fallShort(err)
		return
	}
	p.record("accept", ms(time.Since(start)))
	time.Sleep(1500 * time.Millisecond)
	start = time.Now()
	clients.closeAll()
	if err := waitClients(proc, 0); err != nil {
		p.fallShort(err)
		return
	}
	p.record("vanish", ms(time.Since(start)))

	if err := clients.open(5000); err != nil {
		p.fallShort(err)
		return
	}
	if err := waitClients(proc, 5000); err != nil {
		p.fallShort(err)
		return
	}
	stopped = true
	if took, ok := proc.stop(p, 30*time.Second); ok {
		p.record("shutdown", ms(took))
	}
}

// measureThroughput runs 1,000 streams at an event a millisecond and records events per
// server CPU-second and delivered events per second.
func measureThroughput(p *benchPhase) {
	proc, err := startBenchServer(p, "-interval", "1ms", "-buffer", "64")
	if err != nil {
		p.fallShort(err)
		return
	}
	defer proc.stop(p, 30*time.Second)
	clients := &benchClients{addr: proc.addr}
	defer clients.closeAll()
	defer func() { p.results.lost += clients.gaps.Load() }()
	if err := clients.open(1000); err != nil {
		p.fallShort(err)
		return
	}
	time.Sleep(time.Second)
	before := clients.lastIDs()
	cpu0, err0 := processCPU(proc)
	events0, t0 := clients.events.Load(), time.Now()
	time.Sleep(5 * time.Second)
	cpu1, err1 := processCPU(proc)
	events1, t1 := clients.events.Load(), time.Now()
	if err := errors.Join(err0, err1); err != nil {
		p.fallShort(err)
		return
	}
	// A stream starved while the others run would not show in the totals.
	if err := clients.checkProgress(before, 100); err != nil {
		p.fallShort(err)
	}
	events := float64(events1 - events0)
	p.record("evcpu", events/(cpu1-cpu0).Seconds())
	p.record("evs", events/t1.Sub(t0).Seconds())
}

// benchProcess is a server a benchmark runs in a process of its own, its output going to
// its log file.
type benchProcess struct {
	cmd    *exec.Cmd
	addr   string
	admin  string // the admin listener, where the server has one
	expvar bool   // whether it serves /debug/vars, on its admin listener or else its own
	// metrics: whether it serves /metrics on its admin listener (this service).
	metrics bool
	// clients, where the server serves no /debug/vars, asks it how many subscribers it has.
	clients func() (int, error)
	log     *os.File
	offset  int64 // where this run's lines start in the log
	exited  chan struct{}
}

// startBenchServer starts the phase's server on free loopback ports with args, its output
// appended to its log file, and waits until it listens.
func startBenchServer(p *benchPhase, args ...string) (*benchProcess, error) {
	flags := []string{"-addr", "127.0.0.1:0"}
	if p.server.admin {
		flags = append(flags, "-admin-addr", "127.0.0.1:0")
	}
	binary := os.Args[0]
	if p.server.binary != "" {
		binary = p.server.binary
	}
	env := []string{p.server.env, benchProfilesEnv + "=" + p.results.dir, "CPUPROFILE=" + os.Getenv("CPUPROFILE"),
		"GORACE=atexit_sleep_ms=0"}
	proc, err := startProcessLogged(p, binary, env, append(flags, args...)...)
	if err != nil {
		return nil, err
	}
	proc.expvar, proc.metrics = true, p.server.metrics
	path := filepath.Join(p.results.dir, p.server.file+".log")
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		written, _ := os.ReadFile(path)
		if m := listeningLine.FindSubmatch(written[min(int(proc.offset), len(written)):]); m != nil {
			proc.addr, proc.admin = string(m[1])+string(m[3]), string(m[2])+string(m[4])
			return proc, nil
		}
		select {
		case <-proc.exited:
			return nil, fmt.Errorf("the server exited before it listened (log: %s)", path)
		default:
		}
	}
	proc.cmd.Process.Kill()
	<-proc.exited
	return nil, fmt.Errorf("the server did not listen within 10s (log: %s)", path)
}

// startProcessLogged starts binary with env and args, its output appended to the phase's
// log file after a line that names the run and the phase.
func startProcessLogged(p *benchPhase, binary string, env []string, args ...string) (*benchProcess, error) {
	path := filepath.Join(p.results.dir, p.server.file+".log")
	log, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	offset, _ := log.Seek(0, io.SeekEnd)
	fmt.Fprintf(log, "--- run %d, %s\n", p.run+1, p.name)
	cmd := exec.Command(binary, args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, fmt.Errorf("start the server process: %w", err)
	}
	proc := &benchProcess{cmd: cmd, log: log, exited: make(chan struct{}), offset: offset}
	go func() {
		cmd.Wait()
		log.Close()
		close(proc.exited)
	}()
	return proc, nil
}

// stop sends SIGTERM and waits until the process exits; past within, it notes the
// shortfall and kills it. It returns how long the exit took and whether it was in time.
func (proc *benchProcess) stop(p *benchPhase, within time.Duration) (time.Duration, bool) {
	start := time.Now()
	proc.cmd.Process.Signal(syscall.SIGTERM)
	timer := time.NewTimer(within)
	defer timer.Stop()
	select {
	case <-proc.exited:
		return time.Since(start), true
	case <-timer.C:
		proc.cmd.Process.Kill()
		<-proc.exited
		p.fallShort(fmt.Errorf("the server did not exit within %s of SIGTERM", within))
		return 0, false
	}
}

// writeProfiles has the server write its heap and goroutine profiles, and moves them to
// files named after the server.
func (proc *benchProcess) writeProfiles(p *benchPhase) error {
	dir := p.results.dir
	done := filepath.Join(dir, "goroutine.txt")
	os.Remove(done)
	if err := proc.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		return err
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if _, err := os.Stat(done); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return errors.New("the server wrote no profiles within 30s")
		}
	}
	return errors.Join(
		os.Rename(filepath.Join(dir, "heap.pprof"), filepath.Join(dir, p.server.file+"-heap.pprof")),
		os.Rename(done, filepath.Join(dir, p.server.file+"-goroutine.txt")))
}

// procSample is what the server process uses at one moment.
type procSample struct {
	rssKB, heapKB, stackKB       float64
	goroutines, clients, tooSlow int // tooSlow: topic streams dropped for a full queue
}

// sampleProcess reads the server's RSS from /proc, its heap and stacks from expvar, and
// its goroutines, clients and topic streams dropped as too slow from its metrics (the
// service, on its admin listener) or from expvar (the comparison servers).
func sampleProcess(proc *benchProcess) (procSample, error) {
	rss, err := rssKB(proc.cmd.Process.Pid)
	if err != nil {
		return procSample{}, err
	}
	if !proc.expvar {
		clients, err := proc.clients()
		return procSample{rssKB: float64(rss), clients: clients}, err
	}
	base := "http://" + proc.addr
	if proc.admin != "" {
		base = "http://" + proc.admin
	}
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(base + "/debug/vars")
	if err != nil {
		return procSample{}, fmt.Errorf("read the server's expvar: %w", err)
	}
	defer resp.Body.Close()
	var vars struct {
		Clients    int `json:"clients"`
		Goroutines int `json:"goroutines"`
		TooSlow    int `json:"too_slow"`
		Memstats   struct {
			HeapInuse  float64 `json:"HeapInuse"`
			StackInuse float64 `json:"StackInuse"`
		} `json:"memstats"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&vars); err != nil {
		return procSample{}, fmt.Errorf("decode the server's expvar: %w", err)
	}
	s := procSample{rssKB: float64(rss), heapKB: vars.Memstats.HeapInuse / 1024, stackKB: vars.Memstats.StackInuse / 1024,
		goroutines: vars.Goroutines, clients: vars.Clients, tooSlow: vars.TooSlow}
	if proc.metrics {
		samples, err := tryScrape(base)
		if err != nil {
			return procSample{}, fmt.Errorf("read the server's metrics: %w", err)
		}
		s.goroutines, s.clients = int(samples["go_goroutines"]), int(samples["sse_streams_open"])
		s.tooSlow = int(samples[`sse_streams_ended_total{reason="too_slow"}`])
	}
	return s, nil
}

// waitClients waits until the server reports n open streams.
func waitClients(proc *benchProcess, n int) error {
	var last procSample
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		s, err := sampleProcess(proc)
		if err != nil {
			return err
		}
		if last = s; s.clients == n {
			return nil
		}
	}
	return fmt.Errorf("the server holds %d streams after 30s, want %d", last.clients, n)
}

// processCPU returns the user and system CPU time the server process has used.
func processCPU(proc *benchProcess) (time.Duration, error) {
	return pidCPU(proc.cmd.Process.Pid)
}

// pidCPU returns the user and system CPU time process pid has used, from /proc.
func pidCPU(pid int) (time.Duration, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read the CPU time of process %d: %w", pid, err)
	}
	fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+2:]))
	utime, _ := strconv.Atoi(fields[11])
	stime, _ := strconv.Atoi(fields[12])
	return time.Duration(utime+stime) * time.Second / 100, nil // clock ticks at USER_HZ = 100
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
}

// open adds n streams, dialing in parallel from several loopback addresses so that the
// ephemeral ports of one address do not run out, and returns once each has its first
// bytes, or how many could not be opened and why the first failed.
func (c *benchClients) open(n int) error {
	return dialAll(n, c.dial)
}

// dialAll calls dial n times, 64 at a time, and returns how many failed and why the first did.
func dialAll(n int, dial func() error) error {
	var wg sync.WaitGroup
	var failed atomic.Int64
	var firstErr error
	var once sync.Once
	next := make(chan struct{})
	for range 64 {
		wg.Go(func() {
			for range next {
				if err := dial(); err != nil {
					failed.Add(1)
					once.Do(func() { firstErr = err })
				}
			}
		})
	}
	for range n {
		next <- struct{}{}
	}
	close(next)
	wg.Wait()
	if failed := failed.Load(); failed > 0 {
		return fmt.Errorf("%d of %d streams could not be opened, the first: %w", failed, n, firstErr)
	}
	return nil
}

// dial opens one stream and starts reading it.
func (c *benchClients) dial() error {
	tcp, body, err := dialStream(c.addr, streamRequest, c.dialed.Add(1))
	if err != nil {
		return err
	}
	last := new(atomic.Uint64)
	c.mu.Lock()
	c.conns = append(c.conns, tcp)
	c.lastID = append(c.lastID, last)
	c.mu.Unlock()
	go c.read(body, last)
	return nil
}

// dialStream connects to addr from the loopback address that n picks out of eight, sends
// request and reads the response's headers; it returns the connection and a reader of the
// stream's body, or an error if the answer is not 200.
func dialStream(addr, request string, n int64) (*net.TCPConn, *bufio.Reader, error) {
	ip := net.IPv4(127, 0, 0, byte(2+n%8))
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}, Timeout: 10 * time.Second}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	tcp := conn.(*net.TCPConn)
	io.WriteString(tcp, request)
	resp, err := http.ReadResponse(bufio.NewReaderSize(tcp, 512), nil)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("status %s", resp.Status)
	}
	if err != nil {
		tcp.Close()
		return nil, nil, err
	}
	return tcp, bufio.NewReaderSize(resp.Body, 512), nil
}

// read counts a stream's events until it ends, and every id that does not follow the last.
func (c *benchClients) read(r *bufio.Reader, lastID *atomic.Uint64) {
	var last uint64
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			return
		}
		if rest, ok := bytes.CutPrefix(line, []byte("id: ")); ok {
			id, _ := strconv.ParseUint(string(bytes.TrimSpace(rest)), 10, 64)
			if id != last+1 {
				c.gaps.Add(1)
			}
			last = id
			lastID.Store(id)
			c.events.Add(1)
		}
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

// checkProgress reports the streams that received fewer than want events since the ids
// in before were taken: how many, and the one that received fewest.
func (c *benchClients) checkProgress(before []uint64, want uint64) error {
	short, worst, fewest := 0, 0, want
	for i, now := range c.lastIDs()[:len(before)] {
		if got := now - before[i]; got < want {
			short++
			if got < fewest {
				worst, fewest = i, got
			}
		}
	}
	if short > 0 {
		return fmt.Errorf("%d of %d streams received fewer than %d events, stream %d only %d",
			short, len(before), want, worst, fewest)
	}
	return nil
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

// ms returns d in milliseconds.
func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// print writes the notes, then the medians of every figure side by side with this
// service's ratio to net/http, a figure from a run that fell short marked with *, then
// the stacks per goroutine kind.
func (r *benchResults) print(w io.Writer) {
	r.printNotes(w)
	r.printTable(w, fmt.Sprintf("median of %d runs", benchRuns), benchServers, benchMetrics)
	fmt.Fprintln(w, "\ngoroutine stacks per stream by kind, 10k streams (median of the runs):")
	r.printKinds(w, benchServers)
	fmt.Fprintf(w, "(a goroutine's stack doubles when a call needs more and halves at a GC only while less than a quarter\n"+
		"of it is in use; heap and goroutine profiles at 10k streams: %s/*-heap.pprof, *-goroutine.txt)\n", r.dir)
}

// printNotes writes a line for each phase that fell short, and one for lost events.
func (r *benchResults) printNotes(w io.Writer) {
	for _, note := range r.notes {
		fmt.Fprintln(w, "* fell short:", note)
	}
	if r.lost > 0 {
		fmt.Fprintf(w, "! %d gaps in the streams' ids: events were lost\n", r.lost)
	}
}

// cell formats the median of a figure for a table, marked with * if a run that measured it
// fell short, or a dash if none did.
func (r *benchResults) cell(server, key string) string {
	v, short, ok := r.median(server, key)
	switch {
	case !ok:
		return "–"
	case short:
		return fmt.Sprintf("%.1f*", v)
	}
	return fmt.Sprintf("%.1f", v)
}

// printTable writes one line per metric with a column per server (the first is this
// service), the ratio of the first to the second, and the metric's target if any has one.
func (r *benchResults) printTable(w io.Writer, title string, servers []benchServer, metrics []benchMetric) {
	targets := slices.ContainsFunc(metrics, func(m benchMetric) bool { return m.target != "" })
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "%s\t", title)
	for _, s := range servers {
		fmt.Fprintf(tw, "%s\t", s.name)
	}
	fmt.Fprintf(tw, "%s / %s\t", servers[0].name, servers[1].name)
	if targets {
		fmt.Fprint(tw, "target\t")
	}
	fmt.Fprintln(tw)
	for _, m := range metrics {
		fmt.Fprintf(tw, "%s\t", m.label)
		for _, s := range servers {
			fmt.Fprintf(tw, "%s\t", r.cell(s.name, m.key))
		}
		ours, _, ok1 := r.median(servers[0].name, m.key)
		theirs, _, ok2 := r.median(servers[1].name, m.key)
		if ok1 && ok2 && theirs != 0 {
			fmt.Fprintf(tw, "%.2f×\t", ours/theirs)
		} else {
			fmt.Fprint(tw, "–\t")
		}
		if targets {
			fmt.Fprintf(tw, "%s\t", m.target)
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
	if len(r.notes) > 0 {
		fmt.Fprintln(w, "* from a run that fell short: see the lines above the table")
	}
}

// printKinds writes, per server and goroutine kind, how many goroutines of that kind each
// stream has and the stack memory they hold and use.
func (r *benchResults) printKinds(w io.Writer, servers []benchServer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "server\tgoroutine\tper stream\tKB each\tKB in use each\tKB per stream\t")
	for _, s := range servers {
		for _, label := range r.kinds[s.name] {
			key := "kind:" + label + ":"
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t\n", s.name, label, r.cell(s.name, key+"n"),
				r.cell(s.name, key+"each"), r.cell(s.name, key+"used"), r.cell(s.name, key+"kb"))
		}
	}
	tw.Flush()
}
