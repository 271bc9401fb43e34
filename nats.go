package main

// The JetStream event store (-nats): topics and their history live in one stream that every
// replica shares, so an event has the same id on every replica and a client resumes on any
// of them. Each replica consumes the stream once and hands every event to its local
// fan-out; a client that resumes reads what it missed with a short-lived consumer of its
// own, a bounded number of them at once, a chunk at a time. docs/topics.md says how topics
// map to subjects; docs/deployment.md how to run the NATS cluster.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// natsConfig is how to reach NATS and what stream to keep there: -nats and the -nats-* flags.
type natsConfig struct {
	urls     string // comma-separated seed URLs; empty means the in-process hub
	prefix   string // subject prefix: topic t is subject prefix.t
	replicas int    // copies of the stream a cluster keeps
	replays  int    // resuming streams that read history at once

	user, password, token string
	nkeyFile, credsFile   string
	caFile                string
	certFile, keyFile     string
}

// validate refuses NATS settings that cannot work, naming the flag; history is what the
// stream keeps. Without -nats nothing is checked.
func (c natsConfig) validate(history historyLimits) error {
	if c.urls == "" {
		return nil
	}
	if err := checkPrefix(c.prefix); err != nil {
		return fmt.Errorf("invalid -nats-prefix %q: %w", c.prefix, err)
	}
	switch {
	case c.replicas < 1 || c.replicas > 5:
		return fmt.Errorf("invalid -nats-replicas %d: must be 1 to 5", c.replicas)
	case c.replays < 1:
		return fmt.Errorf("invalid -nats-replays %d: must be at least 1", c.replays)
	case history.count < 1:
		return fmt.Errorf("invalid -history %d with -nats: the stream must keep at least one event", history.count)
	case history.bytes < 1:
		return fmt.Errorf("invalid -history-bytes %d with -nats: the stream must keep at least one byte", history.bytes)
	case c.user != "" && c.password == "", c.user == "" && c.password != "":
		return errors.New("-nats-user and -nats-password (NATS_USER, NATS_PASSWORD) go together")
	case c.token != "" && c.user != "":
		return errors.New("-nats-token and -nats-user are two ways to authenticate: set one")
	case c.nkeyFile != "" && c.credsFile != "":
		return errors.New("-nats-nkey and -nats-creds are two ways to authenticate: set one")
	case (c.certFile == "") != (c.keyFile == ""):
		return errors.New("-nats-cert and -nats-key go together")
	}
	return nil
}

// checkPrefix says which rule a subject prefix breaks, or returns nil: dot-separated tokens
// of ASCII letters, digits, _ and -, at most 64 bytes, so that it never holds a wildcard.
func checkPrefix(prefix string) error {
	if prefix == "" || len(prefix) > 64 {
		return errors.New("must be 1 to 64 bytes long")
	}
	for token := range strings.SplitSeq(prefix, ".") {
		if token == "" {
			return errors.New("holds an empty token: no dot at either end, none twice")
		}
		for i := 0; i < len(token); i++ {
			if c := token[i]; !isAlphanumeric(c) && c != '_' && c != '-' {
				return fmt.Errorf("holds %q: only A-Z a-z 0-9 _ - and dots between tokens are allowed", c)
			}
		}
	}
	return nil
}

// streamName returns the name of the stream that keeps the subjects under prefix: the prefix
// with its dots written as underscores, since a stream name may hold no dot.
func streamName(prefix string) string {
	return strings.ReplaceAll(prefix, ".", "_")
}

// topicSubject returns the subject that topic's events are stored under: the prefix, a dot,
// and the topic with every dot written %2E, so that the topic stays one subject token. '%'
// is not in the topic alphabet, so two topics never share a subject.
func topicSubject(prefix, topic string) string {
	return prefix + "." + strings.ReplaceAll(topic, ".", "%2E")
}

// subjectTopic returns the topic whose subject is subject, or false if it is no topic's: a
// message published straight to NATS on another subject under the prefix is not delivered.
func subjectTopic(prefix, subject string) (string, bool) {
	rest, ok := strings.CutPrefix(subject, prefix+".")
	if !ok || strings.IndexByte(rest, '.') >= 0 {
		return "", false
	}
	topic := strings.ReplaceAll(rest, "%2E", ".")
	if checkTopic(topic) != nil {
		return "", false
	}
	return topic, true
}

