package kv

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/flotilla/flotilla/internal/testutil"
	"github.com/flotilla/flotilla/transport"
)

// openDiskDB opens a Pebble store in a test directory.
func openDiskDB(t *testing.T) *pebble.DB {
	t.Helper()
	db, err := pebble.Open(t.TempDir(), &pebble.Options{FS: vfs.Default})
	if err != nil {
		t.Fatal(err)
	}
	return db
}

// digest returns the sha256 of what write writes.
func digest(t *testing.T, write func(io.Writer) error) (n int64, sum [32]byte) {
	t.Helper()
	h := sha256.New()
	cw := &countWriter{w: h}
	if err := write(cw); err != nil {
		t.Fatal(err)
	}
	copy(sum[:], h.Sum(nil))
	return cw.n, sum
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return c.w.Write(p) }

// TestStreamedSnapshotFlat: a range's snapshot streams out of a Pebble
// snapshot (OpenSnapshot) and restores from a file (a transport's file
// marker) with memory flat in its size: 96 MiB of data go out and back in
// while the heap grows by less than 40 MiB each way. The stream shows the
// state as of its opening even when writes apply while it is read, and the
// restored replica equals the source. FLOTILLA_SNAPSHOT_MIB=1024 runs it
// with a 1 GiB range (BENCHMARKS.md).
func TestStreamedSnapshotFlat(t *testing.T) {
	mib := 96
	if v := os.Getenv("FLOTILLA_SNAPSHOT_MIB"); v != "" {
		if _, err := fmt.Sscan(v, &mib); err != nil || mib < 1 {
			t.Fatalf("FLOTILLA_SNAPSHOT_MIB=%q: want a positive number of MiB", v)
		}
	}
	keys, valueSize := mib<<10, 1<<10
	// On disk: an in-memory file system would hold the data on the heap.
	db := openDiskDB(t)
	defer db.Close()
	src := openRange(t, db, 3, "", "", WithHoldBudget(NewHoldBudget(1<<20)))
	value := bytes.Repeat([]byte("v"), valueSize)
	var index uint64
	for i := 0; i < keys; i += 1024 {
		cmds := make([]Command, 0, 1024)
		for j := i; j < i+1024; j++ {
			cmds = append(cmds, Command{Op: OpPut, Key: []byte(fmt.Sprintf("k%07d", j)), Value: value})
		}
		applyResults(t, src, &index, cmds...)
	}
	size, want := digest(t, src.Snapshot)
	path := filepath.Join(t.TempDir(), "snap")
	var opened io.ReadCloser
	var err error
	grew := testutil.HeapGrowth(func() {
		if opened, err = src.OpenSnapshot(); err != nil {
			return
		}
		// A write applies after the stream opened: the stream does not
		// show it.
		applyResults(t, src, &index, Command{Op: OpPut, Key: []byte("k0000001"), Value: []byte("later")})
		f, ferr := os.Create(path)
		if ferr != nil {
			err = ferr
			return
		}
		_, err = io.Copy(f, opened)
		f.Close()
		opened.Close()
	})
	if err != nil {
		t.Fatal(err)
	}
	if grew > 40<<20 {
		t.Fatalf("streaming a snapshot of %d MiB grew the heap by %d MiB", keys*valueSize>>20, grew>>20)
	}
	gotSize, got := digest(t, func(w io.Writer) error {
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(w, f)
		return err
	})
	if gotSize != size || got != want {
		t.Fatalf("the stream differs from the snapshot as of its opening (%d vs %d bytes)", gotSize, size)
	}
	t.Logf("out: %d MiB streamed, the heap grew by at most %d MiB", size>>20, max(grew, 0)>>20)

	// In again, from the file, into a replica on another node.
	db2 := openDiskDB(t)
	defer db2.Close()
	dst, err := New(db2, 3, WithHoldBudget(NewHoldBudget(1<<20)))
	if err != nil {
		t.Fatal(err)
	}
	marker := transport.FileMarker(path)
	if d, err := SnapshotDescriptor(marker); err != nil || d.ID != 3 {
		t.Fatalf("descriptor from the file: %v %v", d, err)
	}
	grew = testutil.HeapGrowth(func() {
		var f *os.File
		if f, err = os.Open(path); err != nil {
			return
		}
		err = dst.Restore(f, index-1)
		f.Close()
	})
	if err != nil {
		t.Fatal(err)
	}
	if grew > 40<<20 {
		t.Fatalf("restoring a snapshot of %d MiB grew the heap by %d MiB", size>>20, grew>>20)
	}
	t.Logf("in: the heap grew by at most %d MiB", max(grew, 0)>>20)
	if _, again := digest(t, dst.Snapshot); again != want {
		t.Fatal("the restored replica differs from the source as of the stream")
	}
	// A stream closed before it is read releases its Pebble snapshot.
	r, err := src.OpenSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
}
