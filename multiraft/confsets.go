package multiraft

// Interned membership lists.

import (
	"encoding/binary"
	"runtime"
	"slices"
	"sync"
	"weak"
)

// confSets interns the voter and learner lists groups publish
// (group.publishConf): the groups of a node share a few replica sets, and
// one copy of each serves them all. A private copy per group was 0.07 KiB
// of each idle replica (BENCHMARKS.md, "Quiescence: the idle floor and
// memory, later"). A list no group publishes any more is collected, and its
// entry leaves the map. Safe for concurrent use; mu is a leaf.
type confSets struct {
	mu struct {
		sync.Mutex
		m map[string]weak.Pointer[[]uint64]
	}
}

// noIDs is the published empty list (nil, as a copy of one was).
var noIDs []uint64

// intern returns the shared copy of ids. The list it points to is never
// modified.
func (c *confSets) intern(ids []uint64) *[]uint64 {
	if len(ids) == 0 {
		return &noIDs
	}
	key := make([]byte, 0, 8*len(ids))
	for _, id := range ids {
		key = binary.BigEndian.AppendUint64(key, id)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if p := c.mu.m[string(key)].Value(); p != nil {
		return p
	}
	if c.mu.m == nil {
		c.mu.m = make(map[string]weak.Pointer[[]uint64])
	}
	cp := slices.Clone(ids)
	p := &cp
	c.mu.m[string(key)] = weak.Make(p)
	runtime.AddCleanup(p, c.forget, string(key))
	return p
}

// forget drops the entry of a collected list, unless a new one took it.
func (c *confSets) forget(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.mu.m[key].Value() == nil {
		delete(c.mu.m, key)
	}
}
