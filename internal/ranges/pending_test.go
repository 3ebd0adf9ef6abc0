package ranges

import (
	"bytes"
	"io"
	"log/slog"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/flotilla/flotilla/kv"
	"github.com/flotilla/flotilla/multiraft"
	"github.com/flotilla/flotilla/storage"
)

// TestOpenStartsPendingRestore: a node stopped after raft recorded a
// snapshot of range 1 but before the range's restore of it was durable:
// raft's state holds the snapshot, the database no descriptor. Open
// starts the range all the same, and it restores the snapshot: its
// descriptor and its key are back. Left unstarted (before), the range
// held no span here until its leader's next message, and the simulation
// saw a newer range started over its span first (seed 290).
func TestOpenStartsPendingRestore(t *testing.T) {
	raftState, r, snap := leftSnapshot(t)
	db := memDB(t)
	if ds, _ := kv.LocalDescriptors(db); len(ds) != 0 {
		t.Fatalf("the database holds descriptors: %v", ds)
	}
	n := openOn(t, raftState, db)
	got, ok := n.s.Get(r.ID)
	if !ok {
		t.Fatalf("range %d, whose raft state holds a snapshot naming this node, was not started", r.ID)
	}
	d, ok := got.Descriptor()
	want, _ := r.Descriptor()
	if !ok || !d.Equal(want) {
		t.Fatalf("restored descriptor %v, want %v", d, want)
	}
	var again bytes.Buffer
	if err := got.SM.Snapshot(&again); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again.Bytes(), snap) {
		t.Fatal("the restored range's state differs from the snapshot's")
	}
}

// TestOpenLeavesOverlappingRestore: the same left snapshot of range 1
// (generation 1, every key), but the node also holds range 5, of a later
// generation, from "j" to "m". Open does not start range 1, whose restore
// no gate would check and which would write its older keys over range
// 5's (neither supersedes the other); range 5 runs.
func TestOpenLeavesOverlappingRestore(t *testing.T) {
	raftState, r, _ := leftSnapshot(t)
	db := memDB(t)
	// Range 5 holds "j" to "m" only: it does not supersede range 1's
	// snapshot (which holds every key), nor does range 1 supersede it.
	newer := kv.Descriptor{ID: 5, Start: []byte("j"), End: []byte("m"), Generation: 5, Replicas: []uint64{1}}
	all := []kv.Descriptor{
		{ID: 4, End: []byte("j"), Generation: 5, Replicas: []uint64{2}},
		newer,
		{ID: 6, Start: []byte("m"), Generation: 5, Replicas: []uint64{2}},
	}
	if err := kv.Bootstrap(db, newer, all); err != nil {
		t.Fatal(err)
	}
	n := openOn(t, raftState, db)
	if _, ok := n.s.Get(r.ID); ok {
		t.Fatalf("range %d was started over range 5's keys", r.ID)
	}
	if _, ok := n.s.Get(5); !ok {
		t.Fatal("range 5 did not start")
	}
}

// leftSnapshot makes range 1 on a one-node cluster, writes a key, and
// returns raft state holding a snapshot of it (with no descriptor in any
// database: the restore a stop cut short), the replica, and the snapshot.
func leftSnapshot(t *testing.T) (*storage.Mem, *Replica, []byte) {
	t.Helper()
	src := newNode(t, 1)
	src.put("k")
	r := src.s.Lookup([]byte("k"))
	var snap bytes.Buffer
	if err := r.SM.Snapshot(&snap); err != nil {
		t.Fatal(err)
	}
	st, err := src.h.GroupStatus(r.ID)
	if err != nil {
		t.Fatal(err)
	}
	raftState := storage.NewMem()
	b := raftState.NewBatch()
	defer b.Close()
	b.SetSnapshot(r.ID, raftpb.Snapshot{Data: snap.Bytes(), Metadata: raftpb.SnapshotMetadata{
		Index: st.Applied, Term: st.Term, ConfState: raftpb.ConfState{Voters: []uint64{1}}}})
	b.SetHardState(r.ID, raftpb.HardState{Term: st.Term, Commit: st.Applied})
	b.SetConfState(r.ID, raftpb.ConfState{Voters: []uint64{1}}, st.Applied)
	if err := b.Commit(true); err != nil {
		t.Fatal(err)
	}
	return raftState, r, snap.Bytes()
}

// openOn opens a Store as node 1 over raftState and db (prepared by the
// caller), and runs it until idle.
func openOn(t *testing.T, raftState storage.Store, db *pebble.DB) *node {
	t.Helper()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	h, err := multiraft.NewHost(multiraft.Config{NodeID: 1, Store: raftState, Transport: nopTransport{}, Manual: true, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		h.Stop()
		db.Close()
	})
	n := &node{t: t, h: h, db: db}
	n.env = &testEnv{h: h, store: &n.s, peers: map[[2]uint64]kv.Descriptor{}}
	if n.s, err = Open(Config{NodeID: 1, DB: db, Host: h, Env: n.env, Logger: quiet}); err != nil {
		t.Fatal(err)
	}
	n.drain()
	return n
}

func memDB(t *testing.T) *pebble.DB {
	t.Helper()
	db, err := pebble.Open("", &pebble.Options{FS: vfs.NewMem(), Logger: quietPebble{}})
	if err != nil {
		t.Fatal(err)
	}
	return db
}
