package main

// The broker: topic events are stored in one sequence by an event store, in memory
// (memstore.go) or in a JetStream stream that every replica shares (nats.go), and every
// stored event reaches this process's subscribers through one local fan-out (fanout.go).
// How a client's Last-Event-ID resumes, what it replays, and when it gets a reset instead
// is decided here, once, for both stores.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// publication is one event to publish, every field checked: its topics (the first is
// canonical), its SSE event type (empty for a message), retry (empty for none) and data,
// whether it is private, the id its publisher gives it (empty: the hub numbers it), and an
// idempotency key (empty for none) under which a retried publish is stored once, scoped to
// its publisher and topics.
type publication struct {
	topics       []string
	event, retry string
	data         []byte
	private      bool
	id           string
	key          string
	publisher    string // who publishes, for the key's scope: "" for a publisher with no credential
	fromHub      bool   // the hub's own update (a subscription update), which may use its reserved names
	ownDialect   bool   // published to one topic of the hub's own dialect (POST /publish, the demo feed)
}

// scopedKey returns the key under which a store remembers p's idempotency key: a digest of
// publisher, topics and key, so that two publishers, or one on two topics, never share a key.
func (p publication) scopedKey() string {
	sum := sha256.Sum256([]byte(p.publisher + "\x00" + strings.Join(p.topics, "\x00") + "\x00\x00" + p.key))
	return hex.EncodeToString(sum[:16])
}

// digest returns a digest of what p publishes, to tell a retry of a publish from another
// publish that reuses its key.
func (p publication) digest() [32]byte {
	h := sha256.New()
	for _, field := range append(slices.Clone(p.topics), "", p.event, p.retry, p.id, strconv.FormatBool(p.private)) {
		h.Write([]byte(field))
		h.Write([]byte{0})
	}
	h.Write(p.data)
	var sum [32]byte
	h.Sum(sum[:0])
	return sum
}

// errHubID is what a publish answers when its id reads as one the hub numbers itself.
var errHubID = errors.New("an id of the hub's own form, <epoch>-<number>, would name two events: choose another")

// errIDTaken is what a publish answers when its id names an event the history still keeps:
// a Last-Event-ID must name one event.
var errIDTaken = errors.New("an event the history keeps has this id already: ids must be unique")

// errBrokerUnavailable is what a store answers while it cannot store or replay events;
// POST /publish turns it into 503 with Retry-After.
var errBrokerUnavailable = errors.New("the event store is unreachable")

// errKeyReused is what a publish answers when its idempotency key was used for another
// event: the key names one publish, and a retry must carry the same event.
var errKeyReused = errors.New("this idempotency key was used for another event: a retry must send the same topic, type and data")

// eventStore keeps the one sequence of topic events and hands each stored event, in sequence
// order, to the fan-out it was made with.
type eventStore interface {
	// Publish stores p and returns its sequence number once it is stored, and whether it
	// is a retry of an event stored before under the same idempotency key.
	Publish(ctx context.Context, p publication) (seq uint64, retried bool, err error)
	// Replay returns the stored events that sel wants after sequence after, up to upTo,
	// oldest first, and the sequence number it read to: upTo, or less when it stopped at
	// about maxReplayChunk bytes of events, the rest to be read from there. It gives
	// resetHistoryGone instead when any of them is no longer stored.
	Replay(ctx context.Context, sel *selection, after, upTo uint64) (events []*topicEvent, readTo uint64, reason resetReason, err error)
	// Newest returns the sequence number of the last event stored.
	Newest(ctx context.Context) (uint64, error)
	// Oldest returns the sequence number of the first event kept, or of the next to come
	// when none is.
	Oldest(ctx context.Context) (uint64, error)
	// Lookup returns the sequence number of the kept event its publisher gave id.
	Lookup(id string) (uint64, bool)
	// Health says whether the store can publish now and, if not, why, for /readyz.
	Health() (ok bool, why string)
}

// maxReplayChunk is about the most bytes of frames a JetStream replay reads at once for one
// client; a longer replay is read and written a chunk at a time, so that thousands of
// clients resuming from an old id hold a bounded amount each. The in-memory store's replay
// needs no chunks: it holds pointers to the frames its history keeps anyway.
const maxReplayChunk = 64 << 10

// eventIDs formats and reads the SSE ids of one sequence: the epoch, a dash and the
// sequence number. The epoch changes with the sequence (a new in-memory hub, a JetStream
// stream created again), so an id of another sequence never passes for one of this one.
type eventIDs struct {
	epoch string
}

// format returns the id of seq.
func (ids eventIDs) format(seq uint64) string {
	return ids.epoch + "-" + strconv.FormatUint(seq, 10)
}

// append appends the id of seq to dst.
func (ids eventIDs) append(dst []byte, seq uint64) []byte {
	dst = append(dst, ids.epoch...)
	dst = append(dst, '-')
	return strconv.AppendUint(dst, seq, 10)
}

