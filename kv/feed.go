package kv

import (
	"sync"
	"sync/atomic"
)

// The live feed of a range's writes, for watches (watch.go).
//
// While a range has watchers, Apply appends the history records of what it
// applied to a ring, after they are visible, and wakes the watchers: one
// lock, a copy and a channel close, never a wait on a watcher (law 3). A
// watcher reads the ring from its own cursor at its own pace; one that
// falls behind the ring (its cursor below base) reads the history instead
// (history.go). A range without watchers keeps no ring.

// feedSize is the most records a ring holds: 4,096 records are 100 ms of a
// range taking 40,000 writes/s, far more than a watcher that keeps up
// lags; one that lags more reads the history.
const feedSize = 4096

// feed is a range's ring of recent writes.
type feed struct {
	// watchers counts the registered watchers; Apply publishes while it is
	// above 0.
	watchers atomic.Int32

	mu struct {
		sync.Mutex
		// ring holds the records of revisions above base, oldest first,
		// from ring[head], n of them.
		ring []histWrite
		head int
		n    int
		// base: every record of a revision above base is in the ring
		// (those at or below it may not be). last is the revision of the
		// latest publish (or reset).
		base, last uint64
		// changed is closed, and replaced, when anything is published, the
		// state is reset or the descriptor changes.
		changed chan struct{}
	}
}

// watchFeed returns the range's feed, made on first use (by a watch).
func (s *StateMachine) watchFeed() *feed {
	if f := s.feedp.Load(); f != nil {
		return f
	}
	s.feedp.CompareAndSwap(nil, new(feed))
	return s.feedp.Load()
}

// watched reports whether Apply must publish: f is not nil (a watch made
// it) and has watchers.
func (f *feed) watched() bool { return f != nil && f.watchers.Load() > 0 }

// register adds a watcher; rev is the range's revision, read after the
// watcher is counted (see publish).
func (f *feed) register(rev func() uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.watchers.Add(1) == 1 {
		f.mu.ring = make([]histWrite, feedSize)
		f.mu.head, f.mu.n = 0, 0
		r := rev()
		f.mu.base, f.mu.last = r, r
	}
	if f.mu.changed == nil {
		f.mu.changed = make(chan struct{})
	}
}

// unregister removes a watcher; the last one frees the ring.
func (f *feed) unregister() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.watchers.Add(-1) == 0 {
		f.mu.ring = nil
	}
}

// publish appends recs, then wakes the watchers. rev is the range's
// revision after them. Called by the worker after the records are visible
// and the revision stored: a watcher counted before that load sees them
// here; one counted after it starts above them (register).
func (f *feed) publish(recs []histWrite, rev uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.mu.ring == nil {
		return
	}
	for _, r := range recs {
		if r.rev <= f.mu.base {
			continue // a watcher registered in between: it starts above
		}
		if f.mu.n == len(f.mu.ring) {
			old := f.mu.ring[f.mu.head]
			f.mu.base = max(f.mu.base, old.rev)
			f.mu.ring[f.mu.head] = histWrite{}
			f.mu.head = (f.mu.head + 1) % len(f.mu.ring)
			f.mu.n--
		}
		f.mu.ring[(f.mu.head+f.mu.n)%len(f.mu.ring)] = r
		f.mu.n++
	}
	f.mu.last = max(f.mu.last, rev)
	f.wakeLocked()
}

// reset empties the ring at revision rev: the state was replaced (a
// snapshot), and watchers read what they lack from the history. A nil f
// (no watch ever) has nothing to reset.
func (f *feed) reset(rev uint64) {
	if f == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.mu.ring != nil {
		clear(f.mu.ring)
		f.mu.head, f.mu.n = 0, 0
	}
	f.mu.base, f.mu.last = rev, rev
	f.wakeLocked()
}

// changes returns the channel closed at the next change.
func (f *feed) changes() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mu.changed
}

// wake wakes the watchers (the descriptor changed); nil f: none.
func (f *feed) wake() {
	if f == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.wakeLocked()
}

func (f *feed) wakeLocked() {
	if f.mu.changed != nil {
		close(f.mu.changed)
	}
	f.mu.changed = make(chan struct{})
}

// since returns the records of keys in [start, end) of revisions above
// after, at most limit of them but never part of a revision, and the
// revision up to which they are complete; ok false if the ring no longer
// holds all of them (read the history). changed is closed at the next
// change.
func (f *feed) since(start, end []byte, after uint64, limit int) (recs []histWrite, upto uint64, ok bool, changed <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	changed = f.mu.changed
	if f.mu.ring == nil || after < f.mu.base {
		return nil, 0, false, changed
	}
	upto = f.mu.last
	// The ring is in revision order: find the first record above after.
	ring, head, n := f.mu.ring, f.mu.head, f.mu.n
	at := func(i int) histWrite { return ring[(head+i)%len(ring)] }
	lo, hi := 0, n
	for lo < hi {
		mid := (lo + hi) / 2
		if at(mid).rev <= after {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	for i := lo; i < n; i++ {
		r := at(i)
		if len(recs) >= limit && r.rev != recs[len(recs)-1].rev {
			// Every revision below this one is read whole.
			return recs, r.rev - 1, true, changed
		}
		if r.key >= string(start) && (len(end) == 0 || r.key < string(end)) {
			recs = append(recs, r)
		}
	}
	return recs, upto, true, changed
}
