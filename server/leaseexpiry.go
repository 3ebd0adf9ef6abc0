package server

import (
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flotilla/flotilla/election"
)

// leaseExpiry is what the lease loop does each tick (leaseLoop): it
// brings the Lessor in line with the lease tables that changed and
// proposes the expiry of the leases past their deadline. Its cost grows
// with the groups whose lease table changed and those with leases, not
// with the groups this node leads: a tick with no lease table changed and
// no deadline passed reads no table and looks at no group.
type leaseExpiry struct {
	lessor *election.Lessor
	self   uint64 // this node's ID
	log    *slog.Logger
	// table returns the lease table of this node's replica of group g;
	// leader returns g's leader and term as this node knows them; expire
	// proposes the expiry of lease in g.
	table  func(g uint64) (leaseTable, bool)
	leader func(g uint64) (lead, term uint64)
	expire func(g, lease uint64) (proposal, error)

	// dirty holds the groups whose lease table changed since the last
	// tick (kv.WithLeaseHook); the appliers add, tick drains.
	dirty groupSet
	// wake (capacity 1) wakes the lease loop when dirty gained a group:
	// a loop with nothing to tick for sleeps (leaseLoop).
	wake chan struct{}

	// Owned by the lease loop.
	pending []pendingExpiry
	ids     []uint64
	due     []election.Expiry

	// ticks counts ticks; synced the lease tables ticks read (tests).
	ticks, synced atomic.Uint64
}

// leaseTable is a replica's applied lease table (kv.StateMachine.Leases).
type leaseTable interface {
	Leases(since uint64) (map[uint64]time.Duration, uint64)
}

// proposal is a proposal in flight (multiraft.Future).
type proposal interface {
	Done() <-chan struct{}
	Result() ([]byte, error)
}

// pendingExpiry is an expiry proposal in flight.
type pendingExpiry struct {
	group, lease uint64
	f            proposal
}

// leasesChanged is the state machines' lease hook (kv.WithLeaseHook):
// the next tick syncs group id if this node leads it.
// It never blocks (it runs on the apply path).
func (x *leaseExpiry) leasesChanged(id uint64) {
	x.dirty.add(id)
	select {
	case x.wake <- struct{}{}:
	default:
	}
}

// busy reports whether the next tick may have work: an expiry in flight
// to collect, a lease table changed, or a lease held in a group led here
// (whose deadline may pass). Only the lease loop calls it.
func (x *leaseExpiry) busy() bool {
	return len(x.pending) > 0 || !x.dirty.empty() || x.lessor.Leased()
}

// tick collects the expiry proposals that ended (a failed one is offered
// again), syncs the led groups whose lease table changed, and proposes the
// expiry of every lease past its deadline.
func (x *leaseExpiry) tick() {
	x.ticks.Add(1)
	keep := x.pending[:0]
	for _, p := range x.pending {
		select {
		case <-p.f.Done():
			if _, err := p.f.Result(); err != nil {
				x.log.Debug("lease expiry not applied; will retry", "group", p.group, "lease", p.lease, "err", err)
			} else {
				x.log.Info("lease expired", "group", p.group, "lease", p.lease)
			}
			x.lessor.Done(p.group, p.lease)
		default:
			keep = append(keep, p)
		}
	}
	clear(x.pending[len(keep):])
	x.pending = keep

	// Drained before the tables are read: a change whose hook runs
	// later is in the next tick's set. A group not led now needs no
	// sync: Lead reads the whole table.
	x.ids = x.dirty.drain(x.ids[:0])
	for _, g := range x.ids {
		v, ok := x.lessor.Version(g)
		if !ok {
			continue
		}
		t, ok := x.table(g)
		if !ok {
			continue
		}
		x.synced.Add(1)
		if leases, nv := t.Leases(v); leases != nil {
			x.lessor.Sync(g, leases, nv)
		}
	}

	x.due = x.lessor.Due(x.due[:0])
	for _, e := range x.due {
		if lead, term := x.leader(e.Group); lead != x.self || term != e.Term {
			x.lessor.Done(e.Group, e.Lease)
			continue
		}
		f, err := x.expire(e.Group, e.Lease)
		if err != nil {
			x.lessor.Done(e.Group, e.Lease)
			continue
		}
		x.pending = append(x.pending, pendingExpiry{group: e.Group, lease: e.Lease, f: f})
	}
}

// groupSet is a set of group IDs. Safe for concurrent use; mu is a leaf.
type groupSet struct {
	mu sync.Mutex
	m  map[uint64]struct{}
}

func (s *groupSet) add(id uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = make(map[uint64]struct{})
	}
	s.m[id] = struct{}{}
}

// empty reports whether the set holds no ID.
func (s *groupSet) empty() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m) == 0
}

// drain appends the set's IDs to buf, empties the set and returns buf.
func (s *groupSet) drain(buf []uint64) []uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.m) == 0 {
		return buf
	}
	for id := range s.m {
		buf = append(buf, id)
	}
	if len(s.m) > 64 {
		s.m = nil // do not keep (and clear) the buckets of a burst
	} else {
		clear(s.m)
	}
	return buf
}
