package main

// Topic matchers of the Mercure protocol: exact topics and WHATWG URL Patterns (1.0), URI
// Templates (RFC 6570) and plain strings (the 0.x topic= selector), and "*", which matches
// every topic. A topic is any UTF-8 string without control or format characters.

import (
	"errors"
	"fmt"
	"net/url"
	"path"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/dunglas/go-urlpattern"
	"github.com/yosida95/uritemplate/v3"
)

// The matcher types, as the 1.0 match_<type> parameters and match_type members name them;
// "uritemplate" is the 0.x topic= selector holding a template.
const (
	matchExact       = "exact"
	matchURLPattern  = "urlpattern"
	matchURITemplate = "uritemplate"
)

// maxMatcherLength is the longest topic or matcher a request may hold, in bytes.
const maxMatcherLength = 2048

// topicMatcher is one compiled matcher. Matching never backtracks: URL Patterns and URI
// Templates compile to Go's regular expressions, which run in linear time.
type topicMatcher struct {
	typ     string // matchExact, matchURLPattern or matchURITemplate
	pattern string // as the client wrote it
	all     bool   // "*": every topic
	base    string // the hub's URL, against which relative patterns and topics resolve
	url     *urlpattern.URLPattern
	tmpl    *uritemplate.Template
}

// checkTopicValue says which rule a topic or matcher value breaks, or returns nil: valid
// UTF-8, at most maxMatcherLength bytes, no C0 or C1 control character, DEL, or Unicode
// format character (category Cf), which are invisible and let one topic pass for another.
func checkTopicValue(what, value string) error {
	if len(value) > maxMatcherLength {
		return fmt.Errorf("%s is %d bytes long, over %d", what, len(value), maxMatcherLength)
	}
	if !utf8.ValidString(value) {
		return fmt.Errorf("%s is not valid UTF-8", what)
	}
	for i, r := range value {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r <= 0x9f) || unicode.Is(unicode.Cf, r) {
			return fmt.Errorf("%s holds the control or format character %U at byte %d", what, r, i)
		}
	}
	return nil
}

// newTopicMatcher compiles pattern as a matcher of type typ, resolving relative URL
// Patterns against base, the hub's URL; the error says why the pattern is no matcher.
func newTopicMatcher(typ, pattern, base string) (*topicMatcher, error) {
	if err := checkTopicValue("a matcher", pattern); err != nil {
		return nil, err
	}
	m := &topicMatcher{typ: typ, pattern: pattern, base: base, all: pattern == "*"}
	if m.all {
		return m, nil
	}
	var err error
	switch typ {
	case matchExact:
	case matchURLPattern:
		if m.url, err = urlpattern.New(pattern, base, nil); err != nil {
			return nil, fmt.Errorf("%q is not a URL Pattern", pattern)
		}
		// A regular-expression group with a counted repeat ({1000}) compiles to a program
		// as many times larger, which each match walks: refused, as the spec lets a hub
		// bound what a pattern costs.
		if m.url.HasRegexpGroups() && strings.ContainsRune(pattern, '{') {
			return nil, fmt.Errorf("%q has a regular-expression group with a counted repeat ({n}), which this hub refuses: use :name, * or a group without {}", pattern)
		}
	case matchURITemplate:
		if m.tmpl, err = uritemplate.New(pattern); err != nil {
			return nil, fmt.Errorf("%q is not a URI Template", pattern)
		}
		if len(m.tmpl.Varnames()) > maxTemplateVariables {
			return nil, fmt.Errorf("%q has more than %d variables", pattern, maxTemplateVariables)
		}
		// The template's regular expression is built here, once: built on the first
		// match instead, one that cannot compile would fail every publish after.
		if !compiles(m.tmpl) {
			return nil, fmt.Errorf("%q is not a URI Template this hub can match", pattern)
		}
	default:
		return nil, fmt.Errorf("the matcher type %q is not supported: use exact or urlpattern", typ)
	}
	return m, nil
}

// maxTemplateVariables is the most variables a URI Template may name.
const maxTemplateVariables = 32

// compiles builds t's regular expression and reports whether it could: the library panics
// on one it cannot compile.
func compiles(t *uritemplate.Template) (ok bool) {
	defer func() {
		if recover() != nil {
			ok = false
		}
	}()
	return t.Regexp() != nil
}

// newLegacyMatcher compiles a 0.x topic= selector: "*", a URI Template if it holds an
// expression in braces, else a topic matched exactly.
func newLegacyMatcher(selector, base string) (*topicMatcher, error) {
	if strings.ContainsRune(selector, '{') {
		return newTopicMatcher(matchURITemplate, selector, base)
	}
	return newTopicMatcher(matchExact, selector, base)
}

// exactTopic returns the one topic an exact matcher matches, so that the fan-out can find
// its subscribers by topic instead of testing each.
func (m *topicMatcher) exactTopic() (string, bool) {
	return m.pattern, m.typ == matchExact && !m.all
}

// key returns what identifies m among matchers: its type and pattern.
func (m *topicMatcher) key() string {
	return m.typ + "\x00" + m.pattern
}

// matches reports whether m matches topic. A topic that a URL Pattern cannot parse as a URL,
// even against the hub's URL, does not match it.
func (m *topicMatcher) matches(topic string) bool {
	switch {
	case m.all:
		return true
	case m.url != nil && hasScheme(topic):
		return m.url.Test(topic, "") // absolute: the base would be parsed for nothing
	case m.url != nil:
		return m.url.Test(topic, m.base)
	case m.tmpl != nil:
		return m.tmpl.Regexp().MatchString(topic)
	}
	return m.pattern == topic
}

// hasScheme reports whether topic starts with a URL scheme and a colon, as an absolute URL does.
func hasScheme(topic string) bool {
	for i := 0; i < len(topic); i++ {
		c := topic[i]
		switch {
		case c == ':':
			return i > 0
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', i > 0 && ('0' <= c && c <= '9' || c == '+' || c == '-' || c == '.'):
		default:
			return false
		}
	}
	return false
}

// matchesAnyOf reports whether m matches at least one of topics.
func (m *topicMatcher) matchesAnyOf(topics []string) bool {
	for _, topic := range topics {
		if m.matches(topic) {
			return true
		}
	}
	return false
}

// escapeStrayPercent returns s with every % that does not start a percent-escape written %25.
func escapeStrayPercent(s string) string {
	if !strings.Contains(s, "%") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && !(i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2])) {
			b.WriteString("%25")
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// isHex reports whether c is a hexadecimal digit.
func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// errReservedTopic is what a publish to the hub's own namespace is refused with.
var errReservedTopic = errors.New("the topic is in the hub's reserved namespace")

// inReservedNamespace reports whether topic, resolved against the hub's URL, names the hub's
// path or a path under it, where only the hub publishes (subscription events). Dot segments
// are removed and percent-encoded unreserved characters decoded first, so that no spelling
// of the path slips through; a topic that is no URL reference names no hub path.
func inReservedNamespace(topic string, hub *url.URL) bool {
	// A % that starts no escape is a literal % to the URL Standard's parser, which matching
	// uses, but an error to Go's: write it %25, so that both read the same path.
	ref, err := url.Parse(escapeStrayPercent(topic))
	if err != nil {
		return false
	}
	resolved := hub.ResolveReference(ref)
	p := resolved.EscapedPath()
	if decoded, err := url.PathUnescape(p); err == nil {
		p = decoded
	}
	p = path.Clean("/" + p)
	return p == hub.Path || strings.HasPrefix(p, hub.Path+"/")
}
