package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/golang-jwt/jwt/v5"
)

func FuzzMercurePublishForm(f *testing.F) {
	for _, seed := range []string{
		"topic=https%3A%2F%2Fexample.com%2Fbooks%2F1&data=hello",
		"topic=a&topic=b&private=on&id=urn%3Auuid%3A1&type=book.updated&retry=500&data=x%0D%0Ay",
		"topic=%2F.well-known%2Fmercure%2Fsubscriptions%2Fx",
		"topic=*",
		"topic=a&data=1&data=2",
		"topic=a&retry=12a",
		"topic=a&type=mercure",
		"topic=a&id=%23x",
		"topic=a%00b",
		"topic=a;b",
		"topic=a&data=%ff",
		"unknown=1&topic=a",
	} {
		f.Add(seed)
	}
	hub, _ := url.Parse(testHubURL)
	m := &mercureHub{cfg: mercureConfig{hubURL: testHubURL}, url: hub}
	f.Fuzz(func(t *testing.T, form string) {
		p, status, err := m.parsePublication(form)
		if err != nil {
			if status != http.StatusBadRequest && status != http.StatusRequestEntityTooLarge {
				t.Fatalf("refused with %d: %v", status, err)
			}
			return
		}
		if len(p.topics) == 0 || len(p.topics) > maxPublishTopics {
			t.Fatalf("accepted %d topics", len(p.topics))
		}
		for _, topic := range p.topics {
			if checkTopicValue("a topic", topic) != nil || topic == "*" || inReservedNamespace(topic, hub) {
				t.Fatalf("accepted the topic %q", topic)
			}
		}
		if !utf8.Valid(p.data) || checkUpdateID(p.id) != nil || checkEventType(p.event) != nil || p.event == "mercure" || checkRetry(p.retry) != nil {
			t.Fatalf("accepted %+v", p)
		}
		// What is accepted frames as one event: every field a line of its own.
		frame := string(eventIDs{epoch: "e"}.frame(1, &p))
		if !strings.HasSuffix(frame, "\n\n") || strings.Count(frame, "\n\n") != 1 || strings.ContainsRune(frame, '\r') {
			t.Fatalf("the update frames as %q", frame)
		}
	})
}

// mercureHubURL is the -mercure-url of the Mercure tests' servers: the audience of their 1.0
// tokens and the base of relative topics.
const mercureHubURL = testHub

// startMercure starts the server with the tests' JWT key and hub URL, and args.
func startMercure(t *testing.T, args ...string) *testServer {
	t.Helper()
	return startServerEnv(t, authEnv, append([]string{"-mercure-url", mercureHubURL}, args...)...)
}

// hubToken returns a Mercure 1.0 access token for the tests' hub, valid for an hour, with
// details.
func hubToken(t testing.TB, details ...any) string {
	t.Helper()
	return accessToken(t, accessClaims(time.Hour, details...))
}

// legacyToken returns a Mercure 0.x token: the mercure claim with publish and subscribe.
func legacyToken(t testing.TB, publish, subscribe []string) string {
	t.Helper()
	claims := jwt.MapClaims{"mercure": map[string]any{"publish": publish, "subscribe": subscribe},
		"exp": time.Now().Add(time.Hour).Unix()}
	return sign(t, jwt.SigningMethodHS256, []byte(testSecret), "", claims)
}

// publisherAll is a 1.0 token that may publish to every topic.
func publisherAll(t testing.TB) string {
	return hubToken(t, detail([]string{"publish"}, "*"))
}

// mercurePublish posts form to the hub with token (none if empty) and returns the status,
// the answer's headers and its body.
func mercurePublish(t *testing.T, base, token string, form url.Values) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, base+mercurePath, strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", mercurePath, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(body)
}

// publishUpdate publishes an update with the fields of form and returns its id, failing the
// test unless the hub answers 200 text/plain.
func publishUpdate(t *testing.T, base, token string, form url.Values) string {
	t.Helper()
	status, header, body := mercurePublish(t, base, token, form)
	if status != http.StatusOK || header.Get("Content-Type") != "text/plain; charset=utf-8" || body == "" {
		t.Fatalf("publish %v: %d %s %q, want 200 text/plain; charset=utf-8 with the id", form, status, header.Get("Content-Type"), body)
	}
	return body
}

// form returns url.Values of name, value pairs.
func form(pairs ...string) url.Values {
	v := url.Values{}
	for i := 0; i+1 < len(pairs); i += 2 {
		v.Add(pairs[i], pairs[i+1])
	}
	return v
}

// mercureSubscribe opens the hub's stream with query, and header (a token, Last-Event-ID),
// and returns it with its opening frame read.
func mercureSubscribe(t *testing.T, base, query string, header http.Header) *sseStream {
	t.Helper()
	h := http.Header{"Accept": {"text/event-stream"}}
	for k, v := range header {
		h[k] = v
	}
	s := openStreamAt(t, base+mercurePath+"?"+query, h)
	if f := s.next(t); f.retry == "" {
		t.Fatalf("the stream opened with %+v, want a retry:", f)
	}
	return s
}

