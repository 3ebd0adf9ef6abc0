package election

import (
	"errors"
	"sync"
	"time"
)

// Sentinel errors of the Lessor. Check them with errors.Is.
var (
	// ErrNotLeading: this node does not lead the group in the given term
	// (or has not yet taken over its leases); ask the leader.
	ErrNotLeading = errors.New("election: not the group's leader")
	// ErrExpired: the lease's deadline has passed; it is being expired
	// and can no longer be renewed.
	ErrExpired = errors.New("election: lease expired")
)

// Lessor keeps the deadlines of the leases of the groups this node leads.
// Deadlines are never replicated: a node that becomes leader of a group
// gives every lease of the group a full TTL from that moment (Lead), then
// each keep-alive it confirms pushes a lease's deadline to a full TTL from
// when the keep-alive was received (Renew). Once a deadline has passed
// the lease cannot be renewed (Renew fails with ErrExpired) and Due (or
// Expired, for one group) hands it to the caller, who proposes its expiry.
//
// Only groups with leases cost anything: Due looks at the groups that
// have at least one lease, and at none of them until the earliest
// deadline it knows of has passed.
//
// The Lessor has no goroutines and reads time only through the clock it
// was given. Safe for concurrent use; its mutex is a leaf and is never
// held across a blocking step.
type Lessor struct {
	now func() time.Time
	mu  sync.Mutex
	gs  map[uint64]*groupLeases
	// leased holds the groups of gs that have at least one lease.
	leased map[uint64]*groupLeases
	// due is no later than the deadline of any lease of leased whose
	// expiry is not in flight (zero: there is none). Renewals only push
	// deadlines, so it stays a lower bound until Due recomputes it.
	due time.Time
	// walked counts the groups Due looked at (tests).
	walked uint64
}

// Expiry names a lease whose deadline passed (Due): the caller proposes
// its expiry if this node still leads Group in Term.
type Expiry struct {
	Group, Term, Lease uint64
}

type groupLeases struct {
	term      uint64
	version   uint64 // of the lease table last synced
	deadlines map[uint64]time.Time
	ttls      map[uint64]time.Duration
	expiring  map[uint64]bool // an expiry proposal is in flight
}

// NewLessor returns a Lessor that reads time from now (time.Now if nil).
func NewLessor(now func() time.Time) *Lessor {
	if now == nil {
		now = time.Now
	}
	return &Lessor{now: now, gs: make(map[uint64]*groupLeases), leased: make(map[uint64]*groupLeases)}
}

// makeMaps makes g's maps, room for n leases. They are made together, on
// the first lease: most groups led have none, and three empty maps were
// 144 bytes of each (BENCHMARKS.md, "Quiescence: memory per idle
// replica"). Invariant: all three are nil or none is; a lease in
// deadlines is a lease in ttls.
func (g *groupLeases) makeMaps(n int) {
	g.deadlines = make(map[uint64]time.Time, n)
	g.ttls = make(map[uint64]time.Duration, n)
	g.expiring = make(map[uint64]bool)
}

// noteDeadline lowers l.due to d. l.mu is held.
func (l *Lessor) noteDeadline(d time.Time) {
	if l.due.IsZero() || d.Before(l.due) {
		l.due = d
	}
}

// noteLeases keeps g, group's record, in l.leased while it has a lease.
// l.mu is held.
func (l *Lessor) noteLeases(group uint64, g *groupLeases) {
	if len(g.deadlines) > 0 {
		l.leased[group] = g
	} else {
		delete(l.leased, group)
	}
}

// Lead records that this node leads group in term, and gives every lease
// in leases (ID → TTL) a deadline of one full TTL from now. Call it once
// the node has committed an entry of its term (multiraft's leader event),
// never earlier. Leading the same term again changes nothing.
func (l *Lessor) Lead(group, term uint64, leases map[uint64]time.Duration, version uint64) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if g := l.gs[group]; g != nil && g.term == term {
		return
	}
	g := &groupLeases{term: term, version: version}
	if len(leases) > 0 {
		g.makeMaps(len(leases))
	}
	for id, ttl := range leases {
		g.deadlines[id] = now.Add(ttl)
		g.ttls[id] = ttl
		l.noteDeadline(g.deadlines[id])
	}
	l.gs[group] = g
	l.noteLeases(group, g)
}

// StepDown forgets group's deadlines: this node no longer leads it.
func (l *Lessor) StepDown(group uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.gs, group)
	delete(l.leased, group)
}

// Leading returns the groups this node leads, with the version of the
// lease table each was last synced with. It allocates a map of every
// group led; to ask about one group, use Version.
func (l *Lessor) Leading() map[uint64]uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[uint64]uint64, len(l.gs))
	for id, g := range l.gs {
		out[id] = g.version
	}
	return out
}

