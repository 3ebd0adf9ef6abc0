package storage

import (
	"errors"
	"fmt"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// TestPebbleTablesHaveFilters: a read of a key a flushed table does not
// hold is answered by the table's Bloom filter (a filter hit), without a
// look into the table's blocks. With no filter policy there are no hits.
func TestPebbleTablesHaveFilters(t *testing.T) {
	p, err := OpenPebble("", PebbleOptions{FS: vfs.NewMem()})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for i := 0; i < 1000; i += 2 {
		if err := p.db.Set([]byte(fmt.Sprintf("k%05d", i)), []byte("v"), pebble.NoSync); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.db.Flush(); err != nil {
		t.Fatal(err)
	}
	for i := 1; i < 1000; i += 2 { // inside the table's bounds, not in it
		if _, _, err := p.db.Get([]byte(fmt.Sprintf("k%05d", i))); !errors.Is(err, pebble.ErrNotFound) {
			t.Fatalf("Get of an absent key: %v", err)
		}
	}
	if f := p.db.Metrics().Filter; f.Hits < 400 {
		t.Fatalf("filter hits %d (misses %d) for 500 absent keys, want most of them answered by a filter", f.Hits, f.Misses)
	}
}
