package main

// The SSE wire format (WHATWG HTML, "Server-sent events"): how an event, a comment and a
// reconnect delay are framed, and how a request says where to resume and what it accepts.
// Nothing here holds state; the stream and the handler call it.

import (
	"bytes"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// keepaliveFrame is an SSE comment: clients ignore it, but writing it reveals a vanished client.
var keepaliveFrame = []byte(": keepalive\n\n")

// appendEvent appends one SSE event with the given id and data to dst. Every line break in
// data (CRLF, CR or LF) starts a new data: line, so no data can split or merge events.
func appendEvent(dst []byte, id uint64, data []byte) []byte {
	dst = append(dst, "id: "...)
	dst = strconv.AppendUint(dst, id, 10)
	dst = append(dst, '\n')
	return appendData(dst, data)
}

// appendNamedEvent appends one SSE event with the given id, type and data to dst: no
// event: line when event is empty, so that onmessage receives it. id and event must be one
// line each; data is split into lines as appendEvent does.
func appendNamedEvent(dst, id []byte, event string, data []byte) []byte {
	return appendData(appendFields(dst, id, event, ""), data)
}

// appendFields appends the fields of an event that come before its data: id:, then event:
// and retry: unless empty. Each must be one line; retry must be digits.
func appendFields(dst, id []byte, event, retry string) []byte {
	dst = append(dst, "id: "...)
	dst = append(dst, id...)
	dst = append(dst, '\n')
	if event != "" {
		dst = append(dst, "event: "...)
		dst = append(dst, event...)
		dst = append(dst, '\n')
	}
	if retry != "" {
		dst = append(dst, "retry: "...)
		dst = append(dst, retry...)
		dst = append(dst, '\n')
	}
	return dst
}

// appendData appends data as data: lines and the blank line that ends the event. Every line
// break (CRLF, CR or LF) starts a new line, which a client joins back with LF.
func appendData(dst, data []byte) []byte {
	for {
		i := bytes.IndexAny(data, "\r\n")
		if i < 0 {
			break
		}
		dst = append(dst, "data: "...)
		dst = append(dst, data[:i]...)
		dst = append(dst, '\n')
		if data[i] == '\r' && i+1 < len(data) && data[i+1] == '\n' {
			i++
		}
		data = data[i+1:]
	}
	dst = append(dst, "data: "...)
	dst = append(dst, data...)
	return append(dst, "\n\n"...)
}

// appendRetry appends a frame that sets the client's reconnect delay, with a comment that
// says why; comment must be one line.
func appendRetry(dst []byte, retry time.Duration, comment string) []byte {
	dst = append(dst, "retry: "...)
	dst = strconv.AppendInt(dst, retry.Milliseconds(), 10)
	dst = append(dst, "\n: "...)
	dst = append(dst, comment...)
	return append(dst, "\n\n"...)
}

// maxLastEventID is the largest Last-Event-ID a stream goes on from. No stream sends 2^63
// events, so the ids that follow it never wrap around.
const maxLastEventID = 1<<63 - 1

// parseLastEventID returns the id a reconnecting client last saw. Anything but a decimal
// number up to maxLastEventID counts as no id, and the stream starts at 1.
func parseLastEventID(value string) (id uint64, ok bool) {
	id, err := strconv.ParseUint(value, 10, 64)
	if err != nil || id > maxLastEventID {
		return 0, false
	}
	return id, true
}

// resumeID returns the id a request asks to resume after: its Last-Event-ID header, which
// browsers send on their own reconnects, or else the lastEventID query parameter (Mercure's
// convention), which a script that opens a new EventSource can set.
func resumeID(r *http.Request) (id uint64, ok bool) {
	if value := r.Header.Get("Last-Event-ID"); value != "" {
		return parseLastEventID(value)
	}
	if r.URL.RawQuery == "" {
		return 0, false
	}
	return parseLastEventID(r.URL.Query().Get("lastEventID"))
}

// lastEventID returns the id a reconnecting client of a topic stream last saw, as it sent
// it: the Last-Event-ID header, or else the lastEventID query parameter. The copy outlives
// the request's buffers.
func lastEventID(r *http.Request) (string, bool) {
	if value := r.Header.Get("Last-Event-ID"); value != "" {
		return strings.Clone(value), true
	}
	if values, ok := r.URL.Query()["lastEventID"]; ok && values[0] != "" {
		return strings.Clone(values[0]), true
	}
	return "", false
}

// mediaRange is one element of an Accept header (RFC 9110, section 12.5.1): a media type,
// a type/* or */* range, in lower case, with its weight. An element that is not a
// type/subtype pair has an empty typ and matches nothing.
type mediaRange struct {
	typ, subtype string
	q            float64
}

// errBadWeight is the answer to an Accept header with a q parameter that is empty, repeated
// or not a number from 0 to 1 with at most three decimals (RFC 9110, section 12.4.2).
var errBadWeight = errors.New("Accept has a q value that is not a number from 0 to 1, or has it twice")

// parseAccept parses Accept header values into their media ranges, skipping empty list
// elements. A range that is not a type/subtype pair, or has a parameter without a value, is
// kept but matches nothing; a bad weight anywhere is errBadWeight, so that every malformed
// q gets the same answer. Parameters other than q, and anything after q, are ignored: what
// a stream is sent does not depend on them.
func parseAccept(values []string) ([]mediaRange, error) {
	var ranges []mediaRange
	for _, value := range values {
		for _, element := range splitUnquoted(value, ',') {
			params := splitUnquoted(element, ';')
			if strings.TrimSpace(params[0]) == "" && len(params) == 1 {
				continue
			}
			r := mediaRange{q: 1}
			typ, subtype, ok := strings.Cut(strings.ToLower(strings.TrimSpace(params[0])), "/")
			if ok && isToken(typ) && isToken(subtype) && (typ != "*" || subtype == "*") {
				r.typ, r.subtype = typ, subtype
			}
			weighted := false
			for _, param := range params[1:] {
				name, value, hasValue := strings.Cut(strings.TrimSpace(param), "=")
				if !strings.EqualFold(name, "q") {
					if !hasValue || !isToken(name) {
						r.typ = ""
					}
					continue
				}
				weight, ok := parseQValue(value)
				if !ok || weighted {
					return nil, errBadWeight
				}
				r.q, weighted = weight, true
			}
			ranges = append(ranges, r)
		}
	}
	return ranges, nil
}

// splitUnquoted splits s at every sep outside a quoted string, as HTTP's list and
// parameter syntax does (RFC 9110, section 5.6).
func splitUnquoted(s string, sep byte) []string {
	var parts []string
	quoted, escaped, from := false, false, 0
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case escaped:
			escaped = false
		case quoted && c == '\\':
			escaped = true
		case c == '"':
			quoted = !quoted
		case !quoted && c == sep:
			parts = append(parts, s[from:i])
			from = i + 1
		}
	}
	return append(parts, s[from:])
}

