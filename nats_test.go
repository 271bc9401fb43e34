package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// natsNode is a real NATS server with JetStream, run inside the test binary on loopback
// ports of its own that it keeps across restarts, its store in a temporary directory.
type natsNode struct {
	opts *server.Options
	srv  *server.Server
}

// runNATSServer starts a single NATS server with JetStream and stops it when the test ends.
func runNATSServer(t *testing.T) *natsNode {
	t.Helper()
	n := &natsNode{opts: natsOptions(t, "n1")}
	n.start(t)
	return n
}

// natsOptions returns the options of a JetStream server named name, on a free loopback
// port, with its store in a new temporary directory and without logs or signal handlers.
func natsOptions(t *testing.T, name string) *server.Options {
	return &server.Options{
		ServerName: name,
		Host:       "127.0.0.1",
		Port:       freeLoopbackPort(t),
		JetStream:  true,
		StoreDir:   t.TempDir(),
		NoLog:      true,
		NoSigs:     true,
		// The test machine's memory and disk are shared: small limits are plenty.
		JetStreamMaxMemory: 64 << 20,
		JetStreamMaxStore:  1 << 30,
	}
}

// start starts the server (again, after stop) and waits until it takes connections; with
// a cluster, until it also has routes to the others it can reach.
func (n *natsNode) start(t *testing.T) {
	t.Helper()
	srv, err := server.NewServer(n.opts)
	if err != nil {
		t.Fatalf("NATS server %s: %v", n.opts.ServerName, err)
	}
	srv.Start()
	// Generous: a clustered node starting on a loaded machine has taken over 10 s.
	if !srv.ReadyForConnections(30 * time.Second) {
		srv.Shutdown()
		t.Fatalf("NATS server %s not ready within 30s", n.opts.ServerName)
	}
	n.srv = srv
	t.Cleanup(n.stop)
}

// stop shuts the server down, as a killed node would go, and waits until it has.
func (n *natsNode) stop() {
	if n.srv != nil {
		n.srv.Shutdown()
		n.srv.WaitForShutdown()
		n.srv = nil
	}
}

// url is the client URL of the server.
func (n *natsNode) url() string {
	return "nats://127.0.0.1:" + strconv.Itoa(n.opts.Port)
}

// connectJS connects a plain NATS client to urls with opts, as an application that publishes
// straight to NATS would, and returns its JetStream context.
func connectJS(t *testing.T, urls string, opts ...nats.Option) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(urls, append([]nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(100 * time.Millisecond)}, opts...)...)
	if err != nil {
		t.Fatalf("connect to NATS at %s: %v", urls, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// publishKeyed posts an event to /publish with the header Idempotency-Key: key and returns
// the status, the answer and its Retry-After.
func publishKeyed(t *testing.T, adminURL, key, topic string, data any) (int, string, string) {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"topic": topic, "data": data})
	status, answer, header := postPublish(t, adminURL, "", key, body)
	return status, answer, header.Get("Retry-After")
}

// postPublish posts body to /publish with a bearer token and an idempotency key (each left
// out when empty) and returns the status, the answer and its headers.
func postPublish(t *testing.T, adminURL, token, key string, body []byte) (int, string, http.Header) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, adminURL+"/publish", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("POST /publish: %v", err)
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(answer), resp.Header
}

