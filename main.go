// Command sse-dashboard serves a live dashboard over Server-Sent Events: a Fiber app that
// mounts a plain net/http SSE handler through the adaptor, one long-lived stream per client.
package main

import (
	"bytes"
	"context"
	"embed"
	"errors"
	"expvar"
	"flag"
	"fmt"
	"html"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path"
	"strings"
	"syscall"
	"time"

	"github.com/gofiber/adaptor/v2"
	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/middleware/recover"
)

//go:embed web/index.html web/app.js web/style.css
var webFiles embed.FS

// main runs the server until SIGINT or SIGTERM, and exits non-zero if it could not.
func main() {
	ctx, cancel := context.WithCancel(context.Background())
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, os.Interrupt, syscall.SIGTERM)
	go func() {
		// The first signal starts a graceful shutdown; a second one exits at once. Exiting
		// here rather than restoring the default action also works when the shell
		// started the process with SIGINT ignored, as it does for background jobs.
		<-signals
		cancel()
		sig := <-signals
		fmt.Fprintf(os.Stderr, "sse-dashboard: second signal (%s): exiting without waiting for open streams\n", sig)
		os.Exit(1)
	}()
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "sse-dashboard:", err)
		os.Exit(1)
	}
}

// run parses the configuration, serves until ctx is cancelled, then shuts down within the
// shutdown timeout. Tests call it in-process; the "listening" log line tells them the address.
func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	cfg, err := parseConfig(args, getenv, stdout)
	if err != nil {
		return err
	}
	level := slog.LevelInfo
	if cfg.verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(stdout, &slog.HandlerOptions{Level: level}))

	app, streams := newApp(cfg, logger)
	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.addr, err)
	}
	if cfg.sendBuffer > 0 {
		ln = sendBufferListener{Listener: ln, size: cfg.sendBuffer}
	}
	logger.Info("listening", "addr", ln.Addr().String(), "interval", cfg.stream.Interval,
		"keepalive", cfg.stream.Keepalive, "buffer", cfg.stream.Buffer, "retry", cfg.stream.Retry,
		"max_lifetime", cfg.stream.MaxLifetime, "max_clients", cfg.stream.MaxClients,
		"write_timeout", cfg.stream.WriteTimeout, "send_buffer", cfg.sendBuffer, "read_timeout", cfg.readTimeout,
		"idle_timeout", cfg.idleTimeout, "shutdown_timeout", cfg.shutdownTimeout, "verbose", cfg.verbose)

	served := make(chan error, 1)
	go func() { served <- app.Listener(ln) }()
	select {
	case err := <-served:
		ln.Close()
		return fmt.Errorf("serve on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}

	start := time.Now()
	logger.Info("shutting down", "open_streams", streams.Clients())
	// Open streams end when the server's context does, but a write that a stalled client
	// blocks would wait out its own deadline: give it half the shutdown time at most.
	streams.Shutdown(start.Add(min(cfg.stream.WriteTimeout, cfg.shutdownTimeout/2)))
	if err := app.ShutdownWithTimeout(cfg.shutdownTimeout); err != nil {
		return fmt.Errorf("shutdown after %s with %d streams open: %w", cfg.shutdownTimeout, streams.Clients(), err)
	}
	if err := <-served; err != nil {
		return fmt.Errorf("serve on %s: %w", ln.Addr(), err)
	}
	logger.Info("stopped", "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// newApp builds the Fiber app with every route, and returns the SSE handler so that
// callers can read how many streams are open.
func newApp(cfg config, logger *slog.Logger) (*fiber.App, *sseHandler) {
	app := fiber.New(fiber.Config{
		DisableStartupMessage: true,
		ReadTimeout:           cfg.readTimeout,
		IdleTimeout:           cfg.idleTimeout,
		ErrorHandler:          handleError(logger),
		// A stream only writes, and its events are small: let go of the 4 KB read buffer
		// once the request is read, and keep a small write buffer (make bench: -7.7 KB RSS
		// per stream).
		ReduceMemoryUsage: true,
		WriteBufferSize:   1024,
	})
	app.Use(recover.New(), rejectAmbiguousPaths)

	streams := handleSSE(cfg.stream, logger, cfg.verbose)
	page := handlePage(pageOrigins(cfg.pageSources))

	app.Get("/", page)
	app.Get("/app.js", page)
	app.Get("/style.css", page)
	app.Get("/sse", adaptor.HTTPHandler(recoverStream(streams, logger)))
	app.Options("/sse", handlePreflight)
	app.Get("/healthz", handleHealth(streams))
	app.Get("/debug/vars", adaptor.HTTPHandler(expvar.Handler()))
	return app, streams
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

// sendBufferListener caps the kernel send buffer of every accepted connection. Linux grows
// it up to 4 MiB otherwise, so a client that stops reading would pin that much memory and,
// at one small event a second, take a day to fill it before the write deadline could bite.
type sendBufferListener struct {
	net.Listener
	size int
}

// Accept accepts the next connection and sets its send buffer size.
func (l sendBufferListener) Accept() (net.Conn, error) {
	conn, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if tcp, ok := conn.(*net.TCPConn); ok {
		// A failure leaves the kernel's default, which costs memory but breaks nothing.
		_ = tcp.SetWriteBuffer(l.size)
	}
	return conn, nil
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

// health is the body of /healthz.
type health struct {
	Status  string `json:"status"`
	Clients int64  `json:"clients"`
}

// handleHealth reports that the server answers and how many streams it holds.
func handleHealth(streams *sseHandler) fiber.Handler {
	return func(c *fiber.Ctx) error {
		c.Set("Cache-Control", "no-store")
		return c.JSON(health{Status: "ok", Clients: streams.Clients()})
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

// config is everything the command line and the environment can set.
type config struct {
	addr            string
	sendBuffer      int           // bytes of kernel send buffer per connection; 0 = kernel default
	readTimeout     time.Duration // longest time to read a request
	idleTimeout     time.Duration // longest wait for the next request on a keep-alive connection
	shutdownTimeout time.Duration
	verbose         bool
	pageSources     string // comma-separated origins besides its own whose streams the page may show
	stream          streamConfig
}

// parseConfig reads flags from args, each with an environment fallback (ADDR, INTERVAL,
// MAX_CLIENTS, ...; PORT=8080 means -addr :8080), and refuses values that cannot work.
// -h prints every flag to stdout and returns flag.ErrHelp.
func parseConfig(args []string, getenv func(string) string, stdout io.Writer) (config, error) {
	cfg := config{addr: ":3000"}
	if port := getenv("PORT"); port != "" {
		cfg.addr = ":" + port
	}
	fs := flag.NewFlagSet("sse-dashboard", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&cfg.addr, "addr", cfg.addr, "address to listen on")
	fs.DurationVar(&cfg.stream.Interval, "interval", time.Second, "how often each stream gets an event")
	fs.DurationVar(&cfg.stream.Keepalive, "keepalive", 15*time.Second, "longest silence before a keepalive comment; also how soon a vanished client is noticed")
	fs.DurationVar(&cfg.stream.Retry, "retry", 3*time.Second, "reconnect delay sent to clients")
	fs.DurationVar(&cfg.stream.MaxLifetime, "max-lifetime", 0, "end streams older than this, so clients reconnect with Last-Event-ID (0 = never)")
	fs.DurationVar(&cfg.stream.WriteTimeout, "write-timeout", 10*time.Second, "deadline for each write; a client that stops reading is dropped")
	fs.IntVar(&cfg.stream.Buffer, "buffer", 10, "events each client's channel holds")
	fs.IntVar(&cfg.stream.MaxClients, "max-clients", 10000, "open streams allowed at once; more get 503")
	fs.IntVar(&cfg.sendBuffer, "send-buffer", 64<<10, "kernel send buffer per connection in bytes, so a stalled reader holds bounded memory (0 = kernel default)")
	fs.DurationVar(&cfg.readTimeout, "read-timeout", 10*time.Second, "longest time to read a request; closes slow or stuck senders, never a stream")
	fs.DurationVar(&cfg.idleTimeout, "idle-timeout", 60*time.Second, "longest wait for the next request on a keep-alive connection")
	fs.DurationVar(&cfg.shutdownTimeout, "shutdown-timeout", 5*time.Second, "how long shutdown may take")
	fs.BoolVar(&cfg.verbose, "v", false, "log every event")
	fs.StringVar(&cfg.pageSources, "page-sources", "", "comma-separated origins (https://a.example,http://127.0.0.1:8081) whose streams the page's ?src= may show, besides its own")

	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage(fs, stdout)
			return cfg, err
		}
		return cfg, fmt.Errorf("%w (run with -h for every flag)", err)
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected argument %q (run with -h for every flag)", fs.Arg(0))
	}
	// The environment fills in the flags that the command line left out.
	onCommandLine := make(map[string]bool)
	fs.Visit(func(f *flag.Flag) { onCommandLine[f.Name] = true })
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		name := envName(f.Name)
		if value := getenv(name); value != "" && !onCommandLine[f.Name] && envErr == nil {
			if err := f.Value.Set(value); err != nil {
				envErr = fmt.Errorf("invalid %s=%q (for -%s): %w", name, value, f.Name, err)
			}
		}
	})
	if envErr != nil {
		return cfg, envErr
	}
	return cfg, cfg.validate()
}

// envName is the environment variable that sets a flag: -max-clients reads MAX_CLIENTS.
func envName(flagName string) string {
	if flagName == "v" {
		return "VERBOSE"
	}
	return strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// validate refuses settings the server cannot run with, naming the flag.
func (cfg config) validate() error {
	positive := []struct {
		flag  string
		value time.Duration
	}{
		{"interval", cfg.stream.Interval},
		{"keepalive", cfg.stream.Keepalive},
		{"write-timeout", cfg.stream.WriteTimeout},
		{"read-timeout", cfg.readTimeout},
		{"idle-timeout", cfg.idleTimeout},
		{"shutdown-timeout", cfg.shutdownTimeout},
	}
	for _, p := range positive {
		if p.value <= 0 {
			return fmt.Errorf("invalid -%s %s: must be more than 0", p.flag, p.value)
		}
	}
	switch {
	case cfg.stream.Retry < time.Millisecond:
		return fmt.Errorf("invalid -retry %s: must be at least 1ms", cfg.stream.Retry)
	case cfg.stream.MaxLifetime < 0:
		return fmt.Errorf("invalid -max-lifetime %s: must be 0 (never) or more", cfg.stream.MaxLifetime)
	case cfg.stream.Buffer < 1:
		return fmt.Errorf("invalid -buffer %d: must be at least 1", cfg.stream.Buffer)
	case cfg.sendBuffer < 0:
		return fmt.Errorf("invalid -send-buffer %d: must be 0 (kernel default) or more", cfg.sendBuffer)
	case cfg.stream.MaxClients < 1:
		return fmt.Errorf("invalid -max-clients %d: must be at least 1", cfg.stream.MaxClients)
	case cfg.addr == "":
		return errors.New("invalid -addr: must not be empty")
	}
	for _, origin := range pageOrigins(cfg.pageSources) {
		if err := checkOrigin(origin); err != nil {
			return fmt.Errorf("invalid -page-sources entry %q: %w", origin, err)
		}
	}
	return nil
}

// pageOrigins splits the -page-sources list at commas, dropping spaces and empty entries.
func pageOrigins(list string) []string {
	var origins []string
	for origin := range strings.SplitSeq(list, ",") {
		if origin = strings.TrimSpace(origin); origin != "" {
			origins = append(origins, origin)
		}
	}
	return origins
}

// checkOrigin accepts an origin only as a browser writes it (scheme://host[:port], lower
// case, no default port, no path), because the page compares it with URL.origin and the
// Content-Security-Policy quotes it as it is.
func checkOrigin(origin string) error {
	u, err := url.Parse(origin)
	if err != nil {
		return err
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return errors.New("want an http or https origin such as https://a.example")
	}
	host := u.Hostname()
	if host == "" || strings.ContainsFunc(host, func(r rune) bool {
		return (r < 'a' || r > 'z') && (r < '0' || r > '9') && r != '.' && r != '-' && r != ':'
	}) {
		return errors.New("want a host name or IP address, in lower case, without wildcards")
	}
	want := u.Scheme + "://" + u.Host
	if port := u.Port(); (u.Scheme == "http" && port == "80") || (u.Scheme == "https" && port == "443") {
		want = u.Scheme + "://" + strings.TrimSuffix(u.Host, ":"+port)
	}
	if origin != want {
		return fmt.Errorf("want the bare origin %q (no path, query, user or default port)", want)
	}
	return nil
}

// printUsage prints every flag with its environment variable and default.
func printUsage(fs *flag.FlagSet, w io.Writer) {
	fmt.Fprintln(w, "Usage: sse-dashboard [flags]\n\nServes a live dashboard at / and its event stream at /sse.\n\nFlags (each also read from the environment variable shown):")
	fs.VisitAll(func(f *flag.Flag) {
		fmt.Fprintf(w, "  -%s (%s, default %q)\n    \t%s\n", f.Name, envName(f.Name), f.DefValue, f.Usage)
	})
}
