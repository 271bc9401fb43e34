package main

// The Mercure protocol's face of the hub (spec/mercure.md in the dunglas/mercure repository):
// GET /.well-known/mercure subscribes with 1.0's match= and match_urlpattern= or 0.x's
// topic=, POST /.well-known/mercure publishes a form, both on the public port, on the same
// broker, history and ids as /sse?topic= and POST /publish. docs/mercure.md lists what is
// supported and where it deviates.

import (
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"unicode/utf8"
)

// mercurePath is the path of the hub's URL, where Mercure subscribes and publishes.
const mercurePath = "/.well-known/mercure"

// Limits of a Mercure request: each over it is refused with the spec's status.
const (
	maxMatchers         = 128      // topic matchers one subscription request carries
	maxPatternBytes     = 2 << 10  // bytes of URL Patterns and URI Templates in one request: each compiles to regular expressions, up to ~100 KiB for 2 KiB of pattern
	maxPatterns         = 16       // URL Patterns and URI Templates in one request
	maxHubPatterns      = 4096     // distinct URL Patterns and URI Templates the hub tries on each event
	maxPublishTopics    = 32       // topics one update names
	maxMercurePublish   = 64 << 10 // bytes of a publish form
	maxMercureEventType = 256      // bytes of an update's type
	maxRetryDigits      = 10       // digits of an update's retry
)

// mercureConfig is what the command line says about the Mercure protocol.
type mercureConfig struct {
	hubURL        string // -mercure-url: the hub's URL, which relative topics resolve against and 1.0 tokens name in aud
	anonymous     bool   // -mercure-anonymous: subscribers without a token get public updates
	subscriptions bool   // -mercure-subscriptions: publish subscription updates and serve the subscription API
}

// mercureHub serves the Mercure routes on the stream handler h and its broker.
type mercureHub struct {
	h     *sseHandler
	cfg   mercureConfig
	url   *url.URL             // cfg.hubURL, parsed
	table *activeSubscriptions // nil unless cfg.subscriptions
}

// checkHubURL says why hubURL cannot be the hub's URL, or returns nil: it must be an
// absolute http or https URL without a query or fragment.
func checkHubURL(hubURL string) error {
	u, err := url.Parse(hubURL)
	switch {
	case err != nil:
		return err
	case u.Scheme != "http" && u.Scheme != "https" || u.Host == "":
		return errors.New("want an absolute http or https URL, such as https://example.com" + mercurePath)
	case u.RawQuery != "" || u.Fragment != "":
		return errors.New("want a URL without a query or fragment")
	}
	return nil
}

// newMercureHub returns the Mercure routes of h, with cfg checked by checkHubURL.
func newMercureHub(h *sseHandler, cfg mercureConfig) *mercureHub {
	u, _ := url.Parse(cfg.hubURL)
	m := &mercureHub{h: h, cfg: cfg, url: u}
	h.broker.hub = u
	if cfg.subscriptions {
		m.table = &activeSubscriptions{prefix: u.Path + "/subscriptions/", active: make(map[string]subscriptionDoc)}
		h.observe(m.table.observe)
	}
	return m
}

// ServeHTTP subscribes (GET, HEAD) or publishes (POST).
func (m *mercureHub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	m.h.cors.setHeaders(w.Header(), r.Header.Get("Origin"))
	if r.Method == http.MethodPost {
		m.publish(w, r)
		return
	}
	req, ok := m.subscription(w, r)
	if !ok {
		return
	}
	m.h.serve(w, r, req)
}

