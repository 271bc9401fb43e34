package main

import (
	"fmt"
	"net/url"
	"strings"
	"testing"
)

// testHubURL is the hub URL the matcher tests resolve relative topics and patterns against.
const testHubURL = testHub

func TestMercureSpec_MatcherTypes_MatchAsTheSpecSays(t *testing.T) {
	for _, c := range []struct {
		typ, pattern string
		match, miss  []string
	}{
		// Exact: byte for byte, case-sensitive, never resolved or normalized.
		{matchExact, "https://example.com/books/1", []string{"https://example.com/books/1"},
			[]string{"https://example.com/books/1/", "https://EXAMPLE.com/books/1", "/books/1", "https://example.com/books/%31"}},
		{matchExact, "orders", []string{"orders"}, []string{"Orders", "orders/1"}},
		// "*" is every topic, whatever the type.
		{matchExact, "*", []string{"anything", "https://example.com/x", "*"}, nil},
		{matchURLPattern, "*", []string{"anything"}, nil},
		// URL Pattern, absolute and relative (against the hub's URL); components but the
		// host are case-sensitive; a topic that is no URL matches no pattern.
		{matchURLPattern, "https://example.com/books/:id", []string{"https://example.com/books/1", "https://EXAMPLE.com/books/2"},
			[]string{"https://example.com/books/1/reviews", "https://example.com/Books/1", "https://example.org/books/1", "books"}},
		{matchURLPattern, "/.well-known/mercure/subscriptions/:type/:match/:sub",
			[]string{"/.well-known/mercure/subscriptions/exact/a%2Fb/urn%3Auuid%3A1", "https://hub.example/.well-known/mercure/subscriptions/exact/a/s"},
			[]string{"/.well-known/mercure/subscriptions/exact/a", "https://other.example/.well-known/mercure/subscriptions/exact/a/s"}},
		// URI Template (0.x topic=).
		{matchURITemplate, "https://example.com/books/{id}", []string{"https://example.com/books/1"},
			[]string{"https://example.com/books/1/reviews", "https://example.com/authors/1"}},
	} {
		m, err := newTopicMatcher(c.typ, c.pattern, testHubURL)
		if err != nil {
			t.Fatalf("%s %q: %v", c.typ, c.pattern, err)
		}
		for _, topic := range c.match {
			if !m.matches(topic) {
				t.Errorf("%s %q does not match %q, want a match", c.typ, c.pattern, topic)
			}
		}
		for _, topic := range c.miss {
			if m.matches(topic) {
				t.Errorf("%s %q matches %q, want none", c.typ, c.pattern, topic)
			}
		}
	}
}

func TestMercureSpec_Subscription_RefusesMatchersThatAreNone(t *testing.T) {
	for _, c := range []struct{ typ, pattern, want string }{
		{matchURLPattern, "https://example.com/(", "not a URL Pattern"},
		{matchURITemplate, "https://example.com/{id", "not a URI Template"},
		{"regex", "a.*", "not supported"},
		{matchExact, "a\x00b", "control or format character"},
		{matchExact, "a\u200bb", "control or format character"}, // zero-width space, Cf
		{matchExact, "a\u0085b", "control or format character"}, // C1
		{matchExact, "a\xffb", "not valid UTF-8"},
		{matchExact, strings.Repeat("a", maxMatcherLength+1), "bytes long"},
	} {
		_, err := newTopicMatcher(c.typ, c.pattern, testHubURL)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s %q: error %v, want one that says %q", c.typ, c.pattern, err, c.want)
		}
	}
}

func TestMercureSpec_Publication_ReservedNamespaceInEverySpelling(t *testing.T) {
	hub, _ := url.Parse(testHubURL)
	for _, topic := range []string{
		"/.well-known/mercure",
		"/.well-known/mercure/subscriptions/exact/a/b",
		"https://hub.example/.well-known/mercure/subscriptions/x",
		"https://elsewhere.example/.well-known/mercure/x", // any scheme or authority
		"/.well-known/%6Dercure/subscriptions/x",
		"/.well-known/mercure/../mercure/subscriptions/x",
		"/a/../.well-known/mercure",
		"/.well-known/mercure/subscriptions/exact/x/%zz", // a stray % that Go's parser refuses and the URL Standard's takes
	} {
		if !inReservedNamespace(topic, hub) {
			t.Errorf("%q is not in the reserved namespace, want it refused", topic)
		}
	}
	for _, topic := range []string{"/.well-known/mercurex", "https://example.com/books/1", "orders", "/.well-known/mercure-not", "a b %zz"} {
		if inReservedNamespace(topic, hub) {
			t.Errorf("%q is in the reserved namespace, want it allowed", topic)
		}
	}
}