// The NATS message headers that carry what the subject does not: the SSE event type (a
// message without it is an SSE message, for onmessage), the retry, the id its publisher gave
// it, whether it is private, and its topics when they are not one topic name of the hub's
// own alphabet.
const (
	headerEvent   = "SSE-Event"
	headerRetry   = "SSE-Retry"
	headerID      = "SSE-Id"
	headerPrivate = "SSE-Private"
	headerTopic   = "SSE-Topic"
)

// manyTopics is the subject token of the events whose topics are listed in SSE-Topic
// headers: "_" is in no topic name of the hub's alphabet, so no topic's subject is this one.
const manyTopics = "_m"

// subjectOf returns the subject p is stored under: its topic's, for an event of the hub's
// own dialect (what POST /publish sends, as a NATS client publishing straight would), else
// the one whose events carry their topics in headers (Mercure's).
func subjectOf(prefix string, p *publication) string {
	if p.ownDialect && len(p.topics) == 1 && checkTopic(p.topics[0]) == nil {
		return topicSubject(prefix, p.topics[0])
	}
	return prefix + "." + manyTopics
}

// Times the broker waits for NATS.
const (
	streamSetupTimeout = 20 * time.Second // at start: a new cluster elects its leaders first
	publishTimeout     = 5 * time.Second  // for the acknowledgement of one publish
	replayIdle         = 10 * time.Second // a replay's consumer left behind is removed by the server after this
)

// natsStore keeps topics and history in one JetStream stream. One consumer of the whole
// stream, made by the replica, hands each event to the local fan-out.
type natsStore struct {
	nc      *nats.Conn
	js      jetstream.JetStream
	stream  jetstream.Stream
	name    string // the stream's
	prefix  string
	ids     eventIDs
	fan     *fanout
	logger  *slog.Logger
	replays chan struct{} // a place per replay under way
	// stopConsuming ends the replica's consumer, and consumed closes once it has.
	stopConsuming context.CancelFunc
	consumed      chan struct{}
	m             *natsMetrics

	disconnectedAt atomic.Int64 // Unix ns of the last disconnect, 0 while connected
	delivered      atomic.Uint64

	mu    sync.Mutex
	given idIndex // the events that their publishers gave an id, by that id

	ownPrivate func(topic string) bool // whether a topic of the hub's own dialect needs a token
}

// startNATS connects to the NATS servers of cfg, creates or updates the stream with the
// history limits, and returns a broker on it whose fan-out starts after the stream's last
// event, fed by one consumer, and a function that stops it. Subscribers' queues hold
// queueLen events each, observe (if not nil) sees every event in sequence order, and
// ownPrivate says which topics of the hub's own dialect need a token; the broker counts in
// hm, and the store's metrics go to reg.
func startNATS(ctx context.Context, cfg natsConfig, history historyLimits, queueLen int, hm *hubMetrics,
	observe func(uint64, *publication), ownPrivate func(string) bool, reg *prometheus.Registry, logger *slog.Logger) (*broker, func(), error) {
	b := &natsStore{
		ownPrivate: ownPrivate,
		name:       streamName(cfg.prefix),
		prefix:     cfg.prefix,
		logger:     logger,
		replays:    make(chan struct{}, cfg.replays),
		m:          newNATSMetrics(reg),
	}
	opts, err := b.options(cfg)
	if err != nil {
		return nil, nil, err
	}
	servers := redactURLs(cfg.urls)
	b.nc, err = nats.Connect(cfg.urls, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("connect to NATS at %s (-nats): %w", servers, err)
	}
	if b.js, err = jetstream.New(b.nc); err != nil {
		b.nc.Close()
		return nil, nil, fmt.Errorf("JetStream at %s: %w", servers, err)
	}
	info, err := b.setUpStream(ctx, history, cfg.replicas)
	if err != nil {
		b.nc.Close()
		return nil, nil, fmt.Errorf("create or update the stream %s at %s: %w", b.name, servers, err)
	}
	b.ids = eventIDs{epoch: streamEpoch(info.Created)}
	b.given.limit = history.count
	if err := b.indexIDs(ctx, info.State.LastSeq); err != nil {
		b.nc.Close()
		return nil, nil, err
	}
	b.fan = newFanout(queueLen, info.State.LastSeq)
	b.fan.observe = observe
	b.delivered.Store(info.State.LastSeq)
	var consuming context.Context
	consuming, b.stopConsuming = context.WithCancel(context.Background())
	b.consumed = make(chan struct{})
	go func() {
		defer close(b.consumed)
		b.consumeStream(consuming)
	}()
	b.registerGauges(reg)
	logger.Info("nats connected", "servers", servers, "server", b.nc.ConnectedUrlRedacted(), "stream", b.name,
		"subjects", cfg.prefix+".>", "replicas", info.Config.Replicas, "epoch", b.ids.epoch,
		"first_seq", info.State.FirstSeq, "last_seq", info.State.LastSeq)
	return &broker{store: b, fan: b.fan, ids: b.ids, metrics: hm}, b.close, nil
}

