package main

// How a stream learns that its client has closed the connection while the stream has nothing
// to write. Under the adaptor the request's context ends only at shutdown, and a stream on a
// quiet topic writes only a keepalive now and then, so without a watch a client that left
// would hold its place among -max-clients until that write failed. closeWatcher
// (closewatch_linux.go) watches every stream's socket in one epoll set instead; elsewhere
// (closewatch_other.go) nothing is watched and a gone client shows on the next write.

import "time"

// goneWait bounds how long a request over a limit waits for the places of streams whose
// clients have left: long enough for those streams to be scheduled and end on a busy
// machine, short enough that a client that is refused in the end hardly notices.
const goneWait = 250 * time.Millisecond

// admitOnceGoneEnd tries admit again for a request that found no place, and reports whether
// it got one. It first hands out the closes that the kernel has reported and the watcher has
// not yet seen, then, while any stream whose client has left has yet to give its place back,
// tries again every millisecond for at most goneWait, so that no client is refused for a
// place that a gone client still holds. It is a function of its own so that ServeHTTP's
// stack frame, which every open stream keeps, stays small.
//
//go:noinline
func (h *sseHandler) admitOnceGoneEnd(admit func() bool) bool {
	deadline := time.Now().Add(goneWait)
	for {
		h.closes.poll()
		// Read before trying: a stream that ends in between gives its place back first.
		ending := h.closes.ending()
		if admit() {
			return true
		}
		if ending == 0 || time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
}
