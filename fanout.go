package main

// The local fan-out: every stream of this process that subscribes to topics registers here,
// and each event the event store hands over, in sequence order, is queued once for every
// subscriber of its topic. A publisher never waits for a subscriber: one that falls a whole
// queue behind is dropped and resumes from history.

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// topicEvent is one stored event, framed once: every subscriber is sent the same bytes.
type topicEvent struct {
	seq     uint64    // its place in the one sequence of all topics
	topics  []string  // the topics it was published to; the first is canonical
	private bool      // only subscribers whose token may read one of its topics get it
	id      string    // the id its publisher gave it, or "" for the hub's own
	at      time.Time // when it was stored, for the in-memory history's age limit
	frame   []byte    // the whole SSE frame: id:, event: and retry: if set, data: lines, blank line
}

// selection is what a subscriber reads: events of its exact topics, or of a topic one of its
// matchers matches, and private events only where reader allows one of their topics.
type selection struct {
	topics   []string                   // exact topics, found by lookup
	matchers []*topicMatcher            // URL Patterns, URI Templates and "*", tried on every event
	reader   func(topics []string) bool // nil: no private event
}

// wants reports whether the selection takes ev.
func (sel *selection) wants(ev *topicEvent) bool {
	if !sel.mayRead(ev.topics, ev.private) {
		return false
	}
	for _, topic := range ev.topics {
		if slices.Contains(sel.topics, topic) {
			return true
		}
	}
	return sel.matchesAny(ev.topics)
}

// mayRead reports whether the selection may read an event of topics: a public one, or a
// private one its reader allows. Live events and replayed ones go through it alike.
func (sel *selection) mayRead(topics []string, private bool) bool {
	return !private || sel.reader != nil && sel.reader(topics)
}

// matchesAny reports whether one of the selection's matchers matches one of topics.
func (sel *selection) matchesAny(topics []string) bool {
	for _, m := range sel.matchers {
		if m.matchesAnyOf(topics) {
			return true
		}
	}
	return false
}

// dropCause says why the fan-out ended a subscription; its stream ends with the matching
// endReason and tells its client to resume.
type dropCause int32

// The ways the fan-out ends a subscription.
const (
	notDropped  dropCause = iota
	dropTooSlow           // its queue was full: the client reads slower than events come
	dropResync            // events of the sequence never reached this process (history moved on)
)

// subscriber is one stream's subscription. The fan-out sends it every event of its topics
// without ever waiting, or ends it instead (closes queue, sets dropped and calls onDrop,
// which cuts a write the stream may be blocked in), and the stream ends so that its client
// resumes from history.
type subscriber struct {
	selection
	queue   eventQueue
	onDrop  func()
	dropped atomic.Int32 // a dropCause
	active  bool         // subscribed to its topics; guarded by the fan-out's mu
	after   uint64       // events up to this sequence number are not queued: its client has them
	queued  uint64       // the last event queued, so that one reached by two topics is queued once; guarded by mu
}

// eventQueue holds the events the fan-out hands one subscriber until its stream takes
// them, at most limit. Its memory follows the most events that have waited in it at once,
// not its limit: a subscriber that keeps up holds a slot or two, one that has only
// subscribed none. ready has a token while events wait or once the queue is closed, which
// is what the stream waits on.
type eventQueue struct {
	ready  chan struct{}
	mu     sync.Mutex
	events []*topicEvent
	spare  []*topicEvent // the slice take handed out last, reused once it is given back
	limit  int
	closed bool
}

// init makes an empty queue of at most limit events.
func (q *eventQueue) init(limit int) {
	q.ready, q.limit = make(chan struct{}, 1), limit
}

// push adds ev to the queue and wakes its stream; it reports false, adding nothing, when the
// queue is full or closed.
func (q *eventQueue) push(ev *topicEvent) bool {
	q.mu.Lock()
	if q.closed || len(q.events) >= q.limit {
		q.mu.Unlock()
		return false
	}
	q.events = append(q.events, ev)
	q.mu.Unlock()
	q.wake()
	return true
}

// close tells the stream, once it has taken what waits, that no event will come.
func (q *eventQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	q.wake()
}

