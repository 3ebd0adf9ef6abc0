package multiraft

// Paced catch-up: when a node comes back, the quiesced groups this node
// leads wake a few at a time (Config.MaxCatchUps), those the node lacks
// entries of first.
//
// Why. Before, any change of a peer's liveness woke every quiesced group
// this node led, at once. With 10,000 ranges on 3 nodes, a node's return
// woke about 5,000 leaders on each survivor; with the returning node behind
// on most of them, they stayed awake, ticking and heartbeating, until it
// had caught up on every one. The machine ran 3 x 10,000 active groups,
// and clients got 1 to 3 % of the healthy rate for 5 s (BENCHMARKS.md,
// "At the client, with 10,000 ranges").
//
// Which first. A leader that quiesces while a follower it counts down
// lacks its last entry records the group as lagging on that follower's
// node (maybeQuiesce; only once the tick has recorded that node down, so
// that its return is seen). When that node comes back, its lagging groups
// are queued first, then every other quiesced group led here (the node
// may have lost a replica: queueCatchUpLocked). A restarted follower's
// hello, or its answer, queues its range too if it lacks entries
// (laggingHello, restart.go). A node that goes down wakes at once only
// the groups led here that it leaves without a live quorum (they must step
// down: wakeLostQuorumLocked); the queue stays as it is.
//
// How. Each tick, the Host drops from the catching-up set the groups
// that quiesced again, lost their leadership, or woke two election
// timeouts ago, and wakes the next groups of the queue until the set holds
// MaxCatchUps again. A woken leader heartbeats the returned follower on its
// next tick, raft sends what it lacks, and the group quiesces again once
// it acknowledged. A group that something else woke meanwhile (a write,
// the returned node's own campaign) is skipped: it catches up on its own.
// Foreground writes wake their groups at once, whatever the queue.

import (
	"cmp"
	"maps"
	"slices"
)

// laggingLocked records g, quiesced under this node, as lagging on each
// node of peers. It refuses (false), recording nothing, unless the last
// tick recorded every one of them down: a return not yet seen as a
// change would never queue g. h.quiet.mu is held.
func (h *Host) laggingLocked(g *group, peers []uint64) bool {
	q := &h.quiet.mu
	for _, p := range peers {
		if !q.down[p] {
			return false
		}
	}
	if len(peers) > 0 && q.lagging == nil {
		q.lagging = make(map[uint64]map[uint64]*group)
	}
	for _, p := range peers {
		m := q.lagging[p]
		if m == nil {
			m = make(map[uint64]*group)
			q.lagging[p] = m
		}
		m[g.id] = g
	}
	return true
}

// unlagLocked forgets g in the lagging sets (it woke). h.quiet.mu is held.
func (h *Host) unlagLocked(g *group) {
	for p, m := range h.quiet.mu.lagging {
		delete(m, g.id)
		if len(m) == 0 {
			delete(h.quiet.mu.lagging, p)
		}
	}
}

// queueCatchUpLocked queues, when node p came back, the groups led here
// that it lacks entries of (lagging on it), in ID order, then the other
// quiesced groups led here, in ID order: p may have lost a replica in its
// absence (a crash before a split's new range was durable there), and
// only its leader's message makes it start again (StateMachine and
// Config.UnknownGroup). Those wake, heartbeat p, see its answer, and
// quiesce again within a tick or two. h.quiet.mu is held.
func (h *Host) queueCatchUpLocked(p uint64) {
	q := &h.quiet.mu
	lag := q.lagging[p]
	delete(q.lagging, p)
	for _, id := range slices.Sorted(maps.Keys(lag)) {
		h.addCatchUpLocked(lag[id])
	}
	own := q.byLeader[h.cfg.NodeID]
	for _, id := range slices.Sorted(maps.Keys(own)) {
		h.addCatchUpLocked(own[id])
	}
	h.metrics.catchUpWaiting.Store(int64(len(q.catchUpQ)))
}

// addCatchUpLocked appends g to the catch-up queue unless it is in it
// already (another node came back at the same tick, or g's follower said
// hello: restart.go). h.quiet.mu is held.
func (h *Host) addCatchUpLocked(g *group) {
	if !g.catchUpQueued {
		g.catchUpQueued = true
		h.quiet.mu.catchUpQ = append(h.quiet.mu.catchUpQ, g)
	}
}

// paceCatchUps wakes the next groups of the catch-up queue (see the top
// of this file) and appends their IDs to ids, for the scheduler. Called
// by tick, after wakeOnLiveness.
func (h *Host) paceCatchUps(ids []uint64) []uint64 {
	h.quiet.mu.Lock()
	defer h.quiet.mu.Unlock()
	q := &h.quiet.mu
	if len(q.catchUpQ) == 0 && len(q.catchingUp) == 0 {
		return ids
	}
	now := h.live.ticks.Load()
	sweepPaced(q.catchingUp, now, 2*int64(h.cfg.ElectionTicks), func(g *group) bool {
		// Still quiesced with its wake pending: its owner has not run it
		// yet (a busy node), and it keeps its slot.
		g.in.Lock()
		pending := g.in.wake
		g.in.Unlock()
		return (g.quiesced && !pending) || g.st.lead.Load() != h.cfg.NodeID
	})
	if q.catchingUp == nil {
		q.catchingUp = make(map[*group]int64, h.cfg.MaxCatchUps)
	}
	ids = popPaced(&q.catchUpQ, q.catchingUp, h.cfg.MaxCatchUps, now, ids,
		func(g *group) bool {
			g.catchUpQueued = false // popped
			return g.quiesced && g.quietLeader == h.cfg.NodeID
		},
		func(g *group) { g.in.wake = true })
	h.metrics.catchUpWaiting.Store(int64(len(q.catchUpQ)))
	return ids
}

// CatchUpsWaiting returns how many quiesced groups led here wait for
// their turn to wake and catch up a node that came back, as of the last
// tick.
func (h *Host) CatchUpsWaiting() int { return int(h.metrics.catchUpWaiting.Load()) }

// popPaced moves groups from the front of *queue into set (at tick now)
// until set holds max. A group that ready rejects (something else woke
// it: it runs on its own) is dropped; each other one is marked under its
// inbox lock, for its owner, and its ID appended to ids, for the
// scheduler. h.quiet.mu is held (queue and set are under it).
func popPaced(queue *[]*group, set map[*group]int64, max int, now int64, ids []uint64,
	ready func(*group) bool, mark func(*group)) []uint64 {
	q, n := *queue, 0
	for n < len(q) && len(set) < max {
		g := q[n]
		q[n] = nil
		n++
		if !ready(g) {
			continue
		}
		g.in.Lock()
		mark(g)
		g.in.Unlock()
		set[g] = now
		ids = append(ids, g.id)
	}
	if q = q[n:]; len(q) == 0 {
		q = nil // the backing array goes
	}
	*queue = q
	return ids
}

// sweepPaced drops from set (a paced set of tick's: start campaigns,
// catch-ups, hellos) the groups done reports finished, and those that
// entered it giveUp ticks or more before now; it returns the latter, in
// ID order (their owners act on them in the order they are queued, which
// the simulation must replay: the map's order is random). h.quiet.mu is
// held.
func sweepPaced(set map[*group]int64, now, giveUp int64, done func(*group) bool) (gaveUp []*group) {
	for g, at := range set {
		switch {
		case done(g):
			delete(set, g)
		case now-at >= giveUp:
			delete(set, g)
			gaveUp = append(gaveUp, g)
		}
	}
	slices.SortFunc(gaveUp, func(a, b *group) int { return cmp.Compare(a.id, b.id) })
	return gaveUp
}
