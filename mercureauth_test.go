package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// testHub is the hub's URL in these tests: the resource identifier a 1.0 token's aud names,
// and the base of relative URL Patterns. testIssuer is the configured -jwt-issuer.
const (
	testHub    = "https://hub.example/.well-known/mercure"
	testIssuer = "https://issuer.example"
)

// newMercureAuthorizer returns an authorizer that verifies HS256 with testSecret, RS256 and
// ES256 with the test keys, and wants issuer in iss if it is not empty; its metrics are in
// a registry of its own.
func newMercureAuthorizer(t testing.TB, issuer string) *authorizer {
	t.Helper()
	rsaKey, ecKey, _ := testKeys(t)
	return newAuthorizer(authConfig{
		keys: []verifyKey{
			{key: []byte(testSecret), algs: []string{"HS256"}},
			{key: &rsaKey.PublicKey, algs: []string{"RS256"}},
			{key: &ecKey.PublicKey, algs: []string{"ES256"}},
		},
		issuer:  issuer,
		cookie:  "sse_token",
		origins: []string{"https://app.example"},
	}, prometheus.NewRegistry())
}

// startMercureAuthServer serves a's Mercure token checks over HTTP: /hub reads the 1.0
// presentations, /legacy the 0.x query parameter too. A request asks, in test headers, to
// publish to each Test-Publish topic and to read an update whose topics are the
// Test-Read values, and for the payload of a subscription Test-Match-Type: Test-Match;
// the answer is 200 "present=<bool> payload=<json>", or the refusal.
func startMercureAuthServer(t testing.TB, a *authorizer) *httptest.Server {
	t.Helper()
	handle := func(allowQuery bool) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			grant, present, err := a.mercureToken(r, testHub, allowQuery)
			if err != nil {
				writeMercureAuthError(w, err)
				return
			}
			publish, read := r.Header.Values("Test-Publish"), r.Header.Values("Test-Read")
			if !present && (len(publish) > 0 || len(read) > 0) {
				writeMercureAuthError(w, a.refuseMercure(mercureDenied(authMissing, "a token is needed")))
				return
			}
			for _, topic := range publish {
				if !grant.mayPublish(topic) {
					writeMercureAuthError(w, a.refuseMercure(mercureDenied(authForbidden, "the token does not allow publishing to "+topic)))
					return
				}
			}
			if len(read) > 0 && !grant.mayRead(read) {
				writeMercureAuthError(w, a.refuseMercure(mercureDenied(authForbidden, "the token does not allow reading the update")))
				return
			}
			fmt.Fprintf(w, "present=%t payload=%s", present, grant.payloadFor(r.Header.Get("Test-Match-Type"), r.Header.Get("Test-Match")))
		}
	}
	mux := http.NewServeMux()
	mux.Handle("/hub", handle(false))
	mux.Handle("/legacy", handle(true))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

// mercureAnswer is what startMercureAuthServer answered.
type mercureAnswer struct {
	status    int
	challenge string // WWW-Authenticate
	body      string
}

// askMercure sends GET target (a path and query) to srv with header and returns the answer.
func askMercure(t testing.TB, srv *httptest.Server, target string, header http.Header) mercureAnswer {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, srv.URL+target, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", target, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return mercureAnswer{resp.StatusCode, resp.Header.Get("WWW-Authenticate"), strings.TrimSpace(string(body))}
}

// The challenges of the spec's "Error Responses", exactly.
const (
	challengeMissing   = `Bearer realm="mercure"`
	challengeInvalid   = `Bearer realm="mercure", error="invalid_token"`
	challengeForbidden = `Bearer realm="mercure", error="insufficient_scope"`
	challengeMalformed = `Bearer realm="mercure", error="invalid_request"`
)

// mercureDetailsClaim is the claim of a 1.0 token's grant.
const mercureDetailsClaim = "authorization_details"

// wantStatus is the status that goes with a challenge: 200 for none.
func wantStatus(challenge string) int {
	switch challenge {
	case "":
		return http.StatusOK
	case challengeForbidden:
		return http.StatusForbidden
	case challengeMalformed:
		return http.StatusBadRequest
	}
	return http.StatusUnauthorized
}

// detail returns a Mercure authorization detail granting actions on topics, each topic
// a matcher object {"match": ...} or, written "urlpattern:<pattern>", with its match_type.
func detail(actions []string, topics ...string) map[string]any {
	matchers := make([]any, 0, len(topics))
	for _, topic := range topics {
		if pattern, ok := strings.CutPrefix(topic, "urlpattern:"); ok {
			matchers = append(matchers, map[string]any{"match": pattern, "match_type": "urlpattern"})
			continue
		}
		matchers = append(matchers, map[string]any{"match": topic})
	}
	return map[string]any{"type": mercureDetailType, "actions": actions, "topics": matchers}
}

// accessClaims returns the claims of a 1.0 token as RFC 9068 wants them, valid for ttl,
// with details as authorization_details.
func accessClaims(ttl time.Duration, details ...any) jwt.MapClaims {
	now := time.Now()
	if details == nil {
		details = []any{}
	}
	return jwt.MapClaims{
		"iss": testIssuer, "aud": testHub, "sub": "urn:uuid:bb3de268-05b0-4c65-b44e-8f9acefc29d6",
		"client_id": testIssuer, "iat": now.Unix(), "exp": now.Add(ttl).Unix(), "jti": "urn:uuid:e70ff8d7",
		mercureDetailsClaim: details,
	}
}

// signTyped returns claims signed with method and key under the header typ, none if typ is
// empty.
func signTyped(t testing.TB, method jwt.SigningMethod, key any, typ string, claims jwt.Claims) string {
	t.Helper()
	token := jwt.NewWithClaims(method, claims)
	delete(token.Header, "typ")
	if typ != "" {
		token.Header["typ"] = typ
	}
	signed, err := token.SignedString(key)
	if err != nil {
		t.Fatalf("sign a %s token: %v", method.Alg(), err)
	}
	return signed
}

