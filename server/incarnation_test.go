package server

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/flotilla/flotilla/api"
)

// TestWipedNodeRefused: every node records its data directory's
// incarnation; a node of --initial-cluster restarted on its own data
// starts (the control), and restarted on an empty data directory under its
// old flags it does not: New fails with ErrSuperseded, before it opens its
// storage, because its peers know it under another incarnation; and a
// discovery ask with another incarnation is answered that it is
// superseded, with its own, that it is not.
func TestWipedNodeRefused(t *testing.T) {
	c := startClusterWith(t, 3, 2, nil)
	c.tweak = func(cfg *Config) { cfg.BootstrapCheckWait = 10 * time.Second } // the others serve: they answer at once
	waitFor(t, 30*time.Second, "every node's incarnation recorded and read by every node", func() error {
		for id, n := range c.nodes {
			for j := uint64(1); j <= 3; j++ {
				if got, want := n.knownIncarnation(j), c.nodes[j].incarnation; got != want || got == 0 {
					return fmt.Errorf("node %d knows node %d's incarnation as %x, want %x", id, j, got, want)
				}
			}
		}
		return nil
	})
	inc := c.nodes[3].incarnation
	stop := func() {
		t.Helper()
		if err := c.nodes[3].Stop(); err != nil {
			t.Fatal(err)
		}
		delete(c.nodes, 3)
	}

	stop()
	c.start(3, nil)
	if got := c.nodes[3].incarnation; got != inc {
		t.Fatalf("restarted on its own data, node 3 is incarnation %x, was %x", got, inc)
	}
	c.waitLeaders()

	stop()
	cfg := c.config(3)
	c.tweak(&cfg)
	if err := os.RemoveAll(cfg.DataDir); err != nil {
		t.Fatal(err)
	}
	s, err := New(cfg)
	if err == nil {
		s.Stop()
		t.Fatal("node 3 started again on an empty data directory under its old ID")
	}
	if !errors.Is(err, ErrSuperseded) {
		t.Fatalf("node 3 on an empty data directory: %v, want ErrSuperseded", err)
	}
	t.Logf("refused as it must be: %v", err)
	// Refused before it opened its storage: the directory is as empty as
	// --join wants it.
	if ents, err := os.ReadDir(cfg.DataDir); err != nil || len(ents) != 0 {
		t.Fatalf("the refused node's data directory holds %d entries (%v)", len(ents), err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	p := &peerService{s: c.nodes[1]}
	for _, tc := range []struct {
		inc  uint64
		want bool
	}{{inc, false}, {inc + 1, true}} {
		resp, err := p.Info(ctx, &api.InfoRequest{ClusterId: c.nodes[1].clusterID, From: 3, Incarnation: tc.inc})
		if err != nil || resp.Superseded != tc.want {
			t.Fatalf("Info from node 3 as incarnation %x: superseded %v (%v), want %v", tc.inc, resp.GetSuperseded(), err, tc.want)
		}
	}
}

// TestSupersededInRecordStops: a running node that reads the
// incarnations record naming it under another incarnation (as after it
// bootstrapped on an empty data directory while every peer was down) stops
// with ErrSuperseded, and is refused when started again; the other nodes
// run on.
func TestSupersededInRecordStops(t *testing.T) {
	c := startClusterWith(t, 3, 2, nil)
	n := c.nodes[1]
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	waitFor(t, 30*time.Second, "every incarnation recorded", func() error {
		for j := uint64(1); j <= 3; j++ {
			if n.knownIncarnation(j) == 0 {
				return fmt.Errorf("node %d's not yet", j)
			}
		}
		return nil
	})
	waitFor(t, 10*time.Second, "the record rewritten with another incarnation for node 2", func() error {
		recs, err := n.authRecords(ctx, true)
		if err != nil {
			return err
		}
		raw, incs, unread := n.incarnationsOf(recs)
		incs[2]++
		if ok, err := n.writeServerRecord(ctx, incarnationsKey, encodeIncarnations(incs, unread), raw); !ok || err != nil {
			return fmt.Errorf("compare-and-set: %v %v", ok, err)
		}
		return nil
	})
	select {
	case <-c.nodes[2].Stopping():
	case <-ctx.Done():
		t.Fatal("node 2 runs on, named in the record under another incarnation")
	}
	if err := c.nodes[2].Err(); !errors.Is(err, ErrSuperseded) {
		t.Fatalf("node 2 stopped with %v, want ErrSuperseded", err)
	}
	if err := c.nodes[2].Stop(); err != nil {
		t.Fatal(err)
	}
	delete(c.nodes, 2)
	// It marked its data directory: started again (a supervisor), it does
	// not run.
	if s, err := New(c.config(2)); !errors.Is(err, ErrSuperseded) {
		if err == nil {
			s.Stop()
		}
		t.Fatalf("node 2 restarted after it was superseded: %v, want ErrSuperseded", err)
	}
	for _, id := range []uint64{1, 3} {
		if err := c.nodes[id].Err(); err != nil {
			t.Fatalf("node %d: %v", id, err)
		}
	}
}
