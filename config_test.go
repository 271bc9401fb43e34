package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestConfig_READMEFlagTableMatchesHelp(t *testing.T) {
	t.Parallel()
	var help bytes.Buffer
	if err := run(context.Background(), []string{"-h"}, func(string) string { return "" }, &help); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("run -h = %v, want flag.ErrHelp", err)
	}
	// -h: "  -name (ENV, default "value")" or, for a flag without one, "  -name".
	helpLine := regexp.MustCompile(`(?m)^  -(\S+)(?: \((\w+), default "(.*)"\))?$`)
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	// README: "| `-name` | `ENV` ... | `value` ... | what |"; an empty cell for none.
	row := regexp.MustCompile("(?m)^\\| `-([a-z-]+)` \\| (?:`(\\w+)`[^|]*)?\\| (?:`([^`]*)`[^|]*)?\\|")
	documented := make(map[string][2]string)
	for _, m := range row.FindAllStringSubmatch(string(readme), -1) {
		documented[m[1]] = [2]string{m[2], m[3]}
	}
	flags := helpLine.FindAllStringSubmatch(help.String(), -1)
	if len(flags) < 10 {
		t.Fatalf("found %d flags in -h output, want them all:\n%s", len(flags), help.String())
	}
	for _, f := range flags {
		name, env, def := f[1], f[2], f[3]
		doc, ok := documented[name]
		if !ok {
			t.Errorf("-%s is in -h but not in the README's flag table", name)
			continue
		}
		if env == "" && def == "" {
			def = doc[1] // a flag without an environment variable shows no default in -h
		}
		if doc != [2]string{env, def} {
			t.Errorf("-%s: README says env %q, default %q; -h says %q, %q", name, doc[0], doc[1], env, def)
		}
		delete(documented, name)
	}
	for name := range documented {
		t.Errorf("the README's flag table lists -%s, which -h does not know", name)
	}
}

func TestConfig_RefusesBadValues(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"zero interval", []string{"-interval", "0"}, nil, "-interval"},
		{"negative keepalive", []string{"-keepalive", "-1s"}, nil, "-keepalive"},
		{"zero buffer", []string{"-buffer", "0"}, nil, "-buffer"},
		{"zero retry", []string{"-retry", "0s"}, nil, "-retry"},
		{"negative max lifetime", []string{"-max-lifetime", "-1s"}, nil, "-max-lifetime"},
		{"zero max clients", []string{"-max-clients", "0"}, nil, "-max-clients"},
		{"zero write timeout", []string{"-write-timeout", "0s"}, nil, "-write-timeout"},
		{"zero shutdown timeout", []string{"-shutdown-timeout", "0s"}, nil, "-shutdown-timeout"},
		{"negative retry spread", []string{"-retry-spread", "-1s"}, nil, "-retry-spread"},
		{"negative dead client timeout", []string{"-dead-client-timeout", "-1s"}, nil, "-dead-client-timeout"},
		{"dead client timeout over the kernel's limit", []string{"-dead-client-timeout", "1000h"}, nil, "-dead-client-timeout"},
		{"dead client timeout under a millisecond", []string{"-dead-client-timeout", "999us"}, nil, "-dead-client-timeout 999µs: must be 0 (kernel default) or 1ms"},
		{"dead client timeout of a nanosecond in env", nil, map[string]string{"DEAD_CLIENT_TIMEOUT": "1ns"}, "-dead-client-timeout 1ns"},
		{"not a duration", []string{"-interval", "fast"}, nil, "-interval"},
		{"unknown flag", []string{"-nope"}, nil, "-nope"},
		{"stray argument", []string{"extra"}, nil, `"extra"`},
		{"bad env", nil, map[string]string{"INTERVAL": "0"}, "-interval"},
		{"unparsable env", nil, map[string]string{"MAX_CLIENTS": "many"}, "MAX_CLIENTS"},
		{"page source with a path", []string{"-page-sources", "https://a.example/sse"}, nil, "-page-sources"},
		{"page source without a scheme", []string{"-page-sources", "a.example"}, nil, "-page-sources"},
		{"page source not http", []string{"-page-sources", "ftp://a.example"}, nil, "-page-sources"},
		{"page source with a wildcard", []string{"-page-sources", "https://*.example"}, nil, "-page-sources"},
		{"page source with the default port", []string{"-page-sources", "https://a.example:443"}, nil, "-page-sources"},
		{"page source in upper case", []string{"-page-sources", "https://A.example"}, nil, "-page-sources"},
		{"page source that ends the CSP", []string{"-page-sources", "https://a.example;script-src"}, nil, "-page-sources"},
		{"bad page source in env", nil, map[string]string{"PAGE_SOURCES": "https://a.example,https://b.example/"}, "-page-sources"},
		{"zero body limit", []string{"-body-limit", "0"}, nil, "-body-limit"},
		{"tiny header limit", []string{"-max-header-bytes", "512"}, nil, "-max-header-bytes"},
		{"negative fd margin", []string{"-fd-margin", "-1"}, nil, "-fd-margin"},
		{"negative log rate", nil, map[string]string{"LOG_RATE": "-5"}, "-log-rate"},
		{"negative history", []string{"-history", "-1"}, nil, "-history"},
		{"zero history age", []string{"-history-age", "0s"}, nil, "-history-age"},
		{"negative history bytes", []string{"-history-bytes", "-1"}, nil, "-history-bytes"},
		{"zero subscriber queue", []string{"-subscriber-queue", "0"}, nil, "-subscriber-queue"},
		{"bad demo topic", []string{"-demo-topic", "a b"}, nil, "-demo-topic"},
		{"admin on every interface without a publish token", []string{"-admin-addr", ":3001"}, nil, "-publish-token"},
		{"admin on a public address without a publish token", []string{"-admin-addr", "192.0.2.1:3001"}, nil, "-publish-token"},
		{"admin on a host name without a publish token", nil, map[string]string{"ADMIN_ADDR": "admin.example:3001"}, "PUBLISH_TOKEN"},
		{"negative per-address limit", []string{"-max-clients-per-ip", "-1"}, nil, "-max-clients-per-ip"},
		{"trusted proxy that is a name", []string{"-trusted-proxies", "proxy.example"}, nil, "-trusted-proxies"},
		{"trusted proxy prefix too long", nil, map[string]string{"TRUSTED_PROXIES": "10.0.0.0/33"}, "-trusted-proxies"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			getenv := func(k string) string { return tt.env[k] }
			_, err := parseConfig(tt.args, getenv, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("parseConfig(%q, %v) = %v, want an error naming %s", tt.args, tt.env, err, tt.want)
			}
			// run refuses it too, before it listens.
			if err := run(context.Background(), tt.args, getenv, io.Discard); err == nil {
				t.Fatalf("run(%q) = nil, want an error", tt.args)
			}
		})
	}
}