// accessToken returns claims signed HS256 with testSecret as an at+jwt.
func accessToken(t testing.TB, claims jwt.Claims) string {
	t.Helper()
	return signTyped(t, jwt.SigningMethodHS256, []byte(testSecret), "at+jwt", claims)
}

// bearer is the header of a request carrying token in Authorization.
func bearer(token string) http.Header {
	return http.Header{"Authorization": {"Bearer " + token}}
}

// with returns h with the test headers of startMercureAuthServer added: "publish" for
// Test-Publish, "read" for Test-Read.
func with(h http.Header, key string, values ...string) http.Header {
	h = h.Clone()
	if h == nil {
		h = http.Header{}
	}
	name := map[string]string{"publish": "Test-Publish", "read": "Test-Read"}[key]
	h[name] = append(h[name], values...)
	return h
}

// checkMercureAnswers runs the table rows against srv and checks each answer's status,
// challenge and reason, that no answer quotes a token, and that a's metrics counted every
// refusal by its reason.
func checkMercureAnswers(t *testing.T, a *authorizer, srv *httptest.Server, rows []mercureRow) {
	t.Helper()
	counted := map[authFailure]float64{}
	for _, row := range rows {
		got := askMercure(t, srv, row.target, row.header)
		if got.status != wantStatus(row.challenge) || got.challenge != row.challenge || !strings.Contains(got.body, row.reason) {
			t.Errorf("%s: GET %s = %d %q %q, want %d %q with %q", row.name, row.target, got.status, got.challenge, got.body,
				wantStatus(row.challenge), row.challenge, row.reason)
		}
		if strings.Contains(got.body, "\n") {
			t.Errorf("%s: the reason is more than one line: %q", row.name, got.body)
		}
		for _, token := range presentedTokens(row.target, row.header) {
			if len(token) > 20 && strings.Contains(got.body, token) {
				t.Errorf("%s: the answer quotes the token: %q", row.name, got.body)
			}
		}
		switch {
		case row.challenge == challengeMissing:
			counted[authMissing]++
		case row.challenge == challengeForbidden:
			counted[authForbidden]++
		case row.challenge == challengeInvalid && strings.Contains(row.reason, "expired"):
			counted[authExpired]++
		case row.challenge != "":
			counted[authInvalid]++
		}
	}
	if a == nil {
		return
	}
	for _, f := range authFailures {
		var m dto.Metric
		if err := a.failures[f].Write(&m); err != nil {
			t.Fatal(err)
		}
		if got := m.GetCounter().GetValue(); got != counted[f] {
			t.Errorf("sse_auth_failures_total{reason=%q} = %v, want %v", f, got, counted[f])
		}
	}
}

// presentedTokens returns the values that a request to target with header presents as a
// token, wherever it puts them: Authorization, a cookie, the query.
func presentedTokens(target string, header http.Header) []string {
	var tokens []string
	for _, v := range header.Values("Authorization") {
		_, token, _ := strings.Cut(v, " ")
		tokens = append(tokens, token)
	}
	for _, c := range (&http.Request{Header: http.Header{"Cookie": header.Values("Cookie")}}).Cookies() {
		tokens = append(tokens, c.Value)
	}
	if u, err := url.Parse(target); err == nil {
		tokens = append(tokens, u.Query()["authorization"]...)
	}
	return tokens
}

// mercureRow is one request of a table test and what the answer must be: the exact
// WWW-Authenticate challenge ("" for a 200) and a piece of its body.
type mercureRow struct {
	name      string
	target    string
	header    http.Header
	challenge string
	reason    string
}

