package kv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// histModel is the state of a range after each revision.
type histModel struct {
	states []map[string]string // states[r]: the keys and values at revision r
	writes []WatchEvent        // every write, in order (Key, Value, Revision, Delete)
}

func newHistModel() *histModel { return &histModel{states: []map[string]string{{}}} }

func (m *histModel) at(rev uint64) map[string]string { return m.states[rev] }

// note records the state as of revision rev (the range's after a command).
func (m *histModel) note(rev uint64, cur map[string]string) {
	for uint64(len(m.states)) <= rev {
		m.states = append(m.states, maps.Clone(cur))
	}
}

// histWorkload applies n random commands to sm (keys k0..k7), through both
// the held and the batch paths, with syncs between, and returns the model.
func histWorkload(t *testing.T, rng *rand.Rand, sm *StateMachine, index *uint64, n int, m *histModel, cur map[string]string) {
	t.Helper()
	key := func() string { return fmt.Sprintf("k%d", rng.IntN(8)) }
	for i := 0; i < n; i++ {
		rev := sm.Revision()
		var cmds []Command
		switch rng.IntN(6) {
		case 0, 1:
			cmds = append(cmds, Command{Op: OpPut, Key: []byte(key()), Value: fmt.Appendf(nil, "v%d", i)})
			if rng.IntN(2) == 0 {
				cmds = append(cmds, Command{Op: OpPut, Key: []byte(key()), Value: fmt.Appendf(nil, "w%d", i)})
			}
		case 2:
			cmds = append(cmds, Command{Op: OpDelete, Key: []byte(key())})
		case 3: // through a batch (CAS is never held)
			k := key()
			cmds = append(cmds, Command{Op: OpCAS, Key: []byte(k), ExpectAbsent: true, Value: []byte("cas")})
		case 4:
			a, b := key(), key()
			if a > b {
				a, b = b, a
			}
			cmds = append(cmds, Command{Op: OpDeleteRange, Key: []byte(a), End: []byte(b + "\x00")})
		case 5:
			a, b := key(), key()
			tx := &Txn{Then: []TxnOp{put(a, fmt.Sprintf("t%d", i))}}
			if a != b {
				tx.Then = append(tx.Then, TxnOp{Kind: TxnDelete, Key: []byte(b)})
			}
			cmds = append(cmds, Command{Op: OpTxn, Txn: tx})
		}
		res := applyResults(t, sm, index, cmds...)
		// Replay on the model: each write that changed anything took the
		// next revision (a transaction's writes share one).
		for j, c := range cmds {
			r := res[j]
			switch c.Op {
			case OpPut:
				rev++
				cur[string(c.Key)] = string(c.Value)
				m.writes = append(m.writes, WatchEvent{KV: KeyValue{Key: c.Key, Value: c.Value, Revision: rev}})
			case OpDelete:
				if r.OK {
					rev++
					delete(cur, string(c.Key))
					m.writes = append(m.writes, WatchEvent{Delete: true, KV: KeyValue{Key: c.Key, Revision: rev}})
				}
			case OpCAS:
				if r.OK {
					rev++
					cur[string(c.Key)] = string(c.Value)
					m.writes = append(m.writes, WatchEvent{KV: KeyValue{Key: c.Key, Value: c.Value, Revision: rev}})
				}
			case OpDeleteRange:
				if r.OK {
					rev++
					for _, k := range slices.Sorted(maps.Keys(cur)) {
						if k >= string(c.Key) && k < string(c.End) {
							delete(cur, k)
							m.writes = append(m.writes, WatchEvent{Delete: true, KV: KeyValue{Key: []byte(k), Revision: rev}})
						}
					}
				}
			case OpTxn:
				wrote := false
				for _, op := range c.Txn.Then {
					if op.Kind == TxnPut {
						wrote = true
						cur[string(op.Key)] = string(op.Value)
						m.writes = append(m.writes, WatchEvent{KV: KeyValue{Key: op.Key, Value: op.Value, Revision: rev + 1}})
					} else if _, ok := cur[string(op.Key)]; ok {
						wrote = true
						delete(cur, string(op.Key))
						m.writes = append(m.writes, WatchEvent{Delete: true, KV: KeyValue{Key: op.Key, Revision: rev + 1}})
					}
				}
				if wrote {
					rev++
				}
			}
			if r.Revision != rev {
				t.Fatalf("command %d (%v): revision %d, model %d", i, c.Op, r.Revision, rev)
			}
			m.note(rev, cur)
		}
		if rng.IntN(10) == 0 {
			if err := sm.Sync(); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// readAt reads every key of the model's key space as of rev, with GetAt
// and ScanAt; the error of the first read that fails.
func readAt(sm *StateMachine, rev uint64) (map[string]string, error) {
	got := map[string]string{}
	d, _ := sm.Descriptor()
	for i := 0; i < 8; i++ {
		k := fmt.Sprintf("k%d", i)
		if !d.Contains([]byte(k)) {
			continue
		}
		q, err := EncodeGetAt([]byte(k), rev)
		if err != nil {
			return nil, err
		}
		out, err := sm.Query(q)
		if err != nil {
			return nil, err
		}
		found, kv, err := DecodeGet(out)
		if err != nil {
			return nil, err
		}
		if found {
			got[k] = string(kv.Value)
		}
	}
	scanned := map[string]string{}
	start := []byte("k")
	if !d.Contains(start) {
		start = d.Start
	}
	for {
		q, err := EncodeScanAt(start, []byte("l"), 3, rev)
		if err != nil {
			return nil, err
		}
		out, err := sm.Query(q)
		if err != nil {
			return nil, err
		}
		kvs, resume, err := DecodeScan(out)
		if err != nil {
			return nil, err
		}
		for _, kv := range kvs {
			scanned[string(kv.Key)] = string(kv.Value)
		}
		if len(resume) == 0 || bytes.Equal(resume, d.End) {
			break
		}
		start = resume
	}
	if !maps.Equal(got, scanned) {
		return nil, fmt.Errorf("at %d get read %v, scan %v", rev, got, scanned)
	}
	return got, nil
}

// checkHistory reads sm at every revision: from its floor on it must match
// the model; below it fail with a CompactedError that names the floor.
func checkHistory(t *testing.T, sm *StateMachine, m *histModel, what string) {
	t.Helper()
	floor := sm.Floor()
	for rev := uint64(1); rev <= sm.Revision(); rev++ {
		got, err := readAt(sm, rev)
		if rev < floor {
			var ce *CompactedError
			if !errors.As(err, &ce) || ce.Floor != floor || ce.Revision != rev {
				t.Fatalf("%s: read at %d below the floor %d: %v, want a CompactedError", what, rev, floor, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: read at %d (floor %d): %v", what, rev, floor, err)
		}
		if want := m.at(rev); !maps.Equal(got, want) {
			t.Fatalf("%s: at revision %d (floor %d) read %v, want %v", what, rev, floor, got, want)
		}
	}
	q, _ := EncodeGetAt([]byte("k0"), sm.Revision()+1)
	if _, err := sm.Query(q); !errors.Is(err, ErrFutureRevision) {
		t.Fatalf("%s: read past the revision: %v, want ErrFutureRevision", what, err)
	}
}

// historyRecords counts the history records in Pebble.
func historyRecords(t *testing.T, db *pebble.DB) int {
	return len(rawKeys(t, db, kindHistory))
}

// TestHistoryReadsAtRevision: after random puts, deletes, delete-ranges,
// CASes and transactions, held and written, a read at any revision from
// the floor on gives the state as of then; with a short retention the
// floor follows the revision and the sweep keeps the records bounded; a
// read below it is refused with the floor named.
func TestHistoryReadsAtRevision(t *testing.T) {
	for _, ret := range []Retention{{Revisions: 1 << 40}, {Revisions: 30}} {
		t.Run(ret.String(), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(1, 2))
			db := openDB(t, vfs.NewMem())
			defer db.Close()
			sm := openRange(t, db, 2, "", "", WithHistory(ret))
			m, cur := newHistModel(), map[string]string{}
			var index uint64
			histWorkload(t, rng, sm, &index, 300, m, cur)
			checkHistory(t, sm, m, "after the writes")
			if err := sm.Sync(); err != nil {
				t.Fatal(err)
			}
			checkHistory(t, sm, m, "after a sync")
			if ret.Revisions == 30 {
				if f := sm.Floor(); f != sm.Revision()-30 {
					t.Fatalf("floor %d at revision %d, want the revision less 30", f, sm.Revision())
				}
				// Sweep it all: some more syncs after small writes.
				for i := 0; i < 40; i++ {
					histWorkload(t, rng, sm, &index, 1, m, cur)
					if err := sm.Sync(); err != nil {
						t.Fatal(err)
					}
				}
				checkHistory(t, sm, m, "after the sweeps")
				// Each key keeps at most its records above the floor and
				// one below it: 8 keys, 30 revisions of up to 8 writes.
				if n, most := historyRecords(t, db), 8+30*8; n > most {
					t.Fatalf("%d history records with a retention of 30 revisions, want at most %d", n, most)
				}
			}
		})
	}
}

// TestHistorySweepNaiveFails: the negative control of the sweep's bound. A
// sweep that never runs (retention without sweeping) leaves every record:
// the bound of TestHistoryReadsAtRevision would fail.
func TestHistorySweepNaiveFails(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	db := openDB(t, vfs.NewMem())
	defer db.Close()
	sm := openRange(t, db, 2, "", "", WithHistory(Retention{Revisions: 1 << 40}))
	m, cur := newHistModel(), map[string]string{}
	var index uint64
	histWorkload(t, rng, sm, &index, 340, m, cur)
	if err := sm.Sync(); err != nil {
		t.Fatal(err)
	}
	if n, most := historyRecords(t, db), 8+30*8; n <= most {
		t.Fatalf("%d records without sweeping: the bound would not tell", n)
	}
}

// TestHistoryAcrossSplitSnapshotRestart: the history of a range moves with
// its keys: after a split each half reads its keys at revisions before
// the split; a snapshot restored elsewhere and a restart read the same.
func TestHistoryAcrossSplitSnapshotRestart(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	fs := vfs.NewMem()
	db := openDB(t, fs)
	sm := openRange(t, db, 2, "", "")
	m, cur := newHistModel(), map[string]string{}
	var index uint64
	histWorkload(t, rng, sm, &index, 200, m, cur)
	_, _, rhs := split(t, sm, &index, "k4", 3)
	for rev := uint64(1); rev <= sm.Revision(); rev++ {
		for i := 0; i < 8; i++ {
			k := fmt.Sprintf("k%d", i)
			owner := sm
			if k >= "k4" {
				owner = rhs
			}
			q, _ := EncodeGetAt([]byte(k), rev)
			out, err := owner.Query(q)
			if err != nil {
				t.Fatalf("after the split, %s at %d: %v", k, rev, err)
			}
			found, kv, _ := DecodeGet(out)
			want, ok := m.at(rev)[k]
			if found != ok || string(kv.Value) != want {
				t.Fatalf("after the split, %s at %d: %v %q, want %v %q", k, rev, found, kv.Value, ok, want)
			}
		}
	}
	// A snapshot of the left half, restored into another node's range.
	var snap bytes.Buffer
	if err := sm.Snapshot(&snap); err != nil {
		t.Fatal(err)
	}
	db2 := openDB(t, vfs.NewMem())
	defer db2.Close()
	other, err := New(db2, 2)
	if err != nil {
		t.Fatal(err)
	}
	if err := other.Restore(bytes.NewReader(snap.Bytes()), index); err != nil {
		t.Fatal(err)
	}
	if other.Floor() != sm.Floor() {
		t.Fatalf("restored floor %d, want %d", other.Floor(), sm.Floor())
	}
	left := &histModel{}
	for _, st := range m.states {
		l := map[string]string{}
		for k, v := range st {
			if k < "k4" {
				l[k] = v
			}
		}
		left.states = append(left.states, l)
	}
	for rev := uint64(1); rev <= other.Revision(); rev++ {
		got, err := readAt(other, rev)
		if err != nil {
			t.Fatal(err)
		}
		if !maps.Equal(got, left.at(rev)) {
			t.Fatalf("restored left half at %d: %v, want %v", rev, got, left.at(rev))
		}
	}
	// A restart reads the same.
	if err := sm.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := rhs.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db = openDB(t, fs)
	defer db.Close()
	again, err := New(db, 3)
	if err != nil {
		t.Fatal(err)
	}
	got, err := readAt(again, 150)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{}
	for k, v := range m.at(150) {
		if k >= "k4" {
			want[k] = v
		}
	}
	if !maps.Equal(got, want) {
		t.Fatalf("right half after a restart, at 150: %v, want %v", got, want)
	}
}

// TestHistoryBackfill: a range that kept no history (retention 0) reads
// only at its revision; opened again with a retention it fills in a record
// for each value, so that reads from then on find the keys written before.
func TestHistoryBackfill(t *testing.T) {
	fs := vfs.NewMem()
	db := openDB(t, fs)
	sm := openRange(t, db, 2, "", "", WithHistory(Retention{}))
	var index uint64
	applyResults(t, sm, &index, Command{Op: OpPut, Key: bs("k1"), Value: bs("a")}, Command{Op: OpPut, Key: bs("k2"), Value: bs("b")})
	if _, err := readAt(sm, 1); !errors.Is(err, ErrCompacted) {
		t.Fatalf("read at 1 without history: %v, want ErrCompacted", err)
	}
	if err := sm.Sync(); err != nil {
		t.Fatal(err)
	}
	if n := historyRecords(t, db); n != 0 {
		t.Fatalf("%d history records with history off", n)
	}
	sm, err := New(db, 2)
	if err != nil {
		t.Fatal(err)
	}
	applyResults(t, sm, &index, Command{Op: OpPut, Key: bs("k1"), Value: bs("c")})
	got, err := readAt(sm, 2)
	if err != nil || !maps.Equal(got, map[string]string{"k1": "a", "k2": "b"}) {
		t.Fatalf("read at 2 after the backfill: %v %v", got, err)
	}
	if _, err := readAt(sm, 1); !errors.Is(err, ErrCompacted) {
		t.Fatalf("read at 1, before the history began: %v, want ErrCompacted", err)
	}
	// History off again: a delete writes no record. Back on, the old
	// records must not bring k2 back.
	if err := sm.Sync(); err != nil {
		t.Fatal(err)
	}
	if sm, err = New(db, 2, WithHistory(NoHistory)); err != nil {
		t.Fatal(err)
	}
	applyResults(t, sm, &index, Command{Op: OpDelete, Key: bs("k2")})
	if err := sm.Sync(); err != nil {
		t.Fatal(err)
	}
	if sm, err = New(db, 2); err != nil {
		t.Fatal(err)
	}
	got, err = readAt(sm, sm.Revision())
	if err != nil || !maps.Equal(got, map[string]string{"k1": "c"}) {
		t.Fatalf("read at %d after history went off, a delete, and on again: %v %v, want k1=c only", sm.Revision(), got, err)
	}
	db.Close()
}

// watchAll collects a watch's events until it has want of them.
func watchAll(t *testing.T, w *Watch, want int) ([]WatchEvent, []byte) {
	t.Helper()
	var evs []WatchEvent
	var token []byte
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for len(evs) < want {
		b, err := w.Next(ctx, 0)
		if err != nil {
			t.Fatalf("after %d of %d events: %v", len(evs), want, err)
		}
		evs = append(evs, b.Events...)
		token = b.Token
	}
	return evs, token
}

// replicaList is a Replicas of fixed state machines.
type replicaList []*StateMachine

func (l replicaList) Covering(start, end []byte) []*StateMachine {
	var out []*StateMachine
	for _, sm := range l {
		if d, ok := sm.Descriptor(); ok && (len(end) == 0 || bytes.Compare(d.Start, end) < 0) && (len(d.End) == 0 || bytes.Compare(start, d.End) < 0) {
			out = append(out, sm)
		}
	}
	slices.SortFunc(out, func(a, b *StateMachine) int {
		da, _ := a.Descriptor()
		db, _ := b.Descriptor()
		return bytes.Compare(da.Start, db.Start)
	})
	return out
}

// sameEvents compares events by key: each key's events in order.
func sameEvents(t *testing.T, got, want []WatchEvent, what string) {
	t.Helper()
	byKey := func(evs []WatchEvent) map[string][]string {
		out := map[string][]string{}
		for _, e := range evs {
			s := fmt.Sprintf("put %s@%d", e.KV.Value, e.KV.Revision)
			if e.Delete {
				s = fmt.Sprintf("delete@%d", e.KV.Revision)
			}
			out[string(e.KV.Key)] = append(out[string(e.KV.Key)], s)
		}
		return out
	}
	g, w := byKey(got), byKey(want)
	for k := range w {
		if !slices.Equal(g[k], w[k]) {
			t.Fatalf("%s: key %s got events %v, want %v", what, k, g[k], w[k])
		}
	}
	for k := range g {
		if _, ok := w[k]; !ok {
			t.Fatalf("%s: events %v of key %s, which had none", what, g[k], k)
		}
	}
}

// TestWatchHistoryFeedSplitResume: a watch from revision 1 gets every write
// once, in order for each key: first from the history, then live from the
// feed; across a split of the range under it; and a new watch from a
// token taken half way gets exactly the rest.
func TestWatchHistoryFeedSplitResume(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	db := openDB(t, vfs.NewMem())
	defer db.Close()
	sm := openRange(t, db, 2, "", "")
	m, cur := newHistModel(), map[string]string{}
	var index uint64
	histWorkload(t, rng, sm, &index, 100, m, cur)
	reps := replicaList{sm}
	w, err := NewWatch(&reps, WatchOptions{Start: bs("k"), End: bs("l"), Revision: 1, Batch: 7})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	evs, _ := watchAll(t, w, len(m.writes))
	sameEvents(t, evs, m.writes, "from the history")
	// Live: more writes, then a split, then writes to both halves.
	histWorkload(t, rng, sm, &index, 50, m, cur)
	more, _ := watchAll(t, w, len(m.writes)-len(evs))
	evs = append(evs, more...)
	sameEvents(t, evs, m.writes, "live")
	_, _, rhs := split(t, sm, &index, "k4", 3)
	reps = append(reps, rhs)
	half := len(m.writes)
	for i := 0; i < 60; i++ {
		k := fmt.Sprintf("k%d", rng.IntN(8))
		owner := sm
		if k >= "k4" {
			owner = rhs
		}
		r := apply(t, owner, index+1, Command{Op: OpPut, Key: bs(k), Value: fmt.Appendf(nil, "s%d", i)})
		index++
		m.writes = append(m.writes, WatchEvent{KV: KeyValue{Key: bs(k), Value: fmt.Appendf(nil, "s%d", i), Revision: r.Revision}})
		if i == 30 {
			more, token := watchAll(t, w, len(m.writes)-len(evs))
			evs = append(evs, more...)
			sameEvents(t, evs, m.writes, "after the split")
			// A second watch resumes from the token.
			w2, err := NewWatch(&reps, WatchOptions{Token: token})
			if err != nil {
				t.Fatal(err)
			}
			defer w2.Close()
			mark := len(m.writes)
			defer func() {
				rest, _ := watchAll(t, w2, len(m.writes)-mark)
				sameEvents(t, rest, m.writes[mark:], "resumed")
			}()
		}
	}
	more, _ = watchAll(t, w, len(m.writes)-len(evs))
	evs = append(evs, more...)
	sameEvents(t, evs, m.writes, "after the split")
	if half == len(m.writes) {
		t.Fatal("no writes after the split")
	}
}

// TestWatchCompactedAndProgress: an idle watch gets progress batches; a
// watch that lags past the history's floor fails with a CompactedError
// naming it (and one that starts below the floor too).
func TestWatchCompactedAndProgress(t *testing.T) {
	db := openDB(t, vfs.NewMem())
	defer db.Close()
	sm := openRange(t, db, 2, "", "", WithHistory(Retention{Revisions: 10}))
	reps := replicaList{sm}
	w, err := NewWatch(&reps, WatchOptions{Start: bs("a"), End: bs("z")})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	b, err := w.Next(context.Background(), 20*time.Millisecond)
	if err != nil || len(b.Events) != 0 || b.Revision != 0 || len(b.Token) == 0 {
		t.Fatalf("idle watch: %+v %v, want a progress batch at revision 0", b, err)
	}
	var index uint64
	for i := 0; i < feedSize+100; i++ {
		apply(t, sm, index+1, Command{Op: OpPut, Key: bs("b"), Value: bs("x")})
		index++
	}
	if _, err := w.Next(context.Background(), 0); !errors.Is(err, ErrCompacted) {
		t.Fatalf("a watch that lags past the floor: %v, want ErrCompacted", err)
	}
	late, err := NewWatch(&reps, WatchOptions{Start: bs("a"), End: bs("z"), Revision: 5})
	if err != nil {
		t.Fatal(err)
	}
	defer late.Close()
	_, err = late.Next(context.Background(), 0)
	var ce *CompactedError
	if !errors.As(err, &ce) || ce.Revision != 5 || ce.Floor != sm.Floor() {
		t.Fatalf("a watch from below the floor: %v, want a CompactedError at 5 naming floor %d", err, sm.Floor())
	}
}

// lockedReplicas is a Replicas that grows while a watch reads it.
type lockedReplicas struct {
	mu   sync.Mutex
	list replicaList
}

func (l *lockedReplicas) Covering(start, end []byte) []*StateMachine {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.list.Covering(start, end)
}

// TestWatchConcurrentWithApplies: a watch reads while its ranges apply, as
// on a node (the worker applies, the watch's goroutine reads): writes, a
// split, writes to both halves, a restore of the right half from a
// snapshot. It gets every write once, in order for each key. (Run with
// -race: the feed, the held writes and the restore lock are shared.)
func TestWatchConcurrentWithApplies(t *testing.T) {
	db := openDB(t, vfs.NewMem())
	defer db.Close()
	sm := openRange(t, db, 2, "", "")
	reps := &lockedReplicas{list: replicaList{sm}}
	w, err := NewWatch(reps, WatchOptions{Start: bs("k"), End: bs("l"), Revision: 1, Batch: 5})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	m := newHistModel()
	cur := map[string]string{}
	var index uint64
	done := make(chan struct{})
	go func() { // the worker
		defer close(done)
		rng := rand.New(rand.NewPCG(7, 8))
		histWorkload(t, rng, sm, &index, 150, m, cur)
		_, _, rhs := split(t, sm, &index, "k4", 3)
		reps.mu.Lock()
		reps.list = append(reps.list, rhs)
		reps.mu.Unlock()
		for i := 0; i < 150; i++ {
			k := fmt.Sprintf("k%d", rng.IntN(8))
			owner := sm
			if k >= "k4" {
				owner = rhs
			}
			r := apply(t, owner, index+1, Command{Op: OpPut, Key: bs(k), Value: fmt.Appendf(nil, "c%d", i)})
			index++
			m.writes = append(m.writes, WatchEvent{KV: KeyValue{Key: bs(k), Value: fmt.Appendf(nil, "c%d", i), Revision: r.Revision}})
			if i == 75 {
				var snap bytes.Buffer
				if err := rhs.Snapshot(&snap); err != nil {
					t.Error(err)
					return
				}
				if err := rhs.Restore(bytes.NewReader(snap.Bytes()), rhs.AppliedIndex()); err != nil {
					t.Error(err)
					return
				}
			}
		}
	}()
	var got []WatchEvent
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for {
		select {
		case <-done:
			// The writes are done: read to the end.
			more, _ := watchAll(t, w, len(m.writes)-len(got))
			got = append(got, more...)
			sameEvents(t, got, m.writes, "concurrent")
			return
		default:
		}
		b, err := w.Next(ctx, 5*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, b.Events...)
	}
}

// TestWatchPieceStaleAfterOthersRead: when a range changes under one piece
// of a watch after the pieces before it were read (here, a restore of the
// right half while the left half's writes are being read), the left
// half's events are still delivered: the watch does not move past them.
func TestWatchPieceStaleAfterOthersRead(t *testing.T) {
	db := openDB(t, vfs.NewMem())
	defer db.Close()
	sm := openRange(t, db, 2, "", "")
	var index uint64
	_, _, rhs := split(t, sm, &index, "k4", 3)
	reps := replicaList{sm, rhs}
	w, err := NewWatch(&reps, WatchOptions{Start: bs("k"), End: bs("l")})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := w.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	var want []WatchEvent
	for i, k := range []string{"k1", "k2", "k5"} {
		owner := sm
		if k >= "k4" {
			owner = rhs
		}
		r := apply(t, owner, index+1, Command{Op: OpPut, Key: bs(k), Value: fmt.Appendf(nil, "v%d", i)})
		index++
		want = append(want, WatchEvent{KV: KeyValue{Key: bs(k), Value: fmt.Appendf(nil, "v%d", i), Revision: r.Revision}})
	}
	var snap bytes.Buffer
	if err := rhs.Snapshot(&snap); err != nil {
		t.Fatal(err)
	}
	restored := false
	testHookPieceRead = func(i int) {
		if i == 0 && !restored {
			restored = true
			if err := rhs.Restore(bytes.NewReader(snap.Bytes()), rhs.AppliedIndex()); err != nil {
				t.Error(err)
			}
		}
	}
	defer func() { testHookPieceRead = nil }()
	var got []WatchEvent
	for i := 0; i < 10; i++ {
		b, err := w.Poll()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, b.Events...)
	}
	if !restored {
		t.Fatal("the hook never restored the right half: the test tells nothing")
	}
	sameEvents(t, got, want, "a piece stale after the one before it was read")
}

// TestHistoryRetentionByAge: with a retention of one minute, the floor is
// the revision of a minute ago (to within a sixteenth of it: the marks'
// spacing), and reads from there on still see the past.
func TestHistoryRetentionByAge(t *testing.T) {
	now := time.Unix(1000, 0)
	db := openDB(t, vfs.NewMem())
	defer db.Close()
	sm := openRange(t, db, 2, "", "", WithHistory(Retention{Age: time.Minute}), WithClock(func() time.Time { return now }))
	var index uint64
	revAt := map[int]uint64{} // second → revision after that second's put
	for sec := 0; sec <= 180; sec++ {
		r := apply(t, sm, index+1, Command{Op: OpPut, Key: bs("k0"), Value: fmt.Appendf(nil, "s%d", sec)})
		index++
		revAt[sec] = r.Revision
		now = now.Add(time.Second)
	}
	// At second 180 the floor is the revision of a mark at most 60+4
	// seconds old and at least 60: between the puts of seconds 116 and 120.
	f := sm.Floor()
	if f < revAt[116] || f > revAt[120] {
		t.Fatalf("floor %d with a one-minute retention at second 180; want the revision of second 116..120 (%d..%d)", f, revAt[116], revAt[120])
	}
	got, err := readAt(sm, revAt[121])
	if err != nil || got["k0"] != "s121" {
		t.Fatalf("read at second 121's revision: %v %v", got, err)
	}
	if _, err := readAt(sm, revAt[100]); !errors.Is(err, ErrCompacted) {
		t.Fatalf("read at second 100's revision, past the retention: %v, want ErrCompacted", err)
	}
	if _, err := ParseRetention("1h"); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"5ms", "-3", "soon", ""} {
		if _, err := ParseRetention(bad); !errors.Is(err, ErrInvalid) {
			t.Fatalf("ParseRetention(%q): %v, want ErrInvalid", bad, err)
		}
	}
	if r, err := ParseRetention("0"); err != nil || !r.Off() {
		t.Fatalf("ParseRetention(0): %v %v, want no history", r, err)
	}
}
