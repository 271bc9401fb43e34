package main

// The README's commands, run as a reader would run them, against the server that `make run`
// starts: a route, a flag or a make target renamed in the code, or a command mistyped in the
// README, fails here. The flag table is held to -h by TestConfig_READMEFlagTableMatchesHelp.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	// readmeCommandTimeout bounds one curl command that is not a stream.
	readmeCommandTimeout = 10 * time.Second

	// readmeStreamWait is how long a stream may take to open, or to show an event published to it.
	readmeStreamWait = 5 * time.Second
)

// readmeBlock is one fenced code block of a Markdown file: its language and its text.
type readmeBlock struct {
	lang string
	text string
}

// readmeBlocks returns the fenced code blocks of the Markdown file at path, indented ones
// (in a list) included.
func readmeBlocks(t *testing.T, path string) []readmeBlock {
	t.Helper()
	text, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var blocks []readmeBlock
	var open *readmeBlock
	var indent string
	for _, line := range strings.Split(string(text), "\n") {
		trimmed := strings.TrimLeft(line, " ")
		if open == nil {
			if lang, ok := strings.CutPrefix(trimmed, "```"); ok {
				open, indent = &readmeBlock{lang: strings.TrimSpace(lang)}, line[:len(line)-len(trimmed)]
			}
			continue
		}
		if strings.HasPrefix(trimmed, "```") {
			blocks = append(blocks, *open)
			open = nil
			continue
		}
		open.text += strings.TrimPrefix(line, indent) + "\n"
	}
	if open != nil {
		t.Fatalf("%s: a code block (%s) is never closed", path, open.lang)
	}
	return blocks
}

// shellCommands returns the commands of sh blocks: lines joined where they end in a
// backslash, comments and blank lines left out.
func shellCommands(blocks []readmeBlock) []string {
	var commands []string
	for _, b := range blocks {
		if b.lang != "sh" {
			continue
		}
		var pending string
		for _, line := range strings.Split(b.text, "\n") {
			line = strings.TrimSpace(line)
			if joined, ok := strings.CutSuffix(line, `\`); ok {
				pending += joined
				continue
			}
			line = strings.TrimSpace(withoutComment(pending + line))
			pending = ""
			if line == "" {
				continue
			}
			commands = append(commands, line)
		}
	}
	return commands
}

// withoutComment returns a shell command line without its trailing comment: from a # that
// starts a word outside quotes.
func withoutComment(line string) string {
	var quote rune
	for i, r := range line {
		switch {
		case quote != 0:
			if r == quote {
				quote = 0
			}
		case r == '\'' || r == '"':
			quote = r
		case r == '#' && (i == 0 || line[i-1] == ' ' || line[i-1] == '\t'):
			return line[:i]
		}
	}
	return line
}

// makeRunArgs returns the arguments that `make run` gives the binary, read from the Makefile.
func makeRunArgs(t *testing.T) []string {
	t.Helper()
	makefile, err := os.ReadFile("Makefile")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^run:.*\n(?:\t.*\n)*?\t.*\./sse-dashboard([^;\n]*)`).FindSubmatch(makefile)
	if m == nil {
		t.Fatal("the Makefile's run target does not run ./sse-dashboard: this test cannot start what the README's quick start starts")
	}
	return strings.Fields(string(m[1]))
}

// makeTargets returns the targets the Makefile declares.
func makeTargets(t *testing.T) []string {
	t.Helper()
	makefile, err := os.ReadFile("Makefile")
	if err != nil {
		t.Fatal(err)
	}
	var targets []string
	for _, m := range regexp.MustCompile(`(?m)^([a-z-]+):`).FindAllSubmatch(makefile, -1) {
		targets = append(targets, string(m[1]))
	}
	return targets
}

// readmeHosts rewrites the addresses the README gives to those of the test server.
func readmeHosts(srv *testServer) *strings.Replacer {
	public := strings.TrimPrefix(srv.url, "http://")
	admin := strings.TrimPrefix(srv.adminURL, "http://")
	return strings.NewReplacer(
		"localhost:3000", public, "127.0.0.1:3000", public,
		"localhost:3001", admin, "127.0.0.1:3001", admin,
	)
}

// readmeStream is a `curl -N` of the README running in the background, with what it printed.
type readmeStream struct {
	command string
	topics  []string      // the topics its URL subscribes to: topic= or match=
	done    chan struct{} // closed once curl has exited

	mu  sync.Mutex
	out bytes.Buffer
}

func (s *readmeStream) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.out.Write(p)
}

func (s *readmeStream) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.out.String()
}

