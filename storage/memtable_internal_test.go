package storage

import "testing"

// TestMemTableDefaultVaries: the default memtable size differs from store
// to store, within 6..12 MiB, so that replicas that get the same writes do
// not flush and compact in step (PebbleOptions.MemTableBytes). A fixed
// default fails it.
func TestMemTableDefaultVaries(t *testing.T) {
	seen := map[uint64]bool{}
	for range 200 {
		n := memTableDefault()
		if n < 6<<20 || n > 12<<20 || n%(64<<10) != 0 {
			t.Fatalf("memtable size %d: want 6..12 MiB in steps of 64 KiB", n)
		}
		seen[n] = true
	}
	// 97 sizes to draw from: 200 draws that hit fewer than 20 of them
	// are not uniform (the chance of it is far below 1e-20).
	if len(seen) < 20 {
		t.Fatalf("200 draws gave %d sizes, want at least 20", len(seen))
	}
}
