package storage

import (
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// Stats is what a Pebble store did since it opened, and what its level 0
// holds now: the figures that say whether compactions keep up (the node's
// metrics, flotilla_storage_*).
type Stats struct {
	// WriteStalls counts the times Pebble held writes back (too many
	// memtables waiting for a flush, or too many tables in level 0), and
	// WriteStallTime is their total length, the one under way included.
	// Every write of the node waits during a stall: the raft path's too.
	WriteStalls    uint64
	WriteStallTime time.Duration
	// CompactionPause is the time compactions spent paused by the pacing
	// (PebbleOptions.CompactionDuty), summed over compactions.
	CompactionPause time.Duration
	// Compactions counts the compactions finished.
	Compactions int64
	// L0Tables and L0Sublevels: the tables in level 0 now, and the
	// sublevels they form (the read amplification of level 0; Pebble
	// compacts level 0 first once it has more sublevels than its
	// threshold, 4 by default).
	L0Tables    int64
	L0Sublevels int32
}

// stallClock times Pebble's write stalls (its EventListener's
// WriteStallBegin and WriteStallEnd, which Pebble may call holding its
// mutex: they only touch atomics).
type stallClock struct {
	now   func() time.Time
	began atomic.Int64 // UnixNano of the stall under way; 0: none
	count atomic.Uint64
	total atomic.Int64 // nanoseconds, of the stalls ended
}

func (c *stallClock) begin(pebble.WriteStallBeginInfo) {
	if c.began.CompareAndSwap(0, c.now().UnixNano()) {
		c.count.Add(1)
	}
}

func (c *stallClock) end() {
	if b := c.began.Swap(0); b != 0 {
		c.total.Add(c.now().UnixNano() - b)
	}
}

// stalls returns the count of stalls and their total length, the one
// under way included.
func (c *stallClock) stalls() (uint64, time.Duration) {
	total := c.total.Load()
	if b := c.began.Load(); b != 0 {
		total += max(0, c.now().UnixNano()-b)
	}
	return c.count.Load(), time.Duration(total)
}

// Stats returns the store's figures; after Close, the zero Stats. It takes
// Pebble's metrics, which lock the DB's mutex briefly: meant for a metrics
// scrape, not a hot path. Safe for concurrent use, Close included.
func (p *Pebble) Stats() Stats {
	p.closing.RLock()
	defer p.closing.RUnlock()
	var st Stats
	if p.closed {
		return st
	}
	m := p.db.Metrics()
	st.WriteStalls, st.WriteStallTime = p.stalls.stalls()
	st.CompactionPause = time.Duration(p.sched.paused.Load())
	st.Compactions = m.Compact.Count
	st.L0Tables = m.Levels[0].TablesCount
	st.L0Sublevels = m.Levels[0].Sublevels
	return st
}
