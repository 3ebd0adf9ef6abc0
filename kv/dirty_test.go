package kv

import (
	"bytes"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/flotilla/flotilla/multiraft"
)

// scan lists up to limit keys of [start, end) from sm ("" end: to the end
// of the keyspace), and where to resume.
func scan(t *testing.T, sm *StateMachine, start, end string, limit int) ([]KeyValue, []byte) {
	t.Helper()
	q, err := EncodeScan(bs(start), bs(end), limit)
	if err != nil {
		t.Fatal(err)
	}
	out, err := sm.Query(q)
	if err != nil {
		t.Fatal(err)
	}
	kvs, resume, err := DecodeScan(out)
	if err != nil {
		t.Fatal(err)
	}
	return kvs, resume
}

// scanPrefix lists up to limit keys with prefix from sm.
func scanPrefix(t *testing.T, sm *StateMachine, prefix string, limit int) ([]KeyValue, []byte) {
	t.Helper()
	return scan(t, sm, prefix, string(PrefixEnd([]byte(prefix))), limit)
}

// keysOf returns the keys of kvs, for messages and comparisons.
func keysOf(kvs []KeyValue) []string {
	out := make([]string, 0, len(kvs))
	for _, kv := range kvs {
		out = append(out, string(kv.Key))
	}
	return out
}

// applyAll applies cmds in one Apply, at the indexes after *index.
func applyAll(t *testing.T, sm *StateMachine, index *uint64, cmds ...Command) {
	t.Helper()
	mcs := make([]multiraft.Command, len(cmds))
	for i, c := range cmds {
		b, err := c.Encode()
		if err != nil {
			t.Fatal(err)
		}
		*index++
		mcs[i] = multiraft.Command{Index: *index, Data: b}
	}
	if err := sm.Apply(mcs); err != nil {
		t.Fatal(err)
	}
}

// TestHeldWritesMatchModel drives random puts, deletes, CAS (which writes
// the held puts out first) and syncs, checking gets and scans against a
// map after every step, so that reads merge held writes with Pebble's.
func TestHeldWritesMatchModel(t *testing.T) {
	fs := vfs.NewMem()
	db := openDB(t, fs)
	defer db.Close()
	sm := openRange(t, db, 3, "", "")
	rng := rand.New(rand.NewPCG(1, 2))
	model := map[string]string{}
	keys := []string{"a", "ab", "abc", "b", "ba", "c", "cc", "d"}
	var index uint64
	held := 0
	for step := 0; step < 2000; step++ {
		// One Apply of 1 to 4 commands, so a batch may write a key twice.
		var cmds []Command
		next := maps.Clone(model)
		for range 1 + rng.IntN(4) {
			k := keys[rng.IntN(len(keys))]
			var c Command
			switch r := rng.IntN(10); {
			case r < 6:
				v := fmt.Sprintf("v%d", step)
				c = Command{Op: OpPut, Key: []byte(k), Value: []byte(v)}
				next[k] = v
			case r < 9:
				c = Command{Op: OpDelete, Key: []byte(k)}
				delete(next, k)
			default:
				v := fmt.Sprintf("cas%d", step)
				c = Command{Op: OpCAS, Key: []byte(k), ExpectAbsent: true, Value: []byte(v)}
				if _, ok := next[k]; !ok {
					next[k] = v
				}
			}
			cmds = append(cmds, c)
		}
		applyAll(t, sm, &index, cmds...)
		model = next
		if !sm.dirty.empty() {
			held++
		}
		if rng.IntN(50) == 0 {
			if err := sm.Sync(); err != nil {
				t.Fatal(err)
			}
		}
		for _, k := range keys {
			found, kv := get(t, sm, k)
			if v, ok := model[k]; found != ok || (ok && string(kv.Value) != v) {
				t.Fatalf("step %d: get %q = %v %q, model %v %q", step, k, found, kv.Value, ok, v)
			}
		}
		for _, prefix := range []string{"", "a", "b", "c", "x"} {
			limit := 1 + rng.IntN(len(keys)+1)
			kvs, resume := scanPrefix(t, sm, prefix, limit)
			var want []string
			for k := range model {
				if len(k) >= len(prefix) && k[:len(prefix)] == prefix {
					want = append(want, k)
				}
			}
			slices.Sort(want)
			wantMore := len(want) > limit
			want = want[:min(limit, len(want))]
			var got []string
			for _, kv := range kvs {
				got = append(got, string(kv.Key))
				if string(kv.Value) != model[string(kv.Key)] {
					t.Fatalf("step %d: scan %q: %q = %q, model %q", step, prefix, kv.Key, kv.Value, model[string(kv.Key)])
				}
			}
			// The range holds the whole keyspace: the scan resumes only
			// when the limit cut it short, right after its last key.
			var wantResume []byte
			if wantMore {
				wantResume = append([]byte(want[len(want)-1]), 0)
			}
			if !slices.Equal(got, want) || !bytes.Equal(resume, wantResume) {
				t.Fatalf("step %d: scan %q limit %d = %q resume %q, want %q resume %q", step, prefix, limit, got, resume, want, wantResume)
			}
		}
	}
	if held < 1000 {
		t.Fatalf("writes were held after only %d of 2000 steps: the test does not cover merging", held)
	}
	// What a sync wrote is what a restart reads.
	if err := sm.Sync(); err != nil {
		t.Fatal(err)
	}
	again, err := New(db, 3)
	if err != nil {
		t.Fatal(err)
	}
	if again.AppliedIndex() != index || again.Revision() != sm.Revision() {
		t.Fatalf("reopened at applied %d revision %d, want %d and %d", again.AppliedIndex(), again.Revision(), index, sm.Revision())
	}
	var a, b bytes.Buffer
	if err := sm.Snapshot(&a); err != nil {
		t.Fatal(err)
	}
	if err := again.Snapshot(&b); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("reopened state differs from the synced one")
	}
}

