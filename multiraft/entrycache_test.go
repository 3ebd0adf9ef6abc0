package multiraft

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"testing"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/flotilla/flotilla/storage"
)

// testEnts returns entries lo..hi of term term, each with 10 bytes of
// data (exact capacity) naming it.
func testEnts(lo, hi, term uint64) []raftpb.Entry {
	var out []raftpb.Entry
	for i := lo; i <= hi; i++ {
		d := []byte(fmt.Sprintf("%04d.%05d", i, term))
		out = append(out, raftpb.Entry{Index: i, Term: term, Data: d[:len(d):len(d)]})
	}
	return out
}

// render renders entries as index/term.
func render(es []raftpb.Entry) string {
	s := ""
	for _, e := range es {
		s += fmt.Sprintf("%d/%d ", e.Index, e.Term)
	}
	return s
}

// checkCache verifies the cache's invariants: every run in the map is in
// the ring and the other way round, holds consecutive indexes, and the
// bytes and entries counted are those held, within the budget.
func checkCache(t *testing.T, c *entryCache) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	var bytes, entries int64
	n := 0
	for r := c.mu.lru.next; r != &c.mu.lru; r = r.next {
		n++
		if c.mu.groups[r.group] != r {
			t.Fatalf("run of group %d in the ring, not the map", r.group)
		}
		if len(r.ents) == 0 {
			t.Fatalf("empty run of group %d", r.group)
		}
		var b int64
		for i := range r.ents {
			if r.ents[i].Index != r.ents[0].Index+uint64(i) {
				t.Fatalf("group %d: run %s not consecutive", r.group, render(r.ents))
			}
			b += entryBytes(&r.ents[i])
		}
		if b != r.bytes {
			t.Fatalf("group %d: run counts %d bytes, holds %d", r.group, r.bytes, b)
		}
		bytes += b
		entries += int64(len(r.ents))
	}
	if n != len(c.mu.groups) {
		t.Fatalf("%d runs in the ring, %d in the map", n, len(c.mu.groups))
	}
	if bytes != c.bytes.Load() || entries != c.entries.Load() {
		t.Fatalf("cache counts %d bytes and %d entries, holds %d and %d", c.bytes.Load(), c.entries.Load(), bytes, entries)
	}
	if c.budget > 0 && bytes > c.budget {
		t.Fatalf("cache holds %d bytes, over its budget of %d", bytes, c.budget)
	}
}

// expectCached checks the cache's invariants and that it holds want of
// group.
func expectCached(t *testing.T, c *entryCache, group uint64, want string) {
	t.Helper()
	checkCache(t, c)
	if s := cached(c, group); s != want {
		t.Fatalf("group %d: cached %q, want %q", group, s, want)
	}
}

// cached renders what the cache holds of group.
func cached(c *entryCache, group uint64) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if r := c.mu.groups[group]; r != nil {
		return render(r.ents)
	}
	return ""
}

func TestEntryCachePutGet(t *testing.T) {
	c := newEntryCache(1 << 20)
	c.put(1, testEnts(1, 10, 1))
	c.put(2, testEnts(5, 6, 3))
	checkCache(t, c)
	size := uint64(testEnts(1, 1, 1)[0].Size()) // every test entry's

	for _, tc := range []struct {
		lo, hi, max uint64
		want        string
		wantSize    uint64
		done        bool
	}{
		{1, 11, math.MaxUint64, "1/1 2/1 3/1 4/1 5/1 6/1 7/1 8/1 9/1 10/1 ", 10 * size, true},
		{3, 5, math.MaxUint64, "3/1 4/1 ", 2 * size, true},
		{3, 11, 2*size + size/2, "3/1 4/1 ", 2 * size, true},  // the size limit
		{3, 11, 0, "3/1 ", size, true},                        // the first always
		{9, 14, math.MaxUint64, "9/1 10/1 ", 2 * size, false}, // ends before hi
		{11, 12, math.MaxUint64, "", 0, false},
	} {
		h0, m0 := c.hits.Load(), c.misses.Load()
		got, sz, done := c.get(1, tc.lo, tc.hi, tc.max)
		if render(got) != tc.want || sz != tc.wantSize || done != tc.done {
			t.Fatalf("get [%d,%d) max %d: %q size %d done %v; want %q %d %v",
				tc.lo, tc.hi, tc.max, render(got), sz, done, tc.want, tc.wantSize, tc.done)
		}
		if hit := c.hits.Load() - h0; hit+c.misses.Load()-m0 != 1 || (hit == 1) != tc.done {
			t.Fatalf("get [%d,%d): %d hits, %d misses", tc.lo, tc.hi, hit, c.misses.Load()-m0)
		}
	}
	if got, _, done := c.get(2, 4, 6, math.MaxUint64); done || got != nil {
		t.Fatalf("get before group 2's run: %q, %v", render(got), done)
	}
	if got, _, done := c.get(3, 1, 2, math.MaxUint64); done || got != nil {
		t.Fatalf("get of an uncached group: %q, %v", render(got), done)
	}

	// What get returns is the caller's: changing or appending to it does
	// not reach the cache.
	got, _, _ := c.get(1, 1, 3, math.MaxUint64)
	got[0].Term = 99
	_ = append(got[:1], raftpb.Entry{Index: 77})
	if s := cached(c, 1); s != "1/1 2/1 3/1 4/1 5/1 6/1 7/1 8/1 9/1 10/1 " {
		t.Fatalf("a caller's changes reached the cache: %q", s)
	}
}