// readUntil reads events from s until one whose data is marker, and returns the others as
// "id data" lines, and "id event:type data" for a typed one.
func readUntil(t *testing.T, s *sseStream, marker string) []string {
	t.Helper()
	var got []string
	for range 1000 {
		f := s.next(t)
		if !f.isEvent {
			continue
		}
		if f.data == marker {
			return got
		}
		line := f.id + " " + f.data
		if f.event != "" {
			line = f.id + " event:" + f.event + " " + f.data
		}
		got = append(got, line)
	}
	t.Fatalf("no marker %q in 1000 events", marker)
	return nil
}

// nextLines reads the next n frames of s and returns them as "id data" lines.
func nextLines(t *testing.T, s *sseStream, n int) []string {
	t.Helper()
	var lines []string
	for range n {
		f := s.next(t)
		lines = append(lines, f.id+" "+f.data)
	}
	return lines
}

func TestMercureSpec_Subscription_EachMatcherTypeSelectsItsTopics(t *testing.T) {
	srv := startMercure(t)
	query := url.Values{
		"match":            {"https://example.com/books/1", "plain"},
		"match_exact":      {"https://example.com/exact"},
		"match_urlpattern": {"https://example.com/authors/:id", "/relative/:x"},
		"topic":            {"https://example.com/shops/{id}", "legacy-plain"},
	}
	s := mercureSubscribe(t, srv.url, query.Encode(), nil)
	token := publisherAll(t)
	var want []string
	for _, c := range []struct {
		topic string
		match bool
	}{
		{"https://example.com/books/1", true},
		{"https://example.com/books/2", false},
		{"plain", true},
		{"Plain", false},
		{"https://example.com/exact", true},
		{"https://example.com/authors/7", true},
		{"https://example.com/authors/7/books", false},
		{mercureHubURL[:len("https://hub.example")] + "/relative/1", true}, // a relative pattern resolves against the hub's URL
		{"/relative/2", true},
		{"https://example.com/shops/9", true},
		{"https://example.com/shops/9/x", false},
		{"legacy-plain", true},
	} {
		id := publishUpdate(t, srv.url, token, form("topic", c.topic, "data", c.topic))
		if c.match {
			want = append(want, id+" "+c.topic)
		}
	}
	publishUpdate(t, srv.url, token, form("topic", "plain", "data", "end"))
	if got := readUntil(t, s, "end"); !slices.Equal(got, want) {
		t.Errorf("the subscriber got\n%q\nwant exactly\n%q", got, want)
	}
}

func TestMercureSpec_Subscription_RefusesBadRequestsWith400(t *testing.T) {
	srv := startMercure(t)
	for _, c := range []struct{ name, query, want string }{
		{"no matcher", "last_event_id=x", "name at least one topic"},
		{"unknown matcher type", "match_regex=a", `"match_regex" is no matcher parameter`},
		{"matcher name in another case", "MATCH=a", `"MATCH" is no matcher parameter`},
		{"Match_urlpattern", "Match_urlpattern=a", "is no matcher parameter"},
		{"control character", "match=a%00b", "control or format character"},
		{"format character", "match=a%E2%80%8Bb", "control or format character"},
		{"invalid UTF-8", "match=a%FFb", "not valid UTF-8"},
		{"bad URL pattern", "match_urlpattern=https%3A%2F%2Fexample.com%2F(", "not a URL Pattern"},
		{"bad URI template", "topic=https%3A%2F%2Fexample.com%2F%7Bid", "not a URI Template"},
		{"matcher too long", "match=" + strings.Repeat("a", maxMatcherLength+1), "bytes long"},
		{"too many matchers", strings.Repeat("match=a&", maxMatchers+1), fmt.Sprintf("at most %d topic matchers", maxMatchers)},
		{"a template of many variables", "topic=" + url.QueryEscape("{"+strings.Repeat("a,", 1001)+"a}"), "is not a URI Template"},
		{"a template of many names", "topic=" + url.QueryEscape("{"+func() string {
			var names []string
			for i := range 40 {
				names = append(names, fmt.Sprintf("v%d", i))
			}
			return strings.Join(names, ",")
		}()+"}"), "more than 32 variables"},
		{"a counted repeat in a pattern", "match_urlpattern=" + url.QueryEscape("https://example.com/:x([^/]{1000})"), "counted repeat"},
		{"too many patterns", strings.Repeat("match_urlpattern=%2Fa%2F%3Aid&", maxPatterns+1), fmt.Sprintf("at most %d URL Patterns", maxPatterns)},
		{"patterns over their bytes", strings.Repeat("match_urlpattern=%2F"+strings.Repeat("a", 600)+"%2F%3Aid&", 4), fmt.Sprintf("at most %d bytes in all", maxPatternBytes)},
		{"not a form", "match=a%zz", "not application/x-www-form-urlencoded"},
	} {
		status, _, body := getTopic(t, srv, http.MethodGet, mercurePath+"?"+c.query, nil)
		if status != http.StatusBadRequest || !strings.Contains(body, c.want) {
			t.Errorf("%s: %d %q, want 400 saying %q", c.name, status, body, c.want)
		}
	}
	// The hub goes on serving.
	s := mercureSubscribe(t, srv.url, "match=after", nil)
	id := publishUpdate(t, srv.url, publisherAll(t), form("topic", "after", "data", "x"))
	if f := s.next(t); f.id != id {
		t.Errorf("after the refusals a subscriber got %+v, want the update %s", f, id)
	}
}

