package main

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// fanoutServers are the servers BenchmarkFanout compares: this service's hub, and the
// floor, the least a fan-out over HTTP can do. With BENCH_BEFORE set to a test binary built
// from another revision (go test -c), that revision's hub is measured in the same run too.
func fanoutServers() []benchServer {
	servers := []benchServer{
		{name: "fiber+adaptor", env: helperEnv + "=1", file: "fiber-adaptor-fanout", admin: true, metrics: true},
		{name: "floor", env: benchServerEnv + "=floor", file: "floor-fanout", admin: true},
	}
	if before := os.Getenv("BENCH_BEFORE"); before != "" {
		servers = append(servers, benchServer{name: "before", env: helperEnv + "=1", file: "before-fanout", admin: true, metrics: true, binary: before})
	}
	return servers
}

// The load BenchmarkFanout puts on each server: subscribers of one topic, one publish a
// second for a while, then publishes at a steady rate for a minute, then at most
// fanoutDrain for the last deliveries.
const (
	fanoutTopic       = "fanout"
	fanoutSubscribers = 10000
	fanoutRate        = 10 // publishes a second
	fanoutDuration    = 60 * time.Second
	fanoutDrain       = 10 * time.Second
	// Before that load, one publish a second for this long: what one publish costs alone.
	fanoutSlowDuration = 10 * time.Second
	// Through NATS, two replicas of this service share the subscribers, half each.
	fanoutNATSReplicas = 2
)

// fanoutRequest subscribes a raw connection to the benchmark's topic.
const fanoutRequest = "GET /sse?topic=" + fanoutTopic + " HTTP/1.1\r\nHost: sse-dashboard\r\nAccept: text/event-stream\r\n\r\n"

// fanoutMetrics are BenchmarkFanout's rows, with the targets the service is held to.
var fanoutMetrics = []benchMetric{
	{"made@1", "delivered-%@1", "1 publish/s: deliveries made (%)", "100"},
	{"p50@1", "p50-ms@1", "1 publish/s: latency p50 (ms)", "≤ 15"},
	{"p99@1", "p99-ms@1", "1 publish/s: latency p99 (ms)", "≤ 40"},
	{"cpu@1", "cpu-us/delivery@1", "1 publish/s: server CPU per delivery (µs)", ""},
	{"made", "delivered-%", "10 publishes/s: deliveries made, 10 s after the last (%)", "100"},
	{"dps", "deliveries/s", "10 publishes/s: delivered/s in the 60 s of publishing", "100000"},
	{"lastdps", "deliveries/s-last", "10 publishes/s: delivered/s in the last second", "100000"},
	{"p50", "p50-ms", "10 publishes/s: latency p50 (ms)", ""},
	{"p99", "p99-ms", "10 publishes/s: latency p99 (ms)", "≤ 100"},
	{"p999", "p99.9-ms", "10 publishes/s: latency p99.9 (ms)", ""},
	{"max", "max-ms", "10 publishes/s: latency max (ms)", ""},
	{"cpu", "cpu-us/delivery", "10 publishes/s: server CPU per delivery (µs)", "≤ 2× floor"},
	{"cores", "server-cores", "10 publishes/s: server CPU (cores)", ""},
	{"clientcores", "client-cores", "10 publishes/s: the clients' CPU (cores)", ""},
	{"pub99", "publish-p99-ms", "10 publishes/s: POST /publish answered, p99 (ms)", ""},
	{"exact", "exact-lists", "subscribers whose list is the published list", "10000"},
	{"rssidle", "rss-KB/subscriber-idle", "RSS per subscriber, subscribed, before publishing (KB)", "≤ 16"},
	{"rss", "rss-KB/subscriber", "RSS per subscriber, after publishing (KB)", ""},
	{"heap", "heap-KB/subscriber", "heap per subscriber, after publishing (KB)", ""},
	{"stack", "stack-KB/subscriber", "goroutine stacks per subscriber (KB)", ""},
	{"gor", "goroutines/subscriber", "goroutines per subscriber", ""},
	{"slow", "too-slow", "subscribers dropped as too slow", ""},
	{"subscribe", "subscribe10k-ms", "time to subscribe 10k (ms)", ""},
	{"made@nats", "delivered-%@nats", "through NATS, 2 × 5k, 1 publish/s: deliveries made (%)", "100"},
	{"p50@nats", "p50-ms@nats", "through NATS: latency p50 (ms)", ""},
	{"p99@nats", "p99-ms@nats", "through NATS: latency p99 (ms)", "≤ 60"},
	{"exact@nats", "exact-lists@nats", "through NATS: subscribers whose list is the published list", "10000"},
}

