package storage

import (
	"errors"
	"math"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/flotilla/flotilla/internal/testutil"
)

// Fuzz targets of what a node reads back from its raft storage at start:
// conf state records, and whole groups (hard state, conf state, snapshot,
// log) whose records may be torn or corrupt. go test -run '^$' -fuzz
// '^FuzzLoad$' ./storage runs one; tools/fuzz.sh runs them all.

// FuzzConfState: decodeConf against encodeConf.
func FuzzConfState(f *testing.F) {
	cs := raftpb.ConfState{Voters: []uint64{1, 2, 3}, Learners: []uint64{4}, VotersOutgoing: []uint64{1, 2, 5}, AutoLeave: true}
	testutil.AddSeeds(f, encodeConf(nil, &cs, 12), encodeConf(nil, &raftpb.ConfState{}, 0))
	f.Fuzz(func(t *testing.T, v []byte) {
		var cs raftpb.ConfState
		var index uint64
		if err := decodeConf(v, &cs, &index); err != nil {
			return
		}
		enc := encodeConf(nil, &cs, index)
		var cs2 raftpb.ConfState
		var index2 uint64
		if err := decodeConf(enc, &cs2, &index2); err != nil || index2 != index || !testutil.Same(cs2, cs) {
			t.Fatalf("(%v, %d) encodes to %x, which decodes to (%v, %d), %v", cs, index, enc, cs2, index2, err)
		}
	})
}

// loadInput returns the fuzz input FuzzLoad reads as these records: each
// value after a length byte, each entry after the index of its key.
func loadInput(hs, conf, snap []byte, entries map[uint64][]byte) []byte {
	b := []byte{byte(len(hs))}
	b = append(b, hs...)
	b = append(b, byte(len(conf)))
	b = append(b, conf...)
	b = append(b, byte(len(snap)))
	b = append(b, snap...)
	for i := range uint64(len(entries)) + 20 {
		if e, ok := entries[i]; ok {
			b = append(b, 0, 0, 0, 0, 0, 0, 0, byte(i), byte(len(e)))
			b = append(b, e...)
		}
	}
	return b
}

func marshalSeed(f *testing.F, m interface{ Marshal() ([]byte, error) }) []byte {
	b, err := m.Marshal()
	if err != nil {
		f.Fatal(err)
	}
	return b
}

// FuzzLoad: Load of a group whose records hold the fuzz input. It loads
// or fails with ErrCorrupt, and what loads is a state: written back with
// a batch, it loads the same.
func FuzzLoad(f *testing.F) {
	hs := marshalSeed(f, &raftpb.HardState{Term: 3, Vote: 2, Commit: 6})
	cs := encodeConf(nil, &raftpb.ConfState{Voters: []uint64{1, 2, 3}}, 4)
	snap := marshalSeed(f, &raftpb.Snapshot{Data: []byte("state"), Metadata: raftpb.SnapshotMetadata{Index: 4, Term: 2, ConfState: raftpb.ConfState{Voters: []uint64{1, 2, 3}}}})
	entries := map[uint64][]byte{}
	for i := uint64(5); i <= 7; i++ {
		entries[i] = marshalSeed(f, &raftpb.Entry{Term: 3, Index: i, Data: []byte("cmd")})
	}
	testutil.AddSeeds(f, loadInput(hs, cs, snap, entries), loadInput(hs, cs, nil, entries), loadInput(nil, nil, nil, nil))
	// An entry stored under another index than its own, one the snapshot
	// covers.
	f.Add(loadInput(hs, cs, snap, map[uint64][]byte{5: marshalSeed(f, &raftpb.Entry{Term: 1, Index: 3})}))
	f.Fuzz(func(t *testing.T, b []byte) {
		const group = 7
		p, err := OpenPebble("db", PebbleOptions{FS: vfs.NewMem()})
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		in := testutil.NewFuzzInput(b)
		wb := p.db.NewBatch()
		defer wb.Close()
		for _, kind := range []byte{kindHardState, kindConfState, kindSnapshot} {
			if v := in.Bytes(255); v != nil {
				_ = wb.Set(groupKey(kind, group), v, nil)
			}
		}
		for {
			index, v := in.Uint64(), in.Bytes(255)
			if v == nil {
				break
			}
			_ = wb.Set(logKey(group, index), v, nil)
		}
		if err := wb.Commit(pebble.NoSync); err != nil {
			t.Fatal(err)
		}
		st, err := p.Load(group)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Load: %v, want ErrCorrupt", err)
			}
			return
		}
		if n := len(st.Entries); n > 0 && st.Entries[0].Index <= st.Snapshot.Metadata.Index {
			t.Fatalf("loaded entries %d..%d, after the snapshot at %d", st.Entries[0].Index, st.Entries[n-1].Index, st.Snapshot.Metadata.Index)
		}
		// Entries reads the log Load returned back the same.
		if n := len(st.Entries); n > 0 {
			lo, hi := st.Entries[0].Index, st.Entries[n-1].Index+1
			es, err := p.Entries(group, lo, hi, math.MaxUint64)
			if err != nil || !testutil.Same(es, st.Entries) {
				t.Fatalf("Load's entries %d..%d read back as %+v, %v", lo, hi-1, es, err)
			}
		}
		p2, err := OpenPebble("db", PebbleOptions{FS: vfs.NewMem()})
		if err != nil {
			t.Fatal(err)
		}
		defer p2.Close()
		batch := p2.NewBatch()
		defer batch.Close()
		batch.SetHardState(group, st.HardState)
		batch.SetConfState(group, st.ConfState, st.ConfIndex)
		batch.SetSnapshot(group, st.Snapshot)
		batch.Append(group, st.Entries, 0)
		if err := batch.Commit(false); err != nil {
			t.Fatal(err)
		}
		st2, err := p2.Load(group)
		if err != nil || !testutil.Same(st2, st) {
			t.Fatalf("loaded %+v, which written back loads as %+v, %v", st, st2, err)
		}
	})
}
