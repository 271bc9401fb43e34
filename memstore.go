package main

// The in-memory event store, the default: one process, no other server. It keeps a bounded
// history so that a client that reconnects with its Last-Event-ID gets exactly what it
// missed, and remembers recent idempotency keys so that a retried publish lands once.

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// historyLimits bound what a store keeps for clients that reconnect: the newest count
// events, none older than age, at most bytes of frames in all.
type historyLimits struct {
	count int
	age   time.Duration
	bytes int
}

// keyWindow is how long a store remembers an idempotency key (at most as long as the event
// it names is kept): long enough for a publisher's retries, as JetStream's duplicate window.
const keyWindow = 2 * time.Minute

// keyedEvent is what the store remembers of a publish that carried an idempotency key.
type keyedEvent struct {
	seq    uint64
	at     time.Time
	digest [32]byte
}

// keyAt names one remembered key by the event it was stored with: a key reused once its
// first event is forgotten names a newer one.
type keyAt struct {
	key string
	seq uint64
}

// memoryStore keeps events in a ring, oldest at ring[head], with consecutive sequence
// numbers, and hands each to its fan-out under the one lock that Replay takes.
type memoryStore struct {
	ids    eventIDs
	limits historyLimits
	fan    *fanout

	mu        sync.Mutex
	seq       uint64 // the last sequence number given out
	ring      []*topicEvent
	head      int
	kept      int
	keptBytes int
	keys      map[string]keyedEvent // by publication.scopedKey
	keyOrder  []keyAt               // keys in the order they came, to forget the oldest first
	given     idIndex               // the kept events that their publishers gave an id
}

// newMemoryBroker returns a broker on an in-memory store with the given history limits,
// whose subscribers' queues hold queueLen events each, counting in m.
func newMemoryBroker(limits historyLimits, queueLen int, m *hubMetrics) *broker {
	fan := newFanout(queueLen, 0)
	store := &memoryStore{
		ids:    eventIDs{epoch: newEpoch()},
		limits: limits,
		fan:    fan,
		ring:   make([]*topicEvent, limits.count),
		keys:   make(map[string]keyedEvent),
		given:  idIndex{limit: limits.count},
	}
	return &broker{store: store, fan: fan, ids: store.ids, metrics: m}
}

// newEpoch returns 8 random characters of lower-case base32: 40 bits, so that two runs of a
// hub share an epoch about once in a trillion.
func newEpoch() string {
	var b [5]byte
	rand.Read(b[:])
	return strings.ToLower(base32.StdEncoding.EncodeToString(b[:]))
}

// Publish gives p the next sequence number, frames it once, keeps it in history and hands it
// to the fan-out. A retry of a keyed publish whose event is still kept gets that event's
// number; a key reused for another event is refused.
func (m *memoryStore) Publish(_ context.Context, p publication) (uint64, bool, error) {
	now := time.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.forgetExpired(now)
	var key string
	var digest [32]byte
	if p.key != "" {
		key, digest = p.scopedKey(), p.digest()
		if first, ok := m.keys[key]; ok && m.keyKept(first, now) {
			if first.digest != digest {
				return 0, false, errKeyReused
			}
			return first.seq, true, nil
		}
	}
	if _, taken := m.given.get(p.id); taken {
		return 0, false, errIDTaken
	}
	m.seq++
	ev := &topicEvent{seq: m.seq, topics: p.topics, private: p.private, id: p.id, at: now, frame: m.ids.frame(m.seq, &p)}
	if len(m.ring) > 0 {
		if key != "" {
			m.keys[key] = keyedEvent{seq: ev.seq, at: now, digest: digest}
			m.keyOrder = append(m.keyOrder, keyAt{key, ev.seq})
		}
		if p.id != "" {
			m.given.add(p.id, ev.seq)
		}
	}
	m.remember(ev)
	m.fan.deliver(ev.seq, &p, func() *topicEvent { return ev })
	return ev.seq, false, nil
}