func TestMercureSpec_Publication_FieldsBecomeTheEvent(t *testing.T) {
	srv := startMercure(t)
	s := mercureSubscribe(t, srv.url, "match=https%3A%2F%2Fexample.com%2Fbooks%2F1&match=alt", nil)
	token := publisherAll(t)
	status, header, id := mercurePublish(t, srv.url, token, form("topic", "https://example.com/books/1", "data", "line 1\r\nline 2\rline 3",
		"id", "urn:uuid:6f1c", "type", "book.updated", "retry", "1500", "unknown", "ignored"))
	if status != http.StatusOK || header.Get("Content-Type") != "text/plain; charset=utf-8" || id != "urn:uuid:6f1c" {
		t.Fatalf("publish: %d %s %q, want 200 text/plain; charset=utf-8 with the publisher's id", status, header.Get("Content-Type"), id)
	}
	raw := string(s.nextRaw(t))
	want := "id: urn:uuid:6f1c\nevent: book.updated\nretry: 1500\ndata: line 1\ndata: line 2\ndata: line 3\n\n"
	if raw != want {
		t.Errorf("the update went out as %q, want %q", raw, want)
	}
	// An update reaches a subscriber of any of its topics, once; the hub numbers one without an id.
	second := publishUpdate(t, srv.url, token, form("topic", "https://example.com/other", "topic", "alt", "topic", "https://example.com/books/1", "data", "both"))
	if f := s.next(t); f.id != second || f.data != "both" {
		t.Errorf("an update of two topics the subscriber reads arrived as %+v, want id %s once", f, second)
	}
	publishUpdate(t, srv.url, token, form("topic", "alt", "data", "end"))
	if got := readUntil(t, s, "end"); len(got) != 0 {
		t.Errorf("after the update of two topics the subscriber got %q, want nothing more", got)
	}
}

