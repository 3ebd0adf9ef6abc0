package ranges

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"go.uber.org/goleak"

	"github.com/flotilla/flotilla/kv"
	"github.com/flotilla/flotilla/multiraft"
	"github.com/flotilla/flotilla/storage"
	"github.com/flotilla/flotilla/transport"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// quietPebble discards Pebble's logs.
type quietPebble struct{}

func (quietPebble) Infof(string, ...any)  {}
func (quietPebble) Errorf(string, ...any) {}
func (quietPebble) Fatalf(format string, args ...any) {
	panic(fmt.Sprintf(format, args...))
}

// nopTransport is the transport of a one-node Host: nothing to send.
type nopTransport struct{}

func (nopTransport) Start(transport.Handler) error { return nil }
func (nopTransport) Send([]transport.Envelope)     {}
func (nopTransport) FlushHeartbeats(bool)          {}
func (nopTransport) AddPeer(uint64, string)        {}
func (nopTransport) RemovePeer(uint64)             {}
func (nopTransport) Stats() []transport.PeerStats  { return nil }
func (nopTransport) Close() error                  { return nil }

// testEnv is a one-node Env: proposals go to the local Host, timers wait
// until the test fires them, peers are a table.
type testEnv struct {
	h      *multiraft.Host
	store  **Store
	timers []func()
	peers  map[[2]uint64]kv.Descriptor // (node, range) → its replica's descriptor
	// meta, if set, is the meta index Meta reads instead of the node's.
	meta []kv.Descriptor
}

func (e *testEnv) Now() time.Time                   { return time.UnixMilli(1000) }
func (e *testEnv) After(d time.Duration, fn func()) { e.timers = append(e.timers, fn) }
func (e *testEnv) Propose(id uint64, cmd []byte, done func([]byte, error)) {
	e.h.ProposeFunc(id, cmd, done)
}
func (e *testEnv) PeerDescriptor(node, id uint64, done func(kv.Descriptor, bool)) {
	d, ok := e.peers[[2]uint64{node, id}]
	done(d, ok)
}
func (e *testEnv) ReplicaApplied(node, id uint64, done func(uint64, bool)) {
	if node != 1 {
		done(0, false)
		return
	}
	r, ok := (*e.store).Get(id)
	if !ok {
		done(0, false)
		return
	}
	done(r.SM.AppliedIndex(), true)
}
func (e *testEnv) Removed(node, id uint64) {}
func (e *testEnv) PeerHolds(node, id uint64, done func(bool, bool)) {
	e.PeerDescriptor(node, id, func(_ kv.Descriptor, ok bool) { done(ok, true) })
}
func (e *testEnv) Meta(key []byte, limit int, done func([]kv.Descriptor, error)) {
	if e.meta != nil {
		for i, d := range e.meta {
			if d.Contains(key) {
				done(e.meta[i:min(i+limit, len(e.meta))], nil)
				return
			}
		}
		done(nil, nil)
		return
	}
	r, ok := (*e.store).Get(kv.MetaRangeID)
	if !ok {
		done(nil, fmt.Errorf("no meta range"))
		return
	}
	out, err := r.SM.Query(kv.EncodeMetaQuery(key, limit))
	if err != nil {
		done(nil, err)
		return
	}
	ds, err := kv.DecodeDescriptors(out)
	done(ds, err)
}

// node is a one-node cluster: a manual Host over in-memory storage, a
// Store over an in-memory Pebble.
type node struct {
	t   testing.TB
	h   *multiraft.Host
	db  *pebble.DB
	s   *Store
	env *testEnv
}