// put replaces the tail from its first index: a conflicting append.
func TestEntryCacheConflictingPut(t *testing.T) {
	c := newEntryCache(1 << 20)
	c.put(1, testEnts(1, 10, 1))
	c.put(1, testEnts(6, 7, 2))
	expectCached(t, c, 1, "1/1 2/1 3/1 4/1 5/1 6/2 7/2 ")
	if got, _, done := c.get(1, 6, 9, math.MaxUint64); done || render(got) != "6/2 7/2 " {
		t.Fatalf("get of the replaced tail: %q, %v", render(got), done)
	}
	// At or before the run's first index: the run is replaced.
	c.put(1, testEnts(1, 2, 3))
	expectCached(t, c, 1, "1/3 2/3 ")
	// After a gap (the run was of an older part of the log): replaced.
	c.put(1, testEnts(8, 9, 3))
	expectCached(t, c, 1, "8/3 9/3 ")
}

// add joins read-back entries to the run, before or after it, and leaves
// apart what does not touch it.
func TestEntryCacheAdd(t *testing.T) {
	c := newEntryCache(1 << 20)
	c.add(1, testEnts(5, 6, 1))
	c.add(1, testEnts(2, 5, 1)) // before, overlapping
	c.add(1, testEnts(7, 8, 1)) // right after
	expectCached(t, c, 1, "2/1 3/1 4/1 5/1 6/1 7/1 8/1 ")
	c.add(1, testEnts(10, 12, 1)) // apart: not cached
	c.add(1, testEnts(3, 4, 1))   // inside: nothing to do
	expectCached(t, c, 1, "2/1 3/1 4/1 5/1 6/1 7/1 8/1 ")
}

func TestEntryCacheCompactDrop(t *testing.T) {
	c := newEntryCache(1 << 20)
	c.put(1, testEnts(1, 10, 1))
	c.put(2, testEnts(1, 3, 1))
	c.compact(1, 0)
	c.compact(1, 4)
	expectCached(t, c, 1, "5/1 6/1 7/1 8/1 9/1 10/1 ")
	c.compact(1, 12)
	expectCached(t, c, 1, "")
	c.drop(2)
	c.drop(3)
	checkCache(t, c)
	if c.bytes.Load() != 0 || c.entries.Load() != 0 || len(c.mu.groups) != 0 {
		t.Fatalf("emptied cache holds %d bytes, %d entries, %d runs", c.bytes.Load(), c.entries.Load(), len(c.mu.groups))
	}
}