// options returns the connection options of cfg: reconnect for ever with jitter, publish
// nothing while disconnected (so that a publish acknowledged is stored, never buffered to
// be lost), notice a silent server within seconds, and the credentials and TLS settings.
// No option's value is ever logged.
func (b *natsStore) options(cfg natsConfig) ([]nats.Option, error) {
	opts := []nats.Option{
		nats.Name("sse-dashboard"),
		nats.Timeout(5 * time.Second),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(time.Second),
		nats.ReconnectJitter(time.Second, 2*time.Second),
		nats.ReconnectBufSize(-1),
		nats.PingInterval(5 * time.Second),
		nats.MaxPingsOutstanding(2),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			b.disconnectedAt.CompareAndSwap(0, time.Now().UnixNano())
			b.logger.Warn("nats disconnected: publishing answers 503 until it is back", "error", err)
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			b.disconnectedAt.Store(0)
			b.m.reconnects.Inc()
			b.logger.Info("nats reconnected", "server", nc.ConnectedUrlRedacted())
		}),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			b.logger.Warn("nats error", "error", err)
		}),
	}
	if cfg.user != "" {
		opts = append(opts, nats.UserInfo(cfg.user, cfg.password))
	}
	if cfg.token != "" {
		opts = append(opts, nats.Token(cfg.token))
	}
	if cfg.nkeyFile != "" {
		opt, err := nats.NkeyOptionFromSeed(cfg.nkeyFile)
		if err != nil {
			return nil, fmt.Errorf("read the NKey seed of -nats-nkey %s: %w", cfg.nkeyFile, err)
		}
		opts = append(opts, opt)
	}
	if cfg.credsFile != "" {
		opts = append(opts, nats.UserCredentials(cfg.credsFile))
	}
	if cfg.caFile != "" {
		opts = append(opts, nats.RootCAs(cfg.caFile))
	}
	if cfg.certFile != "" {
		opts = append(opts, nats.ClientCert(cfg.certFile, cfg.keyFile))
	}
	return opts, nil
}

// redactURLs returns the comma-separated URLs with any user, password or token left out,
// for log lines and errors.
func redactURLs(urls string) string {
	parts := strings.Split(urls, ",")
	for i, part := range parts {
		u, err := url.Parse(strings.TrimSpace(part))
		if err != nil {
			parts[i] = "(unparsable URL)"
			continue
		}
		u.User = nil
		parts[i] = u.String()
	}
	return strings.Join(parts, ",")
}

