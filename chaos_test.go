package main

// The chaos test of the JetStream broker: two replicas behind the shipped nginx, a three-node
// cluster, one replica cut off from NATS while more events than its history keeps go by,
// a NATS node killed and started again, streams ended every few seconds so that clients
// resume on whichever replica nginx picks, behind or ahead, publishers retrying with their
// idempotency keys, and every subscriber's list of events checked, to the event, against
// what was published. It holds the one promise the service makes a subscriber: each event of
// its topics once, in order, or a reset event that says where history was lost and from
// where it goes on.

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// eventSeq returns the sequence number in an id, epoch-seq, and whether it is one.
func eventSeq(id string) (uint64, bool) {
	_, number, ok := strings.Cut(id, "-")
	seq, err := strconv.ParseUint(number, 10, 64)
	return seq, ok && err == nil
}

// resetHistoryGoneData is the data of the one reset a subscriber may get in this test: its
// replica's stream moved past events before they reached it. No other reason can be right:
// every id is of this stream (not other_run), was stored before a client had it (not future)
// and was written by a replica (not invalid).
const resetHistoryGoneData = `{"reason":"history_gone"}`

// resumedList is what one subscriber's list of events was found to be, against the events
// published to its topics: how many resets it held and how many of its topics' events those
// skipped, or the first way it broke the promise.
type resumedList struct {
	resets, skipped int
	problem         string
}

// checkResumed compares got, the events one subscriber received, with want, the events
// published to its topics in sequence order. got must be want exactly; or want up to a
// point, then a reset event for history_gone at an id no earlier than the last one the
// subscriber had, then exactly the events of want after the reset's id, and so on for each
// reset. Anything else is a problem: an event twice, a gap without a reset, an id backwards,
// an event that was never published, or missing events at the end.
func checkResumed(got []sseEvent, want []published) resumedList {
	var out resumedList
	next := 0       // the index in want of the event that must come next
	var last uint64 // the sequence number of the last event or reset received
	for i, ev := range got {
		seq, ok := eventSeq(ev.id)
		if !ok {
			out.problem = fmt.Sprintf("event %d has the id %q, not epoch-seq", i, ev.id)
			return out
		}
		if ev.typ == "reset" {
			switch {
			case ev.data != resetHistoryGoneData:
				out.problem = fmt.Sprintf("event %d is a reset at %s with %s, want %s", i, ev.id, ev.data, resetHistoryGoneData)
			case seq < last:
				out.problem = fmt.Sprintf("event %d is a reset at %s, backwards from %d, the last id the subscriber had", i, ev.id, last)
			}
			if out.problem != "" {
				return out
			}
			out.resets++
			for next < len(want) && want[next].seq <= seq {
				next++
				out.skipped++
			}
			last = seq
			continue
		}
		line := ev.id + " " + ev.data
		switch {
		case ev.typ != "message":
			out.problem = fmt.Sprintf("event %d, %q, has the type %q; only messages were published", i, line, ev.typ)
		case seq <= last:
			out.problem = fmt.Sprintf("event %d, %q, comes after %d: a duplicate or an id backwards", i, line, last)
		case next >= len(want):
			out.problem = fmt.Sprintf("event %d, %q, comes after every event published to the topics", i, line)
		case line != want[next].line && seq > want[next].seq:
			out.problem = fmt.Sprintf("event %d, %q, comes where %q must: a gap without a reset", i, line, want[next].line)
		case line != want[next].line:
			out.problem = fmt.Sprintf("event %d, %q, comes where %q must: an event never published", i, line, want[next].line)
		}
		if out.problem != "" {
			return out
		}
		next++
		last = seq
	}
	if next < len(want) {
		out.problem = fmt.Sprintf("the %d events from %q on never came", len(want)-next, want[next].line)
	}
	return out
}

// publishedTo returns the events of all published to any of topics, in sequence order.
func publishedTo(all []published, topics []string) []published {
	var want []published
	for _, e := range all {
		if slices.Contains(topics, e.topic) {
			want = append(want, e)
		}
	}
	slices.SortFunc(want, func(a, b published) int { return cmp.Compare(a.seq, b.seq) })
	return want
}

