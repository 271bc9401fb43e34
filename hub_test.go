package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// publish posts body to the admin listener's /publish and returns the status and the body
// of the answer.
func publish(t testing.TB, adminURL, token string, body []byte) (int, string) {
	t.Helper()
	header := http.Header{}
	if token != "" {
		header.Set("Authorization", "Bearer "+token)
	}
	return publishWith(t, adminURL, header, body)
}

// publishWith is publish with the request headers of header, each value its own header line.
func publishWith(t testing.TB, adminURL string, header http.Header, body []byte) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, adminURL+"/publish", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("POST /publish: %v", err)
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("POST /publish: read the answer: %v", err)
	}
	return resp.StatusCode, string(answer)
}

// publishEvent publishes data to topic with the event type event (none if empty) and
// returns the id the event got, failing the test unless the answer is 200 with an id.
func publishEvent(t testing.TB, adminURL, topic, event string, data any) string {
	t.Helper()
	body, err := json.Marshal(map[string]any{"topic": topic, "data": data, "event": event})
	if err != nil {
		t.Fatal(err)
	}
	if event == "" {
		body, _ = json.Marshal(map[string]any{"topic": topic, "data": data})
	}
	status, answer := publish(t, adminURL, "", body)
	var got publishAnswer
	if status != http.StatusOK || json.Unmarshal([]byte(answer), &got) != nil || got.ID == "" {
		t.Fatalf("POST /publish %s = %d %q, want 200 with an id", body, status, answer)
	}
	return got.ID
}

// topicURL returns the URL of the stream of topics on the server at base.
func topicURL(base string, topics ...string) string {
	q := url.Values{"topic": topics}
	return base + "/sse?" + q.Encode()
}

// openTopics opens the stream of topics, with Last-Event-ID lastID unless it is empty, and
// returns it with the position its opening frame gave (the id a reconnect resumes after).
func openTopics(t *testing.T, base, lastID string, topics ...string) (*sseStream, frame) {
	t.Helper()
	header := http.Header{"Accept": {"text/event-stream"}}
	if lastID != "" {
		header.Set("Last-Event-ID", lastID)
	}
	s := openStreamAt(t, topicURL(base, topics...), header)
	opening := s.next(t)
	if opening.retry == "" || opening.isEvent {
		t.Fatalf("topic stream opened with %+v, want a retry: and no event", opening)
	}
	return s, opening
}

func TestHub_PublishReachesEverySubscriberOfItsTopics(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	a, _ := openTopics(t, srv.url, "", "orders/42")
	b, _ := openTopics(t, srv.url, "", "prices")
	both, _ := openTopics(t, srv.url, "", "prices", "orders/42")
	eventually(t, 5*time.Second, "3 subscribers", func() bool { return metric(t, srv.adminURL, "sse_hub_subscribers") == 3 })

	id1 := publishEvent(t, srv.adminURL, "orders/42", "shipped", map[string]any{"order": 42, "state": "shipped"})
	id2 := publishEvent(t, srv.adminURL, "prices", "", "EUR 1.08")

	want1 := frame{isEvent: true, id: id1, hasID: true, event: "shipped", data: `{"order":42,"state":"shipped"}`}
	want2 := frame{isEvent: true, id: id2, hasID: true, data: "EUR 1.08"}
	for _, tt := range []struct {
		name string
		s    *sseStream
		want []frame
	}{
		{"orders/42", a, []frame{want1}},
		{"prices", b, []frame{want2}},
		{"both", both, []frame{want1, want2}},
	} {
		for _, want := range tt.want {
			if got := tt.s.nextEvent(t); !equalFrames(got, want) {
				t.Errorf("subscriber of %s got %+v, want %+v", tt.name, got, want)
			}
		}
	}
	if seq1, seq2 := idSeq(t, id1), idSeq(t, id2); seq2 != seq1+1 {
		t.Errorf("ids %s then %s: want one sequence for every topic, the second the next number", id1, id2)
	}
	eventually(t, 5*time.Second, "4 deliveries counted", func() bool { return metric(t, srv.adminURL, "sse_hub_delivered_total") == 4 })
	if got := metric(t, srv.adminURL, "sse_hub_published_total"); got != 2 {
		t.Errorf("sse_hub_published_total = %v, want 2", got)
	}
}

// equalFrames compares what a client sees of two frames: id, type, data and whether it is an event.
func equalFrames(a, b frame) bool {
	return a.isEvent == b.isEvent && a.id == b.id && a.hasID == b.hasID && a.event == b.event && a.data == b.data
}

// idSeq returns the sequence number in a hub id, epoch-seq.
func idSeq(t testing.TB, id string) uint64 {
	t.Helper()
	_, number, ok := strings.Cut(id, "-")
	seq, err := strconv.ParseUint(number, 10, 64)
	if !ok || err != nil {
		t.Fatalf("id %q is not epoch-seq", id)
	}
	return seq
}