// Replay returns the kept events that sel wants after sequence after up to upTo. Sequence
// numbers are consecutive in the ring, so the first one to read is found by subtraction.
func (m *memoryStore) Replay(_ context.Context, sel *selection, after, upTo uint64) ([]*topicEvent, uint64, resetReason, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.forgetExpired(time.Now())
	first := m.oldest()
	if after+1 < first {
		return nil, 0, resetHistoryGone, nil
	}
	var events []*topicEvent
	for seq := after + 1; seq <= upTo; seq++ {
		ev := m.ring[(m.head+int(seq-first))%len(m.ring)]
		if sel.wants(ev) {
			events = append(events, ev)
		}
	}
	return events, upTo, "", nil
}

// oldest returns the sequence number of the first event kept, or of the next to come when
// none is. Called with mu held.
func (m *memoryStore) oldest() uint64 {
	if m.kept > 0 {
		return m.ring[m.head].seq
	}
	return m.seq + 1
}

// Oldest returns the sequence number of the first event kept, or of the next to come.
func (m *memoryStore) Oldest(context.Context) (uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.forgetExpired(time.Now())
	return m.oldest(), nil
}

// Lookup returns the sequence number of the kept event its publisher gave id.
func (m *memoryStore) Lookup(id string) (uint64, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.forgetExpired(time.Now())
	return m.given.get(id)
}

// Newest returns the last sequence number given out.
func (m *memoryStore) Newest(context.Context) (uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.seq, nil
}

// Health reports the store always able to publish: it lives in the process.
func (m *memoryStore) Health() (bool, string) {
	return true, ""
}

// remember adds ev to the history, then forgets the oldest events until the history is
// within its limits again. Called with mu held.
func (m *memoryStore) remember(ev *topicEvent) {
	if len(m.ring) == 0 {
		return
	}
	if m.kept == len(m.ring) {
		m.forgetOldest()
	}
	m.ring[(m.head+m.kept)%len(m.ring)] = ev
	m.kept++
	m.keptBytes += len(ev.frame)
	for m.kept > 0 && m.keptBytes > m.limits.bytes {
		m.forgetOldest()
	}
}

// forgetExpired forgets the events published before now minus the age limit, and the
// idempotency keys older than keyWindow. Called with mu held.
func (m *memoryStore) forgetExpired(now time.Time) {
	oldest := now.Add(-m.limits.age)
	for m.kept > 0 && m.ring[m.head].at.Before(oldest) {
		m.forgetOldest()
	}
	for len(m.keyOrder) > 0 {
		oldest := m.keyOrder[0]
		k := m.keys[oldest.key]
		if k.seq == oldest.seq && m.keyKept(k, now) {
			break
		}
		if k.seq == oldest.seq {
			delete(m.keys, oldest.key)
		}
		m.keyOrder = m.keyOrder[1:]
	}
}

// keyKept reports whether the store still answers a retry with k: its event is kept, and
// came within keyWindow. Called with mu held.
func (m *memoryStore) keyKept(k keyedEvent, now time.Time) bool {
	return m.kept > 0 && k.seq >= m.ring[m.head].seq && now.Sub(k.at) < keyWindow
}

// forgetOldest drops the oldest event from the history, and its id. Called with mu held.
func (m *memoryStore) forgetOldest() {
	m.given.forgetBefore(m.ring[m.head].seq + 1)
	m.keptBytes -= len(m.ring[m.head].frame)
	m.ring[m.head] = nil
	m.head = (m.head + 1) % len(m.ring)
	m.kept--
}

// historyState forgets expired events, then returns how many events the history keeps,
// their frames' bytes, and the age of the oldest, for the metrics.
func (m *memoryStore) historyState() (events, bytes int, oldest time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	m.forgetExpired(now)
	if m.kept > 0 {
		oldest = now.Sub(m.ring[m.head].at)
	}
	return m.kept, m.keptBytes, oldest
}

// registerHistoryGauges registers the gauges that read the in-memory history's size and age
// when scraped; they read 0 while the broker's store is elsewhere (JetStream).
func registerHistoryGauges(reg *prometheus.Registry, b func() *broker) {
	history := func(pick func(events, bytes int, oldest time.Duration) float64) func() float64 {
		return func() float64 {
			if m, ok := b().store.(*memoryStore); ok {
				return pick(m.historyState())
			}
			return 0
		}
	}
	for _, g := range []struct {
		name, help string
		value      func() float64
	}{
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
