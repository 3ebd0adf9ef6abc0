package sim

import (
	"slices"
	"time"

	"github.com/flotilla/flotilla/kv"
	"github.com/flotilla/flotilla/multiraft"
)

// nemesis injects one fault chosen among the enabled kinds, and schedules
// itself again, until the faulty phase ends.
func (s *sim) nemesis() {
	if s.healed || s.now >= s.cfg.Duration {
		return
	}
	defer s.after(s.between(100*time.Millisecond, 700*time.Millisecond), s.nemesis)
	var kinds []Faults
	for _, f := range []Faults{FaultPartition, FaultBlackHole, FaultDelay, FaultCrash, FaultFailPoint, FaultCampaign, FaultPause, FaultTransfer, FaultSplit, FaultMembership, FaultMove, FaultJoin, FaultDecommission} {
		if s.cfg.Faults&f != 0 {
			kinds = append(kinds, f)
		}
	}
	if len(kinds) == 0 {
		return
	}
	nw := s.net
	dur := s.between(100*time.Millisecond, 1500*time.Millisecond)
	switch kinds[s.rng.IntN(len(kinds))] {
	case FaultPartition:
		// A random proper, non-empty subset against the rest.
		var side []bool
		for {
			side = make([]bool, len(s.nodes))
			some, all := false, true
			for _, id := range s.ids {
				side[id] = s.rng.IntN(2) == 0
				some = some || side[id]
				all = all && side[id]
			}
			if some && !all {
				break
			}
		}
		var links [][2]uint64
		for _, a := range s.ids {
			for _, b := range s.ids {
				if side[a] && !side[b] {
					links = append(links, [2]uint64{a, b}, [2]uint64{b, a})
				}
			}
		}
		s.blockFor(links, dur, "partition")
	case FaultBlackHole:
		a, b := s.pair()
		s.blockFor([][2]uint64{{a, b}}, dur, "blackhole")
	case FaultDelay:
		a, b := s.pair()
		k := [2]uint64{a, b}
		extra := s.between(20*time.Millisecond, 300*time.Millisecond)
		nw.slow[k] += extra
		s.res.Faults++
		s.record("slow", a, b, uint64(extra))
		s.after(dur, func() {
			if s.healed {
				return
			}
			nw.slow[k] -= extra
			if nw.slow[k] <= 0 {
				delete(nw.slow, k)
			}
		})
	case FaultCrash:
		up := s.upNodes()
		if len(up) == 0 {
			return
		}
		n := s.nodes[up[s.rng.IntN(len(up))]]
		s.res.Faults++
		n.crash("nemesis")
		n.scheduleRestart()
	case FaultFailPoint:
		up := s.upNodes()
		if len(up) == 0 {
			return
		}
		n := s.nodes[up[s.rng.IntN(len(up))]]
		points := failPoints
		if s.cfg.Faults&FaultSplit != 0 {
			points = append(append([]string(nil), failPoints...), storeFailPoints...)
		}
		n.armed = points[s.rng.IntN(len(points))]
		n.armedHits = s.rng.IntN(20)
		s.res.Faults++
		s.record("arm", n.id, uint64(n.armedHits))
		inc := n.inc
		s.after(dur, func() {
			if n.inc == inc {
				n.armed = ""
			}
		})
	case FaultCampaign:
		up := s.upNodes()
		if len(up) == 0 {
			return
		}
		n := s.nodes[up[s.rng.IntN(len(up))]]
		gs := s.rangeIDs()
		g := gs[s.rng.IntN(len(gs))]
		s.res.Faults++
		s.record("campaign", n.id, g)
		if err := n.host.Campaign(g); err == nil {
			n.drain()
		}
	case FaultPause:
		up := s.upNodes()
		if len(up) == 0 {
			return
		}
		n := s.nodes[up[s.rng.IntN(len(up))]]
		if n.paused {
			return
		}
		s.res.Faults++
		n.pause()
		inc, start := n.inc, s.now
		s.after(dur, func() {
			if n.inc == inc && n.paused {
				s.checkFailover(n, start)
				n.resume()
			}
		})
	case FaultSplit:
		s.splitNemesis()
	case FaultMembership:
		s.membershipNemesis()
	case FaultMove:
		s.moveNemesis()
	case FaultJoin:
		s.joinNemesis()
	case FaultDecommission:
		s.decommissionNemesis()
	case FaultTransfer:
		if g, n, ok := s.randomLed(); ok {
			id := n.id
			to := s.ids[s.rng.IntN(len(s.ids))]
			if to == id {
				return
			}
			s.res.Faults++
			s.res.Transfers++
			s.record("transfer", g, id, to)
			_ = n.host.TransferLeadershipAsync(g, to) // its outcome does not matter
			n.drain()
			return
		}
	}
}

// duplicateRequest proposes a copy of a client's write (its encoded
// command b, of group g) again, later, at a random running node, as a
// retried, duplicated or delayed request would arrive. Nobody waits for
// its result.
func (s *sim) duplicateRequest(g uint64, b []byte) {
	s.res.Faults++
	s.res.RequestDups++
	s.after(s.between(0, 800*time.Millisecond), func() {
		up := s.upNodes()
		if len(up) == 0 {
			return
		}
		n := s.nodes[up[s.rng.IntN(len(up))]]
		s.record("reqdup", n.id, g, cmdHash(b))
		_ = n.host.ProposeAsync(g, b)
		n.drain()
	})
}

