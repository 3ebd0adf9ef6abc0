package server

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"testing"
	"time"

	"github.com/flotilla/flotilla/election"
)

// fakeTable is a replica's lease table that counts its reads.
type fakeTable struct {
	leases  map[uint64]time.Duration
	version uint64
	reads   *int
}

func (f *fakeTable) Leases(since uint64) (map[uint64]time.Duration, uint64) {
	*f.reads++
	if since == f.version && since != 0 {
		return nil, since
	}
	return maps.Clone(f.leases), f.version
}

// fakeProposal is an expiry proposal the test ends.
type fakeProposal struct {
	group, lease uint64
	done         chan struct{}
	err          error
}

func (p *fakeProposal) Done() <-chan struct{}   { return p.done }
func (p *fakeProposal) Result() ([]byte, error) { return nil, p.err }

// expiryRig drives a leaseExpiry over fake tables, leaders and proposals,
// counting every call a tick makes per group.
type expiryRig struct {
	t        *testing.T
	now      time.Time
	x        *leaseExpiry
	tables   map[uint64]*fakeTable
	proposed []*fakeProposal
	// lookups, reads and leaders count table lookups, table reads and
	// leader lookups.
	lookups, reads, leaders int
}

const rigNode = 1

func newExpiryRig(t *testing.T) *expiryRig {
	r := &expiryRig{t: t, now: time.Unix(1000, 0), tables: map[uint64]*fakeTable{}}
	lessor := election.NewLessor(func() time.Time { return r.now })
	r.x = &leaseExpiry{
		lessor: lessor,
		self:   rigNode,
		log:    slog.New(slog.NewTextHandler(io.Discard, nil)),
		table: func(g uint64) (leaseTable, bool) {
			r.lookups++
			tb, ok := r.tables[g]
			return tb, ok
		},
		leader: func(g uint64) (uint64, uint64) {
			r.leaders++
			return rigNode, 1
		},
		expire: func(g, lease uint64) (proposal, error) {
			p := &fakeProposal{group: g, lease: lease, done: make(chan struct{})}
			r.proposed = append(r.proposed, p)
			return p, nil
		},
	}
	return r
}

// lead makes this node the leader of groups lo..hi in term 1, with
// empty lease tables.
func (r *expiryRig) lead(lo, hi uint64) {
	for g := lo; g <= hi; g++ {
		r.tables[g] = &fakeTable{leases: map[uint64]time.Duration{}, version: 1, reads: &r.reads}
		r.x.lessor.Lead(g, 1, nil, 1)
	}
}

// apply changes group g's lease table (ttl 0 deletes) and runs the hook.
func (r *expiryRig) apply(g, lease uint64, ttl time.Duration) {
	tb := r.tables[g]
	if ttl == 0 {
		delete(tb.leases, lease)
	} else {
		tb.leases[lease] = ttl
	}
	tb.version++
	r.x.leasesChanged(g)
}

// tick advances the clock by d and runs one tick; it checks how many
// table lookups, table reads and leader lookups the tick made, and
// returns the expiries it proposed.
func (r *expiryRig) tick(d time.Duration, lookups, reads, leaders int) []*fakeProposal {
	r.t.Helper()
	r.now = r.now.Add(d)
	l0, r0, d0, p0 := r.lookups, r.reads, r.leaders, len(r.proposed)
	r.x.tick()
	if r.lookups-l0 != lookups || r.reads-r0 != reads || r.leaders-d0 != leaders {
		r.t.Fatalf("tick at +%v: %d table lookups, %d reads, %d leader lookups; want %d, %d, %d",
			r.now.Sub(time.Unix(1000, 0)), r.lookups-l0, r.reads-r0, r.leaders-d0, lookups, reads, leaders)
	}
	return r.proposed[p0:]
}

