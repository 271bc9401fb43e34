package main

// Strict JSON: the rules under which a JSON text from outside (a publish body, a token's
// claims) has one reading only, whichever decoder reads it. encoding/json takes the last of
// two equal keys and matches a key to a field in any case, with Unicode's simple folding
// ("ſ" is "s"); a validator upstream may take the first key, or match exactly, and then the
// same bytes say one thing to it and another to this server.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
)

// jsonFields names the members of a JSON object that the server reads, each with what it
// must hold. A member not named here is opaque: only its keys' uniqueness is checked.
type jsonFields map[string]jsonField

// jsonField is what one member the server reads must hold.
type jsonField struct {
	number bool       // a JSON number or null, never a string, which encoding/json takes for a json.Number
	fields jsonFields // the members read inside it, when it is an object
}

// strictJSONError is a rule a JSON text breaks. key is the member name as the text writes
// it, empty when reason names only the server's own fields or the text as a whole.
type strictJSONError struct {
	key    string
	reason string
}

// Error says which rule the text breaks, quoting at most 64 characters of the key.
func (e *strictJSONError) Error() string {
	if e.key == "" {
		return e.reason
	}
	return fmt.Sprintf("the key %.64q %s", e.key, e.reason)
}

// withoutKey says which rule the text breaks without quoting the input: for a token, whose
// contents an answer never repeats.
func (e *strictJSONError) withoutKey() string {
	if e.key == "" {
		return e.reason
	}
	return "a key " + e.reason
}

// jsonLevel is one object or array open while checkStrictJSON walks a text.
type jsonLevel struct {
	object bool
	fields jsonFields          // the members the server reads here, if an object
	keys   map[string]struct{} // the keys seen so far, if an object
}

// checkStrictJSON returns nil if text is one JSON object in UTF-8 in which no object, at any
// depth, holds a key twice (as decoded: "\u0074opic" is "topic") or a key that differs only
// in case from a name of fields at its level, and in which every field that fields marks as
// a number is one. Otherwise it returns the first rule broken. It walks the tokens once,
// without a limit on depth of its own: a caller reads the text with encoding/json too,
// which refuses more than 10000 levels.
func checkStrictJSON(text []byte, fields jsonFields) *strictJSONError {
	if !utf8.Valid(text) {
		return &strictJSONError{reason: "not valid UTF-8"}
	}
	dec := json.NewDecoder(bytes.NewReader(text))
	dec.UseNumber() // a number is only a token here: no float64 to overflow
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return &strictJSONError{reason: "not a JSON object"}
	}
	open := []jsonLevel{{object: true, fields: fields}}
	for len(open) > 0 {
		tok, err := dec.Token()
		if err != nil {
			return &strictJSONError{reason: "not JSON: " + err.Error()}
		}
		if tok == json.Delim('}') || tok == json.Delim(']') {
			open = open[:len(open)-1]
			continue
		}
		var field jsonField
		if level := &open[len(open)-1]; level.object {
			key, _ := tok.(string) // the decoder returns a key here or fails
			if refused := level.take(key); refused != nil {
				return refused
			}
			field = level.fields[key]
			if tok, err = dec.Token(); err != nil {
				return &strictJSONError{reason: "not JSON: " + err.Error()}
			}
			if _, isNumber := tok.(json.Number); field.number && !isNumber && tok != nil {
				return &strictJSONError{reason: fmt.Sprintf("%q is %s, not a number", key, jsonKind(tok))}
			}
		}
		switch tok {
		case json.Delim('{'):
			open = append(open, jsonLevel{object: true, fields: field.fields})
		case json.Delim('['):
			open = append(open, jsonLevel{})
		}
	}
	if _, err := dec.Token(); err != io.EOF {
		return &strictJSONError{reason: "more than one JSON value"}
	}
	return nil
}

// take records key as a member of the object l, or says why the object may not hold it:
// it is there already, or it is one of l's fields in another case.
func (l *jsonLevel) take(key string) *strictJSONError {
	if _, seen := l.keys[key]; seen {
		return &strictJSONError{key: key, reason: "appears twice in one object"}
	}
	if _, exact := l.fields[key]; !exact {
		for name := range l.fields {
			if strings.EqualFold(key, name) {
				return &strictJSONError{key: key, reason: fmt.Sprintf("differs from %q only in case", name)}
			}
		}
	}
	if l.keys == nil {
		l.keys = make(map[string]struct{})
	}
	l.keys[key] = struct{}{}
	return nil
}

// jsonKind names the kind of JSON value that tok, a token other than a number, begins.
func jsonKind(tok json.Token) string {
	switch tok {
	case json.Delim('{'):
		return "an object"
	case json.Delim('['):
		return "an array"
	}
	if _, ok := tok.(bool); ok {
		return "a boolean"
	}
	return "a string"
}
