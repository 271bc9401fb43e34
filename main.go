// Command sse-dashboard serves a live dashboard over Server-Sent Events: a Fiber app that
// mounts a plain net/http SSE handler through the adaptor, one long-lived stream per client.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gofiber/adaptor/v2"
	"github.com/gofiber/fiber/v2"
	fiberrecover "github.com/gofiber/fiber/v2/middleware/recover"
)

// main runs the server until SIGINT or SIGTERM, and exits non-zero if it could not.
func main() {
	ctx, cancel := context.WithCancel(context.Background())
	stopOnSignals(cancel)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "sse-dashboard:", err)
		os.Exit(1)
	}
}

// duplicateSignalWindow is how soon the same signal again counts as the same stop request
// delivered twice: supervisors such as timeout(1) signal both the process and its group.
const duplicateSignalWindow = time.Second

// stopOnSignals calls stop on the first SIGINT or SIGTERM, and exits at once with status 1
// on a second one: another signal, or the same one after duplicateSignalWindow. Exiting here
// rather than restoring the default action also works when the shell started the process
// with SIGINT ignored, as it does for background jobs.
func stopOnSignals(stop context.CancelFunc) {
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, os.Interrupt, syscall.SIGTERM)
	go func() {
		first := <-signals
		firstAt := time.Now()
		stop()
		for sig := range signals {
			if sig == first && time.Since(firstAt) < duplicateSignalWindow {
				continue
			}
			fmt.Fprintf(os.Stderr, "sse-dashboard: second signal (%s): exiting without waiting for open streams\n", sig)
			os.Exit(1)
		}
	}()
}

