package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strings"
	"time"
)

// config is everything the command line and the environment can set.
type config struct {
	addr            string
	adminAddr       string        // the operators' listener; empty turns it off
	sendBuffer      int           // bytes of kernel send buffer per connection; 0 = kernel default
	deadClientAfter time.Duration // TCP_USER_TIMEOUT of every connection; 0 = kernel default
	readTimeout     time.Duration // longest time to read a request
	idleTimeout     time.Duration // longest wait for the next request on a keep-alive connection
	shutdownDelay   time.Duration // how long /readyz answers 503 before streams end
	shutdownTimeout time.Duration
	bodyLimit       int // largest request body read; a larger one announced gets 413 unread
	maxHeaderBytes  int // largest request line and headers together; more gets 431
	fdMargin        int // open files kept for other than streams when -max-clients meets the limit
	verbose         bool
	logFormat       string // text or json
	version         bool   // print the version and exit
	pageSources     string // comma-separated origins besides its own whose streams the page may show
	publishToken    string // bearer token POST /publish needs; required when the admin listener is not loopback
	demoTopic       string // topic a producer publishes random DashBoards to every interval; empty = none
	trustedProxies  string // comma-separated addresses and prefixes whose forwarding headers name the client
	jwtSecret       string // JWT_SECRET, the HS256 key: from the environment alone, so that ps never shows it
	jwtKeyFile      string // PEM or JWK set of the public keys that verify RS256, ES256 and EdDSA tokens
	publicTopics    string // comma-separated topic patterns that need no token
	allowedOrigins  string // comma-separated origins whose pages may send credentials to /sse
	stream          streamConfig
	nats            natsConfig // the JetStream stream that keeps topics and history, if nats.urls is set
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
	fs.StringVar(&cfg.adminAddr, "admin-addr", "127.0.0.1:3001", "address of the operators' listener: POST /publish, /metrics, /debug/pprof/, /debug/vars (empty = off); keep it private")
	fs.DurationVar(&cfg.stream.Interval, "interval", time.Second, "how often each stream gets an event")
	fs.DurationVar(&cfg.stream.Keepalive, "keepalive", 15*time.Second, "longest silence before a keepalive comment; also how soon a vanished client is noticed")
	fs.DurationVar(&cfg.stream.Retry, "retry", 3*time.Second, "reconnect delay sent to clients")
	fs.DurationVar(&cfg.stream.RetrySpread, "retry-spread", 3*time.Second, "at shutdown and over -max-clients, clients are told to reconnect after -retry plus a random delay up to this, so they come back spread out")
	fs.DurationVar(&cfg.stream.MaxLifetime, "max-lifetime", 0, "end streams older than this, so clients reconnect with Last-Event-ID (0 = never)")
	fs.DurationVar(&cfg.stream.WriteTimeout, "write-timeout", 10*time.Second, "deadline for each write; a client that stops reading is dropped")
	fs.IntVar(&cfg.stream.Buffer, "buffer", 10, "events each client's channel holds")
	fs.IntVar(&cfg.stream.MaxClients, "max-clients", 10000, "open streams allowed at once; more are told to come back later (EventSource by a retry:, others by 503)")
	fs.IntVar(&cfg.stream.MaxClientsPerIP, "max-clients-per-ip", 0, "open streams one client address may hold at once, an IPv6 address counted by its /64; more are answered as over -max-clients (0 = no limit, because a whole office or mobile network may share one address: set it to what one such address needs)")
	fs.StringVar(&cfg.trustedProxies, "trusted-proxies", "", "comma-separated addresses and prefixes (127.0.0.1,10.0.0.0/8) of proxies whose Forwarded or X-Forwarded-For header names the client for -max-clients-per-ip; any other peer is the client itself")
	fs.DurationVar(&cfg.deadClientAfter, "dead-client-timeout", 30*time.Second, "drop a client that stops acknowledging data, or leaves its receive window shut, for this long (TCP_USER_TIMEOUT: 1ms or more; 0 = kernel default, about 15 minutes)")
	fs.IntVar(&cfg.sendBuffer, "send-buffer", 64<<10, "kernel send buffer per connection in bytes, so a stalled reader holds bounded memory (0 = kernel default)")
	fs.DurationVar(&cfg.readTimeout, "read-timeout", 10*time.Second, "longest time to read a request; closes slow or stuck senders, never a stream")
	fs.DurationVar(&cfg.idleTimeout, "idle-timeout", 60*time.Second, "longest wait for the next request on a keep-alive connection")
	fs.DurationVar(&cfg.shutdownDelay, "shutdown-delay", 0, "on SIGTERM, keep serving this long with /readyz answering 503, so load balancers stop sending clients first")
	fs.DurationVar(&cfg.shutdownTimeout, "shutdown-timeout", 5*time.Second, "how long shutdown may take, after -shutdown-delay")
	fs.IntVar(&cfg.bodyLimit, "body-limit", 4<<10, "largest request body in bytes on the public port, except a Mercure publish (up to 64 KiB); a larger one announced gets 413 without being read")
	fs.IntVar(&cfg.maxHeaderBytes, "max-header-bytes", 16<<10, "largest request line and headers in bytes, as browsers and nginx allow; more gets 431")
	fs.IntVar(&cfg.fdMargin, "fd-margin", 64, "open files kept for the listener, the page and health checks: -max-clients is lowered to the open-file limit minus this")
	fs.IntVar(&cfg.stream.LogRate, "log-rate", 50, "stream-end lines logged per second at most, then one summary line a second of those not logged (0 = no limit)")
	fs.BoolVar(&cfg.verbose, "v", false, "log every connect and every event (debug level)")
	fs.StringVar(&cfg.logFormat, "log-format", "text", "log format: text or json")
	fs.BoolVar(&cfg.version, "version", false, "print the version and exit")
	fs.StringVar(&cfg.pageSources, "page-sources", "", "comma-separated origins (https://a.example,http://127.0.0.1:8081) whose streams the page's ?src= may show, besides its own")
	fs.IntVar(&cfg.stream.History.count, "history", 10000, "topic events kept for clients that resume with Last-Event-ID (0 = none)")
	fs.DurationVar(&cfg.stream.History.age, "history-age", 5*time.Minute, "longest a topic event is kept for clients that resume")
	fs.IntVar(&cfg.stream.History.bytes, "history-bytes", 64<<20, "most bytes of framed topic events kept for clients that resume")
	fs.IntVar(&cfg.stream.SubscriberQueue, "subscriber-queue", 128, "topic events queued for one stream; a stream that falls this far behind is ended and resumes from history")
	fs.StringVar(&cfg.publishToken, "publish-token", "", "bearer token that POST /publish needs (required when -admin-addr is not a loopback address)")
	fs.StringVar(&cfg.jwtKeyFile, "jwt-key-file", "", "PEM public keys or a JWK set file that verify RS256, ES256 and EdDSA tokens for private topics (HS256 takes its secret from JWT_SECRET alone; with neither, every topic is public)")
	fs.StringVar(&cfg.stream.Auth.audience, "jwt-audience", "", "a token for a private topic must name this in its aud claim (empty = not checked)")
	fs.StringVar(&cfg.stream.Auth.issuer, "jwt-issuer", "", "a token for a private topic must have this iss claim (empty = not checked)")
	fs.StringVar(&cfg.stream.Auth.cookie, "jwt-cookie", "sse_token", "cookie that carries a token, after Authorization: Bearer and before ?access_token=")
	fs.StringVar(&cfg.publicTopics, "public-topics", "", "comma-separated topic patterns (news,prices/*,public/**) that need no token when a JWT key is set")
	fs.StringVar(&cfg.stream.Mercure.hubURL, "mercure-url", "http://localhost:3000"+mercurePath, "the hub's URL as publishers and subscribers reach it: what the page advertises, what relative Mercure topics resolve against, and the audience of Mercure 1.0 tokens")
	fs.BoolVar(&cfg.stream.Mercure.subscriptions, "mercure-subscriptions", false, "publish a Mercure update of type mercure when a Mercure subscription starts or ends, and serve the subscription API under "+mercurePath+"/subscriptions")
	fs.BoolVar(&cfg.stream.Mercure.anonymous, "mercure-anonymous", true, "Mercure subscribers without a token get public updates (false: every Mercure subscriber needs a token)")
	fs.StringVar(&cfg.allowedOrigins, "allowed-origins", "", "comma-separated origins (https://app.example) whose pages may read /sse with credentials (EventSource withCredentials: a cookie); others get Access-Control-Allow-Origin: *")
	fs.StringVar(&cfg.nats.urls, "nats", "", "comma-separated NATS server URLs (nats://127.0.0.1:4222): topics and their history live in one JetStream stream shared by every replica (empty = the in-process hub)")
	fs.StringVar(&cfg.nats.prefix, "nats-prefix", "sse", "subject prefix of the stream: topic orders/42 is subject <prefix>.orders/42; the stream is named after it")
	fs.IntVar(&cfg.nats.replicas, "nats-replicas", 1, "copies of the stream a NATS cluster keeps (1 to 5; 3 for a three-node cluster)")
	fs.IntVar(&cfg.nats.replays, "nats-replays", 32, "resuming streams that read history from NATS at once; more wait their turn")
	fs.StringVar(&cfg.nats.user, "nats-user", "", "NATS user name (with -nats-password)")
	fs.StringVar(&cfg.nats.password, "nats-password", "", "NATS password; prefer the environment variable to the command line")
	fs.StringVar(&cfg.nats.token, "nats-token", "", "NATS authentication token; prefer the environment variable to the command line")
	fs.StringVar(&cfg.nats.nkeyFile, "nats-nkey", "", "file holding the NKey seed to authenticate to NATS with")
	fs.StringVar(&cfg.nats.credsFile, "nats-creds", "", "NATS credentials file (a user JWT and its NKey seed)")
	fs.StringVar(&cfg.nats.caFile, "nats-ca", "", "PEM file of the certificate authorities that sign the NATS servers' certificates (turns on TLS)")
	fs.StringVar(&cfg.nats.certFile, "nats-cert", "", "PEM client certificate for NATS servers that ask for one (with -nats-key)")
	fs.StringVar(&cfg.nats.keyFile, "nats-key", "", "PEM private key of -nats-cert")
	fs.StringVar(&cfg.demoTopic, "demo-topic", "", "publish a random DashBoard to this topic every -interval, so every page on ?topic= shows the same numbers (empty = off)")

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
		if name == "" {
			return
		}
		if value := getenv(name); value != "" && !onCommandLine[f.Name] && envErr == nil {
			if err := f.Value.Set(value); err != nil {
				envErr = fmt.Errorf("invalid %s=%q (for -%s): %w", name, value, f.Name, err)
			}
		}
	})
	if envErr != nil {
		return cfg, envErr
	}
	cfg.jwtSecret = getenv("JWT_SECRET")
	if err := cfg.validate(); err != nil {
		return cfg, err
	}
	cfg.stream.TrustedProxies, _ = parseTrustedProxies(cfg.trustedProxies) // validate parsed it
	if err := cfg.loadAuth(); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// logListening logs the line that says the server listens, on addr and adminAddr, with
