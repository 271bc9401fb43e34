// Command sse-dashboard serves a live dashboard over Server-Sent Events: a Fiber app that
// mounts a plain net/http SSE handler through the adaptor, one long-lived stream per client.
package main

import (
	"bytes"
	"context"
	"embed"
	"errors"
	"flag"
	"fmt"
	"html"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gofiber/adaptor/v2"
	"github.com/gofiber/fiber/v2"
	fiberrecover "github.com/gofiber/fiber/v2/middleware/recover"
)

//go:embed web/index.html web/app.js web/style.css
var webFiles embed.FS

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
	tcp, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.addr, err)
	}
	ln := newConnListener(tcp, logger, streams.metrics.acceptErrors)
	ln.sendBuffer, ln.userTimeout = cfg.sendBuffer, cfg.deadClientAfter
	defer ln.Close()
	if cfg.deadClientAfter > 0 {
		if err := checkUserTimeout(); err != nil {
			logger.Warn("-dead-client-timeout does not work on this system: a client that vanishes without closing its connection stays counted until the kernel gives up (about 15 minutes)", "error", err)
		}
	}
	admin := &http.Server{Handler: adminHandler(streams.metrics), ReadHeaderTimeout: cfg.readTimeout}
	adminAddr := ""
	if cfg.adminAddr != "" {
		adminLn, err := net.Listen("tcp", cfg.adminAddr)
		if err != nil {
			return fmt.Errorf("listen on %s (-admin-addr): %w", cfg.adminAddr, err)
		}
		adminAddr = adminLn.Addr().String()
		go admin.Serve(adminLn)
		defer admin.Close()
	}
	// Ready once the listener is open: the kernel queues connections until Serve takes them.
	ready.Store(true)
	logger.Info("listening", "addr", ln.Addr().String(), "admin_addr", adminAddr, "interval", cfg.stream.Interval,
		"keepalive", cfg.stream.Keepalive, "buffer", cfg.stream.Buffer, "retry", cfg.stream.Retry,
		"retry_spread", cfg.stream.RetrySpread, "dead_client_timeout", cfg.deadClientAfter,
		"max_lifetime", cfg.stream.MaxLifetime, "max_clients", cfg.stream.MaxClients,
		"write_timeout", cfg.stream.WriteTimeout, "send_buffer", cfg.sendBuffer, "read_timeout", cfg.readTimeout,
		"idle_timeout", cfg.idleTimeout, "shutdown_delay", cfg.shutdownDelay, "shutdown_timeout", cfg.shutdownTimeout,
		"body_limit", cfg.bodyLimit, "max_header_bytes", cfg.maxHeaderBytes, "fd_margin", cfg.fdMargin,
		"log_rate", cfg.stream.LogRate, "verbose", cfg.verbose)

	served := make(chan error, 1)
	go func() { served <- app.Listener(ln) }()
	select {
	case err := <-served:
		return fmt.Errorf("serve on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}

	ready.Store(false)
	if cfg.shutdownDelay > 0 {
		logger.Info("draining", "open_streams", streams.StreamsOpen(), "for", cfg.shutdownDelay)
		time.Sleep(cfg.shutdownDelay)
	}
	start := time.Now()
	deadline := start.Add(cfg.shutdownTimeout)
	logger.Info("shutting down", "open_streams", streams.StreamsOpen())
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
// with -v.
func newLogger(w io.Writer, cfg config) *slog.Logger {
	opts := &slog.HandlerOptions{Level: slog.LevelInfo}
	if cfg.verbose {
		opts.Level = slog.LevelDebug
	}
	if cfg.logFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
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
		// No route takes a body: one announced over the limit gets 413 before a byte of
		// it is read or allocated.
		BodyLimit: cfg.bodyLimit,
		// The read buffer bounds the request line and headers together.
		ReadBufferSize: cfg.maxHeaderBytes,
		// A stream only writes, and its events are small: let go of the read buffer once
		// the request is read, so a stream does not keep it, and keep a small write buffer.
		ReduceMemoryUsage: true,
		WriteBufferSize:   1024,
	})
	app.Use(fiberrecover.New(), rejectUnknownVersions, rejectAmbiguousPaths)

	streams := handleSSE(cfg.stream, logger)
	page := handlePage(pageOrigins(cfg.pageSources))

	app.Get("/", page)
	app.Get("/app.js", page)
	app.Get("/style.css", page)
	app.Get("/sse", offWorker(adaptor.HTTPHandler(recoverStream(streams, logger))))
	app.Options("/sse", handlePreflight)
	app.Get("/healthz", handleHealth(streams))
	app.Get("/readyz", handleReady(ready))
	return app, streams
}

// offWorker runs h on a short-lived goroutine and waits for it, then panics again on the
// calling goroutine if h panicked, so that the recover middleware still answers 500.
// fasthttp's worker goroutine writes a stream's body for the stream's whole life, and a
// goroutine's stack, once grown, stays grown while that much of it is in use: converting
// the request for net/http on the worker would take its stack from 4 to 8 KB for every open
// stream, while the short-lived goroutine gives that depth back when the handler returns.
func offWorker(h fiber.Handler) fiber.Handler {
	return func(c *fiber.Ctx) error {
		var err error
		var panicked any
		done := make(chan struct{})
		go func() {
			defer func() {
				panicked = recover()
				close(done)
			}()
			err = h(c)
		}()
		<-done
		if panicked != nil {
			panic(panicked)
		}
		return err
	}
}