func newNode(t testing.TB, ranges int) *node {
	t.Helper()
	db, err := pebble.Open("", &pebble.Options{FS: vfs.NewMem(), Logger: quietPebble{}})
	if err != nil {
		t.Fatal(err)
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	h, err := multiraft.NewHost(multiraft.Config{NodeID: 1, Store: storage.NewMem(), Transport: nopTransport{}, Manual: true, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	n := &node{t: t, h: h, db: db}
	n.env = &testEnv{h: h, store: &n.s, peers: map[[2]uint64]kv.Descriptor{}}
	n.s, err = Open(Config{NodeID: 1, DB: db, Host: h, Env: n.env, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.s.Bootstrap(InitialRanges(ranges, func(uint64) []uint64 { return []uint64{1} })); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		h.Stop()
		db.Close()
	})
	for _, r := range n.s.Replicas() {
		if err := h.Campaign(r.ID); err != nil {
			t.Fatal(err)
		}
	}
	n.drain()
	return n
}

// drain runs the Host and the Store until neither has work, firing the
// Store's timers too.
func (n *node) drain() {
	for i := 0; i < 1000; i++ {
		w := n.h.Process() + n.s.RunPending()
		if w == 0 && len(n.env.timers) > 0 {
			fns := n.env.timers
			n.env.timers = nil
			for _, fn := range fns {
				fn()
			}
			w++
		}
		if w == 0 {
			return
		}
	}
	n.t.Fatal("the node does not quiesce")
}

func (n *node) put(key string) {
	n.t.Helper()
	n.apply(kv.Command{Op: kv.OpPut, Key: []byte(key), Value: []byte("v")})
}

func (n *node) putValue(key string, value []byte) {
	n.t.Helper()
	n.apply(kv.Command{Op: kv.OpPut, Key: []byte(key), Value: value})
}

func (n *node) delete(key string) {
	n.t.Helper()
	n.apply(kv.Command{Op: kv.OpDelete, Key: []byte(key)})
}

// apply proposes cmd to the range that holds its key and waits for it.
func (n *node) apply(cmd kv.Command) {
	n.t.Helper()
	r := n.s.Lookup(cmd.Key)
	if r == nil {
		n.t.Fatalf("no range holds %q", cmd.Key)
	}
	n.propose(r.ID, cmd)
}

// propose proposes cmd to range id, waits for it, and returns its result.
func (n *node) propose(id uint64, cmd kv.Command) kv.Result {
	n.t.Helper()
	b, err := cmd.Encode()
	if err != nil {
		n.t.Fatal(err)
	}
	f := n.h.ProposeAsync(id, b)
	n.drain()
	out, err := f.Result()
	if err != nil {
		n.t.Fatalf("%v to range %d: %v", cmd.Op, id, err)
	}
	res, err := kv.DecodeResult(out)
	if err != nil {
		n.t.Fatal(err)
	}
	return res
}

// TestInitialRanges: the initial ranges tile the keyspace, and the Store
// finds each key's range.
func TestInitialRanges(t *testing.T) {
	ds := InitialRanges(5, func(id uint64) []uint64 { return []uint64{id} })
	var at []byte
	for i, d := range ds {
		if !bytes.Equal(d.Start, at) || d.ID != uint64(i+1) || d.Generation != 1 || d.Replicas[0] != d.ID {
			t.Fatalf("range %d: %v", i, &d)
		}
		at = d.End
	}
	if len(at) != 0 {
		t.Fatalf("the last range ends at %q", at)
	}
	n := newNode(t, 4)
	for _, k := range []string{"0", "3f", "40", "7fff", "80", "c0", "ff", "zz"} {
		r := n.s.Lookup([]byte(k))
		d, _ := r.Descriptor()
		if r == nil || !d.Contains([]byte(k)) {
			t.Fatalf("Lookup(%q) = %v", k, d)
		}
	}
	// Bootstrapping again changes nothing.
	if err := n.s.Bootstrap(InitialRanges(4, func(uint64) []uint64 { return []uint64{1} })); err != nil || len(n.s.Replicas()) != 4 {
		t.Fatalf("second bootstrap: %v, %d replicas", err, len(n.s.Replicas()))
	}
}

// TestSplit: a split makes a new range with the next ID that holds the
// keys from the split key on, started on the node, led, in the meta index;
// the left half refuses them. Splitting at a range's start is refused.
func TestSplit(t *testing.T) {
	n := newNode(t, 1)
	for _, k := range []string{"a", "m", "z"} {
		n.put(k)
	}
	var left, right kv.Descriptor
	var err error
	n.s.Split(1, []byte("m"), func(l, r kv.Descriptor, e error) { left, right, err = l, r, e })
	n.drain()
	if err != nil {
		t.Fatal(err)
	}
	if left.ID != 1 || string(left.End) != "m" || right.ID != 2 || string(right.Start) != "m" || len(right.End) != 0 ||
		left.Generation != 2 || right.Generation != 2 {
		t.Fatalf("split made %v and %v", &left, &right)
	}
	if r := n.s.Lookup([]byte("z")); r == nil || r.ID != 2 {
		t.Fatalf("z is in %v", r)
	}
	if l, _, _ := n.h.Leader(2); l != 1 {
		t.Fatalf("the new range has leader %d", l)
	}
	r1, _ := n.s.Get(1)
	if _, err := r1.SM.Query(append([]byte{byte(kv.QueryGet)}, 'z')); err == nil {
		t.Fatal("the left half still serves a key it gave away")
	}
	r2, _ := n.s.Get(2)
	out, err := r2.SM.Query(append([]byte{byte(kv.QueryGet)}, 'z'))
	if found, _, _ := kv.DecodeGet(out); err != nil || !found {
		t.Fatalf("the right half does not have z: %v", err)
	}
	var meta []kv.Descriptor
	n.env.Meta(nil, 10, func(ds []kv.Descriptor, e error) { meta, err = ds, e })
	if err != nil || len(meta) != 2 || !meta[0].Equal(&left) || !meta[1].Equal(&right) {
		t.Fatalf("meta index %v %v", meta, err)
	}
	n.s.Split(2, []byte("m"), func(_, _ kv.Descriptor, e error) { err = e })
	n.drain()
	if err == nil {
		t.Fatal("a split at a range's start was accepted")
	}
	n.s.Split(9, []byte("q"), func(_, _ kv.Descriptor, e error) { err = e })
	n.drain()
	if err == nil {
		t.Fatal("a split of an unknown range was accepted")
	}
}

// TestSplitBySize: the split queue splits a range whose data passes
// MaxBytes, at the key that halves it.
func TestSplitBySize(t *testing.T) {
	n := newNode(t, 1)
	n.s.cfg.MaxBytes = 4 << 10
	for i := range 40 {
		n.put(fmt.Sprintf("k%03d%s", i, bytes.Repeat([]byte("x"), 200)))
	}
	for range 5 {
		n.s.Tick()
		n.drain()
	}
	if got := len(n.s.Replicas()); got < 2 {
		t.Fatalf("%d ranges after 8 KiB of data with a 4 KiB limit", got)
	}
	for _, r := range n.s.Replicas() {
		b, err := r.SM.SpanBytes()
		if err != nil || b > 4<<10 {
			t.Fatalf("range %d holds %d bytes (%v)", r.ID, b, err)
		}
	}
}

// TestMerge: a merge joins a range and its right neighbour on the node:
// the right one is frozen, then merged, then its replica removed; the keys
// of both are in the merged range, the meta index records it, and the
// merge queue merges small cold neighbours only across a boundary that is
// not sticky.
func TestMerge(t *testing.T) {
	n := newNode(t, 2) // ["", "80") and ["80", ∞): a sticky boundary
	for _, k := range []string{"10", "90"} {
		n.put(k)
	}
	var merged kv.Descriptor
	var err error
	n.s.Merge(2, func(d kv.Descriptor, e error) { err = e })
	n.drain()
	if err == nil {
		t.Fatal("a merge of the last range was accepted")
	}
	n.s.Merge(1, func(d kv.Descriptor, e error) { merged, err = d, e })
	n.drain()
	if err != nil {
		t.Fatal(err)
	}
	if merged.ID != 1 || len(merged.Start) != 0 || len(merged.End) != 0 || merged.Generation != 2 {
		t.Fatalf("merged %v", &merged)
	}
	if _, ok := n.s.Get(2); ok {
		t.Fatal("range 2 still has a replica")
	}
	for _, k := range []string{"10", "90"} {
		r := n.s.Lookup([]byte(k))
		out, err := r.SM.Query(append([]byte{byte(kv.QueryGet)}, k...))
		if found, _, _ := kv.DecodeGet(out); r.ID != 1 || err != nil || !found {
			t.Fatalf("%s after the merge: range %d, %v", k, r.ID, err)
		}
	}
	if ids, err := kv.MergedReplicas(n.db); err != nil || len(ids) != 0 {
		t.Fatalf("merged replicas left: %v %v", ids, err)
	}
	var meta []kv.Descriptor
	n.env.Meta(nil, 10, func(ds []kv.Descriptor, e error) { meta, err = ds, e })
	if err != nil || len(meta) != 1 || !meta[0].Equal(&merged) {
		t.Fatalf("meta index %v %v", meta, err)
	}
	// The merge queue: a split by load is not sticky and merges back once
	// both halves are small and cold; the admin split's boundary stays.
	n.s.cfg.MinBytes = 1 << 20
	n.s.split(1, []byte("50"), "load", func(_, _ kv.Descriptor, e error) { err = e })
	n.drain()
	if err != nil {
		t.Fatal(err)
	}
	n.s.Split(1, []byte("30"), func(_, _ kv.Descriptor, e error) { err = e })
	n.drain()
	if err != nil || len(n.s.Replicas()) != 3 {
		t.Fatalf("%d ranges, %v", len(n.s.Replicas()), err)
	}
	for range n.s.cfg.MergeCooldownTicks + 5 {
		n.s.Tick()
		n.drain()
	}
	var spans []string
	for _, r := range n.s.Overlapping(nil, nil) {
		d, _ := r.Descriptor()
		spans = append(spans, kv.SpanString(d.Start, d.End))
	}
	if len(spans) != 2 || spans[1] != kv.SpanString([]byte("30"), nil) {
		t.Fatalf("after the merge queue: %v", spans)
	}
}

// TestSnapshotGate: a replica may take a snapshot only if no other replica
// on the node holds part of its span.
func TestSnapshotGate(t *testing.T) {
	n := newNode(t, 2) // ["", "80") and ["80", ∞)
	for _, tc := range []struct {
		id    uint64
		d     kv.Descriptor
		allow bool
	}{
		{1, kv.Descriptor{ID: 1, Start: nil, End: []byte("80"), Replicas: []uint64{1}, Generation: 2}, true},
		{3, kv.Descriptor{ID: 3, Start: []byte("7"), End: []byte("8"), Replicas: []uint64{1}, Generation: 2}, false},
		{3, kv.Descriptor{ID: 3, Start: []byte("90"), End: []byte("a"), Replicas: []uint64{1}, Generation: 2}, false},
		{2, kv.Descriptor{ID: 2, Start: []byte("80"), End: nil, Replicas: []uint64{1}, Generation: 1}, true},
	} {
		if got := n.s.acceptSnapshot(tc.id, &tc.d); got != tc.allow {
			t.Errorf("snapshot of %v into range %d: accepted %v, want %v", &tc.d, tc.id, got, tc.allow)
		}
	}
}

// TestUnknownGroup: messages for a range the node has no replica of start
// an empty replica only if the sender's descriptor lists the node and no
// local replica holds any of its span.
func TestUnknownGroup(t *testing.T) {
	n := newNode(t, 2)
	n.env.peers[[2]uint64{2, 7}] = kv.Descriptor{ID: 7, Start: []byte("90"), End: []byte("a"), Replicas: []uint64{1, 2, 3}, Generation: 3}
	n.env.peers[[2]uint64{2, 8}] = kv.Descriptor{ID: 8, Start: []byte("x"), End: nil, Replicas: []uint64{2, 3, 4}, Generation: 3}
	n.s.UnknownGroup(7, 2) // overlaps range 2 here: not yet
	n.s.UnknownGroup(8, 2) // does not list this node
	n.s.UnknownGroup(9, 2) // the sender knows nothing
	n.drain()
	for _, id := range []uint64{7, 8, 9} {
		if _, ok := n.s.Get(id); ok {
			t.Fatalf("range %d started", id)
		}
	}
	// Once range 2 here no longer holds that span, the replica starts,
	// empty (it waits for a snapshot).
	n.s.Split(2, []byte("90"), func(_, _ kv.Descriptor, err error) {
		if err != nil {
			t.Error(err)
		}
	})
	n.drain()
	n.s.Split(3, []byte("a"), func(_, _ kv.Descriptor, err error) {
		if err != nil {
			t.Error(err)
		}
	})
	n.drain()
	// Now ranges 3 and 4 hold ["90", "a") and ["a", ∞) here: still not.
	n.s.UnknownGroup(7, 2)
	n.drain()
	if _, ok := n.s.Get(7); ok {
		t.Fatal("range 7 started over range 3's span")
	}
	if n.s.EmptyReplicas() != 0 {
		t.Fatalf("%d empty replicas", n.s.EmptyReplicas())
	}
	n.env.peers[[2]uint64{2, 7}] = kv.Descriptor{ID: 7, Start: []byte("0"), End: []byte("1"), Replicas: []uint64{1, 2, 3}, Generation: 9}
	// ["0", "1") is range 1's here: still not. (Here the ranges tile the
	// keyspace, so every span is held; a node whose replica shrank by a
	// snapshot starts such replicas: the simulation counts them,
	// sim.Result.EmptyReplicas.)
	n.s.UnknownGroup(7, 2)
	n.drain()
	if _, ok := n.s.Get(7); ok {
		t.Fatal("range 7 started over range 1's span")
	}
}

// TestFrozenReplicaKeptForLocalMerge: simulation seed 9400 and the seeds
// a first fix of it broke (3442: a merge undone by a split at the same
// key). A frozen range's replica is not superseded by a later range that
// shares a key with it while a replica here that ends where it starts has
// not applied the merge (the merge reads the frozen replica), and is
// superseded once that replica is as of or after the merge.
func TestFrozenReplicaKeptForLocalMerge(t *testing.T) {
	d := func(id uint64, start, end string, gen uint64) *kv.Descriptor {
		var s, e []byte
		if start != "" {
			s = []byte(start)
		}
		if end != "" {
			e = []byte(end)
		}
		return &kv.Descriptor{ID: id, Start: s, End: e, Generation: gen}
	}
	// Seed 9400: range 2 frozen here, range 1 here has its merge (and the
	// splits that made ranges 3 and 4) in its log still.
	lhs, rhs := d(1, "", "80", 1), d(2, "80", "", 1)
	r4 := d(4, "a7", "", 4)
	all := []holder{{id: 1, desc: lhs}, {id: 2, desc: rhs, frozen: true}}
	if supersededHere(4, r4, rhs, true, all) {
		t.Fatal("range 4 superseded the frozen range 2 while range 1 here has not merged it")
	}
	// Range 1 took a snapshot from after the merge and a split at "25".
	all[0].desc = d(1, "", "25", 3)
	if !supersededHere(4, r4, rhs, true, all) {
		t.Fatal("range 4 did not supersede the frozen range 2 once no replica here ends where it starts")
	}
	// The merged range supersedes it.
	if !supersededHere(1, d(1, "", "", 2), rhs, true, []holder{{id: 2, desc: rhs, frozen: true}}) {
		t.Fatal("the merged range 1 did not supersede range 2")
	}

	// Seed 3442: range 6 frozen here, merged into range 3 (g5), which
	// split again at the same key into range 3 (g6) and range 8 (g6);
	// range 3 here took a snapshot from after that. It ends where range 6
	// starts, but has merged it: range 8 supersedes range 6.
	r3, r6, r8 := d(3, "00.0", "55.1", 6), d(6, "55.1", "7d", 4), d(8, "55.1", "7d", 6)
	all = []holder{{id: 3, desc: r3}, {id: 6, desc: r6, frozen: true}}
	if !supersededHere(8, r8, r6, true, all) {
		t.Fatal("range 8 did not supersede the frozen range 6: range 3 here is past the merge")
	}
	// A later range made by splitting range 8 (g7) tells nothing alone...
	r9 := d(9, "60", "7d", 7)
	if supersededHere(9, r9, r6, true, all) {
		t.Fatal("range 9 (g7) superseded range 6 with nothing here to show range 3 (g6) is past the merge")
	}
	// ... but range 8's replica here (g6) does.
	all = append(all, holder{id: 8, desc: r8})
	if !supersededHere(9, r9, r6, true, all) {
		t.Fatal("range 9 did not supersede range 6 though range 8 here (g6) shows range 3 (g6) is past the merge")
	}
	// Range 3 here before the merge (g4) is not past it.
	all[0].desc = d(3, "00.0", "55.1", 4)
	if supersededHere(9, r9, r6, true, all[:2]) {
		t.Fatal("range 9 superseded range 6 while range 3 here has not merged it")
	}

	// A chain: range 2 frozen, to merge into range 1; range 5 frozen, to
	// merge into range 2's merger. Range 7 holds both spans: range 1 here
	// has both merges to apply.
	c1, c2, c5 := d(1, "", "40", 1), d(2, "40", "80", 1), d(5, "80", "", 1)
	chain := []holder{{id: 1, desc: c1}, {id: 2, desc: c2, frozen: true}, {id: 5, desc: c5, frozen: true}}
	r7 := d(7, "30", "", 5)
	if supersededHere(7, r7, c5, true, chain) || supersededHere(7, r7, c2, true, chain) {
		t.Fatal("range 7 superseded a frozen range of a chain that range 1 here has still to merge")
	}
	chain[0].desc = d(1, "", "30", 5)
	if !supersededHere(7, r7, c5, true, chain) || !supersededHere(7, r7, c2, true, chain) {
		t.Fatal("range 7 did not supersede the frozen ranges of a chain range 1 here is past")
	}
}

// TestTickWalksActiveReplicas: once every replica was measured (one pass
// of windows), an idle tick leaves nothing in the walk, and a write puts
// its range (alone, beside the tick's window) back in it. The split check
// of each of 10,000 idle ranges every tick cost 1 % of a core per node.
func TestTickWalksActiveReplicas(t *testing.T) {
	n := newNode(t, 3*scanBudget)
	n.s.cfg.MaxBytes = 1 << 20
	for range 6 {
		n.s.Tick()
		n.drain()
	}
	for _, r := range n.s.Replicas() {
		if r.q == nil || !r.q.measured {
			t.Fatalf("range %d not measured after a pass of windows", r.ID)
		}
	}
	if len(n.s.walk) != 0 {
		t.Fatalf("%d replicas left in the walk of an idle node", len(n.s.walk))
	}
	n.put("7f00")
	r := n.s.Lookup([]byte("7f00"))
	walk := n.s.walkSet(n.s.Replicas())
	if !slices.Contains(walk, r) || len(walk) > scanBudget+1 {
		t.Fatalf("walk of %d replicas (range %d in it: %v), want the written range and one window", len(walk), r.ID, slices.Contains(walk, r))
	}
}

// TestSizeMeasured: the split queue measures each range it leads
// (Replica.Size, SizesVersion moves), and measures again after a split,
// though less than MaxBytes/8 was written since: the left range's size is
// then its half's, not the whole range's it was before.
func TestSizeMeasured(t *testing.T) {
	n := newNode(t, 1)
	n.s.cfg.MaxBytes = 1 << 20
	for _, k := range []string{"a", "b", "c", "m", "n", "z"} {
		n.put(k)
	}
	r, _ := n.s.Get(1)
	if _, ok := r.Size(); ok {
		t.Fatal("a size before any measurement")
	}
	v := n.s.SizesVersion()
	n.s.Tick()
	n.drain()
	whole, ok := r.Size()
	if want, _ := r.SM.SpanBytes(); !ok || whole != want || n.s.SizesVersion() == v {
		t.Fatalf("size %d (%v), want %d; sizes version %d, was %d", whole, ok, want, n.s.SizesVersion(), v)
	}
	var err error
	n.s.Split(1, []byte("m"), func(_, _ kv.Descriptor, e error) { err = e })
	n.drain()
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		n.s.Tick()
		n.drain()
	}
	half, ok := r.Size()
	if want, _ := r.SM.SpanBytes(); !ok || half != want || half >= whole {
		t.Fatalf("left range's size after the split: %d (%v), want %d (the whole range's was %d)", half, ok, want, whole)
	}
	right, _ := n.s.Get(2)
	if got, ok := right.Size(); !ok || got != whole-half {
		t.Fatalf("right range's size after the split: %d (%v), want %d", got, ok, whole-half)
	}
}

// TestMergeSizeKept: the merge queue scans a cold range's data once, not
// each tick its window passes it (a range of tens of MiB was read whole
// every tick), and scans again once the range applied something: here
// deletes, which the split queue's size (WrittenBytes) does not see, make
// it small, and it merges.
func TestMergeSizeKept(t *testing.T) {
	n := newNode(t, 1)
	big := bytes.Repeat([]byte("x"), 1024)
	for i := range 8 {
		n.putValue(fmt.Sprintf("a%d", i), big)
	}
	n.put("z")
	var err error
	n.s.split(1, []byte("m"), "load", func(_, _ kv.Descriptor, e error) { err = e })
	n.drain()
	if err != nil {
		t.Fatal(err)
	}
	n.s.cfg.MinBytes = 4 << 10
	ticks := n.s.cfg.MergeCooldownTicks + 30
	for range ticks {
		n.s.Tick()
		n.drain()
	}
	if got := len(n.s.Replicas()); got != 2 {
		t.Fatalf("%d ranges: a range of 8 KiB merged with MinBytes 4 KiB", got)
	}
	if n.s.mergeScans > 2 {
		t.Fatalf("the merge queue scanned %d times in %d ticks of two idle ranges, want each at most once", n.s.mergeScans, ticks)
	}
	for i := range 6 {
		n.delete(fmt.Sprintf("a%d", i))
	}
	for range 10 {
		n.s.Tick()
		n.drain()
	}
	if got := len(n.s.Replicas()); got != 1 {
		t.Fatalf("%d ranges after deletes left the left range with 2 KiB, want them merged", got)
	}
}

// BenchmarkTickColdRanges: one Tick of a node leading 16 cold ranges of
// 1 MiB, split by load (so the merge queue looks at them) and above
// MinBytes (so they stay): the cost of an idle node's merge queue.
func BenchmarkTickColdRanges(b *testing.B) {
	n := newNode(b, 1)
	val := bytes.Repeat([]byte("x"), 4<<10)
	const ranges, keys = 16, 256
	for i := range ranges * keys {
		n.putValue(fmt.Sprintf("k%02d-%03d", i/keys, i%keys), val)
	}
	for i := ranges - 1; i > 0; i-- {
		var err error
		n.s.split(1, []byte(fmt.Sprintf("k%02d", i)), "load", func(_, _ kv.Descriptor, e error) { err = e })
		n.drain()
		if err != nil {
			b.Fatal(err)
		}
	}
	n.s.cfg.MinBytes = 512 << 10
	for range n.s.cfg.MergeCooldownTicks + 30 { // past the cooldown, the load decayed
		n.s.Tick()
		n.drain()
	}
	if got := len(n.s.Replicas()); got != ranges {
		b.Fatalf("%d ranges, want %d", got, ranges)
	}
	b.ResetTimer()
	for range b.N {
		n.s.Tick()
		n.drain()
	}
}

// TestMergedAwayReplicaRemoved: a replica whose peers hold no replica of
// its range any more (CheckRemoved: no answer to learn a removal from) goes,
// with its span's data, once the meta index shows another range holding
// its start at a higher generation: its range merged away. Not for a record
// of its own range, nor for the stale record of the range it was split from
// (a lower generation).
func TestMergedAwayReplicaRemoved(t *testing.T) {
	n := newNode(t, 2) // r1 ["", "80"), r2 ["80", ∞), generation 1
	n.put("90")
	check := func(meta kv.Descriptor, wantGone bool) {
		t.Helper()
		n.env.meta = []kv.Descriptor{meta}
		n.s.CheckRemoved(2, 2) // node 2 has no replica of range 2
		n.drain()
		if _, ok := n.s.Get(2); ok == wantGone {
			t.Fatalf("meta index %v: range 2's replica here: %v, want gone: %v", &meta, ok, wantGone)
		}
	}
	check(kv.Descriptor{ID: 2, Start: []byte("80"), Replicas: []uint64{2, 3}, Generation: 4}, false)
	check(kv.Descriptor{ID: 1, Start: nil, Replicas: []uint64{1, 2}, Generation: 1}, false)
	check(kv.Descriptor{ID: 1, Start: nil, Replicas: []uint64{2, 3}, Generation: 3}, true)
	if keys, err := kv.SpanKeys(n.db, []byte("80"), nil); err != nil || keys != 0 {
		t.Fatalf("%d records left in the span of the merged-away replica (%v)", keys, err)
	}
	if gen, ok, err := kv.Tombstone(n.db, 2); err != nil || !ok || gen != 3 {
		t.Fatalf("tombstone of range 2: generation %d, %v, %v; want 3", gen, ok, err)
	}
}

// TestMergedAwayFrozenKeptForLocalMerge: a frozen replica stays, though the
// meta index shows the merged range holding its start, while the replica
// here of the range it merges into has not applied the merge: that merge
// reads it (destroyed, the merge stopped the node, found by review).
func TestMergedAwayFrozenKeptForLocalMerge(t *testing.T) {
	n := newNode(t, 2) // r1 ["", "80"), r2 ["80", ∞)
	n.put("90")
	r1, _ := n.s.Get(1)
	r2, _ := n.s.Get(2)
	ld, _ := r1.Descriptor()
	rd, _ := r2.Descriptor()
	lhsD, rhsD := ld.Clone(), rd.Clone()
	index, _, ok, err := kv.FreezeResult(n.propose(2, kv.FreezeCommand(&rhsD, 1)))
	if err != nil || !ok {
		t.Fatalf("freeze: %v %v", ok, err)
	}
	n.env.meta = []kv.Descriptor{{ID: 1, Replicas: []uint64{1}, Generation: 2}} // r1 ["", ∞)
	n.s.CheckRemoved(2, 2)
	n.drain()
	if _, ok := n.s.Get(2); !ok {
		t.Fatal("the frozen range was removed while the range here that merges it had not applied the merge")
	}
	if res := n.propose(1, kv.MergeCommand(&lhsD, &rhsD, index)); !res.OK {
		t.Fatalf("merge refused: %+v", res)
	}
	if err := n.h.Err(); err != nil {
		t.Fatalf("the node stopped: %v", err)
	}
	r := n.s.Lookup([]byte("90"))
	out, err := r.SM.Query(append([]byte{byte(kv.QueryGet)}, "90"...))
	if found, _, _ := kv.DecodeGet(out); r.ID != 1 || err != nil || !found {
		t.Fatalf("90 after the merge: range %d, found %v, %v", r.ID, found, err)
	}
}

// TestMergedAwayFrozenPastLocalMerge: a frozen replica whose merged range
// was split again where it starts goes, though a replica here ends where
// it starts: that one is at the generation of the record now holding the
// frozen range's start, so past the merge. One generation lower, it may
// not be, and the frozen replica stays.
func TestMergedAwayFrozenPastLocalMerge(t *testing.T) {
	n := newNode(t, 2) // r1 ["", "80"), r2 ["80", ∞)
	n.put("90")
	var err error
	for _, k := range []string{"40", "60", "70", "75"} {
		left := n.s.Lookup([]byte(k))
		n.s.Split(left.ID, []byte(k), func(_, _ kv.Descriptor, e error) { err = e })
		n.drain()
		if err != nil {
			t.Fatal(err)
		}
	}
	h := n.s.Lookup([]byte("79"))
	hd, _ := h.Descriptor()
	r2, _ := n.s.Get(2)
	rd, _ := r2.Descriptor()
	if string(hd.End) != "80" || hd.Generation != 5 {
		t.Fatalf("the range ending at 80 is %v, want one at generation 5", hd)
	}
	n.propose(2, kv.FreezeCommand(rd, h.ID))
	if _, _, frozen := r2.SM.Frozen(); !frozen {
		t.Fatal("range 2 not frozen")
	}
	for _, c := range []struct {
		gen  uint64
		gone bool
	}{{6, false}, {5, true}} {
		n.env.meta = []kv.Descriptor{{ID: 9, Start: []byte("80"), Replicas: []uint64{1}, Generation: c.gen}}
		n.s.CheckRemoved(2, 2)
		n.drain()
		if _, ok := n.s.Get(2); ok == c.gone {
			t.Fatalf("meta record of generation %d holds 80, the range ending there is at %d: frozen range 2 here %v, want gone %v", c.gen, hd.Generation, ok, c.gone)
		}
	}
}
