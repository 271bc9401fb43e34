package main

// The memory a replay holds: thousands of clients resume from an old id at once over
// connections that take almost nothing, and the server must hold each replay a chunk at a
// time (maxReplayChunk), not whole, while the writes wait. Under the race detector the
// server process's memory is inflated many times, so the test runs without it: make test
// runs it on its own, as it does the delivery test.

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime/debug"
	"strings"
	"syscall"
	"testing"
	"time"
)

// raceDetector reports whether this test binary, and so the server processes it starts,
// runs under the race detector.
func raceDetector() bool {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, setting := range info.Settings {
		if setting.Key == "-race" {
			return setting.Value == "true"
		}
	}
	return false
}

// smallReceiveBuffer is the receive buffer of a client that reads nothing: the kernel takes
// a few KiB of each replay, and the rest waits in the server.
const smallReceiveBuffer = 4096

// dialStalledRequest is dialStalled (faults_test.go) for any request and thousands of
// connections: it connects to addr with a receive buffer of smallReceiveBuffer bytes, set
// before the connection is made so that the window the server sees is small from the start,
// sends request and returns the connection, or an error instead of failing the test. The
// caller never reads the answer, and closes the connection.
func dialStalledRequest(addr, request string) (net.Conn, error) {
	dialer := net.Dialer{
		Timeout: 10 * time.Second,
		Control: func(_, _ string, c syscall.RawConn) error {
			var setErr error
			err := c.Control(func(fd uintptr) {
				setErr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, smallReceiveBuffer)
			})
			return errors.Join(err, setErr)
		},
	}
	conn, err := dialer.Dial("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", addr, err)
	}
	conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write([]byte(request)); err != nil {
		conn.Close()
		return nil, fmt.Errorf("send the request to %s: %w", addr, err)
	}
	return conn, nil
}