// every setting it runs with.
func (cfg config) logListening(logger *slog.Logger, addr, adminAddr string) {
	logger.Info("listening", "addr", addr, "admin_addr", adminAddr, "interval", cfg.stream.Interval,
		"keepalive", cfg.stream.Keepalive, "buffer", cfg.stream.Buffer, "retry", cfg.stream.Retry,
		"retry_spread", cfg.stream.RetrySpread, "dead_client_timeout", cfg.deadClientAfter,
		"max_lifetime", cfg.stream.MaxLifetime, "max_clients", cfg.stream.MaxClients,
		"max_clients_per_ip", cfg.stream.MaxClientsPerIP, "trusted_proxies", cfg.trustedProxies,
		"write_timeout", cfg.stream.WriteTimeout, "send_buffer", cfg.sendBuffer, "read_timeout", cfg.readTimeout,
		"idle_timeout", cfg.idleTimeout, "shutdown_delay", cfg.shutdownDelay, "shutdown_timeout", cfg.shutdownTimeout,
		"body_limit", cfg.bodyLimit, "max_header_bytes", cfg.maxHeaderBytes, "fd_margin", cfg.fdMargin,
		"log_rate", cfg.stream.LogRate, "history", cfg.stream.History.count, "history_age", cfg.stream.History.age,
		"history_bytes", cfg.stream.History.bytes, "subscriber_queue", cfg.stream.SubscriberQueue,
		"demo_topic", cfg.demoTopic, "publish_token_set", cfg.publishToken != "", "verbose", cfg.verbose,
		// Whether JWT_SECRET is set, never its value.
		"jwt_secret", cfg.jwtSecret != "", "jwt_key_file", cfg.jwtKeyFile, "jwt_audience", cfg.stream.Auth.audience,
		"jwt_issuer", cfg.stream.Auth.issuer, "jwt_cookie", cfg.stream.Auth.cookie, "public_topics", cfg.publicTopics,
		"allowed_origins", cfg.allowedOrigins)
}