// BenchmarkFanout subscribes 10,000 raw connections to one topic of each server, each in a
// process of its own, publishes one event a second for 10 s and then 10 a second for 60 s,
// each carrying the time it was sent and its number, and prints a table: deliveries made,
// their rate, publish→receive latency over all of them, whether every subscriber received
// exactly the published list, and what a subscriber costs the server in memory,
// goroutines and CPU. Then it runs this service as two replicas on one NATS JetStream
// stream, 5,000 subscribers each. A target missed is said below the table; it does not
// fail the benchmark, whose job is to measure. Run it with make bench.
func BenchmarkFanout(b *testing.B) {
	servers := fanoutServers()
	results := startFanoutBench(b, servers)
	for _, s := range servers {
		measureFanout(results.phase(s, 0, "fan-out"))
	}
	measureFanoutNATS(results.phase(servers[0], 0, "fan-out through NATS"))
	results.printFanout(b, servers, fanoutMetrics)
	for _, miss := range results.missedTargets(servers[0].name, servers[1].name) {
		fmt.Println("target missed:", miss)
	}
}

// startFanoutBench checks that this process may open the subscribers' sockets, and returns
// the results the servers' figures are recorded in.
func startFanoutBench(b *testing.B, servers []benchServer) *benchResults {
	if b.N > 1 {
		b.Skip("run with -benchtime 1x: one pass already takes minutes")
	}
	// Go raises the soft open-file limit to the hard one at start; the subscribers' sockets
	// are this process's, the server's are its own.
	var files syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &files); err != nil || files.Cur < fanoutSubscribers+500 {
		b.Fatalf("open-file limit %d (%v): %d subscribers need %d (ulimit -n)", files.Cur, err, fanoutSubscribers, fanoutSubscribers+500)
	}
	return newBenchResults(b, servers)
}

// printFanout prints the table of a fan-out benchmark and reports its figures as metrics.
func (r *benchResults) printFanout(b *testing.B, servers []benchServer, metrics []benchMetric) {
	r.printNotes(os.Stdout)
	fmt.Printf("%d subscribers of one topic; 1 publish/s for %s, then %d publishes/s for %s (%d deliveries/s);\n"+
		"latency is publish→receive, over every delivery made\n",
		fanoutSubscribers, fanoutSlowDuration, fanoutRate, fanoutDuration, fanoutSubscribers*fanoutRate)
	r.printTable(os.Stdout, "one run", servers, metrics)
	fmt.Println("\ngoroutine stacks per subscriber by kind, after publishing:")
	r.printKinds(os.Stdout, servers)
	fmt.Printf("(heap and goroutine profiles with the subscribers: %s/*-fanout-heap.pprof, *-fanout-goroutine.txt;\n"+
		"CPUPROFILE=file profiles this service's process)\n", r.dir)
	for _, s := range servers {
		b.Run(strings.ReplaceAll(s.name, "/", "-"), func(b *testing.B) {
			for _, m := range metrics {
				if v, _, ok := r.median(s.name, m.key); ok {
					b.ReportMetric(v, m.unit)
				}
			}
		})
	}
}

// missedTargets returns a line for each of BenchmarkFanout's targets that server missed;
// its CPU per delivery is held to twice the floor's.
func (r *benchResults) missedTargets(server, floor string) []string {
	var missed []string
	check := func(key string, ok func(v float64) bool, target string) {
		if v, _, measured := r.median(server, key); !measured || !ok(v) {
			missed = append(missed, fmt.Sprintf("%s: %s, got %s", server, target, r.cell(server, key)))
		}
	}
	all := func(v float64) bool { return v >= 100 }
	everyone := func(v float64) bool { return v == fanoutSubscribers }
	check("made@1", all, "every delivery made at 1 publish/s")
	check("p50@1", func(v float64) bool { return v <= 15 }, "p50 ≤ 15 ms at 1 publish/s")
	check("p99@1", func(v float64) bool { return v <= 40 }, "p99 ≤ 40 ms at 1 publish/s")
	check("made", all, "every delivery made at 10 publishes/s")
	check("p99", func(v float64) bool { return v <= 100 }, "p99 ≤ 100 ms at 10 publishes/s")
	check("lastdps", func(v float64) bool { return v >= 0.99*fanoutRate*fanoutSubscribers }, "the rate held to the last second")
	check("exact", everyone, "every subscriber's list is the published list")
	check("rssidle", func(v float64) bool { return v <= 16 }, "RSS per idle subscriber ≤ 16 KB")
	if floorCPU, _, ok := r.median(floor, "cpu"); ok {
		check("cpu", func(v float64) bool { return v <= 2*floorCPU }, fmt.Sprintf("CPU per delivery ≤ 2× the floor's (%.1f µs)", floorCPU))
	}
	check("made@nats", all, "every delivery made through NATS")
	check("p99@nats", func(v float64) bool { return v <= 60 }, "p99 ≤ 60 ms through NATS")
	check("exact@nats", everyone, "every subscriber's list is the published list through NATS")
	return missed
}

