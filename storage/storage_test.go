package storage_test

import (
	"errors"
	"fmt"
	"math"
	"strings"
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
			// A snapshot replaces the whole log; what is appended after it
			// in the same batch stays.
			b.SetSnapshot(7, raftpb.Snapshot{Data: []byte("state"), Metadata: raftpb.SnapshotMetadata{
				Index: 5, Term: 1, ConfState: raftpb.ConfState{Voters: []uint64{1, 2}}}})
			commit(t, b)
			st, _ = s.Load(7)
			if got := indexes(st.Entries); got != "" {
				t.Fatalf("after snapshot: %q, want no entry (the log past it goes too)", got)
			}
			b.SetSnapshot(7, raftpb.Snapshot{Data: []byte("state"), Metadata: raftpb.SnapshotMetadata{
				Index: 5, Term: 1, ConfState: raftpb.ConfState{Voters: []uint64{1, 2}}}})
			b.Append(7, []raftpb.Entry{{Index: 6, Term: 2}, {Index: 7, Term: 2}}, 5)
			commit(t, b)
			st, _ = s.Load(7)
			if got, want := indexes(st.Entries), "6/2 7/2 "; got != want {
				t.Fatalf("after snapshot and append: %q, want %q", got, want)
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

// entriesOf reads [lo, hi) of group with no size limit and renders it as
// indexes does, or the error.
func entriesOf(s storage.Store, group, lo, hi uint64) string {
	es, err := s.Entries(group, lo, hi, math.MaxUint64)
	if err != nil {
		return "error: " + err.Error()
	}
	return indexes(es)
}

// Entries reads back what batches wrote, by index range and size, and
// fails with ErrEntryMissing where a truncation, a snapshot, a conflicting
// append or a group's deletion removed an entry.
func TestStoreEntries(t *testing.T) {
	for name, s := range stores(t) {
		t.Run(name, func(t *testing.T) {
			b := s.NewBatch()
			defer b.Close()
			b.Append(7, ents(1, 10, 1), 0)
			b.Append(9, ents(1, 3, 2), 0)
			commit(t, b)

			expect := func(lo, hi uint64, want string) {
				t.Helper()
				if got := entriesOf(s, 7, lo, hi); got != want {
					t.Fatalf("entries [%d,%d): %q, want %q", lo, hi, got, want)
				}
			}
			missing := func(group, lo, hi, at uint64) {
				t.Helper()
				es, err := s.Entries(group, lo, hi, math.MaxUint64)
				if !errors.Is(err, storage.ErrEntryMissing) || es != nil {
					t.Fatalf("group %d entries [%d,%d): %q, %v; want ErrEntryMissing", group, lo, hi, indexes(es), err)
				}
				if want := fmt.Sprintf("group %d index %d", group, at); !strings.Contains(err.Error(), want) {
					t.Fatalf("error %q does not name %q", err, want)
				}
			}
			expect(1, 11, "1/1 2/1 3/1 4/1 5/1 6/1 7/1 8/1 9/1 10/1 ")
			expect(3, 6, "3/1 4/1 5/1 ")
			expect(4, 4, "")
			expect(5, 2, "")
			missing(7, 9, 12, 11)
			missing(7, 0, 2, 0)
			// Groups do not mix: group 9 has 3 entries, group 7 ten.
			if got := entriesOf(s, 9, 1, 4); got != "1/2 2/2 3/2 " {
				t.Fatalf("group 9: %q", got)
			}
			missing(9, 2, 5, 4)
			missing(8, 1, 2, 1)

			// The size limit: the first entry always, then what fits.
			es := ents(1, 10, 1)
			sz := func(i int) uint64 { return uint64(es[i-1].Size()) }
			for _, c := range []struct {
				max  uint64
				want string
			}{
				{0, "1/1 "},
				{sz(1) - 1, "1/1 "},
				{sz(1) + sz(2) - 1, "1/1 "},
				{sz(1) + sz(2), "1/1 2/1 "},
				{sz(1) + sz(2) + sz(3), "1/1 2/1 3/1 "},
			} {
				got, err := s.Entries(7, 1, 11, c.max)
				if err != nil || indexes(got) != c.want {
					t.Fatalf("maxBytes %d: %q, %v; want %q", c.max, indexes(got), err, c.want)
				}
			}
			// The limit is not an excuse for a hole: a read fails on the
			// first index without an entry before one that does not fit.
			missing(7, 10, 12, 11)
			if got, err := s.Entries(7, 10, 12, 0); !errors.Is(err, storage.ErrEntryMissing) {
				t.Fatalf("size-limited read before a hole: %q, %v", indexes(got), err)
			}

			// The caller owns what it gets.
			got, _ := s.Entries(7, 2, 3, math.MaxUint64)
			got[0].Data[0] = 'X'
			expectData := func(i uint64, want string) {
				t.Helper()
				got, err := s.Entries(7, i, i+1, math.MaxUint64)
				if err != nil || string(got[0].Data) != want {
					t.Fatalf("entry %d: %q, %v; want %q", i, indexes(got), err, want)
				}
			}
			expectData(2, "e2.1")

			// A conflicting append at 6 (new term) replaces 6..10.
			b.Append(7, ents(6, 7, 2), 10)
			commit(t, b)
			expect(4, 8, "4/1 5/1 6/2 7/2 ")
			expectData(6, "e6.2")
			missing(7, 6, 9, 8)

			// Truncation.
			b.Truncate(7, 3)
			commit(t, b)
			missing(7, 1, 5, 1)
			missing(7, 2, 5, 2)
			expect(3, 8, "3/1 4/1 5/1 6/2 7/2 ")

			// A snapshot deletes the whole log (raft drops a conflicting
			// tail past it too); what the same batch appends after it
			// stays. One that keeps the log leaves it to a truncation.
			b.SetSnapshot(7, raftpb.Snapshot{Metadata: raftpb.SnapshotMetadata{Index: 4, Term: 1}})
			commit(t, b)
			missing(7, 3, 6, 3)
			missing(7, 5, 8, 5)
			b.SetSnapshot(7, raftpb.Snapshot{Metadata: raftpb.SnapshotMetadata{Index: 4, Term: 1}})
			b.Append(7, ents(5, 5, 1), 4)
			b.Append(7, ents(6, 7, 2), 5)
			commit(t, b)
			missing(7, 4, 6, 4)
			expect(5, 8, "5/1 6/2 7/2 ")
			b.Append(7, ents(8, 9, 2), 7)
			b.SetSnapshotKeepLog(7, raftpb.Snapshot{Data: []byte("kept"), Metadata: raftpb.SnapshotMetadata{Index: 7, Term: 2}})
			commit(t, b)
			expect(5, 10, "5/1 6/2 7/2 8/2 9/2 ")
			st, err := s.Load(7)
			if err != nil || indexes(st.Entries) != "8/2 9/2 " || string(st.Snapshot.Data) != "kept" {
				t.Fatalf("load after a snapshot that keeps the log: %q %q, %v", indexes(st.Entries), st.Snapshot.Data, err)
			}
			b.Truncate(7, 7)
			commit(t, b)
			missing(7, 5, 10, 5)
			expect(7, 10, "7/2 8/2 9/2 ")

			b.DeleteGroup(7)
			commit(t, b)
			missing(7, 8, 9, 8)
			if got := entriesOf(s, 9, 1, 4); got != "1/2 2/2 3/2 " {
				t.Fatalf("group 9 after group 7's deletion: %q", got)
			}
		})
	}
}
