package server

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/flotilla/flotilla/client"
	"github.com/flotilla/flotilla/internal/loadgen"
)

// clientLoad runs closed-loop puts of random keys through cl from workers
// goroutines until stopped, and records when each one completed.
type clientLoad struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	done   []time.Time
	errs   []error
}

func startClientLoad(cl *client.Client, workers int) *clientLoad {
	ctx, cancel := context.WithCancel(context.Background())
	l := &clientLoad{cancel: cancel}
	for w := range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for ctx.Err() == nil {
				key := loadgen.AppendKey(nil, rng.IntN(10000)) // spread over every range
				_, err := cl.Put(ctx, key, []byte("v"))
				if ctx.Err() != nil {
					return // cut by the end of the load, not an error
				}
				l.mu.Lock()
				if err != nil {
					l.errs = append(l.errs, err)
				} else {
					l.done = append(l.done, time.Now())
				}
				l.mu.Unlock()
			}
		}()
	}
	return l
}

func (l *clientLoad) stop() {
	l.cancel()
	l.wg.Wait()
}

// quietSpans returns the spans of at least gap within [from, to) in which
// no put completed.
func (l *clientLoad) quietSpans(from, to time.Time, gap time.Duration) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	prev := from
	for _, at := range append(append([]time.Time(nil), l.done...), to) {
		if at.Before(from) || at.After(to) && !at.Equal(to) {
			continue
		}
		if at.Sub(prev) >= gap {
			out = append(out, fmt.Sprintf("%v..%v", prev.Sub(from).Round(time.Millisecond), at.Sub(from).Round(time.Millisecond)))
		}
		if at.After(prev) {
			prev = at
		}
	}
	return out
}

// leadersOf returns every group's (leader, term) as the given nodes see it.
func (c *cluster) leadersOf(nodes ...uint64) map[uint64][2]uint64 {
	out := map[uint64][2]uint64{}
	for _, id := range nodes {
		for _, st := range c.nodes[id].Host().Status() {
			if cur, ok := out[st.ID]; !ok || st.Term > cur[1] {
				out[st.ID] = [2]uint64{st.Leader, st.Term}
			}
		}
	}
	return out
}

// TestFrozenNodeClientWritesGoOn: a node whose I/O freezes (Freeze: its
// connections stay open and nothing answers, as under SIGSTOP) costs the
// clients only itself. With the default client, puts of keys of every
// group go on through the freeze: after the failover bound (the liveness
// timeout plus an election, with ample slack for a loaded machine) no
// second passes without a completed put, no put fails, and no group the
// frozen node did not lead changes leader or term. (The bound and the gap
// are far from what is measured, about 250ms, so a slow CI machine does
// not fail the test; the naive client below stalls for its whole 5s
// attempt.)
//
// The same run freezes another node under a naive client (no hedging, no
// suspicion: one attempt at a time, up to 5s, the client before failover
// detection) and requires it to fail the same assertion: its workers all
// end up waiting on the frozen node.
func TestFrozenNodeClientWritesGoOn(t *testing.T) {
	// The balancer holds still through the freeze (it would wait for the
	// live set to settle anyway; this makes sure).
	c := startClusterWith(t, 3, 12, func(cfg *Config) { cfg.BalanceSettle = time.Minute })
	const (
		workers = 16
		freeze  = 4 * time.Second
		bound   = 2 * time.Second // failover: 300ms liveness + election, with ample slack for a loaded machine
		gap     = time.Second
	)
	leading := func() uint64 {
		counts := map[uint64]int{}
		for _, lt := range c.leadersOf(1, 2, 3) {
			counts[lt[0]]++
		}
		for id := uint64(1); id <= 3; id++ {
			if counts[id] >= 2 && c.nodes[id] != nil {
				return id
			}
		}
		t.Fatalf("no node leads two groups: %v", counts)
		return 0
	}
	run := func(name string, frozen uint64, cfg client.Config) (quiet []string, errs []error, moved []string) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		cfg.Endpoints = c.endpoints()
		cl, err := client.New(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		others := []uint64{}
		for id := uint64(1); id <= 3; id++ {
			if id != frozen {
				others = append(others, id)
			}
		}
		load := startClientLoad(cl, workers)
		time.Sleep(500 * time.Millisecond) // healthy traffic first; not waiting for an outcome
		before := c.leadersOf(1, 2, 3)
		start := time.Now()
		c.nodes[frozen].Freeze()
		time.Sleep(freeze) // the fault's length, not a wait for an outcome
		after := c.leadersOf(others...)
		c.nodes[frozen].Thaw()
		end := time.Now()
		time.Sleep(300 * time.Millisecond)
		load.stop()
		for g, lt := range before {
			if lt[0] != frozen && after[g] != lt {
				moved = append(moved, fmt.Sprintf("group %d: leader %d term %d -> leader %d term %d", g, lt[0], lt[1], after[g][0], after[g][1]))
			}
		}
		quiet = load.quietSpans(start.Add(bound), end, gap)
		t.Logf("%s: longest stall from the freeze: %v", name, load.quietSpans(start, end, 100*time.Millisecond))
		t.Logf("%s client, node %d frozen %v: %d puts, %d errors, %d quiet spans of %v after %v %v, hedges %d",
			name, frozen, freeze, len(load.done), len(load.errs), len(quiet), gap, bound, quiet, cl.Hedges())
		return quiet, load.errs, moved
	}

	quiet, errs, moved := run("default", leading(), client.Config{})
	if len(quiet) > 0 {
		t.Errorf("writes stalled during the freeze, after the failover bound: quiet spans %v", quiet)
	}
	if len(errs) > 0 {
		t.Errorf("%d puts failed, first: %v", len(errs), errs[0])
	}
	if len(moved) > 0 {
		t.Errorf("groups the frozen node did not lead changed leader or term: %v", moved)
	}
	c.waitLeaders()

	quiet, _, _ = run("naive", leading(), client.Config{DisableFailover: true, AttemptTimeout: 5 * time.Second})
	if len(quiet) == 0 {
		t.Error("the naive client's writes went on through the freeze too: this test cannot tell failover from none")
	}
}
