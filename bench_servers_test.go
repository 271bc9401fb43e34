package main

import (
	"bufio"
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
	fmt.Printf("msg=listening addr=%s\n", ln.Addr())
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
	case "net/http-broadcast":
		b := &broadcast{queueLen: cfg.stream.SubscriberQueue, subscribers: make(map[chan []byte]struct{})}
		open = b.open.Load
		expvar.Publish("too_slow", expvar.Func(func() any { return b.tooSlow.Load() }))
		mux := http.NewServeMux()
		mux.Handle("GET /sse", b)
		mux.HandleFunc("POST /publish", b.publish)
		return serveNetHTTP(ctx, ln, mux, cfg.readTimeout)
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

// broadcast is the plain net/http fan-out that BenchmarkFanout measures the hub against:
// one topic, each published event framed once and the same bytes queued for every
// subscriber, a subscriber whose queue is full dropped, as the hub does. It has none of
// the rest: no history, no resume, no keepalive, no write deadline, no client limit.
type broadcast struct {
	queueLen int
	open     atomic.Int64 // streams open now
	tooSlow  atomic.Int64 // subscribers dropped for a full queue

	mu          sync.Mutex
	seq         uint64
	subscribers map[chan []byte]struct{}
}

// ServeHTTP subscribes, sends the headers, then writes every frame queued for the stream,
// those that queued up during a write in the next one, until the client leaves, the server
// shuts down or publish drops the subscriber.
func (b *broadcast) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	queue := make(chan []byte, b.queueLen)
	b.mu.Lock()
	b.subscribers[queue] = struct{}{}
	b.mu.Unlock()
	b.open.Add(1)
	defer b.open.Add(-1)
	defer func() {
		b.mu.Lock()
		delete(b.subscribers, queue)
		b.mu.Unlock()
	}()
	setStreamHeaders(w.Header())
	w.Header().Set("Access-Control-Allow-Origin", "*")
	rc := http.NewResponseController(w)
	if rc.Flush() != nil {
		return
	}
	done := r.Context().Done()
	for {
		select {
		case frame, ok := <-queue:
			for ; ok; frame, ok = <-queue {
				if _, err := w.Write(frame); err != nil {
					return
				}
				if len(queue) == 0 {
					break
				}
			}
			if !ok || rc.Flush() != nil {
				return
			}
		case <-done:
			return
		}
	}
}

// publish reads a body of POST /publish, checked as the service checks it, frames the
// event once and queues the frame for every subscriber, dropping those whose queue is full,
// and answers with its id.
func (b *broadcast) publish(w http.ResponseWriter, r *http.Request) {
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
	b.mu.Lock()
	b.seq++
	id := strconv.FormatUint(b.seq, 10)
	frame := appendNamedEvent(nil, []byte(id), event, data)
	for queue := range b.subscribers {
		select {
		case queue <- frame:
		default:
			delete(b.subscribers, queue)
			close(queue)
			b.tooSlow.Add(1)
		}
	}
	b.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, "{\"id\":%q}\n", id)
}
