package main

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// rejectReason says why a request for the stream was turned away; it is a metric label.
type rejectReason string

// The ways a request for the stream is turned away.
const (
	rejectMaxClients      rejectReason = "max_clients"        // -max-clients streams were open
	rejectMaxClientsPerIP rejectReason = "max_clients_per_ip" // its client address held -max-clients-per-ip streams
	rejectNotAcceptable   rejectReason = "not_acceptable"     // its Accept header ruled out text/event-stream
	rejectBadRequest      rejectReason = "bad_request"        // its Accept header could not be parsed
)

// metrics are one server's Prometheus metrics. Every series a stream touches is created up
// front, so counting costs an atomic add: no allocation and no lock per event.
type metrics struct {
	registry     *prometheus.Registry
	opened       prometheus.Counter
	ended        map[endReason]prometheus.Counter
	rejected     map[rejectReason]prometheus.Counter
	events       prometheus.Counter
	keepalives   prometheus.Counter
	acceptErrors prometheus.Counter
	streamLength prometheus.Histogram
	writeTime    prometheus.Histogram
}

// newMetrics registers the stream metrics, open reporting the streams open now, beside the
// Go runtime's, the process's and the build's.
func newMetrics(open func() float64, writeTimeout time.Duration) *metrics {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewBuildInfoCollector(),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "sse_streams_open",
			Help: "Event streams open now.",
		}, open),
	)
	m := &metrics{
		registry: reg,
		opened: registerCounter(reg, prometheus.CounterOpts{
			Name: "sse_streams_opened_total",
			Help: "Event streams opened.",
		}),
		events: registerCounter(reg, prometheus.CounterOpts{
			Name: "sse_events_total",
			Help: "Events written to clients.",
		}),
		keepalives: registerCounter(reg, prometheus.CounterOpts{
			Name: "sse_keepalives_total",
			Help: "Keepalive comments written to idle streams.",
		}),
		acceptErrors: registerCounter(reg, prometheus.CounterOpts{
			Name: "sse_accept_errors_total",
			Help: "Accepts that failed for a while (out of file descriptors, say) and were retried.",
		}),
		streamLength: registerHistogram(reg, prometheus.HistogramOpts{
			Name:    "sse_stream_duration_seconds",
			Help:    "How long event streams lasted, from admission to end.",
			Buckets: []float64{1, 10, 60, 300, 900, 3600, 4 * 3600, 24 * 3600},
		}),
		writeTime: registerHistogram(reg, prometheus.HistogramOpts{
			Name:    "sse_write_duration_seconds",
			Help:    "How long one write to a client took, from the write to its flush.",
			Buckets: writeBuckets(writeTimeout),
		}),
	}
	ended := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sse_streams_ended_total",
		Help: "Event streams ended, by why they ended.",
	}, []string{"reason"})
	reg.MustRegister(ended)
	m.ended = make(map[endReason]prometheus.Counter)
	for _, r := range []endReason{endClientGone, endWriteTimeout, endShutdown, endMaxLifetime, endTooSlow, endAuthExpired, endError, endUnavailable, endResync} {
		m.ended[r] = ended.WithLabelValues(string(r))
	}
	rejected := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sse_requests_rejected_total",
		Help: "Requests for the event stream turned away, by why.",
	}, []string{"reason"})
	reg.MustRegister(rejected)
	m.rejected = make(map[rejectReason]prometheus.Counter)
	for _, r := range []rejectReason{rejectMaxClients, rejectMaxClientsPerIP, rejectNotAcceptable, rejectBadRequest} {
		m.rejected[r] = rejected.WithLabelValues(string(r))
	}
	return m
}

// writeBuckets returns the bounds of the write duration histogram: powers of ten from a
// microsecond up to the write timeout, then the write timeout, which no write outlasts.
func writeBuckets(writeTimeout time.Duration) []float64 {
	var bounds []float64
	for _, b := range []float64{1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1, 10, 100, 1000} {
		if b < writeTimeout.Seconds() {
			bounds = append(bounds, b)
		}
	}
	return append(bounds, writeTimeout.Seconds())
}

// registerCounter registers a counter with reg and returns it.
func registerCounter(reg *prometheus.Registry, opts prometheus.CounterOpts) prometheus.Counter {
	c := prometheus.NewCounter(opts)
	reg.MustRegister(c)
	return c
}

// registerHistogram registers a histogram with reg and returns it.
func registerHistogram(reg *prometheus.Registry, opts prometheus.HistogramOpts) prometheus.Histogram {
	h := prometheus.NewHistogram(opts)
	reg.MustRegister(h)
	return h
}
