package kv

import (
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
)

// DefaultHoldBytes is the HoldBudget of a state machine given none.
const DefaultHoldBytes = 4 << 20

// HoldBudget bounds the bytes of applied writes that the state machines
// sharing it hold in memory instead of writing them to Pebble at once
// (keys, values and a per-key overhead): a group whose Apply finds the
// budget spent writes what it holds. Share one among the groups of a node
// to bound the node's memory whatever the number of groups. Safe for
// concurrent use.
type HoldBudget struct {
	limit int64
	used  atomic.Int64
}

// NewHoldBudget returns a budget of limit bytes. 0 turns holding off:
// every Apply writes to Pebble.
func NewHoldBudget(limit int64) *HoldBudget { return &HoldBudget{limit: limit} }

// Used returns the bytes held now.
func (b *HoldBudget) Used() int64 { return b.used.Load() }

// dirtyOverhead is what a held key costs beyond its key and value bytes
// (map entry, string and slice headers), for the HoldBudget account.
const dirtyOverhead = 64

// dirtyWrite is one applied write of a data key: the value as stored in
// Pebble (stored.go: revisions, then value), or nil for a delete.
type dirtyWrite struct {
	key    string
	stored []byte
}

// dirtySet holds the range's data keys written by applied puts and deletes
// that are not in Pebble yet: the state is Pebble with these on top.
//
// Why: every key written to Pebble is an insert in its memtable's skiplist,
// a chain of cache misses that was a fifth of a node's CPU under `bench
// put`. Held here, a key written again before the next flush costs one map
// assignment, and a flush writes each key once. Nothing is lost in a crash:
// the raft log holds every command after the applied index Pebble has, and
// the engine truncates it only after Sync, which flushes first.
//
// The worker that owns the group is the only writer (apply, reset) and
// reads m without the lock; readers (Query) take mu for reading. A stored
// slice is never modified once in m, so a reader may keep it.
type dirtySet struct {
	mu struct {
		sync.RWMutex
		m map[string][]byte
		// hist are the history records of the held writes (history.go),
		// in the order applied.
		hist []histWrite
	}
	// bytes accounts m against budget. Owned by the worker.
	bytes  int64
	budget *HoldBudget
}

// lookupLocked returns the held write of key: ok false if none, stored nil
// for a delete. The caller is the owning worker or holds mu for reading.
func (d *dirtySet) lookupLocked(key []byte) (stored []byte, ok bool) {
	stored, ok = d.mu.m[string(key)]
	return stored, ok
}

// get is lookupLocked for a reader.
func (d *dirtySet) get(key []byte) (stored []byte, ok bool) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.lookupLocked(key)
}

// apply makes writes and their history records visible, all at once.
// Called by the owning worker.
func (d *dirtySet) apply(writes []dirtyWrite, hist []histWrite) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.mu.m == nil {
		d.mu.m = make(map[string][]byte)
	}
	before := d.bytes
	for _, w := range writes {
		if old, ok := d.mu.m[w.key]; ok {
			d.bytes -= int64(len(w.key) + len(old) + dirtyOverhead)
		}
		d.mu.m[w.key] = w.stored
		d.bytes += int64(len(w.key) + len(w.stored) + dirtyOverhead)
	}
	for _, h := range hist {
		// The stored value is the one the data write holds: only the
		// record's own bytes count.
		d.bytes += int64(len(h.key) + dirtyOverhead)
	}
	d.mu.hist = append(d.mu.hist, hist...)
	d.budget.used.Add(d.bytes - before)
}

// full reports whether the budget is spent.
func (d *dirtySet) full() bool { return d.budget.used.Load() > d.budget.limit }

// empty reports whether nothing is held. Called by the owning worker.
func (d *dirtySet) empty() bool { return len(d.mu.m) == 0 && len(d.mu.hist) == 0 }

// writeTo adds every held write to b, each key under prefix, and their
// history records. Called by the
// owning worker.
func (d *dirtySet) writeTo(b *pebble.Batch, prefix []byte) error {
	for k, v := range d.mu.m {
		if v == nil {
			op := b.DeleteDeferred(len(prefix) + len(k))
			copy(op.Key[copy(op.Key, prefix):], k)
			if err := op.Finish(); err != nil {
				return err
			}
			continue
		}
		op := b.SetDeferred(len(prefix)+len(k), len(v))
		copy(op.Key[copy(op.Key, prefix):], k)
		copy(op.Value, v)
		if err := op.Finish(); err != nil {
			return err
		}
	}
	for _, h := range d.mu.hist {
		v := h.stored
		if v == nil {
			v = []byte{}
		}
		if err := b.Set(histKey([]byte(h.key), h.rev), v, nil); err != nil {
			return err
		}
	}
	return nil
}

// reset forgets every held write, once Pebble has them. Called by the
// owning worker.
func (d *dirtySet) reset() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.mu.m) > 4096 {
		d.mu.m = nil // let a burst's buckets go
	} else {
		clear(d.mu.m)
	}
	if cap(d.mu.hist) > 4096 {
		d.mu.hist = nil
	} else {
		clear(d.mu.hist)
		d.mu.hist = d.mu.hist[:0]
	}
	d.budget.used.Add(-d.bytes)
	d.bytes = 0
}

// view returns the held writes of keys in [start, end) (end empty: to the
// end of the keyspace), in key order, and an iterator from newIter, both as
// of one instant: a flush between the two would otherwise let a scan see a
// later write of one key next to an earlier write of another. newIter must
// not block (opening a Pebble iterator reads no file).
func (d *dirtySet) view(start, end []byte, newIter func() (*pebble.Iterator, error)) ([]dirtyWrite, *pebble.Iterator, error) {
	held, it, err := d.collect(start, end, newIter)
	// Sorted after the unlock: held is a copy, and Apply waits for the lock.
	slices.SortFunc(held, func(a, b dirtyWrite) int { return strings.Compare(a.key, b.key) })
	return held, it, err
}

// collect is view's part under the read lock, which it takes: the held
// writes in the span, unsorted, and the iterator.
func (d *dirtySet) collect(start, end []byte, newIter func() (*pebble.Iterator, error)) ([]dirtyWrite, *pebble.Iterator, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	var held []dirtyWrite
	for k, v := range d.mu.m {
		if k >= string(start) && (len(end) == 0 || k < string(end)) {
			held = append(held, dirtyWrite{key: k, stored: v})
		}
	}
	it, err := newIter()
	return held, it, err
}

// historyView returns the held history records of the keys in [start, end)
// (end empty: to the end of the keyspace), in the order applied, and an
// iterator from newIter, both as of one instant (see view).
func (d *dirtySet) historyView(start, end []byte, newIter func() (*pebble.Iterator, error)) ([]histWrite, *pebble.Iterator, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	var held []histWrite
	for _, h := range d.mu.hist {
		if h.key >= string(start) && (len(end) == 0 || h.key < string(end)) {
			held = append(held, h)
		}
	}
	it, err := newIter()
	return held, it, err
}
