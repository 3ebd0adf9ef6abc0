package chaos

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/flotilla/flotilla/client"
)

// The real-process tests: three `flotilla start` processes on 127.0.0.1,
// .2 and .3, faults made with real packets dropped by iptables, SIGSTOP,
// SIGCONT and SIGKILL, every view read from `flotilla status -w json` and
// the nodes' /debug/raft.

// newProcTestCluster starts three nodes (killed at cleanup, their log
// tails printed if the test failed) and returns them with their stable
// leadership.
func newProcTestCluster(t *testing.T) (*ProcCluster, View) {
	t.Helper()
	bin := flotillaBinary(t)
	c, err := StartProcCluster(ProcConfig{Binary: bin, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		if t.Failed() {
			for _, id := range c.IDs() {
				t.Logf("node %d log tail:\n%s", id, c.LogTail(id, 3000))
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := c.WaitLed(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	v, err := Stable(ctx, 30*time.Second, c.ElectionTimeout(), c.View)
	if err != nil {
		t.Fatal(err)
	}
	return c, v
}

// procView reads the view, failing the test on error.
func procView(t *testing.T, c *ProcCluster) View {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v, err := c.View(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// startProcLoad starts writers through `flotilla put` and waits for the
// first acknowledgements.
func startProcLoad(t *testing.T, c *ProcCluster) *Load {
	t.Helper()
	l, err := StartLoad(c, LoadConfig{Groups: []uint64{0}, Workers: 4, OpTimeout: 10 * time.Second, Prefix: "chaos-"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Stop)
	waitAcks(t, l, 5, 30*time.Second)
	return l
}

// procSettle stops the load, waits until every group is led and seen by
// every node, and reads every acknowledged write back.
func procSettle(t *testing.T, c *ProcCluster, l *Load) View {
	t.Helper()
	l.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	v, err := Stable(ctx, 30*time.Second, c.ElectionTimeout(), c.View)
	if err != nil {
		t.Fatal(err)
	}
	ws := l.Acked()
	if err := c.CheckAcked(ctx, ws); err != nil {
		t.Fatal(err)
	}
	t.Logf("all %d acknowledged writes read back", len(ws))
	return v
}

// TestProcOneWayDropIptables is seed 002 on real packets between real
// processes: iptables silently drops every packet node 1 sends to node 2's
// peer port (node 1's connection to node 2 is a black hole: no RST) for
// three of the longest election timeouts. No group changes term or
// leader, whoever leads it, and writes go on. (The naive sender's failure
// on real packets is in TestSeed002IptablesSilentDrop.)
func TestProcOneWayDropIptables(t *testing.T) {
	c, before := newProcTestCluster(t)
	fw := newFirewall(t)
	l := startProcLoad(t, c)
	window := 3 * c.MaxElectionTimeout()
	p1, p2 := c.Proc(1), c.Proc(2)
	if err := fw.DropLink(p1.IP, p2.IP, p2.PeerPort); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	hold(window)
	end := time.Now()
	during := procView(t, c)
	dropped, _ := fw.Packets()
	if err := fw.Flush(); err != nil {
		t.Fatal(err)
	}
	if dropped == 0 {
		t.Fatal("the rule dropped no packet: the scenario did not happen")
	}
	if err := CheckUnchanged(before, during, 2); err != nil {
		t.Fatalf("one-way black hole 1->2: %v", err)
	}
	acked, last := l.CountBetween(start, end), l.CountBetween(end.Add(-window/3), end)
	if last == 0 {
		t.Fatalf("no write acknowledged in the last third of the fault (%d in all)", acked)
	}
	procSettle(t, c, l)
	t.Logf("iptables drop %s->%s:%d for %v: %d packets dropped, 0 term changes over %d groups (leaders %v), %d writes acknowledged",
		p1.IP, p2.IP, p2.PeerPort, window, dropped, len(before.Groups), before.LeaderCounts(), acked)
}

// TestProcSymmetricPartition: node 1 is cut from nodes 2 and 3 both ways
// (their peer ports, with iptables). The groups led by 2 and 3 keep leader
// and term; those led by 1 get a leader in the majority within ten
// election timeouts; node 1 stops leading (CheckQuorum). After the heal
// every group is led and every acknowledged write is there.
func TestProcSymmetricPartition(t *testing.T) {
	c, before := newProcTestCluster(t)
	fw := newFirewall(t)
	l := startProcLoad(t, c)
	for _, pair := range [][2]uint64{{1, 2}, {1, 3}, {2, 1}, {3, 1}} {
		from, to := c.Proc(pair[0]), c.Proc(pair[1])
		if err := fw.DropLink(from.IP, to.IP, to.PeerPort); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	bound := 10 * c.MaxElectionTimeout()
	v, err := c.WaitLed(ctx, bound, 2, 3)
	if err != nil {
		t.Fatal(err)
	}
	elected := time.Since(start)
	led1 := before.LedBy(1)
	var others []uint64
	for g := range before.Groups {
		if before.Groups[g].Leader != 1 {
			others = append(others, g)
		}
	}
	if err := CheckUnchanged(before.Only(others, 2, 3), v.Only(others, 2, 3)); err != nil {
		t.Fatalf("groups not led by the cut-off node: %v", err)
	}
	stepped := pollCond(t, bound, func() bool {
		ns, err := c.NodeStatus(ctx, 1)
		if err != nil {
			return false
		}
		for _, g := range ns.Groups {
			if g.Leader == 1 {
				return false
			}
		}
		return true
	})
	if !stepped {
		t.Fatal("node 1 still leads some group while cut off from the majority")
	}
	waitAcks(t, l, 5, 30*time.Second)
	if err := fw.Flush(); err != nil {
		t.Fatal(err)
	}
	after := procSettle(t, c, l)
	t.Logf("partition {1}|{2,3}: %d groups led by 1 moved within %v, %d others unchanged; after heal leaders %v",
		len(led1), elected.Round(time.Millisecond), len(others), after.LeaderCounts())
}

// TestProcPauseAndKill: SIGSTOP node 2 for three election timeouts, then
// SIGCONT; then SIGKILL node 3 and restart it. Groups led elsewhere keep
// leader and term throughout each fault; the groups of the stopped or
// killed node get a leader within ten election timeouts; writes go on; and
// after each recovery every group is led and nothing acknowledged is lost.
func TestProcPauseAndKill(t *testing.T) {
	c, before := newProcTestCluster(t)
	l := startProcLoad(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	bound := 10 * c.MaxElectionTimeout()

	faultOn := func(victim uint64, before View, inject, recover func() error) View {
		t.Helper()
		var others []uint64
		var rest []uint64
		for g, gv := range before.Groups {
			if gv.Leader != victim {
				others = append(others, g)
			}
		}
		for _, id := range c.IDs() {
			if id != victim {
				rest = append(rest, id)
			}
		}
		if err := inject(); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		v, err := c.WaitLed(ctx, bound, rest...)
		if err != nil {
			t.Fatal(err)
		}
		elected := time.Since(start)
		hold(max(0, 3*c.MaxElectionTimeout()-elected))
		v = procView(t, c)
		if err := CheckUnchanged(before.Only(others, rest...), v.Only(others, rest...)); err != nil {
			t.Fatalf("node %d down: groups led elsewhere: %v", victim, err)
		}
		waitAcks(t, l, 5, 30*time.Second)
		if err := recover(); err != nil {
			t.Fatal(err)
		}
		after, err := Stable(ctx, time.Minute, c.ElectionTimeout(), c.View)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("node %d down: its %d groups led again within %v, %d others unchanged; after recovery leaders %v",
			victim, len(before.LedBy(victim)), elected.Round(time.Millisecond), len(others), after.LeaderCounts())
		return after
	}
	mid := faultOn(2, before, func() error { return c.Pause(2) }, func() error { return c.Resume(2) })
	faultOn(3, mid, func() error { return c.Kill(3) }, func() error { return c.Start(3) })
	procSettle(t, c, l)
}

// TestSeed002IptablesSilentDrop is seed 002 with real packets dropped by
// the kernel, on the in-process cluster (whose nodes dial from their own
// 127.0.0.N): iptables drops everything node 1 sends to node 2's peer port
// for three of the longest election timeouts. Flotilla keeps every leader
// and term and keeps writing; the naive serial sender, on the same packets,
// must not.
func TestSeed002IptablesSilentDrop(t *testing.T) {
	fw := newFirewall(t)
	scenario := func(t *testing.T, naive bool) (faultRun, *Cluster, *Load, uint64) {
		c := newTestCluster(t, 3, naive)
		window := 3 * c.MaxElectionTimeout()
		var dropped uint64
		r, load := runFault(t, c, window, false, []uint64{2},
			func() {
				if err := fw.DropLink("127.0.0.1", "127.0.0.2", portOf(t, c.Node(2).Addr)); err != nil {
					t.Fatal(err)
				}
			},
			func() {
				dropped, _ = fw.Packets()
				if err := fw.Flush(); err != nil {
					t.Fatal(err)
				}
			})
		if dropped == 0 {
			t.Fatal("the rule dropped no packet: the scenario did not happen")
		}
		return r, c, load, dropped
	}
	t.Run("flotilla", func(t *testing.T) {
		r, c, load, dropped := scenario(t, false)
		if err := r.err(); err != nil {
			t.Fatal(err)
		}
		settle(t, c, load)
		t.Logf("iptables black hole 1->2 for %v (%d packets dropped): 0 term changes, %d writes (%.0f/s), %d in the last third",
			r.window, dropped, r.acked, r.faultRate, r.lastPart)
	})
	t.Run("naive", func(t *testing.T) {
		r, _, load, dropped := scenario(t, true)
		load.Stop()
		if r.err() == nil {
			t.Fatal("the naive serial sender kept every leader: this test cannot tell a good sender from a bad one")
		}
		t.Logf("naive sender fails as it should (%d packets dropped): %d elections: %v", dropped, r.elections, r.err())
	})
}

// portOf returns the port of host:port.
func portOf(t *testing.T, addr string) int {
	t.Helper()
	var port int
	if _, err := fmt.Sscanf(addr[lastColon(addr)+1:], "%d", &port); err != nil {
		t.Fatalf("port of %q: %v", addr, err)
	}
	return port
}

func lastColon(s string) int {
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == ':' {
			return i
		}
	}
	return -1
}

// TestProcFrozenNodeClientWritesGoOn is the frozen node at the client, on
// real processes: the node leading the most groups is stopped with SIGSTOP
// (its TCP connections stay open and silent) for 4s while 16 clients put
// through the Go client. With the default client no put fails, the frozen
// node's groups are led again within the fault, no other group changes
// leader or term, and every whole second from 2s into the fault on has
// completed puts, at least a tenth of the healthy rate. The same run
// repeats the fault under a naive client (no hedging or suspicion: one
// attempt at a time, up to 5s each): its clients end up waiting on the
// frozen node, and some second of that window completes less than that.
func TestProcFrozenNodeClientWritesGoOn(t *testing.T) {
	bin := flotillaBinary(t)
	c, err := StartProcCluster(ProcConfig{Binary: bin, Dir: t.TempDir(), Groups: 16, Tick: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		if t.Failed() {
			for _, id := range c.IDs() {
				t.Logf("node %d log tail:\n%s", id, c.LogTail(id, 3000))
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const bound = 2 * time.Second // failover: liveness (500ms) + election, with slack
	run := func(name string, cfg client.Config) (*FaultReport, []int) {
		r, err := RunFaultLoad(ctx, c, FaultLoadConfig{Fault: FaultSIGSTOP, Clients: 16, ValueSize: 64, Keys: 10000,
			Before: 3 * time.Second, Hold: 4 * time.Second, After: time.Second, Client: cfg})
		if err != nil {
			t.Fatal(err)
		}
		// A stalled second completes under a tenth of the healthy rate:
		// the naive client's clients do not all wait on the frozen node
		// (a request sent to a live node waits there for the new leader
		// and is served), so its freeze once kept 6 puts a second of
		// 2,966 and had no second with none.
		var stalled []int
		for _, s := range r.Load.PerSecond {
			if float64(s.T-1) >= r.FaultAt+bound.Seconds() && float64(s.T) <= r.FaultAt+r.HoldSeconds && float64(s.Ops) < r.HealthyOpsPerSec/10 {
				stalled = append(stalled, s.T)
			}
		}
		t.Logf("%s client: node %d frozen at %.1fs for %.1fs: %d ops, %d errors %v; healthy %.0f ops/s, frozen %.0f ops/s (%.2fx); victim's %d groups led again after %.0f ms; %d other groups changed; stalled seconds: %v; %d hedges",
			name, r.Victim, r.FaultAt, r.HoldSeconds, r.Load.Ops, r.Load.Errors, r.Load.ErrorsByKind, r.HealthyOpsPerSec,
			r.FaultOpsPerSec, r.Ratio, r.VictimGroups, r.FailoverMs, r.OtherGroupsChanged, stalled, r.Hedges)
		return r, stalled
	}
	r, stalled := run("default", client.Config{})
	switch {
	case r.Load.Errors > 0:
		t.Errorf("%d puts failed: %v", r.Load.Errors, r.Load.ErrorsByKind)
	case len(stalled) > 0:
		t.Errorf("under a tenth of the healthy rate in seconds %v of the freeze", stalled)
	case r.VictimGroups == 0 || r.FailoverMs < 0:
		t.Errorf("the frozen node led %d groups, led again after %v ms", r.VictimGroups, r.FailoverMs)
	case r.OtherGroupsChanged > 0:
		t.Errorf("groups the frozen node did not lead changed: %v", r.Changed)
	}
	if _, err := c.WaitLed(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, stalled := run("naive", client.Config{DisableFailover: true, AttemptTimeout: 5 * time.Second}); len(stalled) == 0 {
		t.Error("the naive client's puts went on at a tenth of the healthy rate or more through the freeze too: this test cannot tell failover from none")
	}
}
