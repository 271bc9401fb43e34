package main

// The topic hub: an event published once reaches every subscriber of its topic, and a
// bounded history lets a client that reconnects with its Last-Event-ID get exactly what it
// missed. It lives in the process: no other server is needed.

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Limits of a subscription and of a topic name.
const (
	maxTopics      = 32  // topics one stream may carry
	maxTopicLength = 128 // bytes in a topic name
)

// topicAlphabet lists the bytes a topic name may hold besides ASCII letters and digits.
const topicAlphabet = "._:/-"

// checkTopic says which rule a topic name breaks, or returns nil: 1 to maxTopicLength bytes
// of ASCII letters, digits and the bytes of topicAlphabet.
func checkTopic(name string) error {
	if name == "" {
		return errors.New("a topic name is empty")
	}
	return checkName("a topic name", name, maxTopicLength)
}

// checkName says which rule name (what it is, with its article) breaks, or returns nil: at most maxLength bytes of
// ASCII letters, digits and the bytes of topicAlphabet, which need no quoting in a URL, an
// SSE field or a log line.
func checkName(what, name string, maxLength int) error {
	if len(name) > maxLength {
		return fmt.Errorf("%s is %d bytes long, over %d", what, len(name), maxLength)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; !isAlphanumeric(c) && strings.IndexByte(topicAlphabet, c) < 0 {
			return fmt.Errorf("%s holds %q at byte %d: only A-Z a-z 0-9 and %s are allowed", what, c, i, topicAlphabet)
		}
	}
	return nil
}

// parseTopics checks the topics a request names and returns them without duplicates, as
// copies: under the adaptor the request's strings point into buffers that fasthttp reuses.
func parseTopics(names []string) ([]string, error) {
	topics := make([]string, 0, len(names))
	for _, name := range names {
		if err := checkTopic(name); err != nil {
			return nil, err
		}
		if !slices.Contains(topics, name) {
			if len(topics) == maxTopics {
				return nil, fmt.Errorf("a stream carries at most %d topics", maxTopics)
			}
			topics = append(topics, strings.Clone(name))
		}
	}
	return topics, nil
}