// wake leaves a token in ready, unless one is there already.
func (q *eventQueue) wake() {
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// take returns every event waiting, oldest first, and whether the queue is closed; the
// slice is the caller's until its next take.
func (q *eventQueue) take() ([]*topicEvent, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	events := q.events
	clear(q.spare)
	q.events, q.spare = q.spare[:0], events
	return events, q.closed
}

// fanout holds this process's subscribers by exact topic, those with matchers grouped by
// matcher, and the sequence number of the last event handed to them. A publish costs time
// in proportion to the subscribers it reaches and to the distinct matchers, each tried once
// per topic it has not seen lately, not to every subscriber.
type fanout struct {
	queueLen int

	// observe, if set, sees every event in sequence order, under mu: the Mercure hub's
	// table of active subscriptions reads its subscription events there.
	observe func(seq uint64, p *publication)

	mu          sync.Mutex
	seq         uint64                              // the last event delivered
	subscribers map[string]map[*subscriber]struct{} // by exact topic
	patterns    map[string]*matcherGroup            // those with matchers, by matcher
	subscribed  int
}

// newFanout returns a fan-out whose subscribers' queues hold queueLen events each, and whose
// first event comes after sequence number seq.
func newFanout(queueLen int, seq uint64) *fanout {
	return &fanout{queueLen: queueLen, seq: seq, subscribers: make(map[string]map[*subscriber]struct{}),
		patterns: make(map[string]*matcherGroup)}
}

// subscribe subscribes to sel (checked, topics without duplicates) and returns the subscriber
// with the sequence number of the last event delivered, under the one lock that deliver
// takes: every later event reaches the subscriber's queue, no earlier one does, nor any up
// to after, which its client has already. onDrop is called under that lock if the
// subscriber is dropped, so it must not block.
func (f *fanout) subscribe(sel selection, after uint64, onDrop func()) (*subscriber, uint64) {
	sub := &subscriber{selection: sel, onDrop: onDrop, active: true, after: after}
	sub.queue.init(f.queueLen)
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, m := range sel.matchers {
		key := m.key()
		g := f.patterns[key]
		if g == nil {
			g = &matcherGroup{m: m, subs: make(map[*subscriber]struct{})}
			f.patterns[key] = g
		}
		g.subs[sub] = struct{}{}
	}
	for _, topic := range sel.topics {
		subs := f.subscribers[topic]
		if subs == nil {
			subs = make(map[*subscriber]struct{})
			f.subscribers[topic] = subs
		}
		subs[sub] = struct{}{}
	}
	f.subscribed++
	return sub, f.seq
}

// deliver queues the event numbered seq that p published for every subscriber that wants it, and
// drops one whose queue is full. event frames it, called only if someone wants it, so that
// no process frames events that none of its clients reads. Events must come in sequence
// order; one at or below the last delivered is ignored, so none goes out twice. An event
// of no topic, which no one wants, only moves the sequence on.
func (f *fanout) deliver(seq uint64, p *publication, event func() *topicEvent) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if seq <= f.seq {
		return
	}
	f.seq = seq
	if f.observe != nil {
		f.observe(seq, p)
	}
	topics, private := p.topics, p.private
	var ev *topicEvent
	offer := func(sub *subscriber) {
		if seq <= sub.after || sub.queued == seq || !sub.mayRead(topics, private) {
			return
		}
		if ev == nil {
			ev = event()
		}
		sub.queued = seq
		if !sub.queue.push(ev) {
			f.drop(sub, dropTooSlow)
		}
	}
	for _, topic := range topics {
		for sub := range f.subscribers[topic] {
			offer(sub)
		}
	}
	for _, g := range f.patterns {
		if g.matchesAny(topics) {
			for sub := range g.subs {
				offer(sub)
			}
		}
	}
}

// resync drops every subscriber, and takes the sequence on through seq: events up to it will
// never reach this process, so each subscriber must resume from history, or learn with a
// reset that history no longer has them, and so must one that subscribes before the next
// event arrives.
func (f *fanout) resync(seq uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seq = max(f.seq, seq)
	for _, subs := range f.subscribers {
		for sub := range subs {
			f.drop(sub, dropResync)
		}
	}
	for _, g := range f.patterns {
		for sub := range g.subs {
			f.drop(sub, dropResync)
		}
	}
}

// drop ends sub's subscription: it is removed from every topic and its queue closed, which
// tells its stream to end, and onDrop cuts short a write that a client who stopped reading
// holds. Called with mu held.
func (f *fanout) drop(sub *subscriber, cause dropCause) {
	f.remove(sub)
	sub.dropped.Store(int32(cause))
	sub.queue.close()
	if sub.onDrop != nil {
		sub.onDrop()
	}
}

// unsubscribe ends sub's subscription, if the fan-out has not dropped it already.
func (f *fanout) unsubscribe(sub *subscriber) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.remove(sub)
}

// remove takes sub out of every topic it subscribed to, if it is still there. Called with mu held.
func (f *fanout) remove(sub *subscriber) {
	if !sub.active {
		return
	}
	sub.active = false
	for _, m := range sub.matchers {
		key := m.key()
		if g := f.patterns[key]; g != nil {
			delete(g.subs, sub)
			if len(g.subs) == 0 {
				delete(f.patterns, key)
			}
		}
	}
	for _, topic := range sub.topics {
		subs := f.subscribers[topic]
		delete(subs, sub)
		if len(subs) == 0 {
			delete(f.subscribers, topic)
		}
	}
	f.subscribed--
}

// matcherGroup is the subscribers that share one matcher: it is tried once per event for
// all of them, and remembers its answers for the topics it has seen lately.
type matcherGroup struct {
	m    *topicMatcher
	subs map[*subscriber]struct{}
	seen map[string]bool // topic → whether m matches it; guarded by the fan-out's mu
}

// maxSeenTopics bounds what a matcher group remembers; past it, it starts afresh.
const maxSeenTopics = 1024

// matchesAny reports whether g's matcher matches one of topics. Called with the fan-out's mu held.
func (g *matcherGroup) matchesAny(topics []string) bool {
	for _, topic := range topics {
		match, ok := g.seen[topic]
		if !ok {
			if g.seen == nil || len(g.seen) >= maxSeenTopics {
				g.seen = make(map[string]bool)
			}
			match = g.m.matches(topic)
			g.seen[topic] = match
		}
		if match {
			return true
		}
	}
	return false
}

// patternCount returns the number of distinct matchers that every event is tried on.
func (f *fanout) patternCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.patterns)
}

// last returns the sequence number of the last event delivered.
func (f *fanout) last() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.seq
}

// count returns the number of subscribers now, for the metrics.
func (f *fanout) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.subscribed
}
