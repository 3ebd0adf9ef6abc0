package multiraft

// The node-wide cache of raft log entries.

import (
	"sync"
	"sync/atomic"
	"unsafe"

	"go.etcd.io/raft/v3/raftpb"
)

// entryOverhead is what an entry costs the cache besides its data: the
// raftpb.Entry value in the cache's slice.
const entryOverhead = int64(unsafe.Sizeof(raftpb.Entry{}))

// entryBytes is what the cache counts for e against its budget.
func entryBytes(e *raftpb.Entry) int64 { return entryOverhead + int64(cap(e.Data)) }

// entryCache holds recent log entries of all the Host's groups within a
// byte budget (Config.EntryCacheBytes). A group's memLog keeps only the
// terms of its log; its entries are on disk, and the recent ones here,
// where its owner puts them as they are appended and looks for them first
// when raft asks (memLog.Entries).
//
// Each group's cached entries are one run of consecutive indexes of its
// log. Over budget, the cache drops the oldest entries of the group put
// into or read from longest ago, then of the next: an idle group leaves
// first, and a busy one keeps its tail, which raft reads to apply
// committed entries and to send them to followers.
//
// Shared by the Host's workers. mu is a leaf lock, held only to copy entry
// values in and out and to update the accounting. A group's run changes
// only through its owner (which holds the group, so one goroutine at a
// time) and through eviction by any worker's put.
//
// The cache copies raftpb.Entry values but shares their Data with raft and
// with the callers of get: nobody modifies entry data in place (raft's
// Storage contract).
type entryCache struct {
	budget int64 // bytes; <= 0: the cache holds nothing
	mu     struct {
		sync.Mutex
		groups map[uint64]*cacheRun
		// lru is the sentinel of the runs' ring, most recently used
		// first (lru.next) and least recently used last (lru.prev).
		lru cacheRun
	}
	// Written under mu, read by metrics and tests without it.
	bytes, entries atomic.Int64
	hits, misses   atomic.Uint64
}

// cacheRun is one group's cached entries.
type cacheRun struct {
	group uint64
	ents  []raftpb.Entry // consecutive indexes; never empty while in groups
	bytes int64
	// dropped counts the slots before ents[0] in its backing array, left
	// by dropping entries from the front; once they outnumber the live
	// entries the run is copied to a new array, so that a run cut short
	// does not keep a long array alive.
	dropped    int
	prev, next *cacheRun
}

func newEntryCache(budget int64) *entryCache {
	c := &entryCache{budget: budget}
	c.mu.groups = make(map[uint64]*cacheRun)
	c.mu.lru.next, c.mu.lru.prev = &c.mu.lru, &c.mu.lru
	return c
}

