package main

import (
	"bytes"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestAcceptsEventStream(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		accept  []string
		want    bool
		wantErr bool
	}{
		{"no header", nil, true, false},
		{"empty header", []string{""}, true, false},
		{"only commas and spaces", []string{" , ,"}, true, false},
		{"exact", []string{"text/event-stream"}, true, false},
		{"any", []string{"*/*"}, true, false},
		{"text wildcard with weight", []string{"text/html, text/*;q=0.5"}, true, false},
		{"JSON only", []string{"application/json"}, false, false},
		{"refused", []string{"text/event-stream;q=0"}, false, false},
		{"refused with decimals", []string{"text/event-stream;q=0.000"}, false, false},
		{"refused beside a wildcard", []string{"text/event-stream;q=0, */*"}, false, false},
		{"wildcard refused", []string{"*/*;q=0"}, false, false},
		{"full weight", []string{"text/event-stream;q=1.000"}, true, false},
		{"weight with a bare point", []string{"text/event-stream;q=1."}, true, false},
		{"second header, any case", []string{"application/json", "Text/Event-Stream"}, true, false},
		{"unparsable", []string{"garbage;;;"}, false, false},
		{"negative q", []string{"text/event-stream;q=-1"}, false, true},
		{"q over 1", []string{"text/event-stream;q=2"}, false, true},
		{"q just over 1", []string{"text/event-stream;q=1.001"}, false, true},
		{"q not a number", []string{"text/event-stream;q=NaN"}, false, true},
		{"q with four decimals", []string{"*/*;q=0.1234"}, false, true},
		{"q empty", []string{"*/*;q="}, false, true},
		{"q without a value", []string{"text/event-stream;q"}, false, true},
		{"q repeated", []string{"text/event-stream;q=0.5;q=1"}, false, true},
		{"q repeated in another case", []string{"*/*;q=1;Q=1"}, false, true},
		{"q quoted", []string{`text/event-stream;q="0.5"`}, false, true},
		{"q in upper case", []string{"text/event-stream;Q=0"}, false, false},
		{"spaces around parameters", []string{"text/event-stream ; q=0.5"}, true, false},
		{"text wildcard refused beats any", []string{"text/*;q=0, */*"}, false, false},
		{"any refused, text wildcard allowed", []string{"*/*;q=0, text/*"}, true, false},
		{"exact beats a refused text wildcard", []string{"text/*;q=0, text/event-stream;q=0.1"}, true, false},
		{"exact beats a refused any", []string{"*/*;q=0", "text/event-stream"}, true, false},
		{"text wildcard beats a refused any, either order", []string{"text/*, */*;q=0"}, true, false},
		{"other repeated parameters do not matter", []string{"text/event-stream;a=1;a=2"}, true, false},
		{"comma inside a quoted parameter", []string{`text/html;x="a, text/event-stream", application/json`}, false, false},
		{"wildcard type with a subtype", []string{"*/event-stream"}, false, false},
		{"parameter without a value", []string{"text/event-stream;charset"}, false, false},
		{"q exponent", []string{"*/*;q=1e-1"}, false, true},
		{"bad q on another type", []string{"text/event-stream, text/html;q=9"}, false, true},
	}
	for _, tt := range tests {
		got, err := acceptsEventStream(tt.accept)
		if got != tt.want || (err != nil) != tt.wantErr {
			t.Errorf("%s: acceptsEventStream(%q) = %t, %v; want %t, error %t", tt.name, tt.accept, got, err, tt.want, tt.wantErr)
		}
	}
}

// FuzzAppendEvent checks that any data makes exactly one event that a conforming parser
// reads back with the same id and the data's lines (line breaks become LF).
func FuzzAppendEvent(f *testing.F) {
	for _, seed := range []string{`{"User":1}`, "", "a\nb", "a\r\nb", "a\rb", "\n", "\r\n\r\n", "data: x\n\nid: 9", ": c", " lead"} {
		f.Add(uint64(1), []byte(seed))
	}
	f.Fuzz(func(t *testing.T, id uint64, data []byte) {
		out := appendEvent([]byte("prefix kept\n\n"), id, data)
		frames := parseFrames(out)
		if len(frames) != 2 {
			t.Fatalf("appendEvent(%d, %q) = %q: %d frames, want the prefix and one event", id, data, out, len(frames))
		}
		ev := frames[1]
		want := strings.NewReplacer("\r\n", "\n", "\r", "\n").Replace(string(data))
		if !ev.isEvent || ev.id != strconv.FormatUint(id, 10) || ev.data != want {
			t.Fatalf("appendEvent(%d, %q) = %q parsed as %+v, want id %d and data %q", id, data, out, ev, id, want)
		}
		if !bytes.HasSuffix(out, []byte("\n\n")) || bytes.HasSuffix(out, []byte("\n\n\n")) {
			t.Fatalf("appendEvent(%d, %q) = %q, want exactly one blank line at the end", id, data, out)
		}
	})
}

