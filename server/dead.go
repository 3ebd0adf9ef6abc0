package server

import (
	"errors"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/flotilla/flotilla/internal/phase"
	"github.com/flotilla/flotilla/internal/ranges"
	"github.com/flotilla/flotilla/kv"
)

// maxDeadMoves bounds the replica moves off leaving nodes this node makes at
// once: each sends a snapshot, and up-replication must not starve the
// foreground writes (seed 002: nor delay a heartbeat).
const maxDeadMoves = 2

// deadMoves is the set of ranges evacuateLoop is moving replicas of, and
// when those whose last move failed may be tried again. mu is a leaf:
// evacuateLoop reads them, and the moves' callbacks (on the range store's
// loop) write them.
type deadMoves struct {
	mu      sync.Mutex
	moving  map[uint64]bool
	retryAt map[uint64]time.Time
}

// deadRetry is how long a range whose move off a leaving node failed waits
// before another: a range that cannot move now (frozen for a merge, its
// leadership moving) must not take the moves' slots from the others on
// every pass.
const deadRetry = 10 * time.Second

// evacuateLoop moves replicas off the nodes that are leaving: those
// dead (unreachable for Config.DeadAfter, if positive) and those
// decommissioning (decommission.go); a node is down when the gossip
// membership counts it down, or raft does not reach it (reachableNodes).
// Every range this node leads that has
// a replica on a leaving node moves it to the member with the fewest
// replicas among the live ones without one of that range
// (ranges.Store.Move), at most maxDeadMoves at a time; a live member's
// learner left by a move cut short takes the leaving replica's place
// instead, and a leaving learner only goes. A range whose move fails
// waits deadRetry; one whose leadership this node handed away (it is the
// node leaving) is the new leader's to move. A range frozen for a merge
// with a replica on a dead node cannot move (it applies nothing); its
// left neighbour leaves the dead node and merges it on the live replicas
// (ranges' subset merge, kv.StateMachineVersion 1), and the rebalancer
// repairs the merged range. A dead node that comes back sooner is left alone; one that
// comes back later finds its replicas removed (the discovery's
// CheckRemoved). Started by Start.
func (s *Server) evacuateLoop() {
	t := phase.NewTicker(max(s.cfg.DiscoveryInterval, time.Second))
	defer t.Stop()
	downSince := map[uint64]time.Time{}
	dm := &deadMoves{moving: map[uint64]bool{}, retryAt: map[uint64]time.Time{}}
	for {
		select {
		case <-s.stopc:
			return
		case <-t.C:
			t.Next()
		}
		now := time.Now()
		// A node is up while the gossip membership counts it live and
		// raft reaches it (reachableNodes): one that answers gossip while
		// its raft is wedged (a hung disk) is down as well.
		live := s.reachableNodes()
		members := s.leavingNodes()
		var leaving []uint64
		set := map[uint64]bool{}
		for _, id := range s.nodeIDs() {
			switch {
			case members[id] != "":
				leaving = append(leaving, id)
				delete(downSince, id)
				continue
			case s.cfg.DeadAfter <= 0 || id == s.cfg.NodeID || live[id]:
				delete(downSince, id)
			case downSince[id].IsZero():
				downSince[id] = now
			case now.Sub(downSince[id]) >= s.cfg.DeadAfter:
				leaving = append(leaving, id)
				set[id] = true
			}
		}
		s.dead.Store(&set)
		if len(leaving) > 0 {
			for id := range members {
				delete(live, id) // no replica moves onto a leaving node
			}
			for id := range s.drainedNodes() {
				delete(live, id) // nor onto a drained one (drained.go)
			}
			s.moveOffDead(leaving, live, dm)
		}
	}
}

// moveOffDead starts the moves of one evacuateLoop pass off the leaving
// nodes leaving, onto the members live, up to maxDeadMoves under way.
func (s *Server) moveOffDead(leaving []uint64, live map[uint64]bool, dm *deadMoves) {
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
	// The replica counts, for the choice of targets: taken once a range
	// to move is found (it walks every range this node knows of; a pass
	// finds none most of the time: a removed node stays leaving for good).
	var count map[uint64]int
	for _, r := range s.ranges.Replicas() {
		if len(busy) >= maxDeadMoves {
			return
		}
		d, ok := r.Descriptor()
		if !ok || busy[r.ID] || waiting[r.ID] {
			continue
		}
		i := slices.IndexFunc(d.Replicas, func(n uint64) bool { return slices.Contains(leaving, n) })
		if i < 0 {
			continue
		}
		if l, _, err := s.host.Leader(r.ID); err != nil || l != s.cfg.NodeID {
			continue
		}
		if count == nil {
			count = map[uint64]int{}
			for _, g := range s.groupInfos() {
				for _, n := range g.Replicas {
					count[n]++
				}
			}
		}
		from, to := d.Replicas[i], uint64(0)
		switch {
		case slices.Contains(d.Learners, from):
			// A leaving learner (a move cut short): it only goes.
		case votersWhere(d, func(n uint64) bool { return !slices.Contains(leaving, n) }) >= s.cfg.Replicas:
			// Enough voters without it: it only goes. (A move whose
			// leader handed the leadership away, as the node leaving,
			// promoted its new replica before: this finishes it.)
		case slices.ContainsFunc(d.Learners, func(n uint64) bool { return live[n] }):
			// A live learner (a move cut short) takes the leaving one's
			// place: a new one would make the range one voter too many.
			to = d.Learners[slices.IndexFunc(d.Learners, func(n uint64) bool { return live[n] })]
		default:
			for _, n := range s.nodeIDs() {
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
		s.log.Info("moving a replica off a leaving node", "group", id, "from", from, "to", to, "desc", d.String())
		s.ranges.Move(id, from, to, func(nd kv.Descriptor, err error) {
			handedOff := errors.Is(err, ranges.ErrHandedOff) // the new leader moves it
			dm.mu.Lock()
			delete(dm.moving, id)
			if err != nil && !handedOff {
				dm.retryAt[id] = time.Now().Add(deadRetry)
			}
			dm.mu.Unlock()
			switch {
			case handedOff:
				s.log.Info("handed the leadership away to move this node's replica off it", "group", id)
			case err != nil:
				s.log.Info("moving a replica off a leaving node did not finish; trying again later", "group", id, "from", from, "to", to, "err", err, "after", deadRetry)
			default:
				s.log.Info("replica moved off a leaving node", "group", id, "from", from, "to", to, "desc", nd.String())
			}
		})
	}
}