// Over budget, the oldest entries of the group used longest ago go first;
// a put never leaves the cache over budget, even one larger than it.
func TestEntryCacheEviction(t *testing.T) {
	per := entryBytes(&testEnts(1, 1, 1)[0])
	c := newEntryCache(10 * per)
	c.put(1, testEnts(1, 4, 1))
	c.put(2, testEnts(1, 4, 1))
	c.put(3, testEnts(1, 2, 1))
	checkCache(t, c)
	// Group 1 is read: group 2 is now the least recently used.
	if _, _, done := c.get(1, 1, 2, math.MaxUint64); !done {
		t.Fatal("group 1 not cached")
	}
	c.put(3, testEnts(3, 5, 1)) // 3 over budget
	checkCache(t, c)
	for g, want := range map[uint64]string{1: "1/1 2/1 3/1 4/1 ", 2: "4/1 ", 3: "1/1 2/1 3/1 4/1 5/1 "} {
		if s := cached(c, g); s != want {
			t.Fatalf("group %d: %q, want %q", g, s, want)
		}
	}
	c.put(4, testEnts(1, 30, 1)) // larger than the budget
	checkCache(t, c)
	if s := cached(c, 4); s != "21/1 22/1 23/1 24/1 25/1 26/1 27/1 28/1 29/1 30/1 " || len(c.mu.groups) != 1 {
		t.Fatalf("after a put larger than the budget: group 4 %q, %d runs", s, len(c.mu.groups))
	}
	// A run cut short does not keep its long array.
	c.mu.Lock()
	r := c.mu.groups[4]
	if cap(r.ents) > 2*len(r.ents) {
		t.Fatalf("run of %d entries keeps an array of %d", len(r.ents), cap(r.ents))
	}
	c.mu.Unlock()

	off := newEntryCache(-1)
	off.put(1, testEnts(1, 3, 1))
	off.add(1, testEnts(1, 3, 1))
	if got, _, done := off.get(1, 1, 2, math.MaxUint64); done || got != nil || off.bytes.Load() != 0 || off.misses.Load() != 1 {
		t.Fatalf("a cache that is off holds or answers: %q, %v, %d bytes", render(got), done, off.bytes.Load())
	}
}

// Workers use the cache at once, each on its own groups, with a budget
// small enough that their puts evict each other's entries. Run with -race.
func TestEntryCacheConcurrent(t *testing.T) {
	per := entryBytes(&testEnts(1, 1, 1)[0])
	c := newEntryCache(50 * per)
	const workers, groups = 4, 5
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			last := make([]uint64, groups)
			for range 2000 {
				k := rng.IntN(groups)
				g := uint64(w*groups + k + 1)
				switch op := rng.IntN(10); {
				case op < 5:
					lo := max(1, last[k]+1-uint64(rng.IntN(3))) // sometimes a conflict
					hi := lo + uint64(rng.IntN(8))
					c.put(g, testEnts(lo, hi, uint64(op+1)))
					last[k] = hi
				case op < 8:
					if last[k] > 0 {
						lo := 1 + uint64(rng.IntN(int(last[k])))
						got, _, _ := c.get(g, lo, last[k]+1, uint64(rng.IntN(200)))
						for i := range got {
							if got[i].Index != lo+uint64(i) {
								t.Errorf("group %d: get from %d: %s", g, lo, render(got))
								return
							}
						}
					}
				case op == 8:
					c.compact(g, last[k]/2)
				default:
					if last[k] > 2 {
						c.add(g, testEnts(last[k]-2, last[k], 1))
					}
				}
			}
		}()
	}
	wg.Wait()
	checkCache(t, c)
}

// memLogStore is a store for memLog tests: entries written as the engine
// does, before the log records them.
type memLogStore struct {
	*storage.Mem
	fail  error
	reads int
}

func (s *memLogStore) Entries(group, lo, hi, maxBytes uint64) ([]raftpb.Entry, error) {
	s.reads++
	if s.fail != nil {
		return nil, s.fail
	}
	return s.Mem.Entries(group, lo, hi, maxBytes)
}

func newTestLog(t *testing.T, budget int64) (*memLog, *memLogStore, *[]error) {
	st := &memLogStore{Mem: storage.NewMem()}
	var fatals []error
	src := &logSource{cache: newEntryCache(budget), store: st, fatal: func(err error) { fatals = append(fatals, err) }}
	return newMemLog(7, src, 0, 0), st, &fatals
}

// appendBoth writes ents to the store, then to the log: the order of a
// cycle.
func appendBoth(t *testing.T, l *memLog, st storage.Store, ents []raftpb.Entry) {
	t.Helper()
	b := st.NewBatch()
	defer b.Close()
	b.Append(l.id, ents, l.lastIndex())
	if err := b.Commit(true); err != nil {
		t.Fatal(err)
	}
	l.append(ents)
}

