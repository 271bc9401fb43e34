package main

import (
	"bytes"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"unicode/utf8"
)

// maxPublishBody is the largest body POST /publish reads: the JSON of one event.
const maxPublishBody = 64 << 10

// maxEventName is the longest event type a publisher may name, in bytes.
const maxEventName = 64

// reservedEvents are the event types a publisher may not use: reset is the hub's own word to
// a client whose history is gone, and open and error are events an EventSource fires by
// itself, so an event of that name would reach the page's connection handlers.
var reservedEvents = []string{"reset", "open", "error", "auth-expired"}

// publishRequest is the body of POST /publish: {"topic":"orders/42","data":...,"event":"shipped"}.
type publishRequest struct {
	Topic string          `json:"topic"`
	Data  json.RawMessage `json:"data"`
	Event string          `json:"event"`
}

// publishFields are the members of a publish body, as publishRequest's json tags name them:
// a key in another case is refused, since encoding/json would read it as the field.
var publishFields = jsonFields{"topic": {}, "data": {}, "event": {}}

// publishAnswer is the answer to a publish: the SSE id the event got.
type publishAnswer struct {
	ID string `json:"id"`
}

// handlePublish serves POST /publish on the admin listener: it checks the body, publishes
// the event to b and answers with its id once b has stored it. With a token or a JWT key
// (auth not nil), the request must carry "Authorization: Bearer" with the token, compared
// in constant time, or a JWT whose publish claim covers the topic. An Idempotency-Key (or
// Nats-Msg-Id) header makes retries of one publish land once, where b keeps such keys.
// Two Authorization headers are refused whether or not one is needed: a proxy in front may
// have checked the other. While b cannot store events the answer is 503 with Retry-After.
func handlePublish(b *broker, token string, auth *authorizer) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.Header.Values("Authorization")) > 1 {
			http.Error(w, "400 bad request: more than one Authorization header: send one", http.StatusBadRequest)
			return
		}
		var claims *sseClaims // a publisher's JWT, checked against the topic once it is read
		if token != "" || auth != nil {
			if token == "" || !hasBearer(r.Header.Get("Authorization"), token) {
				if auth == nil {
					w.Header().Set("WWW-Authenticate", `Bearer realm="publish"`)
					http.Error(w, "401 unauthorized: publishing needs the -publish-token as Authorization: Bearer", http.StatusUnauthorized)
					return
				}
				var refused *authError
				if claims, refused = auth.verifyPublisher(r); refused != nil {
					refuseAuth(w, refused)
					return
				}
			}
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxPublishBody))
		if err != nil {
			if errors.As(err, new(*http.MaxBytesError)) {
				http.Error(w, fmt.Sprintf("413 content too large: a publish body is at most %d bytes", maxPublishBody), http.StatusRequestEntityTooLarge)
				return
			}
			http.Error(w, "400 bad request: reading the body: "+err.Error(), http.StatusBadRequest)
			return
		}
		topic, event, data, err := parsePublish(body)
		if err != nil {
			http.Error(w, "400 bad request: "+err.Error(), http.StatusBadRequest)
			return
		}
		if claims != nil {
			if refused := auth.authorizePublish(claims, topic); refused != nil {
				refuseAuth(w, refused)
				return
			}
		}
		key, err := idempotencyKey(r.Header)
		if err != nil {
			http.Error(w, "400 bad request: "+err.Error(), http.StatusBadRequest)
			return
		}
		p := publication{topics: []string{topic}, event: event, data: data, key: key, publisher: publisherOf(token, claims),
			private: auth.isPrivate(topic), ownDialect: true}
		id, err := b.Publish(r.Context(), p)
		if errors.Is(err, errKeyReused) {
			http.Error(w, "422 unprocessable content: "+err.Error(), http.StatusUnprocessableEntity)
			return
		}
		if errors.Is(err, errReservedTopic) {
			http.Error(w, "400 bad request: "+err.Error()+": it is the hub's own, for its subscription updates", http.StatusBadRequest)
			return
		}
		if err != nil {
			w.Header().Set("Retry-After", strconv.Itoa(publishRetryAfter))
			http.Error(w, "503 service unavailable: the event was not acknowledged as stored ("+err.Error()+"): retry later, with the same Idempotency-Key", http.StatusServiceUnavailable)
			return
		}
		answer, _ := json.Marshal(publishAnswer{ID: id})
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		w.Write(append(answer, '\n'))
	})
}