// TestMercureSpec_TokenValidation follows the spec's "Token Validation": typ at+jwt, the
// algorithms of the configured keys alone, iss, aud, exp and nbf.
func TestMercureSpec_TokenValidation(t *testing.T) {
	t.Parallel()
	a := newMercureAuthorizer(t, testIssuer)
	srv := startMercureAuthServer(t, a)
	rsaKey, ecKey, _ := testKeys(t)
	books := detail([]string{"publish", "subscribe"}, "https://example.com/books/1")
	valid := func(edit func(jwt.MapClaims)) jwt.MapClaims {
		c := accessClaims(time.Hour, books)
		if edit != nil {
			edit(c)
		}
		return c
	}
	hs := func(typ string, c jwt.MapClaims) string {
		return signTyped(t, jwt.SigningMethodHS256, []byte(testSecret), typ, c)
	}
	good := accessToken(t, valid(nil))
	parts := strings.Split(good, ".")
	wider := valid(func(c jwt.MapClaims) { c[mercureDetailsClaim] = []any{detail([]string{"publish"}, "*")} })
	tampered := parts[0] + "." + b64(mustJSON(t, wider)) + "." + parts[2]
	rsaPEM := publicPEM(t, &rsaKey.PublicKey)
	publish := func(h http.Header) http.Header { return with(h, "publish", "https://example.com/books/1") }

	checkMercureAnswers(t, a, srv, []mercureRow{
		{"at+jwt, HS256", "/hub", publish(bearer(good)), "", "present=true"},
		{"application/AT+JWT", "/hub", publish(bearer(hs("application/AT+JWT", valid(nil)))), "", "present=true"},
		{"RS256", "/hub", publish(bearer(signTyped(t, jwt.SigningMethodRS256, rsaKey, "at+jwt", valid(nil)))), "", "present=true"},
		{"ES256", "/hub", publish(bearer(signTyped(t, jwt.SigningMethodES256, ecKey, "at+jwt", valid(nil)))), "", "present=true"},
		{"aud an array holding the hub", "/hub", publish(bearer(accessToken(t, valid(func(c jwt.MapClaims) { c["aud"] = []string{"other", testHub} })))), "", "present=true"},
		{"typ missing", "/hub", publish(bearer(hs("", valid(nil)))), challengeInvalid, "typ is not at+jwt"},
		{"typ JWT", "/hub", publish(bearer(hs("JWT", valid(nil)))), challengeInvalid, "typ is not at+jwt"},
		{"typ application/jwt", "/hub", publish(bearer(hs("application/jwt", valid(nil)))), challengeInvalid, "typ is not at+jwt"},
		{"wrong aud", "/hub", publish(bearer(accessToken(t, valid(func(c jwt.MapClaims) { c["aud"] = "https://other-hub.example/.well-known/mercure" })))), challengeInvalid, "wrong audience"},
		{"no aud", "/hub", publish(bearer(accessToken(t, valid(func(c jwt.MapClaims) { delete(c, "aud") })))), challengeInvalid, "token without aud"},
		{"wrong iss", "/hub", publish(bearer(accessToken(t, valid(func(c jwt.MapClaims) { c["iss"] = "https://evil.example" })))), challengeInvalid, "wrong issuer"},
		{"no iss", "/hub", publish(bearer(accessToken(t, valid(func(c jwt.MapClaims) { delete(c, "iss") })))), challengeInvalid, "token without iss"},
		{"no exp", "/hub", publish(bearer(accessToken(t, valid(func(c jwt.MapClaims) { delete(c, "exp") })))), challengeInvalid, "token without exp"},
		{"expired past the leeway", "/hub", publish(bearer(accessToken(t, accessClaims(-tokenLeeway-5*time.Second, books)))), challengeInvalid, "token expired"},
		{"expired within the leeway", "/hub", publish(bearer(accessToken(t, accessClaims(-2*time.Second, books)))), "", "present=true"},
		{"nbf in the future", "/hub", publish(bearer(accessToken(t, valid(func(c jwt.MapClaims) { c["nbf"] = time.Now().Add(time.Minute).Unix() })))), challengeInvalid, "token not valid yet"},
		{"exp as a string", "/hub", publish(bearer(accessToken(t, valid(func(c jwt.MapClaims) { c["exp"] = fmt.Sprint(time.Now().Add(time.Hour).Unix()) })))), challengeInvalid, `"exp" is a string, not a number`},
		{"alg none", "/hub", publish(bearer(signTyped(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, "at+jwt", valid(nil)))), challengeInvalid, "bad signature or algorithm"},
		{"HS256 signed with the RSA public key", "/hub", publish(bearer(signTyped(t, jwt.SigningMethodHS256, rsaPEM, "at+jwt", valid(nil)))), challengeInvalid, "bad signature or algorithm"},
		{"tampered claims", "/hub", with(bearer(tampered), "publish", "https://example.com/anything"), challengeInvalid, "bad signature or algorithm"},
		{"alg twice in the header", "/hub", publish(bearer(signRaw(t, `{"alg":"none","alg":"HS256","typ":"at+jwt"}`, string(mustJSON(t, valid(nil)))))), challengeInvalid, "header: a key appears twice in one object"},
		{"not a JWT", "/hub", publish(bearer("opaque")), challengeInvalid, "malformed token"},
		{"valid, another topic", "/hub", with(bearer(good), "publish", "https://example.com/books/2"), challengeForbidden, "does not allow publishing"},
	})
}

// TestMercureSpec_TokenValidation_WithoutConfiguredIssuer: iss must still be present
// when -jwt-issuer is not set, and then any value is taken.
func TestMercureSpec_TokenValidation_WithoutConfiguredIssuer(t *testing.T) {
	t.Parallel()
	a := newMercureAuthorizer(t, "")
	srv := startMercureAuthServer(t, a)
	c := accessClaims(time.Hour, detail([]string{"subscribe"}, "*"))
	c["iss"] = "https://any-issuer.example"
	noIss := accessClaims(time.Hour, detail([]string{"subscribe"}, "*"))
	delete(noIss, "iss")
	checkMercureAnswers(t, a, srv, []mercureRow{
		{"any iss", "/hub", with(bearer(accessToken(t, c)), "read", "https://example.com/a"), "", "present=true"},
		{"no iss", "/hub", with(bearer(accessToken(t, noIss)), "read", "https://example.com/a"), challengeInvalid, "token without iss"},
	})
}

