package server

import (
	"fmt"
	"testing"
	"time"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/kv"
)

// A node that stays down for --dead-after (1s here) is dead: the leaders
// of its ranges move its replicas to the live node without one, so every
// range is back at 3 replicas on live nodes, and every key written before
// reads back. With --dead-after negative nothing moves (the control).
func TestUpReplicateDeadNode(t *testing.T) {
	for _, deadAfter := range []time.Duration{time.Second, -1} {
		t.Run(fmt.Sprint("dead-after=", deadAfter), func(t *testing.T) {
			// Gossip probes every 200ms: node 4 is counted down within a
			// second or so of its stop.
			c := startClusterWith(t, 4, 4, func(cfg *Config) {
				cfg.Replicas, cfg.DeadAfter, cfg.GossipInterval = 3, deadAfter, 200*time.Millisecond
			})
			cl := c.client()
			ctx := ctxT(t)
			keys := make([]string, 40)
			for i := range keys {
				keys[i] = fmt.Sprintf("%02x-k", i*6)
				if _, err := cl.Put(ctx, []byte(keys[i]), []byte("v")); err != nil {
					t.Fatal(err)
				}
			}
			held := 0
			for g := uint64(1); g <= 4; g++ {
				if d, ok := c.nodes[1].descriptor(g); ok && d.HasReplica(4) {
					held++
				}
			}
			if held != 3 {
				t.Fatalf("node 4 holds %d of the 4 ranges, want 3", held)
			}
			if err := c.nodes[4].Stop(); err != nil {
				t.Fatal(err)
			}
			delete(c.nodes, 4)
			start := time.Now()
			back := func() error {
				for g := uint64(1); g <= 4; g++ {
					var d *kv.Descriptor
					for _, id := range []uint64{1, 2, 3} {
						if r, ok := c.nodes[id].ranges.Get(g); ok {
							if rd, ok := r.Descriptor(); ok && (d == nil || rd.Generation > d.Generation) {
								d = rd
							}
						}
					}
					if d == nil || d.HasReplica(4) || len(d.Replicas) != 3 || len(d.Learners) != 0 {
						return fmt.Errorf("range %d: %v", g, d)
					}
				}
				return nil
			}
			state := func() string {
				st, err := cl.Status(ctx)
				if err != nil {
					return err.Error()
				}
				for _, n := range api.NodeListOf(st).Nodes {
					if n.ID == 4 {
						return n.State
					}
				}
				return "missing"
			}
			if deadAfter < 0 {
				waitFor(t, 20*time.Second, "node 4 listed suspect", func() error {
					if st := state(); st != api.NodeSuspect {
						return fmt.Errorf("node 4 is %q", st)
					}
					return nil
				})
				time.Sleep(3 * time.Second) // three times what moves them with --dead-after 1s
				if back() == nil {
					t.Fatal("ranges moved off node 4 with --dead-after negative")
				}
				if st := state(); st != api.NodeSuspect {
					t.Fatalf("node 4 is %q with --dead-after negative, want suspect", st)
				}
				return
			}
			waitFor(t, 10*time.Second, "node 4 listed dead", func() error {
				if st := state(); st != api.NodeDead {
					return fmt.Errorf("node 4 is %q", st)
				}
				return nil
			})
			waitFor(t, 30*time.Second, "every range on 3 live nodes", back)
			t.Logf("every range back at 3 replicas on live nodes %v after node 4 stopped", time.Since(start).Round(time.Millisecond))
			for _, k := range keys {
				if kv, err := cl.Get(ctx, []byte(k)); err != nil || string(kv.Value) != "v" {
					t.Fatalf("get %s: %q %v", k, kv.Value, err)
				}
			}
		})
	}
}
