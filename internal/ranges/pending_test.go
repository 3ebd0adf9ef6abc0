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
	b.SetSnapshot(r.ID, raftpb.Snapshot{Data: snap.Bytes(), Metadata: raftpb.SnapshotMetadata{
		Index: st.Applied, Term: st.Term, ConfState: raftpb.ConfState{Voters: []uint64{1}}}})
	b.SetHardState(r.ID, raftpb.HardState{Term: st.Term, Commit: st.Applied})
	b.SetConfState(r.ID, raftpb.ConfState{Voters: []uint64{1}}, st.Applied)
	if err := b.Commit(true); err != nil {
		t.Fatal(err)
	}
	b.Close()
	db, err := pebble.Open("", &pebble.Options{FS: vfs.NewMem(), Logger: quietPebble{}})
	if err != nil {
		t.Fatal(err)
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	h, err := multiraft.NewHost(multiraft.Config{NodeID: 1, Store: raftState, Transport: nopTransport{}, Manual: true, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		h.Stop()
		db.Close()
	})
	if ds, _ := kv.LocalDescriptors(db); len(ds) != 0 {
		t.Fatalf("the database holds descriptors: %v", ds)
	}
	n := &node{t: t, h: h, db: db}
	n.env = &testEnv{h: h, store: &n.s, peers: map[[2]uint64]kv.Descriptor{}}
	if n.s, err = Open(Config{NodeID: 1, DB: db, Host: h, Env: n.env, Logger: quiet}); err != nil {
		t.Fatal(err)
	}
	n.drain()
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
	if !bytes.Equal(again.Bytes(), snap.Bytes()) {
		t.Fatal("the restored range's state differs from the snapshot's")
	}
}