// publisherOf names who publishes, so that idempotency keys are scoped to their publisher:
// a JWT's issuer and subject, or the -publish-token's holder, or "" for a publisher on
// loopback with no credential.
func publisherOf(token string, claims *sseClaims) string {
	switch {
	case claims != nil:
		return "jwt\x00" + claims.Issuer + "\x00" + claims.Subject
	case token != "":
		return "token"
	}
	return ""
}

// publishRetryAfter is the Retry-After, in seconds, of a publish that could not be stored.
const publishRetryAfter = 2

// maxIdempotencyKey is the longest idempotency key a publish may carry, in bytes.
const maxIdempotencyKey = 128

// idempotencyKey returns the publish's idempotency key: the Idempotency-Key header, or
// Nats-Msg-Id as NATS clients name it, empty if neither is sent. Both with different values,
// or a key that is long or not printable ASCII, is an error that says so.
func idempotencyKey(header http.Header) (string, error) {
	key, msgID := header.Get("Idempotency-Key"), header.Get("Nats-Msg-Id")
	if key != "" && msgID != "" && key != msgID {
		return "", errors.New("the Idempotency-Key and Nats-Msg-Id headers differ: send one of them")
	}
	if key == "" {
		key = msgID
	}
	if len(key) > maxIdempotencyKey {
		return "", fmt.Errorf("the idempotency key is %d bytes long, over %d", len(key), maxIdempotencyKey)
	}
	for i := 0; i < len(key); i++ {
		if key[i] <= ' ' || key[i] > '~' {
			return "", fmt.Errorf("the idempotency key holds %q at byte %d: only printable ASCII without spaces is allowed", key[i], i)
		}
	}
	return key, nil
}

// hasBearer reports whether an Authorization header carries token as a bearer token,
// comparing in constant time so that the answer's timing tells nothing of the token.
func hasBearer(authorization, token string) bool {
	scheme, value, ok := strings.Cut(authorization, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(strings.TrimSpace(value)), []byte(token)) == 1
}

// parsePublish checks a publish body and returns its topic, event type and the data to
// send: a JSON string as it is, any other JSON value as compact JSON. The body must read one
// way only (checkStrictJSON): no key twice, in data too, and each field in its own case.
// Each error says which rule the body broke.
func parsePublish(body []byte) (topic, event string, data []byte, err error) {
	if !utf8.Valid(body) {
		return "", "", nil, errors.New("the body is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var req publishRequest
	if err := dec.Decode(&req); err != nil {
		return "", "", nil, fmt.Errorf(`the body is not a JSON object {"topic","data","event"}: %w`, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return "", "", nil, errors.New("the body holds more than one JSON value")
	}
	if refused := checkStrictJSON(body, publishFields); refused != nil {
		return "", "", nil, refused
	}
	if err := checkTopic(req.Topic); err != nil {
		return "", "", nil, fmt.Errorf("topic: %w", err)
	}
	if err := checkEventName(req.Event); err != nil {
		return "", "", nil, fmt.Errorf("event: %w", err)
	}
	if req.Data == nil {
		return "", "", nil, errors.New(`data is missing: give any JSON value, "data":null included`)
	}
	if req.Data[0] == '"' {
		var text string
		if err := json.Unmarshal(req.Data, &text); err != nil {
			return "", "", nil, fmt.Errorf("data: %w", err)
		}
		return req.Topic, req.Event, []byte(text), nil
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, req.Data); err != nil {
		return "", "", nil, fmt.Errorf("data: %w", err)
	}
	return req.Topic, req.Event, compact.Bytes(), nil
}

// checkEventName says which rule an event type breaks, or returns nil: empty (a message),
// or up to maxEventName bytes of the topic alphabet, and none of the reserved names in any
// case, since a client or a validator upstream may compare event types without case.
func checkEventName(name string) error {
	if name == "" {
		return nil
	}
	if err := checkName("an event type", name, maxEventName); err != nil {
		return err
	}
	return checkReservedEvent(name)
}

// checkReservedEvent refuses the event types that EventSource or this hub sends by itself,
// in any case, so that no publisher's event passes for one of them.
func checkReservedEvent(name string) error {
	for _, reserved := range reservedEvents {
		switch {
		case name == reserved:
			return fmt.Errorf("%q is reserved: EventSource or this server sends events of that type", name)
		case strings.EqualFold(name, reserved):
			return fmt.Errorf("%q is reserved: it is %q in another case, which EventSource or this server sends", name, reserved)
		}
	}
	return nil
}

// isLoopback reports whether addr, a listen address such as 127.0.0.1:3001, can be reached
// from this machine only. A host name other than localhost, or an empty host (every
// interface), is not.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