func TestPublish_RefusesBadBodiesAndKeepsServing(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	tests := []struct {
		name   string
		body   string
		status int
		reason string
	}{
		{"not JSON", `{"topic":`, 400, "not a JSON object"},
		{"an array", `[1,2]`, 400, "not a JSON object"},
		{"two values", `{"topic":"a","data":1} {}`, 400, "more than one JSON value"},
		{"unknown field", `{"topic":"a","data":1,"topics":["b"]}`, 400, `unknown field "topics"`},
		{"no data", `{"topic":"a"}`, 400, "data is missing"},
		{"no topic", `{"data":1}`, 400, "topic: a topic name is empty"},
		{"topic too long", `{"topic":"` + strings.Repeat("a", 129) + `","data":1}`, 400, "129 bytes long, over 128"},
		{"topic with a space", `{"topic":"a b","data":1}`, 400, `holds ' ' at byte 1`},
		{"topic with a line break", `{"topic":"a\nb","data":1}`, 400, `holds '\n' at byte 1`},
		{"event with a line break", `{"topic":"a","data":1,"event":"x\ny"}`, 400, "event: an event type holds"},
		{"reserved event", `{"topic":"a","data":1,"event":"reset"}`, 400, `"reset" is reserved`},
		{"event error", `{"topic":"a","data":1,"event":"error"}`, 400, `"error" is reserved`},
		{"reserved event in capitals", `{"topic":"a","data":1,"event":"RESET"}`, 400, `"RESET" is reserved`},
		{"reserved event in mixed case", `{"topic":"a","data":1,"event":"Auth-Expired"}`, 400, `"Auth-Expired" is reserved`},
		{"topic twice", `{"topic":"a","topic":"b","data":1}`, 400, `the key "topic" appears twice in one object`},
		{"topic twice, once escaped", `{"topic":"a","\u0074opic":"b","data":1}`, 400, `the key "topic" appears twice in one object`},
		{"data twice", `{"topic":"a","data":1,"data":2}`, 400, `the key "data" appears twice in one object`},
		{"a key twice inside data", `{"topic":"a","data":[{"x":{"y":1,"y":2}}]}`, 400, `the key "y" appears twice in one object`},
		{"topic in capitals", `{"Topic":"a","data":1}`, 400, `the key "Topic" differs from "topic" only in case`},
		{"data in capitals", `{"topic":"a","DATA":1}`, 400, `the key "DATA" differs from "data" only in case`},
		{"event in capitals", `{"topic":"a","data":1,"Event":"x"}`, 400, `the key "Event" differs from "event" only in case`},
		{"topic and its capitals", `{"topic":"a","TOPIC":"b","data":1}`, 400, `the key "TOPIC" differs from "topic" only in case`},
		{"invalid UTF-8", "{\"topic\":\"a\",\"data\":\"\xff\"}", 400, "not valid UTF-8"},
		{"too large", `{"topic":"a","data":"` + strings.Repeat("x", maxPublishBody) + `"}`, 413, "at most 65536 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, answer := publish(t, srv.adminURL, "", []byte(tt.body))
			if status != tt.status || !strings.Contains(answer, tt.reason) || strings.Count(strings.TrimSpace(answer), "\n") != 0 {
				t.Errorf("POST /publish %.80q = %d %q, want %d with a one-line reason holding %q", tt.body, status, answer, tt.status, tt.reason)
			}
		})
	}
	if got := metric(t, srv.adminURL, "sse_hub_published_total"); got != 0 {
		t.Errorf("sse_hub_published_total = %v after bad bodies only, want 0", got)
	}
	publishEvent(t, srv.adminURL, "a", "", 1) // still serving
}

func TestPublish_DeliversDataExactly(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	s, _ := openTopics(t, srv.url, "", "exact")
	eventually(t, 5*time.Second, "the subscriber", func() bool { return metric(t, srv.adminURL, "sse_hub_subscribers") == 1 })
	tests := []struct {
		name string
		data any    // as published
		want string // as every client gets it
	}{
		{"text", "order 42 shipped", "order 42 shipped"},
		{"LF", "a\nb", "a\nb"},
		{"CR", "a\rb", "a\nb"},
		{"CRLF", "a\r\nb", "a\nb"},
		{"line breaks at the ends", "\n\r\na\r", "\n\na\n"},
		{"NUL", "a\x00b", "a\x00b"},
		{"non-ASCII", "prix: 12 €, 日本", "prix: 12 €, 日本"},
		{"empty string", "", ""},
		{"object, compacted", map[string]any{"a": []int{1, 2}, "b": "x\ny"}, `{"a":[1,2],"b":"x\ny"}`},
		{"number", 3.5, "3.5"},
		{"null", nil, "null"},
	}
	for _, tt := range tests {
		id := publishEvent(t, srv.adminURL, "exact", "", tt.data)
		got := s.nextEvent(t)
		if got.id != id || got.data != tt.want {
			t.Errorf("%s: published %q, got id %q data %q, want id %q data %q", tt.name, tt.data, got.id, got.data, id, tt.want)
		}
	}
	// The JSON text of an object goes out compact, whatever spaces the publisher sent.
	status, answer := publish(t, srv.adminURL, "", []byte("{\"topic\":\"exact\",\"data\": { \"a\" :\n [ 1 , 2 ] } }"))
	if got := s.nextEvent(t); status != 200 || got.data != `{"a":[1,2]}` {
		t.Errorf("a spaced object = %d %q, delivered %q, want 200 and {\"a\":[1,2]}", status, answer, got.data)
	}
	// Inside data, keys are the publisher's own: names like the body's fields, in any case, go through.
	status, answer = publish(t, srv.adminURL, "", []byte(`{"topic":"exact","data":{"Topic":1,"TOPIC":2,"topic":3}}`))
	if got := s.nextEvent(t); status != 200 || got.data != `{"Topic":1,"TOPIC":2,"topic":3}` {
		t.Errorf("data with keys like topic = %d %q, delivered %q, want 200 and the object as sent", status, answer, got.data)
	}
}

