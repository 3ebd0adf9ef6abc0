package e2e

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/api"
)

// `flotilla node list`: every node live by gossip, with its addresses and
// capacity, holding and leading what the ranges say (3 nodes, 4 ranges of
// 3 replicas); a killed node is suspect once gossip counts it down, and the
// others still list it.
func TestNodeListCLI(t *testing.T) {
	c := newProcCluster(t, 4)
	c.waitLed(t, 4)
	list := func(eps []string) api.NodeList {
		t.Helper()
		r := run(t, nil, "node", "list", "-w", "json", "--endpoints", strings.Join(eps, ","))
		if r.code != 0 {
			t.Fatalf("node list exited %d: %s", r.code, r.stderr)
		}
		var nl api.NodeList
		if err := json.Unmarshal([]byte(r.stdout), &nl); err != nil {
			t.Fatalf("node list printed %q: %v", r.stdout, err)
		}
		return nl
	}
	// Until the node asked has heard of every node by gossip (its
	// addresses and capacity come with it), the others may be suspect or
	// without them.
	var nl api.NodeList
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		nl = list(c.endpoints(0))
		replicas, leaders, live := 0, 0, 0
		for _, n := range nl.Nodes {
			if n.State == api.NodeLive && n.ClientAddr != "" && n.PeerAddr != "" && n.UsedBytes > 0 && n.AvailableBytes > 0 {
				live++
			}
			replicas += n.Replicas
			leaders += n.Leaders
		}
		if len(nl.Nodes) == 3 && live == 3 && replicas == 12 && leaders == 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d nodes (%d live with their addresses and capacity) holding %d replicas and %d leaders, want 3, 3, 12, 4: %+v",
				len(nl.Nodes), live, replicas, leaders, nl)
		}
	}
	if r := run(t, nil, "node", "list", "--endpoints", strings.Join(c.endpoints(0), ",")); r.code != 0 ||
		!strings.Contains(r.stdout, "NODE") || strings.Count(r.stdout, " live ") != 3 {
		t.Fatalf("node list (table) exited %d:\n%s%s", r.code, r.stdout, r.stderr)
	}
	c.kill(3)
	deadline := time.Now().Add(30 * time.Second)
	for {
		nl = list(c.endpoints(3))
		if len(nl.Nodes) == 3 && nl.Nodes[2].ID == 3 && nl.Nodes[2].State == api.NodeSuspect &&
			nl.Nodes[0].State == api.NodeLive && nl.Nodes[1].State == api.NodeLive {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after node 3 was killed: %+v", nl)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