// TestMercureSpec_AuthorizationDetails follows "Authorization Details" and "Topic Matcher
// List": one invalid Mercure entry fails the whole token, unknown actions and other APIs'
// details are ignored, and the number of entries and matchers is bounded.
func TestMercureSpec_AuthorizationDetails(t *testing.T) {
	t.Parallel()
	a := newMercureAuthorizer(t, testIssuer)
	srv := startMercureAuthServer(t, a)
	books := detail([]string{"publish"}, "https://example.com/books/1")
	token := func(details ...any) http.Header {
		return with(bearer(accessToken(t, accessClaims(time.Hour, details...))), "publish", "https://example.com/books/1")
	}
	entry := func(fields map[string]any) map[string]any {
		e := map[string]any{"type": mercureDetailType, "actions": []string{"publish"}, "topics": []any{map[string]any{"match": "https://example.com/books/1"}}}
		for k, v := range fields {
			if v == nil {
				delete(e, k)
				continue
			}
			e[k] = v
		}
		return e
	}
	many := func(n int, each func(int) any) []any {
		out := make([]any, n)
		for i := range out {
			out[i] = each(i)
		}
		return out
	}
	topicsN := func(n int) []string {
		topics := make([]string, n)
		for i := range topics {
			topics[i] = fmt.Sprint("t/", i)
		}
		return topics
	}
	raw := func(details string) http.Header {
		now := time.Now().Unix()
		claims := fmt.Sprintf(`{"iss":%q,"aud":%q,"sub":"s","exp":%d,"authorization_details":%s}`, testIssuer, testHub, now+3600, details)
		return with(bearer(signRaw(t, `{"alg":"HS256","typ":"at+jwt"}`, claims)), "publish", "https://example.com/books/1")
	}
	detailJSON := `{"type":"` + mercureDetailType + `","actions":["publish"],"topics":[{"match":"https://example.com/books/1"}]`

	checkMercureAnswers(t, a, srv, []mercureRow{
		{"one Mercure detail", "/hub", token(books), "", "present=true"},
		{"an unknown action beside publish", "/hub", token(entry(map[string]any{"actions": []string{"publish", "archive"}})), "", "present=true"},
		{"unknown actions alone grant nothing", "/hub", token(entry(map[string]any{"actions": []string{"archive"}})), challengeForbidden, "does not allow publishing"},
		{"an action in capitals is unknown", "/hub", token(entry(map[string]any{"actions": []string{"PUBLISH"}})), challengeForbidden, "does not allow publishing"},
		{"another API's detail is ignored", "/hub", token(map[string]any{"type": "https://payments.example/transfer", "actions": "anything", "topics": 7, "Topics": 8}, books), "", "present=true"},
		{"another API's detail with Type beside type", "/hub", raw(`[{"type":"x","Type":"` + mercureDetailType + `"}]`), challengeInvalid, `authorization_details[0]: a key differs from "type" only in case`},
		{"another API's detail alone grants nothing", "/hub", token(map[string]any{"type": "https://payments.example/transfer"}), challengeForbidden, "does not allow publishing"},
		{"no details at all", "/hub", token(), challengeForbidden, "does not allow publishing"},
		{"a bare-string topic", "/hub", token(entry(map[string]any{"topics": []any{"https://example.com/books/1"}})), challengeInvalid, "authorization_details[0].topics[0]: not a JSON object"},
		{"an unknown match_type", "/hub", token(books, entry(map[string]any{"topics": []any{map[string]any{"match": "https://example.com/{id}", "match_type": "uritemplate"}}})), challengeInvalid, "authorization_details[1].topics[0]: match_type is not exact or urlpattern"},
		{"match_type in capitals", "/hub", token(entry(map[string]any{"topics": []any{map[string]any{"match": "https://example.com/books/1", "match_type": "EXACT"}}})), challengeInvalid, "match_type is not exact or urlpattern"},
		{"an invalid URL Pattern", "/hub", token(entry(map[string]any{"topics": []any{map[string]any{"match": "https://example.com/(", "match_type": "urlpattern"}}})), challengeInvalid, "not a valid urlpattern matcher"},
		{"a match that is not a string", "/hub", token(entry(map[string]any{"topics": []any{map[string]any{"match": 1}}})), challengeInvalid, "match is missing or not a string"},
		{"a matcher without match", "/hub", token(entry(map[string]any{"topics": []any{map[string]any{"match_type": "exact"}}})), challengeInvalid, "match is missing or not a string"},
		{"an empty match", "/hub", token(entry(map[string]any{"topics": []any{map[string]any{"match": ""}}})), challengeInvalid, "an empty matcher"},
		{"a match with a control character", "/hub", token(entry(map[string]any{"topics": []any{map[string]any{"match": "https://example.com/\x01"}}})), challengeInvalid, "control or format character"},
		{"an empty actions list", "/hub", token(books, entry(map[string]any{"actions": []string{}})), challengeInvalid, "authorization_details[1]: actions is not a non-empty array of strings"},
		{"no actions", "/hub", token(entry(map[string]any{"actions": nil})), challengeInvalid, "actions is not a non-empty array of strings"},
		{"a non-string action", "/hub", token(entry(map[string]any{"actions": []any{"publish", 1}})), challengeInvalid, "actions is not a non-empty array of strings"},
		{"actions a string", "/hub", token(entry(map[string]any{"actions": "publish"})), challengeInvalid, "actions is not a non-empty array of strings"},
		{"an empty topics list", "/hub", token(entry(map[string]any{"topics": []any{}})), challengeInvalid, "topics is not a non-empty array"},
		{"no topics", "/hub", token(entry(map[string]any{"topics": nil})), challengeInvalid, "topics is not a non-empty array"},
		{"a payload that is not an object", "/hub", token(entry(map[string]any{"payload": []int{1}})), challengeInvalid, "payload is not an object"},
		{"a detail that is not an object", "/hub", token(books, "publish"), challengeInvalid, "authorization_details[1]: not a JSON object"},
		{"a detail without type", "/hub", token(entry(map[string]any{"type": nil})), challengeInvalid, "type is missing or not a string"},
		{"authorization_details an object", "/hub", raw(detailJSON + "}"), challengeInvalid, "authorization_details is not an array"},
		{"authorization_details null", "/hub", raw("null"), challengeInvalid, "authorization_details is not an array"},
		{"actions in capitals beside actions", "/hub", raw("[" + detailJSON + `,"Actions":["subscribe"]}]`), challengeInvalid, `a key differs from "actions" only in case`},
		{"match_type in another case beside match", "/hub", raw(`[{"type":"` + mercureDetailType + `","actions":["publish"],"topics":[{"match":"*","Match_Type":"urlpattern"}]}]`), challengeInvalid, `a key differs from "match_type" only in case`},
		{"topics twice", "/hub", raw("[" + detailJSON + `,"topics":[{"match":"*"}]}]`), challengeInvalid, "a key appears twice in one object"},
		{"100 details", "/hub", token(append(many(maxGrantDetails-1, func(int) any { return map[string]any{"type": "x"} }), books)...), "", "present=true"},
		{"101 details", "/hub", token(many(maxGrantDetails+1, func(int) any { return map[string]any{"type": "x"} })...), challengeInvalid, "101 entries, over 100"},
		{"101 matchers", "/hub", token(books, detail([]string{"subscribe"}, topicsN(maxGrantMatchers)...)), challengeInvalid, "more than 100 topic matchers"},
	})
}