// readmePublish is what a `curl -d … /publish` of the README publishes.
type readmePublish struct {
	Topic string          `json:"topic"`
	Data  json.RawMessage `json:"data"`
}

var (
	quotedURL   = regexp.MustCompile(`'(https?://[^']+)'|"(https?://[^"]+)"|(https?://\S+)`)
	dataOption  = regexp.MustCompile(`(?:-d|--data) '([^']*)'`)
	sseDataLine = regexp.MustCompile(`(?m)^data: (.*)$`)
	jsURL       = regexp.MustCompile(`"(https?://[^"]+)"`)
	pageURL     = regexp.MustCompile(`http://localhost:3000/[^\s)\x60'"<>]*`)
)

// commandURL returns the URL a command names.
func commandURL(t *testing.T, command string) *url.URL {
	t.Helper()
	m := quotedURL.FindStringSubmatch(command)
	if m == nil {
		t.Fatalf("README command %q names no URL", command)
	}
	u, err := url.Parse(m[1] + m[2] + m[3])
	if err != nil {
		t.Fatalf("README command %q: %v", command, err)
	}
	return u
}

func TestREADME_CommandsWorkAgainstTheServerMakeRunStarts(t *testing.T) {
	t.Parallel()
	curl := requireTool(t, "", "curl", "curl")
	blocks := readmeBlocks(t, "README.md")
	commands := shellCommands(blocks)
	if len(commands) < 3 {
		t.Fatalf("found %d commands in the README's sh blocks, want at least make run, a stream and a publish: %q", len(commands), commands)
	}
	readmeText, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	srv := startServer(t, makeRunArgs(t)...)
	hosts := readmeHosts(srv)
	targets := makeTargets(t)

	ctx, cancel := context.WithCancel(context.Background())
	var streams []*readmeStream
	t.Cleanup(func() {
		cancel()
		for _, s := range streams {
			<-s.done
		}
	})

	ran := 0
	for _, command := range commands {
		fields := strings.Fields(command)
		switch {
		case fields[0] == "make":
			// make targets are not run here (make test would run this test), but each one the
			// README names must exist.
			for _, target := range fields[1:] {
				if !slices.Contains(targets, target) {
					t.Errorf("README runs %q, but the Makefile has no target %q (it has %q)", command, target, targets)
				}
			}
		case fields[0] == "./sse-dashboard" || fields[0] == "sse-dashboard":
			// Every flag the README passes must parse: -h after them stops before serving.
			args := append(slices.Clone(fields[1:]), "-h")
			if err := run(ctx, args, func(string) string { return "" }, io.Discard); !errors.Is(err, flag.ErrHelp) {
				t.Errorf("README runs %q: its flags do not parse: %v", command, err)
			}
		case fields[0] == "curl" && slices.Contains(fields, "-N"):
			u := commandURL(t, command)
			stream := &readmeStream{command: command, topics: append(u.Query()["topic"], u.Query()["match"]...), done: make(chan struct{})}
			cmd := exec.CommandContext(ctx, "sh", "-c", "exec "+curl+" --silent --show-error"+strings.TrimPrefix(hosts.Replace(command), "curl"))
			cmd.Stdout, cmd.Stderr = stream, stream
			cmd.WaitDelay = time.Second
			if err := cmd.Start(); err != nil {
				t.Fatalf("README command %q: %v", command, err)
			}
			streams = append(streams, stream)
			go func() {
				defer close(stream.done)
				_ = cmd.Wait()
			}()
			// The first frame, or curl's end: a stream stays open.
			eventually(t, readmeStreamWait, fmt.Sprintf("README command %q to print its first frame or exit", command), func() bool {
				select {
				case <-stream.done:
					return true
				default:
					return strings.Contains(stream.String(), "\n\n")
				}
			})
			select {
			case <-stream.done:
				t.Errorf("README command %q exited, printing %q; want a stream that stays open", command, stream.String())
			default:
				if out := stream.String(); !strings.HasPrefix(out, "retry: ") {
					t.Errorf("README command %q printed %q, want a stream that opens with retry:", command, out)
				}
			}
			ran++
		case fields[0] == "curl":
			runCtx, stop := context.WithTimeout(ctx, readmeCommandTimeout)
			cmd := exec.CommandContext(runCtx, "sh", "-c", "exec "+curl+" --silent --show-error --write-out '\\n%{http_code}'"+strings.TrimPrefix(hosts.Replace(command), "curl"))
			out, err := cmd.CombinedOutput()
			stop()
			// --write-out puts the status on a line of its own after the body.
			printed := strings.TrimRight(string(out), "\n")
			body, status := "", printed
			if i := strings.LastIndex(printed, "\n"); i >= 0 {
				body, status = printed[:i], printed[i+1:]
			}
			if err != nil || !strings.HasPrefix(status, "2") {
				t.Errorf("README command %q: %v, status %s, output %q; want exit 0 and a 2xx answer", command, err, status, body)
				continue
			}
			ran++
			if commandURL(t, command).Path != "/publish" {
				continue
			}
			d := dataOption.FindStringSubmatch(command)
			var p readmePublish
			if d == nil || json.Unmarshal([]byte(d[1]), &p) != nil {
				t.Errorf("README command %q publishes a body this test cannot read", command)
				continue
			}
			var want bytes.Buffer
			if err := json.Compact(&want, p.Data); err != nil {
				t.Fatalf("README command %q: data: %v", command, err)
			}
			// Every stream the README opened before on that topic gets the event, and the
			// README shows at least one.
			shown := 0
			for _, s := range streams {
				if !slices.Contains(s.topics, p.Topic) {
					continue
				}
				shown++
				eventually(t, readmeStreamWait, fmt.Sprintf("README command %q shows the event of %q", s.command, command), func() bool {
					for _, m := range sseDataLine.FindAllStringSubmatch(s.String(), -1) {
						if m[1] == want.String() {
							return true
						}
					}
					return false
				})
			}
			if !bytes.Contains(readmeText, []byte("`data: "+want.String()+"`")) {
				t.Errorf("README command %q publishes %s, but the README never says that the stream prints `data: %s`", command, want.String(), want.String())
			}
			if shown == 0 {
				t.Errorf("README command %q publishes to %q, but no curl -N before it subscribes to that topic to show it", command, p.Topic)
			}
		default:
			t.Errorf("README command %q: this test does not know how to run it; teach it, or move the command out of the README", command)
		}
	}
	if ran == 0 {
		t.Error("no curl command of the README ran")
	}

	// The JavaScript blocks parse, and each URL in them opens an event stream.
	node := requireTool(t, "", "node", "nodejs")
	dir := t.TempDir()
	for i, b := range blocks {
		if b.lang != "js" {
			continue
		}
		file := filepath.Join(dir, fmt.Sprintf("block%d.js", i))
		if err := os.WriteFile(file, []byte(b.text), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(node, "--check", file).CombinedOutput(); err != nil {
			t.Errorf("README JavaScript does not parse: %v\n%s\n%s", err, out, b.text)
		}
		for _, m := range jsURL.FindAllStringSubmatch(b.text, -1) {
			checkOpensStream(t, hosts.Replace(m[1]))
		}
	}

	// The page's URLs that the README names answer with the page.
	readme := string(readmeText)
	for _, link := range pageURL.FindAllString(readme, -1) {
		link = strings.TrimRight(link, ".,:;")
		if u, err := url.Parse(link); err != nil || u.Path != "/" {
			continue // a stream, checked above
		}
		resp, err := http.Get(hosts.Replace(link))
		if err != nil {
			t.Errorf("README links %s: %v", link, err)
			continue
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
			t.Errorf("README links %s: %d %s, want 200 and the page", link, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
	}

	// The demo feed the README promises on the topic `make run` names.
	demo := srv.url + "/sse?topic=dashboard"
	checkOpensStream(t, demo)
	if !strings.Contains(readme, "-demo-topic dashboard") || !slices.Contains(makeRunArgs(t), "dashboard") {
		t.Errorf("the README says make run publishes to the topic dashboard; the Makefile runs %q", makeRunArgs(t))
	}
	resp, err := (&http.Client{Timeout: readmeStreamWait}).Get(demo)
	if err != nil {
		t.Fatalf("GET %s: %v", demo, err)
	}
	defer resp.Body.Close()
	lines := bufio.NewScanner(resp.Body)
	for lines.Scan() {
		if strings.HasPrefix(lines.Text(), `data: {"User":`) {
			return
		}
	}
	t.Errorf("GET %s: no value of the demo feed within %s (%v)", demo, readmeStreamWait, lines.Err())
}

// checkOpensStream fails the test unless target answers 200 with an event stream that
// opens with retry:.
func checkOpensStream(t *testing.T, target string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), readmeStreamWait)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		t.Fatalf("%s: %v", target, err)
	}
	req.Header.Set("Accept", "text/event-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Errorf("GET %s: %v", target, err)
		return
	}
	defer resp.Body.Close()
	first := make([]byte, len("retry: "))
	_, err = io.ReadFull(resp.Body, first)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" || string(first) != "retry: " {
		t.Errorf("GET %s: %d %s, first bytes %q (%v); want 200 text/event-stream opening with retry:", target, resp.StatusCode, resp.Header.Get("Content-Type"), first, err)
	}
}
