//go:build !linux

package main

import (
	"log/slog"
	"net/http"
)

// closeWatcher watches nothing where there is no epoll: a stream notices that its client
// left on its next write.
type closeWatcher struct{}

// closeWatch is a stream's entry with the watcher; there is none here.
type closeWatch struct{}

// closed returns nil, a channel that never fires.
func (*closeWatch) closed() <-chan struct{} { return nil }

// newCloseWatcher returns the watcher that watches nothing.
func newCloseWatcher(*slog.Logger) *closeWatcher { return &closeWatcher{} }

// watch returns nil: no stream is watched.
func (*closeWatcher) watch(*http.Request) *closeWatch { return nil }

// unwatch does nothing.
func (*closeWatcher) unwatch(*closeWatch) {}

// poll does nothing.
func (*closeWatcher) poll() {}

// ending returns 0: no stream is told that its client left.
func (*closeWatcher) ending() int64 { return 0 }

// close does nothing.
func (*closeWatcher) close() {}
