package storage

import (
	"context"
	"fmt"
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

// TestPebbleStats: flushes show as level 0 tables, a compaction as one
// compaction that empties level 0; after Close, Stats is zero (no call
// into a closed DB).
func TestPebbleStats(t *testing.T) {
	p, err := OpenPebble("", PebbleOptions{FS: vfs.NewMem(), CompactionDuty: 1})
	if err != nil {
		t.Fatal(err)
	}
	if st := p.Stats(); st != (Stats{}) {
		t.Fatalf("an empty store: %+v", st)
	}
	// Two flushes of overlapping keys: two tables, two sublevels (fewer
	// than the four that make Pebble compact level 0 by itself).
	for f := range 2 {
		for i := range 10 {
			if err := p.db.Set(fmt.Appendf(nil, "k%02d", i), []byte{byte(f)}, pebble.NoSync); err != nil {
				t.Fatal(err)
			}
		}
		if err := p.db.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	if st := p.Stats(); st.L0Tables != 2 || st.L0Sublevels != 2 {
		t.Fatalf("after two flushes: %+v, want 2 tables in 2 sublevels", st)
	}
	if err := p.db.Compact(context.Background(), []byte("k"), []byte("l"), true); err != nil {
		t.Fatal(err)
	}
	if st := p.Stats(); st.L0Tables != 0 || st.Compactions < 1 || st.WriteStalls != 0 || st.CompactionPause != 0 {
		t.Fatalf("after a compaction, unpaced: %+v", st)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if st := p.Stats(); st != (Stats{}) {
		t.Fatalf("after Close: %+v", st)
	}
}