// setUpStream creates the stream, or updates its limits and replicas, trying again until
// streamSetupTimeout passes: a cluster that has just started answers only once it has
// elected its leaders.
func (b *natsStore) setUpStream(ctx context.Context, history historyLimits, replicas int) (*jetstream.StreamInfo, error) {
	cfg := jetstream.StreamConfig{
		Name:        b.name,
		Description: "sse-dashboard topic events and their history",
		Subjects:    []string{b.prefix + ".>"},
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		MaxMsgs:     int64(history.count),
		MaxAge:      history.age,
		MaxBytes:    int64(history.bytes),
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
		Duplicates:  min(2*time.Minute, history.age),
		AllowDirect: true,
	}
	deadline := time.Now().Add(streamSetupTimeout)
	for {
		attempt, cancel := context.WithTimeout(ctx, 5*time.Second)
		stream, err := b.js.CreateOrUpdateStream(attempt, cfg)
		cancel()
		if err == nil {
			b.stream = stream
			return stream.CachedInfo(), nil
		}
		if time.Now().After(deadline) {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// streamEpoch returns the epoch of a stream created at created: its creation time in
// nanoseconds, in base 32. Every replica reads the same time, and a stream deleted and
// created again gets another, so an id of the old stream resets.
func streamEpoch(created time.Time) string {
	return strconv.FormatUint(uint64(created.UnixNano()), 32)
}

// consumeStream consumes the whole stream, after the last sequence delivered, until ctx ends.
// Its consumer is an ordered one, made here rather than by jetstream.OrderedConsumer: in
// memory on one server, no acks, its delivery sequence checked for gaps, and made again
// after the last event delivered whenever it fails (NATS gone, its server lost, a gap).
// The library's ordered consumer waits up to 10 s for each re-creation and then backs off,
// which stalls delivery for up to 11 s after the loss of a cluster node; this one asks
// again within 2 s.
func (b *natsStore) consumeStream(ctx context.Context) {
	pause := consumePause
	for {
		delivered, err := b.consumeOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		b.m.consumerRestarts.Inc()
		b.logger.Warn("nats consumer interrupted: it starts again after the last event delivered",
			"last_seq", b.delivered.Load(), "error", err)
		if delivered {
			pause = consumePause
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(pause):
		}
		pause = min(2*pause, 2*time.Second)
	}
}

// consumePause is the first pause before the replica's consumer is made again.
const consumePause = 100 * time.Millisecond

// consumeOnce makes a consumer of the whole stream from the sequence after the last one
// delivered and hands each of its messages to deliver, until it fails; it reports whether
// it delivered any.
func (b *natsStore) consumeOnce(ctx context.Context) (bool, error) {
	cons, err := b.openConsumer(ctx, b.delivered.Load()+1, 30*time.Second)
	if err != nil {
		return false, err
	}
	// In the background: NATS may be away, and the next consumer need not wait.
	defer func() { go b.removeConsumer(cons) }()
	// Pulls of 4 s with a heartbeat a second: a consumer lost with its server is noticed
	// within about two seconds.
	it, err := cons.Messages(jetstream.PullExpiry(4*time.Second), jetstream.PullHeartbeat(time.Second),
		jetstream.WithMessagesErrOnMissingHeartbeat(true))
	if err != nil {
		return false, err
	}
	defer it.Stop()
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	for next := uint64(1); ; next++ {
		msg, err := it.Next()
		if err != nil {
			return next > 1, err
		}
		meta, err := msg.Metadata()
		if err != nil {
			return next > 1, err
		}
		if meta.Sequence.Consumer != next {
			return next > 1, fmt.Errorf("delivery %d came after %d: a gap", meta.Sequence.Consumer, next-1)
		}
		if want := b.delivered.Load() + 1; meta.Sequence.Stream != want {
			b.resync(want, meta.Sequence.Stream)
		}
		b.deliver(msg, meta)
	}
}

// resync ends every local subscription because the stream no longer has the events from
// sequence missing on, up to the one before next (its limits removed them while this
// replica's consumer was away): their clients resume, and learn with a reset that those
// events are gone, instead of missing them unaware.
func (b *natsStore) resync(missing, next uint64) {
	b.m.resyncs.Inc()
	b.logger.Warn("nats stream moved past events this replica never delivered: its topic streams resume from history",
		"first_missing", missing, "next", next)
	b.fan.resync(next - 1)
}

// natsRequestTimeout bounds each request to JetStream's API (a consumer made, the stream's
// state read): during a leader election a request may go unanswered, and asking again soon
// beats waiting long.
const natsRequestTimeout = 2 * time.Second

// openConsumer makes a consumer of the whole stream from sequence from:
// in memory on one server, no acks, removed by the server once idle for that long.
func (b *natsStore) openConsumer(ctx context.Context, from uint64, idle time.Duration) (jetstream.Consumer, error) {
	ctx, cancel := context.WithTimeout(ctx, natsRequestTimeout)
	defer cancel()
	cons, err := b.stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Description:       "sse-dashboard",
		DeliverPolicy:     jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:       from,
		AckPolicy:         jetstream.AckNonePolicy,
		MemoryStorage:     true,
		Replicas:          1,
		InactiveThreshold: idle,
	})
	if err != nil {
		return nil, fmt.Errorf("create a consumer: %w", err)
	}
	return cons, nil
}

// removeConsumer deletes a consumer no longer read, waiting at most natsRequestTimeout:
// the server would remove it once idle anyway.
func (b *natsStore) removeConsumer(cons jetstream.Consumer) {
	info := cons.CachedInfo()
	if info == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), natsRequestTimeout)
	defer cancel()
	_ = b.js.DeleteConsumer(ctx, b.name, info.Name)
}

