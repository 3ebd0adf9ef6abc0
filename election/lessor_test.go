package election_test

import (
	"errors"
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