// readyBody returns the status and body of the /readyz of the server at base.
func readyBody(t *testing.T, base string) (int, string) {
	t.Helper()
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(base + "/readyz")
	if err != nil {
		t.Fatalf("GET /readyz: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// idEpoch returns the epoch of an id, epoch-seq.
func idEpoch(id string) string {
	epoch, _, _ := strings.Cut(id, "-")
	return epoch
}

func TestNATSSubject_MapsTopicsOneToOne(t *testing.T) {
	for _, tt := range []struct{ topic, subject string }{
		{"orders/42", "sse.orders/42"},
		{"a.b", "sse.a%2Eb"},
		{"a%2Eb", ""}, // not a topic: % is outside the alphabet
		{"..", "sse.%2E%2E"},
		{"x:y_z-1", "sse.x:y_z-1"},
	} {
		if tt.subject == "" {
			if checkTopic(tt.topic) == nil {
				t.Errorf("topic %q passes checkTopic, want refused", tt.topic)
			}
			continue
		}
		if got := topicSubject("sse", tt.topic); got != tt.subject {
			t.Errorf("topicSubject(%q) = %q, want %q", tt.topic, got, tt.subject)
		}
		if got, ok := subjectTopic("sse", tt.subject); !ok || got != tt.topic {
			t.Errorf("subjectTopic(%q) = %q, %v, want %q, true", tt.subject, got, ok, tt.topic)
		}
	}
	for _, subject := range []string{"sse.a.b", "sse.a%2eb", "sse.", "other.a", "sse.a b", "sse.%252E"} {
		if topic, ok := subjectTopic("sse", subject); ok {
			t.Errorf("subjectTopic(%q) = %q, true, want no topic", subject, topic)
		}
	}
}

func TestNATSConfig_RefusesWhatCannotWork(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"-nats", "nats://127.0.0.1:4222", "-nats-prefix", "a.*"}, "-nats-prefix"},
		{[]string{"-nats", "nats://127.0.0.1:4222", "-nats-prefix", "a..b"}, "-nats-prefix"},
		{[]string{"-nats", "nats://127.0.0.1:4222", "-nats-replicas", "0"}, "-nats-replicas"},
		{[]string{"-nats", "nats://127.0.0.1:4222", "-nats-replays", "0"}, "-nats-replays"},
		{[]string{"-nats", "nats://127.0.0.1:4222", "-history", "0"}, "-history"},
		{[]string{"-nats", "nats://127.0.0.1:4222", "-nats-user", "u"}, "-nats-password"},
		{[]string{"-nats", "nats://127.0.0.1:4222", "-nats-cert", "c.pem"}, "-nats-key"},
	} {
		_, err := parseConfig(tt.args, func(string) string { return "" }, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("parseConfig(%q) = %v, want an error naming %s", tt.args, err, tt.want)
		}
	}
	cfg, err := parseConfig(nil, func(name string) string {
		return map[string]string{"NATS_URL": "nats://127.0.0.1:4222,nats://127.0.0.1:4223", "NATS_REPLICAS": "3"}[name]
	}, io.Discard)
	if err != nil || cfg.nats.urls != "nats://127.0.0.1:4222,nats://127.0.0.1:4223" || cfg.nats.replicas != 3 {
		t.Errorf("NATS_URL and NATS_REPLICAS gave %+v, %v; want the URLs and 3 replicas", cfg.nats, err)
	}
}

func TestNATS_ReplicasShareIdsAndAClientResumesOnAnother(t *testing.T) {
	skipShort(t, "a NATS server and two server processes")
	node := runNATSServer(t)
	a := startProcess(t, "-nats", node.url())
	b := startProcess(t, "-nats", node.url())

	onB, opening := openTopics(t, b.url, "", "orders/42")
	eventually(t, 10*time.Second, "B subscribed", func() bool { return metric(t, b.adminURL, "sse_hub_subscribers") == 1 })
	var ids []string
	for i := range 3 {
		ids = append(ids, publishEvent(t, a.adminURL, "orders/42", "shipped", map[string]any{"n": i}))
	}
	for i, id := range ids {
		want := frame{isEvent: true, id: id, hasID: true, event: "shipped", data: fmt.Sprintf(`{"n":%d}`, i)}
		if got := onB.nextEvent(t); !equalFrames(got, want) {
			t.Fatalf("B's subscriber got %+v, want %+v: the id A answered", got, want)
		}
	}
	if idEpoch(opening.id) != idEpoch(ids[0]) || idSeq(t, ids[0])+2 != idSeq(t, ids[2]) {
		t.Errorf("B opened at %s, A answered %v: want one epoch and consecutive sequence numbers", opening.id, ids)
	}
	onB.close()

	// Missed while away: two events of the topic and one of another, published on A.
	missed := []string{
		publishEvent(t, a.adminURL, "orders/42", "", "four"),
		publishEvent(t, a.adminURL, "prices", "", "other topic"),
		publishEvent(t, a.adminURL, "orders/42", "", "five"),
	}
	eventually(t, 10*time.Second, "B's consumer has every event", func() bool {
		return metric(t, b.adminURL, "sse_nats_delivered_sequence") == float64(idSeq(t, missed[2]))
	})
	resumed, opening := openTopics(t, b.url, ids[2], "orders/42")
	if opening.id != ids[2] {
		t.Errorf("resumed stream opened at %q, want the client's %q", opening.id, ids[2])
	}
	live := publishEvent(t, b.adminURL, "orders/42", "", "six")
	var got []string
	for range 3 {
		f := resumed.nextEvent(t)
		got = append(got, f.id+" "+f.data)
	}
	want := []string{missed[0] + " four", missed[2] + " five", live + " six"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("resumed on B with A's id got %q, want exactly %q", got, want)
	}
	if v := metric(t, b.adminURL, "sse_hub_replayed_total"); v != 2 {
		t.Errorf("sse_hub_replayed_total = %v on B, want 2", v)
	}
	if v := metric(t, b.adminURL, "sse_nats_replays_total"); v != 1 {
		t.Errorf("sse_nats_replays_total = %v on B, want 1", v)
	}

	// An id of this stream, but one that B cannot resume.
	for _, tt := range []struct{ lastID, reason string }{
		{"garbage", "invalid"},
		{"0000000000-1", "other_run"},
		{idEpoch(live) + "-999999", "future"},
	} {
		s, _ := openTopics(t, b.url, tt.lastID, "orders/42")
		first := s.nextEvent(t)
		s.close()
		if first.event != "reset" || first.data != `{"reason":"`+tt.reason+`"}` || first.id != live {
			t.Errorf("Last-Event-ID %q opened with %+v, want a reset for %s at %s", tt.lastID, first, tt.reason, live)
		}
	}
	if status, body := readyBody(t, a.url); status != http.StatusOK || body != "ready\nnats: connected\n" {
		t.Errorf("GET /readyz = %d %q, want 200 saying NATS is connected", status, body)
	}
}