// deliver hands one message of the stream to the fan-out, which frames it only if a local
// subscriber wants it, and notes the id its publisher gave it. A message that is no topic
// event (a subject of no topic, a refused event type) moves the sequence on and reaches no one.
func (b *natsStore) deliver(msg jetstream.Msg, meta *jetstream.MsgMetadata) {
	seq := meta.Sequence.Stream
	p, ok := b.decode(msg.Subject(), msg.Headers(), msg.Data())
	if !ok {
		b.m.skipped.Inc()
	}
	if p.id != "" {
		b.mu.Lock()
		b.given.add(p.id, seq)
		b.mu.Unlock()
	}
	b.fan.deliver(seq, &p, func() *topicEvent {
		return &topicEvent{seq: seq, topics: p.topics, private: p.private, id: p.id, at: meta.Timestamp, frame: b.ids.frame(seq, &p)}
	})
	b.delivered.Store(seq)
}

// decode returns the event a message of the stream carries, or false if it carries none.
func (b *natsStore) decode(subject string, header nats.Header, data []byte) (publication, bool) {
	p := publication{data: data, event: header.Get(headerEvent), retry: header.Get(headerRetry),
		id: header.Get(headerID), private: header.Get(headerPrivate) != ""}
	if subject == b.prefix+"."+manyTopics {
		p.topics = header.Values(headerTopic)
	} else if topic, ok := subjectTopic(b.prefix, subject); ok {
		p.topics, p.ownDialect = []string{topic}, true
		// A topic of the hub's own dialect that needs a token is private however it was
		// published, straight to NATS included.
		p.private = p.private || b.ownPrivate != nil && b.ownPrivate(topic)
	}
	if len(p.topics) == 0 || checkEventType(p.event) != nil {
		return publication{}, false
	}
	return p, true
}

// Publish publishes p to the stream and returns its sequence number once JetStream has
// acknowledged it, stored on as many servers as the stream has replicas. With a key,
// JetStream stores a retry within the stream's duplicate window once and answers with the
// first one's number; the first one is read back, and a key reused for another event is
// refused. An id its publisher gives is deduplicated the same way, across replicas. While
// disconnected it fails at once: nothing is buffered.
func (b *natsStore) Publish(ctx context.Context, p publication) (uint64, bool, error) {
	if err := b.connected(); err != nil {
		b.m.publishFailures.Inc()
		return 0, false, err
	}
	b.mu.Lock()
	_, taken := b.given.get(p.id)
	b.mu.Unlock()
	if p.id != "" && taken {
		return 0, false, errIDTaken
	}
	msg := &nats.Msg{Subject: subjectOf(b.prefix, &p), Data: p.data, Header: nats.Header{}}
	for name, value := range map[string]string{headerEvent: p.event, headerRetry: p.retry, headerID: p.id} {
		if value != "" {
			msg.Header.Set(name, value)
		}
	}
	if p.private {
		msg.Header.Set(headerPrivate, "1")
	}
	if msg.Subject == b.prefix+"."+manyTopics {
		msg.Header[headerTopic] = p.topics
	}
	opts := []jetstream.PublishOpt{jetstream.WithExpectStream(b.name)}
	keyed := p
	if keyed.key == "" && p.id != "" {
		// An id names one event across topics and publishers.
		keyed.key, keyed.publisher, keyed.topics = "id\x00"+p.id, "", nil
	}
	if keyed.key != "" {
		opts = append(opts, jetstream.WithMsgID(keyed.scopedKey()))
	}
	ctx, cancel := context.WithTimeout(ctx, publishTimeout)
	defer cancel()
	ack, err := b.js.PublishMsg(ctx, msg, opts...)
	if err != nil {
		b.m.publishFailures.Inc()
		return 0, false, fmt.Errorf("%w: %v", errBrokerUnavailable, err)
	}
	if ack.Duplicate {
		if err := b.sameEvent(ctx, ack.Sequence, p); err != nil {
			if p.key == "" && errors.Is(err, errKeyReused) {
				err = errIDTaken // no key: it is the publisher's id that was used already
			}
			return 0, false, err
		}
	}
	return ack.Sequence, ack.Duplicate, nil
}