// fanoutTarget is how the benchmark talks to one fan-out server: where its subscribers
// connect and with what request, and how an event is published to it.
type fanoutTarget struct {
	addrs      []string // the subscribers are spread over these, in turn
	request    string   // what a subscriber sends
	publishURL string
	header     http.Header
	// body is a publish's body for data; the answer carries the event's place in the
	// server's order when order can read it.
	body  func(data []byte) []byte
	order func(answer []byte) (uint64, bool)
}

// serviceTarget is this service, or the floor, at proc: subscribers on its public listener,
// publishes on its admin listener, the event's place in the id it answers with.
func serviceTarget(proc *benchProcess) fanoutTarget {
	return fanoutTarget{
		addrs:      []string{proc.addr},
		request:    fanoutRequest,
		publishURL: "http://" + proc.admin + "/publish",
		header:     http.Header{"Content-Type": {"application/json"}},
		body: func(data []byte) []byte {
			return fmt.Appendf(nil, `{"topic":%q,"data":%s}`, fanoutTopic, data)
		},
		order: answeredSeq,
	}
}

// answeredSeq reads the number at the end of the id in a publish's answer, {"id":"<epoch>-<n>"}
// or {"id":"<n>"}: the event's place in the server's order.
func answeredSeq(answer []byte) (uint64, bool) {
	var a struct {
		ID string `json:"id"`
	}
	if json.Unmarshal(answer, &a) != nil {
		return 0, false
	}
	n, err := strconv.ParseUint(a.ID[strings.LastIndexByte(a.ID, '-')+1:], 10, 64)
	return n, err == nil
}

// measureFanout runs BenchmarkFanout's loads against the phase's server, 1 publish a second
// and then 10, and records its figures.
func measureFanout(p *benchPhase) {
	proc, target, err := startFanoutServer(p)
	if err != nil {
		p.fallShort(err)
		return
	}
	defer proc.stop(p, 30*time.Second)
	clients := newFanoutClients(target)
	defer clients.closeAll()
	base, err := sampleProcess(proc)
	if err != nil {
		p.fallShort(err)
		return
	}
	// The stacks by kind are read with the layout of this binary's runtime: only from a
	// server that runs it.
	ownBinary := p.server.peer == nil && p.server.binary == ""
	var baseKinds []goroutineKind
	if ownBinary {
		baseKinds, _ = goroutineStacks(proc.cmd.Process.Pid)
	}

	start := time.Now()
	if err := dialAll(fanoutSubscribers, clients.dial); err != nil {
		p.fallShort(err)
		return
	}
	p.record("subscribe", ms(time.Since(start)))
	if err := waitClients(proc, fanoutSubscribers); err != nil {
		p.fallShort(err)
		return
	}
	n := float64(fanoutSubscribers)
	idle, err := sampleProcess(proc)
	if err != nil {
		p.fallShort(err)
		return
	}
	p.record("rssidle", (idle.rssKB-base.rssKB)/n)

	published := &publishedList{}
	if err := runFanoutLoad(p, []*benchProcess{proc}, clients, published, 1, fanoutSlowDuration, "@1"); err != nil {
		p.fallShort(err)
		return
	}
	if err := runFanoutLoad(p, []*benchProcess{proc}, clients, published, fanoutRate, fanoutDuration, ""); err != nil {
		p.fallShort(err)
		return
	}
	p.recordExact(clients, published, "exact")

	// A server still behind on its deliveries may take its turn to answer: three tries.
	now, err := sampleProcess(proc)
	for try := 1; err != nil && try < 3; try++ {
		now, err = sampleProcess(proc)
	}
	if err != nil {
		p.fallShort(err)
		return
	}
	p.record("rss", (now.rssKB-base.rssKB)/n)
	if proc.expvar {
		p.record("heap", (now.heapKB-base.heapKB)/n)
		p.record("stack", (now.stackKB-base.stackKB)/n)
		p.record("gor", float64(now.goroutines-base.goroutines)/n)
		p.record("slow", float64(now.tooSlow))
		if ownBinary {
			p.recordKinds(proc, baseKinds, fanoutSubscribers)
		}
		if err := proc.writeProfiles(p); err != nil {
			p.fallShort(fmt.Errorf("profiles: %w", err))
		}
	}
}

