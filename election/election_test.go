package election_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flotilla/flotilla/client"
)

// candidate is one campaigning process: its client, lease and election.
type candidate struct {
	t     *testing.T
	id    int
	cl    *client.Client
	lease *client.Lease
	e     *client.Election
	h     *history
}

func newCandidate(t *testing.T, c *cluster, h *history, id int, name string, ttl time.Duration, bh *blackhole) *candidate {
	t.Helper()
	cl := c.client(bh)
	lease, err := cl.GrantFor(ctxT(t, 10*time.Second), name, ttl)
	if err != nil {
		t.Fatal(err)
	}
	e, err := cl.Election(name)
	if err != nil {
		t.Fatal(err)
	}
	return &candidate{t: t, id: id, cl: cl, lease: lease, e: e, h: h}
}

// campaign campaigns and records the acquisition.
func (c *candidate) campaign(ctx context.Context) (client.Leadership, error) {
	call := c.h.now()
	l, err := c.e.Campaign(ctx, c.lease, []byte(fmt.Sprint("candidate-", c.id)))
	if err == nil {
		c.h.add(c.id, call, c.h.now(), elInput{opAcquire, c.lease.ID()}, elOutput{token: l.Token})
	}
	return l, err
}

// resign resigns and records the release once confirmed.
func (c *candidate) resign(ctx context.Context) error {
	call := c.h.now()
	err := c.e.Resign(ctx)
	if err == nil {
		c.h.add(c.id, call, c.h.now(), elInput{opRelease, c.lease.ID()}, elOutput{})
	}
	return err
}