// TestMercureSpec_PublishersAndSubscribers follows "Publishers" (every topic of an update
// granted) and "Subscribers" (one topic of a private update granted, alternates
// included), with exact matchers, URL Patterns and the "*" wildcard.
func TestMercureSpec_PublishersAndSubscribers(t *testing.T) {
	t.Parallel()
	a := newMercureAuthorizer(t, testIssuer)
	srv := startMercureAuthServer(t, a)
	token := bearer(accessToken(t, accessClaims(time.Hour,
		detail([]string{"publish"}, "https://example.com/books/1", "urlpattern:https://example.com/authors/:id"),
		detail([]string{"subscribe"}, "urlpattern:https://example.com/users/42/*", "urlpattern:/relative/:id"),
	)))
	wildcard := bearer(accessToken(t, accessClaims(time.Hour, detail([]string{"publish", "subscribe"}, "*"))))
	checkMercureAnswers(t, a, srv, []mercureRow{
		{"publish to an exact topic", "/hub", with(token, "publish", "https://example.com/books/1"), "", "present=true"},
		{"publish to a topic of the URL Pattern", "/hub", with(token, "publish", "https://example.com/authors/7"), "", "present=true"},
		{"publish to every topic granted", "/hub", with(token, "publish", "https://example.com/books/1", "https://example.com/authors/7"), "", "present=true"},
		{"publish to one topic of two not granted", "/hub", with(token, "publish", "https://example.com/books/1", "https://example.com/books/2"), challengeForbidden, "publishing to https://example.com/books/2"},
		{"subscribe does not grant publish", "/hub", with(token, "publish", "https://example.com/users/42/books/1"), challengeForbidden, "does not allow publishing"},
		{"read by the alternate topic", "/hub", with(token, "read", "https://example.com/books/1", "https://example.com/users/42/books/1"), "", "present=true"},
		{"read by no topic", "/hub", with(token, "read", "https://example.com/books/1"), challengeForbidden, "does not allow reading"},
		{"publish does not grant read", "/hub", with(token, "read", "https://example.com/authors/7"), challengeForbidden, "does not allow reading"},
		{"a relative URL Pattern resolves against the hub", "/hub", with(token, "read", "https://hub.example/relative/1"), "", "present=true"},
		{"the wildcard publishes anywhere", "/hub", with(wildcard, "publish", "urn:isbn:0451450523", "https://example.com/x"), "", "present=true"},
		{"the wildcard reads anything", "/hub", with(wildcard, "read", "anything at all"), "", "present=true"},
	})
}

// TestMercureSpec_Payloads follows "Payloads": the payload of the first subscribe detail
// whose matchers match the subscription's own matcher, taken as a topic.
func TestMercureSpec_Payloads(t *testing.T) {
	t.Parallel()
	a := newMercureAuthorizer(t, testIssuer)
	srv := startMercureAuthServer(t, a)
	withPayload := func(d map[string]any, payload string) map[string]any {
		d["payload"] = json.RawMessage(payload)
		return d
	}
	sub := []string{"subscribe"}
	token := bearer(accessToken(t, accessClaims(time.Hour,
		detail(sub, "https://example.com/quiet"),
		withPayload(detail([]string{"publish"}, "https://example.com/foo"), `{"publish":"only"}`),
		withPayload(detail(sub, "https://example.com/foo"), `{ "custom1" : "foo" }`),
		withPayload(detail(sub, "urlpattern:https://example.com/bar/:id"), `{"custom2":"bar"}`),
		withPayload(detail(sub, `urlpattern:https://example.com/digits/:id(\d+)`), `{"custom4":"digits"}`),
		withPayload(detail(sub, "*"), `{"custom3":"default"}`),
		withPayload(detail(sub, "https://example.com/masked"), `{"masked":true}`),
	)))
	for _, tt := range []struct {
		name, matchType, match, want string
	}{
		{"exact, byte for byte", matchExact, "https://example.com/foo", `{"custom1":"foo"}`},
		{"the urlpattern subscription of the grant's own pattern", matchURLPattern, "https://example.com/bar/:id", `{"custom2":"bar"}`},
		{"an exact subscription inside the pattern", matchExact, "https://example.com/bar/1", `{"custom2":"bar"}`},
		{"a pattern that does not match its own text, by type and text", matchURLPattern, `https://example.com/digits/:id(\d+)`, `{"custom4":"digits"}`},
		{"anything else: the wildcard's default", matchExact, "https://example.com/other", `{"custom3":"default"}`},
		{"masked by the wildcard before it", matchExact, "https://example.com/masked", `{"custom3":"default"}`},
		{"the first match carries none", matchExact, "https://example.com/quiet", ``},
	} {
		h := bearer(strings.TrimPrefix(token.Get("Authorization"), "Bearer "))
		h.Set("Test-Match-Type", tt.matchType)
		h.Set("Test-Match", tt.match)
		if got := askMercure(t, srv, "/hub", h); got.status != http.StatusOK || got.body != "present=true payload="+tt.want {
			t.Errorf("%s: payload of %s %s = %d %q, want %q", tt.name, tt.matchType, tt.match, got.status, got.body, tt.want)
		}
	}
}