// startFanoutServer starts the phase's server and returns how to reach it.
func startFanoutServer(p *benchPhase) (*benchProcess, fanoutTarget, error) {
	if p.server.peer != nil {
		return p.server.peer(p)
	}
	proc, err := startBenchServer(p, "-max-clients", "20000")
	if err != nil {
		return nil, fanoutTarget{}, err
	}
	return proc, serviceTarget(proc), nil
}

// measureFanoutNATS runs this service as two replicas on one JetStream stream of a NATS
// server in this process, subscribes half the subscribers to each, publishes one event a
// second through the first, and records what the subscribers of both received.
func measureFanoutNATS(p *benchPhase) {
	dir, err := os.MkdirTemp("", "sse-bench-nats-")
	if err != nil {
		p.fallShort(err)
		return
	}
	defer os.RemoveAll(dir)
	nats, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true,
		StoreDir: dir, NoLog: true, NoSigs: true, JetStreamMaxMemory: 256 << 20, JetStreamMaxStore: 1 << 30})
	if err != nil {
		p.fallShort(fmt.Errorf("NATS server: %w", err))
		return
	}
	nats.Start()
	defer nats.Shutdown()
	if !nats.ReadyForConnections(10 * time.Second) {
		p.fallShort(errors.New("the NATS server was not ready within 10s"))
		return
	}
	var procs []*benchProcess
	target := fanoutTarget{}
	for range fanoutNATSReplicas {
		proc, err := startBenchServer(p, "-max-clients", "20000", "-nats", nats.ClientURL())
		if err != nil {
			p.fallShort(err)
			return
		}
		defer proc.stop(p, 30*time.Second)
		procs = append(procs, proc)
		if target.addrs == nil {
			target = serviceTarget(proc)
		} else {
			target.addrs = append(target.addrs, proc.addr)
		}
	}
	clients := newFanoutClients(target)
	defer clients.closeAll()
	if err := dialAll(fanoutSubscribers, clients.dial); err != nil {
		p.fallShort(err)
		return
	}
	for _, proc := range procs {
		if err := waitClients(proc, fanoutSubscribers/fanoutNATSReplicas); err != nil {
			p.fallShort(err)
			return
		}
	}
	published := &publishedList{}
	if err := runFanoutLoad(p, procs, clients, published, 1, fanoutSlowDuration, "@nats"); err != nil {
		p.fallShort(err)
		return
	}
	p.recordExact(clients, published, "exact@nats")
}

