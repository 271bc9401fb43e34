package main

import (
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// closeWatcher tells streams that their clients have closed their connections, from one
// epoll set that holds every stream's socket, so that a stream with nothing to write ends
// at once instead of at its next write. A socket is watched for EPOLLRDHUP, which a FIN or
// a reset raises: a client that only shuts down its sending side counts as gone too, which
// costs nothing, since HTTP clients do not half-close and nginx closes the whole upstream
// connection. The set is made with the first stream and waited on through the runtime's
// poller, so it costs one parked goroutine and no thread.
type closeWatcher struct {
	logger *slog.Logger
	start  sync.Once
	set    *os.File        // the epoll set; nil until the first watch, or if it could not be made
	raw    syscall.RawConn // set's file descriptor, held open while in use
	live   atomic.Bool     // the set is made: requests that found no place may poll it
	shut   atomic.Bool     // close has been called: the set's end is no failure

	// mu is held from each epoll_wait until the events it returned are handed out, so that
	// whoever holds it knows every close the kernel has reported.
	mu        sync.Mutex
	events    [64]unix.EpollEvent
	nextToken uint64
	watched   map[uint64]*closeWatch // by token, until told or unwatched
	told      atomic.Int64           // streams told their client left that have not ended yet
}

// closeWatch is one stream's entry in the watcher's set. Its token, not the socket's file
// descriptor number, names it there: the kernel gives a closed descriptor's number to the
// next socket it opens.
type closeWatch struct {
	token uint64
	conn  syscall.RawConn // the stream's socket
	gone  chan struct{}   // closed when the client closes the connection
}

// closed returns a channel that closes when the client closes its connection, or nil, which
// never fires, when w is nil: a stream whose connection nobody watches.
func (w *closeWatch) closed() <-chan struct{} {
	if w == nil {
		return nil
	}
	return w.gone
}

// newCloseWatcher returns a watcher that makes its epoll set with the first stream and logs
// to logger if it cannot.
func newCloseWatcher(logger *slog.Logger) *closeWatcher {
	return &closeWatcher{logger: logger, watched: make(map[uint64]*closeWatch)}
}

// open makes the epoll set and starts the goroutine that waits on it. Without a set, streams
// notice a gone client on their next write, as they would with no watcher.
func (c *closeWatcher) open() {
	set, err := newEpollSet()
	if err != nil {
		c.logger.Warn("streams notice a client that closed its connection only on their next write", "error", err.Error())
		return
	}
	raw, err := set.SyscallConn()
	if err != nil {
		set.Close()
		return
	}
	c.set, c.raw = set, raw
	c.live.Store(true)
	go c.wait()
}

// newEpollSet returns a new epoll set as a file in non-blocking mode, which the runtime's
// poller then waits on: an epoll set is readable while it holds events.
func newEpollSet() (*os.File, error) {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("epoll set non-blocking: %w", err)
	}
	return os.NewFile(uintptr(fd), "epoll"), nil
}

// wait hands out the set's events as they come, until close.
func (c *closeWatcher) wait() {
	err := c.raw.Read(func(fd uintptr) bool {
		c.handOut(int(fd))
		return false // wait for the next events
	})
	if !c.shut.Load() {
		c.logger.Warn("streams notice a client that closed its connection only on their next write, or when a request finds no place", "error", err)
	}
}

// poll hands out the events the set holds now, for a request that found no place: the
// kernel may have reported closes that the waiting goroutine has not been scheduled to see.
func (c *closeWatcher) poll() {
	if !c.live.Load() {
		return // nothing watched yet
	}
	_ = c.raw.Control(func(fd uintptr) { c.handOut(int(fd)) }) // closed: nothing is watched
}

// handOut takes every event the epoll set fd holds and closes each stream's gone channel.
func (c *closeWatcher) handOut(fd int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		n, err := unix.EpollWait(fd, c.events[:], 0)
		if err == unix.EINTR {
			continue
		}
		for i := range max(n, 0) {
			ev := &c.events[i]
			token := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			if w, ok := c.watched[token]; ok {
				delete(c.watched, token)
				c.told.Add(1)
				close(w.gone)
			}
		}
		if n < len(c.events) {
			return
		}
	}
}

// ending returns how many streams have been told that their client left and have not yet
// given their place back.
func (c *closeWatcher) ending() int64 {
	return c.told.Load()
}

// watch adds the socket under r to the set, and returns the stream's entry, or nil when r's
// socket is not known: its context does not name its connection (net/http, whose request
// context ends when the client leaves), or the set is unavailable. Call it while the request
// is the server's, before the stream takes its connection over: the adaptor's context may be
// another request's after that.
func (c *closeWatcher) watch(r *http.Request) *closeWatch {
	conn := socketOf(r)
	if conn == nil {
		return nil
	}
	c.start.Do(c.open)
	if c.set == nil {
		return nil
	}
	w := &closeWatch{conn: conn, gone: make(chan struct{})}
	c.mu.Lock()
	c.nextToken++
	w.token = c.nextToken
	c.watched[w.token] = w
	c.mu.Unlock()
	// One event, then none until the entry is deleted: the state it reports lasts.
	ev := unix.EpollEvent{Events: unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: int32(uint32(w.token)), Pad: int32(uint32(w.token >> 32))}
	if err := c.control(conn, unix.EPOLL_CTL_ADD, &ev); err != nil {
		c.mu.Lock()
		delete(c.watched, w.token)
		c.mu.Unlock()
		return nil
	}
	return w
}

// unwatch removes a stream's entry from the set once the stream has given its place back,
// before its handler returns and the connection may serve another request. A connection
// already closed has left the set with its last descriptor, and its number may name another
// socket by now, so it is removed only while held open.
func (c *closeWatcher) unwatch(w *closeWatch) {
	if w == nil {
		return
	}
	_ = c.control(w.conn, unix.EPOLL_CTL_DEL, nil) // closed: already out of the set
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.watched[w.token]; ok {
		delete(c.watched, w.token)
		return
	}
	c.told.Add(-1)
}

// control runs epoll_ctl op on the set for conn's socket, with both held open meanwhile.
func (c *closeWatcher) control(conn syscall.RawConn, op int, ev *unix.EpollEvent) error {
	var opErr error
	err := c.raw.Control(func(set uintptr) {
		err := conn.Control(func(fd uintptr) {
			opErr = unix.EpollCtl(int(set), op, int(fd), ev)
		})
		if opErr == nil {
			opErr = err
		}
	})
	if err != nil {
		return err
	}
	return opErr
}

// close closes the set and ends its goroutine; streams are no longer watched after it.
func (c *closeWatcher) close() {
	c.shut.Store(true)
	c.start.Do(func() {}) // no set is made after close
	if c.set != nil {
		c.set.Close()
	}
}

// socketOf returns the socket under r, where r's context names its connection, as the
// adaptor's *fasthttp.RequestCtx does, unwrapped from the listener's trackedConn; nil
// otherwise.
func socketOf(r *http.Request) syscall.RawConn {
	conn, _ := connOf(r)
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return raw
}