func TestSubscribe_RefusesBadTopicsWithTheRule(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	many := make([]string, maxTopics+1)
	for i := range many {
		many[i] = "t" + strconv.Itoa(i)
	}
	tests := []struct {
		name, query, reason string
	}{
		{"empty", "topic=", "a topic name is empty"},
		{"too long", "topic=" + strings.Repeat("a", 129), "over 128"},
		{"bad byte", "topic=a%20b", `holds ' ' at byte 1`},
		{"too many", url.Values{"topic": many}.Encode(), "at most 32 topics"},
	}
	for _, tt := range tests {
		resp, body := srv.get(t, http.MethodGet, "/sse?"+tt.query, http.Header{"Accept": {"text/event-stream"}})
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, tt.reason) {
			t.Errorf("%s: GET /sse?%.60s = %d %q, want 400 saying %q", tt.name, tt.query, resp.StatusCode, body, tt.reason)
		}
	}
	// Exactly the limit is fine, and a topic named twice counts once.
	s, _ := openTopics(t, srv.url, "", append(many[:maxTopics], many[0])...)
	id := publishEvent(t, srv.adminURL, many[0], "", "once")
	if got := s.nextEvent(t); got.id != id {
		t.Errorf("got %+v, want the event %s once", got, id)
	}
}

func TestHub_ResumesExactlyAfterLastEventID(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	var ids []string
	for i := range 6 {
		topic := []string{"a", "b"}[i%2]
		ids = append(ids, publishEvent(t, srv.adminURL, topic, "", fmt.Sprintf("%s%d", topic, i)))
	}
	// After the first event: the a and b events that follow, in order, then live.
	s, opening := openTopics(t, srv.url, ids[0], "a", "b")
	if opening.id != ids[0] {
		t.Errorf("the opening frame sets id %q, want the client's own %q", opening.id, ids[0])
	}
	for _, want := range ids[1:] {
		if got := s.nextEvent(t); got.id != want {
			t.Fatalf("replay gave %+v, want id %s next", got, want)
		}
	}
	live := publishEvent(t, srv.adminURL, "a", "", "live")
	if got := s.nextEvent(t); got.id != live || got.data != "live" {
		t.Errorf("after the replay got %+v, want the live event %s", got, live)
	}
	// A subscriber of a alone, resuming after the third event, gets only a's that follow.
	s, _ = openTopics(t, srv.url, ids[2], "a")
	for _, want := range []string{ids[4], live} {
		if got := s.nextEvent(t); got.id != want {
			t.Fatalf("replay of a gave %+v, want id %s next", got, want)
		}
	}
	// ?lastEventID= resumes like the header, for a page that opens a new EventSource.
	s = openStreamAt(t, topicURL(srv.url, "b")+"&lastEventID="+url.QueryEscape(ids[3]), http.Header{"Accept": {"text/event-stream"}})
	s.next(t)
	if got := s.nextEvent(t); got.id != ids[5] {
		t.Errorf("?lastEventID=%s gave %+v, want %s", ids[3], got, ids[5])
	}
	eventually(t, 5*time.Second, "replays counted", func() bool { return metric(t, srv.adminURL, "sse_hub_replayed_total") == 5+2+1 })
}