// pollLeader reads the election's leader every few ms until ctx ends,
// recording each read.
func pollLeader(ctx context.Context, wg *sync.WaitGroup, cl *client.Client, name string, h *history, id int) {
	defer wg.Done()
	e, _ := cl.Election(name)
	for ctx.Err() == nil {
		call := h.now()
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		st, err := e.Leader(rctx)
		cancel()
		ret := h.now()
		switch {
		case err == nil:
			h.add(id, call, ret, elInput{kind: opLeader}, elOutput{lease: st.Lease, token: st.Token})
		case errors.Is(err, client.ErrNoLeader):
			h.add(id, call, ret, elInput{kind: opLeader}, elOutput{})
		}
		select {
		case <-ctx.Done():
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func TestOneHolderManyCampaigners(t *testing.T) {
	c := startCluster(t, 4)
	h := newHistory()
	const name, n, rounds = "lock/many", 8, 4
	cands := make([]*candidate, n)
	for i := range cands {
		cands[i] = newCandidate(t, c, h, i+1, name, 3*time.Second, nil)
	}
	pctx, stopPoll := context.WithCancel(context.Background())
	var pollWG sync.WaitGroup
	pollWG.Add(1)
	go pollLeader(pctx, &pollWG, c.client(nil), name, h, 100)

	var holders atomic.Int32
	var maxHolders atomic.Int32
	var wg sync.WaitGroup
	errs := make(chan error, n)
	ctx := ctxT(t, 60*time.Second)
	for _, cd := range cands {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := 0; r < rounds; r++ {
				l, err := cd.campaign(ctx)
				if err != nil {
					errs <- fmt.Errorf("candidate %d: campaign: %w", cd.id, err)
					return
				}
				if v := holders.Add(1); v > maxHolders.Load() {
					maxHolders.Store(v)
				}
				if l.Lease.Err() != nil {
					errs <- fmt.Errorf("candidate %d: elected with a lost lease", cd.id)
				}
				time.Sleep(2 * time.Millisecond) // hold the leadership a little
				holders.Add(-1)
				if err := cd.resign(ctx); err != nil {
					errs <- fmt.Errorf("candidate %d: resign: %w", cd.id, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	stopPoll()
	pollWG.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if m := maxHolders.Load(); m != 1 {
		t.Errorf("at most %d holders at once, want 1", m)
	}
	for _, cd := range cands {
		if err := cd.lease.Revoke(ctxT(t, 5*time.Second)); err != nil {
			t.Error(err)
		}
	}
	t.Logf("%d candidates × %d rounds: one holder at a time", n, rounds)
	h.check(t)
}

// TestKilledHolderReplacedWithinTTL stops a holder's keep-alives abruptly
// (its process dying) and waits for the next candidate.
func TestKilledHolderReplacedWithinTTL(t *testing.T) {
	c := startCluster(t, 4)
	h := newHistory()
	const name, ttl = "lock/killed", time.Second
	a := newCandidate(t, c, h, 1, name, ttl, nil)
	b := newCandidate(t, c, h, 2, name, ttl, nil)
	ctx := ctxT(t, 30*time.Second)
	la, err := a.campaign(ctx)
	if err != nil {
		t.Fatal(err)
	}
	type won struct {
		l   client.Leadership
		at  time.Time
		err error
	}
	bc := make(chan won, 1)
	go func() {
		l, err := b.campaign(ctx)
		bc <- won{l, time.Now(), err}
	}()
	waitCandidates(t, b.e, 2)
	killed, killedAt := h.now(), time.Now()
	a.lease.Close() // keep-alives stop, nothing is revoked
	w := <-bc
	if w.err != nil {
		t.Fatal(w.err)
	}
	h.add(1, killed, h.now(), elInput{opExpire, a.lease.ID()}, elOutput{})
	took := w.at.Sub(killedAt)
	t.Logf("holder killed; next holder elected after %v (TTL %v, election timeout %v)", took, ttl, electionTimeout)
	if took > ttl+electionTimeout {
		t.Errorf("replacement took %v, more than TTL %v + election timeout %v", took, ttl, electionTimeout)
	}
	if w.l.Token <= la.Token {
		t.Errorf("fencing token went from %d to %d", la.Token, w.l.Token)
	}
	if err := b.resign(ctx); err != nil {
		t.Fatal(err)
	}
	b.lease.Revoke(ctx)
	h.check(t)
}

// waitState waits until election e's state passes check.
func waitState(t *testing.T, e *client.Election, what string, check func(client.ElectionState) error) {
	t.Helper()
	waitFor(t, 10*time.Second, what, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		st, err := e.Leader(ctx)
		if err != nil {
			return err
		}
		return check(st)
	})
}

// waitCandidates waits until election e has n candidates.
func waitCandidates(t *testing.T, e *client.Election, n int) {
	t.Helper()
	waitState(t, e, fmt.Sprintf("%d candidates", n), func(st client.ElectionState) error {
		if st.Candidates != n {
			return fmt.Errorf("%d candidates", st.Candidates)
		}
		return nil
	})
}

// TestResignHandsOverAtOnce resigns through a failed request first: the
// holder keeps its local state, retries, and the next candidate is elected
// at once, long before any TTL.
func TestResignHandsOverAtOnce(t *testing.T) {
	c := startCluster(t, 4)
	h := newHistory()
	const name, ttl = "lock/resign", 10 * time.Second
	var bh blackhole
	a := newCandidate(t, c, h, 1, name, ttl, &bh)
	b := newCandidate(t, c, h, 2, name, ttl, nil)
	ctx := ctxT(t, 30*time.Second)
	if _, err := a.campaign(ctx); err != nil {
		t.Fatal(err)
	}
	bc := make(chan error, 1)
	var bAt atomic.Int64
	go func() {
		_, err := b.campaign(ctx)
		bAt.Store(time.Now().UnixNano())
		bc <- err
	}()
	waitCandidates(t, b.e, 2)

	// The resign request cannot get through: it fails, and nothing is
	// forgotten.
	bh.cut()
	fctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	err := a.e.Resign(fctx)
	cancel()
	if err == nil {
		t.Fatal("resign through a black hole succeeded")
	}
	select {
	case err := <-bc:
		t.Fatalf("candidate elected while the holder had not resigned: %v", err)
	default:
	}
	bh.heal()
	resigned := time.Now()
	if err := a.resign(ctx); err != nil {
		t.Fatalf("retried resign: %v", err)
	}
	if err := <-bc; err != nil {
		t.Fatal(err)
	}
	took := time.Unix(0, bAt.Load()).Sub(resigned)
	t.Logf("resign retried after a failed request; next holder elected %v later (TTL %v)", took, ttl)
	if took > 2*time.Second {
		t.Errorf("hand-over took %v", took)
	}
	if err := a.e.Resign(ctx); err != nil {
		t.Errorf("second resign: %v", err)
	}
	if err := b.resign(ctx); err != nil {
		t.Fatal(err)
	}
	a.lease.Revoke(ctx)
	b.lease.Revoke(ctx)
	h.check(t)
}

// TestBlackholedHolderKnowsFirst cuts the holder off silently: its lease
// must end on its side before the next holder is elected.
func TestBlackholedHolderKnowsFirst(t *testing.T) {
	c := startCluster(t, 4)
	h := newHistory()
	const name, ttl = "lock/blackhole", time.Second
	var bh blackhole
	a := newCandidate(t, c, h, 1, name, ttl, &bh)
	b := newCandidate(t, c, h, 2, name, ttl, nil)
	ctx := ctxT(t, 30*time.Second)
	la, err := a.campaign(ctx)
	if err != nil {
		t.Fatal(err)
	}
	bc := make(chan error, 1)
	var bAt atomic.Int64
	go func() {
		_, err := b.campaign(ctx)
		bAt.Store(time.Now().UnixNano())
		bc <- err
	}()
	waitCandidates(t, b.e, 2)
	cut := h.now()
	bh.cut()
	<-la.Done()
	lostAt := time.Now()
	if !errors.Is(a.lease.Err(), client.ErrLeaseLost) {
		t.Errorf("lease ended with %v, want ErrLeaseLost", a.lease.Err())
	}
	if err := <-bc; err != nil {
		t.Fatal(err)
	}
	h.add(1, cut, h.now(), elInput{opExpire, a.lease.ID()}, elOutput{})
	electedAt := time.Unix(0, bAt.Load())
	t.Logf("cut-off holder knew %v before the next holder was elected", electedAt.Sub(lostAt))
	if !lostAt.Before(electedAt) {
		t.Errorf("holder learned it lost at %v, after the next holder was elected at %v", lostAt, electedAt)
	}
	bh.heal()
	if err := b.resign(ctx); err != nil {
		t.Fatal(err)
	}
	b.lease.Revoke(ctx)
	h.check(t)
}

// TestObserveEveryChange checks an observer sees each holder in order,
// "no leader" included; and a slow one gets the latest state.
func TestObserveEveryChange(t *testing.T) {
	c := startCluster(t, 4)
	h := newHistory()
	const name, ttl = "lock/observe", 10 * time.Second
	ctx := ctxT(t, 60*time.Second)
	obsCl := c.client(nil)
	oe, _ := obsCl.Election(name)
	obs := oe.Observe(ctx)
	defer obs.Close()
	slow := oe.Observe(ctx) // read only at the end
	defer slow.Close()

	cands := []*candidate{
		newCandidate(t, c, h, 1, name, ttl, nil),
		newCandidate(t, c, h, 2, name, ttl, nil),
		newCandidate(t, c, h, 3, name, ttl, nil),
	}
	if _, err := cands[0].campaign(ctx); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i, cd := range cands[1:] {
		waitCandidates(t, cands[0].e, i+1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := cd.campaign(ctx); err != nil {
				t.Error(err)
			}
		}()
	}
	waitCandidates(t, cands[0].e, 3)
	if err := cands[0].resign(ctx); err != nil {
		t.Fatal(err)
	}
	waitHolder(t, cands[0].e, cands[1].lease.ID())
	if err := cands[1].resign(ctx); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	revoked := h.now()
	if err := cands[2].lease.Revoke(ctx); err != nil {
		t.Fatal(err)
	}
	h.add(3, revoked, h.now(), elInput{opRelease, cands[2].lease.ID()}, elOutput{})

	want := []uint64{0, cands[0].lease.ID(), cands[1].lease.ID(), cands[2].lease.ID(), 0}
	var got []uint64
	var last uint64
	for first := true; len(got) < len(want); first = false {
		st, err := obs.Next(ctx)
		if err != nil {
			t.Fatalf("observe: %v (holders so far %v)", err, got)
		}
		if st.Skipped {
			t.Errorf("state at revision %d marked skipped", st.Revision)
		}
		if !first && st.Revision <= last {
			t.Errorf("revision went from %d to %d", last, st.Revision)
		}
		last = st.Revision
		if len(got) == 0 || got[len(got)-1] != st.Lease {
			got = append(got, st.Lease)
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("observed holders %v, want %v", got, want)
	}

	// Churn past the slow observer's mailbox, then read it: never stale,
	// ends at the current state.
	churn := newCandidate(t, c, h, 4, name, ttl, nil)
	for i := 0; i < 40; i++ {
		if _, err := churn.campaign(ctx); err != nil {
			t.Fatal(err)
		}
		if err := churn.resign(ctx); err != nil {
			t.Fatal(err)
		}
	}
	cur, err := oe.Leader(ctx)
	if !errors.Is(err, client.ErrNoLeader) {
		t.Fatalf("leader after churn: %v %v", cur, err)
	}
	var prev uint64
	var skipped bool
	n := 0
	for {
		st, err := slow.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		n++
		if n > 1 && st.Revision <= prev {
			t.Fatalf("slow observer: revision went from %d to %d", prev, st.Revision)
		}
		prev, skipped = st.Revision, skipped || st.Skipped
		if st.Revision == cur.Revision {
			break
		}
	}
	t.Logf("slow observer: %d states, ends at revision %d, skipped=%v", n, prev, skipped)
	churn.lease.Revoke(ctx)
	for _, cd := range cands[:2] {
		cd.lease.Revoke(ctx)
	}
	h.check(t)
}

// waitHolder waits until lease holds election e.
func waitHolder(t *testing.T, e *client.Election, lease uint64) {
	t.Helper()
	waitState(t, e, fmt.Sprintf("lease %d holds", lease), func(st client.ElectionState) error {
		if st.Lease != lease {
			return fmt.Errorf("held by %d", st.Lease)
		}
		return nil
	})
}

// TestLeaderChangeAndRestartKeepHolder moves the group's leadership
// around and restarts its leader while a lease is held: the holder is
// neither dropped early nor joined by a second one.
func TestLeaderChangeAndRestartKeepHolder(t *testing.T) {
	c := startCluster(t, 4)
	h := newHistory()
	const name, ttl = "lock/moves", 2 * time.Second
	a := newCandidate(t, c, h, 1, name, ttl, nil)
	b := newCandidate(t, c, h, 2, name, ttl, nil)
	ctx := ctxT(t, 60*time.Second)
	la, err := a.campaign(ctx)
	if err != nil {
		t.Fatal(err)
	}
	bc := make(chan error, 1)
	go func() {
		_, err := b.campaign(ctx)
		bc <- err
	}()
	waitCandidates(t, b.e, 2)
	pctx, stopPoll := context.WithCancel(ctx)
	var pollWG sync.WaitGroup
	pollWG.Add(1)
	go pollLeader(pctx, &pollWG, c.client(nil), name, h, 100)

	rd, err := c.client(nil).RangeOf(ctx, []byte(name))
	if err != nil {
		t.Fatal(err)
	}
	g := rd.ID
	start := time.Now()
	for i := 0; i < 3; i++ {
		from := c.leaderOf(g)
		to := from%3 + 1
		tctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := c.nodes[from].Host().TransferLeadership(tctx, g, to)
		cancel()
		if err != nil {
			t.Fatalf("transfer group %d from %d to %d: %v", g, from, to, err)
		}
		t.Logf("group %d leadership moved %d → %d", g, from, to)
		waitFor(t, 5*time.Second, "new leader", func() error {
			if l := c.leaderOf(g); l != to {
				return fmt.Errorf("led by %d", l)
			}
			return nil
		})
	}
	// Restart the leader: it stops without handing over.
	old := c.leaderOf(g)
	c.stop(old)
	c.waitLeaders()
	t.Logf("node %d (group %d's leader) stopped; node %d leads", old, g, c.leaderOf(g))
	c.start(old, nil)
	c.waitLeaders()
	// Hold on for more than a TTL after the last change.
	held := time.NewTimer(ttl + ttl/2)
	select {
	case <-held.C:
	case <-la.Done():
		t.Fatalf("holder lost its lease: %v", a.lease.Err())
	case err := <-bc:
		t.Fatalf("second holder elected while the first held: %v", err)
	}
	t.Logf("held for %v across 3 leader transfers and a leader restart; %d keep-alives", time.Since(start), a.lease.Renewals())
	if err := la.Lease.Err(); err != nil {
		t.Fatalf("holder lost its lease: %v", err)
	}
	if err := a.resign(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-bc; err != nil {
		t.Fatal(err)
	}
	stopPoll()
	pollWG.Wait()
	if err := b.resign(ctx); err != nil {
		t.Fatal(err)
	}
	a.lease.Revoke(ctx)
	b.lease.Revoke(ctx)
	h.check(t)
}