func FuzzTopicMatcher(f *testing.F) {
	for _, seed := range [][3]string{
		{matchExact, "https://example.com/a", "https://example.com/a"},
		{matchURLPattern, "https://example.com/books/:id", "https://example.com/books/1"},
		{matchURLPattern, "/x/:a(\\d+)", "/x/12"},
		{matchURLPattern, "https://*.example.com/*", "https://a.example.com/b"},
		{matchURITemplate, "https://example.com/{a}/{b*}", "https://example.com/1/2"},
		{matchURITemplate, "{+path}", "/a/b"},
		{matchExact, "*", "x"},
	} {
		f.Add(seed[0], seed[1], seed[2])
	}
	f.Fuzz(func(t *testing.T, typ, pattern, topic string) {
		m, err := newTopicMatcher(typ, pattern, testHubURL)
		if err != nil {
			return
		}
		if checkTopicValue("a matcher", pattern) != nil {
			t.Fatalf("%q was compiled though it breaks the value rules", pattern)
		}
		got := m.matches(topic)
		if typ == matchExact && pattern != "*" && got != (pattern == topic) {
			t.Fatalf("exact %q matches %q: %v", pattern, topic, got)
		}
		if pattern == "*" && !got {
			t.Fatalf("* does not match %q", topic)
		}
	})
}

// BenchmarkMercureFanout publishes to one topic of a fan-out holding 10 subscribers of that
// topic, others spread over 999 more exact topics, and 100 subscribers with distinct URL
// Patterns that match none of them, at two sizes: an exact topic is found by lookup, so a
// publish costs the same at 1,000 subscribers as at 10,000. Each pattern is tried once per
// topic and remembers its answer; "new-topic" adds a topic no pattern has seen to every
// publish, so that all 100 are tried each time.
func BenchmarkMercureFanout(b *testing.B) {
	for _, c := range []struct {
		total    int
		newTopic bool
	}{{1000, false}, {10000, false}, {10000, true}} {
		name := fmt.Sprintf("subscribers=%d", c.total)
		if c.newTopic {
			name += "/new-topic"
		}
		total := c.total
		b.Run(name, func(b *testing.B) {
			fan := newFanout(16, 0)
			topic := func(i int) string { return fmt.Sprintf("https://example.com/books/%d", i) }
			var reached []*subscriber
			for i := range total {
				t := topic(i % 1000)
				if i < 10 {
					t = topic(0) // the published topic: 10 subscribers
				} else if i%1000 == 0 {
					t = topic(1)
				}
				sub, _ := fan.subscribe(selection{topics: []string{t}}, 0, nil)
				if i < 10 {
					reached = append(reached, sub)
				}
			}
			for i := range 100 {
				m, err := newTopicMatcher(matchURLPattern, fmt.Sprintf("https://example.com/authors/%d/:id", i), testHubURL)
				if err != nil {
					b.Fatal(err)
				}
				fan.subscribe(selection{matchers: []*topicMatcher{m}}, 0, nil)
			}
			p := &publication{topics: []string{topic(0)}, data: []byte(`{"title":"Dune"}`)}
			ev := &topicEvent{topics: p.topics, frame: []byte("id: 1\ndata: {}\n\n")}
			b.ReportAllocs()
			b.ResetTimer()
			for seq := uint64(1); seq <= uint64(b.N); seq++ {
				if c.newTopic {
					p.topics = []string{topic(0), fmt.Sprintf("https://example.com/new/%d", seq)}
				}
				fan.deliver(seq, p, func() *topicEvent { return ev })
				for _, sub := range reached {
					sub.queue.take()
				}
			}
			b.ReportMetric(float64(len(reached)), "deliveries/op")
		})
	}
}
