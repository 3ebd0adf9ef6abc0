package transport

import (
	"bytes"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"
)

// The pacer lets a burst go at once, then keeps the rate; an idle pacer
// does not save up more than the burst; rate 0 is no pacer.
func TestSnapPacer(t *testing.T) {
	if newSnapPacer(0, 1<<20) != nil {
		t.Fatal("rate 0 made a pacer")
	}
	p := newSnapPacer(1<<20, 1<<20) // 1 MiB/s, a burst of 1 MiB
	t0 := time.Unix(1000, 0)
	steps := []struct {
		at   time.Duration
		n    int
		wait time.Duration
	}{
		{0, 1 << 20, 0},                            // within the burst
		{0, 1 << 20, 0},                            // the burst's end: the schedule is 1 s ahead
		{0, 1 << 20, time.Second},                  // 2 s ahead: a second past the burst
		{0, 512 << 10, 2 * time.Second},            // 3 s ahead
		{10 * time.Second, 1 << 20, 0},             // idle: the schedule restarts at now
		{10 * time.Second, 1 << 20, 0},             // the burst again, no more
		{10 * time.Second, 256 << 10, time.Second}, // 2 s ahead
	}
	for i, s := range steps {
		if got := p.reserve(t0.Add(s.at), s.n); got != s.wait {
			t.Fatalf("step %d: wait %v, want %v", i, got, s.wait)
		}
	}
}

// MaxSnapshotsInFlight bounds the snapshots a node sends at once over all
// its peers, and SnapshotRate their bytes per second: node 1 sends two
// snapshots of 4 chunks to each of nodes 2 and 3 at 4 chunks a second.
// With one slot the four never overlap, and the 16 chunks take at least
// 3.5 s (the first two go at once: the chunk sent and the burst of one
// beyond the rate); the control, with two slots, overlaps.
func TestSnapshotsInFlight(t *testing.T) {
	const chunk = 64 << 10
	run := func(t *testing.T, slots int) (maxInFlight int64, took time.Duration) {
		cfg := testConfig(1, "127.0.0.1")
		cfg.SnapshotChunkSize = chunk
		cfg.MaxSnapshotsInFlight = slots
		cfg.SnapshotRate = 4 * chunk
		a, ra := newNode(t, cfg, true)
		b, _ := newNode(t, testConfig(2, "127.0.0.1"), true)
		c, _ := newNode(t, testConfig(3, "127.0.0.1"), true)
		mesh(a, b, c)
		data := bytes.Repeat([]byte("x"), 4*chunk-256) // 4 chunks with the message around it
		start := time.Now()
		for g := uint64(1); g <= 2; g++ {
			for _, to := range []uint64{2, 3} {
				m := raftpb.Message{Type: raftpb.MsgSnap, From: 1, To: to, Term: 1,
					Snapshot: &raftpb.Snapshot{Data: data, Metadata: raftpb.SnapshotMetadata{Index: 10, Term: 1}}}
				a.Send([]Envelope{{Group: g, Msg: m}})
			}
		}
		if !ra.until(time.Minute, func() bool { return len(ra.mu.snaps) == 4 }) {
			t.Fatalf("%d of 4 snapshots reported", len(ra.mu.snaps))
		}
		for _, s := range ra.mu.snaps {
			if !s.ok {
				t.Fatalf("snapshot reports %+v", ra.mu.snaps)
			}
		}
		return a.snapInFlightMax.Load(), time.Since(start)
	}
	t.Run("one slot", func(t *testing.T) {
		most, took := run(t, 1)
		if most != 1 {
			t.Fatalf("%d snapshots sent at once, bound 1", most)
		}
		if took < 3400*time.Millisecond { // 3.5 s, less the timers' slack
			t.Fatalf("16 chunks at 4 a second took %v", took)
		}
	})
	t.Run("two slots (control)", func(t *testing.T) {
		if most, _ := run(t, 2); most != 2 {
			t.Fatalf("%d snapshots sent at once with two slots, want 2", most)
		}
	})
}

// A snapshot lane waiting for a slot still reports the snapshots dropped
// from it: node 1 has one slot, held for some 3 s by a paced snapshot to
// node 2; node 3's lane (room for one) takes one snapshot, which waits for
// the slot, and drops the next two, whose failures must be reported long
// before the slot frees (not only once node 2's transfer ends).
func TestSnapshotSlotWaitReportsDrops(t *testing.T) {
	const chunk = 64 << 10
	cfg := testConfig(1, "127.0.0.1")
	cfg.SnapshotChunkSize = chunk
	cfg.MaxSnapshotsInFlight = 1
	cfg.SnapshotRate = 4 * chunk
	cfg.SnapshotQueueCap = 1
	a, ra := newNode(t, cfg, true)
	b, _ := newNode(t, testConfig(2, "127.0.0.1"), true)
	c, _ := newNode(t, testConfig(3, "127.0.0.1"), true)
	mesh(a, b, c)
	snap := func(to uint64, size int) raftpb.Message {
		return raftpb.Message{Type: raftpb.MsgSnap, From: 1, To: to, Term: 1,
			Snapshot: &raftpb.Snapshot{Data: bytes.Repeat([]byte("x"), size), Metadata: raftpb.SnapshotMetadata{Index: 10, Term: 1}}}
	}
	a.Send([]Envelope{{Group: 1, Msg: snap(2, 14*chunk)}}) // 14 chunks at 4 a second: 3 s
	for deadline := time.Now().Add(10 * time.Second); a.snapInFlight.Load() != 1; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the first snapshot did not take the slot")
		}
	}
	start := time.Now()
	for g := uint64(2); g <= 5; g++ {
		a.Send([]Envelope{{Group: g, Msg: snap(3, chunk/2)}})
	}
	// Group 2 is in node 3's lane, waiting for the slot; group 3 fills the
	// lane; 4 and 5 are dropped at once and must be reported.
	failed := func() int {
		n := 0
		for _, r := range ra.mu.snaps {
			if !r.ok {
				n++
			}
		}
		return n
	}
	if !ra.until(time.Minute, func() bool { return failed() >= 2 }) {
		t.Fatalf("snapshot reports %+v", ra.mu.snaps)
	}
	if took := time.Since(start); took > 1500*time.Millisecond {
		t.Fatalf("the dropped snapshots were reported after %v, while the slot was held (about 3 s)", took)
	}
	if !ra.until(time.Minute, func() bool { return len(ra.mu.snaps) == 5 }) {
		t.Fatalf("snapshot reports %+v", ra.mu.snaps)
	}
}