// subscription reads a subscription request: its matchers, its token and where it resumes,
// or answers 400 with the rule it breaks, or 401 for a token that fails, and reports false.
func (m *mercureHub) subscription(w http.ResponseWriter, r *http.Request) (*topicRequest, bool) {
	if ok, err := acceptsEventStream(r.Header.Values("Accept")); err != nil || !ok {
		m.h.metrics.rejected[rejectNotAcceptable].Inc()
		http.Error(w, "406 not acceptable: "+mercurePath+" only serves text/event-stream", http.StatusNotAcceptable)
		return nil, false
	}
	query, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return m.badRequest(w, "the query is not application/x-www-form-urlencoded: "+err.Error())
	}
	sel, subs, legacy, err := m.selection(query)
	if err != nil {
		return m.badRequest(w, err.Error())
	}
	// Every distinct pattern is tried on every event, under the fan-out's lock: past a bound,
	// new ones wait for old ones to go.
	if len(sel.matchers) > 0 && m.h.broker.fan.patternCount()+len(sel.matchers) > maxHubPatterns {
		w.Header().Set("Retry-After", fmt.Sprint(retryAfterSeconds(m.h.cfg.Retry)))
		http.Error(w, fmt.Sprintf("503 service unavailable: the hub holds %d distinct URL Patterns and URI Templates, its most: retry later, or subscribe with match=", maxHubPatterns), http.StatusServiceUnavailable)
		return nil, false
	}
	req := &topicRequest{mercure: true}
	grant, present, refused := m.h.auth.mercureToken(r, m.cfg.hubURL, legacy)
	switch {
	case refused != nil:
		writeMercureAuthError(w, refused)
		return nil, false
	case present:
		sel.reader = grant.mayRead
		req.expires = grant.expires
	case !m.cfg.anonymous:
		writeMercureAuthError(w, m.missing())
		return nil, false
	}
	req.sel = sel
	req.lastID, req.hasLastID = mercureLastID(r, query)
	if m.table != nil {
		for i := range subs {
			subs[i].payload = grant.payloadFor(subs[i].matchType, subs[i].match)
		}
		subscriber := newSubscriberID()
		req.announce = func(active bool) { m.announce(subscriber, subs, active) }
	}
	return req, true
}

// selection returns the topic matchers of a subscription query, each as its subscription
// updates describe it, and whether it speaks 0.x (topic=). Parameter names under the match
// prefix other than match, match_exact and match_urlpattern are refused, as 1.0 says, so
// that a typo fails loudly.
func (m *mercureHub) selection(query url.Values) (selection, []mercureSubscription, bool, error) {
	var sel selection
	var subs []mercureSubscription
	count, patterns, patternBytes := 0, 0, 0
	for name, values := range query {
		var typ string
		switch {
		case name == "match" || name == "match_exact":
			typ = matchExact
		case name == "match_urlpattern":
			typ = matchURLPattern
		case len(name) >= 5 && strings.EqualFold(name[:5], "match"):
			return sel, nil, false, fmt.Errorf("%q is no matcher parameter: use match, match_exact or match_urlpattern", name)
		case name != "topic":
			continue
		}
		for _, value := range values {
			// A copy: the request's strings may point into buffers that fasthttp reuses,
			// and a matcher lives as long as its stream.
			value = strings.Clone(value)
			if count++; count > maxMatchers {
				return sel, nil, false, fmt.Errorf("a subscription carries at most %d topic matchers", maxMatchers)
			}
			var matcher *topicMatcher
			var err error
			if typ == "" {
				matcher, err = newLegacyMatcher(value, m.cfg.hubURL)
			} else {
				matcher, err = newTopicMatcher(typ, value, m.cfg.hubURL)
			}
			if err != nil {
				return sel, nil, false, fmt.Errorf("%s: %v", name, err)
			}
			subs = append(subs, mercureSubscription{matchType: matcher.typ, match: value})
			if matcher.typ != matchExact && !matcher.all {
				if patternBytes += len(value); patternBytes > maxPatternBytes {
					return sel, nil, false, fmt.Errorf("the URL Patterns and URI Templates of a subscription hold at most %d bytes in all", maxPatternBytes)
				}
				if patterns++; patterns > maxPatterns {
					return sel, nil, false, fmt.Errorf("a subscription carries at most %d URL Patterns and URI Templates", maxPatterns)
				}
			}
			if topic, ok := matcher.exactTopic(); ok {
				if !slices.Contains(sel.topics, topic) {
					sel.topics = append(sel.topics, topic)
				}
				continue
			}
			sel.matchers = append(sel.matchers, matcher)
		}
	}
	if count == 0 {
		return sel, nil, false, errors.New("name at least one topic: match=, match_urlpattern= or topic=")
	}
	return sel, subs, query.Has("topic"), nil
}

