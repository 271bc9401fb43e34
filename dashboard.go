package main

import (
	"context"
	"math/rand/v2"
	"strconv"
	"time"
)

// DashBoard is one snapshot pushed to a client; it encodes as {"User":N}, as in the article.
type DashBoard struct {
	User uint
}

// AppendJSON appends d as JSON to dst. It writes the same bytes as json.Marshal without
// reflection or allocation, because it runs once per event on every stream.
func (d *DashBoard) AppendJSON(dst []byte) []byte {
	dst = append(dst, `{"User":`...)
	dst = strconv.AppendUint(dst, uint64(d.User), 10)
	return append(dst, '}')
}

// Client is one connected stream: its name (the remote address) and the buffered
// channel its producer fills.
type Client struct {
	name   string
	events chan DashBoard
}

// newClient returns a Client whose channel holds up to buffer events, so a short stall in
// writing does not stop the producer.
func newClient(name string, buffer int) *Client {
	return &Client{name: name, events: make(chan DashBoard, buffer)}
}

// maxUsers bounds the random walk that produce follows, so the page's chart has a fixed scale.
const maxUsers = 1000

// produce sends a new DashBoard into events every interval until ctx is cancelled. Every
// send also waits on ctx, so a producer whose client has gone never blocks forever.
func produce(ctx context.Context, events chan<- DashBoard, interval time.Duration) {
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	users := rand.UintN(maxUsers + 1)
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		users = nextUsers(users)
		select {
		case events <- DashBoard{User: users}:
		case <-ctx.Done():
			return
		}
	}
}

// nextUsers moves a random walk by up to 25 in either direction, kept within [0, maxUsers],
// so consecutive values look like a live metric rather than noise.
func nextUsers(users uint) uint {
	step := rand.IntN(51) - 25
	next := int(users) + step
	return uint(min(max(next, 0), maxUsers))
}

// publishDemo publishes the values of one producer to topic until ctx ends: one random walk
// for every subscriber, so every page on the topic shows the same numbers. private says
// whether the topic needs a token. A value the broker cannot store (NATS unreachable) is
// skipped: the next one is published anew.
func publishDemo(ctx context.Context, b *broker, topic string, private bool, interval time.Duration) {
	values := make(chan DashBoard, 1)
	go produce(ctx, values, interval)
	var data []byte
	for {
		select {
		case <-ctx.Done():
			return
		case v := <-values:
			data = v.AppendJSON(data[:0])
			_, _ = b.Publish(ctx, publication{topics: []string{topic}, data: data, private: private, ownDialect: true})
		}
	}
}