// runFanoutLoad publishes rate events a second for d to the subscribers of clients, waits
// at most fanoutDrain for the last deliveries, and records, under keys ending in suffix,
// the deliveries made and their rate, over the whole time and in its last second, the
// latencies, the publish answers' p99, and the CPU the servers and the clients used.
func runFanoutLoad(p *benchPhase, procs []*benchProcess, clients *fanoutClients, published *publishedList, rate int, d time.Duration, suffix string) error {
	clients.takeLatencies()
	cpu0, err0 := serversCPU(procs)
	clientCPU0, err1 := pidCPU(os.Getpid())
	delivered0, t0 := clients.delivered.Load(), time.Now()
	type outcome struct {
		planned int
		answers []time.Duration
		err     error
	}
	publishing := make(chan outcome, 1)
	go func() {
		planned, answers, err := published.publish(clients.target, rate, d)
		publishing <- outcome{planned, answers, err}
	}()
	time.Sleep(time.Until(t0.Add(d - time.Second)))
	deliveredLast := clients.delivered.Load()
	time.Sleep(time.Until(t0.Add(d)))
	cpu1, err2 := serversCPU(procs)
	clientCPU1, err3 := pidCPU(os.Getpid())
	delivered1, t1 := clients.delivered.Load(), time.Now()
	publishes := <-publishing
	// A publish that was not answered may still be delivered: every planned one counts.
	expected := int64(publishes.planned) * fanoutSubscribers
	for deadline := time.Now().Add(fanoutDrain); clients.delivered.Load()-delivered0 < expected && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	cpu2, err4 := serversCPU(procs)
	if err := errors.Join(err0, err1, err2, err3, err4); err != nil {
		return err
	}
	if publishes.err != nil {
		p.fallShort(publishes.err)
	}
	made := clients.delivered.Load() - delivered0
	window := t1.Sub(t0).Seconds()
	p.record("made"+suffix, 100*float64(made)/float64(max(expected, 1)))
	p.record("dps"+suffix, float64(delivered1-delivered0)/window)
	p.record("lastdps"+suffix, float64(delivered1-deliveredLast)/t1.Sub(t0.Add(d-time.Second)).Seconds())
	p.record("cpu"+suffix, float64((cpu2-cpu0).Microseconds())/float64(max(made, 1)))
	p.record("cores"+suffix, (cpu1-cpu0).Seconds()/window)
	p.record("clientcores"+suffix, (clientCPU1-clientCPU0).Seconds()/window)
	p.record("pub99"+suffix, ms(percentile(publishes.answers, 0.99)))
	latencies := clients.takeLatencies()
	p.record("p50"+suffix, ms(percentile(latencies, 0.50)))
	p.record("p99"+suffix, ms(percentile(latencies, 0.99)))
	p.record("p999"+suffix, ms(percentile(latencies, 0.999)))
	p.record("max"+suffix, ms(percentile(latencies, 1)))
	return nil
}

// serversCPU returns the user and system CPU time the server processes have used together.
func serversCPU(procs []*benchProcess) (time.Duration, error) {
	var total time.Duration
	for _, proc := range procs {
		cpu, err := processCPU(proc)
		if err != nil {
			return 0, err
		}
		total += cpu
	}
	return total, nil
}

// publishedList is every event a benchmark published, by number, and each one's place in
// the server's order where its answer said.
type publishedList struct {
	next   atomic.Uint32
	mu     sync.Mutex
	events []publishedEvent
}

// publishedEvent is one event published: its number, and its place in the server's order.
type publishedEvent struct {
	n       uint32
	seq     uint64
	ordered bool // whether the answer said its place
}

// publish posts an event rate times a second for d, on schedule whether or not the
// publishes before have been answered, each event's data {"t":<unix ns>,"n":<number>}
// the moment it is sent. It returns how many it sent, how long each answered 200 took,
// and how many were not answered 200 and why the first was not.
func (l *publishedList) publish(target fanoutTarget, rate int, d time.Duration) (int, []time.Duration, error) {
	// At most as many connections as the service's admin listener holds at once
	// (adminMaxConns): more would wait in its kernel queue, unanswered.
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxConnsPerHost: adminMaxConns, MaxIdleConnsPerHost: adminMaxConns}}
	defer client.CloseIdleConnections()
	every := time.Second / time.Duration(rate)
	planned := int(d / every)
	var (
		mu       sync.Mutex
		answers  = make([]time.Duration, 0, planned)
		failed   int
		firstErr error
		wg       sync.WaitGroup
	)
	start := time.Now()
	for i := range planned {
		time.Sleep(time.Until(start.Add(time.Duration(i) * every)))
		wg.Go(func() {
			n := l.next.Add(1) - 1
			sent := time.Now()
			body := target.body(fmt.Appendf(nil, `{"t":%d,"n":%d}`, sent.UnixNano(), n))
			req, _ := http.NewRequest(http.MethodPost, target.publishURL, bytes.NewReader(body))
			req.Header = target.header.Clone()
			var answer []byte
			resp, err := client.Do(req)
			if err == nil {
				answer, err = io.ReadAll(resp.Body)
				resp.Body.Close()
				if err == nil && resp.StatusCode != http.StatusOK {
					err = fmt.Errorf("publish: %s", resp.Status)
				}
			}
			took := time.Since(sent)
			event := publishedEvent{n: n}
			if err == nil && target.order != nil {
				event.seq, event.ordered = target.order(answer)
			}
			l.mu.Lock()
			l.events = append(l.events, event)
			l.mu.Unlock()
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				answers = append(answers, took)
				return
			}
			if failed++; firstErr == nil {
				firstErr = err
			}
		})
	}
	wg.Wait()
	if failed > 0 {
		return planned, answers, fmt.Errorf("%d of %d publishes not answered 200, the first: %w", failed, planned, firstErr)
	}
	return planned, answers, nil
}

