package server

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/client"
)

// TestGossipLiveness: the nodes find each other by gossip and spread their
// client addresses and capacity; a frozen node (SIGSTOP's stand-in) is
// counted down by gossip (and the status, node list, does not wait for
// it), and live again once it thaws, each node joining back what it lost;
// a stopped node stays suspect (--dead-after off). Node
// liveness, in the node list and for the allocator (aliveNodes), is
// gossip's: the test reads both.
func TestGossipLiveness(t *testing.T) {
	c := startClusterWith(t, 3, 3, func(cfg *Config) { cfg.DeadAfter = -1; cfg.GossipInterval = 200 * time.Millisecond })
	gossipSees := func(on, id uint64, live bool) error {
		n, ok := c.nodes[on].gossip.Nodes()[id]
		switch {
		case !ok:
			return fmt.Errorf("node %d's gossip never heard of node %d", on, id)
		case n.Live != live:
			return fmt.Errorf("node %d's gossip counts node %d live=%v, want %v", on, id, n.Live, live)
		case c.nodes[on].aliveNodes()[id] != live:
			return fmt.Errorf("node %d's allocator counts node %d live=%v, want %v", on, id, !live, live)
		}
		return nil
	}
	waitFor(t, 20*time.Second, "every node live by gossip, with its meta", func() error {
		for on := uint64(1); on <= 3; on++ {
			for id := uint64(1); id <= 3; id++ {
				if id == on {
					continue
				}
				if err := gossipSees(on, id, true); err != nil {
					return err
				}
				m := c.nodes[on].gossip.Nodes()[id].Meta
				if m.ClientAddr != c.nodes[id].ClientAddr() || m.HTTPAddr != c.nodes[id].HTTPAddr() || m.UsedBytes == 0 || m.AvailableBytes == 0 {
					return fmt.Errorf("node %d holds node %d's meta as %+v", on, id, m)
				}
			}
		}
		return nil
	})
	state := func(on, id uint64) string {
		for _, n := range api.NodeListOf(c.nodes[on].Status()).Nodes {
			if n.ID == id {
				return n.State
			}
		}
		return ""
	}
	for _, n := range c.nodes[1].nodeInfos() {
		if n.ClientAddr != c.nodes[n.Id].ClientAddr() || n.UsedBytes == 0 || n.AvailableBytes == 0 {
			t.Fatalf("node 1 describes node %d as %+v", n.Id, n)
		}
	}

	c.nodes[3].Freeze()
	waitFor(t, 20*time.Second, "frozen node 3 down by gossip", func() error {
		for _, on := range []uint64{1, 2} {
			if err := gossipSees(on, 3, false); err != nil {
				return err
			}
			if st := state(on, 3); st != api.NodeSuspect {
				return fmt.Errorf("node %d lists node 3 %s", on, st)
			}
		}
		return nil
	})
	if err := gossipSees(1, 2, true); err != nil {
		t.Fatal(err)
	}
	// The status (node list) does not wait for the frozen node: it is
	// not asked, being down. Asked, it would hold the call for the
	// client's attempt timeout (20s here).
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl, err := client.New(ctx, client.Config{Endpoints: []string{c.nodes[1].ClientAddr()}, AttemptTimeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	began := time.Now()
	st, err := cl.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(began); took > 10*time.Second {
		t.Fatalf("the status took %v with node 3 frozen and counted down", took)
	}
	if l := api.NodeListOf(st); len(l.Nodes) != 3 || l.Nodes[2].State != api.NodeSuspect {
		t.Fatalf("node list with node 3 frozen: %+v", l)
	}
	c.nodes[3].Thaw()
	waitFor(t, 20*time.Second, "thawed node 3 live by gossip", func() error {
		for _, on := range []uint64{1, 2} {
			if err := gossipSees(on, 3, true); err != nil {
				return err
			}
			if st := state(on, 3); st != api.NodeLive {
				return fmt.Errorf("node %d lists node 3 %s", on, st)
			}
		}
		return gossipSees(3, 1, true)
	})

	if err := c.nodes[3].Stop(); err != nil {
		t.Fatal(err)
	}
	delete(c.nodes, 3)
	waitFor(t, 20*time.Second, "stopped node 3 suspect", func() error {
		if err := gossipSees(1, 3, false); err != nil {
			return err
		}
		if st := state(1, 3); st != api.NodeSuspect {
			return fmt.Errorf("node 1 lists node 3 %s", st)
		}
		return nil
	})
}