func TestNATS_ThousandsOfSlowClientsResumingFromAnOldIdHoldBoundedMemory(t *testing.T) {
	skipShort(t, "a NATS server, a server process and 2,000 connections")
	if raceDetector() {
		t.Skip("the race detector inflates the server's memory many times: make test runs this test without it")
	}
	const (
		clients   = 2000
		events    = 2000
		eventSize = 1 << 10
		perClient = 384 << 10 // bytes of resident memory a stalled replay may add: the live heap and the garbage the collector lets grow beside it (a whole replay is 2 MiB)
		livePer   = 128 << 10 // bytes of live heap a stalled replay may hold: a chunk and a write
		batch     = 100       // clients connected at once
		// The server's metrics are read this often while it works: every 10 ms, as
		// eventually polls, would cost a race-enabled server much of its time.
		scrapeEvery = 100 * time.Millisecond
	)
	node := runNATSServer(t)
	// No stalled client may be dropped before the memory is read, which under the race
	// detector is a minute after the first stalled: neither by -write-timeout nor by
	// -dead-client-timeout, with which the kernel drops a client whose window stays shut.
	// -send-buffer 16 KiB: the kernel takes less than a chunk of each replay, so each stream
	// stalls in its first chunk, and the server reads 2,000 chunks from NATS, not twice that.
	a := startProcess(t, "-nats", node.url(), "-write-timeout", "5m", "-dead-client-timeout", "10m",
		"-send-buffer", "16384", "-max-clients", "3000", "-history", "100000")
	js := connectJS(t, node.url())
	payload := strings.Repeat("x", eventSize-5)
	first := publishEvent(t, a.adminURL, "t", "", "0000 "+payload)
	last := first
	for i := 1; i < events; i++ {
		last = publishStraight(t, js, idEpoch(first), "t", fmt.Sprintf("%04d %s", i, payload))
	}
	eventually(t, 30*time.Second, "the server's consumer has every event", func() bool {
		return metric(t, a.adminURL, "sse_nats_delivered_sequence") == float64(idSeq(t, last))
	})
	baseline, err := rssKB(a.cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}

	// Each client resumes after the first event: a replay of the other 1,999, about 2 MiB. They
	// come in batches, each once the one before has had its replays: all at once, the last
	// would wait for a turn longer than resumeTimeout, and be told to come back instead.
	request := "GET /sse?topic=t HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\nLast-Event-ID: " + first + "\r\n\r\n"
	addr := strings.TrimPrefix(a.url, "http://")
	start := time.Now()
	conns := make([]net.Conn, 0, clients)
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	var s map[string]float64
	replaysSettled := func(open int) bool {
		s = scrape(t, a.adminURL)
		if ended := endedReasons(s); len(ended) > 0 {
			t.Fatalf("streams ended while their clients waited, by reason: %v", ended)
		}
		return s["sse_streams_open"] == float64(open) && s["sse_nats_replays_total"] >= float64(open) &&
			s["sse_nats_replays_queued"] == 0 && s["sse_nats_replays_in_flight"] == 0
	}
	for len(conns) < clients {
		for range batch {
			conn, err := dialStalledRequest(addr, request)
			if err != nil {
				t.Fatalf("client %d of %d: %v", len(conns)+1, clients, err)
			}
			conns = append(conns, conn)
		}
		eventuallyEvery(t, 120*time.Second, scrapeEvery, fmt.Sprintf("%d clients admitted and their replays under way", len(conns)), func() bool {
			return replaysSettled(len(conns))
		})
	}
	// Every stream now waits on a write to a client that reads nothing, once no stream has
	// asked for a chunk for a second.
	replays, still := -1.0, time.Now()
	eventuallyEvery(t, 120*time.Second, scrapeEvery, "no more replays asked for", func() bool {
		if !replaysSettled(clients) || s["sse_nats_replays_total"] != replays {
			replays, still = s["sse_nats_replays_total"], time.Now()
			return false
		}
		return time.Since(still) >= time.Second
	})
	admitted := time.Since(start)
	// The peak of a few samples a second apart, in case the last writes were still settling.
	peak := 0
	for range 5 {
		kb, err := rssKB(a.cmd.Process.Pid)
		if err != nil {
			t.Fatal(err)
		}
		peak = max(peak, kb)
		time.Sleep(200 * time.Millisecond)
	}
	if open := metric(t, a.adminURL, "sse_streams_open"); open != clients {
		t.Fatalf("%v streams open after the memory was read, want %d: some ended before -write-timeout", open, clients)
	}
	growth := peak - baseline
	// What the stalled streams hold live: the heap after a collection that the heap profile
	// forces (gc=1), without the garbage that the resident memory still counts.
	resp, err := (&http.Client{Timeout: 60 * time.Second}).Get(a.adminURL + "/debug/pprof/heap?gc=1")
	if err != nil {
		t.Fatalf("force a collection in the server: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	live := metric(t, a.adminURL, "go_memstats_heap_alloc_bytes") / 1024
	t.Logf("%d clients resuming %d events of %d B back, reading nothing (SO_RCVBUF %d), %d at a time: all stalled after %s; "+
		"server RSS %d KiB before, %d KiB at the peak, %d KiB more: %.1f KiB a client (the bound: %d KiB); live heap after a collection %.0f KiB, %.1f KiB a client; stacks %.0f MiB, goroutines %v; replays %v, events written %v",
		clients, events-1, eventSize, smallReceiveBuffer, batch, admitted.Round(time.Millisecond),
		baseline, peak, growth, float64(growth)/clients, perClient>>10,
		live, live/clients, s["go_memstats_stack_inuse_bytes"]/(1<<20), s["go_goroutines"],
		s["sse_nats_replays_total"], s["sse_hub_replayed_total"])
	if bound := float64(clients * livePer >> 10); live >= bound {
		t.Errorf("the server's live heap is %.0f KiB with %d stalled replays, want under %.0f KiB (%d KiB a client): a replay must be held a chunk at a time",
			live, clients, bound, livePer>>10)
	}
	if bound := clients * perClient >> 10; growth >= bound {
		t.Errorf("the server's RSS grew by %d KiB with %d stalled replays, want under %d KiB (%d KiB a client): a replay must be held a chunk at a time",
			growth, clients, bound, perClient>>10)
	}
}

// eventuallyEvery is eventually polling every every instead of every 10 ms, for a condition
// that costs its server work to check.
func eventuallyEvery(t testing.TB, within, every time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true within %s", what, within)
		}
		time.Sleep(every)
	}
}

// endedReasons returns the non-zero counts of sse_streams_ended_total in s, by reason.
func endedReasons(s map[string]float64) map[string]float64 {
	ended := make(map[string]float64)
	for key, v := range s {
		if reason, ok := strings.CutPrefix(key, "sse_streams_ended_total"); ok && v != 0 {
			ended[reason] = v
		}
	}
	return ended
}