func TestConfig_EnvironmentFallbacks(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want func(config) bool
	}{
		{"defaults", nil, nil, func(c config) bool {
			return reflect.DeepEqual(c, config{
				addr: ":3000", adminAddr: "127.0.0.1:3001", logFormat: "text", sendBuffer: 64 << 10, readTimeout: 10 * time.Second,
				idleTimeout: time.Minute, shutdownTimeout: 5 * time.Second, deadClientAfter: 30 * time.Second,
				bodyLimit: 4 << 10, maxHeaderBytes: 16 << 10, fdMargin: 64,
				stream: streamConfig{Interval: time.Second, Keepalive: 15 * time.Second, Retry: 3 * time.Second,
					RetrySpread: 3 * time.Second, WriteTimeout: 10 * time.Second, Buffer: 10, MaxClients: 10000, LogRate: 50,
					History: historyLimits{count: 10000, age: 5 * time.Minute, bytes: 64 << 20}, SubscriberQueue: 128,
					Auth:    authConfig{cookie: "sse_token"},
					Mercure: mercureConfig{hubURL: "http://localhost:3000" + mercurePath, anonymous: true}},
				nats: natsConfig{prefix: "sse", replicas: 1, replays: 32},
			})
		}},
		{"per-address limit behind proxies", nil, map[string]string{"MAX_CLIENTS_PER_IP": "20", "TRUSTED_PROXIES": "127.0.0.1, 10.0.0.0/8,::1"}, func(c config) bool {
			return c.stream.MaxClientsPerIP == 20 && slices.Equal(c.stream.TrustedProxies, []netip.Prefix{
				netip.MustParsePrefix("127.0.0.1/32"), netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("::1/128")})
		}},
		{"bad env under a flag is not read", []string{"-interval", "2s"}, map[string]string{"INTERVAL": "soon"}, func(c config) bool {
			return c.stream.Interval == 2*time.Second
		}},
		{"PORT", nil, map[string]string{"PORT": "8080"}, func(c config) bool { return c.addr == ":8080" }},
		{"ADDR wins over PORT", nil, map[string]string{"PORT": "8080", "ADDR": "127.0.0.1:9"}, func(c config) bool { return c.addr == "127.0.0.1:9" }},
		{"flag wins over env", []string{"-interval", "2s"}, map[string]string{"INTERVAL": "5s"}, func(c config) bool { return c.stream.Interval == 2*time.Second }},
		{"env with dashes", nil, map[string]string{"MAX_CLIENTS": "7", "MAX_LIFETIME": "1m"}, func(c config) bool {
			return c.stream.MaxClients == 7 && c.stream.MaxLifetime == time.Minute
		}},
		{"VERBOSE", nil, map[string]string{"VERBOSE": "true"}, func(c config) bool { return c.verbose }},
		{"PAGE_SOURCES", nil, map[string]string{"PAGE_SOURCES": "https://a.example, http://127.0.0.1:8081,http://[::1]:8082"}, func(c config) bool {
			return slices.Equal(pageOrigins(c.pageSources), []string{"https://a.example", "http://127.0.0.1:8081", "http://[::1]:8082"})
		}},
		{"publish token on a public admin address", []string{"-admin-addr", ":3001"}, map[string]string{"PUBLISH_TOKEN": "s3cret"}, func(c config) bool {
			return c.publishToken == "s3cret"
		}},
		{"admin on loopback needs no token", []string{"-admin-addr", "[::1]:3001"}, nil, func(c config) bool { return c.publishToken == "" }},
		{"limits", nil, map[string]string{"BODY_LIMIT": "1", "MAX_HEADER_BYTES": "8192", "FD_MARGIN": "0", "LOG_RATE": "0"}, func(c config) bool {
			return c.bodyLimit == 1 && c.maxHeaderBytes == 8192 && c.fdMargin == 0 && c.stream.LogRate == 0
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := parseConfig(tt.args, func(k string) string { return tt.env[k] }, io.Discard)
			if err != nil || !tt.want(cfg) {
				t.Fatalf("parseConfig(%q, %v) = %+v, %v", tt.args, tt.env, cfg, err)
			}
		})
	}
}

