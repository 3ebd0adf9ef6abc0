package kv

import (
	"bytes"
	"slices"
	"sync"
)

// RangeCache is a cache of range descriptors: what a client or a node
// believes the ranges to be, learned from the meta index and from the
// ranges themselves. It keeps descriptors that do not overlap; a newer
// descriptor (higher generation) evicts the older ones it overlaps, an
// older one is ignored. A miss, or a descriptor that turns out wrong (the
// range answers that it does not hold the key), is resolved by asking the
// meta index or the range again. Safe for concurrent use; its mutex is a
// leaf.
type RangeCache struct {
	mu struct {
		sync.RWMutex
		// ds ascending by Start, pairwise disjoint.
		ds []Descriptor
	}
}

// Lookup returns the cached descriptor whose span holds key.
func (c *RangeCache) Lookup(key []byte) (Descriptor, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	i := c.findLocked(key)
	if i < 0 {
		return Descriptor{}, false
	}
	return c.mu.ds[i], true
}

// findLocked returns the index of the descriptor holding key, or -1.
func (c *RangeCache) findLocked(key []byte) int {
	ds := c.mu.ds
	// The last descriptor that starts at or before key.
	i := lastAtOrBefore(ds, key)
	if i < 0 || !ds[i].Contains(key) {
		return -1
	}
	return i
}

// lastAtOrBefore returns the index of the last descriptor of ds starting at or
// before key, or -1.
func lastAtOrBefore(ds []Descriptor, key []byte) int {
	i, found := slices.BinarySearchFunc(ds, key, func(d Descriptor, k []byte) int { return bytes.Compare(d.Start, k) })
	if found {
		return i
	}
	return i - 1
}

// Get returns the cached descriptor of range id.
func (c *RangeCache) Get(id uint64) (Descriptor, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for _, d := range c.mu.ds {
		if d.ID == id {
			return d, true
		}
	}
	return Descriptor{}, false
}

// Insert caches ds (each unless an overlapping cached one is as recent),
// evicting what they overlap. The cache keeps its own copies.
func (c *RangeCache) Insert(ds ...Descriptor) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range ds {
		c.insertLocked(&ds[i])
	}
}

func (c *RangeCache) insertLocked(d *Descriptor) {
	ds := c.mu.ds
	lo := lastAtOrBefore(ds, d.Start)
	if lo < 0 || !ds[lo].Overlaps(d.Start, d.End) {
		lo++
	}
	hi := lo
	for hi < len(ds) && ds[hi].Overlaps(d.Start, d.End) {
		if ds[hi].Generation >= d.Generation {
			return // as recent or more: keep what is cached
		}
		hi++
	}
	c.mu.ds = slices.Replace(ds, lo, hi, d.Clone())
}

// Evict forgets the cached descriptor of range id if it is generation gen
// or older (a range answered that it changed).
func (c *RangeCache) Evict(id, gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.mu.ds = slices.DeleteFunc(c.mu.ds, func(d Descriptor) bool { return d.ID == id && d.Generation <= gen })
}

// All returns a copy of every cached descriptor, in key order.
func (c *RangeCache) All() []Descriptor {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return slices.Clone(c.mu.ds)
}

// Len returns the number of cached descriptors.
func (c *RangeCache) Len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.mu.ds)
}
