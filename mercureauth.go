package main

// Mercure access tokens: what a token allows (a mercureGrant, read from the 1.0
// authorization_details claim or the 0.x mercure claim). The routes that use it live
// elsewhere.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// mercureDetailType is the type of the authorization details that Mercure reads; a detail
// of another type is some other API's and grants nothing here.
const mercureDetailType = "https://mercure.rocks/authorization-detail"

// maxGrantDetails bounds the entries of authorization_details, and maxGrantMatchers the
// topic matchers of one token (of both dialects), so that a token's cost to compile stays
// small; a token over either is invalid.
const (
	maxGrantDetails  = 100
	maxGrantMatchers = 100
)

// mercureGrant is what a verified Mercure token allows: the topics it may publish to, the
// topics it may read private updates of, each with the payload its subscriptions carry,
// and who issued it for whom until when. A nil *mercureGrant allows nothing.
type mercureGrant struct {
	publish   []*topicMatcher
	subscribe []subscribeGrant
	payload   json.RawMessage // 0.x: mercure.payload, the payload of every subscription
	expires   time.Time       // exp, without leeway; zero for a 0.x token without exp
	issuer    string          // iss
	subject   string          // sub
}

// subscribeGrant is one matcher of a subscribe grant and the payload of the authorization
// detail that holds it, nil if none.
type subscribeGrant struct {
	matcher *topicMatcher
	payload json.RawMessage
}

// mayPublish reports whether g allows publishing to topic. A publish names several topics
// (canonical and alternates) and needs this for each of them.
func (g *mercureGrant) mayPublish(topic string) bool {
	if g == nil {
		return false
	}
	for _, m := range g.publish {
		if m.matches(topic) {
			return true
		}
	}
	return false
}

// mayRead reports whether g allows reading a private update whose topics (canonical and
// alternates) are topics: one subscribe matcher matching one of them is enough, because
// the audience of an update is the union of its topics' audiences.
func (g *mercureGrant) mayRead(topics []string) bool {
	if g == nil {
		return false
	}
	for _, s := range g.subscribe {
		if s.matcher.matchesAnyOf(topics) {
			return true
		}
	}
	return false
}

// payloadFor returns the payload of a subscription whose own matcher is matcher, of type
// matcherType: for a 1.0 token, that of the first subscribe grant matching the matcher
// string taken as a topic, or nil if that grant has none (order decides, as the spec's
// "Payloads" says); for a 0.x token, mercure.payload. A grant matcher of the subscription's
// own type and text matches it too, even where a pattern would not match its own text (a
// URI Template's braces).
func (g *mercureGrant) payloadFor(matcherType, matcher string) json.RawMessage {
	if g == nil {
		return nil
	}
	if g.payload != nil {
		return g.payload
	}
	for _, s := range g.subscribe {
		if (s.matcher.typ == matcherType && s.matcher.pattern == matcher) || s.matcher.matches(matcher) {
			return s.payload
		}
	}
	return nil
}

// mercureClaims are the claims a Mercure token carries: the registered ones and either
// authorization_details (1.0) or mercure (0.x), kept raw until the signature is verified,
// so that no matcher of an unverified token is ever compiled.
type mercureClaims struct {
	AuthorizationDetails json.RawMessage `json:"authorization_details"`
	Mercure              json.RawMessage `json:"mercure"`
	jwt.RegisteredClaims
}

// mercureClaimFields are the claims the Mercure routes read: those of the own dialect
// (claimFields), the 0.x mercure claim with its members, and authorization_details, whose
// entries are checked one by one (detailFields) since an array carries no field names.
var mercureClaimFields = func() jsonFields {
	fields := maps.Clone(claimFields)
	fields["mercure"] = jsonField{fields: jsonFields{"publish": {}, "subscribe": {}, "payload": {}}}
	fields["authorization_details"] = jsonField{}
	return fields
}()

// detailTypeField is the member every authorization detail has, detailFields the members
// of a Mercure one, and topicMatcherFields those of a topic matcher object: the names that
// a key in another case may not shadow.
var (
	detailTypeField    = jsonFields{"type": {}}
	detailFields       = jsonFields{"type": {}, "actions": {}, "topics": {}, "payload": {}}
	topicMatcherFields = jsonFields{"match": {}, "match_type": {}}
)

// UnmarshalJSON reads claims whose JSON has one reading only (checkStrictJSON), as
// sseClaims does for the own dialect.
func (c *mercureClaims) UnmarshalJSON(text []byte) error {
	if refused := checkStrictJSON(text, mercureClaimFields); refused != nil {
		return &tokenJSONError{part: "claims", refused: refused}
	}
	type plain mercureClaims // mercureClaims without this method, for encoding/json to fill
	return json.Unmarshal(text, (*plain)(c))
}

// mercureDialect is the shape of the grant a token carries.
type mercureDialect int

// The dialects: a 1.0 token (authorization_details), a 0.x token (mercure), and a token
// with neither, such as one of the own sse dialect, which allows nothing in Mercure.
const (
	dialectNone mercureDialect = iota
	dialect10
	dialect0x
)