// isToken reports whether s is an HTTP token (RFC 9110, section 5.6.2).
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}

// eventStreamRange returns the range of ranges that decides on text/event-stream: the most
// specific one that matches it (text/event-stream, then text/*, then */*; the first of
// equals), as RFC 9110, section 12.5.1 says, and how specific it is, 0 if none matches.
func eventStreamRange(ranges []mediaRange) (mediaRange, int) {
	var best mediaRange
	bestRank := 0
	for _, r := range ranges {
		rank := 0
		switch {
		case r.typ == "text" && r.subtype == "event-stream":
			rank = 3
		case r.typ == "text" && r.subtype == "*":
			rank = 2
		case r.typ == "*" && r.subtype == "*":
			rank = 1
		}
		if rank > bestRank {
			best, bestRank = r, rank
		}
	}
	return best, bestRank
}

// namesEventStream reports whether a request's Accept headers name text/event-stream itself,
// as EventSource and SSE client libraries do, rather than allow it by a wildcard or by
// sending no Accept header at all.
func namesEventStream(accept []string) bool {
	ranges, err := parseAccept(accept)
	if err != nil {
		return false
	}
	r, rank := eventStreamRange(ranges)
	return rank == 3 && r.q > 0
}

// acceptsEventStream reports whether a request's Accept headers allow text/event-stream.
// No Accept header, or an empty one, means anything goes, as for curl. Otherwise the most
// specific range that matches decides, whatever its place in the list: text/*;q=0 refuses
// it beside */*, and text/event-stream;q=0 beside any wildcard. A malformed q is an error.
func acceptsEventStream(accept []string) (bool, error) {
	ranges, err := parseAccept(accept)
	if err != nil {
		return false, err
	}
	if len(ranges) == 0 {
		return true, nil
	}
	r, rank := eventStreamRange(ranges)
	return rank > 0 && r.q > 0, nil
}

// parseQValue parses a weight as RFC 9110 writes it: 0 or 1, with up to three decimals
// after a point, and never more than 1.
func parseQValue(q string) (float64, bool) {
	whole, decimals, _ := strings.Cut(q, ".")
	if whole != "0" && whole != "1" || len(decimals) > 3 || strings.Trim(decimals, "0123456789") != "" {
		return 0, false
	}
	if whole == "1" {
		return 1, strings.Trim(decimals, "0") == ""
	}
	weight, err := strconv.ParseFloat("0."+decimals, 64)
	return weight, err == nil
}