// acknowledged returns how many events p has had acknowledged so far.
func (p *publisher) acknowledged() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.all)
}

// sumMetric returns the sum of one sample over the replicas at adminURLs.
func sumMetric(t *testing.T, key string, adminURLs ...string) float64 {
	t.Helper()
	var sum float64
	for _, admin := range adminURLs {
		sum += scrape(t, admin)[key]
	}
	return sum
}

func TestNATS_ChaosEverySubscriberGetsThePublishedListOrAResetWhereHistoryWasLost(t *testing.T) {
	skipShort(t, "nginx, a three-node NATS cluster, relays and two server processes")
	const (
		subscribers = 90
		history     = 200
		rate        = 100 // publishes a second
	)
	// The nodes do not tell clients of each other, so a replica reaches NATS only through
	// its own relays and a cut relay cuts it off.
	nodes := make([]*natsNode, 3)
	for i := range nodes {
		nodes[i] = &natsNode{opts: natsOptions(t, fmt.Sprintf("n%d", i+1))}
		nodes[i].opts.Cluster.NoAdvertise = true
	}
	startCluster(t, nodes)
	relays := make([][]*tcpRelay, 2) // relays[r][n]: from replica r to node n
	replicas := make([]*replica, 2)
	for r := range replicas {
		var urls []string
		for _, n := range nodes {
			relay := startRelay(t, strings.TrimPrefix(n.url(), "nats://"), 0)
			relays[r] = append(relays[r], relay)
			urls = append(urls, relay.url())
		}
		// -max-lifetime: every stream ends within about 3 s and resumes, through nginx, on
		// either replica, so resumes meet a replica behind, one ahead, and one cut off.
		replicas[r] = startReplica(t, "-nats", strings.Join(urls, ","), "-nats-replicas", "3",
			"-history", strconv.Itoa(history), "-retry", "300ms", "-retry-spread", "300ms", "-max-lifetime", "3s")
	}
	admins := []string{replicas[0].proc.adminURL, replicas[1].proc.adminURL}
	px := startNginx(t, []string{replicas[0].addr, replicas[1].addr})
	choices := [][]string{{"a"}, {"b"}, {"c"}, {"a", "b"}, {"b", "c"}, {"a", "b", "c"}}
	recorders := startTopicSubscribers(t, []string{px.url}, px.client, subscribers, choices)
	eventually(t, 60*time.Second, "every subscriber subscribed", func() bool { return subscribed(admins...) == subscribers })
	onCut := scrape(t, admins[1])["sse_hub_subscribers"]

	p := &publisher{admins: slices.Clone(admins)}
	var stop atomic.Bool
	publishing := make(chan struct{})
	start := time.Now()
	go func() {
		defer close(publishing)
		p.run(t, 4, rate, []string{"a", "b", "c"}, func(i int) bool { return i < 5000 && !stop.Load() })
	}()
	// Whatever fails below, the publishers stop before the test's cleanups run.
	t.Cleanup(func() { stop.Store(true); <-publishing })
	at := func() time.Duration { return time.Since(start).Round(time.Millisecond) }
	waitPublished := func(n int, what string) {
		t.Helper()
		eventually(t, 90*time.Second, what, func() bool { return p.acknowledged() >= n })
	}

	waitPublished(100, "100 events published before the chaos")
	// Replica 1 cut off from every node while more than its history goes by through replica 0.
	for _, relay := range relays[1] {
		relay.sever(true)
	}
	eventually(t, 30*time.Second, "replica 1 lost NATS", func() bool { return metric(t, admins[1], "sse_nats_connected") == 0 })
	cutAt := p.acknowledged()
	t.Logf("replica 1, with %v subscribers, cut off from NATS at %s after %d publishes", onCut, at(), cutAt)
	waitPublished(cutAt+history+100, "more than -history events published while replica 1 is cut off")
	for _, relay := range relays[1] {
		relay.restore()
	}
	eventually(t, 60*time.Second, "replica 1 finds the events it missed removed and resyncs", func() bool {
		return metric(t, admins[1], "sse_nats_resyncs_total") >= 1
	})
	t.Logf("replica 1 back and resynced at %s, after %d publishes", at(), p.acknowledged())

	// The stream's leader killed while publishing, then started again.
	js := connectJS(t, clusterURLs(nodes))
	var leader *natsNode
	eventually(t, 30*time.Second, "the stream's leader known", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		stream, err := js.Stream(ctx, "sse")
		if err != nil || stream.CachedInfo().Cluster == nil {
			return false
		}
		for _, n := range nodes {
			if n.opts.ServerName == stream.CachedInfo().Cluster.Leader {
				leader = n
			}
		}
		return leader != nil
	})
	killedAt := p.acknowledged()
	leader.stop()
	t.Logf("NATS node %s, the stream's leader, killed at %s after %d publishes", leader.opts.ServerName, at(), killedAt)
	waitPublished(killedAt+100, "100 events published with a node down")
	leader.start(t)
	backAt := p.acknowledged()
	t.Logf("NATS node %s back at %s after %d publishes", leader.opts.ServerName, at(), backAt)
	waitPublished(backAt+100, "100 events published after the node came back")
	stop.Store(true)
	<-publishing
	publishedIn := at()

	p.mu.Lock()
	all := slices.Clone(p.all)
	p.mu.Unlock()
	slices.SortFunc(all, func(a, b published) int { return cmp.Compare(a.seq, b.seq) })
	for i := 1; i < len(all); i++ {
		if all[i].seq == all[i-1].seq {
			t.Fatalf("two publishes acknowledged with one id: %q and %q", all[i-1].line, all[i].line)
		}
	}
	wants := make([][]published, subscribers)
	for i, r := range recorders.subs {
		wants[i] = publishedTo(all, r.topics)
	}
	eventually(t, 60*time.Second, "every subscriber has reached the last event of its topics", func() bool {
		for i, r := range recorders.subs {
			if len(wants[i]) > 0 && !r.reached(wants[i][len(wants[i])-1].seq) {
				return false
			}
		}
		return true
	})
	recorders.stop()

	resets, withResets, skipped := 0, 0, 0
	for i, r := range recorders.subs {
		got := checkResumed(r.events(), wants[i])
		if got.problem != "" {
			t.Errorf("subscriber %d of %v, %d events received, %d published to its topics: %s",
				i, r.topics, len(r.events()), len(wants[i]), got.problem)
		}
		resets += got.resets
		skipped += got.skipped
		if got.resets > 0 {
			withResets++
		}
	}
	// Every stream the replicas opened ended and was counted, and none ended in a panic.
	for i, r := range replicas {
		open := func() bool { return metric(t, r.proc.adminURL, "sse_streams_open") == 0 }
		for deadline := time.Now().Add(30 * time.Second); !open() && time.Now().Before(deadline); {
			time.Sleep(50 * time.Millisecond)
		}
		if n := metric(t, r.proc.adminURL, "sse_streams_open"); n != 0 {
			t.Errorf("replica %d: sse_streams_open = %v with every subscriber gone, want 0", i, n)
		}
		if n := r.proc.logs.count("panic in handler"); n != 0 {
			t.Errorf("replica %d logged %d panics, want none", i, n)
		}
	}
	if resets == 0 {
		t.Errorf("no subscriber got a reset: the subscribers of the replica cut off while %d events went by, more than -history %d, must have",
			history+100, history)
	}
	s := func(key string) float64 { return sumMetric(t, key, admins...) }
	t.Logf("%d publishes in %s (slowest acknowledged after %s); %d subscribers over HTTP/2 through nginx each checked against its topics' events (exactly them, or them up to a reset for history_gone and exactly those after it): %d resets on %d subscribers, skipping %d events of their topics; replicas: resyncs %v, consumer restarts %v, NATS reconnects %v, replays %v, events replayed %v, resets sent %v, streams ended for resync %v and unavailable %v",
		len(all), publishedIn, p.slowest.Round(time.Millisecond), subscribers, resets, withResets, skipped,
		s("sse_nats_resyncs_total"), s("sse_nats_consumer_restarts_total"), s("sse_nats_reconnects_total"),
		s("sse_nats_replays_total"), s("sse_hub_replayed_total"), s(`sse_hub_resets_total{reason="history_gone"}`),
		s(`sse_streams_ended_total{reason="resync"}`), s(`sse_streams_ended_total{reason="unavailable"}`))
}