func TestConfig_HelpListsEveryFlag(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	// A bad environment must not keep anyone from reading the help.
	badEnv := func(k string) string { return map[string]string{"INTERVAL": "0", "BUFFER": "x"}[k] }
	err := run(context.Background(), []string{"-h"}, badEnv, &out)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("run -h = %v, want flag.ErrHelp", err)
	}
	for _, want := range []string{"-addr (ADDR", `":3000"`, "-interval (INTERVAL", "-keepalive (KEEPALIVE",
		"-retry (RETRY", "-max-lifetime (MAX_LIFETIME", "-write-timeout (WRITE_TIMEOUT", "-buffer (BUFFER",
		"-max-clients (MAX_CLIENTS", "-send-buffer (SEND_BUFFER", "-read-timeout (READ_TIMEOUT",
		"-idle-timeout (IDLE_TIMEOUT", "-shutdown-timeout (SHUTDOWN_TIMEOUT", "-v (VERBOSE", "-admin-addr (ADMIN_ADDR",
		"-shutdown-delay (SHUTDOWN_DELAY", "-log-format (LOG_FORMAT", "-version\n", "-page-sources (PAGE_SOURCES",
		"-retry-spread (RETRY_SPREAD", "-dead-client-timeout (DEAD_CLIENT_TIMEOUT", "-body-limit (BODY_LIMIT",
		"-max-header-bytes (MAX_HEADER_BYTES", "-fd-margin (FD_MARGIN", "-log-rate (LOG_RATE"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("-h output lacks %q:\n%s", want, out.String())
		}
	}
}

func TestFitOpenFiles(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		maxClients int
		limit      uint64
		margin     int
		want       int
		wantErr    bool
	}{
		{"plenty", 10000, 1 << 20, 64, 10000, false},
		{"unlimited", 10000, ^uint64(0), 64, 10000, false},
		{"exactly enough", 960, 1024, 64, 960, false},
		{"lowered", 10000, 1024, 64, 960, false},
		{"no margin", 10000, 1024, 0, 1024, false},
		{"no room", 10000, 64, 64, 0, true},
	}
	for _, tt := range tests {
		got, err := fitOpenFiles(tt.maxClients, tt.limit, tt.margin)
		if got != tt.want || (err != nil) != tt.wantErr {
			t.Errorf("%s: fitOpenFiles(%d, %d, %d) = %d, %v; want %d, error %t",
				tt.name, tt.maxClients, tt.limit, tt.margin, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestConfig_BuildsOnEveryOS(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIPPING: cross-compiles the command for three systems, which takes a while with a cold cache")
	}
	goTool := requireTool(t, "", "go", "golang-go")
	for _, goos := range []string{"linux", "darwin", "windows"} {
		cmd := exec.Command(goTool, "build", "-o", os.DevNull, ".")
		cmd.Env = append(os.Environ(), "GOOS="+goos, "GOARCH=amd64", "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("GOOS=%s go build: %v\n%s", goos, err, out)
		}
	}
}