// dialect returns which grant c carries. A token with both is refused: its grant would
// depend on which of the two a reader takes, and a token has one reading only here.
func (c *mercureClaims) dialect() (mercureDialect, error) {
	switch details, legacy := c.AuthorizationDetails != nil, c.Mercure != nil; {
	case details && legacy:
		return 0, errors.New("both authorization_details and mercure: a token carries one")
	case details:
		return dialect10, nil
	case legacy:
		return dialect0x, nil
	}
	return dialectNone, nil
}

// grant compiles the grant c carries, resolving relative URL Patterns against base; the
// error says which entry is invalid without quoting it. Any invalid entry fails the whole
// token: acting on the rest would silently change what the token allows.
func (c *mercureClaims) grant(base string) (*mercureGrant, error) {
	d, err := c.dialect()
	if err != nil {
		return nil, err
	}
	g := &mercureGrant{issuer: c.Issuer, subject: c.Subject}
	if c.ExpiresAt != nil {
		g.expires = c.ExpiresAt.Time
	}
	switch d {
	case dialect10:
		err = g.readAuthorizationDetails(c.AuthorizationDetails, base)
	case dialect0x:
		err = g.readLegacyClaim(c.Mercure, base)
	}
	if err != nil {
		return nil, err
	}
	return g, nil
}

// readAuthorizationDetails adds to g the Mercure entries of authorization_details (the
// spec's "Authorization Details"): each an object with a type; a Mercure one with a
// non-empty array of string actions, of which publish and subscribe count and others are
// ignored, a non-empty array of topic matcher objects, and an optional payload object.
func (g *mercureGrant) readAuthorizationDetails(raw json.RawMessage, base string) error {
	var entries []json.RawMessage
	if !jsonIs(raw, '[') || json.Unmarshal(raw, &entries) != nil {
		return errors.New("authorization_details is not an array")
	}
	if len(entries) > maxGrantDetails {
		return fmt.Errorf("authorization_details has %d entries, over %d", len(entries), maxGrantDetails)
	}
	matchers := 0
	for i, entry := range entries {
		at := fmt.Sprintf("authorization_details[%d]", i)
		if refused := checkStrictJSON(entry, detailTypeField); refused != nil {
			return fmt.Errorf("%s: %s", at, refused.withoutKey())
		}
		var detail struct {
			Type    json.RawMessage `json:"type"`
			Actions json.RawMessage `json:"actions"`
			Topics  json.RawMessage `json:"topics"`
			Payload json.RawMessage `json:"payload"`
		}
		if err := json.Unmarshal(entry, &detail); err != nil {
			return fmt.Errorf("%s: not an object", at) // checkStrictJSON took it: not reached
		}
		typ, ok := jsonString(detail.Type)
		if !ok {
			return fmt.Errorf("%s: type is missing or not a string", at)
		}
		if typ != mercureDetailType {
			continue // another API's detail, whose other members are its own
		}
		if refused := checkStrictJSON(entry, detailFields); refused != nil {
			return fmt.Errorf("%s: %s", at, refused.withoutKey())
		}
		actions, ok := jsonStrings(detail.Actions)
		if !ok || len(actions) == 0 {
			return fmt.Errorf("%s: actions is not a non-empty array of strings", at)
		}
		var topics []json.RawMessage
		if !jsonIs(detail.Topics, '[') || json.Unmarshal(detail.Topics, &topics) != nil || len(topics) == 0 {
			return fmt.Errorf("%s: topics is not a non-empty array", at)
		}
		if matchers += len(topics); matchers > maxGrantMatchers {
			return fmt.Errorf("more than %d topic matchers", maxGrantMatchers)
		}
		var payload json.RawMessage
		if detail.Payload != nil {
			if !jsonIs(detail.Payload, '{') {
				return fmt.Errorf("%s: payload is not an object", at)
			}
			payload = compactJSON(detail.Payload)
		}
		publish, subscribe := slices.Contains(actions, "publish"), slices.Contains(actions, "subscribe")
		for j, topic := range topics {
			m, err := readTopicMatcher(topic, base)
			if err != nil {
				return fmt.Errorf("%s.topics[%d]: %w", at, j, err)
			}
			if publish {
				g.publish = append(g.publish, m)
			}
			if subscribe {
				g.subscribe = append(g.subscribe, subscribeGrant{matcher: m, payload: payload})
			}
		}
	}
	return nil
}

// readTopicMatcher compiles a topic matcher object of the spec's "Topic Matcher List":
// {"match": string, "match_type"?: "exact" or "urlpattern"}, exact when match_type is
// absent; another match_type, even one this hub knows for 0.x, cannot be evaluated.
func readTopicMatcher(raw json.RawMessage, base string) (*topicMatcher, error) {
	if refused := checkStrictJSON(raw, topicMatcherFields); refused != nil {
		return nil, errors.New(refused.withoutKey())
	}
	var object struct {
		Match     json.RawMessage `json:"match"`
		MatchType json.RawMessage `json:"match_type"`
	}
	if err := json.Unmarshal(raw, &object); err != nil {
		return nil, errors.New("not an object") // checkStrictJSON took it: not reached
	}
	match, ok := jsonString(object.Match)
	if !ok {
		return nil, errors.New("match is missing or not a string")
	}
	typ := matchExact
	if object.MatchType != nil {
		if typ, ok = jsonString(object.MatchType); !ok {
			return nil, errors.New("match_type is not a string")
		}
		if typ != matchExact && typ != matchURLPattern {
			return nil, errors.New("match_type is not exact or urlpattern")
		}
	}
	return compileGrantMatcher(typ, match, base)
}