func TestHub_ResetWhenItCannotResume(t *testing.T) {
	t.Parallel()
	srv := startServer(t, "-history", "3")
	var ids []string
	for i := range 10 {
		ids = append(ids, publishEvent(t, srv.adminURL, "t", "", i))
	}
	epoch, _, _ := strings.Cut(ids[0], "-")
	tests := []struct {
		name, lastID string
		reason       resetReason
	}{
		{"history gone", ids[2], resetHistoryGone},
		{"another run", "zzzzzzzz-9", resetOtherRun},
		{"the future", epoch + "-1000000", resetFuture},
		{"garbage", "not an id", resetInvalid},
		{"a random stream's id", "7", resetInvalid},
		{"a signed number", epoch + "-+5", resetInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, opening := openTopics(t, srv.url, tt.lastID, "t")
			reset := s.nextEvent(t)
			var why struct{ Reason string }
			if reset.event != "reset" || json.Unmarshal([]byte(reset.data), &why) != nil || why.Reason != string(tt.reason) {
				t.Fatalf("Last-Event-ID %q: first event %+v, want event reset with reason %s", tt.lastID, reset, tt.reason)
			}
			if reset.id != ids[9] || opening.hasID && opening.id != ids[9] {
				t.Errorf("reset sets id %q, want the hub's last %s, so a reconnect resumes from there", reset.id, ids[9])
			}
			live := publishEvent(t, srv.adminURL, "t", "", "live")
			if got := s.nextEvent(t); got.id != live {
				t.Errorf("after reset got %+v, want the live event %s", got, live)
			}
			ids[9] = live
		})
	}
	// The oldest id kept still resumes: ids[9..] are 3 events.
	for _, r := range resetReasons {
		if got := metric(t, srv.adminURL, `sse_hub_resets_total{reason="`+string(r)+`"}`); got < 1 {
			t.Errorf("resets counted for %s = %v, want at least 1", r, got)
		}
	}
}

func TestHub_HistoryForgetsEventsOlderThanItsAge(t *testing.T) {
	t.Parallel()
	srv := startServer(t, "-history-age", "300ms")
	first := publishEvent(t, srv.adminURL, "t", "", 1)
	publishEvent(t, srv.adminURL, "t", "", 2)
	eventually(t, 10*time.Second, "the history empty once its events are older than 300ms", func() bool {
		return metric(t, srv.adminURL, "sse_hub_history_events") == 0
	})
	s, _ := openTopics(t, srv.url, first, "t")
	if got := s.nextEvent(t); got.event != "reset" || !strings.Contains(got.data, string(resetHistoryGone)) {
		t.Errorf("resume after the history's age = %+v, want reset history_gone", got)
	}
}

