package storage

import "testing"

// TestMemTableDefaultVaries: the default memtable size differs from store
// to store, over 6..12 MiB, so that replicas that get the same writes do
// not flush and compact in step (PebbleOptions.MemTableBytes). A fixed
// default fails it.
func TestMemTableDefaultVaries(t *testing.T) {
	if lo, hi := memTableSize(0), memTableSize(memTableSizes-1); lo != 6<<20 || hi != 12<<20 {
		t.Fatalf("the default sizes run from %d to %d bytes, want 6 MiB to 12 MiB", lo, hi)
	}
	seen := map[uint64]bool{}
	for range 200 {
		n := memTableDefault()
		if n < 6<<20 || n > 12<<20 || n%(64<<10) != 0 {
			t.Fatalf("memtable size %d: want 6..12 MiB in steps of 64 KiB", n)
		}
		seen[n] = true
	}
	// 97 sizes to draw from, about 85 of them hit by 200 uniform draws:
	// fewer than 20 has a chance under 1e-100.
	if len(seen) < 20 {
		t.Fatalf("200 draws gave %d sizes, want at least 20", len(seen))
	}
}