// FuzzParseLastEventID checks that only a decimal id up to maxLastEventID is taken, so
// the ids that follow never wrap around.
func FuzzParseLastEventID(f *testing.F) {
	for _, seed := range []string{"", "0", "41", "-1", "+1", "18446744073709551615", "18446744073709551616", "\xff"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, value string) {
		id, ok := parseLastEventID(value)
		want, err := strconv.ParseUint(value, 10, 64)
		wantOK := err == nil && want <= maxLastEventID && utf8.ValidString(value)
		if ok != wantOK || ok && id != want || !ok && id != 0 {
			t.Fatalf("parseLastEventID(%q) = %d, %t; want %d, %t", value, id, ok, want, wantOK)
		}
		if ok && id+1 == 0 {
			t.Fatalf("parseLastEventID(%q) = %d: the next id would wrap around", value, id)
		}
	})
}

// FuzzParseQValue checks the weight parser against RFC 9110's grammar for a qvalue:
// "0" [ "." 0*3DIGIT ] or "1" [ "." 0*3("0") ], read as a decimal number.
func FuzzParseQValue(f *testing.F) {
	for _, seed := range []string{"0", "1", "0.5", "1.000", "1.001", "0.1234", "-1", "2", "NaN", "1e-1", "", ".5", "0."} {
		f.Add(seed)
	}
	grammar := regexp.MustCompile(`^(0(\.[0-9]{0,3})?|1(\.0{0,3})?)$`)
	f.Fuzz(func(t *testing.T, q string) {
		weight, ok := parseQValue(q)
		if want := grammar.MatchString(q); ok != want {
			t.Fatalf("parseQValue(%q) ok = %t, want %t", q, ok, want)
		}
		if !ok {
			return
		}
		want, err := strconv.ParseFloat(q, 64)
		if err != nil || weight != want || weight < 0 || weight > 1 {
			t.Fatalf("parseQValue(%q) = %v, want %v within [0, 1]", q, weight, want)
		}
	})
}

func TestNamesEventStream(t *testing.T) {
	t.Parallel()
	tests := []struct {
		accept []string
		want   bool
	}{
		{nil, false},
		{[]string{"*/*"}, false},
		{[]string{"text/*"}, false},
		{[]string{"text/event-stream"}, true},
		{[]string{"text/html, text/event-stream;q=0.5"}, true},
		{[]string{"application/json", "Text/Event-Stream"}, true},
		{[]string{"text/event-stream;q=0"}, false},
		{[]string{"text/event-streams"}, false},
		{[]string{"TEXT/EVENT-STREAM;Q=0.001"}, true},
		{[]string{"text/*;q=0, text/event-stream"}, true},
		{[]string{`text/html;x="text/event-stream"`}, false},
	}
	for _, tt := range tests {
		if got := namesEventStream(tt.accept); got != tt.want {
			t.Errorf("namesEventStream(%q) = %t, want %t", tt.accept, got, tt.want)
		}
	}
}

// FuzzAcceptsEventStream checks the Accept parser on any header: it never panics, a request
// that names text/event-stream is one that accepts it, and an error is a bad weight.
func FuzzAcceptsEventStream(f *testing.F) {
	for _, seed := range []string{"", "text/event-stream", "text/*;q=0, */*", "*/*;q=", `a/b;x="\",;q=2"`, "text/event-stream;q=0.5;q=1", ";;,,"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, accept string) {
		ok, err := acceptsEventStream([]string{accept})
		if err != nil && (ok || !strings.Contains(strings.ToLower(accept), "q")) {
			t.Fatalf("acceptsEventStream(%q) = %t, %v; an error must come from a q parameter, and refuse", accept, ok, err)
		}
		if err == nil && namesEventStream([]string{accept}) && !ok {
			t.Fatalf("Accept %q names text/event-stream but does not accept it", accept)
		}
	})
}