// mercureLastID returns the id a subscriber resumes after: the Last-Event-ID header, else
// 1.0's last_event_id, else 0.x's lastEventID parameter; "earliest" asks for all that is kept.
func mercureLastID(r *http.Request, query url.Values) (string, bool) {
	if value := r.Header.Get("Last-Event-ID"); value != "" {
		return strings.Clone(value), true
	}
	for _, name := range []string{"last_event_id", "lastEventID"} {
		if value := query.Get(name); value != "" {
			return strings.Clone(value), true
		}
	}
	return "", false
}

// mercureLastEventID returns the Mercure-Last-Event-ID of a stream that resumed after the id
// requested: that id, when the stream goes on right after it, else "earliest" (an id the
// hub does not know, or no longer keeps the events after).
func mercureLastEventID(requested string, sub subscription) string {
	if sub.reset != "" || requested == earliestID {
		return earliestID
	}
	return requested
}

// grantOf returns what the token of r allows, or answers 401 (none, or one that fails) or
// 400 (one presented the wrong way) and reports false: for the routes that need a token.
func (m *mercureHub) grantOf(w http.ResponseWriter, r *http.Request) (*mercureGrant, bool) {
	grant, present, refused := m.h.auth.mercureToken(r, m.cfg.hubURL, false)
	switch {
	case refused != nil:
		writeMercureAuthError(w, refused)
		return nil, false
	case !present:
		writeMercureAuthError(w, m.missing())
		return nil, false
	}
	return grant, true
}

// missing returns the refusal, counted, of a request that needs a token and has none.
func (m *mercureHub) missing() *mercureAuthError {
	return m.h.auth.refuseMercure(mercureDenied(authMissing, "a token is needed: Authorization: Bearer, or the __Secure-mercure_access_token cookie"))
}

// forbidden returns the refusal, counted, of a token that does not allow what a request asks.
func (m *mercureHub) forbidden(reason string) *mercureAuthError {
	return m.h.auth.refuseMercure(mercureDenied(authForbidden, reason))
}

// badRequest answers 400 with reason and reports false.
func (m *mercureHub) badRequest(w http.ResponseWriter, reason string) (*topicRequest, bool) {
	m.h.metrics.rejected[rejectBadRequest].Inc()
	http.Error(w, "400 bad request: "+reason, http.StatusBadRequest)
	return nil, false
}