// isAlphanumeric reports whether c is an ASCII letter or digit.
func isAlphanumeric(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

// broker is where topic events are published and subscribed to: the in-process hub (the
// default), or a JetStream stream shared by every replica (-nats, nats.go). The SSE handler
// and POST /publish speak to it alone.
type broker interface {
	// PublishEvent publishes p and returns the SSE id it got, once it is stored: in the
	// hub's history, or acknowledged by JetStream.
	PublishEvent(ctx context.Context, p publication) (string, error)
	// SubscribeFrom subscribes to topics and returns what to replay after lastID (an id a
	// client sent, if hasLastID), as hub.Subscribe does. An error means the stream cannot
	// resume now and its client should come back later.
	SubscribeFrom(ctx context.Context, topics []string, lastID string, hasLastID bool, onDrop func()) (subscription, error)
	// Unsubscribe ends a subscription that SubscribeFrom returned.
	Unsubscribe(sub *subscriber)
	// Health says whether the broker can publish now and, if not, why, for /readyz.
	Health() (ok bool, why string)
}

// publication is one event to publish: its topic and SSE event type (both checked; an empty
// type is a message), its data, and an idempotency key (empty for none) under which a
// retried publish is stored once.
type publication struct {
	topic, event string
	data         []byte
	key          string
}

// errBrokerUnavailable is what a broker answers while it cannot store or replay events;
// POST /publish turns it into 503 with Retry-After.
var errBrokerUnavailable = errors.New("the event store is unreachable")

// PublishEvent publishes p to the hub, which stores it at once. The hub keeps no record of
// idempotency keys: a retried publish is a new event.
func (h *hub) PublishEvent(_ context.Context, p publication) (string, error) {
	return h.Publish(p.topic, p.event, p.data), nil
}

// SubscribeFrom is Subscribe; the hub never fails.
func (h *hub) SubscribeFrom(_ context.Context, topics []string, lastID string, hasLastID bool, onDrop func()) (subscription, error) {
	return h.Subscribe(topics, lastID, hasLastID, onDrop), nil
}

// Health reports the hub always able to publish: it lives in the process.
func (h *hub) Health() (bool, string) {
	return true, ""
}

// hubEvent is one published event, framed once: every subscriber is sent the same bytes.
type hubEvent struct {
	seq   uint64    // its place in the hub's one sequence
	topic string    // the topic it was published to
	at    time.Time // when it was published, for the history's age limit
	frame []byte    // the whole SSE frame: id:, event: if named, data: lines, blank line
}

// subscriber is one stream's subscription. The hub sends it every event of its topics
// without ever waiting: when queue is full, the hub drops it instead (closes queue, sets
// dropped and calls onDrop, which cuts a write the stream may be blocked in), and the stream
// ends so that its client resumes from history.
type subscriber struct {
	topics  []string
	queue   chan *hubEvent
	onDrop  func()
	dropped atomic.Bool
	active  bool   // subscribed to its topics; guarded by the hub's mu
	after   uint64 // events up to this sequence number are not queued; guarded by the hub's mu
}

// historyLimits bound what the hub keeps for clients that reconnect: the newest count
// events, none older than age, at most bytes of frames in all.
type historyLimits struct {
	count int
	age   time.Duration
	bytes int
}

// resetReason says why a stream could not resume exactly where its client asked; it is the
// reason in the reset event's data and a metric label.
type resetReason string

// The ways a Last-Event-ID fails to resume a topic stream.
const (
	resetHistoryGone resetReason = "history_gone" // events after it are no longer kept
	resetOtherRun    resetReason = "other_run"    // an id of an earlier run of the hub
	resetFuture      resetReason = "future"       // an id this run has not reached
	resetInvalid     resetReason = "invalid"      // not an id this hub writes
)

// resetReasons lists every resetReason, for the metrics made at start-up.
var resetReasons = []resetReason{resetHistoryGone, resetOtherRun, resetFuture, resetInvalid}

// hub holds the topics' subscribers and the history of one sequence of event ids shared by
// all topics, so that one Last-Event-ID resumes a stream of many topics. Every id is the
// hub's epoch, drawn at random when it starts, a dash and the sequence number: an id from
// another run never passes for one of this run.
type hub struct {
	epoch    string
	limits   historyLimits
	queueLen int
	metrics  *hubMetrics

	mu          sync.Mutex
	seq         uint64      // the last sequence number given out
	ring        []*hubEvent // the history, oldest at ring[head]
	head, kept  int
	keptBytes   int
	subscribers map[string]map[*subscriber]struct{} // by topic
	subscribed  int                                 // subscribers now
}

// newHub returns a hub with the given history limits, whose subscribers' queues hold
// queueLen events each.
func newHub(limits historyLimits, queueLen int, m *hubMetrics) *hub {
	return &hub{
		epoch:       newEpoch(),
		limits:      limits,
		queueLen:    queueLen,
		metrics:     m,
		ring:        make([]*hubEvent, limits.count),
		subscribers: make(map[string]map[*subscriber]struct{}),
	}
}

// newEpoch returns 8 random characters of lower-case base32: 40 bits, so that two runs of a
// hub share an epoch about once in a trillion.
func newEpoch() string {
	var b [5]byte
	rand.Read(b[:])
	return strings.ToLower(base32.StdEncoding.EncodeToString(b[:]))
}

// id formats the SSE id of the event with sequence number seq.
func (h *hub) id(seq uint64) string {
	return h.epoch + "-" + strconv.FormatUint(seq, 10)
}

// appendID appends the SSE id of seq to dst.
func (h *hub) appendID(dst []byte, seq uint64) []byte {
	dst = append(dst, h.epoch...)
	dst = append(dst, '-')
	return strconv.AppendUint(dst, seq, 10)
}

// Publish gives data the next id, frames it once, keeps it in history and queues it for
// every subscriber of topic, and returns its id. It never waits for a subscriber: one whose
// queue is full is dropped (its queue closed), to resume from history. event, if not empty,
// is the SSE event type. topic and event must have been checked.
func (h *hub) Publish(topic, event string, data []byte) string {
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.seq++
	var id [64]byte
	ev := &hubEvent{seq: h.seq, topic: topic, at: now}
	ev.frame = appendNamedEvent(nil, h.appendID(id[:0], h.seq), event, data)
	h.remember(ev)
	h.fanOut(ev)
	h.metrics.published.Inc()
	return h.id(ev.seq)
}

// fanOut queues ev for every subscriber of its topic that has not had it yet, and drops
// one whose queue is full. Called with mu held.
func (h *hub) fanOut(ev *hubEvent) {
	for sub := range h.subscribers[ev.topic] {
		if ev.seq <= sub.after {
			continue
		}
		select {
		case sub.queue <- ev:
		default:
			h.drop(sub)
		}
	}
}

// follow makes h the local fan-out of a sequence kept elsewhere (a JetStream stream): ids
// in epoch, the last event delivered so far seq, and no history of its own, because the
// stream keeps it. Call it before h serves anyone.
func (h *hub) follow(epoch string, seq uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.epoch, h.seq = epoch, seq
	h.ring, h.head, h.kept, h.keptBytes = nil, 0, 0, 0
}

// deliver fans out an event numbered outside the hub, its frame already carrying its id,
// and makes seq the hub's last. Events arrive in sequence order; one at or below the last
// delivered (a consumer that started again) is ignored, so none goes out twice. An empty
// topic, which no one subscribes to, only moves the sequence on.
func (h *hub) deliver(seq uint64, topic string, frame []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if seq <= h.seq {
		return
	}
	h.seq = seq
	h.fanOut(&hubEvent{seq: seq, topic: topic, at: time.Now(), frame: frame})
}

// subscribeLive subscribes to topics (checked, without duplicates) and returns the
// subscriber with the sequence number of the last event delivered, under the one lock that
// deliver takes: every later event reaches the subscriber's queue, no earlier one does.
func (h *hub) subscribeLive(topics []string, onDrop func()) (*subscriber, uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	sub := &subscriber{topics: topics, queue: make(chan *hubEvent, h.queueLen), onDrop: onDrop, active: true}
	h.add(sub)
	return sub, h.seq
}

// skipThrough makes sub skip the events up to seq that have not reached it yet: its client
// has them already, from a replica whose consumer was ahead of this one's.
func (h *hub) skipThrough(sub *subscriber, seq uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	sub.after = seq
}

// add subscribes sub to its topics. Called with mu held.
func (h *hub) add(sub *subscriber) {
	for _, topic := range sub.topics {
		subs := h.subscribers[topic]
		if subs == nil {
			subs = make(map[*subscriber]struct{})
			h.subscribers[topic] = subs
		}
		subs[sub] = struct{}{}
	}
	h.subscribed++
}

// remember adds ev to the history, then forgets the oldest events until the history is
// within its limits again. Called with mu held.
func (h *hub) remember(ev *hubEvent) {
	if len(h.ring) == 0 {
		return
	}
	if h.kept == len(h.ring) {
		h.forgetOldest()
	}
	h.ring[(h.head+h.kept)%len(h.ring)] = ev
	h.kept++
	h.keptBytes += len(ev.frame)
	for h.kept > 0 && h.keptBytes > h.limits.bytes {
		h.forgetOldest()
	}
	h.forgetExpired(ev.at)
}

// forgetExpired forgets the events published before now minus the age limit. Called with
// mu held.
func (h *hub) forgetExpired(now time.Time) {
	oldest := now.Add(-h.limits.age)
	for h.kept > 0 && h.ring[h.head].at.Before(oldest) {
		h.forgetOldest()
	}
}

// forgetOldest drops the oldest event from the history. Called with mu held.
func (h *hub) forgetOldest() {
	h.keptBytes -= len(h.ring[h.head].frame)
	h.ring[h.head] = nil
	h.head = (h.head + 1) % len(h.ring)
	h.kept--
}

// drop ends sub's subscription because it fell a whole queue behind: it is removed from
// every topic and its queue closed, which tells its stream to end, and onDrop cuts short a
// write that a client who stopped reading holds. Called with mu held.
func (h *hub) drop(sub *subscriber) {
	h.remove(sub)
	sub.dropped.Store(true)
	close(sub.queue)
	if sub.onDrop != nil {
		sub.onDrop()
	}
}

// remove takes sub out of every topic it subscribed to, if it is still there. Called with mu held.
func (h *hub) remove(sub *subscriber) {
	if !sub.active {
		return
	}
	sub.active = false
	for _, topic := range sub.topics {
		subs := h.subscribers[topic]
		delete(subs, sub)
		if len(subs) == 0 {
			delete(h.subscribers, topic)
		}
	}
	h.subscribed--
}

// subscription is what Subscribe hands a stream: the live subscription, the events to
// replay before it, and where the stream starts.
type subscription struct {
	sub      *subscriber
	replay   []*hubEvent // events of its topics after the client's id, oldest first
	position string      // the id the stream stands at before the replay: the client's, or the hub's last
	at       uint64      // the sequence number in position
	reset    resetReason // why the client's id could not be resumed, or ""
}

// Subscribe subscribes to topics (checked, without duplicates), with onDrop called (under
// the hub's lock: it must not block) if the subscriber is dropped, and returns the events to
// replay after lastID, an id that a client sent (hasLastID false if it sent none). The
// subscription and the replay are taken under the one lock that Publish takes, so every
// event is either in the replay or in the live queue, never in both and never in neither.
// An id whose followers the history no longer holds, from another run, from the future or
// malformed, gives reset and no replay: the stream goes on live from the hub's last id.
func (h *hub) Subscribe(topics []string, lastID string, hasLastID bool, onDrop func()) subscription {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.forgetExpired(time.Now())
	s := subscription{
		sub:      &subscriber{topics: topics, queue: make(chan *hubEvent, h.queueLen), onDrop: onDrop, active: true},
		position: h.id(h.seq),
		at:       h.seq,
	}
	h.add(s.sub)
	if !hasLastID {
		return s
	}
	after, reason := h.resumePoint(lastID)
	if reason != "" {
		s.reset = reason
		h.metrics.resets[reason].Inc()
		return s
	}
	s.position, s.at = lastID, after
	for i := range h.kept {
		ev := h.ring[(h.head+i)%len(h.ring)]
		if ev.seq > after && s.sub.wants(ev.topic) {
			s.replay = append(s.replay, ev)
		}
	}
	return s
}

// resumePoint returns the sequence number in lastID if the history holds every event after
// it, or why not. Called with mu held.
func (h *hub) resumePoint(lastID string) (uint64, resetReason) {
	epoch, number, ok := strings.Cut(lastID, "-")
	if !ok || epoch == "" {
		return 0, resetInvalid
	}
	seq, err := strconv.ParseUint(number, 10, 64)
	if err != nil || number[0] == '+' {
		return 0, resetInvalid
	}
	switch {
	case epoch != h.epoch:
		return 0, resetOtherRun
	case seq > h.seq:
		return 0, resetFuture
	}
	// The first event still kept, or the next to come when none is.
	first := h.seq + 1
	if h.kept > 0 {
		first = h.ring[h.head].seq
	}
	if seq+1 < first {
		return 0, resetHistoryGone
	}
	return seq, ""
}

// wants reports whether sub subscribed to topic.
func (sub *subscriber) wants(topic string) bool {
	for _, t := range sub.topics {
		if t == topic {
			return true
		}
	}
	return false
}

// Unsubscribe ends sub's subscription, if the hub has not dropped it already.
func (h *hub) Unsubscribe(sub *subscriber) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.remove(sub)
}