// get returns a copy of the cached entries of group from lo on, below hi,
// the first always and then as many as fit with it in maxSize (summed
// Entry.Size, raft's measure). done reports that they answer the request:
// they reach hi or the size limit. Otherwise the caller reads the rest,
// from lo+len(ents), from the store; size is then what ents took of
// maxSize. The caller owns the slice, not the entries' Data.
func (c *entryCache) get(group, lo, hi, maxSize uint64) (ents []raftpb.Entry, size uint64, done bool) {
	if c.budget <= 0 {
		c.misses.Add(1)
		return nil, 0, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.mu.groups[group]
	if r == nil || lo < r.first() || lo > r.last() {
		c.misses.Add(1)
		return nil, 0, false
	}
	c.touchLocked(r)
	avail := r.ents[lo-r.first():]
	avail = avail[:min(uint64(len(avail)), hi-lo)]
	n := 0
	for n < len(avail) {
		s := uint64(avail[n].Size())
		if n > 0 && size+s > maxSize {
			done = true
			break
		}
		size += s
		n++
	}
	done = done || lo+uint64(n) == hi || size >= maxSize
	if done {
		c.hits.Add(1)
	} else {
		c.misses.Add(1)
	}
	return append([]raftpb.Entry(nil), avail[:n]...), size, done
}

// put caches entries just appended to group's log: they replace the
// group's cached entries from their first index on (a conflicting append
// replaces a tail).
func (c *entryCache) put(group uint64, ents []raftpb.Entry) {
	if c.budget <= 0 || len(ents) == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.mu.groups[group]
	if r != nil {
		if first := ents[0].Index; first > r.first() && first <= r.last()+1 {
			c.truncateLocked(r, int(first-r.first()))
			c.touchLocked(r)
		} else {
			// At or before the run, or after a gap: the run was of an
			// older part of the log.
			c.truncateLocked(r, 0)
			r = nil
		}
	}
	if r == nil {
		r = c.newRunLocked(group)
	}
	c.appendLocked(r, ents)
	c.evictLocked()
}

// add caches entries of group read back from the store, where they join
// the group's run: before it, after it, or as the run if there is none.
// Entries apart from the run are not cached: the run holds the tail,
// which is read most.
func (c *entryCache) add(group uint64, ents []raftpb.Entry) {
	if c.budget <= 0 || len(ents) == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.mu.groups[group]
	if r == nil {
		r = c.newRunLocked(group)
		c.appendLocked(r, ents)
		c.evictLocked()
		return
	}
	lo, hi := ents[0].Index, ents[len(ents)-1].Index
	if hi+1 < r.first() || lo > r.last()+1 {
		return
	}
	c.touchLocked(r)
	if lo < r.first() {
		c.prependLocked(r, ents[:r.first()-lo])
	}
	if hi > r.last() {
		c.appendLocked(r, ents[r.last()+1-lo:])
	}
	c.evictLocked()
}

// compact drops group's entries at or below index.
func (c *entryCache) compact(group, index uint64) {
	if c.budget <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if r := c.mu.groups[group]; r != nil && index >= r.first() {
		c.dropFrontLocked(r, int(min(index, r.last())-r.first()+1))
	}
}

// drop drops every entry of group.
func (c *entryCache) drop(group uint64) {
	if c.budget <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if r := c.mu.groups[group]; r != nil {
		c.truncateLocked(r, 0)
	}
}

func (r *cacheRun) first() uint64 { return r.ents[0].Index }
func (r *cacheRun) last() uint64  { return r.ents[len(r.ents)-1].Index }

// newRunLocked adds an empty run for group, most recently used; the
// caller gives it entries before it unlocks.
func (c *entryCache) newRunLocked(group uint64) *cacheRun {
	r := &cacheRun{group: group}
	c.mu.groups[group] = r
	c.linkFrontLocked(r)
	return r
}

func (c *entryCache) linkFrontLocked(r *cacheRun) {
	head := &c.mu.lru
	r.prev, r.next = head, head.next
	head.next.prev = r
	head.next = r
}

// touchLocked makes r the most recently used run.
func (c *entryCache) touchLocked(r *cacheRun) {
	if c.mu.lru.next == r {
		return
	}
	r.prev.next, r.next.prev = r.next, r.prev
	c.linkFrontLocked(r)
}

// accountLocked adds the entries and bytes of ents, with sign, to r and
// the cache's totals.
func (c *entryCache) accountLocked(r *cacheRun, ents []raftpb.Entry, sign int64) {
	var b int64
	for i := range ents {
		b += entryBytes(&ents[i])
	}
	r.bytes += sign * b
	c.bytes.Add(sign * b)
	c.entries.Add(sign * int64(len(ents)))
}

func (c *entryCache) appendLocked(r *cacheRun, ents []raftpb.Entry) {
	c.accountLocked(r, ents, 1)
	before := cap(r.ents)
	r.ents = append(r.ents, ents...)
	if cap(r.ents) != before {
		r.dropped = 0 // a new array
	}
}

func (c *entryCache) prependLocked(r *cacheRun, ents []raftpb.Entry) {
	c.accountLocked(r, ents, 1)
	n := make([]raftpb.Entry, 0, len(ents)+len(r.ents))
	r.ents = append(append(n, ents...), r.ents...)
	r.dropped = 0
}

// truncateLocked drops r's entries from position keep on; a run left
// empty leaves the cache.
func (c *entryCache) truncateLocked(r *cacheRun, keep int) {
	tail := r.ents[keep:]
	c.accountLocked(r, tail, -1)
	clear(tail) // the data may be freed
	r.ents = r.ents[:keep]
	if keep == 0 {
		c.removeLocked(r)
	}
}

// dropFrontLocked drops r's first n entries; a run left empty leaves the
// cache.
func (c *entryCache) dropFrontLocked(r *cacheRun, n int) {
	if n >= len(r.ents) {
		c.truncateLocked(r, 0)
		return
	}
	c.accountLocked(r, r.ents[:n], -1)
	clear(r.ents[:n])
	r.ents = r.ents[n:]
	r.dropped += n
	if r.dropped > len(r.ents) {
		r.ents = append([]raftpb.Entry(nil), r.ents...)
		r.dropped = 0
	}
}

func (c *entryCache) removeLocked(r *cacheRun) {
	r.ents, r.dropped = nil, 0
	delete(c.mu.groups, r.group)
	r.prev.next, r.next.prev = r.next, r.prev
	r.prev, r.next = nil, nil
}

// evictLocked drops entries until the cache is within its budget: the
// oldest of the least recently used run first.
func (c *entryCache) evictLocked() {
	for c.bytes.Load() > c.budget {
		r := c.mu.lru.prev
		if r == &c.mu.lru {
			panic("multiraft: entry cache counts bytes it does not hold")
		}
		over, n, b := c.bytes.Load()-c.budget, 0, int64(0)
		for n < len(r.ents) && b < over {
			b += entryBytes(&r.ents[n])
			n++
		}
		c.dropFrontLocked(r, n)
	}
}