// TestMercureSpec_LegacyTokens reads 0.x tokens (the mercure claim of UPGRADE.md): URI
// Templates and topics as selectors, "*", one payload for every subscription, no exp, the
// mercureAuthorization cookie, and the authorization query parameter on the 0.x route only.
func TestMercureSpec_LegacyTokens(t *testing.T) {
	t.Parallel()
	a := newMercureAuthorizer(t, "")
	srv := startMercureAuthServer(t, a)
	legacy := func(claim string, exp time.Duration) string {
		claims := `{"sub":"user-42","mercure":` + claim
		if exp != 0 {
			claims += fmt.Sprintf(`,"exp":%d`, time.Now().Add(exp).Unix())
		}
		return signRaw(t, `{"alg":"HS256","typ":"JWT"}`, claims+"}")
	}
	token := legacy(`{"publish":["https://example.com/books/{id}"],"subscribe":["https://example.com/users/42","https://example.com/books/{id}"],"payload":{"user":42}}`, 0)
	all := legacy(`{"publish":["*"],"subscribe":["*"]}`, time.Hour)
	books := func(h http.Header) http.Header { return with(h, "publish", "https://example.com/books/1") }
	checkMercureAnswers(t, a, srv, []mercureRow{
		{"no exp: taken", "/hub", books(bearer(token)), "", `payload={"user":42}`},
		{"publish inside the template", "/legacy", books(bearer(token)), "", "present=true"},
		{"publish outside the template", "/legacy", with(bearer(token), "publish", "https://example.com/users/42"), challengeForbidden, "does not allow publishing"},
		{"read an exact topic", "/legacy", with(bearer(token), "read", "https://example.com/users/42"), "", "present=true"},
		{"read inside the template", "/legacy", with(bearer(token), "read", "https://example.com/books/7"), "", "present=true"},
		{"read outside", "/legacy", with(bearer(token), "read", "https://example.com/users/43"), challengeForbidden, "does not allow reading"},
		{"the star", "/legacy", with(bearer(all), "publish", "urn:anything"), "", "present=true"},
		{"expired", "/legacy", books(bearer(legacy(`{"publish":["*"]}`, -time.Hour))), challengeInvalid, "token expired"},
		{"no publish list", "/legacy", books(bearer(legacy(`{"subscribe":["*"]}`, 0))), challengeForbidden, "does not allow publishing"},
		{"null lists", "/legacy", books(bearer(legacy(`{"publish":null,"subscribe":null}`, 0))), challengeForbidden, "does not allow publishing"},
		{"a selector that is not a string", "/legacy", books(bearer(legacy(`{"publish":[1]}`, 0))), challengeInvalid, "mercure.publish is not an array of strings"},
		{"a broken URI Template", "/legacy", books(bearer(legacy(`{"publish":["https://example.com/{id"]}`, 0))), challengeInvalid, "mercure.publish[0]: not a valid uritemplate matcher"},
		{"mercure a string", "/legacy", books(bearer(legacy(`"publish"`, 0))), challengeInvalid, "mercure is not an object"},
		{"Publish in capitals", "/legacy", books(bearer(legacy(`{"Publish":["*"]}`, 0))), challengeInvalid, `a key differs from "publish" only in case`},
		{"101 selectors", "/legacy", books(bearer(legacy(`{"subscribe":[`+strings.Repeat(`"a",`, maxGrantMatchers)+`"a"]}`, 0))), challengeInvalid, "more than 100 topic selectors"},
		{"the 0.x cookie", "/hub", books(http.Header{"Cookie": {legacyMercureCookie + "=" + token}}), "", "present=true"},
		{"the query parameter on the 0.x route", "/legacy?authorization=" + url.QueryEscape(token), books(nil), "", "present=true"},
		{"the query parameter elsewhere is no token", "/hub?authorization=" + url.QueryEscape(token), books(nil), challengeMissing, "a token is needed"},
	})
}

// TestMercureSpec_TokenShapes: a token carrying both grants is refused, and one carrying
// neither (an own sse token) verifies but grants nothing in Mercure.
func TestMercureSpec_TokenShapes(t *testing.T) {
	t.Parallel()
	a := newMercureAuthorizer(t, "")
	srv := startMercureAuthServer(t, a)
	both := accessClaims(time.Hour, detail([]string{"publish"}, "*"))
	both["mercure"] = map[string]any{"publish": []string{"*"}}
	sse := hs256(t, grant(time.Hour, []string{"orders/1"}, []string{"orders/1"}))
	sseNoExp := grant(time.Hour, nil, nil)
	sseNoExp.ExpiresAt = nil
	bare := accessClaims(time.Hour)
	delete(bare, mercureDetailsClaim)
	bareElsewhere := accessClaims(time.Hour)
	delete(bareElsewhere, mercureDetailsClaim)
	bareElsewhere["aud"] = "https://other-hub.example"
	checkMercureAnswers(t, a, srv, []mercureRow{
		{"an access token without authorization_details", "/hub", bearer(accessToken(t, bare)), "", "present=true payload="},
		{"an access token without authorization_details cannot publish", "/hub", with(bearer(accessToken(t, bare)), "publish", "a"), challengeForbidden, "does not allow publishing"},
		{"an access token without authorization_details, for another hub", "/hub", bearer(accessToken(t, bareElsewhere)), challengeInvalid, "wrong audience"},
		{"both shapes", "/hub", with(bearer(accessToken(t, both)), "publish", "a"), challengeInvalid, "both authorization_details and mercure"},
		{"an sse token without a grant need", "/hub", bearer(sse), "", "present=true payload="},
		{"an sse token cannot publish", "/hub", with(bearer(sse), "publish", "orders/1"), challengeForbidden, "does not allow publishing"},
		{"an sse token cannot read", "/hub", with(bearer(sse), "read", "orders/1"), challengeForbidden, "does not allow reading"},
		{"an sse token without exp", "/hub", bearer(hs256(t, sseNoExp)), challengeInvalid, "token without exp"},
	})
}