// pair returns two distinct node IDs, or the same one in a 1-node cluster.
func (s *sim) pair() (uint64, uint64) {
	a := s.ids[s.rng.IntN(len(s.ids))]
	if len(s.ids) == 1 {
		return a, a
	}
	for {
		b := s.ids[s.rng.IntN(len(s.ids))]
		if b != a {
			return a, b
		}
	}
}

// blockFor blocks links for d.
func (s *sim) blockFor(links [][2]uint64, d time.Duration, what string) {
	s.res.Faults++
	s.record(what, uint64(len(links)), uint64(d))
	for _, l := range links {
		s.net.block(l[0], l[1])
	}
	s.after(d, func() {
		if s.healed {
			return
		}
		for _, l := range links {
			s.net.unblock(l[0], l[1])
		}
	})
}

// randomLed picks a range at random and returns it with the first running,
// unpaused node that leads it as its replica there sees it; ok is false if
// none does (or every node is down).
func (s *sim) randomLed() (g uint64, n *node, ok bool) {
	gs := s.rangeIDs()
	if len(gs) == 0 {
		return 0, nil, false // every node is down
	}
	g = gs[s.rng.IntN(len(gs))]
	n = s.ledBy(g)
	return g, n, n != nil
}

// ledBy returns the first running, unpaused node that leads range g as
// its replica there sees it; nil if none does.
func (s *sim) ledBy(g uint64) *node {
	for _, id := range s.upNodes() {
		n := s.nodes[id]
		if l, _, err := n.host.Leader(g); err == nil && l == id && !n.paused {
			return n
		}
	}
	return nil
}

// ledDescriptor returns the node that leads range g (ledBy) and its
// replica's descriptor there; nil if no node leads it or its replica has
// no descriptor yet.
func (s *sim) ledDescriptor(g uint64) (*node, *kv.Descriptor) {
	n := s.ledBy(g)
	if n == nil {
		return nil, nil
	}
	if d := n.descriptor(g); d != nil {
		return n, d
	}
	return nil, nil
}

// descriptor returns the descriptor of the node's replica of range g; nil
// if it holds none, or one with no descriptor yet.
func (n *node) descriptor(g uint64) *kv.Descriptor {
	r, ok := n.ranges.Get(g)
	if !ok {
		return nil
	}
	d, ok := r.Descriptor()
	if !ok {
		return nil
	}
	return d
}

// ghostNode is the node FaultMembership adds as a learner: no node of the
// simulation (at most 9), so every message to it is lost, as the real
// transport drops those to an unknown peer.
const ghostNode = 100

// membershipNemesis has a range's leader add ghostNode as a learner, or
// remove it if it is one (FaultMembership). Nobody waits for the outcome:
// a change refused (no longer the leader, or checked against a
// configuration not yet applied) or dropped is part of what is tested.
func (s *sim) membershipNemesis() {
	g, n, ok := s.randomLed()
	if !ok {
		return
	}
	if st, err := n.host.GroupStatus(g); err == nil {
		kind, what := multiraft.AddLearner, "add-learner"
		if slices.Contains(st.Learners, ghostNode) {
			kind, what = multiraft.RemoveMember, "remove"
		}
		s.res.Faults++
		s.res.MembershipChanges++
		s.record("membership-"+what, g, n.id, ghostNode)
		f := n.host.ChangeMembershipAsync(g, multiraft.Change{Kind: kind, Node: ghostNode}, nil)
		n.drain()
		// Its outcome does not matter to the checks, but a run in which
		// none applies has not tested them (TestSeeds counts).
		s.after(time.Second, func() {
			select {
			case <-f.Done():
				if _, err := f.Result(); err == nil {
					s.res.MembershipApplied++
				}
			default:
			}
		})
		return
	}
}

// moveNemesis has a range's leader move one of its replicas
// (FaultMove): if the range has a replica on every node, one of them
// (the leader's own, maybe) is removed; otherwise one is added on a node
// that lacks it. Nobody waits for the outcome: a move cut short by a
// crash, a pause or a partition is part of what is tested.
func (s *sim) moveNemesis() {
	g, n, ok := s.randomLed()
	if !ok {
		return
	}
	r, ok := n.ranges.Get(g)
	if !ok {
		return
	}
	d, ok := r.Descriptor()
	if !ok {
		return
	}
	var from, to uint64
	var missing []uint64
	for _, id := range s.ids {
		if !d.HasReplica(id) && id != s.leaving {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 {
		to = missing[s.rng.IntN(len(missing))]
	} else {
		from = s.ids[s.rng.IntN(len(s.ids))]
	}
	s.res.Faults++
	s.startMove(n, g, from, to)
}

// startMove asks node n's Store to move range g's replica, and counts it.
func (s *sim) startMove(n *node, g, from, to uint64) {
	s.res.Moves++
	s.record("move", g, n.id, from, to)
	n.ranges.Move(g, from, to, func(_ kv.Descriptor, err error) {
		if err == nil {
			s.res.MovesDone++
		}
	})
	n.drain()
}

// replicate gives every range a replica on every node again after
// healing, from each range's leader, one move at a time per range, and
// looks again every 200ms until the run ends: what an allocator does
// after a node's return.
func (s *sim) replicate() {
	for _, g := range s.rangeIDs() {
		n, d := s.ledDescriptor(g)
		if n == nil {
			continue
		}
		for _, to := range s.ids {
			if to == s.leaving {
				continue // decommissionLoop moves it off
			}
			if !d.HasReplica(to) || slices.Contains(d.Learners, to) {
				s.startMove(n, g, 0, to)
				break
			}
		}
	}
	s.after(200*time.Millisecond, s.replicate)
}
