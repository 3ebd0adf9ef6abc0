package client

// Failure detection at the client edge.
//
// A frozen node (SIGSTOP, a black hole) keeps its TCP connections open and
// answers nothing; a client that waits for it waits as long as its timeout.
// So the client watches what each node does:
//
//   - Latency. Every answer updates the node's smoothed latency and its
//     deviation; the node's hedge delay is their sum as TCP computes a
//     retransmission timeout (srtt + 4·rttvar), within Config.HedgeDelayMin
//     and HedgeDelayMax. An attempt unanswered for that long is hedged
//     (do.go): the same request goes to another node as well.
//   - Suspicion. A node is suspect once an attempt on it went unanswered
//     for its hedge delay while it answered nothing else meanwhile, or once
//     the connection to it failed. Requests go around suspects (pick).
//   - The cluster's view. A node the cluster map says is not alive (the
//     servers' gossip membership counts it down) is suspect too (apply).
//   - Probes. probeLoop asks every suspect node for the cluster map every
//     ProbeInterval; the first answer clears the suspicion (and refreshes
//     the leaders it knows, by term, so a node that was frozen cannot
//     install its stale view).

import (
	"context"
	"sync"
	"time"

	"github.com/flotilla/flotilla/api"
)

// Initial latency estimates of a node not heard from yet.
const (
	initialSRTT   = 20 * time.Millisecond
	initialRTTVar = 10 * time.Millisecond
)

// health is what the client knows of each node, by client address.
// Lock order: mu is a leaf.
type health struct {
	mu    sync.Mutex
	nodes map[string]*nodeHealth
}

type nodeHealth struct {
	srtt, rttvar time.Duration
	lastOK       time.Time // last answer of any kind
	suspect      bool
	probing      bool
}

func (h *health) init() { h.nodes = make(map[string]*nodeHealth) }

func (h *health) nodeLocked(addr string) *nodeHealth {
	n := h.nodes[addr]
	if n == nil {
		n = &nodeHealth{srtt: initialSRTT, rttvar: initialRTTVar}
		h.nodes[addr] = n
	}
	return n
}

// answered records that addr answered an attempt sent at sent: it is
// alive, and rtt updates its latency (RFC 6298's gains, 1/8 and 1/4).
func (h *health) answered(addr string, sent time.Time) {
	now := time.Now()
	rtt := now.Sub(sent)
	h.mu.Lock()
	defer h.mu.Unlock()
	n := h.nodeLocked(addr)
	dev := n.srtt - rtt
	if dev < 0 {
		dev = -dev
	}
	n.rttvar += (dev - n.rttvar) / 4
	n.srtt += (rtt - n.srtt) / 8
	n.lastOK = now
	n.suspect = false
}

// unreachable records that the connection to addr failed.
func (h *health) unreachable(addr string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.nodeLocked(addr).suspect = true
}

// slow records that an attempt sent to addr at sent is still unanswered
// after addr's hedge delay. addr becomes suspect unless it answered
// something since the attempt was sent.
func (h *health) slow(addr string, sent time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if n := h.nodeLocked(addr); n.lastOK.Before(sent) {
		n.suspect = true
	}
}

func (h *health) suspect(addr string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := h.nodes[addr]
	return n != nil && n.suspect
}

// hedgeDelay is how long an attempt on addr waits before it is hedged.
func (h *health) hedgeDelay(addr string, lo, hi time.Duration) time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := h.nodeLocked(addr)
	return min(max(n.srtt+4*n.rttvar, lo), hi)
}

// toProbe returns the suspect nodes not being probed, marked probing.
func (h *health) toProbe() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for addr, n := range h.nodes {
		if n.suspect && !n.probing {
			n.probing = true
			out = append(out, addr)
		}
	}
	return out
}

func (h *health) probed(addr string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.nodeLocked(addr).probing = false
}

// Suspects returns the client addresses of the nodes the client goes
// around now (for tests and status).
func (c *Client) Suspects() []string {
	c.health.mu.Lock()
	defer c.health.mu.Unlock()
	var out []string
	for addr, n := range c.health.nodes {
		if n.suspect {
			out = append(out, addr)
		}
	}
	return out
}

// probeLoop probes the suspect nodes every ProbeInterval until the client
// closes. Each probe runs on its own goroutine, bounded by AttemptTimeout.
func (c *Client) probeLoop() {
	defer c.loops.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	t := time.NewTicker(c.cfg.ProbeInterval)
	defer t.Stop()
	var probes sync.WaitGroup
	defer probes.Wait()
	for {
		select {
		case <-c.stop:
			cancel()
			return
		case <-t.C:
		}
		for _, addr := range c.health.toProbe() {
			probes.Add(1)
			go func() {
				defer probes.Done()
				c.probe(ctx, addr)
			}()
		}
	}
}

// probe asks addr for the cluster map; an answer clears its suspicion.
func (c *Client) probe(ctx context.Context, addr string) {
	defer c.health.probed(addr)
	cc, err := c.conn(addr)
	if err != nil {
		return
	}
	pctx, cancel := context.WithTimeout(ctx, c.cfg.AttemptTimeout)
	defer cancel()
	sent := time.Now()
	m, err := api.NewClusterClient(cc).ClusterMap(pctx, &api.ClusterMapRequest{})
	if err != nil {
		return
	}
	c.health.answered(addr, sent)
	c.apply(m, sent, false)
}