// reference returns what every subscriber must receive: the numbers of the events whose
// answers said their place, in that order, and the number of every event published.
func (l *publishedList) reference() (ordered []uint32, all map[uint32]bool) {
	l.mu.Lock()
	events := slices.Clone(l.events)
	l.mu.Unlock()
	slices.SortFunc(events, func(a, b publishedEvent) int { return cmp.Compare(a.seq, b.seq) })
	all = make(map[uint32]bool, len(events))
	for _, e := range events {
		all[e.n] = true
		if e.ordered {
			ordered = append(ordered, e.n)
		}
	}
	return ordered, all
}

// recordExact records, under key, how many subscribers received exactly the published list:
// every event published, once each, and those whose answers said their place in the
// server's order in that order. Where no answer says (Centrifugo's), every subscriber must
// have the first subscriber's order: publishes sent concurrently may be stored in another
// order than they were sent. The first subscriber that did not is described in a note.
func (p *benchPhase) recordExact(clients *fanoutClients, published *publishedList, key string) {
	ordered, all := published.reference()
	clients.mu.Lock()
	defer clients.mu.Unlock()
	if len(ordered) == 0 && len(clients.subscribers) > 0 {
		first := clients.subscribers[0]
		first.mu.Lock()
		ordered = slices.Clone(first.received)
		first.mu.Unlock()
	}
	exact := 0
	for i, sub := range clients.subscribers {
		sub.mu.Lock()
		got := slices.Clone(sub.received)
		sub.mu.Unlock()
		problem := ""
		seen := make(map[uint32]bool, len(got))
		for _, n := range got {
			switch {
			case !all[n]:
				problem = fmt.Sprintf("event %d, never published", n)
			case seen[n]:
				problem = fmt.Sprintf("event %d twice", n)
			}
			seen[n] = true
		}
		if problem == "" && len(seen) != len(all) {
			problem = fmt.Sprintf("%d of the %d published events", len(seen), len(all))
		}
		if inOrder := filterTo(got, ordered); problem == "" && !slices.Equal(inOrder, ordered) {
			problem = describeDifference(inOrder, ordered)
		}
		if problem == "" {
			exact++
			continue
		}
		if exact == i { // the first that differs
			p.results.notes = append(p.results.notes, fmt.Sprintf("%s, %s: subscriber %d received %d events: %s",
				p.server.name, key, i, len(got), problem))
		}
	}
	p.record(key, float64(exact))
}

// filterTo returns the elements of got that are in want, in got's order.
func filterTo(got, want []uint32) []uint32 {
	keep := make(map[uint32]bool, len(want))
	for _, n := range want {
		keep[n] = true
	}
	return slices.DeleteFunc(slices.Clone(got), func(n uint32) bool { return !keep[n] })
}

// describeDifference says where got first differs from want.
func describeDifference(got, want []uint32) string {
	switch i := firstDifference(got, want); {
	case i < min(len(got), len(want)):
		return fmt.Sprintf("the %dth is event %d where %d was published", i+1, got[i], want[i])
	case len(got) < len(want):
		return fmt.Sprintf("missing the last %d", len(want)-len(got))
	default:
		return fmt.Sprintf("%d more than published", len(got)-len(want))
	}
}

// percentile returns the q-quantile (0 to 1) of durations, sorting them in place.
func percentile(durations []time.Duration, q float64) time.Duration {
	if len(durations) == 0 {
		return 0
	}
	slices.Sort(durations)
	return durations[min(len(durations)-1, int(q*float64(len(durations))))]
}

// fanoutClients are raw subscribers in this process. Each parses the time and the number in
// every event's data, and keeps the event's publish→receive latency and its number.
type fanoutClients struct {
	target    fanoutTarget
	dialed    atomic.Int64
	delivered atomic.Int64

	mu          sync.Mutex
	conns       []*net.TCPConn
	subscribers []*fanoutSubscriber
}

