package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// tcpRelay forwards connections from a loopback port to target, each direction with a
// delay, and can cut every connection and refuse new ones until it is restored: the network
// between a replica and NATS, made slow or broken on purpose.
type tcpRelay struct {
	ln     net.Listener
	target string
	delay  time.Duration

	mu    sync.Mutex
	cut   bool
	conns map[net.Conn]struct{}
}

// startRelay starts a relay to target on a free loopback port and closes it when the test ends.
func startRelay(t *testing.T, target string, delay time.Duration) *tcpRelay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &tcpRelay{ln: ln, target: target, delay: delay, conns: make(map[net.Conn]struct{})}
	go r.serve()
	t.Cleanup(func() {
		ln.Close()
		r.sever(true)
	})
	return r
}

// url returns the relay's address as a NATS URL.
func (r *tcpRelay) url() string {
	return "nats://" + r.ln.Addr().String()
}

// serve accepts connections until the listener closes; while cut, it closes each at once.
func (r *tcpRelay) serve() {
	for {
		down, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.mu.Lock()
		if r.cut {
			r.mu.Unlock()
			down.Close()
			continue
		}
		up, err := net.Dial("tcp", r.target)
		if err != nil {
			r.mu.Unlock()
			down.Close()
			continue
		}
		r.conns[down], r.conns[up] = struct{}{}, struct{}{}
		r.mu.Unlock()
		go r.pipe(down, up)
		go r.pipe(up, down)
	}
}

// pipe copies from src to dst, each chunk delivered delay after it was read, until either
// side fails; then it closes both.
func (r *tcpRelay) pipe(src, dst net.Conn) {
	defer src.Close()
	defer dst.Close()
	type chunk struct {
		at   time.Time
		data []byte
	}
	chunks := make(chan chunk, 4096)
	go func() {
		defer close(chunks)
		for {
			buf := make([]byte, 32<<10)
			n, err := src.Read(buf)
			if n > 0 {
				chunks <- chunk{time.Now(), buf[:n]}
			}
			if err != nil {
				return
			}
		}
	}()
	for c := range chunks {
		time.Sleep(time.Until(c.at.Add(r.delay)))
		if _, err := dst.Write(c.data); err != nil {
			return
		}
	}
}

// sever closes every connection through the relay and, if refuse, refuses new ones until
// restore.
func (r *tcpRelay) sever(refuse bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cut = refuse
	for c := range r.conns {
		c.Close()
		delete(r.conns, c)
	}
}

// restore lets connections through again.
func (r *tcpRelay) restore() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cut = false
}

// publishKeyedAs posts data to topic on /publish with a bearer token and an idempotency key
// (each left out when empty) and returns the status and the id, or the answer of a refusal.
func publishKeyedAs(t *testing.T, adminURL, token, key, topic, data string) (int, string) {
	t.Helper()
	status, answer, _ := postPublish(t, adminURL, token, key, fmt.Appendf(nil, `{"topic":%q,"data":%q}`, topic, data))
	var got publishAnswer
	if status == http.StatusOK && json.Unmarshal([]byte(answer), &got) == nil {
		return status, got.ID
	}
	return status, strings.TrimSpace(answer)
}

// publisherToken returns a token of subject that may publish to topics a and b.
func publisherToken(t *testing.T, subject string) string {
	claims := grant(time.Hour, []string{"a", "b"}, []string{"a", "b"})
	claims.Subject = subject
	return hs256(t, claims)
}