// historyState forgets expired events, then returns how many events the history keeps,
// their frames' bytes, and the age of the oldest, for the metrics.
func (h *hub) historyState() (events, bytes int, oldest time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := time.Now()
	h.forgetExpired(now)
	if h.kept > 0 {
		oldest = now.Sub(h.ring[h.head].at)
	}
	return h.kept, h.keptBytes, oldest
}

// hubMetrics count what the hub and its streams do. Every series is made when the hub is,
// so counting costs an atomic add.
type hubMetrics struct {
	published prometheus.Counter
	delivered prometheus.Counter // events written to topic streams, replayed ones included
	replayed  prometheus.Counter
	resets    map[resetReason]prometheus.Counter
}

// newHubMetrics registers the hub's metrics with reg; the gauges read h when scraped.
func newHubMetrics(reg *prometheus.Registry) *hubMetrics {
	m := &hubMetrics{
		published: registerCounter(reg, prometheus.CounterOpts{
			Name: "sse_hub_published_total",
			Help: "Events published to topics.",
		}),
		delivered: registerCounter(reg, prometheus.CounterOpts{
			Name: "sse_hub_delivered_total",
			Help: "Topic events written to subscribers, replayed ones included.",
		}),
		replayed: registerCounter(reg, prometheus.CounterOpts{
			Name: "sse_hub_replayed_total",
			Help: "Topic events written from history to subscribers that resumed.",
		}),
		resets: make(map[resetReason]prometheus.Counter),
	}
	resets := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sse_hub_resets_total",
		Help: "Topic streams that could not resume where their client asked and began with a reset event, by why.",
	}, []string{"reason"})
	reg.MustRegister(resets)
	for _, r := range resetReasons {
		m.resets[r] = resets.WithLabelValues(string(r))
	}
	return m
}

// registerGauges registers the gauges that read h's state when scraped: subscribers, and the
// history's size and age.
func (h *hub) registerGauges(reg *prometheus.Registry) {
	subscribers := func() float64 {
		h.mu.Lock()
		defer h.mu.Unlock()
		return float64(h.subscribed)
	}
	history := func(pick func(events, bytes int, oldest time.Duration) float64) func() float64 {
		return func() float64 { return pick(h.historyState()) }
	}
	for _, g := range []struct {
		name, help string
		value      func() float64
	}{
		{"sse_hub_subscribers", "Topic streams subscribed now.", subscribers},
		{"sse_hub_history_events", "Events the history keeps for clients that resume.",
			history(func(events, _ int, _ time.Duration) float64 { return float64(events) })},
		{"sse_hub_history_bytes", "Bytes of framed events the history keeps.",
			history(func(_, bytes int, _ time.Duration) float64 { return float64(bytes) })},
		{"sse_hub_history_age_seconds", "Age of the oldest event the history keeps (0 when it keeps none).",
			history(func(_, _ int, oldest time.Duration) float64 { return oldest.Seconds() })},
	} {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: g.name, Help: g.help}, g.value))
	}
}