// Version returns the version of group's lease table this Lessor last
// synced with (Lead, Sync); ok is false when this node does not lead
// group.
func (l *Lessor) Version(group uint64) (version uint64, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if g := l.gs[group]; g != nil {
		return g.version, true
	}
	return 0, false
}

// Sync brings group's leases in line with the applied lease table:
// a lease not seen before (granted since) gets a full TTL from now, a
// lease gone from the table (revoked or expired) is forgotten.
func (l *Lessor) Sync(group uint64, leases map[uint64]time.Duration, version uint64) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	g := l.gs[group]
	if g == nil {
		return
	}
	g.version = version
	for id, ttl := range leases {
		if _, ok := g.deadlines[id]; !ok {
			if g.deadlines == nil {
				g.makeMaps(len(leases))
			}
			g.deadlines[id] = now.Add(ttl)
			g.ttls[id] = ttl
			l.noteDeadline(g.deadlines[id])
		}
	}
	for id := range g.deadlines {
		if _, ok := leases[id]; !ok {
			delete(g.deadlines, id)
			delete(g.ttls, id)
			delete(g.expiring, id)
		}
	}
	l.noteLeases(group, g)
}

// Renew pushes lease id's deadline to received+ttl, where received is
// when the keep-alive arrived, before the leadership check that confirmed
// it. It fails with ErrNotLeading unless this node leads group in term,
// and with ErrExpired once the deadline has passed or when the lease is
// unknown (call Sync with the applied lease table first: a lease missing
// from it was revoked or expired).
func (l *Lessor) Renew(group, term, id uint64, received time.Time, ttl time.Duration) error {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	g := l.gs[group]
	if g == nil || g.term != term {
		return ErrNotLeading
	}
	d, ok := g.deadlines[id]
	if !ok || g.expiring[id] || now.After(d) {
		// Unknown after a Sync means revoked or expired since.
		return ErrExpired
	}
	if nd := received.Add(ttl); nd.After(d) {
		d = nd
	}
	g.deadlines[id] = d
	return nil
}

// Remaining returns how long lease id of group has by this leader's
// clock; ok is false when this node does not lead group or does not know
// the lease.
func (l *Lessor) Remaining(group, id uint64) (time.Duration, bool) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	g := l.gs[group]
	if g == nil {
		return 0, false
	}
	d, ok := g.deadlines[id]
	if !ok {
		return 0, false
	}
	return max(0, d.Sub(now)), true
}

// Expired returns the leases of group whose deadline has passed and whose
// expiry is not already in flight, and marks them in flight. The caller
// proposes their expiry and calls Done for each when the proposal ends.
func (l *Lessor) Expired(group uint64) (term uint64, ids []uint64) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	g := l.gs[group]
	if g == nil {
		return 0, nil
	}
	for id, d := range g.deadlines {
		if now.After(d) && !g.expiring[id] {
			g.expiring[id] = true
			ids = append(ids, id)
		}
	}
	return g.term, ids
}

// Due appends to buf every lease of the groups this node leads whose
// deadline has passed and whose expiry is not already in flight, marks
// them in flight and returns buf, which the caller owns. The caller
// proposes each expiry and calls Done for each when the proposal ends.
// Groups without leases cost nothing, and while no deadline has passed
// Due looks at no group at all.
func (l *Lessor) Due(buf []Expiry) []Expiry {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.due.IsZero() || !now.After(l.due) {
		return buf
	}
	// Past the bound: collect what is due and find the next bound.
	l.due = time.Time{}
	for group, g := range l.leased {
		l.walked++
		for id, d := range g.deadlines {
			switch {
			case g.expiring[id]:
			case now.After(d):
				g.expiring[id] = true
				buf = append(buf, Expiry{Group: group, Term: g.term, Lease: id})
			default:
				l.noteDeadline(d)
			}
		}
	}
	return buf
}

// Done ends the in-flight expiry of lease id. If the proposal failed and
// the lease still exists, the next Due (or Expired) offers it again; it
// can never be renewed in between, its deadline having passed.
func (l *Lessor) Done(group, id uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if g := l.gs[group]; g != nil && g.expiring[id] {
		delete(g.expiring, id)
		if d, ok := g.deadlines[id]; ok {
			l.noteDeadline(d)
		}
	}
}

// Leased reports whether any group this node leads has a lease: while none
// has, Due has nothing to find, and the expiry loop need not look.
func (l *Lessor) Leased() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.leased) > 0
}

// NextDeadline returns the earliest deadline among the groups this node
// leads (zero if none): the expiry loop need not look before then.
func (l *Lessor) NextDeadline() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	var next time.Time
	for _, g := range l.leased {
		for _, d := range g.deadlines {
			if next.IsZero() || d.Before(next) {
				next = d
			}
		}
	}
	return next
}
