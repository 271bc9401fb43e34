package main

// The JetStream broker (-nats): topics and their history live in one stream that every
// replica shares, so an event has the same id on every replica and a client resumes on any
// of them. Each replica consumes the stream once and fans out through its hub; a client that
// resumes reads what it missed with a short-lived consumer of its own, a bounded number of
// them at once. docs/topics.md says how topics map to subjects; docs/deployment.md how to
// run the NATS cluster.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
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

// headerEvent is the NATS message header that carries the SSE event type; a message without
// it is an SSE message (onmessage).
const headerEvent = "SSE-Event"

// Times the broker waits for NATS.
const (
	streamSetupTimeout = 20 * time.Second // at start: a new cluster elects its leaders first
	publishTimeout     = 5 * time.Second  // for the acknowledgement of one publish
	replayIdle         = 10 * time.Second // a replay's consumer left behind is removed by the server after this
)

// natsBroker keeps topics and history in one JetStream stream. Its hub is the local fan-out:
// one ordered consumer of the whole stream feeds it, and it sends each event, framed once,
// to every local subscriber of its topic.
type natsBroker struct {
	nc      *nats.Conn
	js      jetstream.JetStream
	stream  jetstream.Stream
	name    string // the stream's
	prefix  string
	hub     *hub
	logger  *slog.Logger
	replays chan struct{} // a place per replay under way
	// stopConsuming ends the replica's consumer, and consumed closes once it has.
	stopConsuming context.CancelFunc
	consumed      chan struct{}
	m             *natsMetrics

	disconnectedAt atomic.Int64 // Unix ns of the last disconnect, 0 while connected
	delivered      atomic.Uint64
}

// startNATS connects to the NATS servers of cfg, creates or updates the stream with the
// history limits, makes h follow it (ids in the stream's epoch, from its last sequence on)
// and starts the one consumer that feeds h. Its metrics go to reg.
func startNATS(ctx context.Context, cfg natsConfig, history historyLimits, h *hub, reg *prometheus.Registry, logger *slog.Logger) (*natsBroker, error) {
	b := &natsBroker{
		name:    streamName(cfg.prefix),
		prefix:  cfg.prefix,
		hub:     h,
		logger:  logger,
		replays: make(chan struct{}, cfg.replays),
		m:       newNATSMetrics(reg),
	}
	opts, err := b.options(cfg)
	if err != nil {
		return nil, err
	}
	servers := redactURLs(cfg.urls)
	b.nc, err = nats.Connect(cfg.urls, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s (-nats): %w", servers, err)
	}
	if b.js, err = jetstream.New(b.nc); err != nil {
		b.nc.Close()
		return nil, fmt.Errorf("JetStream at %s: %w", servers, err)
	}
	info, err := b.setUpStream(ctx, history, cfg.replicas)
	if err != nil {
		b.nc.Close()
		return nil, fmt.Errorf("create or update the stream %s at %s: %w", b.name, servers, err)
	}
	h.follow(streamEpoch(info.Created), info.State.LastSeq)
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
		"subjects", cfg.prefix+".>", "replicas", info.Config.Replicas, "epoch", h.epoch,
		"first_seq", info.State.FirstSeq, "last_seq", info.State.LastSeq)
	return b, nil
}