func TestNATS_IdempotencyKeyStoresARetriedPublishOnce(t *testing.T) {
	skipShort(t, "a NATS server and a server process")
	node := runNATSServer(t)
	a := startProcess(t, "-nats", node.url())
	s, _ := openTopics(t, a.url, "", "t")
	eventually(t, 10*time.Second, "subscribed", func() bool { return metric(t, a.adminURL, "sse_hub_subscribers") == 1 })
	var answers []string
	for range 3 {
		status, answer, _ := publishKeyed(t, a.adminURL, "order-42-shipped", "t", "once")
		if status != http.StatusOK {
			t.Fatalf("POST /publish = %d %q, want 200", status, answer)
		}
		answers = append(answers, answer)
	}
	if answers[0] != answers[1] || answers[1] != answers[2] {
		t.Errorf("three publishes with one Idempotency-Key answered %q, want one id", answers)
	}
	next := publishEvent(t, a.adminURL, "t", "", "then")
	if got := s.nextEvent(t); got.data != "once" {
		t.Errorf("first event %+v, want the keyed one", got)
	}
	if got := s.nextEvent(t); got.data != "then" || got.id != next {
		t.Errorf("second event %+v, want %s with data then: the retries must not be delivered", got, next)
	}
}

// publishStraight publishes data to topic straight to JetStream, as an application may,
// and returns the id the service gives it.
func publishStraight(t *testing.T, js jetstream.JetStream, epoch, topic, data string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ack, err := js.Publish(ctx, topicSubject("sse", topic), []byte(data))
	if err != nil {
		t.Fatalf("publish to NATS: %v", err)
	}
	return epoch + "-" + strconv.FormatUint(ack.Sequence, 10)
}

