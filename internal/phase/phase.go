// Package phase puts a process's periodic loops in step. A Ticker wakes
// at the multiples of its period since the process's origin, so loops
// whose periods divide each other (the 100 ms raft tick, the range queue's
// 500 ms, the one-second discovery, membership, evacuation and compaction
// loops) wake at the same instants instead of each at its own. An idle
// node's CPU is mostly the cost of waking (the kernel's scheduler, the Go
// runtime's sysmon spinning up after each wake); wakes that coincide cost
// about one (BENCHMARKS.md, "Quiescence: the idle floor and memory,
// later").
//
// The origin is the Unix epoch plus a random offset of this process
// (below a second), not the epoch itself: nodes in step with each other
// would tick at the same instant, and two followers whose randomized
// election timeouts (a whole number of ticks) are equal would campaign at
// once and split the vote, where ticks at different instants let the
// first one's request arrive before the second's timeout.
package phase

import (
	"math/rand/v2"
	"time"
)

// origin is this process's offset from the Unix epoch, in [0, 1 s).
var origin = time.Duration(rand.Int64N(int64(time.Second)))

// Delay returns how long from now to the next multiple of period since
// the process's origin: in (0, period]. A period <= 0 gives 0.
func Delay(now time.Time, period time.Duration) time.Duration {
	return delayFrom(now, period, origin)
}

func delayFrom(now time.Time, period, origin time.Duration) time.Duration {
	if period <= 0 {
		return 0
	}
	since := now.UnixNano() - int64(origin)
	r := since % int64(period)
	if r < 0 {
		r += int64(period)
	}
	return period - time.Duration(r)
}

// Ticker delivers the time on C at the multiples of its period since the
// origin. Like a time.Ticker it drops the ticks a slow receiver misses,
// but it is armed anew by Next after each receive, for the next multiple
// after that moment: so it never drifts from the others, and a receiver
// late by a whole period gets the next multiple, not a tick at once. Not
// safe for concurrent use; the loop that receives owns it.
type Ticker struct {
	C      <-chan time.Time
	t      *time.Timer
	period time.Duration
}

// NewTicker returns a Ticker of period (> 0), armed for the first
// multiple of it after now.
func NewTicker(period time.Duration) *Ticker {
	if period <= 0 {
		panic("phase: non-positive period")
	}
	t := time.NewTimer(Delay(time.Now(), period))
	return &Ticker{C: t.C, t: t, period: period}
}

// Next arms the ticker for the next multiple of its period after now. Call
// it once after each receive from C.
func (t *Ticker) Next() { t.t.Reset(Delay(time.Now(), t.period)) }

// Stop stops the ticker; no more ticks are sent.
func (t *Ticker) Stop() { t.t.Stop() }
