package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
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
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		t.Fatalf("NATS server %s not ready within 10s", n.opts.ServerName)
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

// connectJS connects a plain NATS client to urls, as an application that publishes straight
// to NATS would, and returns its JetStream context.
func connectJS(t *testing.T, urls string) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(urls, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
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
	req, err := http.NewRequest(http.MethodPost, adminURL+"/publish", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
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
	return resp.StatusCode, string(answer), resp.Header.Get("Retry-After")
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