// readLegacyClaim adds to g the 0.x mercure claim: {"publish": [selector...], "subscribe":
// [selector...], "payload": any}, each selector "*", a URI Template, or a topic. A missing
// or null list allows nothing, as 0.x hubs read it; payload, any JSON value but null,
// becomes the payload of every subscription.
func (g *mercureGrant) readLegacyClaim(raw json.RawMessage, base string) error {
	if !jsonIs(raw, '{') {
		return errors.New("mercure is not an object")
	}
	var claim struct {
		Publish   json.RawMessage `json:"publish"`
		Subscribe json.RawMessage `json:"subscribe"`
		Payload   json.RawMessage `json:"payload"`
	}
	if err := json.Unmarshal(raw, &claim); err != nil {
		return errors.New("mercure is not an object") // jsonIs and checkStrictJSON took it: not reached
	}
	var publish, subscribe []string
	for _, list := range []struct {
		name string
		raw  json.RawMessage
		into *[]string
	}{{"publish", claim.Publish, &publish}, {"subscribe", claim.Subscribe, &subscribe}} {
		if list.raw == nil || string(list.raw) == "null" {
			continue
		}
		var ok bool
		if *list.into, ok = jsonStrings(list.raw); !ok {
			return fmt.Errorf("mercure.%s is not an array of strings", list.name)
		}
	}
	if len(publish)+len(subscribe) > maxGrantMatchers {
		return fmt.Errorf("more than %d topic selectors", maxGrantMatchers)
	}
	for i, selector := range publish {
		m, err := compileGrantMatcher("", selector, base)
		if err != nil {
			return fmt.Errorf("mercure.publish[%d]: %w", i, err)
		}
		g.publish = append(g.publish, m)
	}
	for i, selector := range subscribe {
		m, err := compileGrantMatcher("", selector, base)
		if err != nil {
			return fmt.Errorf("mercure.subscribe[%d]: %w", i, err)
		}
		g.subscribe = append(g.subscribe, subscribeGrant{matcher: m})
	}
	if claim.Payload != nil && string(claim.Payload) != "null" {
		g.payload = compactJSON(claim.Payload)
	}
	return nil
}

// compileGrantMatcher compiles a matcher of a token: of type typ, or a 0.x selector when
// typ is "". Its error names the rule broken without quoting the matcher, which is part of
// the token; an empty matcher grants no topic and is refused as a mistake of the issuer.
func compileGrantMatcher(typ, pattern, base string) (*topicMatcher, error) {
	if pattern == "" {
		return nil, errors.New("an empty matcher")
	}
	var m *topicMatcher
	var err error
	if typ == "" {
		m, err = newLegacyMatcher(pattern, base)
	} else {
		m, err = newTopicMatcher(typ, pattern, base)
	}
	if err == nil {
		return m, nil
	}
	if refused := checkTopicValue("the matcher", pattern); refused != nil {
		return nil, refused // which rule, without the text
	}
	if typ == "" {
		typ = matchURITemplate // a legacy selector fails only as a template
	}
	return nil, fmt.Errorf("not a valid %s matcher", typ)
}

// jsonIs reports whether raw, a JSON value as encoding/json hands one over, begins with
// the delimiter open: '{' for an object, '[' for an array.
func jsonIs(raw json.RawMessage, open byte) bool {
	return len(raw) > 0 && raw[0] == open
}

// jsonString returns the string raw holds, if it is a JSON string: never a null, which
// encoding/json would read as "".
func jsonString(raw json.RawMessage) (string, bool) {
	var s string
	if !jsonIs(raw, '"') || json.Unmarshal(raw, &s) != nil {
		return "", false
	}
	return s, true
}

// jsonStrings returns the strings raw holds, if it is a JSON array of strings alone.
func jsonStrings(raw json.RawMessage) ([]string, bool) {
	var items []json.RawMessage
	if !jsonIs(raw, '[') || json.Unmarshal(raw, &items) != nil {
		return nil, false
	}
	strs := make([]string, 0, len(items))
	for _, item := range items {
		s, ok := jsonString(item)
		if !ok {
			return nil, false
		}
		strs = append(strs, s)
	}
	return strs, true
}

// compactJSON returns raw without insignificant spaces, the form a payload is sent in.
func compactJSON(raw json.RawMessage) json.RawMessage {
	var buf bytes.Buffer
	if json.Compact(&buf, raw) != nil {
		return slices.Clone(raw) // encoding/json took it as JSON: not reached
	}
	return buf.Bytes()
}