// envName is the environment variable that sets a flag: -max-clients reads MAX_CLIENTS.
// -version has none: VERSION is too common a variable to be read as a request to print it.
func envName(flagName string) string {
	switch flagName {
	case "v":
		return "VERBOSE"
	case "version":
		return ""
	case "nats":
		return "NATS_URL"
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
	case cfg.stream.RetrySpread < 0:
		return fmt.Errorf("invalid -retry-spread %s: must be 0 (no spread) or more", cfg.stream.RetrySpread)
	case cfg.deadClientAfter < 0 || cfg.deadClientAfter > maxDeadClientTimeout ||
		cfg.deadClientAfter > 0 && cfg.deadClientAfter < time.Millisecond:
		// The kernel counts in milliseconds: less than one would be 0, its default.
		return fmt.Errorf("invalid -dead-client-timeout %s: must be 0 (kernel default) or 1ms up to %s", cfg.deadClientAfter, maxDeadClientTimeout)
	case cfg.stream.MaxLifetime < 0:
		return fmt.Errorf("invalid -max-lifetime %s: must be 0 (never) or more", cfg.stream.MaxLifetime)
	case cfg.stream.Buffer < 1:
		return fmt.Errorf("invalid -buffer %d: must be at least 1", cfg.stream.Buffer)
	case cfg.sendBuffer < 0:
		return fmt.Errorf("invalid -send-buffer %d: must be 0 (kernel default) or more", cfg.sendBuffer)
	case cfg.stream.MaxClients < 1:
		return fmt.Errorf("invalid -max-clients %d: must be at least 1", cfg.stream.MaxClients)
	case cfg.stream.MaxClientsPerIP < 0:
		return fmt.Errorf("invalid -max-clients-per-ip %d: must be 0 (no limit) or more", cfg.stream.MaxClientsPerIP)
	case cfg.bodyLimit < 1:
		return fmt.Errorf("invalid -body-limit %d: must be at least 1", cfg.bodyLimit)
	case cfg.maxHeaderBytes < 1<<10:
		return fmt.Errorf("invalid -max-header-bytes %d: must be at least 1024", cfg.maxHeaderBytes)
	case cfg.fdMargin < 0:
		return fmt.Errorf("invalid -fd-margin %d: must be 0 or more", cfg.fdMargin)
	case cfg.stream.LogRate < 0:
		return fmt.Errorf("invalid -log-rate %d: must be 0 (no limit) or more", cfg.stream.LogRate)
	case cfg.addr == "":
		return errors.New("invalid -addr: must not be empty")
	case cfg.shutdownDelay < 0:
		return fmt.Errorf("invalid -shutdown-delay %s: must be 0 or more", cfg.shutdownDelay)
	case cfg.logFormat != "text" && cfg.logFormat != "json":
		return fmt.Errorf("invalid -log-format %q: must be text or json", cfg.logFormat)
	case cfg.stream.History.count < 0:
		return fmt.Errorf("invalid -history %d: must be 0 (keep none) or more", cfg.stream.History.count)
	case cfg.stream.History.bytes < 0:
		return fmt.Errorf("invalid -history-bytes %d: must be 0 (keep none) or more", cfg.stream.History.bytes)
	case cfg.stream.History.age <= 0:
		return fmt.Errorf("invalid -history-age %s: must be more than 0", cfg.stream.History.age)
	case cfg.stream.SubscriberQueue < 1:
		return fmt.Errorf("invalid -subscriber-queue %d: must be at least 1", cfg.stream.SubscriberQueue)
	case cfg.adminAddr != "" && !isLoopback(cfg.adminAddr) && cfg.publishToken == "" && !cfg.hasJWTKey():
		return fmt.Errorf("-admin-addr %s is not a loopback address: set -publish-token (PUBLISH_TOKEN), or a JWT key (JWT_SECRET or -jwt-key-file) for publishers' tokens, so that only your application can publish", cfg.adminAddr)
	case cfg.jwtSecret != "" && len(cfg.jwtSecret) < minSecretLength:
		return fmt.Errorf("invalid JWT_SECRET: %d bytes, want at least %d (HS256 needs a key as long as its hash)", len(cfg.jwtSecret), minSecretLength)
	case !isToken(cfg.stream.Auth.cookie):
		return fmt.Errorf("invalid -jwt-cookie %q: want a cookie name (letters, digits and !#$%%&'*+-.^_`|~)", cfg.stream.Auth.cookie)
	}
	for _, pattern := range pageOrigins(cfg.publicTopics) {
		if err := checkPattern(pattern); err != nil {
			return fmt.Errorf("invalid -public-topics entry %q: %w", pattern, err)
		}
	}
	for _, origin := range pageOrigins(cfg.allowedOrigins) {
		if err := checkOrigin(origin); err != nil {
			return fmt.Errorf("invalid -allowed-origins entry %q: %w", origin, err)
		}
	}
	if err := cfg.nats.validate(cfg.stream.History); err != nil {
		return err
	}
	if err := checkHubURL(cfg.stream.Mercure.hubURL); err != nil {
		return fmt.Errorf("invalid -mercure-url %q: %w", cfg.stream.Mercure.hubURL, err)
	}
	if cfg.demoTopic != "" {
		if err := checkTopic(cfg.demoTopic); err != nil {
			return fmt.Errorf("invalid -demo-topic %q: %w", cfg.demoTopic, err)
		}
	}
	if _, err := parseTrustedProxies(cfg.trustedProxies); err != nil {
		return fmt.Errorf("invalid -trusted-proxies: %w", err)
	}
	for _, origin := range pageOrigins(cfg.pageSources) {
		if err := checkOrigin(origin); err != nil {
			return fmt.Errorf("invalid -page-sources entry %q: %w", origin, err)
		}
	}
	return nil
}

