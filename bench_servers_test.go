package main

import (
	"bufio"
	"bytes"
	"context"
	"expvar"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gofiber/adaptor/v2"
	"github.com/gofiber/fiber/v2"
)

// benchServerEnv names the comparison server a re-executed test binary runs: "net/http" or
// "fiber-native" for BenchmarkStreams, "net/http-broadcast" for BenchmarkFanout. This
// service itself runs as main.
const benchServerEnv = "SSE_DASHBOARD_BENCH_SERVER"

// benchProfilesEnv names a directory where a server process started by BenchmarkStreams
// writes a heap profile and a goroutine profile each time it receives SIGUSR1.
const benchProfilesEnv = "SSE_DASHBOARD_BENCH_PROFILES"

// init installs the profile hook in a server process that BenchmarkStreams started; in
// any other run of the test binary it does nothing.
func init() {
	if dir := os.Getenv(benchProfilesEnv); dir != "" {
		signals := make(chan os.Signal, 1)
		signal.Notify(signals, syscall.SIGUSR1)
		go func() {
			for range signals {
				if err := writeProfiles(dir); err != nil {
					fmt.Fprintln(os.Stderr, "write profiles:", err)
				}
			}
		}()
	}
}

// writeProfiles writes heap.pprof (after a GC, so it holds only live memory) and
// goroutine.txt (every distinct goroutine stack with its count) into dir. The goroutine
// profile is renamed into place last, so a reader that sees it finds both complete.
func writeProfiles(dir string) error {
	runtime.GC()
	for _, p := range []struct {
		profile, file string
		debug         int
	}{{"heap", "heap.pprof", 0}, {"goroutine", "goroutine.txt", 1}} {
		tmp := filepath.Join(dir, p.file+".tmp")
		f, err := os.Create(tmp)
		if err != nil {
			return err
		}
		err = pprof.Lookup(p.profile).WriteTo(f, p.debug)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("%s profile: %w", p.profile, err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, p.file)); err != nil {
			return err
		}
	}
	return nil
}

