package sim

import (
	"slices"
	"time"
)

// Nodes that join and leave the cluster (FaultJoin, FaultDecommission).
// The simulation's model of placement stays "every range on every node of
// ids": a node that joins is added to ids and must end with every range
// (replicate gives them), and a node decommissioned leaves ids once no
// range lists it, and must be listed by none at the end (checkRanges).

// joinNemesis starts the run's one new node (FaultJoin): empty, with no
// range of its own (it does not bootstrap the initial ranges), as a node
// started with --join is. It ticks from now on, and the moves give it
// replicas: each is a learner caught up by snapshot, then promoted.
func (s *sim) joinNemesis() {
	if s.joined || len(s.ids) >= 9 {
		return
	}
	id := uint64(len(s.nodes) - 1)
	if s.nodes[id] != nil {
		return
	}
	s.joined = true
	n := newNode(s, id)
	n.bootstrapped = true // a joining node writes no initial range
	s.nodes[id] = n
	s.ids = append(s.ids, id)
	s.res.Faults++
	s.res.Joins++
	s.record("join", id)
	if err := n.start(); err != nil {
		s.violation("node %d cannot join: %v", id, err)
		return
	}
	n.tickEvery = s.cfg.TickInterval + time.Duration(s.rng.Int64N(int64(s.cfg.TickInterval)/10+1)) - s.cfg.TickInterval/20
	s.after(s.between(0, s.cfg.TickInterval), n.tickLoop)
	s.after(s.between(0, rangeTick), n.rangeTickLoop)
}

// decommissionNemesis starts decommissioning one node (FaultDecommission),
// once a run, if at least two others would be left: decommissionLoop moves
// its replicas off. Under BugDecommissionEarly the node goes at once.
func (s *sim) decommissionNemesis() {
	if s.leaving != 0 || len(s.gone) > 0 || len(s.ids) < 3 {
		return
	}
	id := s.ids[s.rng.IntN(len(s.ids))]
	s.leaving = id
	s.res.Faults++
	s.record("decommission", id)
	if s.cfg.Bug == BugDecommissionEarly {
		s.removeLeaving()
		return
	}
	s.decommissionLoop()
}

// decommissionLoop moves the leaving node's replicas off, from each range's
// leader, and looks again every 100ms: a range with a node of ids that
// holds no replica of it gets one there in the leaving node's place
// (ranges.Store.Move from the leaving node to it), else the leaving
// node's replica is only removed. A move cut short (a crash, a pause, a
// partition, a leader change) is tried again on a later pass. Once every
// node of ids runs and the leader of every range sees no replica on the
// leaving node, it stops for good (removeLeaving).
func (s *sim) decommissionLoop() {
	if s.leaving == 0 {
		return
	}
	leaving, listed := s.leaving, false
	for _, id := range s.ids {
		// rangeIDs sees the ranges of the running nodes only: with one
		// down, a range only it holds would go unseen.
		if !s.nodes[id].up {
			listed = true
		}
	}
	for _, g := range s.rangeIDs() {
		n, d := s.ledDescriptor(g)
		if n == nil {
			listed = true // no leader now: look again later
			continue
		}
		if !d.HasReplica(leaving) {
			continue
		}
		listed = true
		var to uint64
		for _, id := range s.ids {
			if id != leaving && !d.HasReplica(id) {
				to = id
				break
			}
		}
		s.startMove(n, g, leaving, to)
	}
	if !listed {
		s.removeLeaving()
		return
	}
	s.after(100*time.Millisecond, s.decommissionLoop)
}

// removeLeaving stops the leaving node for good and takes it out of ids.
func (s *sim) removeLeaving() {
	id := s.leaving
	s.leaving = 0
	s.record("removed", id)
	s.res.Decommissions++
	s.ids = slices.DeleteFunc(s.ids, func(n uint64) bool { return n == id })
	s.gone = append(s.gone, id)
	n := s.nodes[id]
	n.removed = true
	n.crash("decommissioned")
	n.close()
}

// checkDecommissioned reports a range that still lists a decommissioned
// node, as any running replica of it sees it at the end.
func (s *sim) checkDecommissioned() {
	for _, g := range s.rangeIDs() {
		for _, id := range s.ids {
			n := s.nodes[id]
			if !n.up {
				continue
			}
			d := n.descriptor(g)
			if d == nil {
				continue
			}
			for _, gone := range s.gone {
				if d.HasReplica(gone) {
					s.violation("range %d still lists node %d, decommissioned, at node %d: %v", g, gone, id, d)
					return
				}
			}
		}
	}
}