// publish reads a publish form, checks that its token may publish to every one of its
// topics, publishes the update and answers its id as text/plain.
func (m *mercureHub) publish(w http.ResponseWriter, r *http.Request) {
	grant, ok := m.grantOf(w, r)
	if !ok {
		return
	}
	if media, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); media != "application/x-www-form-urlencoded" {
		http.Error(w, "415 unsupported media type: publish an application/x-www-form-urlencoded form", http.StatusUnsupportedMediaType)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxMercurePublish))
	if err != nil {
		http.Error(w, fmt.Sprintf("413 content too large: a publish form is at most %d bytes", maxMercurePublish), http.StatusRequestEntityTooLarge)
		return
	}
	p, status, err := m.parsePublication(string(body))
	if err != nil {
		http.Error(w, fmt.Sprintf("%d %s: %v", status, strings.ToLower(http.StatusText(status)), err), status)
		return
	}
	for _, topic := range p.topics {
		if !grant.mayPublish(topic) {
			writeMercureAuthError(w, m.forbidden("the token does not allow publishing to "+topic))
			return
		}
	}
	p.publisher = "mercure\x00" + grant.issuer + "\x00" + grant.subject
	id, err := m.h.broker.Publish(r.Context(), p)
	switch {
	case errors.Is(err, errIDTaken), errors.Is(err, errHubID), errors.Is(err, errReservedTopic):
		http.Error(w, "400 bad request: id: "+err.Error(), http.StatusBadRequest)
		return
	case err != nil:
		w.Header().Set("Retry-After", fmt.Sprint(publishRetryAfter))
		http.Error(w, "503 service unavailable: the update was not stored ("+err.Error()+"): retry later", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	io.WriteString(w, id)
}

// parsePublication reads a publish form into a publication, or returns the status (400, or
// 413 for a limit) and the rule it breaks. Fields it does not know are ignored, as the spec
// asks; a field it knows given twice, other than topic, is refused as ambiguous.
func (m *mercureHub) parsePublication(form string) (publication, int, error) {
	values, err := url.ParseQuery(form)
	if err != nil {
		return publication{}, http.StatusBadRequest, fmt.Errorf("the body is not a form: %v", err)
	}
	for _, name := range []string{"data", "id", "type", "retry", "private"} {
		if len(values[name]) > 1 {
			return publication{}, http.StatusBadRequest, fmt.Errorf("%s is given %d times: give it once", name, len(values[name]))
		}
	}
	topics := values["topic"]
	switch {
	case len(topics) == 0:
		return publication{}, http.StatusBadRequest, errors.New("topic is missing: name at least one")
	case len(topics) > maxPublishTopics:
		return publication{}, http.StatusRequestEntityTooLarge, fmt.Errorf("an update names at most %d topics", maxPublishTopics)
	}
	p := publication{topics: make([]string, 0, len(topics)), data: []byte(values.Get("data")),
		private: values.Has("private"), id: values.Get("id"), event: values.Get("type"), retry: values.Get("retry")}
	for _, topic := range topics {
		switch err := checkTopicValue("a topic", topic); {
		case topic == "":
			return publication{}, http.StatusBadRequest, errors.New("a topic is empty")
		case err != nil && len(topic) > maxMatcherLength:
			return publication{}, http.StatusRequestEntityTooLarge, err
		case err != nil:
			return publication{}, http.StatusBadRequest, err
		case topic == "*":
			return publication{}, http.StatusBadRequest, errors.New(`the topic "*" is the wildcard: no update can be addressed to it`)
		case inReservedNamespace(topic, m.url):
			return publication{}, http.StatusBadRequest, fmt.Errorf("%w: %s", errReservedTopic, topic)
		}
		if !slices.Contains(p.topics, topic) {
			p.topics = append(p.topics, topic)
		}
	}
	if err := checkDataValue(p.data); err != nil {
		return publication{}, http.StatusBadRequest, err
	}
	if err := checkUpdateID(p.id); err != nil {
		return publication{}, http.StatusBadRequest, err
	}
	if err := checkEventType(p.event); err != nil {
		return publication{}, http.StatusBadRequest, err
	}
	if p.event == "mercure" {
		return publication{}, http.StatusBadRequest, errors.New(`type "mercure" is reserved for the hub's own updates`)
	}
	if err := checkRetry(p.retry); err != nil {
		return publication{}, http.StatusBadRequest, err
	}
	return p, 0, nil
}

// checkDataValue says why data cannot be published, or returns nil: it must be UTF-8.
func checkDataValue(data []byte) error {
	if !utf8.Valid(data) {
		return errors.New("data is not valid UTF-8")
	}
	return nil
}

// checkUpdateID says why a publisher's id cannot be an update's id, or returns nil: it
// travels in Last-Event-ID, so no control or format character; a leading # and "earliest"
// are the hub's.
func checkUpdateID(id string) error {
	switch {
	case id == "":
		return nil
	case id == earliestID:
		return errors.New(`id "earliest" is reserved: it asks for every update kept`)
	case strings.HasPrefix(id, "#"):
		return errors.New("id starts with #, which is kept for the hub's own ids")
	}
	return checkTopicValue("id", id)
}

// checkEventType says why an update's type cannot be sent as an SSE event type, or returns
// nil: empty (a message), or a line without control or format characters that is none of
// the types EventSource or this hub sends by itself.
func checkEventType(typ string) error {
	if typ == "" {
		return nil
	}
	if len(typ) > maxMercureEventType {
		return fmt.Errorf("type is %d bytes long, over %d", len(typ), maxMercureEventType)
	}
	if err := checkTopicValue("type", typ); err != nil {
		return err
	}
	return checkReservedEvent(typ)
}

// checkRetry says why retry cannot be an SSE retry, or returns nil: ASCII digits only.
func checkRetry(retry string) error {
	if len(retry) > maxRetryDigits {
		return fmt.Errorf("retry is %d digits long, over %d", len(retry), maxRetryDigits)
	}
	for i := 0; i < len(retry); i++ {
		if retry[i] < '0' || retry[i] > '9' {
			return errors.New("retry holds something other than the digits 0-9")
		}
	}
	return nil
}

// discoveryLink returns the Link header value that advertises the hub.
func (m *mercureHub) discoveryLink() string {
	return "<" + m.cfg.hubURL + `>; rel="mercure"`
}