func TestHub_SlowSubscriberIsEndedAndResumesWithoutLoss(t *testing.T) {
	skipShort(t, "a subscriber whose socket fills (5 s)")
	t.Parallel()
	srv := startServer(t, "-subscriber-queue", "8", "-send-buffer", "4096", "-write-timeout", "30s", "-retry", "10ms", "-retry-spread", "0")
	// The slow one: a raw connection with a small receive buffer that reads nothing.
	conn, err := net.Dial("tcp", strings.TrimPrefix(srv.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.(*net.TCPConn).SetReadBuffer(4096)
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n", strings.TrimPrefix(topicURL("", "t"), ""))
	fast, _ := openTopics(t, srv.url, "", "t")
	eventually(t, 5*time.Second, "2 subscribers", func() bool { return metric(t, srv.adminURL, "sse_hub_subscribers") == 2 })

	payload := strings.Repeat("x", 4000)
	var published []string
	var slowest time.Duration
	for i := 0; i < 200 && metric(t, srv.adminURL, `sse_streams_ended_total{reason="too_slow"}`) == 0; i++ {
		start := time.Now()
		published = append(published, publishEvent(t, srv.adminURL, "t", "", fmt.Sprintf("%d %s", i, payload)))
		slowest = max(slowest, time.Since(start))
		if got := fast.nextEvent(t); got.id != published[i] {
			t.Fatalf("the fast subscriber got %q, want %s: a slow one must not hold it back", got.id, published[i])
		}
	}
	eventually(t, 10*time.Second, "the slow subscriber ended as too_slow", func() bool {
		return metric(t, srv.adminURL, `sse_streams_ended_total{reason="too_slow"}`) == 1
	})
	t.Logf("%d publishes of 4 KB before the slow subscriber was ended; the slowest publish took %s", len(published), slowest)
	if slowest > 2*time.Second {
		t.Errorf("a publish took %s while a subscriber did not read: publishing must never wait for one", slowest)
	}
	// The slow client now reads what it was sent, then resumes from the last id it got.
	body, _ := io.ReadAll(conn)
	frames := parseFrames(body[bytes.Index(body, []byte("\r\n\r\n"))+4:])
	last := ""
	for _, f := range frames {
		if f.hasID {
			last = f.id
		}
	}
	if last == "" {
		t.Fatalf("the slow subscriber got no event before it was ended")
	}
	resumed, _ := openTopics(t, srv.url, last, "t")
	after := slices.Index(published, last)
	for _, want := range published[after+1:] {
		if got := resumed.nextEvent(t); got.id != want {
			t.Fatalf("the resumed slow subscriber got %+v, want %s: every event after %s", got, want, last)
		}
	}
}

// The size of TestHub_ThousandSubscribersCutAtRandomLoseNothing. Its 2.8 million deliveries
// take minutes of CPU under the race detector, so make test runs it whole without -race and
// smaller with it.
var (
	cutSubscribers = flag.Int("cut-subscribers", 1000, "subscribers in the random-cuts delivery test")
	cutPublishes   = flag.Int("cut-publishes", 5000, "publishes in the random-cuts delivery test, from 4 publishers")
)

func TestHub_ThousandSubscribersCutAtRandomLoseNothing(t *testing.T) {
	skipShort(t, "1,000 subscribers and 5,000 publishes")
	srv := startServer(t, "-retry", "20ms", "-retry-spread", "0", "-log-rate", "5")
	topics := []string{"a", "b", "c"}
	choices := [][]string{{"a"}, {"b"}, {"c"}, {"a", "b"}, {"b", "c"}, {"a", "b", "c"}}
	const publishers = 4
	subscribers, perPublisher := *cutSubscribers, *cutPublishes/publishers
	t.Logf("%d subscribers, %d publishes", subscribers, perPublisher*publishers)

	type received struct {
		mu     sync.Mutex
		topics []string
		ids    []string
		datas  []string
		conn   atomic.Pointer[net.Conn]
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	subs := make([]*received, subscribers)
	var wg sync.WaitGroup
	for i := range subs {
		r := &received{topics: choices[i%len(choices)]}
		subs[i] = r
		transport := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err == nil {
				r.conn.Store(&c)
			}
			return c, err
		}}
		c := newSSEClient(topicURL(srv.url, r.topics...), &http.Client{Transport: transport})
		c.onEvent = func(ev sseEvent) {
			r.mu.Lock()
			r.ids = append(r.ids, ev.id)
			r.datas = append(r.datas, ev.data)
			r.mu.Unlock()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.run(ctx); err != nil {
				t.Errorf("subscriber %d: %v", i, err)
			}
		}()
	}
	eventually(t, 60*time.Second, "every subscriber subscribed", func() bool {
		return metric(t, srv.adminURL, "sse_hub_subscribers") == float64(subscribers)
	})

	// Every subscriber is cut 1 to 3 times while the publishers run.
	var cuts sync.WaitGroup
	for _, r := range subs {
		cuts.Add(1)
		go func() {
			defer cuts.Done()
			for range 1 + rand.IntN(3) {
				time.Sleep(rand.N(3 * time.Second))
				if c := r.conn.Load(); c != nil {
					(*c).Close()
				}
			}
		}()
	}
	type published struct {
		seq   uint64
		topic string
		id    string
		data  string
	}
	var mu sync.Mutex
	var all []published
	var pubs sync.WaitGroup
	for p := range publishers {
		pubs.Add(1)
		go func() {
			defer pubs.Done()
			for n := range perPublisher {
				topic := topics[rand.IntN(len(topics))]
				data := fmt.Sprintf("p%d-%d", p, n)
				id := publishEvent(t, srv.adminURL, topic, "", data)
				mu.Lock()
				all = append(all, published{idSeq(t, id), topic, id, data})
				mu.Unlock()
			}
		}()
	}
	pubs.Wait()
	cuts.Wait()
	sort.Slice(all, func(i, j int) bool { return all[i].seq < all[j].seq })

	want := func(r *received) (ids, datas []string) {
		for _, p := range all {
			if slices.Contains(r.topics, p.topic) {
				ids, datas = append(ids, p.id), append(datas, p.data)
			}
		}
		return ids, datas
	}
	eventually(t, 120*time.Second, "every subscriber has as many events as were published to its topics", func() bool {
		for _, r := range subs {
			ids, _ := want(r)
			r.mu.Lock()
			n := len(r.ids)
			r.mu.Unlock()
			if n < len(ids) {
				return false
			}
		}
		return true
	})
	cancel()
	wg.Wait()
	for i, r := range subs {
		ids, datas := want(r)
		if !slices.Equal(r.ids, ids) || !slices.Equal(r.datas, datas) {
			t.Errorf("subscriber %d of %v got %d events, want exactly the %d published to its topics in order (first difference at %d)",
				i, r.topics, len(r.ids), len(ids), firstDifference(r.ids, ids))
		}
	}
	ended := scrape(t, srv.adminURL)
	t.Logf("%d publishes; streams ended: client_gone %v, too_slow %v; replayed %v; resets %v",
		len(all), ended[`sse_streams_ended_total{reason="client_gone"}`], ended[`sse_streams_ended_total{reason="too_slow"}`],
		ended["sse_hub_replayed_total"], ended[`sse_hub_resets_total{reason="history_gone"}`])
	if got := ended["sse_hub_replayed_total"]; got == 0 {
		t.Errorf("no event was replayed: the cuts did not test resuming")
	}
}

// firstDifference returns the first index where a and b differ, or the shorter length.
func firstDifference[T comparable](a, b []T) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func TestPage_TopicChartHasEveryValueAcrossCuts(t *testing.T) {
	// The server ends every stream after about a second; the browser's own EventSource comes
	// back after 300ms with its Last-Event-ID, and the values published meanwhile arrive
	// from history.
	srv := startServer(t, "-max-lifetime", "1s", "-retry", "300ms", "-retry-spread", "0")
	b := newBrowser(t)
	b.navigate(t, srv.url+"/?topic=chart")
	b.waitForDashboard(t, "the topic stream open", `d.state === "open"`)
	eventually(t, 5*time.Second, "the page subscribed", func() bool { return metric(t, srv.adminURL, "sse_hub_subscribers") == 1 })

	var want []string
	for i := range 40 {
		value := 10 + 20*i
		publishEvent(t, srv.adminURL, "chart", "", map[string]int{"User": value})
		want = append(want, strconv.Itoa(value))
		time.Sleep(100 * time.Millisecond)
	}
	joined := strings.Join(want, " ")
	b.waitFor(t, pageWait, "every published value in the chart", `document.getElementById("chart").dataset.values === `+strconv.Quote(joined))
	d := b.readDashboard(t)
	if d.Reconnects < 2 || d.Events != len(want) {
		t.Errorf("the page saw %d reconnects and %d events, want at least 2 cuts and exactly %d events", d.Reconnects, d.Events, len(want))
	}
	if replayed := metric(t, srv.adminURL, "sse_hub_replayed_total"); replayed == 0 {
		t.Errorf("sse_hub_replayed_total = 0: no value came from history, so the cuts tested nothing")
	}
}

func TestPage_TopicResetClearsTheChartAndSaysSo(t *testing.T) {
	srv := startServer(t, "-history", "2", "-retry", "2s", "-retry-spread", "0", "-max-lifetime", "1s")
	b := newBrowser(t)
	b.navigate(t, srv.url+"/?topic=chart")
	b.waitForDashboard(t, "the topic stream open", `d.state === "open"`)
	eventually(t, 5*time.Second, "the page subscribed", func() bool { return metric(t, srv.adminURL, "sse_hub_subscribers") == 1 })
	publishEvent(t, srv.adminURL, "chart", "", map[string]int{"User": 1})
	b.waitForDashboard(t, "the first value", `d.points === 1`)
	// The stream ends within a second; while the page waits 2s to come back, more events are
	// published than the history keeps.
	eventually(t, 5*time.Second, "the stream cut", func() bool { return metric(t, srv.adminURL, "sse_hub_subscribers") == 0 })
	for i := range 5 {
		publishEvent(t, srv.adminURL, "chart", "", map[string]int{"User": 100 + i})
	}
	d := b.waitForDashboard(t, "the reset shown", `d.srcNote === "Missed events are gone; chart restarted"`)
	if d.Points != 0 {
		t.Errorf("after reset the chart has %d points, want 0", d.Points)
	}
	publishEvent(t, srv.adminURL, "chart", "", map[string]int{"User": 500})
	b.waitForDashboard(t, "the live value after the reset", `d.points === 1 && d.value === "500"`)
}

func TestEventSourcePackage_ResumesTopicsWithoutLoss(t *testing.T) {
	skipShort(t, "node and the npm eventsource package")
	srv := startServer(t, "-max-lifetime", "1s", "-retry", "300ms", "-retry-spread", "0")
	const events = 30
	client := startNPMClient(t, topicURL(srv.url, "orders/1", "orders/2"), events)
	eventually(t, 10*time.Second, "the client subscribed", func() bool { return metric(t, srv.adminURL, "sse_hub_subscribers") == 1 })

	var want []string
	for i := range events {
		topic := []string{"orders/1", "orders/2"}[i%2]
		data := fmt.Sprintf("event %d\non two lines", i)
		want = append(want, fmt.Sprintf(`{"id":%q,"data":%q}`, publishEvent(t, srv.adminURL, topic, "", data), data))
		publishEvent(t, srv.adminURL, "orders/3", "", "not subscribed")
		time.Sleep(100 * time.Millisecond)
	}
	client.expect(t, want)
}

// npmClient is testdata/eventsource/client.mjs, the npm eventsource package reading one
// stream in a node process of its own.
type npmClient struct {
	out    *logBuffer
	exited chan error
	events int
}

// startNPMClient installs the npm eventsource package in a temporary directory and starts
// client.mjs on url, with env added to its environment; it prints each message as a JSON
// line until it has events of them, then exits.
func startNPMClient(t *testing.T, url string, events int, env ...string) *npmClient {
	t.Helper()
	node := requireTool(t, "", "node", "nodejs")
	dir := npmInstall(t, "eventsource", "package.json", "package-lock.json", "client.mjs")
	cmd := exec.Command(node, "client.mjs", url, strconv.Itoa(events))
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	c := &npmClient{out: newLogBuffer(), exited: make(chan error, 1), events: events}
	cmd.Stdout, cmd.Stderr = c.out, c.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { c.exited <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill() })
	return c
}