// newFanoutClients returns subscribers, none dialed yet, of target.
func newFanoutClients(target fanoutTarget) *fanoutClients {
	return &fanoutClients{target: target}
}

// fanoutSubscriber is what one subscriber received: the number of every event, and the
// latency of each since they were last taken.
type fanoutSubscriber struct {
	mu        sync.Mutex
	latencies []time.Duration
	received  []uint32
}

// dial subscribes one connection and starts reading it.
func (c *fanoutClients) dial() error {
	n := c.dialed.Add(1)
	tcp, body, err := dialStream(c.target.addrs[int(n)%len(c.target.addrs)], c.target.request, n)
	if err != nil {
		return err
	}
	sub := &fanoutSubscriber{latencies: make([]time.Duration, 0, fanoutRate*int(fanoutDuration/time.Second))}
	c.mu.Lock()
	c.conns = append(c.conns, tcp)
	c.subscribers = append(c.subscribers, sub)
	c.mu.Unlock()
	go c.read(body, sub)
	return nil
}

// read records the latency and the number of each event on the stream until it ends: the
// receive time less the publish time, from a data line that holds "t":<unix ns> and
// "n":<number>, whether the data is the line's whole JSON or nested in it.
func (c *fanoutClients) read(r *bufio.Reader, sub *fanoutSubscriber) {
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			return
		}
		if !bytes.HasPrefix(line, []byte("data: ")) {
			continue
		}
		sent, ok1 := numberAfter(line, `"t":`)
		n, ok2 := numberAfter(line, `"n":`)
		if !ok1 || !ok2 {
			continue
		}
		latency := time.Duration(time.Now().UnixNano() - int64(sent))
		sub.mu.Lock()
		sub.latencies = append(sub.latencies, latency)
		sub.received = append(sub.received, uint32(n))
		sub.mu.Unlock()
		c.delivered.Add(1)
	}
}

// numberAfter returns the decimal number that follows key in line.
func numberAfter(line []byte, key string) (uint64, bool) {
	i := bytes.Index(line, []byte(key))
	if i < 0 {
		return 0, false
	}
	var v uint64
	digits := 0
	for _, d := range line[i+len(key):] {
		if d < '0' || d > '9' {
			break
		}
		v = v*10 + uint64(d-'0')
		digits++
	}
	return v, digits > 0
}

// closeAll resets every subscriber's connection, as clients that vanish without a goodbye.
func (c *fanoutClients) closeAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, conn := range c.conns {
		conn.SetLinger(0) // no TIME_WAIT, so the next run finds free ports
		conn.Close()
	}
	c.conns = nil
}

// takeLatencies returns every latency the subscribers recorded since the last call.
func (c *fanoutClients) takeLatencies() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	all := make([]time.Duration, 0, c.delivered.Load())
	for _, sub := range c.subscribers {
		sub.mu.Lock()
		all = append(all, sub.latencies...)
		sub.latencies = sub.latencies[:0]
		sub.mu.Unlock()
	}
	return all
}

// centrifugoEnv names the Centrifugo binary BenchmarkPeers measures; make bench-peers
// builds it with go install into a cache outside the repository.
const centrifugoEnv = "CENTRIFUGO"

// peerServers are the servers BenchmarkPeers compares: this service's hub and Centrifugo's
// unidirectional SSE transport.
func peerServers() []benchServer {
	return []benchServer{
		{name: "fiber+adaptor", env: helperEnv + "=1", file: "fiber-adaptor-peers", admin: true, metrics: true},
		{name: "centrifugo", file: "centrifugo-peers", peer: startCentrifugo},
	}
}

// peerMetrics are BenchmarkPeers' rows: what both servers can be measured by, without
// this service's targets.
var peerMetrics = metricsWithoutTargets(fanoutMetrics, "made@1", "p50@1", "p99@1", "cpu@1", "made", "dps", "lastdps",
	"p50", "p99", "cpu", "cores", "exact", "rssidle", "rss", "subscribe")

// metricsWithoutTargets returns the rows of metrics with keys, in that order, their targets
// left out.
func metricsWithoutTargets(metrics []benchMetric, keys ...string) []benchMetric {
	var rows []benchMetric
	for _, key := range keys {
		i := slices.IndexFunc(metrics, func(m benchMetric) bool { return m.key == key })
		m := metrics[i]
		m.target = ""
		rows = append(rows, m)
	}
	return rows
}

