package storage

import (
	"fmt"
	"math"
	"sort"
	"sync"

	"go.etcd.io/raft/v3/raftpb"
)

// Mem is an in-memory Store for tests and simulation. It keeps two views:
// what has been written and what has been synced. Crash throws away every
// write that was not followed by a synced commit, the way a power loss
// throws away what the page cache held.
//
// Mem.mu is a leaf lock.
type Mem struct {
	mu struct {
		sync.Mutex
		live    map[uint64]*memGroup
		durable map[uint64]*memGroup
		// unsynced holds the committed but unsynced batches, in order.
		unsynced []*memBatch
		syncs    int
	}
}

type memGroup struct {
	hs        raftpb.HardState
	cs        raftpb.ConfState
	confIndex uint64
	hasConf   bool
	snap      raftpb.Snapshot
	log       map[uint64]raftpb.Entry
}

var _ Store = (*Mem)(nil)

// NewMem returns an empty in-memory store.
func NewMem() *Mem {
	m := &Mem{}
	m.mu.live = make(map[uint64]*memGroup)
	m.mu.durable = make(map[uint64]*memGroup)
	return m
}

// Crash discards every write not made durable by a synced commit.
func (m *Mem) Crash() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.mu.unsynced = nil
	m.mu.live = make(map[uint64]*memGroup)
	for id, g := range m.mu.durable {
		m.mu.live[id] = g.clone()
	}
}

// Syncs returns how many synced commits the store has seen.
func (m *Mem) Syncs() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.mu.syncs
}

func (g *memGroup) clone() *memGroup {
	c := *g
	c.log = make(map[uint64]raftpb.Entry, len(g.log))
	for k, v := range g.log {
		c.log[k] = v
	}
	return &c
}

// Groups implements Store.
func (m *Mem) Groups() ([]uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []uint64
	for id, g := range m.mu.live {
		if g.hasConf {
			out = append(out, id)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out, nil
}

// Load implements Store.
func (m *Mem) Load(group uint64) (GroupState, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var s GroupState
	g := m.mu.live[group]
	if g == nil {
		return s, nil
	}
	s.HardState, s.ConfState, s.ConfIndex, s.Snapshot = g.hs, g.cs, g.confIndex, g.snap
	// The log starts after the snapshot or at the truncation point,
	// whichever is later.
	first := uint64(0)
	for i := range g.log {
		if i > g.snap.Metadata.Index && (first == 0 || i < first) {
			first = i
		}
	}
	for i := first; first != 0; i++ {
		e, ok := g.log[i]
		if !ok {
			break
		}
		s.Entries = append(s.Entries, e)
	}
	return s, nil
}

// Entries implements Store.
func (m *Mem) Entries(group, lo, hi, maxBytes uint64) ([]raftpb.Entry, error) {
	if lo >= hi {
		return nil, nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	g := m.mu.live[group]
	if g == nil {
		return nil, fmt.Errorf("%w: group %d index %d", ErrEntryMissing, group, lo)
	}
	out := make([]raftpb.Entry, 0, min(hi-lo, 64))
	var size uint64
	for i := lo; i < hi; i++ {
		e, ok := g.log[i]
		if !ok {
			return nil, fmt.Errorf("%w: group %d index %d", ErrEntryMissing, group, i)
		}
		n := uint64(e.Size())
		if len(out) > 0 && size+n > maxBytes {
			break
		}
		out = append(out, cloneEntry(e))
		size += n
	}
	return out, nil
}

// NewBatch implements Store.
func (m *Mem) NewBatch() Batch { return &memBatch{m: m} }

// Close implements Store.
func (m *Mem) Close() error { return nil }

type memBatch struct {
	m   *Mem
	ops []func(map[uint64]*memGroup)
}

func groupOf(gs map[uint64]*memGroup, id uint64) *memGroup {
	g := gs[id]
	if g == nil {
		g = &memGroup{log: make(map[uint64]raftpb.Entry)}
		gs[id] = g
	}
	return g
}

func cloneEntry(e raftpb.Entry) raftpb.Entry {
	e.Data = append([]byte(nil), e.Data...)
	return e
}

func (b *memBatch) Append(group uint64, entries []raftpb.Entry, prevLast uint64) {
	es := make([]raftpb.Entry, len(entries))
	for i := range entries {
		es[i] = cloneEntry(entries[i])
	}
	b.ops = append(b.ops, func(gs map[uint64]*memGroup) {
		g := groupOf(gs, group)
		for _, e := range es {
			g.log[e.Index] = e
		}
		if n := len(es); n > 0 {
			for i := es[n-1].Index + 1; i <= prevLast; i++ {
				delete(g.log, i)
			}
		}
	})
}

func (b *memBatch) SetHardState(group uint64, hs raftpb.HardState) {
	b.ops = append(b.ops, func(gs map[uint64]*memGroup) { groupOf(gs, group).hs = hs })
}

func (b *memBatch) SetConfState(group uint64, cs raftpb.ConfState, index uint64) {
	cs = CloneConf(cs)
	b.ops = append(b.ops, func(gs map[uint64]*memGroup) {
		g := groupOf(gs, group)
		g.cs, g.confIndex, g.hasConf = cs, index, true
	})
}

func (b *memBatch) SetSnapshot(group uint64, snap raftpb.Snapshot) {
	b.SetSnapshotKeepLog(group, snap)
	b.Truncate(group, math.MaxUint64) // the whole log: see Batch.SetSnapshot
}

func (b *memBatch) SetSnapshotKeepLog(group uint64, snap raftpb.Snapshot) {
	snap.Data = append([]byte(nil), snap.Data...)
	snap.Metadata.ConfState = CloneConf(snap.Metadata.ConfState)
	b.ops = append(b.ops, func(gs map[uint64]*memGroup) { groupOf(gs, group).snap = snap })
}

func (b *memBatch) Truncate(group uint64, before uint64) {
	b.ops = append(b.ops, func(gs map[uint64]*memGroup) {
		g := groupOf(gs, group)
		for i := range g.log {
			if i < before {
				delete(g.log, i)
			}
		}
	})
}

func (b *memBatch) DeleteGroup(group uint64) {
	b.ops = append(b.ops, func(gs map[uint64]*memGroup) { delete(gs, group) })
}

func (b *memBatch) Empty() bool { return len(b.ops) == 0 }

func (b *memBatch) Commit(sync bool) error {
	m := b.m
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, op := range b.ops {
		op(m.mu.live)
	}
	done := &memBatch{ops: b.ops}
	b.ops = nil
	m.mu.unsynced = append(m.mu.unsynced, done)
	if sync {
		for _, ub := range m.mu.unsynced {
			for _, op := range ub.ops {
				op(m.mu.durable)
			}
		}
		m.mu.unsynced = nil
		m.mu.syncs++
	}
	return nil
}

func (b *memBatch) Close() { b.ops = nil }

// CloneConf returns a deep copy of cs.
func CloneConf(cs raftpb.ConfState) raftpb.ConfState {
	return raftpb.ConfState{
		Voters:         append([]uint64(nil), cs.Voters...),
		Learners:       append([]uint64(nil), cs.Learners...),
		VotersOutgoing: append([]uint64(nil), cs.VotersOutgoing...),
		LearnersNext:   append([]uint64(nil), cs.LearnersNext...),
		AutoLeave:      cs.AutoLeave,
	}
}