// TestMercureSpec_PresentingTheAccessToken follows "Presenting the Access Token" and "Error
// Responses": the header wins over a cookie, one method per request, and the exact
// challenge of each refusal.
func TestMercureSpec_PresentingTheAccessToken(t *testing.T) {
	t.Parallel()
	a := newMercureAuthorizer(t, testIssuer)
	srv := startMercureAuthServer(t, a)
	good := accessToken(t, accessClaims(time.Hour, detail([]string{"publish", "subscribe"}, "*")))
	cookie := func(pairs ...string) http.Header { return http.Header{"Cookie": {strings.Join(pairs, "; ")}} }
	merge := func(hs ...http.Header) http.Header {
		out := http.Header{}
		for _, h := range hs {
			for k, v := range h {
				out[k] = append(out[k], v...)
			}
		}
		return out
	}
	read := func(h http.Header) http.Header { return with(h, "read", "https://example.com/a") }
	secure, old := mercureCookie+"=", legacyMercureCookie+"="
	query := "?authorization=" + url.QueryEscape(good)
	long := strings.Repeat("a", maxTokenLength+1)
	checkMercureAnswers(t, a, srv, []mercureRow{
		{"no token, none needed", "/hub", nil, "", "present=false"},
		{"no token, one needed: a bare challenge", "/hub", read(nil), challengeMissing, "a token is needed"},
		{"the header", "/hub", read(bearer(good)), "", "present=true"},
		{"bearer in lower case", "/hub", read(http.Header{"Authorization": {"bearer " + good}}), "", "present=true"},
		{"the 1.0 cookie", "/hub", read(cookie(secure + good)), "", "present=true"},
		{"the header wins over a bad cookie", "/hub", read(merge(bearer(good), cookie(secure+"garbage"))), "", "present=true"},
		{"a bad header is not saved by a good cookie", "/hub", read(merge(bearer("garbage"), cookie(secure+good))), challengeInvalid, "malformed token"},
		{"the 1.0 cookie wins over the 0.x one", "/hub", read(cookie(old+"garbage", secure+good)), "", "present=true"},
		{"the query wins over a cookie on the 0.x route", "/legacy" + query, read(cookie(secure + "garbage")), "", "present=true"},
		{"a cookie from an allowed origin", "/hub", read(merge(cookie(secure+good), http.Header{"Origin": {"https://app.example"}})), "", "present=true"},
		{"a cookie from another origin", "/hub", read(merge(cookie(secure+good), http.Header{"Origin": {"https://evil.example"}})), challengeForbidden, "a cookie counts only from the origins in -allowed-origins"},
		{"two Authorization headers", "/hub", read(http.Header{"Authorization": {"Bearer " + good, "Bearer " + good}}), challengeMalformed, "more than one Authorization header"},
		{"header and query on the 0.x route", "/legacy" + query, read(bearer(good)), challengeMalformed, "a token in both Authorization and the authorization parameter"},
		{"header and query on the 1.0 route: the query is ignored", "/hub" + query, read(bearer(good)), "", "present=true"},
		{"two query parameters", "/legacy" + query + "&authorization=x", read(nil), challengeMalformed, "more than one authorization parameter"},
		{"an empty query parameter", "/legacy?authorization=", read(nil), challengeMalformed, "an empty authorization parameter"},
		{"not Bearer", "/hub", read(http.Header{"Authorization": {"Basic dXNlcjpwYXNz"}}), challengeMalformed, "Authorization is not Bearer <token>"},
		{"Bearer alone", "/hub", read(http.Header{"Authorization": {"Bearer"}}), challengeMalformed, "Authorization is not Bearer <token>"},
		{"a token with a space", "/hub", read(http.Header{"Authorization": {"Bearer abc def"}}), challengeMalformed, "a character a Bearer token cannot"},
		{"the access_token parameter is no token", "/hub?access_token=" + url.QueryEscape(good), read(nil), challengeMissing, "a token is needed"},
		{"a token over 8 KiB", "/hub", read(bearer(long)), challengeInvalid, "over 8192 bytes"},
		{"a cookie over 8 KiB", "/hub", read(cookie(secure + long)), challengeInvalid, "over 8192 bytes"},
	})
}

// TestMercureSpec_ErrorResponses_Answer checks writeMercureAuthError's answer as a
// whole: status, challenge, no caching, plain text, one line.
func TestMercureSpec_ErrorResponses_Answer(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		err       *mercureAuthError
		status    int
		challenge string
		body      string
	}{
		{mercureDenied(authMissing, "a token is needed"), 401, challengeMissing, "401 unauthorized: a token is needed\n"},
		{mercureDenied(authInvalid, "bad signature or algorithm"), 401, challengeInvalid, "401 unauthorized: bad signature or algorithm\n"},
		{mercureDenied(authExpired, "token expired"), 401, challengeInvalid, "401 unauthorized: token expired\n"},
		{mercureDenied(authForbidden, "not\r\nthis topic"), 403, challengeForbidden, "403 forbidden: not this topic\n"},
		{mercureMalformed("more than one Authorization header"), 400, challengeMalformed, "400 bad request: more than one Authorization header\n"},
	} {
		w := httptest.NewRecorder()
		writeMercureAuthError(w, tt.err)
		if w.Code != tt.status || w.Header().Get("WWW-Authenticate") != tt.challenge || w.Body.String() != tt.body {
			t.Errorf("%s %q: %d %q %q, want %d %q %q", tt.err.failure, tt.err.reason, w.Code, w.Header().Get("WWW-Authenticate"), w.Body.String(), tt.status, tt.challenge, tt.body)
		}
		if w.Header().Get("Cache-Control") != "no-store" || !strings.HasPrefix(w.Header().Get("Content-Type"), "text/plain") {
			t.Errorf("%s: Cache-Control %q, Content-Type %q, want no-store and text/plain", tt.err.failure, w.Header().Get("Cache-Control"), w.Header().Get("Content-Type"))
		}
	}
}