// run parses the configuration, serves until ctx is cancelled, then shuts down within the
// shutdown timeout. Tests call it in-process; the "listening" log line tells them the addresses.
func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	cfg, err := parseConfig(args, getenv, stdout)
	if err != nil {
		return err
	}
	if cfg.version {
		fmt.Fprintln(stdout, version())
		return nil
	}
	logger := newLogger(stdout, cfg)
	if err := fitMaxClients(&cfg, logger); err != nil {
		return err
	}

	var ready atomic.Bool
	app, streams := newApp(cfg, logger, &ready)
	if cfg.nats.urls != "" {
		nb, closeNATS, err := startNATS(ctx, cfg.nats, cfg.stream.History, cfg.stream.SubscriberQueue,
			streams.broker.metrics, streams.observer, streams.auth.isPrivate, streams.metrics.registry, logger)
		if err != nil {
			return err
		}
		defer closeNATS()
		nb.hub = streams.broker.hub
		streams.broker = nb
	}
	ln, err := listen(cfg, logger, streams.metrics.acceptErrors)
	if err != nil {
		return err
	}
	defer ln.Close()
	adminAddr, closeAdmin, err := serveAdmin(cfg, streams.metrics, handlePublish(streams.broker, cfg.publishToken, streams.auth), logger)
	if err != nil {
		return err
	}
	defer closeAdmin()
	// Ready once the listener is open: the kernel queues connections until Serve takes them.
	ready.Store(true)
	cfg.logListening(logger, ln.Addr().String(), adminAddr)

	if cfg.demoTopic != "" {
		demoCtx, stopDemo := context.WithCancel(ctx)
		defer stopDemo()
		go publishDemo(demoCtx, streams.broker, cfg.demoTopic, streams.auth.isPrivate(cfg.demoTopic), cfg.stream.Interval)
	}
	served := make(chan error, 1)
	go func() { served <- app.Listener(ln) }()
	select {
	case err := <-served:
		return fmt.Errorf("serve on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}

	ready.Store(false)
	if cfg.shutdownDelay > 0 {
		logger.Info("draining", "streams_open", streams.StreamsOpen(), "for", cfg.shutdownDelay)
		time.Sleep(cfg.shutdownDelay)
	}
	start := time.Now()
	deadline := start.Add(cfg.shutdownTimeout)
	logger.Info("shutting down", "streams_open", streams.StreamsOpen())
	// A write that a stalled client blocks would wait out its own deadline: give it half
	// the shutdown time at most.
	streams.Shutdown(start.Add(min(cfg.stream.WriteTimeout, cfg.shutdownTimeout/2)))
	shutdownErr := app.ShutdownWithTimeout(cfg.shutdownTimeout)
	// A shutdown that comes before Serve has taken the listener leaves Serve running:
	// closing the listener ends it either way.
	ln.Close()
	waitCtx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	if err := streams.Wait(waitCtx); err != nil && shutdownErr == nil {
		shutdownErr = err
	}
	if shutdownErr != nil {
		return fmt.Errorf("shutdown after %s with %d streams open: %w", cfg.shutdownTimeout, streams.StreamsOpen(), shutdownErr)
	}
	if err := <-served; err != nil {
		return fmt.Errorf("serve on %s: %w", ln.Addr(), err)
	}
	logger.Info("stopped", "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// newLogger returns the logger that cfg asks for: text or JSON lines on w, at debug level
// with -v. Durations read the same in both, as Go duration strings ("4s", "1m30s"): the
// JSON handler would otherwise write them as integer nanoseconds.
func newLogger(w io.Writer, cfg config) *slog.Logger {
	opts := &slog.HandlerOptions{Level: slog.LevelInfo}
	if cfg.verbose {
		opts.Level = slog.LevelDebug
	}
	if cfg.logFormat == "json" {
		opts.ReplaceAttr = durationString
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// durationString writes a duration attribute as the text handler does, with
// time.Duration.String.
func durationString(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		a.Value = slog.StringValue(a.Value.Duration().String())
	}
	return a
}

// version describes the binary from its build information: module version, VCS revision
// and time, and the Go version.
func version() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "sse-dashboard (no build information)"
	}
	settings := make(map[string]string)
	for _, s := range info.Settings {
		settings[s.Key] = s.Value
	}
	revision := settings["vcs.revision"]
	if revision == "" {
		revision = "unknown"
	}
	if settings["vcs.modified"] == "true" {
		revision += "+modified"
	}
	return fmt.Sprintf("sse-dashboard %s revision %s %s %s", info.Main.Version, revision, settings["vcs.time"], info.GoVersion)
}

// newApp builds the Fiber app with every public route. It returns the SSE handler, so that
// callers can read how many streams are open, reach its metrics and shut the streams down.
// /readyz answers 200 while ready holds.
func newApp(cfg config, logger *slog.Logger, ready *atomic.Bool) (*fiber.App, *sseHandler) {
	app := fiber.New(fiber.Config{
		DisableStartupMessage: true,
		ReadTimeout:           cfg.readTimeout,
		IdleTimeout:           cfg.idleTimeout,
		ErrorHandler:          handleError(logger),
		// Only a Mercure publish takes a body: one announced over the limit gets 413
		// before a byte of it is read or allocated, and limitBodies holds every other
		// route to -body-limit.
		BodyLimit: max(cfg.bodyLimit, maxMercurePublish),
		// The read buffer bounds the request line and headers together.
		ReadBufferSize: cfg.maxHeaderBytes,
		// A stream only writes, and its events are small: let go of the read buffer once
		// the request is read, so a stream does not keep it, and keep a small write buffer.
		ReduceMemoryUsage: true,
		WriteBufferSize:   1024,
	})
	app.Use(fiberrecover.New(), rejectUnknownVersions, rejectAmbiguousPaths, limitBodies(cfg.bodyLimit))

	streams := handleSSE(cfg.stream, logger)
	mercure := newMercureHub(streams, cfg.stream.Mercure)
	page := handlePage(pageOrigins(cfg.pageSources), mercure.discoveryLink())

	app.Get("/", page)
	app.Get("/app.js", page)
	app.Get("/style.css", page)
	app.Get("/sse", offWorker(adaptor.HTTPHandler(recoverStream(streams, logger))))
	app.Options("/sse", handlePreflight(streams.cors, "GET, HEAD, OPTIONS"))
	hub := offWorker(adaptor.HTTPHandler(recoverStream(mercure, logger)))
	app.Get(mercurePath, hub)
	app.Post(mercurePath, hub)
	app.Options(mercurePath, handlePreflight(streams.cors, "GET, HEAD, POST, OPTIONS"))
	subscriptions := adaptor.HTTPHandlerFunc(mercure.serveSubscriptions)
	app.Get(mercurePath+"/subscriptions", subscriptions)
	app.Get(mercurePath+"/subscriptions/*", subscriptions)
	app.Get("/healthz", handleHealth(streams))
	app.Get("/readyz", handleReady(ready, streams))
	return app, streams
}

// handlePreflight answers a CORS preflight for a stream route from any origin, allowing
// methods, with the same origin and credentials answer as the route itself (cors).
// EventSource sends none, but fetch-based SSE clients that set Last-Event-ID or
// Authorization do, and so do pages that publish to the Mercure hub.
func handlePreflight(cors corsPolicy, methods string) fiber.Handler {
	return func(c *fiber.Ctx) error {
		cors.apply(c.Get(fiber.HeaderOrigin), func(key, value string) { c.Set(key, value) })
		c.Set("Access-Control-Allow-Methods", methods)
		c.Set("Access-Control-Allow-Headers", "Last-Event-ID, Cache-Control, Content-Type, Accept, Authorization")
		c.Set("Access-Control-Max-Age", "86400")
		return c.SendStatus(fiber.StatusNoContent)
	}
}

// health is the body of /healthz. StreamsOpen is the number sse_streams_open reports.
type health struct {
	Status      string `json:"status"`
	StreamsOpen int64  `json:"streams_open"`
}

// handleHealth reports that the server answers and how many streams it holds.
func handleHealth(streams *sseHandler) fiber.Handler {
	return func(c *fiber.Ctx) error {
		c.Set("Cache-Control", "no-store")
		return c.JSON(health{Status: "ok", StreamsOpen: streams.StreamsOpen()})
	}
}

// handleReady answers 200 while the server takes new streams and 503 once it is shutting
// down, so that a load balancer sends new clients elsewhere before the streams end. With
// -nats, a second line says whether NATS is reachable. A replica that lost NATS stays ready:
// every replica shares it, so taking them out would end every stream, where staying keeps
// the page, the random stream and live topic streams going, and a stream that must read
// history is told to come back later.
func handleReady(ready *atomic.Bool, streams *sseHandler) fiber.Handler {
	return func(c *fiber.Ctx) error {
		c.Set("Cache-Control", "no-store")
		c.Set(fiber.HeaderContentType, fiber.MIMETextPlainCharsetUTF8)
		if !ready.Load() {
			return c.Status(fiber.StatusServiceUnavailable).SendString("503 shutting down\n")
		}
		if _, why := streams.broker.Health(); why != "" {
			return c.SendString("ready\n" + why + "\n")
		}
		return c.SendString("ready\n")
	}
}
