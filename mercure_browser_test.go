package main

// A page on another origin reads the Mercure hub in real Chromium: EventSources without
// credentials get the public updates of their matchers, and EventSources with credentials,
// carrying the HttpOnly cookie a login origin set, get the private updates their token grants
// too; a hub that does not list the page's origin refuses the cookie. The browser helpers are
// in browser_test.go, the Mercure ones in mercure_test.go and mercureauth_test.go.

import (
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
)

// mercureCrossOriginPage is the page of the other origin: it logs in at LOGIN, whose answer
// sets the token's cookie HttpOnly for the host, then opens, for each [name, url] of STREAMS,
// one EventSource without credentials ("<name> anonymous") and one with them ("<name> with
// the cookie"), and keeps in window.streams what each of them saw; window.closeAll() closes
// them all.
const mercureCrossOriginPage = `<!doctype html>
<meta charset="utf-8">
<title>another origin</title>
<link rel="icon" href="data:,">
<script>
window.streams = {};
window.login = "pending";
const sources = [];
window.closeAll = () => { for (const es of sources) es.close(); };
const watch = (name, url, withCredentials) => {
	const seen = { events: [], opens: 0, errors: 0, closed: false };
	window.streams[name] = seen;
	const es = new EventSource(url, { withCredentials });
	sources.push(es);
	es.onopen = () => { seen.opens++; };
	es.onmessage = (e) => { seen.events.push({ id: e.lastEventId, data: e.data }); };
	es.onerror = () => { seen.errors++; seen.closed = es.readyState === EventSource.CLOSED; };
};
fetch(LOGIN, { credentials: "include" }).then((r) => {
	window.login = r.ok ? "done" : "status " + r.status;
	if (!r.ok) return;
	for (const [name, url] of STREAMS) {
		watch(name + " anonymous", url, false);
		watch(name + " with the cookie", url, true);
	}
}, (err) => { window.login = String(err); });
</script>`

// pageStream is what one EventSource of mercureCrossOriginPage saw.
type pageStream struct {
	Events []pageEvent `json:"events"`
	Opens  int         `json:"opens"`
	Errors int         `json:"errors"`
	Closed bool        `json:"closed"` // readyState was CLOSED at the last error: the browser gave up
}

// pageEvent is one message event an EventSource received: its lastEventId and its data.
type pageEvent struct {
	ID   string `json:"id"`
	Data string `json:"data"`
}

// readPageStreams returns what every EventSource of mercureCrossOriginPage has seen, by name.
func readPageStreams(t *testing.T, b *browser) map[string]pageStream {
	t.Helper()
	return evaluate[map[string]pageStream](t, b, `window.streams`)
}

// crossOriginUpdate is an update the test publishes, and which EventSources must get it.
type crossOriginUpdate struct {
	topics  []string // the first is canonical
	data    string
	id      string // the publisher's id; empty, the hub numbers the update
	private bool
	matches []string // the selectors (query parameter names) that select one of its topics
	granted bool     // a private update: the cookie's token grants subscribe on one of its topics
}

// form returns the publish form of u.
func (u crossOriginUpdate) form() url.Values {
	f := url.Values{"topic": u.topics, "data": {u.data}}
	if u.id != "" {
		f.Set("id", u.id)
	}
	if u.private {
		f.Set("private", "on")
	}
	return f
}

// reaches reports whether u must reach an EventSource of selector, with the cookie or not.
func (u crossOriginUpdate) reaches(selector string, withCookie bool) bool {
	return slices.Contains(u.matches, selector) && (!u.private || withCookie && u.granted)
}

// refusedBy matches the console errors Chromium writes when a request to the server at base
// fails CORS or is answered 403, and only those: the errors a refused credentialed
// EventSource causes, and no other server's.
func refusedBy(base string) func(chromedp.ConsoleMessage) bool {
	forbidden := failedWith(http.StatusForbidden)
	return func(m chromedp.ConsoleMessage) bool {
		return (corsRefused(m) || forbidden(m)) && (strings.HasPrefix(m.URL, base) || strings.Contains(m.Text, base))
	}
}

// cookiesFor returns the cookies, HttpOnly ones included, that the browser would send to
// target, as name=value.
func cookiesFor(t *testing.T, b *browser, target string) []string {
	t.Helper()
	got, err := chromedp.Call(b.ctx, network.GetCookies, network.GetCookiesParams{URLs: []string{target}})
	if err != nil {
		t.Fatalf("the cookies for %s: %v", target, err)
	}
	var pairs []string
	for _, c := range got.Cookies {
		pairs = append(pairs, c.Name+"="+c.Value)
	}
	return pairs
}