func TestNATS_OutageKeepsStreamsOpenRefusesPublishesAndLosesNothing(t *testing.T) {
	skipShort(t, "a NATS server stopped and started again, and a server process")
	node := runNATSServer(t)
	a := startProcess(t, "-nats", node.url(), "-keepalive", "200ms")
	s, _ := openTopics(t, a.url, "", "t")
	eventually(t, 10*time.Second, "subscribed", func() bool { return metric(t, a.adminURL, "sse_hub_subscribers") == 1 })
	before := publishEvent(t, a.adminURL, "t", "", "before")
	if got := s.nextEvent(t); got.id != before {
		t.Fatalf("got %+v, want %s", got, before)
	}

	node.stop()
	eventually(t, 10*time.Second, "the replica sees NATS gone", func() bool { return metric(t, a.adminURL, "sse_nats_connected") == 0 })
	// Publishes while NATS is away: every one refused, none acknowledged and then lost.
	outage := time.Now()
	for attempt := 0; time.Since(outage) < 3*time.Second; attempt++ {
		status, answer, retryAfter := publishKeyed(t, a.adminURL, "", "t", fmt.Sprintf("lost %d", attempt))
		if status != http.StatusServiceUnavailable || retryAfter == "" {
			t.Fatalf("POST /publish with NATS down = %d %q, Retry-After %q; want 503 with Retry-After", status, answer, retryAfter)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// The open stream goes on: keepalives, not an end.
	for range 2 {
		if f := s.next(t); f.isEvent || len(f.comments) == 0 || f.comments[0] != "keepalive" {
			t.Fatalf("open stream with NATS down sent %+v, want keepalives", f)
		}
	}
	if status, body := readyBody(t, a.url); status != http.StatusOK || !strings.Contains(body, "nats: reconnecting") {
		t.Errorf("GET /readyz with NATS down = %d %q, want 200 saying NATS is reconnecting", status, body)
	}
	// A new subscriber is taken and waits live; one that must read history is told to come back.
	fresh, _ := openTopics(t, a.url, "", "t")
	behind, opening := openTopics(t, a.url, idEpoch(before)+"-0", "t")
	if err := behind.readToEnd(); err != nil || !slices.Contains(opening.comments, "history unavailable: reconnect later") {
		t.Errorf("a stream resuming from history with NATS down opened with %+v and ended with %v, want a retry and a clean end", opening, err)
	}

	node.start(t)
	js := connectJS(t, node.url())
	straight := publishStraight(t, js, idEpoch(before), "t", "straight to NATS")
	var after string
	eventually(t, 30*time.Second, "publishing works again", func() bool {
		status, answer, _ := publishKeyed(t, a.adminURL, "after", "t", "after")
		var got publishAnswer
		if status == http.StatusOK && json.Unmarshal([]byte(answer), &got) == nil {
			after = got.ID
			return true
		}
		return false
	})
	for _, stream := range []*sseStream{s, fresh} {
		for _, want := range []string{straight + " straight to NATS", after + " after"} {
			if f := stream.nextEvent(t); f.id+" "+f.data != want {
				t.Errorf("after the outage a subscriber got %q, want %q", f.id+" "+f.data, want)
			}
		}
	}
	if v := metric(t, a.adminURL, "sse_nats_reconnects_total"); v < 1 {
		t.Errorf("sse_nats_reconnects_total = %v, want at least 1", v)
	}
	if v := metric(t, a.adminURL, `sse_streams_ended_total{reason="unavailable"}`); v != 1 {
		t.Errorf(`sse_streams_ended_total{reason="unavailable"} = %v, want 1`, v)
	}
	if status, body := readyBody(t, a.url); status != http.StatusOK || body != "ready\nnats: connected\n" {
		t.Errorf("GET /readyz after the outage = %d %q, want 200 saying NATS is connected", status, body)
	}
}

// topicSubscriber is one EventSource on some topics, recording every event it receives.
type topicSubscriber struct {
	topics []string
	mu     sync.Mutex
	got    []string   // "id data" of each event, in order
	all    []sseEvent // each event whole, reset events included, in order
	lastAt time.Time
	gap    time.Duration // longest wait between two events, reconnects included
}

// reached reports whether the subscriber has an event or reset at sequence seq or later.
func (sub *topicSubscriber) reached(seq uint64) bool {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	for _, ev := range slices.Backward(sub.all) {
		if n, ok := eventSeq(ev.id); ok {
			return n >= seq
		}
	}
	return false
}

// events returns a copy of every event the subscriber has received so far.
func (sub *topicSubscriber) events() []sseEvent {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	return slices.Clone(sub.all)
}

// topicSubscribers are many subscribers, each an sseClient of its own on one of choices of
// topics, spread over the bases in turn.
type topicSubscribers struct {
	subs   []*topicSubscriber
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// startTopicSubscribers starts n subscribers, the i-th on choices[i%len(choices)] at
// bases[i%len(bases)], each with the HTTP client newClient returns, and stops them when
// the test ends.
func startTopicSubscribers(t *testing.T, bases []string, newClient func() *http.Client, n int, choices [][]string) *topicSubscribers {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ts := &topicSubscribers{cancel: cancel}
	t.Cleanup(ts.stop)
	for i := range n {
		sub := &topicSubscriber{topics: choices[i%len(choices)]}
		ts.subs = append(ts.subs, sub)
		client := newClient()
		c := newSSEClient(topicURL(bases[i%len(bases)], sub.topics...), client)
		c.onEvent = func(ev sseEvent) {
			sub.mu.Lock()
			defer sub.mu.Unlock()
			if !sub.lastAt.IsZero() {
				sub.gap = max(sub.gap, ev.at.Sub(sub.lastAt))
			}
			sub.lastAt = ev.at
			sub.got = append(sub.got, ev.id+" "+ev.data)
			sub.all = append(sub.all, ev)
		}
		ts.wg.Go(func() {
			defer client.CloseIdleConnections()
			if err := c.run(ctx); err != nil {
				t.Errorf("subscriber %d on %v: %v", i, sub.topics, err)
			}
		})
	}
	return ts
}

// stop ends every subscriber and waits for them.
func (ts *topicSubscribers) stop() {
	ts.cancel()
	ts.wg.Wait()
}

// published is one acknowledged publish.
type published struct {
	seq         uint64
	topic, line string // line is "id data", as a subscriber records it
}

// publisher publishes through whichever replica answers, each event under an idempotency
// key of its own and retried with it on any failure, so that every event is stored once
// however often it had to be sent.
type publisher struct {
	mu      sync.Mutex
	admins  []string // the replicas' admin URLs, replaced as they restart
	all     []published
	slowest time.Duration // the longest a publish took, from its first attempt to its acknowledgement
}

// setAdmin sets the admin URL of replica i.
func (p *publisher) setAdmin(i int, url string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.admins[i] = url
}

// publish publishes data to topic through replica first, then the others in turn, until one
// acknowledges it, failing the test after 60 s.
func (p *publisher) publish(t *testing.T, first int, topic, data string) {
	body, _ := json.Marshal(map[string]any{"topic": topic, "data": data})
	client := &http.Client{Timeout: 10 * time.Second}
	start := time.Now()
	deadline := start.Add(60 * time.Second)
	for attempt := first; time.Now().Before(deadline); attempt++ {
		p.mu.Lock()
		admin := p.admins[attempt%len(p.admins)]
		p.mu.Unlock()
		req, _ := http.NewRequest(http.MethodPost, admin+"/publish", bytes.NewReader(body))
		req.Header.Set("Idempotency-Key", data)
		resp, err := client.Do(req)
		if err != nil {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		var got publishAnswer
		err = json.NewDecoder(resp.Body).Decode(&got)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || err != nil {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		_, number, _ := strings.Cut(got.ID, "-")
		seq, _ := strconv.ParseUint(number, 10, 64)
		p.mu.Lock()
		p.all = append(p.all, published{seq: seq, topic: topic, line: got.ID + " " + data})
		p.slowest = max(p.slowest, time.Since(start))
		p.mu.Unlock()
		return
	}
	t.Errorf("publish %s to %s: no replica acknowledged it within 60s", data, topic)
}

// run publishes events at rate per second from workers goroutines, each through the
// replicas in turn, on topics in turn, for as long as more(i) holds before the i-th.
func (p *publisher) run(t *testing.T, workers int, rate float64, topics []string, more func(i int) bool) {
	tick := time.NewTicker(time.Duration(float64(time.Second) / rate))
	defer tick.Stop()
	next := make(chan int)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				p.publish(t, w+i, topics[i%len(topics)], fmt.Sprintf("w%d-%d", w, i))
			}
		}()
	}
	for i := 0; more(i); i++ {
		<-tick.C
		next <- i
	}
	close(next)
	wg.Wait()
}

// check waits until every subscriber has as many events as were published to its topics,
// then compares its list with them exactly, and returns the longest gap any one saw.
func (ts *topicSubscribers) check(t *testing.T, p *publisher, within time.Duration) time.Duration {
	t.Helper()
	p.mu.Lock()
	all := slices.Clone(p.all)
	p.mu.Unlock()
	slices.SortFunc(all, func(a, b published) int { return cmp.Compare(a.seq, b.seq) })
	want := func(sub *topicSubscriber) []string {
		var lines []string
		for _, e := range all {
			if slices.Contains(sub.topics, e.topic) {
				lines = append(lines, e.line)
			}
		}
		return lines
	}
	deadline := time.Now().Add(within)
	for _, sub := range ts.subs {
		for {
			sub.mu.Lock()
			n := len(sub.got)
			sub.mu.Unlock()
			if n >= len(want(sub)) || time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	ts.stop()
	var longest time.Duration
	for i, sub := range ts.subs {
		w := want(sub)
		if !slices.Equal(sub.got, w) {
			at := firstDifference(sub.got, w)
			t.Errorf("subscriber %d of %v got %d events, want exactly the %d published to its topics, in order; first difference at %d: got %q, want %q",
				i, sub.topics, len(sub.got), len(w), at, sub.got[at:min(at+3, len(sub.got))], w[at:min(at+3, len(w))])
		}
		longest = max(longest, sub.gap)
	}
	return longest
}

// subscribed returns the topic streams that the replicas at adminURLs hold together, 0 if
// one does not answer.
func subscribed(adminURLs ...string) float64 {
	var n float64
	for _, admin := range adminURLs {
		samples, err := tryScrape(admin)
		if err != nil {
			return 0
		}
		n += samples["sse_hub_subscribers"]
	}
	return n
}

// runNATSCluster starts three JetStream servers routed to each other on loopback as one
// cluster, and waits until it has elected a leader for JetStream.
func runNATSCluster(t *testing.T) []*natsNode {
	t.Helper()
	nodes := make([]*natsNode, 3)
	for i := range nodes {
		nodes[i] = &natsNode{opts: natsOptions(t, fmt.Sprintf("n%d", i+1))}
	}
	startCluster(t, nodes)
	return nodes
}

// startCluster routes nodes to each other on free loopback ports as the cluster "sse",
// starts them, and waits until the cluster has a JetStream leader, asking as a client
// with connect.
func startCluster(t *testing.T, nodes []*natsNode, connect ...nats.Option) {
	t.Helper()
	var routes []string
	for _, n := range nodes {
		n.opts.Cluster.Name, n.opts.Cluster.Host, n.opts.Cluster.Port = "sse", "127.0.0.1", freeLoopbackPort(t)
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", n.opts.Cluster.Port))
	}
	for _, n := range nodes {
		n.opts.Routes = server.RoutesFromStr(strings.Join(routes, ","))
		n.start(t)
	}
	js := connectJS(t, clusterURLs(nodes), connect...)
	eventually(t, 30*time.Second, "the cluster elects a JetStream leader", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := js.AccountInfo(ctx)
		return err == nil
	})
}

// clusterURLs returns the client URLs of nodes, comma-separated, as -nats takes them.
func clusterURLs(nodes []*natsNode) string {
	urls := make([]string, len(nodes))
	for i, n := range nodes {
		urls[i] = n.url()
	}
	return strings.Join(urls, ",")
}

func TestNATS_ClusterLosesANodeWhilePublishingAndNothingIsLost(t *testing.T) {
	skipShort(t, "a three-node NATS cluster and two server processes")
	nodes := runNATSCluster(t)
	args := []string{"-nats", clusterURLs(nodes), "-nats-replicas", "3", "-retry", "300ms", "-retry-spread", "200ms"}
	replicas := []*serverProcess{startProcess(t, args...), startProcess(t, args...)}
	const subscribers, publishes = 60, 300
	choices := [][]string{{"a"}, {"b"}, {"c"}, {"a", "b"}, {"a", "b", "c"}}
	ts := startTopicSubscribers(t, []string{replicas[0].url, replicas[1].url}, func() *http.Client { return &http.Client{} }, subscribers, choices)
	eventually(t, 30*time.Second, "every subscriber subscribed", func() bool {
		return subscribed(replicas[0].adminURL, replicas[1].adminURL) == subscribers
	})
	p := &publisher{admins: []string{replicas[0].adminURL, replicas[1].adminURL}}
	start := time.Now()
	// The node that holds the most connections, so that a replica loses its own.
	lost := nodes[0]
	for _, n := range nodes {
		if n.srv.NumClients() > lost.srv.NumClients() {
			lost = n
		}
	}
	p.run(t, 4, 50, []string{"a", "b", "c"}, func(i int) bool {
		switch i {
		case publishes / 3:
			lost.stop()
			t.Logf("node %s killed after %d publishes", lost.opts.ServerName, i)
		case 2 * publishes / 3:
			lost.start(t)
			t.Logf("node %s back after %d publishes", lost.opts.ServerName, i)
		}
		return i < publishes
	})
	gap := ts.check(t, p, 60*time.Second)
	t.Logf("%d publishes through 2 replicas in %s while one of 3 NATS nodes was down for a third of them, a replica's own; %d subscribers each got exactly its topics' events; longest gap a subscriber saw: %s; the slowest publish took %s until acknowledged",
		len(p.all), time.Since(start).Round(time.Millisecond), subscribers, gap.Round(time.Millisecond), p.slowest.Round(time.Millisecond))
	for i, r := range replicas {
		s := scrape(t, r.adminURL)
		t.Logf("replica %d: consumer restarts %v, reconnects %v, replays %v, streams ended unavailable %v",
			i, s["sse_nats_consumer_restarts_total"], s["sse_nats_reconnects_total"], s["sse_nats_replays_total"], s[`sse_streams_ended_total{reason="unavailable"}`])
	}
}

func TestNATS_RollingRestartBehindNginxAndALostNodeLoseNothing(t *testing.T) {
	skipShort(t, "nginx, a three-node NATS cluster and two server processes")
	nodes := runNATSCluster(t)
	args := []string{"-nats", clusterURLs(nodes), "-nats-replicas", "3", "-retry", "300ms", "-retry-spread", "500ms"}
	replicas := []*replica{startReplica(t, args...), startReplica(t, args...)}
	px := startNginx(t, []string{replicas[0].addr, replicas[1].addr})
	const subscribers = 150
	ts := startTopicSubscribers(t, []string{px.url}, px.client, subscribers, [][]string{{"a"}, {"b"}, {"c"}, {"a", "b", "c"}})
	admins := func() []string { return []string{replicas[0].proc.adminURL, replicas[1].proc.adminURL} }
	eventually(t, 30*time.Second, "every subscriber subscribed", func() bool { return subscribed(admins()...) == subscribers })

	p := &publisher{admins: admins()}
	var restarted atomic.Bool
	published := make(chan struct{})
	start := time.Now()
	go func() {
		defer close(published)
		p.run(t, 4, 50, []string{"a", "b", "c"}, func(i int) bool { return i < 100 || !restarted.Load() })
	}()
	// A test that fails early stops the publisher before it ends, and waits for it.
	t.Cleanup(func() {
		restarted.Store(true)
		<-published
	})
	time.Sleep(time.Second) // publishes before the first stop, too
	var lost *natsNode
	for i, r := range replicas {
		took := r.stop(t)
		other := replicas[1-i].proc.adminURL
		eventually(t, 30*time.Second, "every subscriber on the other replica", func() bool { return subscribed(other) == subscribers })
		t.Logf("replica %d exited %s after SIGTERM; every subscriber resumed on the other by %s",
			i, took.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
		r.start(t)
		p.setAdmin(i, r.proc.adminURL)
		if i == 0 {
			// The node that holds the most connections, so that a replica loses its own,
			// while the second replica restarts.
			lost = nodes[0]
			for _, n := range nodes {
				if n.srv.NumClients() > lost.srv.NumClients() {
					lost = n
				}
			}
			lost.stop()
			t.Logf("NATS node %s killed at %s", lost.opts.ServerName, time.Since(start).Round(time.Millisecond))
		}
	}
	time.Sleep(time.Second) // publishes with one node down and both replicas new
	lost.start(t)
	t.Logf("NATS node %s back at %s", lost.opts.ServerName, time.Since(start).Round(time.Millisecond))
	time.Sleep(time.Second)
	restarted.Store(true)
	<-published
	gap := ts.check(t, p, 60*time.Second)
	replayed, unavailable := 0.0, 0.0
	for _, r := range replicas {
		s := scrape(t, r.proc.adminURL)
		replayed += s["sse_hub_replayed_total"]
		unavailable += s[`sse_streams_ended_total{reason="unavailable"}`]
	}
	t.Logf("rolling restart of 2 replicas behind nginx and the loss of 1 of 3 NATS nodes: %d publishes at 50/s through whichever replica answered, %d subscribers over HTTP/2 each got exactly its topics' events, 0 lost, 0 duplicated; longest gap a subscriber saw: %s; the slowest publish took %s until acknowledged; events replayed by the restarted replicas: %v; streams told to come back later: %v",
		len(p.all), subscribers, gap.Round(time.Millisecond), p.slowest.Round(time.Millisecond), replayed, unavailable)
}

func TestDeployNATS_ClusterConfigRunsAndTheServiceAuthenticates(t *testing.T) {
	skipShort(t, "a three-node NATS cluster and a server process")
	const password = "s3cret-for-the-test"
	t.Setenv("SSE_DASHBOARD_NATS_PASSWORD", password)
	nodes := make([]*natsNode, 3)
	for i := range nodes {
		path := fmt.Sprintf("deploy/nats/nats-%d.conf", i+1)
		opts, err := server.ProcessConfigFile(path)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if want := fmt.Sprintf("nats-%d", i+1); opts.ServerName != want || !opts.JetStream || opts.Cluster.Name != "sse" ||
			len(opts.Routes) != 3 || len(opts.Users) != 1 || opts.Users[0].Username != "sse-dashboard" || opts.Users[0].Password != password {
			t.Fatalf("%s: server %q, JetStream %v, cluster %q, %d routes, users %v; want %s, JetStream, cluster sse, 3 routes, the user sse-dashboard with the password from the environment",
				path, opts.ServerName, opts.JetStream, opts.Cluster.Name, len(opts.Routes), opts.Users, want)
		}
		// The file as shipped, on this machine's loopback, in a directory of the test's own.
		opts.Host, opts.Port, opts.HTTPPort, opts.StoreDir = "127.0.0.1", freeLoopbackPort(t), 0, t.TempDir()
		opts.NoLog, opts.NoSigs = true, true
		nodes[i] = &natsNode{opts: opts}
	}
	startCluster(t, nodes, nats.UserInfo("sse-dashboard", password))

	// A wrong password stops the service at start, and no password is ever written out.
	var logs bytes.Buffer
	err := run(context.Background(), []string{"-addr", "127.0.0.1:0", "-admin-addr", "", "-nats", clusterURLs(nodes), "-nats-user", "sse-dashboard"},
		func(name string) string { return map[string]string{"NATS_PASSWORD": "wrong-password"}[name] }, &logs)
	if err == nil || !strings.Contains(err.Error(), "-nats") || strings.Contains(err.Error()+logs.String(), "wrong-password") {
		t.Errorf("run with a wrong NATS password = %v, logs %q; want an error naming -nats and the password nowhere", err, logs.String())
	}

	a := startProcessWith(t, processOptions{env: []string{"NATS_PASSWORD=" + password}},
		"-nats", clusterURLs(nodes), "-nats-replicas", "3", "-nats-user", "sse-dashboard")
	s, _ := openTopics(t, a.url, "", "deploy")
	eventually(t, 10*time.Second, "subscribed", func() bool { return metric(t, a.adminURL, "sse_hub_subscribers") == 1 })
	id := publishEvent(t, a.adminURL, "deploy", "", "stored three times")
	if got := s.nextEvent(t); got.id != id || got.data != "stored three times" {
		t.Errorf("got %+v, want %s", got, id)
	}
	if strings.Contains(a.logs.String(), password) {
		t.Errorf("the service logged its NATS password")
	}
}

func TestNATS_ReconnectStormQueuesReplaysAndEachGetsItsHistory(t *testing.T) {
	skipShort(t, "a NATS server, a server process and 300 streams")
	const clients, back, turns = 300, 100, 8
	node := runNATSServer(t)
	a := startProcess(t, "-nats", node.url(), "-nats-replays", strconv.Itoa(turns))
	js := connectJS(t, node.url())
	epoch := idEpoch(publishEvent(t, a.adminURL, "storm", "", "first"))
	var ids []string
	for i := range 2 * back {
		ids = append(ids, publishStraight(t, js, epoch, "storm", fmt.Sprintf("e%d", i)))
	}
	lastID := ids[back-1]
	want := make([]string, 0, back)
	for i, id := range ids[back:] {
		want = append(want, fmt.Sprintf("%s e%d", id, back+i))
	}
	eventually(t, 10*time.Second, "the replica's consumer has every event", func() bool {
		return metric(t, a.adminURL, "sse_nats_delivered_sequence") == float64(idSeq(t, ids[len(ids)-1]))
	})

	// The consumers on the stream, sampled while the storm lasts: the replica's own and the replays'.
	stream, err := js.Stream(context.Background(), "sse")
	if err != nil {
		t.Fatal(err)
	}
	sampling, sampled := make(chan struct{}), make(chan int)
	go func() {
		peak := 0
		for {
			select {
			case <-sampling:
				sampled <- peak
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			if info, err := stream.Info(ctx); err == nil {
				peak = max(peak, info.State.Consumers)
			}
			cancel()
			time.Sleep(5 * time.Millisecond)
		}
	}()

	start := time.Now()
	got := make([][]string, clients)
	var wg sync.WaitGroup
	transport := &http.Transport{MaxIdleConnsPerHost: -1}
	defer transport.CloseIdleConnections()
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest(http.MethodGet, topicURL(a.url, "storm"), nil)
			req.Header.Set("Accept", "text/event-stream")
			req.Header.Set("Last-Event-ID", lastID)
			resp, err := (&http.Client{Transport: transport, Timeout: 60 * time.Second}).Do(req)
			if err != nil {
				t.Errorf("client %d: %v", i, err)
				return
			}
			defer resp.Body.Close()
			readFrames(resp.Body, func(f frame) {
				if f.isEvent && len(got[i]) < back {
					got[i] = append(got[i], f.id+" "+f.data)
					if len(got[i]) == back {
						resp.Body.Close()
					}
				}
			})
		}()
	}
	wg.Wait()
	took := time.Since(start)
	close(sampling)
	peak := <-sampled
	for i := range clients {
		if !slices.Equal(got[i], want) {
			t.Fatalf("client %d resumed %d events back got %d events, want exactly the %d after its id (first difference at %d)",
				i, back, len(got[i]), back, firstDifference(got[i], want))
		}
	}
	s := scrape(t, a.adminURL)
	if peak > turns+1 {
		t.Errorf("%d consumers on the stream at once, want at most %d: the replica's own and -nats-replays %d", peak, turns+1, turns)
	}
	if s["sse_nats_replays_total"] != clients || s[`sse_streams_ended_total{reason="unavailable"}`] != 0 {
		t.Errorf("replays %v, streams told to come back %v; want %d and 0", s["sse_nats_replays_total"], s[`sse_streams_ended_total{reason="unavailable"}`], clients)
	}
	t.Logf("%d clients resuming %d events back at once, -nats-replays %d: all had their history in %s; consumers on the stream at the peak: %d; mean wait for a turn %s",
		clients, back, turns, took.Round(time.Millisecond), peak,
		time.Duration(s["sse_nats_replay_wait_seconds_sum"]/s["sse_nats_replay_wait_seconds_count"]*float64(time.Second)).Round(time.Millisecond))
}

func TestNATS_AnIdOfADeletedStreamResets(t *testing.T) {
	skipShort(t, "a NATS server and two server processes in turn")
	node := runNATSServer(t)
	a := startProcess(t, "-nats", node.url())
	old := publishEvent(t, a.adminURL, "t", "", "of the old stream")
	a.signal(t, syscall.SIGTERM, 10*time.Second)
	js := connectJS(t, node.url())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := js.DeleteStream(ctx, "sse"); err != nil {
		t.Fatal(err)
	}
	b := startProcess(t, "-nats", node.url())
	s, _ := openTopics(t, b.url, old, "t")
	if f := s.nextEvent(t); f.event != "reset" || f.data != `{"reason":"other_run"}` || idEpoch(f.id) == idEpoch(old) {
		t.Errorf("resuming from %s after the stream was made again opened with %+v, want a reset for other_run in a new epoch", old, f)
	}
}