func TestBroker_IdempotencyKeyIsScopedToItsPublisherAndTopic(t *testing.T) {
	for _, store := range []string{"memory", "nats"} {
		t.Run(store, func(t *testing.T) {
			var args []string
			if store == "nats" {
				skipShort(t, "a NATS server")
				args = []string{"-nats", runNATSServer(t).url()}
			}
			srv := startServerEnv(t, authEnv, args...)
			reader := hs256(t, grant(time.Hour, []string{"a", "b"}, nil))
			s := openStreamAt(t, topicURL(srv.url, "a", "b"), http.Header{"Accept": {"text/event-stream"}, "Authorization": {"Bearer " + reader}})
			s.next(t) // the opening
			alice, bob := publisherToken(t, "alice"), publisherToken(t, "bob")

			var want []string
			send := func(token, topic, data string, status int) string {
				t.Helper()
				code, answer := publishKeyedAs(t, srv.adminURL, token, "order-7", topic, data)
				if code != status {
					t.Fatalf("publish %s to %s with the key order-7: %d %s, want %d", data, topic, code, answer, status)
				}
				return answer
			}
			first := send(alice, "a", "1", http.StatusOK)
			want = append(want, first+" 1")
			if again := send(alice, "a", "1", http.StatusOK); again != first {
				t.Errorf("a retry with the same key, publisher, topic and data answered %s, want the first publish's %s", again, first)
			}
			want = append(want, send(alice, "b", "2", http.StatusOK)+" 2") // another topic: another event
			want = append(want, send(bob, "a", "3", http.StatusOK)+" 3")   // another publisher: another event
			if answer := send(alice, "a", "4", http.StatusUnprocessableEntity); !strings.Contains(answer, "same topic, type and data") {
				t.Errorf("a key reused with other data answered %q, want the reason", answer)
			}
			code, marker := publishKeyedAs(t, srv.adminURL, alice, "", "a", "5")
			if code != http.StatusOK {
				t.Fatalf("publish without a key: %d %s", code, marker)
			}
			want = append(want, marker+" 5")

			var got []string
			for len(got) < len(want) {
				f := s.next(t)
				got = append(got, f.id+" "+f.data)
			}
			if !slices.Equal(got, want) {
				t.Errorf("the subscriber got %q, want exactly %q: each key stored once per publisher and topic, the refused reuse never", got, want)
			}
		})
	}
}

func TestNATS_AClientAheadOfAReplicaNeverGetsAnEventTwice(t *testing.T) {
	skipShort(t, "a NATS server and two replicas")
	n := runNATSServer(t)
	ahead := startServer(t, "-nats", n.url(), "-retry", "100ms")
	// The other replica hears from NATS 150 ms late each way, so its fan-out trails; its
	// queues hold what comes while a client's Last-Event-ID is checked.
	behind := startServer(t, "-nats", startRelay(t, n.url()[len("nats://"):], 150*time.Millisecond).url(),
		"-retry", "100ms", "-subscriber-queue", "1024")

	s, _ := openTopics(t, ahead.url, "", "t")
	stop := make(chan struct{})
	published := make(chan []string, 1)
	var newest atomic.Uint64 // the sequence number of the last event published
	go func() {
		var lines []string
		defer func() { published <- lines }()
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			data := fmt.Sprint(i)
			id := publishEvent(t, ahead.adminURL, "t", "", data)
			lines = append(lines, id+" "+data)
			newest.Store(idSeq(t, id))
		}
	}()
	// Once the replica behind delivers, 150 ms late, it is about 15 events behind.
	eventually(t, 20*time.Second, "the replica behind delivering", func() bool {
		return metric(t, behind.adminURL, "sse_nats_delivered_sequence") > 0
	})
	// The client reads up to the newest event: ahead of the replica behind.
	last := s.next(t)
	for idSeq(t, last.id) < newest.Load() {
		last = s.next(t)
	}
	s.close()
	// Straight on to the replica behind, as a client whose replica went away would.
	moved, opening := openTopics(t, behind.url, last.id, "t")
	if opening.id != last.id {
		t.Errorf("the replica behind opened at %q, want the client's %q", opening.id, last.id)
	}
	var got []string
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		f := moved.next(t)
		got = append(got, f.id+" "+f.data)
	}
	close(stop)
	lines := <-published
	at := slices.Index(lines, last.id+" "+last.data)
	if at < 0 {
		t.Fatalf("the last event read, %s, is not among those published", last.id)
	}
	want := lines[at+1:]
	if len(got) > len(want) || !slices.Equal(got, want[:len(got)]) {
		t.Errorf("after %s the replica behind sent %d events, want the %d published after it, each once, in order; first difference at %d",
			last.id, len(got), len(want), firstDifference(got, want))
	}
	if len(got) < 50 {
		t.Errorf("the replica behind sent %d events in 3 s, want at least 50 of the %d published", len(got), len(want))
	}
}