// parse returns the sequence number in an id a client sent, or why it is none of this
// sequence's.
func (ids eventIDs) parse(id string) (uint64, resetReason) {
	epoch, number, ok := strings.Cut(id, "-")
	if !ok || epoch == "" {
		return 0, resetInvalid
	}
	seq, err := strconv.ParseUint(number, 10, 64)
	if err != nil || number[0] == '+' {
		return 0, resetInvalid
	}
	if epoch != ids.epoch {
		return 0, resetOtherRun
	}
	return seq, ""
}

// frame returns the SSE frame of the event seq that p publishes: its id (p's own, or the
// sequence's), its type, its retry and its data.
func (ids eventIDs) frame(seq uint64, p *publication) []byte {
	var buf [64]byte
	id := ids.append(buf[:0], seq)
	if p.id != "" {
		id = []byte(p.id)
	}
	return appendData(appendFields(nil, id, p.event, p.retry), p.data)
}

// earliestID is the Last-Event-ID (Mercure's) that asks for every event kept.
const earliestID = "earliest"

// resetReason says why a stream could not resume exactly where its client asked; it is the
// reason in the reset event's data and a metric label.
type resetReason string

// The ways a Last-Event-ID fails to resume a topic stream.
const (
	resetHistoryGone resetReason = "history_gone" // events after it are no longer kept
	resetOtherRun    resetReason = "other_run"    // an id of another sequence
	resetFuture      resetReason = "future"       // an id the sequence has not reached
	resetInvalid     resetReason = "invalid"      // not an id this hub writes
)

// resetReasons lists every resetReason, for the metrics made at start-up.
var resetReasons = []resetReason{resetHistoryGone, resetOtherRun, resetFuture, resetInvalid}

// broker is where topic events are published and subscribed to: one event store and the
// local fan-out it feeds. The SSE handler and the publish routes speak to it alone.
type broker struct {
	store   eventStore
	fan     *fanout
	ids     eventIDs
	metrics *hubMetrics
	hub     *url.URL // the Mercure hub's URL, whose path names the hub's reserved topics
}

// subscription is what Subscribe hands a stream: the live subscription, the events to
// replay before it, and where the stream starts.
type subscription struct {
	sub      *subscriber
	replay   []*topicEvent // events of its topics after the client's id, oldest first
	readTo   uint64        // the replay read the stream to here: below upTo, the rest is read from here
	upTo     uint64        // the last event that comes by replay, not live
	position string        // the id the stream stands at before the replay: the client's, or the hub's last
	at       uint64        // the sequence number in position
	reset    resetReason   // why the client's id could not be resumed, or ""
}

// Publish publishes p and returns the SSE id it got once it is stored: its own, or the
// hub's. An id that reads as one of the hub's own is refused: it would name two events.
func (b *broker) Publish(ctx context.Context, p publication) (string, error) {
	if _, reason := b.ids.parse(p.id); p.id != "" && reason == "" {
		return "", errHubID
	}
	if !p.fromHub && b.reserved(p) {
		return "", errReservedTopic
	}
	seq, retried, err := b.store.Publish(ctx, p)
	if err != nil {
		return "", err
	}
	if !retried {
		b.metrics.published.Inc()
	}
	if p.id != "" {
		return p.id, nil
	}
	return b.ids.format(seq), nil
}

// reserved reports whether p uses what only the hub may publish: the type "mercure", or a
// topic in the hub's reserved namespace (subscription updates), whichever face it came by.
func (b *broker) reserved(p publication) bool {
	if strings.EqualFold(p.event, "mercure") {
		return true
	}
	if b.hub == nil {
		return false
	}
	for _, topic := range p.topics {
		if inReservedNamespace(topic, b.hub) {
			return true
		}
	}
	return false
}

// idIndex finds the kept events whose publisher gave them an id, by that id. It holds at
// most limit ids, forgetting the oldest first; its owner guards it with a lock.
type idIndex struct {
	limit int
	ids   map[string]uint64
	order []keyAt // ids in the order they came
}

// add notes that the event seq has id.
func (x *idIndex) add(id string, seq uint64) {
	if x.ids == nil {
		x.ids = make(map[string]uint64)
	}
	x.ids[id] = seq
	x.order = append(x.order, keyAt{id, seq})
	for len(x.order) > x.limit {
		x.forgetOldest()
	}
}

// get returns the sequence number of the event with id, if it is still known.
func (x *idIndex) get(id string) (uint64, bool) {
	seq, ok := x.ids[id]
	return seq, ok
}

// forgetBefore forgets the ids of events before sequence number first, which are no longer kept.
func (x *idIndex) forgetBefore(first uint64) {
	for len(x.order) > 0 && x.order[0].seq < first {
		x.forgetOldest()
	}
}

// forgetOldest forgets the oldest id, unless a later event has taken it since.
func (x *idIndex) forgetOldest() {
	oldest := x.order[0]
	if x.ids[oldest.key] == oldest.seq {
		delete(x.ids, oldest.key)
	}
	x.order = x.order[1:]
}

