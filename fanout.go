package main

// The local fan-out: every stream of this process that subscribes to topics registers here,
// and each event the event store hands over, in sequence order, is queued once for every
// subscriber of its topic. A publisher never waits for a subscriber: one that falls a whole
// queue behind is dropped and resumes from history.

import (
	"sync"
	"sync/atomic"
	"time"
)

// topicEvent is one stored event, framed once: every subscriber is sent the same bytes.
type topicEvent struct {
	seq   uint64    // its place in the one sequence of all topics
	topic string    // the topic it was published to
	at    time.Time // when it was stored, for the in-memory history's age limit
	frame []byte    // the whole SSE frame: id:, event: if named, data: lines, blank line
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
// without ever waiting; it ends it instead (closes queue, sets dropped and calls onDrop,
// which cuts a write the stream may be blocked in), and the stream ends so that its client
// resumes from history.
type subscriber struct {
	topics  []string
	queue   chan *topicEvent
	onDrop  func()
	dropped atomic.Int32 // a dropCause
	active  bool         // subscribed to its topics; guarded by the fan-out's mu
	after   uint64       // events up to this sequence number are not queued: its client has them
}

// fanout holds this process's subscribers by topic and the sequence number of the last
// event handed to them.
type fanout struct {
	queueLen int

	mu          sync.Mutex
	seq         uint64                              // the last event delivered
	subscribers map[string]map[*subscriber]struct{} // by topic
	subscribed  int
}

// newFanout returns a fan-out whose subscribers' queues hold queueLen events each, and whose
// first event comes after sequence number seq.
func newFanout(queueLen int, seq uint64) *fanout {
	return &fanout{queueLen: queueLen, seq: seq, subscribers: make(map[string]map[*subscriber]struct{})}
}

// subscribe subscribes to topics (checked, without duplicates) and returns the subscriber
// with the sequence number of the last event delivered, under the one lock that deliver
// takes: every later event reaches the subscriber's queue, no earlier one does, nor any up
// to after, which its client has already. onDrop is called under that lock if the
// subscriber is dropped, so it must not block.
func (f *fanout) subscribe(topics []string, after uint64, onDrop func()) (*subscriber, uint64) {
	sub := &subscriber{topics: topics, queue: make(chan *topicEvent, f.queueLen), onDrop: onDrop, active: true, after: after}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, topic := range topics {
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

// deliver queues the event numbered seq, of topic, for every subscriber of topic, and drops
// one whose queue is full. event frames it, called only if someone subscribes to topic, so
// that no process frames events that none of its clients reads. Events must come in
// sequence order; one at or below the last delivered is ignored, so none goes out twice. An
// empty topic, to which no one subscribes, only moves the sequence on.
func (f *fanout) deliver(seq uint64, topic string, event func() *topicEvent) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if seq <= f.seq {
		return
	}
	f.seq = seq
	subs := f.subscribers[topic]
	if len(subs) == 0 {
		return
	}
	var ev *topicEvent
	for sub := range subs {
		if seq <= sub.after {
			continue
		}
		if ev == nil {
			ev = event()
		}
		select {
		case sub.queue <- ev:
		default:
			f.drop(sub, dropTooSlow)
		}
	}
}

// resync drops every subscriber: events of the sequence will never reach them here, so each
// must resume from history, or learn with a reset that history no longer has them.
func (f *fanout) resync() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, subs := range f.subscribers {
		for sub := range subs {
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
	close(sub.queue)
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
	for _, topic := range sub.topics {
		subs := f.subscribers[topic]
		delete(subs, sub)
		if len(subs) == 0 {
			delete(f.subscribers, topic)
		}
	}
	f.subscribed--
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

// count returns the number of subscribers now, for the metrics.
func (f *fanout) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.subscribed
}
