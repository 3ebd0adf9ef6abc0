package storage_test

import (
	"fmt"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/flotilla/flotilla/storage"
)

func stores(t *testing.T) map[string]storage.Store {
	p, err := storage.OpenPebble("db", storage.PebbleOptions{FS: vfs.NewMem()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return map[string]storage.Store{"pebble": p, "mem": storage.NewMem()}
}

func ents(lo, hi, term uint64) []raftpb.Entry {
	var out []raftpb.Entry
	for i := lo; i <= hi; i++ {
		out = append(out, raftpb.Entry{Index: i, Term: term, Data: []byte(fmt.Sprintf("e%d.%d", i, term))})
	}
	return out
}

func indexes(es []raftpb.Entry) string {
	s := ""
	for _, e := range es {
		s += fmt.Sprintf("%d/%d ", e.Index, e.Term)
	}
	return s
}

func commit(t *testing.T, b storage.Batch) {
	t.Helper()
	if err := b.Commit(true); err != nil {
		t.Fatal(err)
	}
}

func TestStoreRoundTrip(t *testing.T) {
	for name, s := range stores(t) {
		t.Run(name, func(t *testing.T) {
			b := s.NewBatch()
			defer b.Close()
			b.SetConfState(7, raftpb.ConfState{Voters: []uint64{1, 2, 3}}, 0)
			b.Append(7, ents(1, 10, 1), 0)
			b.SetHardState(7, raftpb.HardState{Term: 1, Vote: 1, Commit: 8})
			b.SetConfState(9, raftpb.ConfState{Voters: []uint64{1}}, 0)
			b.Append(9, ents(1, 3, 2), 0)
			commit(t, b)

			// A conflicting append at 6 (new term) replaces 6..10.
			b.Append(7, ents(6, 7, 2), 10)
			commit(t, b)
			st, err := s.Load(7)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := indexes(st.Entries), "1/1 2/1 3/1 4/1 5/1 6/2 7/2 "; got != want {
				t.Fatalf("entries %q, want %q", got, want)
			}
			if st.HardState.Commit != 8 || st.HardState.Vote != 1 {
				t.Fatalf("hard state %+v", st.HardState)
			}
			if len(st.ConfState.Voters) != 3 {
				t.Fatalf("conf state %+v", st.ConfState)
			}

			// Truncation and snapshots drop the log below them.
			b.Truncate(7, 3)
			commit(t, b)
			st, _ = s.Load(7)
			if got, want := indexes(st.Entries), "3/1 4/1 5/1 6/2 7/2 "; got != want {
				t.Fatalf("after truncate: %q, want %q", got, want)
			}
			b.SetSnapshot(7, raftpb.Snapshot{Data: []byte("state"), Metadata: raftpb.SnapshotMetadata{
				Index: 5, Term: 1, ConfState: raftpb.ConfState{Voters: []uint64{1, 2}}}})
			commit(t, b)
			st, _ = s.Load(7)
			if got, want := indexes(st.Entries), "6/2 7/2 "; got != want {
				t.Fatalf("after snapshot: %q, want %q", got, want)
			}
			if string(st.Snapshot.Data) != "state" || st.Snapshot.Metadata.Index != 5 {
				t.Fatalf("snapshot %+v", st.Snapshot)
			}

			groups, err := s.Groups()
			if err != nil || fmt.Sprint(groups) != "[7 9]" {
				t.Fatalf("groups %v, %v", groups, err)
			}
			b.DeleteGroup(9)
			commit(t, b)
			groups, _ = s.Groups()
			if fmt.Sprint(groups) != "[7]" {
				t.Fatalf("groups after delete %v", groups)
			}
			if st, _ := s.Load(9); len(st.Entries) != 0 {
				t.Fatalf("deleted group still has entries %q", indexes(st.Entries))
			}
			// Batches copy their input.
			es := ents(8, 8, 2)
			b.Append(7, es, 7)
			es[0].Data[0] = 'X'
			commit(t, b)
			st, _ = s.Load(7)
			if d := st.Entries[len(st.Entries)-1].Data; string(d) != "e8.2" {
				t.Fatalf("batch kept a reference to the caller's buffer: %q", d)
			}
		})
	}
}

// Mem.Crash loses exactly the writes that no synced commit covered.
func TestMemCrashLosesUnsynced(t *testing.T) {
	m := storage.NewMem()
	b := m.NewBatch()
	b.SetConfState(1, raftpb.ConfState{Voters: []uint64{1}}, 0)
	b.Append(1, ents(1, 3, 1), 0)
	if err := b.Commit(true); err != nil {
		t.Fatal(err)
	}
	b.Append(1, ents(4, 6, 1), 3)
	if err := b.Commit(false); err != nil {
		t.Fatal(err)
	}
	if st, _ := m.Load(1); len(st.Entries) != 6 {
		t.Fatalf("before crash: %d entries", len(st.Entries))
	}
	m.Crash()
	if st, _ := m.Load(1); indexes(st.Entries) != "1/1 2/1 3/1 " {
		t.Fatalf("after crash: %q", indexes(st.Entries))
	}
	// An unsynced write followed by a synced one is durable.
	b.Append(1, ents(4, 4, 1), 3)
	_ = b.Commit(false)
	b.SetHardState(1, raftpb.HardState{Term: 1, Commit: 4})
	_ = b.Commit(true)
	m.Crash()
	if st, _ := m.Load(1); len(st.Entries) != 4 || st.HardState.Commit != 4 {
		t.Fatalf("after second crash: %q %+v", indexes(st.Entries), st.HardState)
	}
}

// Pebble's data survives a close and reopen.
func TestPebbleReopen(t *testing.T) {
	fs := vfs.NewMem()
	p, err := storage.OpenPebble("db", storage.PebbleOptions{FS: fs})
	if err != nil {
		t.Fatal(err)
	}
	b := p.NewBatch()
	b.SetConfState(3, raftpb.ConfState{Voters: []uint64{1, 2, 3}}, 0)
	b.Append(3, ents(1, 100, 4), 0)
	commit(t, b)
	b.Close()
	p.Close()
	p, err = storage.OpenPebble("db", storage.PebbleOptions{FS: fs})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	st, err := p.Load(3)
	if err != nil || len(st.Entries) != 100 || st.Entries[99].Term != 4 {
		t.Fatalf("after reopen: %d entries, %v", len(st.Entries), err)
	}
}