// TestMercureSpec_Authorization_WithoutKey: with no key configured no token verifies, so
// a presented one is invalid_token, and a request without one has no token.
func TestMercureSpec_Authorization_WithoutKey(t *testing.T) {
	t.Parallel()
	srv := startMercureAuthServer(t, nil)
	good := accessToken(t, accessClaims(time.Hour, detail([]string{"subscribe"}, "*")))
	checkMercureAnswers(t, nil, srv, []mercureRow{
		{"no token", "/hub", nil, "", "present=false"},
		{"no token, one needed", "/hub", with(nil, "read", "a"), challengeMissing, "a token is needed"},
		{"a token", "/hub", bearer(good), challengeInvalid, "no key is configured to verify tokens"},
		{"two headers are still malformed", "/hub", http.Header{"Authorization": {"Bearer a", "Bearer b"}}, challengeMalformed, "more than one Authorization header"},
	})
}

// TestMercureGrant_NilAllowsNothing: the grant of no token allows nothing and carries no
// payload.
func TestMercureGrant_NilAllowsNothing(t *testing.T) {
	var g *mercureGrant
	if g.mayPublish("a") || g.mayRead([]string{"a"}) || g.payloadFor(matchExact, "a") != nil {
		t.Error("a nil grant allows something")
	}
}

// TestMercureGrant_ExpiryIssuerSubject: the grant carries the token's exp, iss and sub,
// and a 0.x token without exp has a zero expiry.
func TestMercureGrant_ExpiryIssuerSubject(t *testing.T) {
	t.Parallel()
	a := newMercureAuthorizer(t, testIssuer)
	claims := accessClaims(time.Hour, detail([]string{"subscribe"}, "*"))
	g, err := a.verifyMercure(accessToken(t, claims), testHub)
	if err != nil {
		t.Fatalf("verify a valid 1.0 token: %s", err.reason)
	}
	if want := time.Unix(claims["exp"].(int64), 0); !g.expires.Equal(want) || g.issuer != testIssuer || g.subject != claims["sub"] {
		t.Errorf("grant expires %v, iss %q, sub %q; want %v, %q, %q", g.expires, g.issuer, g.subject, want, testIssuer, claims["sub"])
	}
	legacy, err := newMercureAuthorizer(t, "").verifyMercure(signRaw(t, `{"alg":"HS256"}`, `{"mercure":{"subscribe":["*"]}}`), testHub)
	if err != nil || !legacy.expires.IsZero() {
		t.Errorf("a 0.x token without exp: %v, expires %v; want taken with a zero expiry", err, legacy)
	}
	if _, err := a.verifyMercure(accessToken(t, claims), ""); err == nil || !strings.Contains(err.reason, "no resource identifier") {
		t.Errorf("a 1.0 token at a hub without a resource identifier: %v, want refused", err)
	}
}

// FuzzMercureClaims feeds claims JSON to the parser of both dialects: it never panics, and
// a grant it accepts holds only matchers that compiled, with no 0.x type in a 1.0 grant.
func FuzzMercureClaims(f *testing.F) {
	for _, seed := range []string{
		`{"authorization_details":[{"type":"https://mercure.rocks/authorization-detail","actions":["publish","subscribe"],"topics":[{"match":"*"},{"match":"https://example.com/books/:id","match_type":"urlpattern"}],"payload":{"a":1}}]}`,
		`{"authorization_details":[{"type":"other"},{"type":"https://mercure.rocks/authorization-detail","actions":["x"],"topics":[{"match":"/relative/*","match_type":"urlpattern"}]}]}`,
		`{"authorization_details":[{"type":"https://mercure.rocks/authorization-detail","actions":[],"topics":["bare"]}]}`,
		`{"mercure":{"publish":["https://example.com/{id}","*"],"subscribe":["a","{+x}"],"payload":"p"}}`,
		`{"mercure":{"publish":null},"authorization_details":[]}`,
		`{"sse":{"subscribe":["a"]},"exp":1}`,
		`{"mercure":{"subscribe":["https://example.com/{"]}}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, text []byte) {
		var claims mercureClaims
		if json.Unmarshal(text, &claims) != nil {
			return
		}
		g, err := claims.grant(testHub)
		if err != nil {
			return
		}
		d, _ := claims.dialect()
		matchers := g.publish
		for _, s := range g.subscribe {
			matchers = append(matchers, s.matcher)
		}
		if len(matchers) > maxGrantMatchers {
			t.Fatalf("%d matchers, over %d", len(matchers), maxGrantMatchers)
		}
		for _, m := range matchers {
			if m == nil || m.pattern == "" || checkTopicValue("matcher", m.pattern) != nil {
				t.Fatalf("an invalid matcher accepted: %#v", m)
			}
			switch {
			case d == dialect10 && m.typ != matchExact && m.typ != matchURLPattern:
				t.Fatalf("a 1.0 grant holds a %s matcher", m.typ)
			case !m.all && m.typ == matchURLPattern && m.url == nil, !m.all && m.typ == matchURITemplate && m.tmpl == nil:
				t.Fatalf("a %s matcher that did not compile: %q", m.typ, m.pattern)
			}
			_ = m.matches(m.pattern)
		}
		for _, s := range g.subscribe {
			if s.payload != nil && !json.Valid(s.payload) {
				t.Fatalf("an invalid payload: %q", s.payload)
			}
		}
		_ = g.mayPublish("https://example.com/books/1")
		_ = g.mayRead([]string{"https://example.com/books/1", "x"})
		_ = g.payloadFor(matchURLPattern, "https://example.com/books/:id")
	})
}
