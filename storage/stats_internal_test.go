package storage

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// TestStallClock: on a hand clock, a stall counts once however often
// Pebble says it began, its length counts while it lasts, and an end
// without a beginning counts nothing.
func TestStallClock(t *testing.T) {
	now := time.Unix(100, 0)
	c := &stallClock{now: func() time.Time { return now }}
	check := func(what string, n uint64, d time.Duration) {
		t.Helper()
		if gn, gd := c.stalls(); gn != n || gd != d {
			t.Fatalf("%s: %d stalls, %v; want %d, %v", what, gn, gd, n, d)
		}
	}
	c.end()
	check("an end alone", 0, 0)
	c.begin(pebble.WriteStallBeginInfo{Reason: "memtable count limit reached"})
	now = now.Add(2 * time.Second)
	c.begin(pebble.WriteStallBeginInfo{Reason: "L0 file count limit exceeded"})
	check("under way", 1, 2*time.Second)
	now = now.Add(time.Second)
	c.end()
	now = now.Add(time.Hour)
	check("ended", 1, 3*time.Second)
	c.begin(pebble.WriteStallBeginInfo{})
	now = now.Add(500 * time.Millisecond)
	c.end()
	check("a second one", 2, 3500*time.Millisecond)
}

// TestPebbleStats: a flush shows as a level 0 table, a compaction as a
// compaction that empties level 0; after Close, Stats says so (no call
// into a closed DB).
func TestPebbleStats(t *testing.T) {
	p, err := OpenPebble("", PebbleOptions{FS: vfs.NewMem(), CompactionDuty: 1})
	if err != nil {
		t.Fatal(err)
	}
	if st, ok := p.Stats(); !ok || st != (Stats{}) {
		t.Fatalf("an empty store: %+v, %v", st, ok)
	}
	// One flush: one table, one sublevel (two would be scored for a
	// compaction, which would race the look).
	for i := range 10 {
		if err := p.db.Set(fmt.Appendf(nil, "k%02d", i), []byte{1}, pebble.NoSync); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.db.Flush(); err != nil {
		t.Fatal(err)
	}
	if st, _ := p.Stats(); st.L0Tables != 1 || st.L0Sublevels != 1 {
		t.Fatalf("after a flush: %+v, want 1 table in 1 sublevel", st)
	}
	if err := p.db.Compact(context.Background(), []byte("k"), []byte("l"), true); err != nil {
		t.Fatal(err)
	}
	if st, _ := p.Stats(); st.L0Tables != 0 || st.Compactions < 1 || st.WriteStalls != 0 || st.CompactionPause != 0 {
		t.Fatalf("after a compaction, unpaced: %+v", st)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if st, ok := p.Stats(); ok || st != (Stats{}) {
		t.Fatalf("after Close: %+v, %v", st, ok)
	}
}

// TestPebbleWriteStallCounted: a store whose one compaction pauses for
// good (the test's pacing waits until release) piles up level 0 until
// Pebble stops writes; Stats counts the stall while it lasts (the
// EventListener is wired), and its length once it ended.
func TestPebbleWriteStallCounted(t *testing.T) {
	s := newCompactionScheduler(MinCompactionDuty)
	var clock atomic.Int64 // every look sees a slice gone by
	s.now = func() time.Time { return time.Unix(0, clock.Add(int64(paceSlice))) }
	s.wait = func(_ time.Duration, release, _ <-chan struct{}) bool {
		<-release
		return false
	}
	p, err := openPebble("", PebbleOptions{FS: vfs.NewMem(), CacheBytes: 1 << 20, MemTableBytes: 256 << 10}, s)
	if err != nil {
		t.Fatal(err)
	}
	stalled := make(chan struct{}, 1)
	p.stalls.began1 = stalled // before the writer starts
	// A writer of overlapping flushed tables, until a write blocks.
	done := make(chan error, 1)
	defer func() { // a failure: the writer ends before the store closes
		s.releasePacing()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("the writer did not end after the release")
		}
		p.Close()
	}()
	go func() { // writer: ends once the stall does
		for f := 0; f < 200; f++ {
			for i := range 50 {
				if err := p.db.Set(fmt.Appendf(nil, "k%02d", i), fmt.Appendf(nil, "v%d", f), pebble.NoSync); err != nil {
					done <- err
					return
				}
			}
			if _, err := p.db.AsyncFlush(); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	// Stalls may come and go (a memtable stall ends with its flush)
	// before level 0 stops writes for good: the first is enough.
	select {
	case <-stalled:
	case err := <-done:
		done <- err // for the deferred cleanup
		st, _ := p.Stats()
		t.Fatalf("the writer ended (%v) with no stall: %+v", err, st)
	case <-time.After(60 * time.Second):
		st, _ := p.Stats()
		t.Fatalf("no write stall in 60 s: %+v", st)
	}
	if st, _ := p.Stats(); st.WriteStalls < 1 {
		t.Fatalf("a stall began, and Stats counts none: %+v", st)
	}
	s.releasePacing()
	err = <-done
	done <- nil // for the deferred cleanup
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := p.Stats(); st.WriteStalls < 1 || st.WriteStallTime <= 0 {
		t.Fatalf("after the stall: %+v", st)
	}
}
