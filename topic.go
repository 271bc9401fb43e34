package main

// The rules of a topic name, shared by subscribers, publishers and the JetStream subjects
// that topics map to.

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Limits of a subscription and of a topic name.
const (
	maxTopics      = 32  // topics one stream may carry
	maxTopicLength = 128 // bytes in a topic name
)

// topicAlphabet lists the bytes a topic name may hold besides ASCII letters and digits.
const topicAlphabet = "._:/-"

// checkTopic says which rule a topic name breaks, or returns nil: 1 to maxTopicLength bytes
// of ASCII letters, digits and the bytes of topicAlphabet.
func checkTopic(name string) error {
	if name == "" {
		return errors.New("a topic name is empty")
	}
	return checkName("a topic name", name, maxTopicLength)
}

// checkName says which rule name (what it is, with its article) breaks, or returns nil: at
// most maxLength bytes of ASCII letters, digits and the bytes of topicAlphabet, which need no
// quoting in a URL, an SSE field or a log line.
func checkName(what, name string, maxLength int) error {
	if len(name) > maxLength {
		return fmt.Errorf("%s is %d bytes long, over %d", what, len(name), maxLength)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; !isAlphanumeric(c) && strings.IndexByte(topicAlphabet, c) < 0 {
			return fmt.Errorf("%s holds %q at byte %d: only A-Z a-z 0-9 and %s are allowed", what, c, i, topicAlphabet)
		}
	}
	return nil
}

// parseTopics checks the topics a request names and returns them without duplicates, as
// copies: under the adaptor the request's strings point into buffers that fasthttp reuses.
func parseTopics(names []string) ([]string, error) {
	topics := make([]string, 0, len(names))
	for _, name := range names {
		if err := checkTopic(name); err != nil {
			return nil, err
		}
		if !slices.Contains(topics, name) {
			if len(topics) == maxTopics {
				return nil, fmt.Errorf("a stream carries at most %d topics", maxTopics)
			}
			topics = append(topics, strings.Clone(name))
		}
	}
	return topics, nil
}

// isAlphanumeric reports whether c is an ASCII letter or digit.
func isAlphanumeric(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}
