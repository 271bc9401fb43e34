package main

// Mercure access tokens: where a Mercure request carries its token, how the token is
// verified (with the keys and algorithms the authorizer already trusts), what it allows
// (a mercureGrant, read from the 1.0 authorization_details claim or the 0.x mercure
// claim), and the RFC 6750 answers to a refusal. The routes that use them live elsewhere.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Where a Mercure request may carry its token besides "Authorization: Bearer": the 1.0
// cookie, and the 0.x cookie and query parameter.
const (
	mercureCookie       = "__Secure-mercure_access_token"
	legacyMercureCookie = "mercureAuthorization"
	legacyMercureParam  = "authorization"
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

// mercureAuthError is a refusal of a Mercure request: an authError (why, for the metric,
// and a reason that never quotes the token), or, when malformed is set, a token presented
// the wrong way, which RFC 6750 answers with 400 invalid_request.
type mercureAuthError struct {
	authError
	malformed bool
}

// mercureDenied returns the refusal for failure with reason, not yet counted: a route
// passes it to refuseMercure.
func mercureDenied(failure authFailure, reason string) *mercureAuthError {
	return &mercureAuthError{authError: authError{failure: failure, reason: reason}}
}

// mercureMalformed returns the refusal of a token presented the wrong way, counted as
// invalid.
func mercureMalformed(reason string) *mercureAuthError {
	return &mercureAuthError{authError: authError{failure: authInvalid, reason: reason}, malformed: true}
}

// refuseMercure counts e in sse_auth_failures_total by its failure and returns it. A nil
// authorizer has no metrics to count in, and counts nothing.
func (a *authorizer) refuseMercure(e *mercureAuthError) *mercureAuthError {
	if a != nil {
		a.refuse(&e.authError)
	}
	return e
}

// writeMercureAuthError answers a refused Mercure request as RFC 6750, section 3 and the
// spec's "Error Responses" say: 401 with a bare Bearer challenge when no token came, 401
// invalid_token for a token that does not verify, 403 insufficient_scope for one that does
// not allow the operation, 400 invalid_request for a token presented the wrong way; the
// body is one line of reason, without the token.
func writeMercureAuthError(w http.ResponseWriter, e *mercureAuthError) {
	challenge, status := `Bearer realm="mercure"`, http.StatusUnauthorized
	switch {
	case e.malformed:
		challenge, status = challenge+`, error="invalid_request"`, http.StatusBadRequest
	case e.failure == authInvalid || e.failure == authExpired:
		challenge += `, error="invalid_token"`
	case e.failure == authForbidden:
		challenge, status = challenge+`, error="insufficient_scope"`, http.StatusForbidden
	}
	w.Header().Set("WWW-Authenticate", challenge)
	w.Header().Set("Cache-Control", "no-store")
	reason := strings.Join(strings.Fields(e.reason), " ") // one line, whatever a route passed
	http.Error(w, fmt.Sprintf("%d %s: %s", status, strings.ToLower(http.StatusText(status)), reason), status)
}

// mercureToken finds the token of a Mercure request and returns what it allows. present
// says whether the request carries a token at all: with none, grant and err are nil, and
// the route decides whether one was needed (a 401 missing, through refuseMercure). Every
// err returned has been counted. audience is the hub's resource identifier, which a 1.0
// token's aud must hold, and the base of relative URL Patterns; allowQuery takes the 0.x
// authorization query parameter too. A token from a cookie counts only from this origin or
// one of -allowed-origins, as for the own dialect. A nil authorizer (no key configured) can
// verify no token: a presented one is invalid_token, uncounted, for want of metrics.
func (a *authorizer) mercureToken(r *http.Request, audience string, allowQuery bool) (grant *mercureGrant, present bool, err *mercureAuthError) {
	token, fromCookie, err := mercureTokenFrom(r, allowQuery)
	switch {
	case err != nil:
		return nil, true, a.refuseMercure(err)
	case token == "":
		return nil, false, nil
	case a == nil:
		return nil, true, mercureDenied(authInvalid, "no key is configured to verify tokens")
	}
	if origin := r.Header.Get("Origin"); fromCookie && origin != "" && !slices.Contains(a.cfg.origins, origin) {
		return nil, true, a.refuseMercure(mercureDenied(authForbidden, "a cookie counts only from the origins in -allowed-origins"))
	}
	grant, err = a.verifyMercure(token, audience)
	if err != nil {
		return nil, true, a.refuseMercure(err)
	}
	return grant, true, nil
}

// mercureTokenFrom returns the token r carries, "" if none: from "Authorization: Bearer",
// else (allowQuery) from the 0.x authorization query parameter, else from the 1.0 cookie,
// else from the 0.x cookie. A cookie, which the browser adds by itself, yields to a token
// the client chose to send; a token both in the header and the query, two headers, or two
// query values are malformed (RFC 6750, section 2: one method per request). fromCookie says
// where the token came from.
func mercureTokenFrom(r *http.Request, allowQuery bool) (token string, fromCookie bool, _ *mercureAuthError) {
	var query []string
	if allowQuery && r.URL.RawQuery != "" {
		query = r.URL.Query()[legacyMercureParam]
	}
	headers := r.Header.Values("Authorization")
	switch {
	case len(headers) > 1:
		return "", false, mercureMalformed("more than one Authorization header")
	case len(query) > 1:
		return "", false, mercureMalformed("more than one " + legacyMercureParam + " parameter")
	case len(headers) == 1 && len(query) == 1:
		return "", false, mercureMalformed("a token in both Authorization and the " + legacyMercureParam + " parameter: send one")
	case len(headers) == 1:
		scheme, value, ok := strings.Cut(headers[0], " ")
		if token = strings.TrimSpace(value); !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
			return "", false, mercureMalformed("Authorization is not Bearer <token>")
		}
	case len(query) == 1:
		if token = query[0]; token == "" {
			return "", false, mercureMalformed("an empty " + legacyMercureParam + " parameter")
		}
	default:
		for _, name := range []string{mercureCookie, legacyMercureCookie} {
			if c, err := r.Cookie(name); err == nil && c.Value != "" {
				token, fromCookie = c.Value, true
				break
			}
		}
		if token == "" {
			return "", false, nil
		}
	}
	switch {
	case len(token) > maxTokenLength:
		return "", false, mercureDenied(authInvalid, "the token is over "+strconv.Itoa(maxTokenLength)+" bytes")
	case !isB64Token(token):
		return "", false, mercureMalformed("the token holds a character a Bearer token cannot")
	}
	return token, fromCookie, nil
}