// TestHeldWritesVisibleAtOnce applies, in each Apply, the same value to two
// keys, and writes the held writes out often, while readers scan: a scan
// must never see the two keys differ, whether they are held, in Pebble, or
// one of each during a write-out.
func TestHeldWritesVisibleAtOnce(t *testing.T) {
	fs := vfs.NewMem()
	db := openDB(t, fs)
	defer db.Close()
	sm := openRange(t, db, 1, "", "")
	var stop atomic.Bool
	var wg sync.WaitGroup
	var scans atomic.Int64
	errs := make(chan error, 2)
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				q, _ := EncodeScan(nil, nil, 10)
				out, err := sm.Query(q)
				if err != nil {
					errs <- err
					return
				}
				kvs, _, err := DecodeScan(out)
				if err != nil {
					errs <- err
					return
				}
				if len(kvs) == 2 && !bytes.Equal(kvs[0].Value, kvs[1].Value) {
					errs <- fmt.Errorf("scan saw %q=%q next to %q=%q", kvs[0].Key, kvs[0].Value, kvs[1].Key, kvs[1].Value)
					return
				}
				scans.Add(1)
			}
		}()
	}
	var index uint64
	for i := 0; i < 3000 && len(errs) == 0; i++ {
		v := []byte(fmt.Sprint(i))
		applyAll(t, sm, &index, Command{Op: OpPut, Key: []byte("x"), Value: v}, Command{Op: OpPut, Key: []byte("y"), Value: v})
		if i%3 == 0 {
			if err := sm.Sync(); err != nil {
				t.Fatal(err)
			}
		}
	}
	stop.Store(true)
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	if scans.Load() == 0 {
		t.Fatal("no scan ran")
	}
}

// TestHoldBudgetSharedByGroups: ranges sharing a budget (and a database,
// with disjoint spans) never leave it spent after an Apply (the range that
// spends it writes out what it holds), and a budget of 0 holds nothing.
func TestHoldBudgetSharedByGroups(t *testing.T) {
	fs := vfs.NewMem()
	db := openDB(t, fs)
	defer db.Close()
	const limit = 4000
	budget := NewHoldBudget(limit)
	// Range g serves the keys that start with prefix[g-1].
	spans := [][2]string{{"", "b"}, {"b", "c"}, {"c", "x"}}
	prefix := []string{"a", "b", "c"}
	var sms []*StateMachine
	for g := uint64(1); g <= 3; g++ {
		sms = append(sms, openRange(t, db, g, spans[g-1][0], spans[g-1][1], WithHoldBudget(budget)))
	}
	writeOuts := 0
	for i := 0; i < 300; i++ {
		sm := sms[i%3]
		before := sm.dirty.bytes
		r := apply(t, sm, uint64(i/3+1), Command{Op: OpPut, Key: []byte(fmt.Sprint(prefix[i%3], "k", i)), Value: bytes.Repeat([]byte{'v'}, 100)})
		if !r.OK {
			t.Fatalf("put %d: %+v", i, r)
		}
		if sm.dirty.bytes < before {
			writeOuts++
		}
		if used := budget.Used(); used > limit || used < 0 {
			t.Fatalf("after put %d the ranges hold %d bytes, budget %d", i, used, limit)
		}
	}
	if writeOuts == 0 {
		t.Fatal("the budget never made a range write out")
	}
	for _, sm := range sms {
		if err := sm.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	if used := budget.Used(); used != 0 {
		t.Fatalf("%d bytes still accounted after every range synced", used)
	}
	// Each range sees its 100 keys, and no other range's.
	for g, sm := range sms {
		if kvs, _ := scan(t, sm, spans[g][0], "", MaxScanLimit); len(kvs) != 100 {
			t.Fatalf("range %d scans %d keys, want its 100", g+1, len(kvs))
		}
	}

	off := openRange(t, db, 9, "x", "", WithHoldBudget(NewHoldBudget(0)))
	apply(t, off, 1, Command{Op: OpPut, Key: []byte("xk"), Value: []byte("v")})
	if !off.dirty.empty() {
		t.Fatal("a budget of 0 held a write")
	}
	if again, err := New(db, 9); err != nil || again.AppliedIndex() != 1 {
		t.Fatalf("with a budget of 0 the write is not in Pebble: applied %d, %v", again.AppliedIndex(), err)
	}
}
