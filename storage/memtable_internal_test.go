package storage

import "testing"

// TestMemTableDefaultVaries: the default memtable size differs from store
// to store, over 6..12 MiB, so that replicas that get the same writes do
// not flush and compact in step (PebbleOptions.MemTableBytes). A fixed
// default fails it.
func TestMemTableDefaultVaries(t *testing.T) {
	const draws = 100000
	seen := map[uint64]bool{}
	lo, hi := uint64(1<<63), uint64(0)
	for range draws {
		n := memTableDefault()
		if n < 6<<20 || n > 12<<20 || n%(64<<10) != 0 {
			t.Fatalf("memtable size %d: want 6..12 MiB in steps of 64 KiB", n)
		}
		seen[n] = true
		lo, hi = min(lo, n), max(hi, n)
	}
	// 97 sizes, each missed by 100,000 uniform draws with a chance under
	// 1e-400: every one of them, both ends included, must come up.
	if lo != 6<<20 || hi != 12<<20 || len(seen) != 97 {
		t.Fatalf("%d draws gave %d sizes, from %d to %d bytes; want all 97, from 6 MiB to 12 MiB", draws, len(seen), lo, hi)
	}
}