// isB64Token reports whether s is a b64token of RFC 6750, section 2.1, the only form of a
// Bearer token: letters, digits, "-._~+/", then any "=".
func isB64Token(s string) bool {
	body := strings.TrimRight(s, "=")
	if body == "" {
		return false
	}
	for _, c := range []byte(body) {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("-._~+/", c) >= 0:
		default:
			return false
		}
	}
	return true
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

// verifyMercure checks token's signature with a configured key (keyFor, as for the own
// dialect), then the rules of its dialect, and returns what it allows; the error, not yet
// counted, names what failed, never the token.
//
//   - 1.0 (authorization_details; the spec's "Token Validation"): typ at+jwt, iss present
//     and equal to -jwt-issuer if set, aud holding audience (a hub without one refuses every
//     1.0 token), exp required, nbf enforced.
//   - 0.x (mercure): what -jwt-audience and -jwt-issuer ask of the own dialect, and exp and
//     nbf enforced when present. A token without exp is taken, as released hubs in 0.x
//     compatibility take it, because 0.x issuers often mint none; its grant's expires is
//     zero, and the connection lifetime alone bounds a stream under it.
//   - Neither: the 1.0 rules for an at+jwt, else (an own sse token, say) the own dialect's,
//     exp included. Such a token verifies and allows nothing in Mercure, so an operation
//     needing a grant is insufficient_scope.
func (a *authorizer) verifyMercure(token, audience string) (*mercureGrant, *mercureAuthError) {
	claims := new(mercureClaims)
	parsed, err := a.mercureParser().ParseWithClaims(token, claims, a.keyFor)
	if err != nil {
		return nil, mercureTokenFailure(err)
	}
	d, err := claims.dialect()
	if err != nil {
		return nil, mercureDenied(authInvalid, err.Error())
	}
	typ, _ := parsed.Header["typ"].(string)
	rules := d
	if d == dialectNone && isAccessTokenType(typ) {
		rules = dialect10 // an access token without a Mercure grant is still checked as one
	}
	opts := []jwt.ParserOption{jwt.WithLeeway(tokenLeeway)}
	switch rules {
	case dialect10:
		switch {
		case !isAccessTokenType(typ):
			return nil, mercureDenied(authInvalid, "typ is not at+jwt")
		case audience == "":
			return nil, mercureDenied(authInvalid, "the hub has no resource identifier to check aud against")
		case len(claims.Audience) == 0:
			return nil, mercureDenied(authInvalid, "token without aud")
		case claims.Issuer == "":
			return nil, mercureDenied(authInvalid, "token without iss")
		case claims.ExpiresAt == nil:
			return nil, mercureDenied(authInvalid, "token without exp")
		}
		opts = append(opts, jwt.WithAudience(audience), jwt.WithExpirationRequired())
		if a.cfg.issuer != "" {
			opts = append(opts, jwt.WithIssuer(a.cfg.issuer))
		}
	default:
		if a.cfg.audience != "" {
			opts = append(opts, jwt.WithAudience(a.cfg.audience))
		}
		if a.cfg.issuer != "" {
			opts = append(opts, jwt.WithIssuer(a.cfg.issuer))
		}
		if d == dialectNone {
			opts = append(opts, jwt.WithExpirationRequired())
		}
	}
	if err := jwt.NewValidator(opts...).Validate(claims); err != nil {
		return nil, mercureTokenFailure(err)
	}
	grant, err := claims.grant(audience)
	if err != nil {
		return nil, mercureDenied(authInvalid, err.Error())
	}
	return grant, nil
}

