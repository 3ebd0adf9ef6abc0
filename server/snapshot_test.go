package server

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/flotilla/flotilla/api"
)

// A node that was down while its range's log was truncated past it
// catches up by a snapshot streamed through the real transport: written
// to a file on the receiver, restored from it, and the file removed.
func TestRestartCatchesUpByStreamedSnapshot(t *testing.T) {
	c := startClusterWith(t, 3, 1, func(cfg *Config) { cfg.SnapshotEntries = 50 })
	ctx := ctxT(t)
	cl := c.client()
	c.shutdown(1)
	// Four times the snapshot interval: the log node 1 needs is gone.
	value := bytes.Repeat([]byte("v"), 4<<10)
	const n = 200
	for i := range n {
		if _, err := cl.Put(ctx, fmt.Appendf(nil, "k/%03d", i), value); err != nil {
			t.Fatal(err)
		}
	}
	// A file left in the snapshot directory by a crash is removed at the
	// start.
	stale := filepath.Join(c.dir, "1", "snapshots", "g1-stale")
	if err := os.WriteFile(stale, []byte("left by a crash"), 0o644); err != nil {
		t.Fatal(err)
	}
	c.start(1, nil)
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Fatalf("stale snapshot file still there: %v", err)
	}
	s1 := rawKV(t, c.nodes[1].ClientAddr())
	waitFor(t, 10*time.Second, "node 1 caught up", func() error {
		for i := range n {
			r, err := s1.Get(ctx, &api.GetRequest{Key: fmt.Appendf(nil, "k/%03d", i), Serializable: true})
			if err != nil {
				return err
			}
			if !r.Found || !bytes.Equal(r.Kv.GetValue(), value) {
				return fmt.Errorf("k/%03d not there yet", i)
			}
		}
		return nil
	})
	if got := c.nodes[1].Host().SnapshotsRestored(); got == 0 {
		t.Fatal("node 1 caught up without a snapshot: the test does not test streaming")
	}
	entries, err := os.ReadDir(filepath.Join(c.dir, "1", "snapshots"))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 0 {
		t.Fatalf("snapshot files left after the restore: %v", entries)
	}
}