func TestBrowser_MercureAcrossOriginsPublicAndPrivateUpdates(t *testing.T) {
	skipShort(t, "chromium")
	const (
		book1   = "https://example.com/books/1"
		book2   = "https://example.com/books/2"
		authors = "https://example.com/authors/"
		shops   = "https://example.com/shops/"
	)
	// Each selector, by the query parameter that names it, with its value.
	selectors := []struct{ param, value string }{
		{"match", book1},
		{"match_urlpattern", authors + ":id"},
		{"topic", shops + "{id}"},
	}
	// The cookie's token grants subscribe on books/1, every author and shops/3 alone: a
	// private update that a selector routes to the stream but the token does not grant
	// (shops/4) must not arrive, as routing never widens what a token may read.
	legacy := legacyToken(t, nil, []string{book1, authors + "{id}", shops + "3"})
	current := hubToken(t, detail([]string{"subscribe"}, book1, "urlpattern:"+authors+":id", shops+"3"))
	updates := []crossOriginUpdate{
		{topics: []string{book1}, data: "book 1", matches: []string{"match"}},
		{topics: []string{book2}, data: "book 2, no selector's"},
		{topics: []string{book1}, data: "book 1, private", id: "urn:test:book-1-private", private: true, matches: []string{"match"}, granted: true},
		{topics: []string{authors + "7"}, data: "author 7", id: "urn:test:author-7", matches: []string{"match_urlpattern"}},
		{topics: []string{authors + "8"}, data: "author 8\nprivate, two lines", private: true, matches: []string{"match_urlpattern"}, granted: true},
		{topics: []string{authors + "7/books"}, data: "author 7's books, no selector's"},
		{topics: []string{shops + "3"}, data: "shop 3", matches: []string{"topic"}},
		{topics: []string{shops + "3"}, data: "shop 3, private", id: "urn:test:shop-3-private", private: true, matches: []string{"topic"}, granted: true},
		{topics: []string{shops + "4"}, data: "shop 4, private, not granted", private: true, matches: []string{"topic"}},
		{topics: []string{shops + "5", authors + "5"}, data: "shop 5 and author 5", id: "urn:test:two-topics", matches: []string{"match_urlpattern", "topic"}},
		{topics: []string{book2, book1}, data: "book 2, private, granted by its alternate topic book 1", private: true, matches: []string{"match"}, granted: true},
		{topics: []string{"https://example.com/elsewhere"}, data: "elsewhere, private", private: true, granted: false},
		// The marker, last: every stream has all it will get once it has this.
		{topics: []string{book1, authors + "end", shops + "end"}, data: "end", matches: []string{"match", "match_urlpattern", "topic"}},
	}

	var page atomic.Pointer[string]
	pageMux := http.NewServeMux()
	pageMux.HandleFunc("GET /", func(w http.ResponseWriter, r *http.Request) { serveHTML(*page.Load())(w, r) })
	origin := startOtherOrigin(t, pageMux)

	// The login origin sets the token of the case in its cookie, HttpOnly, for the host
	// 127.0.0.1 (cookies ignore ports), and expires the other Mercure cookie, so that each
	// case presents one token.
	var cookie atomic.Pointer[http.Cookie]
	loginMux := http.NewServeMux()
	loginMux.HandleFunc("GET /login", func(w http.ResponseWriter, r *http.Request) {
		c := *cookie.Load()
		for _, name := range []string{mercureCookie, legacyMercureCookie} {
			if name != c.Name {
				http.SetCookie(w, &http.Cookie{Name: name, Path: "/", MaxAge: -1, HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode})
			}
		}
		http.SetCookie(w, &c)
		w.Header().Set("Access-Control-Allow-Origin", r.Header.Get("Origin"))
		w.Header().Set("Access-Control-Allow-Credentials", "true")
		w.Header().Set("Vary", "Origin")
		fmt.Fprintln(w, "logged in")
	})
	login := startOtherOrigin(t, loginMux)

	// One hub per case, so that the publishers' ids are new to each; all started before the
	// browser, so that it is gone before they stop.
	cases := []struct {
		name    string
		srv     *testServer
		cookie  string
		token   string
		allowed bool // the page's origin is in the hub's -allowed-origins
	}{
		{"a 0.x token in mercureAuthorization", startMercure(t, "-allowed-origins", origin), legacyMercureCookie, legacy, true},
		{"a 1.0 token in __Secure-mercure_access_token", startMercure(t, "-allowed-origins", origin), mercureCookie, current, true},
		{"the page's origin not in -allowed-origins", startMercure(t), mercureCookie, current, false},
	}
	b := newBrowser(t)
	for _, c := range cases {
		if !c.allowed {
			b.excuse("the hub refuses the cookie of an origin not in -allowed-origins, and CORS hides its answer", refusedBy(c.srv.url))
		}
	}

	publisher := publisherAll(t)
	for _, c := range cases {
		cookie.Store(&http.Cookie{Name: c.cookie, Value: c.token, Path: "/", HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode})
		var streams [][2]string
		for _, s := range selectors {
			streams = append(streams, [2]string{s.param, c.srv.url + mercurePath + "?" + url.Values{s.param: {s.value}}.Encode()})
		}
		html := strings.NewReplacer("LOGIN", jsString(t, login+"/login"), "STREAMS", string(mustJSON(t, streams))).Replace(mercureCrossOriginPage)
		page.Store(&html)

		b.navigate(t, origin+"/")
		b.waitFor(t, pageWait, c.name+": logged in", `window.login !== "pending"`)
		if got := evaluate[string](t, b, `window.login`); got != "done" {
			t.Fatalf("%s: the login at %s: %s, want done", c.name, login, got)
		}
		if got := evaluate[string](t, b, `document.cookie`); strings.Contains(got, "mercure") {
			t.Errorf("%s: document.cookie = %q, want the HttpOnly cookie hidden from scripts", c.name, got)
		}
		// Chromium keeps a Secure cookie, __Secure- prefixed or not, that http://127.0.0.1
		// sets, as loopback is a potentially trustworthy origin; the login origin's cookie is
		// the hub's too, as cookies ignore ports. The hub's 403, or the private updates below,
		// show that it reached the hub.
		if got, want := cookiesFor(t, b, c.srv.url+mercurePath), []string{c.cookie + "=" + c.token}; !slices.Equal(got, want) {
			t.Fatalf("%s: the browser holds the cookies %q for the hub, want %q", c.name, got, want)
		}
		opened := len(selectors) * 2
		if !c.allowed {
			opened = len(selectors)
			b.waitFor(t, pageWait, c.name+": the credentialed EventSources closed",
				`Object.entries(window.streams).filter(([n, s]) => n.endsWith("with the cookie") && s.closed).length === `+fmt.Sprint(len(selectors)))
		}
		b.waitFor(t, pageWait, c.name+": the EventSources open",
			`Object.values(window.streams).filter((s) => s.opens === 1).length === `+fmt.Sprint(opened))
		eventually(t, 10*time.Second, c.name+": the hub has the page's subscribers", func() bool {
			return metric(t, c.srv.adminURL, "sse_hub_subscribers") == float64(opened)
		})

		want := map[string][]pageEvent{}
		for _, u := range updates {
			id := publishUpdate(t, c.srv.url, publisher, u.form())
			if u.id != "" && id != u.id {
				t.Fatalf("%s: the update published with the id %s got %s", c.name, u.id, id)
			}
			for _, s := range selectors {
				for _, withCookie := range []bool{false, true} {
					// A refused credentialed EventSource gets nothing at all.
					if u.reaches(s.param, withCookie) && (!withCookie || c.allowed) {
						name := s.param + map[bool]string{false: " anonymous", true: " with the cookie"}[withCookie]
						want[name] = append(want[name], pageEvent{id, u.data})
					}
				}
			}
		}
		b.waitFor(t, pageWait, c.name+": the marker on every open EventSource",
			`Object.values(window.streams).filter((s) => s.events.length > 0 && s.events[s.events.length - 1].data === "end").length === `+fmt.Sprint(opened))
		got := readPageStreams(t, b)
		if len(got) != len(selectors)*2 {
			t.Errorf("%s: the page has %d EventSources, want %d", c.name, len(got), len(selectors)*2)
		}
		for _, s := range selectors {
			for _, name := range []string{s.param + " anonymous", s.param + " with the cookie"} {
				if g := got[name]; !slices.Equal(g.Events, want[name]) {
					t.Errorf("%s: the EventSource %s got\n%q\nwant exactly\n%q", c.name, name, g.Events, want[name])
				}
			}
		}
		forbidden := metric(t, c.srv.adminURL, `sse_auth_failures_total{reason="forbidden"}`)
		if c.allowed {
			for name, s := range got {
				if s.Opens != 1 || s.Errors != 0 {
					t.Errorf("%s: the EventSource %s opened %d times with %d errors, want once and none", c.name, name, s.Opens, s.Errors)
				}
			}
			if forbidden != 0 {
				t.Errorf("%s: sse_auth_failures_total{reason=\"forbidden\"} = %v, want 0", c.name, forbidden)
			}
		} else {
			// Refused by the hub, before admission, and not only hidden by the browser.
			for _, s := range selectors {
				name := s.param + " with the cookie"
				if g := got[name]; g.Opens != 0 || len(g.Events) != 0 || !g.Closed {
					t.Errorf("%s: the EventSource %s opened %d times, got %q, closed %t; want it refused, with nothing", c.name, name, g.Opens, g.Events, g.Closed)
				}
			}
			if forbidden != float64(len(selectors)) {
				t.Errorf("%s: sse_auth_failures_total{reason=\"forbidden\"} = %v, want %d, one for each credentialed EventSource", c.name, forbidden, len(selectors))
			}
		}
		// Close the page's EventSources, so that they end before the next case's open.
		evaluate[bool](t, b, `(window.closeAll(), true)`)
		eventually(t, 10*time.Second, c.name+": the page's subscribers gone", func() bool {
			return metric(t, c.srv.adminURL, "sse_hub_subscribers") == 0
		})
	}
}