// npmInstall copies files from testdata/name into a temporary directory, installs the npm
// packages its package-lock.json names there, and returns the directory.
func npmInstall(t *testing.T, name string, files ...string) string {
	t.Helper()
	npm := requireTool(t, "", "npm", "npm")
	dir := t.TempDir()
	for _, file := range files {
		body, err := os.ReadFile(filepath.Join("testdata", name, file))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, file), body, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	install := exec.Command(npm, "ci", "--no-audit", "--no-fund", "--loglevel=error")
	install.Dir = dir
	if out, err := install.CombinedOutput(); err != nil {
		t.Fatalf("npm ci in %s: %v\n%s", dir, err, out)
	}
	return dir
}

// expect waits for the client to exit after its events, then fails the test unless it printed
// exactly want, {"id","data"} lines, and opened the stream at least twice: the server ends
// streams in these tests, so a client that never reconnected tested nothing.
func (c *npmClient) expect(t *testing.T, want []string) {
	t.Helper()
	got, opens := c.wait(t)
	if !slices.Equal(got, want) {
		t.Errorf("the eventsource package printed\n%s\nwant exactly\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if opens < 2 {
		t.Errorf("the client opened the stream %d times, want at least 2: the reconnects tested nothing", opens)
	}
}

// wait waits, up to 30s, for the client to exit after its events, and returns the messages
// it printed and how many times it opened the stream.
func (c *npmClient) wait(t *testing.T) (messages []string, opens int) {
	t.Helper()
	select {
	case err := <-c.exited:
		if err != nil {
			t.Fatalf("node client.mjs: %v\n%s", err, c.out.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the client did not get %d events within 30s; it printed:\n%s", c.events, c.out.String())
	}
	for line := range strings.Lines(c.out.String()) {
		switch line = strings.TrimSpace(line); {
		case line == `{"open":true}`:
			opens++
		case line != "":
			messages = append(messages, line)
		}
	}
	return messages, opens
}

func FuzzParsePublish(f *testing.F) {
	for _, seed := range []string{
		`{"topic":"orders/42","data":{"state":"shipped"},"event":"shipped"}`,
		`{"topic":"a","data":"line\r\nbreaks\rand\nNUL\u0000"}`,
		`{"topic":"a","data":null}`,
		`{"topic":"a b","data":1}`,
		`{"topic":"a","data":[1, 2 ,{"x" : "\ud800"}],"event":"reset"}`,
		"{\"topic\":\"a\",\"data\":\"\xff\"}",
		`{"topic":"a","data":1}{}`,
		`{"topic":"a","topic":"b","data":1}`,
		`{"topic":"a","\u0074opic":"b","data":1}`,
		`{"Topic":"a","data":1,"EVENT":"x"}`,
		`{"topic":"a","data":{"x":[{"y":1,"y":2}],"Topic":3}}`,
		`{"topic":"a","data":1,"event":"ReSeT"}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		topic, event, data, err := parsePublish(body)
		if err != nil {
			return
		}
		if checkTopic(topic) != nil || checkEventName(event) != nil {
			t.Fatalf("parsePublish(%q) accepted topic %q event %q", body, topic, event)
		}
		for _, reserved := range reservedEvents {
			if strings.EqualFold(event, reserved) {
				t.Fatalf("parsePublish(%q) accepted event %q, which is %q in some case", body, event, reserved)
			}
		}
		// One reading only: each key of the body exactly as publishRequest names it, and as
		// many tokens as the body decoded and encoded again, which keeps one of two equal keys.
		var members map[string]json.RawMessage
		if json.Unmarshal(body, &members) != nil {
			t.Fatalf("parsePublish(%q) accepted a body that is not one JSON object", body)
		}
		for key := range members {
			if key != "topic" && key != "data" && key != "event" {
				t.Fatalf("parsePublish(%q) accepted the key %q", body, key)
			}
		}
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.UseNumber()
		var tree any
		if err := dec.Decode(&tree); err != nil {
			t.Fatal(err)
		}
		again, err := json.Marshal(tree)
		if err != nil {
			t.Fatal(err)
		}
		if n, m := countTokens(t, body), countTokens(t, again); n != m {
			t.Fatalf("parsePublish(%q) accepted a body of %d tokens that decodes to %d: a key given twice", body, n, m)
		}
		// The same body with a topic put in front of it names the topic twice, or in two cases.
		rest := bytes.TrimLeft(body, " \t\r\n")[1:]
		for _, front := range []string{`{"topic":"z",`, `{"TOPIC":"z",`} {
			if _, _, _, err := parsePublish(append([]byte(front), rest...)); err == nil {
				t.Fatalf("parsePublish(%q) accepted %q in front of %q", body, front, rest)
			}
		}
		var req publishRequest
		if json.Unmarshal(body, &req) != nil {
			t.Fatalf("parsePublish(%q) accepted a body encoding/json refuses", body)
		}
		var text string
		var compact bytes.Buffer
		if req.Data[0] == '"' {
			if json.Unmarshal(req.Data, &text) != nil || string(data) != text {
				t.Fatalf("parsePublish(%q) data = %q, want the string itself %q", body, data, text)
			}
		} else if json.Compact(&compact, req.Data) != nil || !bytes.Equal(data, compact.Bytes()) {
			t.Fatalf("parsePublish(%q) data = %q, want the compact JSON value %q", body, data, compact.Bytes())
		}
		// Framed and parsed back, the data is what was published, line breaks as LF.
		frames := parseFrames(appendNamedEvent(nil, []byte("e-1"), event, data))
		want := strings.NewReplacer("\r\n", "\n", "\r", "\n").Replace(string(data))
		if len(frames) != 1 || frames[0].data != want || frames[0].event != event || frames[0].id != "e-1" {
			t.Fatalf("publish %q framed and parsed = %+v, want one event with data %q", body, frames, want)
		}
	})
}

// countTokens returns how many tokens encoding/json's Decoder reads in text: delimiters,
// keys and values.
func countTokens(t *testing.T, text []byte) int {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(text))
	dec.UseNumber()
	n := 0
	for {
		_, err := dec.Token()
		if err == io.EOF {
			return n
		}
		if err != nil {
			t.Fatalf("tokens of %q: %v", text, err)
		}
		n++
	}
}

func TestPublish_NeedsTheTokenWhenOneIsSet(t *testing.T) {
	t.Parallel()
	srv := startServer(t, "-publish-token", "s3cret")
	body := []byte(`{"topic":"a","data":1}`)
	for _, tt := range []struct {
		name, token string
		want        int
	}{
		{"no token", "", http.StatusUnauthorized},
		{"wrong token", "s3cre", http.StatusUnauthorized},
		{"longer token", "s3crets", http.StatusUnauthorized},
		{"the token", "s3cret", http.StatusOK},
	} {
		status, answer := publish(t, srv.adminURL, tt.token, body)
		if status != tt.want || strings.Contains(answer, "s3cret") {
			t.Errorf("%s: POST /publish = %d %q, want %d and no token in the answer", tt.name, status, answer, tt.want)
		}
	}
	resp, err := http.Get(srv.adminURL + "/publish")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed || !strings.Contains(resp.Header.Get("Allow"), "POST") {
		t.Errorf("GET /publish = %d Allow %q, want 405 naming POST", resp.StatusCode, resp.Header.Get("Allow"))
	}
	if got := metric(t, srv.adminURL, "sse_hub_published_total"); got != 1 {
		t.Errorf("sse_hub_published_total = %v, want 1: only the request with the token publishes", got)
	}
}

func TestPublish_RefusesTwoAuthorizationHeaders(t *testing.T) {
	t.Parallel()
	srv := startServerEnv(t, authEnv, "-publish-token", "pub-s3cret")
	open := startServer(t)
	jwtA := hs256(t, grant(time.Hour, nil, []string{"a"}))
	body := []byte(`{"topic":"a","data":1}`)
	for _, tt := range []struct {
		name   string
		server *testServer
		values []string
	}{
		{"the token twice", srv, []string{"Bearer pub-s3cret", "Bearer pub-s3cret"}},
		{"the token, then a wrong one", srv, []string{"Bearer pub-s3cret", "Bearer wrong"}},
		{"a wrong one, then the token", srv, []string{"Bearer wrong", "Bearer pub-s3cret"}},
		{"a JWT, then the token", srv, []string{"Bearer " + jwtA, "Bearer pub-s3cret"}},
		{"a JWT, then garbage", srv, []string{"Bearer " + jwtA, "Bearer garbage"}},
		{"two headers where none is needed", open, []string{"Bearer x", "Bearer y"}},
	} {
		status, answer := publishWith(t, tt.server.adminURL, http.Header{"Authorization": tt.values}, body)
		if status != http.StatusBadRequest || !strings.Contains(answer, "more than one Authorization header") ||
			strings.Count(strings.TrimSpace(answer), "\n") != 0 || strings.Contains(answer, "pub-s3cret") {
			t.Errorf("%s: POST /publish = %d %q, want 400 with a one-line reason saying more than one Authorization header", tt.name, status, answer)
		}
	}
	for _, s := range []*testServer{srv, open} {
		if got := metric(t, s.adminURL, "sse_hub_published_total"); got != 0 {
			t.Errorf("sse_hub_published_total = %v after requests with two Authorization headers, want 0", got)
		}
	}
	// One header is still enough, either credential.
	publishAs(t, srv.adminURL, "pub-s3cret", "a", 1)
	publishAs(t, srv.adminURL, jwtA, "a", 2)
}