// serveComparison runs one of the comparison servers on addr until SIGTERM, with the
// same producer, framing and settings as this service: the same listener (its send
// buffer cap) and, for Fiber, the same Fiber settings as newApp.
func serveComparison(kind string, args []string) error {
	cfg, err := parseConfig(args, func(string) string { return "" }, io.Discard)
	if err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	tcp, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return err
	}
	ln := newConnListener(tcp, logger, prometheus.NewCounter(prometheus.CounterOpts{Name: "accept_errors_total", Help: "Failed accepts."}))
	ln.sendBuffer, ln.userTimeout = cfg.sendBuffer, cfg.deadClientAfter
	// The floor takes its publishes on a listener of its own, as the service does.
	var admin net.Listener
	if kind == "floor" {
		if admin, err = net.Listen("tcp", cfg.adminAddr); err != nil {
			return err
		}
		fmt.Printf("msg=listening addr=%s admin_addr=%s\n", ln.Addr(), admin.Addr())
	} else {
		fmt.Printf("msg=listening addr=%s\n", ln.Addr())
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	// What the benchmark reads from /debug/vars; the service itself reports both in its metrics.
	var open func() int64
	expvar.Publish("clients", expvar.Func(func() any { return open() }))
	expvar.Publish("goroutines", expvar.Func(func() any { return runtime.NumGoroutine() }))
	switch kind {
	case "net/http":
		streams := handleSSE(cfg.stream, logger)
		open = streams.StreamsOpen
		mux := http.NewServeMux()
		mux.Handle("GET /sse", streams)
		return serveNetHTTP(ctx, ln, mux, cfg.readTimeout)
	case "floor":
		f := newFloor()
		open = f.open.Load
		go f.serve(ln)
		mux := http.NewServeMux()
		mux.HandleFunc("POST /publish", f.publish)
		defer ln.Close()
		return serveNetHTTP(ctx, admin, mux, cfg.readTimeout)
	case "fiber-native":
		service, _ := newApp(cfg, logger, new(atomic.Bool))
		settings := service.Config()
		app := fiber.New(fiber.Config{
			DisableStartupMessage: true,
			ReadTimeout:           settings.ReadTimeout,
			IdleTimeout:           settings.IdleTimeout,
			ReduceMemoryUsage:     settings.ReduceMemoryUsage,
			ReadBufferSize:        settings.ReadBufferSize,
			WriteBufferSize:       settings.WriteBufferSize,
		})
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

// serveNetHTTP serves mux, with /debug/vars added, on ln as a plain net/http server until
// ctx ends, then shuts it down. Requests share ctx, so that streams end at shutdown as they
// do under Fiber.
func serveNetHTTP(ctx context.Context, ln net.Listener, mux *http.ServeMux, readTimeout time.Duration) error {
	mux.Handle("GET /debug/vars", expvar.Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: readTimeout,
		BaseContext: func(net.Listener) context.Context { return ctx }}
	go srv.Serve(ln)
	<-ctx.Done()
	return srv.Shutdown(context.Background())
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

// floor is the smallest fan-out that still speaks HTTP to its subscribers, which
// BenchmarkFanout measures the hub against: no framework, no goroutine and no queue per
// subscriber. A subscriber's request is read, its response header written, and its
// connection kept in a list; each published event is framed once, as one chunk, and
// written to every connection in turn by one writer goroutine per core, each with its
// share of the list. A connection whose write fails is forgotten. It has no history, no
// resume, no keepalive, no write deadline and no client limit: what it spends per delivery
// is the write and little else.
type floor struct {
	open   atomic.Int64 // subscribers now
	seq    atomic.Uint64
	shards []*floorShard
	next   atomic.Uint64 // the shard the next subscriber joins
}

// floorShard is one writer goroutine's share of the subscribers and the frames it has to
// write to them.
type floorShard struct {
	frames chan []byte
	mu     sync.Mutex
	conns  []net.Conn
}

// newFloor starts one writer goroutine per core.
func newFloor() *floor {
	f := &floor{}
	for range runtime.GOMAXPROCS(0) {
		shard := &floorShard{frames: make(chan []byte, 1024)}
		f.shards = append(f.shards, shard)
		go f.write(shard)
	}
	return f
}

// serve accepts subscribers on ln until it is closed.
func (f *floor) serve(ln net.Listener) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		go f.subscribe(conn)
	}
}

// floorHeader is every subscriber's response header: a chunked event stream that ends
// with the connection.
const floorHeader = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n" +
	"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"

// subscribe reads a subscriber's request head, answers with floorHeader and adds the
// connection to a shard.
func (f *floor) subscribe(conn net.Conn) {
	head := make([]byte, 0, 512)
	buf := make([]byte, 512)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for !bytes.Contains(head, []byte("\r\n\r\n")) {
		n, err := conn.Read(buf)
		if err != nil || len(head)+n > 8192 {
			conn.Close()
			return
		}
		head = append(head, buf[:n]...)
	}
	if _, err := io.WriteString(conn, floorHeader); err != nil {
		conn.Close()
		return
	}
	shard := f.shards[f.next.Add(1)%uint64(len(f.shards))]
	shard.mu.Lock()
	shard.conns = append(shard.conns, conn)
	shard.mu.Unlock()
	f.open.Add(1)
}

// write writes each frame of shard to each of its connections, forgetting those whose
// write fails.
func (f *floor) write(shard *floorShard) {
	for frame := range shard.frames {
		shard.mu.Lock()
		conns := shard.conns
		kept := conns[:0]
		for _, conn := range conns {
			if _, err := conn.Write(frame); err != nil {
				conn.Close()
				f.open.Add(-1)
				continue
			}
			kept = append(kept, conn)
		}
		clear(conns[len(kept):])
		shard.conns = kept
		shard.mu.Unlock()
	}
}

// publish reads a body of POST /publish, checked as the service checks it, frames the
// event once as one chunk, hands it to every shard and answers with its id.
func (f *floor) publish(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxPublishBody))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	_, event, data, err := parsePublish(body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	id := strconv.FormatUint(f.seq.Add(1), 10)
	framed := appendNamedEvent(nil, []byte(id), event, data)
	frame := strconv.AppendInt(nil, int64(len(framed)), 16)
	frame = append(append(append(frame, "\r\n"...), framed...), "\r\n"...)
	for _, shard := range f.shards {
		shard.frames <- frame
	}
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, "{\"id\":%q}\n", id)
}