// options returns the connection options of cfg: reconnect for ever with jitter, publish
// nothing while disconnected (so that a publish acknowledged is stored, never buffered to
// be lost), notice a silent server within seconds, and the credentials and TLS settings.
// No option's value is ever logged.
func (b *natsBroker) options(cfg natsConfig) ([]nats.Option, error) {
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
func (b *natsBroker) setUpStream(ctx context.Context, history historyLimits, replicas int) (*jetstream.StreamInfo, error) {
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
func (b *natsBroker) consumeStream(ctx context.Context) {
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
func (b *natsBroker) consumeOnce(ctx context.Context) (bool, error) {
	cons, err := b.openConsumer(ctx, b.delivered.Load()+1, nil, 30*time.Second)
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
		b.deliver(msg, meta)
	}
}

// natsRequestTimeout bounds each request to JetStream's API (a consumer made, the stream's
// state read): during a leader election a request may go unanswered, and asking again soon
// beats waiting long.
const natsRequestTimeout = 2 * time.Second

// openConsumer makes a consumer of the stream's subjects (all when nil) from sequence from:
// in memory on one server, no acks, removed by the server once idle for that long.
func (b *natsBroker) openConsumer(ctx context.Context, from uint64, subjects []string, idle time.Duration) (jetstream.Consumer, error) {
	ctx, cancel := context.WithTimeout(ctx, natsRequestTimeout)
	defer cancel()
	cons, err := b.stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Description:       "sse-dashboard",
		DeliverPolicy:     jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:       from,
		FilterSubjects:    subjects,
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
func (b *natsBroker) removeConsumer(cons jetstream.Consumer) {
	info := cons.CachedInfo()
	if info == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), natsRequestTimeout)
	defer cancel()
	_ = b.js.DeleteConsumer(ctx, b.name, info.Name)
}

// deliver frames one message of the stream and hands it to the hub, which sends it to
// every local subscriber of its topic. A message on no topic's subject, or with an event
// type a publisher may not use, moves the sequence on and reaches no one.
func (b *natsBroker) deliver(msg jetstream.Msg, meta *jetstream.MsgMetadata) {
	seq := meta.Sequence.Stream
	topic, frame, ok := b.frame(seq, msg)
	if !ok {
		b.m.skipped.Inc()
		topic, frame = "", nil
	}
	b.hub.deliver(seq, topic, frame)
	b.delivered.Store(seq)
}

// frame returns the topic of msg, the stream's message seq, and its SSE frame, or false if
// msg is no topic event.
func (b *natsBroker) frame(seq uint64, msg jetstream.Msg) (string, []byte, bool) {
	topic, ok := subjectTopic(b.prefix, msg.Subject())
	if !ok {
		return "", nil, false
	}
	event := msg.Headers().Get(headerEvent)
	if checkEventName(event) != nil {
		return "", nil, false
	}
	var id [64]byte
	return topic, appendNamedEvent(nil, b.hub.appendID(id[:0], seq), event, msg.Data()), true
}

// PublishEvent publishes p to the stream and returns its id once JetStream has acknowledged
// it, stored on as many servers as the stream has replicas. With a key, JetStream stores a
// retry within the stream's duplicate window once and answers with the first one's id.
// While disconnected it fails at once: nothing is buffered.
func (b *natsBroker) PublishEvent(ctx context.Context, p publication) (string, error) {
	if b.nc.Status() != nats.CONNECTED {
		b.m.publishFailures.Inc()
		return "", fmt.Errorf("%w: NATS is %s", errBrokerUnavailable, strings.ToLower(b.nc.Status().String()))
	}
	msg := &nats.Msg{Subject: topicSubject(b.prefix, p.topic), Data: p.data}
	if p.event != "" {
		msg.Header = nats.Header{headerEvent: {p.event}}
	}
	opts := []jetstream.PublishOpt{jetstream.WithExpectStream(b.name)}
	if p.key != "" {
		opts = append(opts, jetstream.WithMsgID(p.key))
	}
	ctx, cancel := context.WithTimeout(ctx, publishTimeout)
	defer cancel()
	ack, err := b.js.PublishMsg(ctx, msg, opts...)
	if err != nil {
		b.m.publishFailures.Inc()
		return "", fmt.Errorf("%w: %v", errBrokerUnavailable, err)
	}
	if !ack.Duplicate {
		b.hub.metrics.published.Inc()
	}
	return b.hub.id(ack.Sequence), nil
}

// SubscribeFrom subscribes to topics on the local hub, noting the last sequence L it has
// delivered under the hub's lock, then replays from the stream the events of topics after
// lastID up to L: every later event comes live, so none is missed or sent twice. An id
// the stream no longer has, of another stream, from the future or malformed gives a reset.
// It fails when the stream cannot be read in time: NATS is unreachable, or the turns to
// read history stay taken until ctx ends.
func (b *natsBroker) SubscribeFrom(ctx context.Context, topics []string, lastID string, hasLastID bool, onDrop func()) (subscription, error) {
	sub, last := b.hub.subscribeLive(topics, onDrop)
	s := subscription{sub: sub, position: b.hub.id(last)}
	if !hasLastID {
		return s, nil
	}
	after, reason := b.parseID(lastID)
	if reason == "" && after != last {
		var err error
		if s.replay, reason, err = b.resume(ctx, sub, after, last); err != nil {
			b.hub.Unsubscribe(sub)
			return subscription{}, err
		}
	}
	if reason != "" {
		s.reset = reason
		b.hub.metrics.resets[reason].Inc()
		return s, nil
	}
	s.position = lastID
	return s, nil
}

// parseID returns the sequence number in an id a client sent, or why it is none of this
// stream's.
func (b *natsBroker) parseID(id string) (uint64, resetReason) {
	epoch, number, ok := strings.Cut(id, "-")
	if !ok || epoch == "" {
		return 0, resetInvalid
	}
	seq, err := strconv.ParseUint(number, 10, 64)
	if err != nil || number[0] == '+' {
		return 0, resetInvalid
	}
	if epoch != b.hub.epoch {
		return 0, resetOtherRun
	}
	return seq, ""
}

// resume returns the events of sub's topics after sequence after up to last, the last one
// the hub delivered, or why the stream cannot give them. A client ahead of this replica
// (it comes from one whose consumer was further on) gets nothing replayed, and its
// subscription skips what it has. It waits for a turn among the replays under way.
func (b *natsBroker) resume(ctx context.Context, sub *subscriber, after, last uint64) ([]*hubEvent, resetReason, error) {
	if b.nc.Status() != nats.CONNECTED {
		return nil, "", fmt.Errorf("%w: NATS is %s", errBrokerUnavailable, strings.ToLower(b.nc.Status().String()))
	}
	if err := b.takeTurn(ctx); err != nil {
		return nil, "", err
	}
	defer b.giveTurn()
	infoCtx, cancel := context.WithTimeout(ctx, natsRequestTimeout)
	info, err := b.stream.Info(infoCtx)
	cancel()
	if err != nil {
		return nil, "", fmt.Errorf("%w: read the stream's state: %v", errBrokerUnavailable, err)
	}
	state := info.State
	if after > last {
		if after > state.LastSeq {
			return nil, resetFuture, nil
		}
		b.hub.skipThrough(sub, after)
		return nil, "", nil
	}
	// The first event still kept, or the next to come when none is.
	first := state.FirstSeq
	if state.Msgs == 0 {
		first = state.LastSeq + 1
	}
	if after+1 < first {
		return nil, resetHistoryGone, nil
	}
	events, err := b.replay(ctx, sub.topics, after, last)
	if err != nil {
		return nil, "", fmt.Errorf("%w: replay history: %v", errBrokerUnavailable, err)
	}
	return events, "", nil
}

// takeTurn waits for one of the -nats-replays places, or fails when ctx ends first: a
// reconnect storm of thousands of clients queues here instead of opening as many consumers.
func (b *natsBroker) takeTurn(ctx context.Context) error {
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
func (b *natsBroker) giveTurn() {
	b.m.replaysInFlight.Dec()
	<-b.replays
}

// replay reads the events of topics after sequence after up to last with an ordered
// consumer filtered to their subjects (in memory, no acks, deliveries checked for gaps),
// and removes the consumer when done.
func (b *natsBroker) replay(ctx context.Context, topics []string, after, last uint64) ([]*hubEvent, error) {
	b.m.replays.Inc()
	subjects := make([]string, len(topics))
	for i, topic := range topics {
		subjects[i] = topicSubject(b.prefix, topic)
	}
	cons, err := b.openConsumer(ctx, after+1, subjects, replayIdle)
	if err != nil {
		return nil, err
	}
	defer b.removeConsumer(cons)
	if cons.CachedInfo().NumPending == 0 {
		return nil, nil
	}
	// A heartbeat a second, as for the replica's consumer: a replay whose consumer was lost
	// with its server fails within two seconds, and its client comes back, rather than
	// waiting out resumeTimeout.
	it, err := cons.Messages(jetstream.PullMaxMessages(int(min(last-after, 500))),
		jetstream.PullExpiry(4*time.Second), jetstream.PullHeartbeat(time.Second),
		jetstream.WithMessagesErrOnMissingHeartbeat(true))
	if err != nil {
		return nil, err
	}
	defer it.Stop()
	var events []*hubEvent
	for next := uint64(1); ; next++ {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			return nil, err
		}
		meta, err := msg.Metadata()
		if err != nil {
			return nil, err
		}
		if meta.Sequence.Consumer != next {
			return nil, fmt.Errorf("replay delivery %d came after %d: a gap", meta.Sequence.Consumer, next-1)
		}
		seq := meta.Sequence.Stream
		if seq > last {
			return events, nil
		}
		if topic, frame, ok := b.frame(seq, msg); ok {
			events = append(events, &hubEvent{seq: seq, topic: topic, at: meta.Timestamp, frame: frame})
		}
		if seq == last || meta.NumPending == 0 {
			return events, nil
		}
	}
}

// Unsubscribe ends sub's subscription to the local hub.
func (b *natsBroker) Unsubscribe(sub *subscriber) {
	b.hub.Unsubscribe(sub)
}

// Health reports whether NATS is reachable, and for how long it has not been.
func (b *natsBroker) Health() (bool, string) {
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

// Close stops the replica's consumer and closes the connection.
func (b *natsBroker) Close() {
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
func (b *natsBroker) registerGauges(reg *prometheus.Registry) {
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