// BenchmarkPeers runs BenchmarkFanout's workloads against this service and Centrifugo (the
// binary $CENTRIFUGO), one after the other, and prints one table. Run it with make
// bench-peers, which builds Centrifugo first.
func BenchmarkPeers(b *testing.B) {
	if os.Getenv(centrifugoEnv) == "" {
		b.Skip(centrifugoEnv + " is not set: run make bench-peers, which builds Centrifugo and sets it")
	}
	servers := peerServers()
	results := startFanoutBench(b, servers)
	for _, s := range servers {
		measureFanout(results.phase(s, 0, "fan-out"))
	}
	results.printFanout(b, servers, peerMetrics)
}

// centrifugoAPIKey is the key of the Centrifugo server API in the benchmark's config.
const centrifugoAPIKey = "bench-key"

// centrifugoConfig lets anonymous clients connect over the unidirectional SSE transport and
// be subscribed, at connect, to channels without a namespace, and serves the server API
// with centrifugoAPIKey. History, presence and join/leave messages stay off, as their
// defaults are; nothing else is changed.
const centrifugoConfig = `{
  "http_server": {"address": "127.0.0.1"},
  "log": {"level": "warn"},
  "usage_stats": {"disabled": true},
  "websocket": {"disabled": true},
  "uni_sse": {"enabled": true},
  "client": {"allow_anonymous_connect_without_token": true},
  "channel": {"without_namespace": {"allow_subscribe_for_client": true, "allow_subscribe_for_anonymous": true}},
  "http_api": {"key": "` + centrifugoAPIKey + `"}
}`

// startCentrifugo starts Centrifugo on a free loopback port with centrifugoConfig, its
// output going to the phase's log file, and returns how to reach it: subscribers on
// /connection/uni_sse subscribed to the benchmark's channel, publishes to /api/publish.
func startCentrifugo(p *benchPhase) (*benchProcess, fanoutTarget, error) {
	config := filepath.Join(p.results.dir, "centrifugo.json")
	if err := os.WriteFile(config, []byte(centrifugoConfig), 0o644); err != nil {
		return nil, fanoutTarget{}, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fanoutTarget{}, err
	}
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	ln.Close()
	proc, err := startProcessLogged(p, os.Getenv(centrifugoEnv), nil, "--config="+config, "--http_server.port="+port)
	if err != nil {
		return nil, fanoutTarget{}, err
	}
	proc.addr = "127.0.0.1:" + port
	proc.clients = centrifugoClients(proc.addr)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := proc.clients(); err == nil {
			break
		} else if time.Now().After(deadline) {
			proc.stop(p, 5*time.Second)
			return nil, fanoutTarget{}, fmt.Errorf("centrifugo did not answer within 10s: %w", err)
		}
	}
	connect := url.QueryEscape(`{"subs":{"` + fanoutTopic + `":{}}}`)
	return proc, fanoutTarget{
		addrs:      []string{proc.addr},
		request:    "GET /connection/uni_sse?cf_connect=" + connect + " HTTP/1.1\r\nHost: centrifugo\r\nAccept: text/event-stream\r\n\r\n",
		publishURL: "http://" + proc.addr + "/api/publish",
		header:     http.Header{"Content-Type": {"application/json"}, "X-Api-Key": {centrifugoAPIKey}},
		body: func(data []byte) []byte {
			return fmt.Appendf(nil, `{"channel":%q,"data":%s}`, fanoutTopic, data)
		},
	}, nil
}

// centrifugoClients returns a function that asks Centrifugo's server API how many clients
// the benchmark's channel has.
func centrifugoClients(addr string) func() (int, error) {
	client := &http.Client{Timeout: 10 * time.Second}
	return func() (int, error) {
		req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/api/channels", strings.NewReader(`{"pattern":"`+fanoutTopic+`"}`))
		req.Header.Set("X-Api-Key", centrifugoAPIKey)
		resp, err := client.Do(req)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		var answer struct {
			Result struct {
				Channels map[string]struct {
					NumClients int `json:"num_clients"`
				} `json:"channels"`
			} `json:"result"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&answer); err != nil {
			return 0, fmt.Errorf("centrifugo's channels: %s: %w", resp.Status, err)
		}
		return answer.Result.Channels[fanoutTopic].NumClients, nil
	}
}
