package main

import (
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"
)

// logLimit lets at most perSecond lines of a kind of log line through in any second, and
// counts the ones it holds back, so that a flood of short connections cannot flood the log.
// A second in which lines were held back ends with one summary line that counts them by
// label. A perSecond of 0 lets every line through.
type logLimit struct {
	logger    *slog.Logger
	perSecond int
	summary   string // the message of the summary line

	mu        sync.Mutex
	windowEnd time.Time      // when the current second ends
	passed    int            // lines let through in the current second
	held      map[string]int // lines held back since the last summary, by label
	timer     *time.Timer    // logs the summary at the end of the second
}

// newLogLimit returns a logLimit that logs its summaries to logger with the message summary.
func newLogLimit(logger *slog.Logger, perSecond int, summary string) *logLimit {
	return &logLimit{logger: logger, perSecond: perSecond, summary: summary, held: make(map[string]int)}
}

// allow reports whether a line may be logged now. If not, it counts it under label for the
// summary line.
func (l *logLimit) allow(label string) bool {
	if l.perSecond <= 0 {
		return true
	}
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if !now.Before(l.windowEnd) {
		l.windowEnd = now.Add(time.Second)
		l.passed = 0
	}
	if l.passed < l.perSecond {
		l.passed++
		return true
	}
	if len(l.held) == 0 {
		l.timer = time.AfterFunc(l.windowEnd.Sub(now), l.flush)
	}
	l.held[label]++
	return false
}

// flush logs the summary of the lines held back, if there are any. The timer calls it at
// the end of each second that held lines back; call it at shutdown too, so no count is lost.
func (l *logLimit) flush() {
	l.mu.Lock()
	if l.timer != nil {
		l.timer.Stop()
		l.timer = nil
	}
	held := l.held
	if len(held) > 0 {
		l.held = make(map[string]int)
	}
	l.mu.Unlock()
	if len(held) == 0 {
		return
	}
	total := 0
	attrs := []any{"limit_per_second", l.perSecond}
	for _, label := range slices.Sorted(maps.Keys(held)) {
		total += held[label]
		attrs = append(attrs, label, held[label])
	}
	l.logger.Info(l.summary, append([]any{"lines", total}, attrs...)...)
}