// sameEvent reports errKeyReused unless the stored event seq, the first publish under p's
// key, is the event p publishes. An event that limits removed since cannot be compared, and
// counts as the same.
func (b *natsStore) sameEvent(ctx context.Context, seq uint64, p publication) error {
	stored, err := b.stream.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: read the first publish under this key: %v", errBrokerUnavailable, err)
	}
	first, _ := b.decode(stored.Subject, stored.Header, stored.Data)
	if first.digest() != p.digest() {
		return errKeyReused
	}
	return nil
}

// connected returns nil while connected to NATS, else an errBrokerUnavailable that says how
// the connection stands.
func (b *natsStore) connected() error {
	if status := b.nc.Status(); status != nats.CONNECTED {
		return fmt.Errorf("%w: NATS is %s", errBrokerUnavailable, strings.ToLower(status.String()))
	}
	return nil
}

// Newest reads the stream's last sequence number.
func (b *natsStore) Newest(ctx context.Context) (uint64, error) {
	state, err := b.state(ctx)
	return state.LastSeq, err
}

// state reads the stream's state, waiting at most natsRequestTimeout.
func (b *natsStore) state(ctx context.Context) (jetstream.StreamState, error) {
	if err := b.connected(); err != nil {
		return jetstream.StreamState{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, natsRequestTimeout)
	defer cancel()
	info, err := b.stream.Info(ctx)
	if err != nil {
		return jetstream.StreamState{}, fmt.Errorf("%w: read the stream's state: %v", errBrokerUnavailable, err)
	}
	return info.State, nil
}

// firstKept returns the sequence number of the first event the stream still keeps, or of
// the next to come when it keeps none.
func firstKept(state jetstream.StreamState) uint64 {
	if state.Msgs == 0 {
		return state.LastSeq + 1
	}
	return state.FirstSeq
}

// Replay reads the events sel wants after sequence after up to upTo, after a turn among the
// replays under way. The stream's first event is checked before the replay and once it is
// read: limits that removed an event meanwhile give resetHistoryGone, never a replay with a
// hole.
func (b *natsStore) Replay(ctx context.Context, sel *selection, after, upTo uint64) ([]*topicEvent, uint64, resetReason, error) {
	if err := b.connected(); err != nil {
		return nil, 0, "", err
	}
	if err := b.takeTurn(ctx); err != nil {
		return nil, 0, "", err
	}
	defer b.giveTurn()
	state, err := b.state(ctx)
	if err != nil {
		return nil, 0, "", err
	}
	if after+1 < firstKept(state) {
		return nil, 0, resetHistoryGone, nil
	}
	events, readTo, unread, err := b.replay(ctx, sel, after, upTo)
	if err != nil {
		return nil, 0, "", fmt.Errorf("%w: replay history: %v", errBrokerUnavailable, err)
	}
	if state, err = b.state(ctx); err != nil {
		return nil, 0, "", err
	}
	// Events from unread on might have been removed before the consumer reached them.
	if unread < firstKept(state) {
		return nil, 0, resetHistoryGone, nil
	}
	return events, readTo, "", nil
}

// takeTurn waits for one of the -nats-replays places, or fails when ctx ends first: a
// reconnect storm of thousands of clients queues here instead of opening as many consumers.
func (b *natsStore) takeTurn(ctx context.Context) error {
	start := time.Now()
	b.m.replaysQueued.Inc()
	defer b.m.replaysQueued.Dec()
	select {
	case b.replays <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("%w: no turn to read history within %s", errBrokerUnavailable, time.Since(start).Round(time.Millisecond))
	}
	b.m.replayWait.Observe(time.Since(start).Seconds())
	b.m.replaysInFlight.Inc()
	return nil
}

// giveTurn gives a place taken by takeTurn back.
func (b *natsStore) giveTurn() {
	b.m.replaysInFlight.Dec()
	<-b.replays
}

// maxReplayRead is the most stream messages one replay call reads, whatever they hold: a
// client of a quiet topic that resumes from an old id reads the rest in later calls.
const maxReplayRead = 4096

// replay reads the events sel wants after sequence after up to upTo, or about
// maxReplayChunk bytes of them (or maxReplayRead messages), and returns where it read to, with a
// consumer of the whole stream (in memory, no acks, deliveries checked for gaps), removed in
// the background once read. It reads every message in order and stops at upTo itself, so
// that no count the server keeps, which a leader election can leave behind for a moment,
// decides where the replay ends. It also returns unread: the first sequence number missing
// from what the consumer delivered, which limits may have removed before the consumer
// reached it; every event before unread was read.
func (b *natsStore) replay(ctx context.Context, sel *selection, after, upTo uint64) (events []*topicEvent, readTo, unread uint64, err error) {
	b.m.replays.Inc()
	cons, err := b.openConsumer(ctx, after+1, replayIdle)
	if err != nil {
		return nil, 0, 0, err
	}
	defer func() { go b.removeConsumer(cons) }()
	read := after // the last sequence number the consumer delivered
	// skipped notes the first hole before next in what the consumer delivered; done
	// returns the replay, unread being read + 1 when there was none.
	skipped := func(next uint64) {
		if unread == 0 && next > read+1 {
			unread = read + 1
		}
	}
	done := func(readTo uint64) ([]*topicEvent, uint64, uint64, error) {
		if unread == 0 {
			unread = read + 1
		}
		return events, readTo, unread, nil
	}
	// A heartbeat a second, as for the replica's consumer: a replay whose consumer was lost
	// with its server fails within two seconds, and its client comes back, rather than
	// waiting out resumeTimeout. Batches of at most 256 messages.
	it, err := cons.Messages(jetstream.PullMaxMessages(int(min(upTo-after, 256))),
		jetstream.PullExpiry(4*time.Second), jetstream.PullHeartbeat(time.Second),
		jetstream.WithMessagesErrOnMissingHeartbeat(true))
	if err != nil {
		return nil, 0, 0, err
	}
	defer it.Stop()
	size := 0
	for next := uint64(1); ; next++ {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			return nil, 0, 0, err
		}
		meta, err := msg.Metadata()
		if err != nil {
			return nil, 0, 0, err
		}
		if meta.Sequence.Consumer != next {
			return nil, 0, 0, fmt.Errorf("replay delivery %d came after %d: a gap", meta.Sequence.Consumer, next-1)
		}
		seq := meta.Sequence.Stream
		if seq > upTo {
			skipped(upTo + 1)
			return done(upTo)
		}
		skipped(seq)
		read = seq
		if p, ok := b.decode(msg.Subject(), msg.Headers(), msg.Data()); ok {
			ev := &topicEvent{seq: seq, topics: p.topics, private: p.private, id: p.id, at: meta.Timestamp}
			if sel.wants(ev) {
				ev.frame = b.ids.frame(seq, &p)
				events = append(events, ev)
				size += len(ev.frame)
			}
		}
		switch {
		case seq == upTo:
			return done(upTo)
		case size >= maxReplayChunk || next >= maxReplayRead:
			return done(seq)
		}
	}
}

