package main

// Mercure's active subscriptions: with -mercure-subscriptions the hub publishes a private
// update of type "mercure" whenever a subscription starts or ends, and answers
// GET /.well-known/mercure/subscriptions[/{match_type}[/{match}[/{subscriber}]]] with the
// subscriptions those updates describe. Every replica reads every update of the stream, so
// on NATS each lists the subscriptions of all: those whose start it has seen since it started.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
)

// mercureSubscription is one topic matcher of a subscriber, as its subscription updates
// describe it, with the payload its token attaches to it.
type mercureSubscription struct {
	matchType, match string
	payload          json.RawMessage
}

// subscriptionDoc is the JSON-LD document of one subscription, as its updates and the API
// carry it.
type subscriptionDoc struct {
	ID         string          `json:"id"`
	Type       string          `json:"type"`
	MatchType  string          `json:"match_type"`
	Match      string          `json:"match"`
	Subscriber string          `json:"subscriber"`
	Active     bool            `json:"active"`
	Payload    json.RawMessage `json:"payload,omitempty"`
}

// subscriptionsDoc is the JSON-LD document of a collection of subscriptions.
type subscriptionsDoc struct {
	ID            string            `json:"id"`
	Type          string            `json:"type"`
	Subscriptions []subscriptionDoc `json:"subscriptions"`
}

// activeSubscriptions is the table of subscriptions that subscription updates say are
// active, by their topic.
type activeSubscriptions struct {
	prefix string // the topic of every subscription update starts with it: the hub's path and /subscriptions/

	mu     sync.Mutex
	active map[string]subscriptionDoc
}

// observe notes the subscription an update of the hub's own describes. The fan-out calls it
// for every event, in sequence order.
func (t *activeSubscriptions) observe(_ uint64, p *publication) {
	if p.event != "mercure" || len(p.topics) != 1 || !strings.HasPrefix(p.topics[0], t.prefix) {
		return
	}
	var doc subscriptionDoc
	if json.Unmarshal(p.data, &doc) != nil || doc.ID != p.topics[0] {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if doc.Active {
		t.active[doc.ID] = doc
	} else {
		delete(t.active, doc.ID)
	}
}

// list returns the active subscriptions whose topic starts with prefix, in topic order.
func (t *activeSubscriptions) list(prefix string) []subscriptionDoc {
	t.mu.Lock()
	defer t.mu.Unlock()
	docs := []subscriptionDoc{}
	for id, doc := range t.active {
		if strings.HasPrefix(id, prefix) {
			docs = append(docs, doc)
		}
	}
	slices.SortFunc(docs, func(a, b subscriptionDoc) int { return strings.Compare(a.ID, b.ID) })
	return docs
}

// newSubscriberID returns a random identifier for one subscriber's connection, a UUID.
func newSubscriberID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // RFC 9562 variant
	h := hex.EncodeToString(b[:])
	return "urn:uuid:" + h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// escapeVariable percent-encodes every byte of s but the unreserved ones (RFC 3986), as an
// RFC 6570 simple expansion does, once: a % in s is itself encoded.
func escapeVariable(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if isAlphanumeric(c) || c == '-' || c == '.' || c == '_' || c == '~' {
			b.WriteByte(c)
			continue
		}
		const hexDigits = "0123456789ABCDEF"
		b.WriteByte('%')
		b.WriteByte(hexDigits[c>>4])
		b.WriteByte(hexDigits[c&15])
	}
	return b.String()
}

// subscriptionTopic returns the topic of the updates about one subscription.
func (m *mercureHub) subscriptionTopic(matchType, match, subscriber string) string {
	return m.url.Path + "/subscriptions/" + escapeVariable(matchType) + "/" + escapeVariable(match) + "/" + escapeVariable(subscriber)
}

// announce publishes, for each of the subscriber's subscriptions, the update that says it
// started (active) or ended. A subscription update that cannot be stored is logged; the
// stream goes on either way.
func (m *mercureHub) announce(subscriber string, subs []mercureSubscription, active bool) {
	ctx, cancel := context.WithTimeout(context.Background(), publishTimeout)
	defer cancel()
	for _, s := range subs {
		doc := subscriptionDoc{ID: m.subscriptionTopic(s.matchType, s.match, subscriber), Type: "subscription",
			MatchType: s.matchType, Match: s.match, Subscriber: subscriber, Active: active, Payload: s.payload}
		data, _ := json.Marshal(doc)
		p := publication{topics: []string{doc.ID}, event: "mercure", data: data, private: true, fromHub: true}
		if _, err := m.h.broker.Publish(ctx, p); err != nil {
			m.h.logger.Warn("subscription update not published", "subscription", doc.ID, "active", active, "error", err)
		}
	}
}

// serveSubscriptions answers the subscription API: the collection of every subscription,
// those of one matcher, or one subscription, as JSON-LD, to a token that may read that URL
// as a topic.
func (m *mercureHub) serveSubscriptions(w http.ResponseWriter, r *http.Request) {
	m.h.cors.setHeaders(w.Header(), r.Header.Get("Origin"))
	if m.table == nil {
		http.Error(w, "404 not found: the hub publishes no subscription updates (-mercure-subscriptions)", http.StatusNotFound)
		return
	}
	topic := r.URL.EscapedPath()
	grant, ok := m.grantOf(w, r)
	if !ok {
		return
	}
	if !grant.mayRead([]string{topic}) {
		writeMercureAuthError(w, m.forbidden("the token does not allow reading "+topic))
		return
	}
	rest := strings.TrimPrefix(strings.TrimPrefix(topic, m.table.prefix[:len(m.table.prefix)-1]), "/")
	parts := strings.Split(rest, "/")
	if rest == "" {
		parts = nil
	}
	for _, part := range parts {
		if _, err := url.PathUnescape(part); err != nil || part == "" {
			http.Error(w, "400 bad request: the path is not /subscriptions[/{match_type}[/{match}[/{subscriber}]]]", http.StatusBadRequest)
			return
		}
	}
	// The cursor is read before the list: an update that comes in between is then in both,
	// which a client that reconciles shrugs off, rather than in neither.
	last := earliestID
	if seq := m.h.broker.fan.last(); seq > 0 {
		last = m.h.broker.ids.format(seq)
	}
	var body any
	switch len(parts) {
	case 0, 1, 2:
		prefix := m.table.prefix
		if len(parts) > 0 {
			prefix += strings.Join(parts, "/") + "/"
		}
		body = subscriptionsDoc{ID: topic, Type: "subscriptions", Subscriptions: m.table.list(prefix)}
	case 3:
		docs := m.table.list(topic)
		if len(docs) == 0 || docs[0].ID != topic {
			http.Error(w, "404 not found: no active subscription "+topic, http.StatusNotFound)
			return
		}
		body = docs[0]
	default:
		http.Error(w, "404 not found: the path is not /subscriptions[/{match_type}[/{match}[/{subscriber}]]]", http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "must-revalidate")
	w.Header().Set("Link", "<"+m.cfg.hubURL+`>; rel="mercure"; last-event-id="`+last+`"; type="mercure"; content-type="application/json"`)
	w.Header().Set("Access-Control-Expose-Headers", "Link")
	json.NewEncoder(w).Encode(body)
}
