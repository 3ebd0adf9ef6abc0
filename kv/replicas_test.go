package kv

import (
	"fmt"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/flotilla/flotilla/multiraft"
)

// A membership change rewrites the descriptor's replicas in the same
// apply, at the next generation, durably; a change planned on another
// generation, one that adds or removes a replica of a frozen range, and a
// voter added as a learner are refused and change nothing; a replay of
// the last change after a crash gets the answer the change first got.
func TestApplyMembership(t *testing.T) {
	db := openDB(t, vfs.NewMem())
	defer db.Close()
	sm := openRange(t, db, 5, "a", "m")
	var index uint64
	applyResults(t, sm, &index, Command{Op: OpPut, Key: []byte("b"), Value: []byte("1")})
	// apply applies a change, then replays it (the engine persists the
	// configuration right after a change, so a crash leaves the last one
	// to replay): the replay must give the first answer.
	apply := func(kind multiraft.ChangeKind, node uint64, data []byte) bool {
		t.Helper()
		index++
		ch := multiraft.Change{Kind: kind, Node: node}
		ok, err := sm.ApplyMembership(index, ch, data)
		if err != nil {
			t.Fatal(err)
		}
		again, err := sm.ApplyMembership(index, ch, data)
		if err != nil || again != ok {
			t.Fatalf("%v of node %d at %d: %v, replayed: %v %v", kind, node, index, ok, again, err)
		}
		return ok
	}
	state := func() string {
		d, _ := sm.Descriptor()
		return fmt.Sprintf("%v learners %v g%d applied %d", d.Replicas, d.Learners, d.Generation, sm.AppliedIndex())
	}
	want := func(s string) {
		t.Helper()
		if got := state(); got != s {
			t.Fatalf("state %q, want %q", got, s)
		}
	}
	if !apply(multiraft.AddLearner, 4, EncodeChangePlan(1)) {
		t.Fatal("add learner refused")
	}
	want("[1 4] learners [4] g2 applied 2")
	if apply(multiraft.RemoveMember, 1, EncodeChangePlan(1)) {
		t.Fatal("a change planned on generation 1 applied at generation 2")
	}
	want("[1 4] learners [4] g2 applied 3")
	if !apply(multiraft.PromoteLearner, 4, EncodeChangePlan(2)) {
		t.Fatal("promotion refused")
	}
	want("[1 4] learners [] g3 applied 4")
	// A voter added as a learner: a demotion, refused (and so replayed).
	if apply(multiraft.AddLearner, 4, nil) {
		t.Fatal("a voter added as a learner")
	}
	want("[1 4] learners [] g3 applied 5")
	// A range with a learner neither splits nor is frozen: checked below
	// on a second range. Frozen for a merge: no replica comes or goes.
	d, _ := sm.Descriptor()
	index++
	if err := sm.Apply([]multiraft.Command{{Index: index, Data: must(FreezeCommand(d, 3).Encode())}}); err != nil {
		t.Fatal(err)
	}
	if _, _, frozen := sm.Frozen(); !frozen {
		t.Fatal("not frozen")
	}
	if apply(multiraft.AddLearner, 6, nil) {
		t.Fatal("a replica added to a frozen range")
	}
	if !apply(multiraft.PromoteLearner, 4, nil) {
		t.Fatal("a voter's promotion (no change) refused while frozen")
	}
	want("[1 4] learners [] g3 applied 8")
	// Durable: a reopened replica has the descriptor and the write.
	sm2, err := New(db, 5)
	if err != nil {
		t.Fatal(err)
	}
	d2, _ := sm2.Descriptor()
	if fmt.Sprint(d2.Replicas, d2.Learners, d2.Generation, sm2.AppliedIndex()) != "[1 4] [] 3 8" {
		t.Fatalf("reopened: %v g%d applied %d", d2.Replicas, d2.Generation, sm2.AppliedIndex())
	}
	if found, _, v, err := sm2.get([]byte("b")); err != nil || !found || string(v) != "1" {
		t.Fatalf("reopened: b = %q %v %v", v, found, err)
	}
}

// A range with a learner (a replica being added) refuses to split and to
// freeze for a merge: the split's new range would make the learner a
// voter, and a learner that never applied the freeze would hold the merge.
func TestLearnerBlocksSplitAndFreeze(t *testing.T) {
	db := openDB(t, vfs.NewMem())
	defer db.Close()
	sm := openRange(t, db, 5, "a", "m")
	var index uint64
	applyResults(t, sm, &index, Command{Op: OpPut, Key: []byte("b"), Value: []byte("1")})
	index++
	if ok, err := sm.ApplyMembership(index, multiraft.Change{Kind: multiraft.AddLearner, Node: 2}, nil); !ok || err != nil {
		t.Fatalf("add learner: %v %v", ok, err)
	}
	d, _ := sm.Descriptor()
	sp, err := SplitCommand(d, []byte("f"), 9, false)
	if err != nil {
		t.Fatal(err)
	}
	if res := applyResults(t, sm, &index, sp, FreezeCommand(d, 3)); res[0].OK || res[1].OK {
		t.Fatalf("with a learner: split %+v, freeze %+v; want both refused", res[0], res[1])
	}
	index++
	if ok, err := sm.ApplyMembership(index, multiraft.Change{Kind: multiraft.PromoteLearner, Node: 2}, nil); !ok || err != nil {
		t.Fatalf("promote: %v %v", ok, err)
	}
	d, _ = sm.Descriptor()
	if sp, err = SplitCommand(d, []byte("f"), 9, false); err != nil {
		t.Fatal(err)
	}
	if res := applyResults(t, sm, &index, sp); !res[0].OK {
		t.Fatalf("after the promotion: split %+v, want it applied", res[0])
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

// A moved replica's removal deletes its state and its span's data (or
// keeps the data when asked: a range here holds part of the span), and
// leaves a tombstone with the generation that removed it, which removing
// the replica's state again (DestroyReplica) does not delete.
func TestDestroyMovedReplica(t *testing.T) {
	for _, keep := range []bool{false, true} {
		db := openDB(t, vfs.NewMem())
		sm := openRange(t, db, 5, "a", "m")
		other := openRange(t, db, 6, "m", "")
		var index, oi uint64
		applyResults(t, sm, &index, Command{Op: OpPut, Key: []byte("b"), Value: []byte("1")})
		applyResults(t, other, &oi, Command{Op: OpPut, Key: []byte("n"), Value: []byte("2")})
		must(nil, sm.Sync())
		must(nil, other.Sync())
		d, _ := sm.Descriptor()
		if _, ok, err := Tombstone(db, 5); ok || err != nil {
			t.Fatalf("a tombstone before the removal: %v %v", ok, err)
		}
		if err := DestroyMovedReplica(db, d, 7, keep); err != nil {
			t.Fatal(err)
		}
		if _, ok, _ := LocalDescriptor(db, 5); ok {
			t.Fatal("the descriptor outlived the removal")
		}
		n, err := SpanKeys(db, d.Start, d.End)
		if err != nil || (n == 0) == keep {
			t.Fatalf("keep data %v: %d records of the span left (%v)", keep, n, err)
		}
		if n, _ := SpanKeys(db, []byte("m"), nil); n == 0 {
			t.Fatal("the other range's data went too")
		}
		must(nil, DestroyReplica(db, 5))
		if gen, ok, err := Tombstone(db, 5); !ok || gen != 7 || err != nil {
			t.Fatalf("tombstone %d %v %v, want generation 7", gen, ok, err)
		}
		db.Close()
	}
}