// Subscribe subscribes to sel and returns what to replay after lastID, an id a client sent
// (hasLastID false if it sent none): one the hub wrote, one a publisher gave an event the
// history keeps, or "earliest" for every event kept. onDrop is called, without blocking, if
// the subscriber is dropped. The subscriber is registered first, noting the last event L
// delivered here; events up to L come by replay, later ones live, so none is missed or sent
// twice. A client ahead of this process (it comes from a replica whose consumer was further
// on) gets no replay: its stream skips what it has. An id whose followers the store no
// longer holds, from another sequence, from the future or malformed gives a reset, and the
// stream goes on live from L. An error means the stream cannot resume now (the store is
// unreachable, or ctx ended) and its client should come back later.
func (b *broker) Subscribe(ctx context.Context, sel selection, lastID string, hasLastID bool, onDrop func()) (subscription, error) {
	var seq uint64
	var reason resetReason
	if hasLastID {
		if seq, reason = b.ids.parse(lastID); reason != "" {
			if found, ok := b.store.Lookup(lastID); ok {
				seq, reason = found, ""
			}
		}
		if lastID == earliestID {
			oldest, err := b.store.Oldest(ctx)
			if err != nil {
				return subscription{}, err
			}
			seq, reason = oldest-1, ""
		}
	}
	sub, last := b.fan.subscribe(sel, seq, onDrop)
	s := subscription{sub: sub, at: last, upTo: last}
	if hasLastID && reason == "" {
		var err error
		if reason, err = b.resume(ctx, &s, seq); err != nil {
			b.fan.unsubscribe(sub)
			return subscription{}, err
		}
		// "earliest" asks for whatever is kept: history that moved on while it was read is
		// read again from where it now starts, never answered with a reset.
		for tries := 0; lastID == earliestID && reason == resetHistoryGone && tries < 3; tries++ {
			var oldest uint64
			if oldest, err = b.store.Oldest(ctx); err == nil {
				reason, err = b.resume(ctx, &s, oldest-1)
			}
			if err != nil {
				b.fan.unsubscribe(sub)
				return subscription{}, err
			}
		}
	}
	if reason == resetFuture {
		// Subscribed to skip events the sequence has not reached: subscribe afresh.
		b.fan.unsubscribe(sub)
		s.sub, s.at = b.fan.subscribe(sel, 0, onDrop)
		s.upTo = s.at
	}
	if reason != "" {
		s.reset = reason
		b.metrics.resets[reason].Inc()
	}
	s.position = b.ids.format(s.at)
	return s, nil
}

// resume sets where s starts for a client that sent the id of seq, and what it replays, or
// returns why it cannot start there.
func (b *broker) resume(ctx context.Context, s *subscription, seq uint64) (resetReason, error) {
	switch {
	case seq > s.upTo:
		newest, err := b.store.Newest(ctx)
		if err != nil {
			return "", err
		}
		if seq > newest {
			return resetFuture, nil
		}
	case seq < s.upTo:
		var reason resetReason
		var err error
		if s.replay, s.readTo, reason, err = b.store.Replay(ctx, &s.sub.selection, seq, s.upTo); err != nil || reason != "" {
			return reason, err
		}
	}
	s.at = seq
	return "", nil
}

// ReplayMore returns the next chunk of a replay that did not fit in one, read from sequence
// from up to upTo, and where it read to; or an error if the stream must end and its client
// resume: the store is unreachable, or the events were forgotten meanwhile (the client's
// next request learns it with a reset).
func (b *broker) ReplayMore(ctx context.Context, sel *selection, from, upTo uint64) ([]*topicEvent, uint64, error) {
	events, readTo, reason, err := b.store.Replay(ctx, sel, from, upTo)
	if err == nil && reason != "" {
		err = errors.New("history moved past the replay: reconnect to resume")
	}
	return events, readTo, err
}

// Unsubscribe ends a subscription that Subscribe returned.
func (b *broker) Unsubscribe(sub *subscriber) {
	b.fan.unsubscribe(sub)
}

// Health says whether the broker can publish now and, if not, why.
func (b *broker) Health() (bool, string) {
	return b.store.Health()
}

// hubMetrics count what the broker and its streams do. Every series is made when the broker
// is, so counting costs an atomic add.
type hubMetrics struct {
	published prometheus.Counter
	delivered prometheus.Counter // events written to topic streams, replayed ones included
	replayed  prometheus.Counter
	resets    map[resetReason]prometheus.Counter
}

// newHubMetrics registers the broker's metrics with reg, and the gauge of its subscribers,
// which reads the broker b returns when scraped.
func newHubMetrics(reg *prometheus.Registry, b func() *broker) *hubMetrics {
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
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "sse_hub_subscribers",
		Help: "Topic streams subscribed now.",
	}, func() float64 { return float64(b().fan.count()) }))
	return m
}