// Oldest reads the sequence number of the stream's first event, or of the next to come.
func (b *natsStore) Oldest(ctx context.Context) (uint64, error) {
	state, err := b.state(ctx)
	return firstKept(state), err
}

// Lookup returns the sequence number of the event its publisher gave id, if this replica has
// seen it since it started, or in the history it read then.
func (b *natsStore) Lookup(id string) (uint64, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.given.get(id)
}

// indexIDs reads the headers of the stream's events up to last and notes the ids their
// publishers gave them, so that a client may resume after one of them on any replica.
func (b *natsStore) indexIDs(ctx context.Context, last uint64) error {
	if last == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, streamSetupTimeout)
	defer cancel()
	cons, err := b.stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Description:       "sse-dashboard ids",
		DeliverPolicy:     jetstream.DeliverAllPolicy,
		AckPolicy:         jetstream.AckNonePolicy,
		HeadersOnly:       true,
		MemoryStorage:     true,
		Replicas:          1,
		InactiveThreshold: replayIdle,
	})
	if err != nil {
		return fmt.Errorf("read the ids of the history: %w", err)
	}
	defer b.removeConsumer(cons)
	if cons.CachedInfo().NumPending == 0 {
		return nil
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(500))
	if err != nil {
		return err
	}
	defer it.Stop()
	for {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			return fmt.Errorf("read the ids of the history: %w", err)
		}
		meta, err := msg.Metadata()
		if err != nil {
			return err
		}
		if id := msg.Headers().Get(headerID); id != "" {
			b.mu.Lock()
			b.given.add(id, meta.Sequence.Stream)
			b.mu.Unlock()
		}
		if meta.Sequence.Stream >= last || meta.NumPending == 0 {
			return nil
		}
	}
}

