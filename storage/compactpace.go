package storage

import (
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// Compaction pacing: a compaction the DB can afford to run slowly runs in
// slices, with a pause after each, so that it takes a share of the node's
// CPU over a longer time instead of all of it for a second.
//
// Why: the replicas of a range get the same writes, and a node's
// compaction rewrites its whole bottom level while the data is small.
// Under `bench put` with a CPU quota per node, a compaction took the
// node's CPU from the raft path for up to 1.7 s, and the clients, closed
// loop, piled up on the ranges that node leads: the cluster's throughput
// fell to half of its median in those seconds (0.43-0.61x). Paced, a
// compaction costs the same CPU spread over up to ten times as long: the
// dip is shallower, 0.66-0.80x of the median at the default duty,
// 0.63-0.76x at 0.25 (BENCHMARKS.md, "Paced compactions").
//
// A compaction is not paced while the DB waits for another one that is
// not optional (a score-based one: L0 or a level over its target size):
// slowing it then would hold the next one back, and L0 would grow toward
// the point where Pebble stops writes. A compaction refused while one is
// paused (TrySchedule), or a flush (UpdateGetAllowedWithoutPermission),
// makes the pause look at what waits then, not at its end; it ends if
// that is a compaction that is not optional.
//
// The duty is approximate: a pause is at most maxPause, so a slice that a
// CPU quota stretched past maxPause x duty/(1-duty) (28 ms at 0.1) runs
// for more than its share, and so does one over keys of MiBs (128 of
// them between two looks); under a quota 0.05 against 0.1 was mixed in 3
// pairs. Pebble also reports at the end of each output table, so a
// compaction may pause once after its last table, before its result is
// installed; a paced compaction holds its input and output files on disk
// for up to 1/duty times as long.

const (
	// DefaultCompactionDuty is PebbleOptions.CompactionDuty's default.
	DefaultCompactionDuty = 0.1
	// MinCompactionDuty is PebbleOptions.CompactionDuty's lower limit: at
	// 0.05 a compaction of 1.7 s would take half a minute.
	MinCompactionDuty = 0.05
	// paceSlice is how long a compaction runs, in wall time, between two
	// looks at its pace: Pebble reports every 128 keys (some KiB for the
	// KV data, more for raft entries); a look costs a call into the DB
	// under its mutex.
	paceSlice = 4 * time.Millisecond
	// maxPause bounds one pause: a slice stretched by a stall (a throttled
	// cgroup, a stopped process) does not stop the compaction for long.
	maxPause = 250 * time.Millisecond
)

// compactionGrant is the pebble.CompactionGrantHandle of one granted
// compaction: it paces the compaction and tells the scheduler its end.
type compactionGrant struct {
	s *compactionScheduler
	// resumed is when the compaction started or ended its last pause.
	// Written and read only on the compaction's goroutine (Started,
	// CumulativeStats).
	resumed time.Time
}

var _ pebble.CompactionGrantHandle = (*compactionGrant)(nil)

// Started implements pebble.CompactionGrantHandle. Pebble calls it once,
// on the compaction's goroutine, before CumulativeStats, holding the DB's
// mutex: it must not call into the DB.
func (g *compactionGrant) Started() { g.resumed = g.s.now() }

// MeasureCPU implements pebble.CompactionGrantHandle; pacing goes by wall
// time (Go has no CPU clock per goroutine).
func (g *compactionGrant) MeasureCPU(pebble.CompactionGoroutineKind) {}

// CumulativeStats implements pebble.CompactionGrantHandle: Pebble calls it
// on the compaction's goroutine every 128 keys, holding no lock, and
// allows it to block. Once the compaction has run for paceSlice since its
// last pause, it pauses (pauseAfter).
func (g *compactionGrant) CumulativeStats(pebble.CompactionGrantHandleStats) {
	ran := g.s.now().Sub(g.resumed)
	if ran < paceSlice {
		return
	}
	if d := g.s.pauseAfter(ran); d > 0 {
		g.s.pause(d)
	}
	g.resumed = g.s.now()
}

// Done implements pebble.CompactionGrantHandle. Pebble calls it holding no
// lock, after the compaction's result is installed.
func (g *compactionGrant) Done() { g.s.done() }

// pauseAfter is how long a compaction that ran for ran since its last
// pause waits before it goes on: ran x (1-duty)/duty, so that it runs for
// duty of the wall time, at most maxPause. 0 when compactions run unpaced
// (duty 1), once the store closes (releasePacing), and while the DB
// waits for a compaction that is not optional (mustNotWait). Called on
// the compaction's goroutine without s.mu held.
func (s *compactionScheduler) pauseAfter(ran time.Duration) time.Duration {
	if s.duty >= 1 {
		return 0
	}
	select {
	case <-s.released:
		return 0
	default:
	}
	if s.mustNotWait() {
		return 0
	}
	return min(time.Duration(float64(ran)*(1-s.duty)/s.duty), maxPause)
}

// mustNotWait: the DB waits for a compaction that is not optional.
// Called without s.mu held (GetWaitingCompaction takes the DB's mutex),
// on a compaction's goroutine. It may run after Unregister, when a pause
// raced releasePacing: safe, since Pebble's Close waits for the
// compactions under way, the caller's among them, before it tears down.
func (s *compactionScheduler) mustNotWait() bool {
	waiting, c := s.db.GetWaitingCompaction()
	return waiting && !c.Optional
}

// pause waits for d, and ends early when the store closes, or when, woken
// by a refusal (TrySchedule) or a flush (UpdateGetAllowedWithoutPermission),
// it finds a compaction waiting that is not optional; else it waits out
// the rest. Called on the compaction's goroutine without s.mu held.
func (s *compactionScheduler) pause(d time.Duration) {
	start := s.now()
	end := start.Add(d)
	defer func() { s.paused.Add(int64(s.now().Sub(start))) }()
	for d > 0 {
		if !s.wait(d, s.released, s.wake) || s.mustNotWait() {
			return
		}
		d = end.Sub(s.now())
	}
}

// releasePacing ends every pause and every later one: Pebble's Close
// waits for the compactions under way, which must not take ten times
// as long then. Called by Pebble.Close before it closes the DB; safe to
// call more than once.
func (s *compactionScheduler) releasePacing() {
	s.releaseOnce.Do(func() { close(s.released) })
}

// waitOrWake waits for d, until release is closed, or until wake has a
// value, which it takes; it reports whether wake ended the wait.
func waitOrWake(d time.Duration, release, wake <-chan struct{}) (woken bool) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return false
	case <-release:
		return false
	case <-wake:
		return true
	}
}