// maxDeadClientTimeout is the longest TCP_USER_TIMEOUT the kernel takes: a millisecond count
// that fits an int.
const maxDeadClientTimeout = math.MaxInt32 * time.Millisecond

// printUsage prints every flag with its environment variable and default.
func printUsage(fs *flag.FlagSet, w io.Writer) {
	fmt.Fprintln(w, "Usage: sse-dashboard [flags]\n\nServes a live dashboard at / and its event stream at /sse.\n\nFlags (each also read from the environment variable shown):")
	fs.VisitAll(func(f *flag.Flag) {
		if name := envName(f.Name); name != "" {
			fmt.Fprintf(w, "  -%s (%s, default %q)\n    \t%s\n", f.Name, name, f.DefValue, f.Usage)
		} else {
			fmt.Fprintf(w, "  -%s\n    \t%s\n", f.Name, f.Usage)
		}
	})
}

// hasJWTKey reports whether tokens can be verified: JWT_SECRET or -jwt-key-file is set.
func (cfg config) hasJWTKey() bool {
	return cfg.jwtSecret != "" || cfg.jwtKeyFile != ""
}

// loadAuth fills in cfg.stream.Auth from the settings validate checked: the HS256 secret,
// the keys of -jwt-key-file, the public topic patterns and the allowed origins.
func (cfg *config) loadAuth() error {
	auth := &cfg.stream.Auth
	if cfg.jwtSecret != "" {
		auth.keys = append(auth.keys, verifyKey{key: []byte(cfg.jwtSecret), algs: []string{"HS256"}})
	}
	if cfg.jwtKeyFile != "" {
		keys, err := loadKeyFile(cfg.jwtKeyFile)
		if err != nil {
			return fmt.Errorf("invalid -jwt-key-file %q: %w", cfg.jwtKeyFile, err)
		}
		auth.keys = append(auth.keys, keys...)
	}
	auth.public = pageOrigins(cfg.publicTopics)
	auth.origins = pageOrigins(cfg.allowedOrigins)
	return nil
}