func terms(t *testing.T, l *memLog, lo, hi uint64) string {
	t.Helper()
	s := ""
	for i := lo; i <= hi; i++ {
		if tm, err := l.Term(i); err != nil {
			s += fmt.Sprintf("%d:%v ", i, err)
		} else {
			s += fmt.Sprintf("%d:%d ", i, tm)
		}
	}
	return s
}

func TestMemLogTerms(t *testing.T) {
	l, st, _ := newTestLog(t, 1<<20)
	appendBoth(t, l, st, testEnts(1, 3, 1))
	appendBoth(t, l, st, testEnts(4, 5, 2))
	appendBoth(t, l, st, testEnts(6, 6, 5))
	appendBoth(t, l, st, testEnts(7, 8, 5))
	if len(l.terms) != 3 {
		t.Fatalf("%d runs for 3 terms: %v", len(l.terms), l.terms)
	}
	un := raft.ErrUnavailable
	want := fmt.Sprintf("0:0 1:1 2:1 3:1 4:2 5:2 6:5 7:5 8:5 9:%v ", un)
	if got := terms(t, l, 0, 9); got != want {
		t.Fatalf("terms %q, want %q", got, want)
	}
	// A conflicting append at 5 (term 6) replaces 5..8.
	appendBoth(t, l, st, testEnts(5, 5, 6))
	if got, want := terms(t, l, 3, 6), fmt.Sprintf("3:1 4:2 5:6 6:%v ", un); got != want {
		t.Fatalf("after a conflicting append: %q, want %q", got, want)
	}
	if last, _ := l.LastIndex(); last != 5 || len(l.terms) != 3 {
		t.Fatalf("last %d, runs %v", last, l.terms)
	}
	// Compaction keeps the term of the compaction point.
	l.compact(4)
	co := raft.ErrCompacted
	if got, want := terms(t, l, 3, 5), fmt.Sprintf("3:%v 4:2 5:6 ", co); got != want {
		t.Fatalf("after compaction at 4: %q, want %q", got, want)
	}
	if first, _ := l.FirstIndex(); first != 5 || len(l.terms) != 1 {
		t.Fatalf("first %d, runs %v", first, l.terms)
	}
	l.compact(5)
	if got, want := terms(t, l, 5, 6), fmt.Sprintf("5:6 6:%v ", un); got != want || len(l.terms) != 0 {
		t.Fatalf("after compaction at the last index: %q, want %q; runs %v", got, want, l.terms)
	}
	appendBoth(t, l, st, testEnts(6, 7, 6))
	if got := terms(t, l, 6, 7); got != "6:6 7:6 " {
		t.Fatalf("after an append to a compacted log: %q", got)
	}
	// A snapshot resets the log.
	l.applySnapshot(raftpb.SnapshotMetadata{Index: 20, Term: 9})
	if got, want := terms(t, l, 19, 21), fmt.Sprintf("19:%v 20:9 21:%v ", co, un); got != want {
		t.Fatalf("after a snapshot: %q, want %q", got, want)
	}
	if s := cached(l.src.cache, l.id); s != "" {
		t.Fatalf("the cache keeps %q past the snapshot", s)
	}
}

