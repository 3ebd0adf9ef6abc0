package storage

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// absentKeyFilterHits writes the even keys k00000..k00998, flushes them
// into one L0 table, reads the 500 odd keys (inside the table's bounds,
// not in it), and returns the DB's filter hits: reads a table's Bloom
// filter answered without a look into its blocks.
func absentKeyFilterHits(t *testing.T, db *pebble.DB) int64 {
	t.Helper()
	for i := 0; i < 1000; i += 2 {
		if err := db.Set([]byte(fmt.Sprintf("k%05d", i)), []byte("v"), pebble.NoSync); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.Flush(); err != nil {
		t.Fatal(err)
	}
	for i := 1; i < 1000; i += 2 {
		if _, _, err := db.Get([]byte(fmt.Sprintf("k%05d", i))); !errors.Is(err, pebble.ErrNotFound) {
			t.Fatalf("Get of an absent key: %v", err)
		}
	}
	return db.Metrics().Filter.Hits
}

// filterNames maps each level holding tables to the filter policy names
// of its tables ("" for a table without a filter).
func filterNames(t *testing.T, db *pebble.DB) map[int][]string {
	t.Helper()
	levels, err := db.SSTables(pebble.WithProperties())
	if err != nil {
		t.Fatal(err)
	}
	names := map[int][]string{}
	for l, tables := range levels {
		for _, tb := range tables {
			names[l] = append(names[l], tb.Properties.FilterPolicyName)
		}
	}
	return names
}

// TestPebbleTablesHaveFilters: a store's flushed (L0) table carries a
// Bloom filter, and reads of keys it does not hold are answered by it; a
// table a compaction writes into L6, whose filters Pebble's reads skip,
// has none. The control, Pebble's default options: no filter hits.
func TestPebbleTablesHaveFilters(t *testing.T) {
	bloomName := bloom.FilterPolicy(10).Name()
	t.Run("store", func(t *testing.T) {
		p, err := OpenPebble("", PebbleOptions{FS: vfs.NewMem(), CompactionDuty: 1})
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		if hits := absentKeyFilterHits(t, p.db); hits < 400 {
			t.Fatalf("filter hits %d for 500 absent keys, want most of them answered by a filter", hits)
		}
		if got := fmt.Sprint(filterNames(t, p.db)); got != fmt.Sprint(map[int][]string{0: {bloomName}}) {
			t.Fatalf("after a flush, filters by level %s, want one L0 table with %q", got, bloomName)
		}
		// A second table over the same keys, so that the compaction into
		// L6 rewrites them (one table alone would be moved as it is).
		for i := 0; i < 1000; i += 2 {
			if err := p.db.Set([]byte(fmt.Sprintf("k%05d", i)), []byte("w"), pebble.NoSync); err != nil {
				t.Fatal(err)
			}
		}
		if err := p.db.Flush(); err != nil {
			t.Fatal(err)
		}
		if err := p.db.Compact(context.Background(), []byte("k"), []byte("l"), false); err != nil {
			t.Fatal(err)
		}
		if got := fmt.Sprint(filterNames(t, p.db)); got != fmt.Sprint(map[int][]string{6: {""}}) {
			t.Fatalf("after a compaction, filters by level %s, want one L6 table without a filter", got)
		}
	})
	t.Run("control: Pebble's default options", func(t *testing.T) {
		db, err := pebble.Open("", &pebble.Options{FS: vfs.NewMem(), Logger: quietLogger{}})
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		if hits := absentKeyFilterHits(t, db); hits != 0 {
			t.Fatalf("filter hits %d without a filter policy, want 0", hits)
		}
	})
}
