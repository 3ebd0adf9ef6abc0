package chaos

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"
)

// TestChaosBench measures write throughput during a one-way black hole as
// a fraction of healthy throughput, and the elections it causes, for
// Flotilla and the naive serial sender, in process (fault hooks, and
// iptables) and across real processes (iptables, `flotilla bench put`).
// Opt-in: FLOTILLA_CHAOS_BENCH=1; the results go to BENCHMARKS.md
// ("## Chaos").
//
//	FLOTILLA_CHAOS_BENCH=1 go test -run TestChaosBench -v -timeout 20m ./chaos/
func TestChaosBench(t *testing.T) {
	if os.Getenv("FLOTILLA_CHAOS_BENCH") != "1" {
		t.Skip("opt-in: set FLOTILLA_CHAOS_BENCH=1")
	}
	const window = 15 * time.Second
	var fw *Firewall
	if f, err := NewFirewall(DefaultChain); err == nil {
		fw = f
		t.Cleanup(f.Close)
	} else if !errors.Is(err, ErrNoFirewall) {
		t.Fatal(err)
	}
	type fault struct {
		name         string
		apply, unset func(c *Cluster)
	}
	faults := []fault{{"hook", func(c *Cluster) { c.Node(2).Faults().SetIngressBlocked(1, true) },
		func(c *Cluster) { c.Node(2).Faults().SetIngressBlocked(1, false) }}}
	if fw != nil {
		faults = append(faults, fault{"iptables", func(c *Cluster) {
			if err := fw.DropLink("127.0.0.1", "127.0.0.2", portOf(t, c.Node(2).Addr)); err != nil {
				t.Fatal(err)
			}
		}, func(c *Cluster) {
			if err := fw.Flush(); err != nil {
				t.Fatal(err)
			}
		}})
	}
	for _, f := range faults {
		for _, naive := range []bool{false, true} {
			name := f.name + map[bool]string{false: "/flotilla", true: "/naive"}[naive]
			t.Run(name, func(t *testing.T) {
				c := newTestCluster(t, 3, naive)
				r, load := runFault(t, c, window, true, []uint64{2}, func() { f.apply(c) }, func() { f.unset(c) })
				load.Stop()
				t.Logf("RESULT in-process %s: healthy %.0f writes/s, during %v black hole 1->2 %.0f writes/s = %.2f of healthy; elections %d; check: %v",
					name, r.healthyRate, window, r.faultRate, r.faultRate/r.healthyRate, r.elections, r.check)
			})
		}
	}
	t.Run("process/flotilla", func(t *testing.T) {
		if fw == nil {
			t.Skip("iptables unavailable")
		}
		c, _ := newProcTestCluster(t)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		healthy, err := c.Bench(ctx, window, 16)
		if err != nil {
			t.Fatal(err)
		}
		before, err := Stable(ctx, 30*time.Second, c.ElectionTimeout(), c.View)
		if err != nil {
			t.Fatal(err)
		}
		p1, p2 := c.Proc(1), c.Proc(2)
		if err := fw.DropLink(p1.IP, p2.IP, p2.PeerPort); err != nil {
			t.Fatal(err)
		}
		during, err := c.Bench(ctx, window, 16)
		after := procView(t, c)
		dropped, _ := fw.Packets()
		_ = fw.Flush()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("RESULT process flotilla: healthy %.0f ops/s (p99 %.1fms), during %v iptables drop 1->2 %.0f ops/s (p99 %.1fms) = %.2f of healthy; %d packets dropped; elections %d; check: %v",
			healthy.OpsPerSec, healthy.P99Ms, window, during.OpsPerSec, during.P99Ms, during.OpsPerSec/healthy.OpsPerSec,
			dropped, Elections(before, after), CheckUnchanged(before, after, 2))
	})
}