func TestNATS_AReplicaThatMissedRemovedEventsTellsItsClientsWithAReset(t *testing.T) {
	skipShort(t, "a NATS server and two replicas")
	n := runNATSServer(t)
	args := []string{"-history", "20", "-retry", "100ms", "-retry-spread", "0"}
	publisher := startServer(t, append(args, "-nats", n.url())...)
	relay := startRelay(t, n.url()[len("nats://"):], 0)
	cutOff := startServer(t, append(args, "-nats", relay.url())...)

	var mu sync.Mutex
	var got []string // "id event data" of each event the client on the cut-off replica gets
	c := newSSEClient(topicURL(cutOff.url, "t"), &http.Client{})
	c.onEvent = func(ev sseEvent) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, ev.id+" "+ev.typ+" "+ev.data)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.run(ctx)
	}()
	t.Cleanup(func() { cancel(); <-done })
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(got)
	}
	eventually(t, 10*time.Second, "the client subscribed", func() bool { return metric(t, cutOff.adminURL, "sse_hub_subscribers") == 1 })

	var want []string
	publish := func(n int) {
		for i := range n {
			data := fmt.Sprint(len(want) + i)
			want = append(want, publishEvent(t, publisher.adminURL, "t", "", data)+" message "+data)
		}
	}
	publish(5)
	eventually(t, 10*time.Second, "the first 5 events", func() bool { return count() == 5 })
	relay.sever(true)
	eventually(t, 10*time.Second, "the replica lost NATS", func() bool { return metric(t, cutOff.adminURL, "sse_nats_connected") == 0 })
	publish(50) // the stream keeps the last 20: events 6 to 35 are gone
	relay.restore()
	eventually(t, 20*time.Second, "the replica resynced its clients", func() bool { return metric(t, cutOff.adminURL, "sse_nats_resyncs_total") >= 1 })
	eventually(t, 20*time.Second, "the client back", func() bool { return metric(t, cutOff.adminURL, "sse_hub_subscribers") == 1 })
	if ended := metric(t, cutOff.adminURL, `sse_streams_ended_total{reason="resync"}`); ended != 1 {
		t.Errorf("sse_streams_ended_total{reason=\"resync\"} = %v, want 1: the client's stream", ended)
	}
	publish(5)
	eventually(t, 20*time.Second, "the last event", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) > 0 && got[len(got)-1] == want[len(want)-1]
	})

	mu.Lock()
	defer mu.Unlock()
	if len(got) < 7 || !slices.Equal(got[:5], want[:5]) {
		t.Fatalf("the client got %q, want the first 5 published, then a reset", got)
	}
	reset := got[5]
	resetID, rest, _ := strings.Cut(reset, " ")
	if rest != `reset {"reason":"history_gone"}` {
		t.Fatalf("after the first 5 events the client got %q, want a reset with history_gone: events 6 to 35 are gone", reset)
	}
	after := idSeq(t, resetID)
	var wantAfter []string
	for _, line := range want {
		id, _, _ := strings.Cut(line, " ")
		if idSeq(t, id) > after {
			wantAfter = append(wantAfter, line)
		}
	}
	if !slices.Equal(got[6:], wantAfter) {
		t.Errorf("after the reset at %s the client got %q, want exactly every event published after it: %q", resetID, got[6:], wantAfter)
	}
	if after > idSeq(t, strings.Fields(want[len(want)-5])[0]) {
		t.Errorf("the reset stands at %s, after the events published once the replica was back", resetID)
	}
}