func TestMercureSpec_Publication_RefusesBadUpdates(t *testing.T) {
	srv := startMercure(t)
	token := publisherAll(t)
	long := strings.Repeat("a", maxMercurePublish)
	for _, c := range []struct {
		name   string
		form   url.Values
		status int
		want   string
	}{
		{"no topic", form("data", "x"), 400, "topic is missing"},
		{"an empty topic", form("topic", ""), 400, "a topic is empty"},
		{"the wildcard", form("topic", "*"), 400, "wildcard"},
		{"the hub's path", form("topic", mercurePath+"/subscriptions/exact/a/b"), 400, "reserved namespace"},
		{"the hub's path, absolute", form("topic", "https://hub.example"+mercurePath+"/subscriptions/x"), 400, "reserved namespace"},
		{"the hub's path, encoded", form("topic", "/.well-known/%6Dercure/x"), 400, "reserved namespace"},
		{"the hub's path, dot segments", form("topic", "/x/../.well-known/mercure/y"), 400, "reserved namespace"},
		{"a control character in a topic", form("topic", "a\x01b"), 400, "control or format character"},
		{"an id starting with #", form("topic", "a", "id", "#1"), 400, "starts with #"},
		{"the id earliest", form("topic", "a", "id", "earliest"), 400, "reserved"},
		{"a control character in the id", form("topic", "a", "id", "a\nb"), 400, "control or format character"},
		{"the hub's own id form", form("topic", "a", "id", "abc-1"), 200, ""},
		{"the type mercure", form("topic", "a", "type", "mercure"), 400, "reserved for the hub"},
		{"the type reset", form("topic", "a", "type", "reset"), 400, "reserved"},
		{"a control character in the type", form("topic", "a", "type", "a\tb"), 400, "control or format character"},
		{"a retry that is no number", form("topic", "a", "retry", "1s"), 400, "digits"},
		{"data twice", form("topic", "a", "data", "1", "data", "2"), 400, "given 2 times"},
		{"invalid UTF-8 data", form("topic", "a", "data", "\xff"), 400, "not valid UTF-8"},
		{"too many topics", func() url.Values {
			v := url.Values{}
			for i := range maxPublishTopics + 1 {
				v.Add("topic", fmt.Sprint(i))
			}
			return v
		}(), 413, "at most"},
		{"a body over the limit", form("topic", "a", "data", long), 413, "too large"},
	} {
		status, _, body := mercurePublish(t, srv.url, token, c.form)
		if status != c.status || !strings.Contains(body, c.want) {
			t.Errorf("%s: %d %q, want %d saying %q", c.name, status, body, c.status, c.want)
		}
	}
	// A duplicate id, while the history keeps the first.
	publishUpdate(t, srv.url, token, form("topic", "a", "id", "urn:once"))
	if status, _, body := mercurePublish(t, srv.url, token, form("topic", "b", "id", "urn:once")); status != 400 || !strings.Contains(body, "has this id already") {
		t.Errorf("a duplicate id: %d %q, want 400", status, body)
	}
	// Not a form.
	req, _ := http.NewRequest(http.MethodPost, srv.url+mercurePath, strings.NewReader(`{"topic":"a"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnsupportedMediaType {
		t.Errorf("a JSON body: %d, want 415", resp.StatusCode)
	}
}

func TestMercureSpec_Authorization_PublishersNeedAGrantForEveryTopic(t *testing.T) {
	srv := startMercure(t)
	s := mercureSubscribe(t, srv.url, "match=a&match=%2Fb&match=c", nil)
	for _, c := range []struct {
		name, token string
		form        url.Values
		status      int
		challenge   string
	}{
		{"no token", "", form("topic", "a", "data", "1"), 401, `Bearer realm="mercure"`},
		{"not a token", "nope", form("topic", "a", "data", "2"), 401, `error="invalid_token"`},
		{"a token for another topic", hubToken(t, detail([]string{"publish"}, "b")), form("topic", "a", "data", "3"), 403, `error="insufficient_scope"`},
		{"a token for one of two topics", hubToken(t, detail([]string{"publish"}, "a")), form("topic", "a", "topic", "c", "data", "4"), 403, `error="insufficient_scope"`},
		{"a subscriber's token", hubToken(t, detail([]string{"subscribe"}, "*")), form("topic", "a", "data", "5"), 403, `error="insufficient_scope"`},
	} {
		status, header, body := mercurePublish(t, srv.url, c.token, c.form)
		if status != c.status || !strings.Contains(header.Get("WWW-Authenticate"), c.challenge) {
			t.Errorf("%s: %d WWW-Authenticate %q (%q), want %d with %s", c.name, status, header.Get("WWW-Authenticate"), body, c.status, c.challenge)
		}
		if c.token == "" && strings.Contains(header.Get("WWW-Authenticate"), "error=") {
			t.Errorf("%s: the challenge %q has an error code, want none", c.name, header.Get("WWW-Authenticate"))
		}
	}
	var want []string
	want = append(want, publishUpdate(t, srv.url, hubToken(t, detail([]string{"publish"}, "urlpattern:/:t")), form("topic", "/b", "data", "6"))+" 6")
	want = append(want, publishUpdate(t, srv.url, legacyToken(t, []string{"c"}, nil), form("topic", "c", "data", "7"))+" 7")
	publishUpdate(t, srv.url, publisherAll(t), form("topic", "a", "data", "end"))
	if got := readUntil(t, s, "end"); !slices.Equal(got, want) {
		t.Errorf("the subscriber got %q, want only the allowed updates %q", got, want)
	}
}

func TestMercureSpec_Authorization_PrivateUpdatesReachOnlyThoseAllowed(t *testing.T) {
	srv := startMercure(t)
	query := "match_urlpattern=" + url.QueryEscape("https://example.com/books/:id")
	anonymous := mercureSubscribe(t, srv.url, query, nil)
	reader := mercureSubscribe(t, srv.url, query, bearer(hubToken(t, detail([]string{"subscribe"}, "https://example.com/books/1"))))
	byAlternate := mercureSubscribe(t, srv.url, query, bearer(hubToken(t, detail([]string{"subscribe"}, "urlpattern:https://example.com/users/42/*"))))
	legacy := mercureSubscribe(t, srv.url, query, bearer(legacyToken(t, nil, []string{"https://example.com/books/{id}"})))
	cookie := mercureSubscribe(t, srv.url, query, http.Header{"Cookie": {"__Secure-mercure_access_token=" + hubToken(t, detail([]string{"subscribe"}, "*"))}})
	token := publisherAll(t)
	public := publishUpdate(t, srv.url, token, form("topic", "https://example.com/books/1", "data", "public"))
	book1 := publishUpdate(t, srv.url, token, form("topic", "https://example.com/books/1", "data", "private 1", "private", ""))
	book2 := publishUpdate(t, srv.url, token, form("topic", "https://example.com/books/2", "topic", "https://example.com/users/42/books/2", "data", "private 2", "private", "on"))
	publishUpdate(t, srv.url, token, form("topic", "https://example.com/books/end", "data", "end"))
	for _, c := range []struct {
		name string
		s    *sseStream
		want []string
	}{
		{"anonymous", anonymous, []string{public + " public"}},
		{"allowed books/1", reader, []string{public + " public", book1 + " private 1"}},
		{"allowed by an alternate topic", byAlternate, []string{public + " public", book2 + " private 2"}},
		{"a 0.x token", legacy, []string{public + " public", book1 + " private 1", book2 + " private 2"}},
		{"a token in the cookie", cookie, []string{public + " public", book1 + " private 1", book2 + " private 2"}},
	} {
		if got := readUntil(t, c.s, "end"); !slices.Equal(got, c.want) {
			t.Errorf("%s subscriber got %q, want %q", c.name, got, c.want)
		}
	}
	// An invalid token is refused, not read as none.
	if status, header, _ := getTopic(t, srv, http.MethodGet, mercurePath+"?"+query, bearer("nope")); status != 401 || !strings.Contains(header.Get("WWW-Authenticate"), "invalid_token") {
		t.Errorf("a subscriber with an invalid token: %d %q, want 401 invalid_token", status, header.Get("WWW-Authenticate"))
	}
}

func TestMercureSpec_Authorization_AnonymousSubscribersCanBeTurnedAway(t *testing.T) {
	srv := startMercure(t, "-mercure-anonymous=false")
	status, header, _ := getTopic(t, srv, http.MethodGet, mercurePath+"?match=a", nil)
	if status != 401 || header.Get("WWW-Authenticate") == "" {
		t.Errorf("an anonymous subscriber: %d %q, want 401 with a Bearer challenge", status, header.Get("WWW-Authenticate"))
	}
	s := mercureSubscribe(t, srv.url, "match=a", http.Header{"Authorization": {"Bearer " + hubToken(t, detail([]string{"subscribe"}, "a"))}})
	id := publishUpdate(t, srv.url, publisherAll(t), form("topic", "a", "data", "x"))
	if f := s.next(t); f.id != id {
		t.Errorf("a subscriber with a token got %+v, want %s", f, id)
	}
}

func TestMercureSpec_Reconciliation_ResumesAfterAnyIdTheHistoryKeeps(t *testing.T) {
	srv := startMercure(t)
	token := publisherAll(t)
	var ids []string
	for i := range 4 {
		f := form("topic", "a", "data", fmt.Sprint(i))
		if i == 1 {
			f.Set("id", "urn:given:1")
		}
		if i == 2 {
			f.Set("private", "on")
		}
		ids = append(ids, publishUpdate(t, srv.url, token, f))
	}
	if ids[1] != "urn:given:1" {
		t.Fatalf("the update published with an id got %q", ids[1])
	}
	reader := http.Header{"Authorization": {"Bearer " + hubToken(t, detail([]string{"subscribe"}, "a"))}}
	for _, c := range []struct {
		name, query string
		header      http.Header
		want        []string // the updates replayed
		lastEventID string   // the Mercure-Last-Event-ID answered
	}{
		{"Last-Event-ID, a hub id", "match=a", http.Header{"Last-Event-ID": {ids[0]}}, []string{ids[1] + " 1", ids[3] + " 3"}, ids[0]},
		{"last_event_id, a publisher's id", "match=a&last_event_id=urn%3Agiven%3A1", nil, []string{ids[3] + " 3"}, "urn:given:1"},
		{"lastEventID (0.x)", "topic=a&lastEventID=" + url.QueryEscape(ids[0]), nil, []string{ids[1] + " 1", ids[3] + " 3"}, ids[0]},
		{"the header wins over the query", "match=a&last_event_id=" + url.QueryEscape(ids[0]), http.Header{"Last-Event-ID": {ids[2]}}, []string{ids[3] + " 3"}, ids[2]},
		{"earliest", "match=a&last_event_id=earliest", nil, []string{ids[0] + " 0", ids[1] + " 1", ids[3] + " 3"}, "earliest"},
		{"earliest with a token reads the private one", "match=a&last_event_id=earliest", reader, []string{ids[0] + " 0", ids[1] + " 1", ids[2] + " 2", ids[3] + " 3"}, "earliest"},
		{"an id the hub does not know", "match=a&last_event_id=urn%3Anone", nil, nil, "earliest"},
	} {
		h := http.Header{"Accept": {"text/event-stream"}}
		for k, v := range c.header {
			h[k] = v
		}
		s := openStreamAt(t, srv.url+mercurePath+"?"+c.query, h)
		if got := s.resp.Header.Get("Mercure-Last-Event-ID"); got != c.lastEventID {
			t.Errorf("%s: Mercure-Last-Event-ID %q, want %q", c.name, got, c.lastEventID)
		}
		s.next(t) // the opening
		publishUpdate(t, srv.url, token, form("topic", "a", "data", "end "+c.name))
		got := slices.DeleteFunc(readUntil(t, s, "end "+c.name), func(line string) bool { return strings.Contains(line, " end ") })
		if !slices.Equal(got, c.want) {
			t.Errorf("%s: replayed %q, want %q", c.name, got, c.want)
		}
		s.close()
	}
	// No Mercure-Last-Event-ID without an id asked for.
	s := openStreamAt(t, srv.url+mercurePath+"?match=a", http.Header{"Accept": {"text/event-stream"}})
	if _, ok := s.resp.Header["Mercure-Last-Event-Id"]; ok {
		t.Errorf("a subscriber that sent no id got Mercure-Last-Event-ID %q", s.resp.Header.Get("Mercure-Last-Event-ID"))
	}
}

func TestMercureSpec_ActiveSubscriptions_EventsAndAPI(t *testing.T) {
	srv := startMercure(t, "-mercure-subscriptions")
	watcherToken := hubToken(t, detail([]string{"subscribe"}, "urlpattern:/.well-known/mercure/subscriptions/:type/:match/:sub"))
	watcher := mercureSubscribe(t, srv.url, "match_urlpattern="+url.QueryEscape("/.well-known/mercure/subscriptions/:type/:match/:sub"),
		http.Header{"Authorization": {"Bearer " + watcherToken}})
	anonymous := mercureSubscribe(t, srv.url, "match=end&match_urlpattern="+url.QueryEscape("/.well-known/mercure/subscriptions/:type/:match/:sub"), nil)
	// The watcher's own subscription is announced to it first.
	if f := watcher.next(t); f.event != "mercure" {
		t.Fatalf("the watcher's first event is %+v, want its own subscription update", f)
	}
	payloadToken := hubToken(t, map[string]any{"type": "https://mercure.rocks/authorization-detail", "actions": []string{"subscribe"},
		"topics": []map[string]string{{"match": "*"}}, "payload": map[string]string{"room": "blue"}})
	subscriber := mercureSubscribe(t, srv.url, "match="+url.QueryEscape("https://example.com/a b"), http.Header{"Authorization": {"Bearer " + payloadToken}})
	doc := nextSubscriptionUpdate(t, watcher, "https://example.com/a b")
	wantID := "/.well-known/mercure/subscriptions/exact/https%3A%2F%2Fexample.com%2Fa%20b/" + escapeVariable(doc.Subscriber)
	if doc.ID != wantID || doc.Type != "subscription" || doc.MatchType != "exact" || doc.Match != "https://example.com/a b" ||
		!doc.Active || !strings.HasPrefix(doc.Subscriber, "urn:uuid:") || string(doc.Payload) != `{"room":"blue"}` {
		t.Errorf("the subscription update is %+v, want id %s, exact, active, with the payload", doc, wantID)
	}
	// The API, to a token that may read its URL as a topic.
	get := func(path, token string) (int, http.Header, string) {
		req, _ := http.NewRequest(http.MethodGet, srv.url+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header, string(body)
	}
	apiToken := hubToken(t, detail([]string{"subscribe"}, "urlpattern:/.well-known/mercure/subscriptions{/*}?"))
	status, header, body := get(wantID, apiToken)
	var one subscriptionDoc
	if status != 200 || header.Get("Content-Type") != "application/json" || json.Unmarshal([]byte(body), &one) != nil || one.ID != wantID {
		t.Errorf("GET %s: %d %s %q, want the subscription's document", wantID, status, header.Get("Content-Type"), body)
	}
	if link := header.Get("Link"); !strings.Contains(link, `rel="mercure"`) || !strings.Contains(link, "last-event-id=") {
		t.Errorf("the API's Link is %q, want rel=mercure with last-event-id", link)
	}
	var all subscriptionsDoc
	status, _, body = get(mercurePath+"/subscriptions", apiToken)
	if status != 200 || json.Unmarshal([]byte(body), &all) != nil || all.Type != "subscriptions" || len(all.Subscriptions) != 4 {
		t.Errorf("GET the collection: %d %q, want 4 subscriptions (the watchers' 3 and the subscriber's)", status, body)
	}
	if status, _, _ = get(mercurePath+"/subscriptions", ""); status != 401 {
		t.Errorf("the API without a token: %d, want 401", status)
	}
	if status, _, _ = get(mercurePath+"/subscriptions", hubToken(t, detail([]string{"subscribe"}, "a"))); status != 403 {
		t.Errorf("the API with a token for another topic: %d, want 403", status)
	}
	if status, _, _ = get(mercurePath+"/subscriptions/exact/none/urn%3Auuid%3A0", apiToken); status != 404 {
		t.Errorf("an unknown subscription: %d, want 404", status)
	}
	// Its end is announced too, and the API forgets it.
	subscriber.close()
	if doc = nextSubscriptionUpdate(t, watcher, "https://example.com/a b"); doc.ID != wantID || doc.Active {
		t.Errorf("after the subscriber left the watcher got %+v, want its subscription inactive", doc)
	}
	eventually(t, 5*time.Second, "the API forgets the subscription", func() bool {
		status, _, _ := get(wantID, apiToken)
		return status == 404
	})
	// Subscription updates are private: the anonymous watcher got none.
	publishUpdate(t, srv.url, publisherAll(t), form("topic", "end", "data", "end"))
	if got := readUntil(t, anonymous, "end"); len(got) != 0 {
		t.Errorf("an anonymous subscriber of the subscription topics got %q, want nothing: they are private", got)
	}
}

// nextSubscriptionUpdate reads s until a subscription update for the matcher match, and
// returns its document.
func nextSubscriptionUpdate(t *testing.T, s *sseStream, match string) subscriptionDoc {
	t.Helper()
	for range 100 {
		f := s.next(t)
		var doc subscriptionDoc
		if f.event != "mercure" || json.Unmarshal([]byte(f.data), &doc) != nil {
			t.Fatalf("the watcher got %+v, want subscription updates only", f)
		}
		if doc.Match == match {
			return doc
		}
	}
	t.Fatalf("no subscription update for %q in 100", match)
	return subscriptionDoc{}
}

func TestMercureSpec_Discovery_ThePageAdvertisesTheHub(t *testing.T) {
	srv := startMercure(t)
	resp, err := http.Get(srv.url + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got, want := resp.Header.Get("Link"), "<"+mercureHubURL+`>; rel="mercure"`; got != want {
		t.Errorf("GET / Link %q, want %q", got, want)
	}
}

func TestMercure_BothDialectsShareTopicsAndHistory(t *testing.T) {
	srv := startMercure(t, "-publish-token", "pub", "-public-topics", "orders")
	mercure := mercureSubscribe(t, srv.url, "match=orders", nil)
	own, _ := openTopics(t, srv.url, "", "orders")
	first := publishAs(t, srv.adminURL, "pub", "orders", "from /publish")
	second := publishUpdate(t, srv.url, publisherAll(t), form("topic", "orders", "data", "from Mercure"))
	want := []string{first + " from /publish", second + " from Mercure"}
	for name, s := range map[string]*sseStream{"Mercure": mercure, "own": own} {
		if got := nextLines(t, s, len(want)); !slices.Equal(got, want) {
			t.Errorf("the %s subscriber got %q, want %q", name, got, want)
		}
	}
	// A Mercure update of other topics, or a private one, never reaches the own dialect.
	publishUpdate(t, srv.url, publisherAll(t), form("topic", "orders", "data", "private", "private", "on"))
	third := publishAs(t, srv.adminURL, "pub", "orders", "last")
	if f := own.next(t); f.id != third {
		t.Errorf("the own-dialect subscriber got %+v, want %s: a private Mercure update is not for it", f, third)
	}
}

func TestMercure_PrivateTopicsOfTheOwnDialectStayPrivate(t *testing.T) {
	// Without -public-topics, every topic of /publish needs a token on /sse: so on Mercure.
	srv := startMercure(t, "-publish-token", "pub")
	anonymous := mercureSubscribe(t, srv.url, "match=orders%2F42&match=end", nil)
	allowed := mercureSubscribe(t, srv.url, "match=orders%2F42&match=end",
		http.Header{"Authorization": {"Bearer " + hubToken(t, detail([]string{"subscribe"}, "orders/42"))}})
	own := openStreamAt(t, topicURL(srv.url, "orders/42"), http.Header{"Accept": {"text/event-stream"},
		"Authorization": {"Bearer " + hs256(t, grant(time.Hour, []string{"orders/*"}, nil))}})
	own.next(t)
	id := publishAs(t, srv.adminURL, "pub", "orders/42", "secret")
	publishUpdate(t, srv.url, publisherAll(t), form("topic", "end", "data", "end"))
	if got := readUntil(t, anonymous, "end"); len(got) != 0 {
		t.Errorf("an anonymous Mercure subscriber got %q from a topic that needs a token", got)
	}
	if got, want := readUntil(t, allowed, "end"), []string{id + " secret"}; !slices.Equal(got, want) {
		t.Errorf("a Mercure subscriber whose token grants the topic got %q, want %q", got, want)
	}
	if f := own.next(t); f.id != id || f.data != "secret" {
		t.Errorf("the own dialect's subscriber with a token got %+v, want %s", f, id)
	}
	// Nor may /publish forge what only the hub publishes.
	for _, body := range []string{
		`{"topic":"/.well-known/mercure/subscriptions/exact/x/y","data":{"active":true}}`,
		`{"topic":"orders/42","event":"mercure","data":1}`,
		`{"topic":"orders/42","event":"Mercure","data":1}`,
	} {
		if status, answer := publish(t, srv.adminURL, "pub", []byte(body)); status != http.StatusBadRequest {
			t.Errorf("POST /publish %s: %d %q, want 400: only the hub publishes that", body, status, answer)
		}
	}
}

func TestMercure_TheNPMPublisherAndAnEventSourceClientWorkUnchanged(t *testing.T) {
	skipShort(t, "node, and the npm mercure and eventsource packages")
	// Streams end every second: the client resumes with the publisher's ids.
	srv := startMercure(t, "-max-lifetime", "1s", "-retry", "300ms", "-retry-spread", "0")
	const updates = 20
	client := startNPMClient(t, srv.url+mercurePath+"?topic="+url.QueryEscape("https://example.com/books/{id}"), updates+1,
		"SSE_TOKEN="+legacyToken(t, nil, []string{"*"}))
	eventually(t, 10*time.Second, "the client subscribed", func() bool { return metric(t, srv.adminURL, "sse_hub_subscribers") == 1 })
	// The eventsource package keeps no id that comes without data, as the opening's does:
	// until its first update it reconnects without one. So it gets one first.
	publishUpdate(t, srv.url, legacyToken(t, []string{"*"}, nil), form("topic", "https://example.com/books/first", "id", "first", "data", "first"))
	eventually(t, 10*time.Second, "the client got the first update", func() bool { return strings.Contains(client.out.String(), `"id":"first"`) })

	node := requireTool(t, "", "node", "nodejs")
	dir := npmInstall(t, "mercure", "package.json", "package-lock.json", "publish.cjs")
	// A tenth of a second apart, so that the streams' ends fall between updates.
	cmd := exec.Command(node, "publish.cjs", srv.url+mercurePath, strconv.Itoa(updates), "100")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "MERCURE_JWT="+legacyToken(t, []string{"*"}, nil))
	out, err := cmd.CombinedOutput()
	var ids []string
	want := []string{`{"id":"first","data":"first"}`}
	for i := range updates {
		ids = append(ids, fmt.Sprintf("book-%d", i))
		want = append(want, fmt.Sprintf(`{"id":"book-%d","data":"book %d"}`, i, i))
	}
	if got := strings.Fields(string(out)); err != nil || !slices.Equal(got, ids) {
		t.Fatalf("node publish.cjs: %v; it printed %q, want the updates' ids %q", err, out, ids)
	}
	client.expect(t, want)
}

func TestMercure_NATSReplicasShareUpdatesPrivateRulesAndIds(t *testing.T) {
	skipShort(t, "a NATS server and three replicas")
	n := runNATSServer(t)
	a := startMercure(t, "-nats", n.url())
	b := startMercure(t, "-nats", n.url())
	reader := http.Header{"Authorization": {"Bearer " + hubToken(t, detail([]string{"subscribe"}, "urlpattern:https://example.com/books/:id"))}}
	query := "match_urlpattern=" + url.QueryEscape("https://example.com/books/:id") + "&match=end"
	anonymous := mercureSubscribe(t, a.url, query, nil)
	private := mercureSubscribe(t, a.url, query, reader)
	eventually(t, 10*time.Second, "both subscribed on A", func() bool { return metric(t, a.adminURL, "sse_hub_subscribers") == 2 })

	// Published on B: a hub-numbered update, one with its publisher's id, a private one, one of two topics.
	token := publisherAll(t)
	first := publishUpdate(t, b.url, token, form("topic", "https://example.com/books/1", "data", "1"))
	given := publishUpdate(t, b.url, token, form("topic", "https://example.com/books/2", "data", "2", "id", "urn:book:2", "type", "book.updated"))
	secret := publishUpdate(t, b.url, token, form("topic", "https://example.com/books/3", "data", "3", "private", "on"))
	both := publishUpdate(t, b.url, token, form("topic", "other", "topic", "https://example.com/books/4", "data", "4", "retry", "700"))
	if status, _, body := mercurePublish(t, a.url, token, form("topic", "x", "id", "urn:book:2")); status != 400 {
		t.Errorf("the id urn:book:2 again, on the other replica: %d %q, want 400", status, body)
	}
	publishUpdate(t, b.url, token, form("topic", "end", "data", "end"))
	public := []string{first + " 1", given + " event:book.updated 2", both + " 4"}
	if got := readUntil(t, anonymous, "end"); !slices.Equal(got, public) {
		t.Errorf("the anonymous subscriber on A got %q, want %q", got, public)
	}
	all := []string{first + " 1", given + " event:book.updated 2", secret + " 3", both + " 4"}
	if got := readUntil(t, private, "end"); !slices.Equal(got, all) {
		t.Errorf("the subscriber with a token on A got %q, want %q", got, all)
	}

	// Resume on B, and on a replica started after the updates, after the publisher's id.
	c := startMercure(t, "-nats", n.url())
	for name, srv := range map[string]*testServer{"B": b, "a new replica": c} {
		s := openStreamAt(t, srv.url+mercurePath+"?"+query, http.Header{"Accept": {"text/event-stream"}, "Last-Event-ID": {"urn:book:2"},
			"Authorization": reader["Authorization"]})
		if got := s.resp.Header.Get("Mercure-Last-Event-ID"); got != "urn:book:2" {
			t.Errorf("%s: Mercure-Last-Event-ID %q, want urn:book:2", name, got)
		}
		s.next(t)
		want := []string{secret + " 3", both + " 4"}
		if got := nextLines(t, s, len(want)); !slices.Equal(got, want) {
			t.Errorf("resumed on %s after urn:book:2: got %q, want %q", name, got, want)
		}
	}
}

func TestMercure_HostileInputsGetTheirStatus(t *testing.T) {
	srv := startMercure(t, "-mercure-subscriptions")
	// Go's client refuses to send a path with a stray %: a raw request does.
	conn, err := net.Dial("tcp", strings.TrimPrefix(srv.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "GET "+mercurePath+"/subscriptions/exact/%zz HTTP/1.1\r\nHost: x\r\n\r\n")
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if resp, err := http.ReadResponse(bufio.NewReader(conn), nil); err != nil || resp.StatusCode != http.StatusBadRequest {
		t.Errorf("a stray %% in the subscription API's path: %v %v, want 400", resp, err)
	}
	for _, c := range []struct {
		name, target string
		header       http.Header
		status       int
	}{
		{"a stray % in a topic of /sse", "/sse?topic=%zz", nil, 400},
		{"a token whose header has crit", mercurePath + "?match=a", http.Header{"Authorization": {"Bearer " + func() string {
			token := jwt.NewWithClaims(jwt.SigningMethodHS256, accessClaims(time.Hour, detail([]string{"subscribe"}, "*")))
			token.Header["typ"], token.Header["crit"] = "at+jwt", []string{"exp"}
			signed, _ := token.SignedString([]byte(testSecret))
			return signed
		}()}}, 401},
	} {
		if status, _, body := getTopic(t, srv, http.MethodGet, c.target, c.header); status != c.status {
			t.Errorf("%s: %d %q, want %d", c.name, status, body, c.status)
		}
	}
	// A subscriber with a URI Template does not stand in any publisher's way.
	s := mercureSubscribe(t, srv.url, "topic="+url.QueryEscape("https://example.com/{a}/{b}"), nil)
	id := publishUpdate(t, srv.url, publisherAll(t), form("topic", "https://example.com/x/y", "data", "z"))
	if f := s.next(t); f.id != id {
		t.Errorf("the template's subscriber got %+v, want %s", f, id)
	}
}
