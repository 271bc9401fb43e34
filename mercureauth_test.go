package main

import (
	"encoding/json"
	"testing"
)

// testHub is the hub's URL in these tests: the base of relative URL Patterns.
const testHub = "https://hub.example/.well-known/mercure"

// TestMercureGrant_NilAllowsNothing: the grant of no token allows nothing and carries no
// payload.
func TestMercureGrant_NilAllowsNothing(t *testing.T) {
	var g *mercureGrant
	if g.mayPublish("a") || g.mayRead([]string{"a"}) || g.payloadFor(matchExact, "a") != nil {
		t.Error("a nil grant allows something")
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
