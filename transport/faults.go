package transport

import (
	"maps"
	"sync"
	"sync/atomic"
	"time"
)

// Faults are the fault hooks of a GRPCTransport, for tests and chaos runs.
// Every fault can be set and removed at run time; all methods are safe for
// concurrent use. Reading the current faults costs the transport one atomic
// load, so the hooks stay compiled in.
//
//   - Ingress block: frames from a peer are not processed; the stream that
//     carried them hangs until the sender gives up on it (its write or ack
//     deadline) — a silent black hole, no RST, no error.
//   - Egress drop: frames to a peer are dropped before the write and counted
//     with reason "fault"; must-deliver messages wait instead.
//   - Egress delay: every frame to a peer waits this long before its write.
//   - Partition: peers outside this node's set are cut both ways (egress
//     dropped, ingress black-holed).
//
// Lock order: Faults.mu is a leaf; it is never held while anything else is
// taken or while anything blocks.
type Faults struct {
	self uint64
	cur  atomic.Pointer[faultState]

	mu struct {
		sync.Mutex
	}
}

// faultState is an immutable set of faults; a change publishes a new one and
// closes the changed channel of the old one, waking whoever waits on it.
type faultState struct {
	ingressBlocked map[uint64]bool
	egressDropped  map[uint64]bool
	egressDelay    map[uint64]time.Duration
	cut            map[uint64]bool
	changed        chan struct{}
}

func newFaults(self uint64) *Faults {
	f := &Faults{self: self}
	f.cur.Store(&faultState{changed: make(chan struct{})})
	return f
}

func (s *faultState) clone() *faultState {
	return &faultState{
		ingressBlocked: maps.Clone(s.ingressBlocked),
		egressDropped:  maps.Clone(s.egressDropped),
		egressDelay:    maps.Clone(s.egressDelay),
		cut:            maps.Clone(s.cut),
		changed:        make(chan struct{}),
	}
}

func (f *Faults) update(fn func(s *faultState)) {
	f.mu.Lock()
	old := f.cur.Load()
	next := old.clone()
	fn(next)
	f.cur.Store(next)
	f.mu.Unlock()
	close(old.changed)
}

func setBool(m *map[uint64]bool, id uint64, on bool) {
	if on {
		if *m == nil {
			*m = make(map[uint64]bool)
		}
		(*m)[id] = true
	} else {
		delete(*m, id)
	}
}

// SetIngressBlocked black-holes (on) or restores (off) frames from node from.
func (f *Faults) SetIngressBlocked(from uint64, on bool) {
	f.update(func(s *faultState) { setBool(&s.ingressBlocked, from, on) })
}

// SetEgressDropped drops (on) or restores (off) frames to node to.
func (f *Faults) SetEgressDropped(to uint64, on bool) {
	f.update(func(s *faultState) { setBool(&s.egressDropped, to, on) })
}

// SetEgressDelay delays every frame to node to by d; zero removes the delay.
func (f *Faults) SetEgressDelay(to uint64, d time.Duration) {
	f.update(func(s *faultState) {
		if d <= 0 {
			delete(s.egressDelay, to)
			return
		}
		if s.egressDelay == nil {
			s.egressDelay = make(map[uint64]time.Duration)
		}
		s.egressDelay[to] = d
	})
}

// Partition cuts this node from every node that is not in the same set as
// it. A node in no set is cut from everyone listed. Partition replaces the
// previous partition; Partition() with no sets removes it.
func (f *Faults) Partition(sets ...[]uint64) {
	cut := make(map[uint64]bool)
	var mine []uint64
	for _, set := range sets {
		for _, id := range set {
			if id == f.self {
				mine = set
			}
		}
	}
	for _, set := range sets {
		for _, id := range set {
			cut[id] = true
		}
	}
	for _, id := range mine {
		delete(cut, id)
	}
	delete(cut, f.self)
	f.update(func(s *faultState) { s.cut = cut })
}

// Heal removes every fault.
func (f *Faults) Heal() {
	f.update(func(s *faultState) { *s = faultState{changed: s.changed} })
}

// state returns the current faults.
func (f *Faults) state() *faultState { return f.cur.Load() }

func (s *faultState) blocksIngress(from uint64) bool {
	return s.ingressBlocked[from] || s.cut[from]
}

// egress returns whether frames to node to are dropped and how long they are
// delayed.
func (s *faultState) egress(to uint64) (drop bool, delay time.Duration) {
	return s.egressDropped[to] || s.cut[to], s.egressDelay[to]
}