func TestMemLogEntries(t *testing.T) {
	l, st, fatals := newTestLog(t, 1<<20)
	c := l.src.cache
	appendBoth(t, l, st, testEnts(1, 5, 1))
	appendBoth(t, l, st, testEnts(6, 10, 2))
	entries := func(lo, hi, max uint64) string {
		t.Helper()
		es, err := l.Entries(lo, hi, max)
		if err != nil {
			return err.Error()
		}
		return render(es)
	}
	all := "1/1 2/1 3/1 4/1 5/1 6/2 7/2 8/2 9/2 10/2 "
	if got := entries(1, 11, math.MaxUint64); got != all || st.reads != 0 || c.hits.Load() != 1 {
		t.Fatalf("from the cache: %q, %d store reads, %d hits", got, st.reads, c.hits.Load())
	}

	// A miss reads the store, and caches what it read.
	c.drop(l.id)
	if got := entries(3, 8, math.MaxUint64); got != "3/1 4/1 5/1 6/2 7/2 " || st.reads != 1 || c.misses.Load() != 1 {
		t.Fatalf("after a miss: %q, %d store reads, %d misses", got, st.reads, c.misses.Load())
	}
	if s := cached(c, l.id); s != "3/1 4/1 5/1 6/2 7/2 " {
		t.Fatalf("read back, cached %q", s)
	}
	// Part from the cache, the rest from the store.
	if got := entries(4, 11, math.MaxUint64); got != "4/1 5/1 6/2 7/2 8/2 9/2 10/2 " || st.reads != 2 {
		t.Fatalf("part cached: %q, %d store reads", got, st.reads)
	}
	if s := cached(c, l.id); s != "3/1 4/1 5/1 6/2 7/2 8/2 9/2 10/2 " {
		t.Fatalf("read back after the run, cached %q", s)
	}
	// The size limit across the two: the cache's entries fit, the
	// store's first does not.
	size := uint64(testEnts(1, 1, 1)[0].Size())
	c.compact(l.id, 4)
	c.mu.Lock()
	c.truncateLocked(c.mu.groups[l.id], 2) // 5 and 6 left
	c.mu.Unlock()
	if got := entries(5, 11, 2*size+size/2); got != "5/1 6/2 " || st.reads != 3 {
		t.Fatalf("size limit across cache and store: %q, %d store reads", got, st.reads)
	}
	c.drop(l.id)
	if got := entries(5, 11, 3*size); got != "5/1 6/2 7/2 " || st.reads != 4 {
		t.Fatalf("size limit in the store's part: %q, %d store reads", got, st.reads)
	}
	if got := entries(1, 11, 0); got != "1/1 " {
		t.Fatalf("size 0: %q", got)
	}

	// Appending to what Entries returned changes nothing raft reads later.
	es, _ := l.Entries(5, 7, math.MaxUint64)
	_ = append(es, raftpb.Entry{Index: 99, Term: 99})
	if got := entries(1, 11, math.MaxUint64); got != all {
		t.Fatalf("after an append to a returned slice: %q", got)
	}

	// Bounds: compacted, unavailable.
	l.compact(3)
	if _, err := l.Entries(3, 5, math.MaxUint64); !errors.Is(err, raft.ErrCompacted) {
		t.Fatalf("below the compaction point: %v", err)
	}
	if _, err := l.Entries(4, 12, math.MaxUint64); !errors.Is(err, raft.ErrUnavailable) {
		t.Fatalf("past the last index: %v", err)
	}
	if got := entries(4, 11, math.MaxUint64); got != "4/1 5/1 6/2 7/2 8/2 9/2 10/2 " {
		t.Fatalf("after compaction at 3: %q", got)
	}
	if s := cached(c, l.id); s != "4/1 5/1 6/2 7/2 8/2 9/2 10/2 " {
		t.Fatalf("after compaction at 3, cached %q", s)
	}
	if len(*fatals) != 0 {
		t.Fatalf("fatal errors: %v", *fatals)
	}
}

// A store that fails a read, or returns entries that are not the log's,
// stops the Host; raft gets no entry and no error, which it takes.
func TestMemLogReadFailure(t *testing.T) {
	l, st, fatals := newTestLog(t, -1)
	appendBoth(t, l, st, testEnts(1, 5, 1))
	boom := errors.New("disk on fire")
	st.fail = boom
	es, err := l.Entries(2, 4, math.MaxUint64)
	if es != nil || err != nil || len(*fatals) != 1 || !errors.Is((*fatals)[0], boom) {
		t.Fatalf("failed read: %q, %v; fatal %v", render(es), err, *fatals)
	}
	st.fail = nil
	// The store lost entry 4 and holds one of another term at 3.
	b := st.NewBatch()
	b.Append(l.id, testEnts(3, 3, 4), 5)
	if err := b.Commit(true); err != nil {
		t.Fatal(err)
	}
	es, err = l.Entries(2, 5, math.MaxUint64)
	if es != nil || err != nil || len(*fatals) != 2 || !errors.Is((*fatals)[1], storage.ErrEntryMissing) {
		t.Fatalf("read of a lost entry: %q, %v; fatal %v", render(es), err, *fatals)
	}
	es, err = l.Entries(2, 4, math.MaxUint64)
	if es != nil || err != nil || len(*fatals) != 3 || !errors.Is((*fatals)[2], storage.ErrCorrupt) {
		t.Fatalf("read of an entry of another term: %q, %v; fatal %v", render(es), err, *fatals)
	}
}