// Health reports whether NATS is reachable, and for how long it has not been.
func (b *natsStore) Health() (bool, string) {
	if b.nc.Status() == nats.CONNECTED {
		return true, "nats: connected"
	}
	since := "start"
	if at := b.disconnectedAt.Load(); at != 0 {
		since = time.Since(time.Unix(0, at)).Round(time.Second).String()
	}
	return false, "nats: " + strings.ToLower(b.nc.Status().String()) + " for " + since +
		": open streams go on, publishing answers 503, streams that must read history come back later"
}

// close stops the replica's consumer and closes the connection.
func (b *natsStore) close() {
	b.stopConsuming()
	<-b.consumed
	b.nc.Close()
}

// natsMetrics count what the JetStream broker does.
type natsMetrics struct {
	reconnects       prometheus.Counter
	consumerRestarts prometheus.Counter
	publishFailures  prometheus.Counter
	skipped          prometheus.Counter
	replays          prometheus.Counter
	resyncs          prometheus.Counter
	replaysQueued    prometheus.Gauge
	replaysInFlight  prometheus.Gauge
	replayWait       prometheus.Histogram
}

// newNATSMetrics registers the broker's counters with reg.
func newNATSMetrics(reg *prometheus.Registry) *natsMetrics {
	gauge := func(opts prometheus.GaugeOpts) prometheus.Gauge {
		g := prometheus.NewGauge(opts)
		reg.MustRegister(g)
		return g
	}
	return &natsMetrics{
		reconnects: registerCounter(reg, prometheus.CounterOpts{
			Name: "sse_nats_reconnects_total",
			Help: "Times the connection to NATS came back after it was lost.",
		}),
		consumerRestarts: registerCounter(reg, prometheus.CounterOpts{
			Name: "sse_nats_consumer_restarts_total",
			Help: "Interruptions of the replica's stream consumer (lost heartbeats, lost server, reconnects); each starts it again after the last event delivered.",
		}),
		publishFailures: registerCounter(reg, prometheus.CounterOpts{
			Name: "sse_nats_publish_failures_total",
			Help: "Publishes that JetStream did not acknowledge, answered 503.",
		}),
		skipped: registerCounter(reg, prometheus.CounterOpts{
			Name: "sse_nats_skipped_total",
			Help: "Stream messages on no topic's subject or with a refused event type, delivered to no one.",
		}),
		replays: registerCounter(reg, prometheus.CounterOpts{
			Name: "sse_nats_replays_total",
			Help: "Short-lived consumers opened to replay history to resuming streams.",
		}),
		resyncs: registerCounter(reg, prometheus.CounterOpts{
			Name: "sse_nats_resyncs_total",
			Help: "Times the replica's consumer found events removed from the stream before it delivered them, and ended every local topic stream so that each resumes from history.",
		}),
		replaysQueued: gauge(prometheus.GaugeOpts{
			Name: "sse_nats_replays_queued",
			Help: "Resuming streams waiting for a turn to read history (-nats-replays turns at once).",
		}),
		replaysInFlight: gauge(prometheus.GaugeOpts{
			Name: "sse_nats_replays_in_flight",
			Help: "Resuming streams reading history now: at most -nats-replays.",
		}),
		replayWait: registerHistogram(reg, prometheus.HistogramOpts{
			Name:    "sse_nats_replay_wait_seconds",
			Help:    "How long resuming streams waited for a turn to read history.",
			Buckets: []float64{0.001, 0.01, 0.1, 0.5, 1, 2, 5, 10},
		}),
	}
}

// registerGauges registers the gauges that read the connection and the consumer when scraped.
func (b *natsStore) registerGauges(reg *prometheus.Registry) {
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "sse_nats_connected",
			Help: "1 while connected to a NATS server, else 0.",
		}, func() float64 {
			if b.nc.Status() == nats.CONNECTED {
				return 1
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "sse_nats_delivered_sequence",
			Help: "Stream sequence of the last event the replica's consumer delivered.",
		}, func() float64 { return float64(b.delivered.Load()) }),
	)
}