// rejectUnknownVersions answers 505 to a request in any HTTP version but 1.x. fasthttp
// would serve HTTP/0.9 or HTTP/9.9 as if it were HTTP/1.0; a later 1.x is served as 1.1.
func rejectUnknownVersions(c *fiber.Ctx) error {
	proto := c.Request().Header.Protocol()
	if len(proto) != len("HTTP/1.1") || !bytes.HasPrefix(proto, []byte("HTTP/1.")) || proto[7] < '0' || proto[7] > '9' {
		c.Set(fiber.HeaderContentType, fiber.MIMETextPlainCharsetUTF8)
		return c.Status(fiber.StatusHTTPVersionNotSupported).SendString("505 http version not supported: this server speaks HTTP/1.0 and HTTP/1.1\n")
	}
	return c.Next()
}

// rejectAmbiguousPaths answers 400 to a path with dot segments, encoded slashes, dots or
// backslashes. Only scanners send them, and serving what they normalise to would hide
// what was asked for.
func rejectAmbiguousPaths(c *fiber.Ctx) error {
	target, _, _ := strings.Cut(string(c.Request().Header.RequestURI()), "?")
	lower := strings.ToLower(target)
	if strings.Contains(target+"/", "/../") || strings.Contains(target+"/", "/./") || strings.ContainsRune(target, '\\') ||
		strings.Contains(lower, "%2f") || strings.Contains(lower, "%2e") || strings.Contains(lower, "%5c") {
		c.Set(fiber.HeaderContentType, fiber.MIMETextPlainCharsetUTF8)
		return c.Status(fiber.StatusBadRequest).SendString("400 bad request: path has dot segments or encoded separators\n")
	}
	return c.Next()
}

// handlePreflight answers a CORS preflight for /sse from any origin. EventSource sends none,
// but fetch-based SSE clients that set Last-Event-ID do.
func handlePreflight(c *fiber.Ctx) error {
	c.Set("Access-Control-Allow-Origin", "*")
	c.Set("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")
	c.Set("Access-Control-Allow-Headers", "Last-Event-ID, Cache-Control, Content-Type, Accept")
	c.Set("Access-Control-Max-Age", "86400")
	return c.SendStatus(fiber.StatusNoContent)
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
// down, so that a load balancer sends new clients elsewhere before the streams end.
func handleReady(ready *atomic.Bool) fiber.Handler {
	return func(c *fiber.Ctx) error {
		c.Set("Cache-Control", "no-store")
		if !ready.Load() {
			c.Set(fiber.HeaderContentType, fiber.MIMETextPlainCharsetUTF8)
			return c.Status(fiber.StatusServiceUnavailable).SendString("503 shutting down\n")
		}
		return c.SendString("ready\n")
	}
}

// handlePage serves the embedded page and its assets, so the binary runs from any directory.
// origins are the other origins whose streams the page may show (-page-sources): the
// Content-Security-Policy lets it connect to them alone, and the page reads them from its
// page-sources meta tag, filled in here once, so the page stays the same for the life of the process.
func handlePage(origins []string) fiber.Handler {
	type file struct {
		body        []byte
		contentType string
	}
	files := make(map[string]file)
	entries, err := webFiles.ReadDir("web")
	if err != nil {
		panic(err) // the files are compiled in: this cannot fail at run time
	}
	for _, entry := range entries {
		body, err := webFiles.ReadFile("web/" + entry.Name())
		if err != nil {
			panic(err)
		}
		files["/"+entry.Name()] = file{body, mime.TypeByExtension(path.Ext(entry.Name()))}
	}
	const emptySources = `<meta name="page-sources" content="">`
	index := files["/index.html"]
	if bytes.Count(index.body, []byte(emptySources)) != 1 {
		panic("web/index.html must hold " + emptySources + " once")
	}
	sources := `<meta name="page-sources" content="` + html.EscapeString(strings.Join(origins, " ")) + `">`
	index.body = bytes.Replace(index.body, []byte(emptySources), []byte(sources), 1)
	files["/index.html"] = index
	files["/"] = index
	// The page may run only its own script and style, and open streams only on its own
	// origin and those that -page-sources lists.
	headers := map[string]string{
		"Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
			"connect-src " + strings.Join(append([]string{"'self'"}, origins...), " ") +
			"; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
		"X-Content-Type-Options": "nosniff",
		"Referrer-Policy":        "no-referrer",
		"Cache-Control":          "no-cache",
	}
	return func(c *fiber.Ctx) error {
		f, ok := files[c.Path()]
		if !ok {
			return fiber.ErrNotFound
		}
		for key, value := range headers {
			c.Set(key, value)
		}
		c.Set(fiber.HeaderContentType, f.contentType)
		return c.Send(f.body)
	}
}

// handleError answers every failed request with its status and a one-line plain-text
// reason, and logs server errors.
func handleError(logger *slog.Logger) fiber.ErrorHandler {
	return func(c *fiber.Ctx, err error) error {
		code := fiber.StatusInternalServerError
		var fe *fiber.Error
		if errors.As(err, &fe) {
			code = fe.Code
		}
		if code >= fiber.StatusInternalServerError {
			logger.Error("request failed", "method", c.Method(), "path", c.Path(), "status", code, "error", err)
		}
		c.Set(fiber.HeaderContentType, fiber.MIMETextPlainCharsetUTF8)
		return c.Status(code).SendString(fmt.Sprintf("%d %s\n", code, strings.ToLower(http.StatusText(code))))
	}
}
