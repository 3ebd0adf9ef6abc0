package election_test

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/flotilla/flotilla/election"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

func TestLessorTakeoverRenewExpire(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	l := election.NewLessor(clk.now)
	const g, ttl = 7, time.Second
	if err := l.Renew(g, 1, 5, clk.now(), ttl); !errors.Is(err, election.ErrNotLeading) {
		t.Fatalf("renew before leading: %v", err)
	}
	l.Lead(g, 3, map[uint64]time.Duration{5: ttl, 6: ttl}, 1)
	clk.advance(900 * time.Millisecond)
	if err := l.Renew(g, 3, 5, clk.now(), ttl); err != nil { // 5 now lasts to +1.9s
		t.Fatal(err)
	}
	if err := l.Renew(g, 2, 5, clk.now(), ttl); !errors.Is(err, election.ErrNotLeading) {
		t.Fatalf("renew in an old term: %v", err)
	}
	clk.advance(200 * time.Millisecond) // +1.1s: 6 is overdue, 5 is not
	if _, ids := l.Expired(g); len(ids) != 1 || ids[0] != 6 {
		t.Fatalf("expired %v, want [6]", ids)
	}
	if _, ids := l.Expired(g); len(ids) != 0 {
		t.Fatalf("expiry offered twice: %v", ids)
	}
	if err := l.Renew(g, 3, 6, clk.now(), ttl); !errors.Is(err, election.ErrExpired) {
		t.Fatalf("renewing an overdue lease: %v", err)
	}
	// A failed expiry proposal is offered again; the lease stays dead.
	l.Done(g, 6)
	if _, ids := l.Expired(g); len(ids) != 1 {
		t.Fatalf("retry: %v", ids)
	}
	// A new leader gives every lease a full TTL from its takeover, even
	// one the old leader found overdue.
	l.StepDown(g)
	l.Lead(g, 4, map[uint64]time.Duration{5: ttl, 6: ttl}, 2)
	clk.advance(999 * time.Millisecond)
	if _, ids := l.Expired(g); len(ids) != 0 {
		t.Fatalf("expired %v within a TTL of the takeover", ids)
	}
	clk.advance(2 * time.Millisecond)
	if _, ids := l.Expired(g); len(ids) != 2 {
		t.Fatalf("expired %v after a TTL, want both", ids)
	}
	// Sync forgets deleted leases and starts new ones at a full TTL.
	l.Sync(g, map[uint64]time.Duration{9: ttl}, 3)
	if rem, ok := l.Remaining(g, 9); !ok || rem != ttl {
		t.Fatalf("new lease remaining %v %v", rem, ok)
	}
	if err := l.Renew(g, 4, 5, clk.now(), ttl); !errors.Is(err, election.ErrExpired) {
		t.Fatalf("renewing a deleted lease: %v", err)
	}
}

// dueIDs returns the leases Due offers, sorted.
func dueIDs(l *election.Lessor) []uint64 {
	var ids []uint64
	for _, e := range l.Due(nil) {
		ids = append(ids, e.Lease)
	}
	slices.Sort(ids)
	return ids
}

// Due looks only at groups with leases, and at none before a deadline
// passed; it offers an overdue lease once, again after Done, never after
// StepDown.
func TestLessorDueCostsOnlyLeasedGroups(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	l := election.NewLessor(clk.now)
	const ttl = time.Second
	for g := uint64(1); g <= 1000; g++ {
		l.Lead(g, 2, nil, 1)
	}
	clk.advance(time.Hour)
	if got := l.Due(nil); len(got) != 0 || l.Walked() != 0 {
		t.Fatalf("1000 groups without leases: due %v, %d groups walked", got, l.Walked())
	}
	// A lease in group 7 (granted, then synced) and one in group 9 (held
	// at takeover).
	l.Sync(7, map[uint64]time.Duration{70: ttl}, 2)
	l.StepDown(9)
	l.Lead(9, 3, map[uint64]time.Duration{90: 2 * ttl}, 5)
	clk.advance(ttl)
	if got := l.Due(nil); len(got) != 0 || l.Walked() != 0 {
		t.Fatalf("before any deadline: due %v, %d groups walked", got, l.Walked())
	}
	clk.advance(time.Millisecond)
	if got := l.Due(nil); len(got) != 1 || got[0] != (election.Expiry{Group: 7, Term: 2, Lease: 70}) || l.Walked() != 2 {
		t.Fatalf("after 70's deadline: due %v, %d groups walked, want [{7 2 70}] and 2", got, l.Walked())
	}
	// Offered once: until 90's deadline Due walks nothing again.
	if got := l.Due(nil); len(got) != 0 || l.Walked() != 2 {
		t.Fatalf("expiry in flight: due %v, %d groups walked", got, l.Walked())
	}
	// A failed proposal: offered again at once.
	l.Done(7, 70)
	if got := dueIDs(l); !slices.Equal(got, []uint64{70}) {
		t.Fatalf("after Done: due %v, want [70]", got)
	}
	// A renewal of 90 pushes its deadline; Due walks once more when the
	// old deadline passes, and offers nothing.
	if err := l.Renew(9, 3, 90, clk.now(), 2*ttl); err != nil {
		t.Fatal(err)
	}
	clk.advance(ttl)
	walked := l.Walked()
	if got := l.Due(nil); len(got) != 0 || l.Walked() != walked+2 {
		t.Fatalf("renewed lease: due %v, %d groups walked, want 2 more than %d", got, l.Walked(), walked)
	}
	if got := l.Due(nil); len(got) != 0 || l.Walked() != walked+2 {
		t.Fatalf("renewed lease, again: due %v, %d groups walked", got, l.Walked())
	}
	// The expiry of 70 applied: the synced table drops it, and group 7
	// costs nothing any more.
	l.Done(7, 70)
	l.Sync(7, map[uint64]time.Duration{}, 3)
	clk.advance(ttl + time.Millisecond)
	if got := dueIDs(l); !slices.Equal(got, []uint64{90}) || l.Walked() != walked+3 {
		t.Fatalf("after 90's deadline: due %v, %d groups walked, want [90] and %d", got, l.Walked(), walked+3)
	}
	// StepDown forgets the group, and an expiry in flight with it.
	l.StepDown(9)
	l.Done(9, 90)
	clk.advance(time.Hour)
	walked = l.Walked()
	if got := l.Due(nil); len(got) != 0 || l.Walked() != walked {
		t.Fatalf("after StepDown: due %v, %d groups walked, want none and %d", got, l.Walked(), walked)
	}
	if _, ok := l.Version(9); ok {
		t.Fatal("Version of a group stepped down from")
	}
	if v, ok := l.Version(7); !ok || v != 3 {
		t.Fatalf("Version(7) = %d %v, want 3 true", v, ok)
	}
	// A new leader's takeover gives a full TTL, even to a lease the old
	// leader found overdue.
	l.Lead(9, 4, map[uint64]time.Duration{90: ttl}, 6)
	clk.advance(ttl)
	if got := l.Due(nil); len(got) != 0 {
		t.Fatalf("within a TTL of the takeover: due %v", got)
	}
	clk.advance(time.Millisecond)
	if got := dueIDs(l); !slices.Equal(got, []uint64{90}) {
		t.Fatalf("a TTL after the takeover: due %v, want [90]", got)
	}
}
