package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/client"
)

// `flotilla node drain` and `flotilla move` on real processes: 4 nodes,
// 8 ranges of 3 replicas. Draining node 4 leaves no range with a replica
// there, every key written before reads back, and writes made during the
// drain all succeed; a move puts a replica back on node 4; a move naming
// a node outside the cluster is refused. Then `flotilla node decommission`
// moves that replica off again and removes node 4: it exits, is listed
// removed, and exits again when started on its data; decommissioning one
// of the 3 nodes left is refused.
func TestDrainAndMoveCLI(t *testing.T) {
	c := launch(t, &procCluster{groups: 8, size: 4, startArgs: []string{"--replicas", "3"}})
	c.waitLed(t, 8)
	eps := strings.Join(c.endpoints(0), ",")
	cfg, err := c.config(c.endpoints(0))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cl, err := client.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	keys := make([]string, 64)
	for i := range keys {
		keys[i] = fmt.Sprintf("%02x-key", i*4)
		if _, err := cl.Put(ctx, []byte(keys[i]), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	// Writes go on during the drain.
	stop, done := make(chan struct{}), make(chan error, 1)
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			if _, err := cl.Put(ctx, []byte(fmt.Sprintf("%02x-during", i%256)), []byte(fmt.Sprint(i))); err != nil {
				done <- fmt.Errorf("write %d during the drain: %w", i, err)
				return
			}
		}
	}()
	r := run(t, nil, "node", "drain", "4", "--endpoints", eps)
	close(stop)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if r.code != 0 || !strings.Contains(r.stdout, "node 4 holds no replica") || !strings.Contains(r.stdout, "moved range") {
		t.Fatalf("node drain 4 exited %d:\n%s%s", r.code, r.stdout, r.stderr)
	}
	t.Logf("drain:\n%s", r.stdout)
	type rangesJSON struct {
		Ranges []struct {
			ID       uint64    `json:"id"`
			Start    string    `json:"start"`
			Replicas []uint64  `json:"replicas"`
			Learners *[]uint64 `json:"learners"`
			Sticky   bool      `json:"sticky"`
		} `json:"ranges"`
	}
	ranges := func() rangesJSON {
		t.Helper()
		r := run(t, nil, "ranges", "-w", "json", "--endpoints", eps)
		var out rangesJSON
		if r.code != 0 || json.Unmarshal([]byte(r.stdout), &out) != nil {
			t.Fatalf("ranges exited %d: %s%s", r.code, r.stdout, r.stderr)
		}
		return out
	}
	for _, rg := range ranges().Ranges {
		if slices.Contains(rg.Replicas, 4) || len(rg.Replicas) != 3 {
			t.Fatalf("after the drain range %d is on %v", rg.ID, rg.Replicas)
		}
		// Every boundary is the bootstrap's (nothing split): sticky, but
		// the first range's start, the keyspace's.
		if rg.Learners == nil || len(*rg.Learners) != 0 || rg.Sticky != (rg.Start != "") {
			t.Fatalf("after the drain range %d (start %q) lists learners %v, sticky %v", rg.ID, rg.Start, rg.Learners, rg.Sticky)
		}
	}
	// Sizes and loads are listed, unless --stats=false.
	for _, stats := range []bool{true, false} {
		r := run(t, nil, "ranges", "-w", "json", fmt.Sprintf("--stats=%v", stats), "--endpoints", eps)
		var raw struct {
			Ranges []map[string]json.RawMessage `json:"ranges"`
		}
		if r.code != 0 || json.Unmarshal([]byte(r.stdout), &raw) != nil || len(raw.Ranges) == 0 {
			t.Fatalf("ranges --stats=%v exited %d: %s%s", stats, r.code, r.stdout, r.stderr)
		}
		total := 0
		for _, rg := range raw.Ranges {
			b, hasBytes := rg["bytes"]
			_, hasOps := rg["ops_per_sec"]
			if hasBytes != stats || hasOps != stats {
				t.Fatalf("ranges --stats=%v lists range %s with bytes %v, ops_per_sec %v", stats, rg["id"], hasBytes, hasOps)
			}
			var n int
			if hasBytes && json.Unmarshal(b, &n) == nil {
				total += n
			}
		}
		if stats && total == 0 {
			t.Fatalf("ranges --stats=true lists 0 bytes in all, after %d keys were written", len(keys))
		}
	}
	for _, k := range keys {
		if kv, err := cl.Get(ctx, []byte(k)); err != nil || string(kv.Value) != "v" {
			t.Fatalf("get %s after the drain: %q %v", k, kv.Value, err)
		}
	}
	// The drain is done when no descriptor lists node 4; node 4 then
	// deletes the replicas it was removed from once it hears of it.
	c.waitHosted(t, 4, 0)
	// A replica back on node 4.
	r = run(t, nil, "move", keys[0], "--from", "1", "--to", "4", "--endpoints", eps)
	if r.code != 0 || !strings.Contains(r.stdout, "OK: range") {
		t.Fatalf("move exited %d:\n%s%s", r.code, r.stdout, r.stderr)
	}
	back := 0
	for _, rg := range ranges().Ranges {
		if slices.Contains(rg.Replicas, 4) {
			back++
		}
	}
	if back != 1 {
		t.Fatalf("after the move back, %d ranges have a replica on node 4, want 1", back)
	}
	c.waitHosted(t, 4, 1)
	if kv, err := cl.Get(ctx, []byte(keys[0])); err != nil || string(kv.Value) != "v" {
		t.Fatalf("get %s after the move: %q %v", keys[0], kv.Value, err)
	}
	r = run(t, nil, "move", keys[0], "--from", "9", "--to", "4", "--endpoints", eps)
	if r.code == 0 || !strings.Contains(r.stderr, "not in the cluster") {
		t.Fatalf("a move from node 9 exited %d:\n%s%s", r.code, r.stdout, r.stderr)
	}

	// Decommission node 4 (it holds one replica again): its replica moves
	// off, it is listed removed, and the node exits with an error.
	r = run(t, nil, "node", "decommission", "4", "--endpoints", eps)
	if r.code != 0 || !strings.Contains(r.stdout, "node 4 decommissioning: 1 replicas left") || !strings.Contains(r.stdout, "node 4 removed in") {
		t.Fatalf("node decommission 4 exited %d:\n%s%s", r.code, r.stdout, r.stderr)
	}
	t.Logf("decommission:\n%s", r.stdout)
	select {
	case err := <-c.nodes[4].exited:
		c.nodes[4].cmd = nil
		if err == nil || !strings.Contains(c.nodes[4].stderr.String(), "removed from the cluster") {
			t.Fatalf("removed node 4 exited with %v:\n%s", err, c.nodes[4].stderr)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("node 4 still runs 30s after its removal")
	}
	for _, rg := range ranges().Ranges {
		if slices.Contains(rg.Replicas, 4) || len(rg.Replicas) != 3 {
			t.Fatalf("after the decommission range %d is on %v", rg.ID, rg.Replicas)
		}
	}
	r = run(t, nil, "node", "list", "-w", "json", "--endpoints", eps)
	var list api.NodeList
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &list) != nil {
		t.Fatalf("node list exited %d: %s%s", r.code, r.stdout, r.stderr)
	}
	for _, n := range list.Nodes {
		if want := map[bool]string{true: api.NodeRemoved, false: api.NodeLive}[n.ID == 4]; n.State != want {
			t.Fatalf("node %d listed %q after the decommission, want %q:\n%s", n.ID, n.State, want, r.stdout)
		}
	}
	// Started again on its data, it is refused and exits.
	c.start(4)
	select {
	case err := <-c.nodes[4].exited:
		c.nodes[4].cmd = nil
		if err == nil || !strings.Contains(c.nodes[4].stderr.String(), "removed from the cluster") {
			t.Fatalf("removed node 4 started again exited with %v:\n%s", err, c.nodes[4].stderr)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("removed node 4 runs again")
	}
	// Three nodes left for 3 replicas: no more.
	r = run(t, nil, "node", "decommission", "3", "--endpoints", eps)
	if r.code == 0 || !strings.Contains(r.stderr, "would leave 2 live nodes") {
		t.Fatalf("node decommission 3 exited %d:\n%s%s", r.code, r.stdout, r.stderr)
	}
}

// waitHosted waits up to 30s for node id to host want replicas, by its
// flotilla_raft_groups gauge, and fails the test if it does not.
func (c *procCluster) waitHosted(t *testing.T, id uint64, want int) {
	t.Helper()
	var n float64
	var err error
	start := time.Now()
	for deadline := start.Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if n, err = metricSum(nil, c.nodes[id].httpAddr, "flotilla_raft_groups", ""); err == nil && n == float64(want) {
			t.Logf("node %d hosts %d replicas (waited %v)", id, want, time.Since(start).Round(time.Millisecond))
			return
		}
	}
	t.Fatalf("node %d hosts %v replicas 30s on (%v), want %d", id, n, err, want)
}