// A tick costs nothing per group led: with thousands of groups led and
// no lease it touches none. A grant syncs exactly its group; the lease
// expires after its TTL, a failed expiry is proposed again, and the
// group costs nothing again once its last lease is gone.
func TestLeaseTickTouchesOnlyChangedGroups(t *testing.T) {
	r := newExpiryRig(t)
	r.lead(1, 3333)
	for range 50 {
		if p := r.tick(100*time.Millisecond, 0, 0, 0); len(p) != 0 {
			t.Fatalf("idle tick proposed %d expiries", len(p))
		}
	}
	// Lease tables of groups this node does not lead change (it is a
	// follower there): not even looked up.
	for g := uint64(5001); g <= 5100; g++ {
		r.x.leasesChanged(g)
	}
	r.tick(100*time.Millisecond, 0, 0, 0)

	// A grant in group 17, applied: that group alone is synced, once.
	const g, lease, ttl = 17, 1700, time.Second
	r.apply(g, lease, ttl)
	r.tick(50*time.Millisecond, 1, 1, 0)
	if rem, ok := r.x.lessor.Remaining(g, lease); !ok || rem != ttl {
		t.Fatalf("granted lease: remaining %v %v, want %v", rem, ok, ttl)
	}
	if n := r.x.synced.Load(); n != 1 {
		t.Fatalf("%d tables synced, want 1", n)
	}
	for range 9 { // to +900ms after the sync: not due
		r.tick(100*time.Millisecond, 0, 0, 0)
	}
	r.tick(100*time.Millisecond, 0, 0, 0) // exactly the deadline: not past it
	p := r.tick(time.Millisecond, 0, 0, 1)
	if len(p) != 1 || p[0].group != g || p[0].lease != lease {
		t.Fatalf("proposed %v, want the expiry of lease %d in group %d", p, lease, g)
	}
	// In flight: not proposed again, and no group looked at.
	r.tick(100*time.Millisecond, 0, 0, 0)
	// It fails: proposed again at the next tick.
	p[0].err = errors.New("dropped")
	close(p[0].done)
	p = r.tick(100*time.Millisecond, 0, 0, 1)
	if len(p) != 1 || p[0].lease != lease {
		t.Fatalf("after a failed expiry proposed %v, want lease %d again", p, lease)
	}
	// It applies: the table drops the lease, the group is synced once
	// and then costs nothing.
	close(p[0].done)
	r.apply(g, lease, 0)
	r.tick(100*time.Millisecond, 1, 1, 0)
	if _, ok := r.x.lessor.Remaining(g, lease); ok {
		t.Fatal("expired lease still has a deadline")
	}
	for range 50 {
		r.tick(100*time.Millisecond, 0, 0, 0)
	}
	if len(r.x.pending) != 0 {
		t.Fatalf("%d expiries still in flight", len(r.x.pending))
	}
}

// A renewed lease is not expired; several changes of one table between
// ticks cost one read.
func TestLeaseTickRenewedLeaseLives(t *testing.T) {
	r := newExpiryRig(t)
	r.lead(1, 100)
	const g, ttl = 40, time.Second
	r.apply(g, 1, ttl)
	r.apply(g, 2, ttl)
	r.apply(g, 3, ttl)
	r.apply(g, 3, 0) // revoked
	r.tick(0, 1, 1, 0)
	for i := range 30 {
		// Keep-alives of lease 1 every 500ms; lease 2 runs out.
		r.now = r.now.Add(500 * time.Millisecond)
		if err := r.x.lessor.Renew(g, 1, 1, r.now, ttl); err != nil {
			t.Fatalf("renewal %d: %v", i, err)
		}
		var leaders int
		if i == 2 {
			leaders = 1 // lease 2's deadline (+1s) passed
		}
		p := r.tick(0, 0, 0, leaders)
		if i == 2 && (len(p) != 1 || p[0].lease != 2) {
			t.Fatalf("at +1.5s proposed %v, want lease 2", p)
		}
		if i != 2 && len(p) != 0 {
			t.Fatalf("renewal %d: proposed %v", i, p)
		}
	}
}

// End to end: the lease loops of idle nodes stop ticking (they read no
// lease table); a lease lives while kept alive and is expired once its
// keep-alives stop; then the loops stop again. The loop that ticked every
// TickInterval for nothing fails idle: its ticks never stop.
func TestLeaseExpiryIdleAndExpire(t *testing.T) {
	c := startCluster(t, 3, 12)
	ctx := ctxT(t)
	cl := c.client()
	// idle waits until no node's lease loop ticks or reads a lease table
	// for 10 tick intervals in a row.
	idle := func(what string) {
		t.Helper()
		quiet := 10 * 20 * time.Millisecond // the cluster's TickInterval
		waitFor(t, 10*time.Second, what+": lease loops idle", func() error {
			before := map[uint64][2]uint64{}
			for id, s := range c.nodes {
				before[id] = [2]uint64{s.leaseExp.ticks.Load(), s.leaseExp.synced.Load()}
			}
			time.Sleep(quiet)
			for id, s := range c.nodes {
				now := [2]uint64{s.leaseExp.ticks.Load(), s.leaseExp.synced.Load()}
				if now != before[id] {
					return fmt.Errorf("node %d ticked %d times and read %d lease tables in %v",
						id, now[0]-before[id][0], now[1]-before[id][1], quiet)
				}
			}
			return nil
		})
	}
	idle("after start")

	lease, err := cl.GrantFor(ctx, "svc/a", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer lease.Close()
	synced := func() (n uint64) {
		for _, s := range c.nodes {
			n += s.leaseExp.synced.Load()
		}
		return n
	}
	waitFor(t, 5*time.Second, "the grant synced", func() error {
		if synced() == 0 {
			return errors.New("no lease table read")
		}
		return nil
	})
	// Kept alive across three TTLs: it stays.
	start := lease.Renewals()
	waitFor(t, 10*time.Second, "keep-alives for three TTLs", func() error {
		if found, _, err := lease.TimeToLive(ctx); err != nil || !found {
			t.Fatalf("lease lost while kept alive: found=%v %v", found, err)
		}
		if n := lease.Renewals() - start; n < 9 {
			return fmt.Errorf("%d renewals", n)
		}
		return nil
	})
	lease.Close()
	waitFor(t, 10*time.Second, "lease expired", func() error {
		found, _, err := lease.TimeToLive(ctx)
		if err != nil || found {
			return fmt.Errorf("found=%v %v", found, err)
		}
		return nil
	})
	idle("after the expiry")
}