// mercureParser returns a parser that takes only the algorithms of the configured keys and
// leaves the claims to verifyMercure, whose rules depend on the token's dialect.
func (a *authorizer) mercureParser() *jwt.Parser {
	var methods []string
	for _, k := range a.cfg.keys {
		methods = append(methods, k.algs...)
	}
	return jwt.NewParser(jwt.WithValidMethods(methods), jwt.WithoutClaimsValidation())
}

// isAccessTokenType reports whether typ names a JWT access token (RFC 9068): "at+jwt", with
// or without "application/", in any case (RFC 7515, section 4.1.9).
func isAccessTokenType(typ string) bool {
	typ = strings.ToLower(typ)
	return strings.TrimPrefix(typ, "application/") == "at+jwt"
}

// mercureTokenFailure maps a parse or validation error to the refusal: expired for a token
// past its exp, invalid for anything else, with a reason that names what failed.
func mercureTokenFailure(err error) *mercureAuthError {
	var twoWays *tokenJSONError
	switch {
	case errors.As(err, &twoWays):
		return mercureDenied(authInvalid, twoWays.Error())
	case errors.Is(err, jwt.ErrTokenMalformed):
		return mercureDenied(authInvalid, "malformed token")
	case errors.Is(err, jwt.ErrTokenSignatureInvalid), errors.Is(err, jwt.ErrTokenUnverifiable):
		return mercureDenied(authInvalid, "bad signature or algorithm")
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return mercureDenied(authInvalid, "wrong audience")
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return mercureDenied(authInvalid, "wrong issuer")
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return mercureDenied(authInvalid, "token not valid yet")
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return mercureDenied(authInvalid, "token without exp, aud or iss")
	case errors.Is(err, jwt.ErrTokenExpired):
		return mercureDenied(authExpired, "token expired")
	}
	return mercureDenied(authInvalid, "invalid token")
}
