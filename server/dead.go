package server

import (
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/flotilla/flotilla/kv"
)

// maxDeadMoves bounds the replica moves off dead nodes this node makes at
// once: each sends a snapshot, and up-replication must not starve the
// foreground writes (seed 002: nor delay a heartbeat).
const maxDeadMoves = 2

// deadMoves is the set of ranges deadLoop is moving replicas of, and
// when those whose last move failed may be tried again. mu is a leaf:
// deadLoop reads them, and the moves' callbacks (on the range store's
// loop) write them.
type deadMoves struct {
	mu      sync.Mutex
	moving  map[uint64]bool
	retryAt map[uint64]time.Time
}

// deadRetry is how long a range whose move off a dead node failed waits
// before another: a range that cannot move now (frozen for a merge, its
// leadership moving) must not take the moves' slots from the others on
// every pass.
const deadRetry = 10 * time.Second

// deadLoop up-replicates the ranges of dead nodes: a node unreachable for
// Config.DeadAfter is dead, and every range this node leads that has a
// replica there moves it to the live node with the fewest replicas among
// those without one of that range (ranges.Store.Move), at most
// maxDeadMoves at a time; a live learner left by a move cut short takes
// the dead replica's place instead, and a dead learner only goes. A range
// whose move fails waits deadRetry. A range frozen for a merge with a
// replica on the dead node cannot move (it applies nothing) nor merge
// (every replica must apply the freeze first) until that node returns. A node that comes back sooner is left alone;
// one that comes back later finds its replicas removed (the discovery's
// CheckRemoved). Started by Start when DeadAfter is positive.
func (s *Server) deadLoop() {
	t := time.NewTicker(max(s.cfg.DiscoveryInterval, time.Second))
	defer t.Stop()
	downSince := map[uint64]time.Time{}
	dm := &deadMoves{moving: map[uint64]bool{}, retryAt: map[uint64]time.Time{}}
	for {
		select {
		case <-s.stopc:
			return
		case <-t.C:
		}
		now := time.Now()
		live := s.reachableNodes()
		var dead []uint64
		for _, id := range s.nodes {
			switch {
			case id == s.cfg.NodeID || live[id]:
				delete(downSince, id)
			case downSince[id].IsZero():
				downSince[id] = now
			case now.Sub(downSince[id]) >= s.cfg.DeadAfter:
				dead = append(dead, id)
			}
		}
		set := make(map[uint64]bool, len(dead))
		for _, id := range dead {
			set[id] = true
		}
		s.dead.Store(&set)
		if len(dead) > 0 {
			s.moveOffDead(dead, live, dm)
		}
	}
}

// moveOffDead starts the moves of one deadLoop pass, up to maxDeadMoves
// under way.
func (s *Server) moveOffDead(dead []uint64, live map[uint64]bool, dm *deadMoves) {
	now := time.Now()
	dm.mu.Lock()
	busy := maps.Clone(dm.moving)
	waiting := map[uint64]bool{}
	for id, at := range dm.retryAt {
		if now.Before(at) {
			waiting[id] = true
		} else {
			delete(dm.retryAt, id)
		}
	}
	dm.mu.Unlock()
	if len(busy) >= maxDeadMoves {
		return
	}
	count := map[uint64]int{}
	for _, g := range s.groupInfos() {
		for _, n := range g.Replicas {
			count[n]++
		}
	}
	for _, r := range s.ranges.Replicas() {
		if len(busy) >= maxDeadMoves {
			return
		}
		d, ok := r.Descriptor()
		if !ok || busy[r.ID] || waiting[r.ID] {
			continue
		}
		i := slices.IndexFunc(d.Replicas, func(n uint64) bool { return slices.Contains(dead, n) })
		if i < 0 {
			continue
		}
		if l, _, err := s.host.Leader(r.ID); err != nil || l != s.cfg.NodeID {
			continue
		}
		from, to := d.Replicas[i], uint64(0)
		switch {
		case slices.Contains(d.Learners, from):
			// A dead learner (a move cut short): it only goes.
		case slices.ContainsFunc(d.Learners, func(n uint64) bool { return live[n] }):
			// A live learner (a move cut short) takes the dead one's
			// place: a new one would make the range one voter too many.
			to = d.Learners[slices.IndexFunc(d.Learners, func(n uint64) bool { return live[n] })]
		default:
			for _, n := range s.nodes {
				if live[n] && !d.HasReplica(n) && (to == 0 || count[n] < count[to]) {
					to = n
				}
			}
			if to == 0 {
				continue // no live node without a replica of it: it stays short
			}
		}
		if to != 0 {
			count[to]++
		}
		busy[r.ID] = true
		dm.mu.Lock()
		dm.moving[r.ID] = true
		dm.mu.Unlock()
		id := r.ID
		s.log.Info("moving a replica off a dead node", "group", id, "from", from, "to", to, "desc", d.String())
		s.ranges.Move(id, from, to, func(nd kv.Descriptor, err error) {
			dm.mu.Lock()
			delete(dm.moving, id)
			if err != nil {
				dm.retryAt[id] = time.Now().Add(deadRetry)
			}
			dm.mu.Unlock()
			if err != nil {
				s.log.Info("moving a replica off a dead node did not finish; trying again later", "group", id, "from", from, "to", to, "err", err, "after", deadRetry)
				return
			}
			s.log.Info("replica moved off a dead node", "group", id, "from", from, "to", to, "desc", nd.String())
		})
	}
}
