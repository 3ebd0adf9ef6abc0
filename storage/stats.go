package storage

import (
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// Stats is what a Pebble store did since it opened, and what its level 0
// holds now: the figures that say whether compactions keep up (the node's
// metrics, flotilla_storage_*).
type Stats struct {
	// WriteStalls counts the times Pebble held writes back (too many
	// memtables waiting for a flush, or too many sublevels in level 0: 12
	// by default), and WriteStallTime is their total length, the one
	// under way included. Every write of the node waits during a stall:
	// the raft path's too.
	WriteStalls    uint64
	WriteStallTime time.Duration
	// CompactionPause is the time compactions spent paused by the pacing
	// (PebbleOptions.CompactionDuty), summed over compactions.
	CompactionPause time.Duration
	// Compactions counts the compactions Pebble ran (Metrics.Compact.Count:
	// those that failed or were cancelled too).
	Compactions int64
	// L0Tables and L0Sublevels: the tables in level 0 now, and the
	// sublevels they form (the read amplification of level 0; Pebble
	// scores level 0 for a compaction from 2 sublevels, and stops writes
	// at 12).
	L0Tables    int64
	L0Sublevels int32
}

// stallClock times Pebble's write stalls (its EventListener's
// WriteStallBegin and WriteStallEnd, which Pebble calls holding its
// mutexes, one after the other, never nested). Lock order: mu is a leaf,
// taken under Pebble's mutexes.
type stallClock struct {
	now func() time.Time
	mu  sync.Mutex
	// began is when the stall under way began (zero: none); count and
	// total, the stalls begun and the length of those ended. Under mu, so
	// that a reader never sees a stall ended but not yet added (a counter
	// that went down).
	began time.Time
	count uint64
	total time.Duration
	// began1, if set (a test's, before any write), gets a value at the
	// first stall's beginning; the send does not block.
	began1 chan struct{}
}

func (c *stallClock) begin(pebble.WriteStallBeginInfo) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.began.IsZero() {
		c.began = c.now()
		c.count++
		if c.count == 1 && c.began1 != nil {
			select {
			case c.began1 <- struct{}{}:
			default:
			}
		}
	}
}

func (c *stallClock) end() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.began.IsZero() {
		c.total += max(0, c.now().Sub(c.began))
		c.began = time.Time{}
	}
}

// stalls returns the count of stalls and their total length, the one
// under way included.
func (c *stallClock) stalls() (uint64, time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	total := c.total
	if !c.began.IsZero() {
		total += max(0, c.now().Sub(c.began))
	}
	return c.count, total
}

// Stats returns the store's figures, and false after Close (then no
// figures: a counter read as 0 would look reset). It takes Pebble's
// metrics, which lock the DB's mutex (and may wait for a manifest write):
// meant for a metrics scrape, not a hot path. Safe for concurrent use,
// Close included.
func (p *Pebble) Stats() (Stats, bool) {
	p.closing.RLock()
	defer p.closing.RUnlock()
	var st Stats
	if p.closed {
		return st, false
	}
	m := p.db.Metrics()
	st.WriteStalls, st.WriteStallTime = p.stalls.stalls()
	st.CompactionPause = time.Duration(p.sched.paused.Load())
	st.Compactions = m.Compact.Count
	st.L0Tables = m.Levels[0].TablesCount
	st.L0Sublevels = m.Levels[0].Sublevels
	return st, true
}
