package ranges

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/flotilla/flotilla/kv"
	"github.com/flotilla/flotilla/multiraft"
)

// Moving a replica (docs/design.md, "Replica moves"). From the node that
// leads the range, one raft membership change at a time, each planned on
// the descriptor it saw (kv.EncodeChangePlan: a change that raced another
// is refused, and the move looks again):
//
//  1. add the new node as a learner, once it answers that it holds no
//     replica of the range (one left from before a removal it never
//     learned of goes first: Env.Removed): its node starts an empty replica
//     when the leader's first message comes (UnknownGroup), and gets a
//     snapshot;
//  2. wait until the learner has applied what the leader had when it was
//     added (Env.ReplicaApplied): the learner then holds the range's state
//     at a generation at least that of its addition;
//  3. promote it to a voter;
//  4. remove the old node's replica. If this node is the one leaving, it
//     hands the leadership to the new voter first, and the move ends with
//     ErrHandedOff: the caller asks the new leader to finish it;
//  5. tell the old node (Env.Removed), which checks with this node and
//     removes its replica and its span's data (CheckRemoved). A node that
//     applies its own removal removes it at once (reconcile).
//
// Every step looks at the descriptor and the raft configuration afresh,
// so a move that stopped half way (its node died) is finished by asking
// again; a move of from 0 only adds a replica, and one to 0 only removes.
//
// Step 2 is what makes the removal check of step 5 safe without replica
// IDs: a voter's replica has applied the generation that added it, so a
// descriptor of a higher generation that does not list the node was made
// after the node voted in it, and the node is out.

// ErrHandedOff: the move's remaining step is the removal of this node's
// replica, and this node handed the range's leadership to another replica
// to let it do it. Ask the range's new leader to finish the move.
var ErrHandedOff = errors.New("ranges: leadership handed off; ask the new leader to finish the move")

// ErrNotLeader: this node does not lead the range (moves start at the
// leader).
var ErrNotLeader = errors.New("ranges: not the range's leader")

// move is one move under way; owned by the loop.
type move struct {
	id, from, to uint64
	why          string
	forMerge     bool
	deadline     time.Time
	// caughtUpAt: the leader's applied index when the learner was found
	// added; the learner must reach it before its promotion.
	caughtUpAt uint64
	// abort: the learner did not catch up in time; the move removes it
	// (rolledBack: asked once) and ends with this error.
	abort      error
	rolledBack bool
	// promoted: this move promoted its new replica. One that found it
	// voting already (a move asked again after it was cut short) removes
	// the old replica only while the range keeps Config.Replicas voters
	// without it (moveStep).
	promoted bool
	// looked: moveStep has checked the move against the range once.
	looked bool
	done   func(kv.Descriptor, error)
}

// Move moves range id's replica on node from to node to, as above, and
// calls done on the Store's loop with the range's descriptor at the end
// or an error: ErrNotLeader (ask the leader), ErrHandedOff (ask the new
// leader), ErrBusy (a split, merge or move of the range is under way
// here, or a merge into it waits), ErrNotLocal, multiraft errors
// (ErrInvalidRequest for a move raft could not make). from 0 only adds a
// replica on to; to 0 only removes the one on from.
func (s *Store) Move(id, from, to uint64, done func(kv.Descriptor, error)) {
	s.enqueue(func() { s.startMove(id, from, to, "admin", false, time.Time{}, done) })
}

// startMove runs on the loop. forMerge: the move gives the range the
// replicas of a range frozen for a merge into it (alignForMerge), which
// other moves must wait for. deadline bounds the wait for the learner to
// catch up (zero: Config.MoveCatchUp from now).
func (s *Store) startMove(id, from, to uint64, why string, forMerge bool, deadline time.Time, done func(kv.Descriptor, error)) {
	switch {
	case from == 0 && to == 0, from == to:
		done(kv.Descriptor{}, fmt.Errorf("%w: move of range %d from node %d to node %d", kv.ErrInvalid, id, from, to))
		return
	case !s.begin(id):
		done(kv.Descriptor{}, fmt.Errorf("%w: range %d", ErrBusy, id))
		return
	}
	if deadline.IsZero() {
		deadline = s.env.Now().Add(s.cfg.MoveCatchUp)
	}
	m := &move{id: id, from: from, to: to, why: why, forMerge: forMerge, deadline: deadline}
	m.done = func(d kv.Descriptor, err error) {
		s.end(id)
		if err == nil {
			s.log.Info("replica move done", "group", id, "from", from, "to", to, "why", why, "desc", d.String())
		}
		done(d, err)
	}
	s.moveStep(m)
}

// moveStep takes the move's next step from what the range is now. Loop
// only.
func (s *Store) moveStep(m *move) {
	fail := func(err error) { m.done(kv.Descriptor{}, err) }
	r, ok := s.Get(m.id)
	if !ok {
		fail(fmt.Errorf("%w: range %d", ErrNotLocal, m.id))
		return
	}
	d, ok := r.Descriptor()
	if !ok {
		fail(fmt.Errorf("%w: range %d is not initialized here", ErrNotLocal, m.id))
		return
	}
	if !s.leads(m.id) {
		fail(fmt.Errorf("%w: range %d", ErrNotLeader, m.id))
		return
	}
	if _, _, frozen := r.SM.Frozen(); frozen || (!m.forMerge && s.mergeWaits(d)) {
		fail(fmt.Errorf("%w: range %d: a merge is under way", ErrBusy, m.id))
		return
	}
	if !m.looked {
		m.looked = true
		if m.from != 0 && m.to != 0 && !d.HasReplica(m.from) && !d.HasReplica(m.to) {
			// Nothing to move: decided on an older descriptor (a second
			// rebalancer reading a meta index not yet updated), it would
			// only add a replica, one too many.
			fail(fmt.Errorf("%w: range %d: node %d holds no replica of it (%s): nothing to move to node %d",
				multiraft.ErrInvalidRequest, m.id, m.from, d.String(), m.to))
			return
		}
	}
	plan := kv.EncodeChangePlan(d.Generation)
	if m.abort != nil {
		if m.to != 0 && slices.Contains(d.Learners, m.to) && !m.rolledBack {
			m.rolledBack = true
			s.change(m, multiraft.RemoveMember, m.to, plan)
			return
		}
		fail(m.abort)
		return
	}
	switch {
	case m.to != 0 && !d.HasReplica(m.to):
		// The node must not hold a replica of the range left from before
		// its removal (one that never learned of it): raft knows replicas
		// by node, and would take that replica's acknowledgements for the
		// learner's; once it is removed (CheckRemoved), a replica started
		// empty would get a commit index past its log, and raft panics
		// (the simulation, seed 8128). So the old one goes first.
		s.env.PeerHolds(m.to, m.id, callback2(s, func(holds, answered bool) {
			switch {
			case answered && !holds:
				s.change(m, multiraft.AddLearner, m.to, plan)
			case s.env.Now().After(m.deadline):
				fail(fmt.Errorf("%w: range %d: node %d still holds a replica of it from before its removal, or does not answer",
					ErrBusy, m.id, m.to))
			default:
				if holds {
					s.env.Removed(m.to, m.id)
				}
				s.env.After(s.cfg.CampaignRetry, func() { s.enqueue(func() { s.moveStep(m) }) })
			}
		}))
	case m.to != 0 && slices.Contains(d.Learners, m.to):
		if m.caughtUpAt == 0 {
			m.caughtUpAt = max(r.SM.AppliedIndex(), 1)
		}
		s.env.ReplicaApplied(m.to, m.id, callback2(s, func(applied uint64, ok bool) {
			switch {
			case ok && applied >= m.caughtUpAt:
				m.promoted = true
				s.change(m, multiraft.PromoteLearner, m.to, plan)
			case s.env.Now().After(m.deadline):
				// Roll back: a learner left behind would keep the range
				// from splitting and merging.
				m.abort = fmt.Errorf("%w: range %d: node %d's learner did not catch up within %v (applied %d, want %d); removed again",
					multiraft.ErrTimeout, m.id, m.to, s.cfg.MoveCatchUp, applied, m.caughtUpAt)
				s.moveStep(m)
			default:
				s.env.After(s.cfg.CampaignRetry, func() { s.enqueue(func() { s.moveStep(m) }) })
			}
		}))
	case m.from != 0 && d.HasReplica(m.from):
		if m.to != 0 && !m.promoted && !slices.Contains(d.Learners, m.from) && s.cfg.Replicas > 0 &&
			votersOf(d)-1 < s.cfg.Replicas {
			// The new replica voted before this move began, and the old
			// one's removal would leave the range under its replication
			// factor: the move this one finishes was finished already
			// (by its first asker, while a second decider, acting on an
			// older descriptor, asked to finish it with another removal).
			fail(fmt.Errorf("%w: range %d: node %d votes already, and removing node %d would leave %d voters, under the replication factor %d",
				multiraft.ErrInvalidRequest, m.id, m.to, m.from, votersOf(d)-1, s.cfg.Replicas))
			return
		}
		if m.from == s.cfg.NodeID {
			s.handOff(m, d)
			return
		}
		s.change(m, multiraft.RemoveMember, m.from, plan)
	default:
		// Done. The meta index gets the final descriptor before the
		// caller hears of it, so that a listing after the move shows it
		// (should the update fail, the range's leader repairs the index).
		final := d.Clone()
		if s.cfg.LoseMetaUpdates {
			m.done(final, nil)
			return
		}
		s.propose(kv.MetaRangeID, kv.Command{Op: kv.OpMetaUpdate, Value: kv.EncodeDescriptors([]kv.Descriptor{final})}, func(_ kv.Result, err error) {
			if err != nil {
				s.log.Info("replica move: meta index update failed; the range's leader will repair it", "group", m.id, "err", err)
			}
			m.done(final, nil)
		})
	}
}

// votersOf counts d's voters.
func votersOf(d *kv.Descriptor) int { return len(d.Replicas) - len(d.Learners) }

// change makes one membership change of the move, records the new
// descriptor in the meta index, tells a removed node, and takes the next
// step. Loop only.
func (s *Store) change(m *move, kind multiraft.ChangeKind, node uint64, plan []byte) {
	f := s.cfg.Host.ChangeMembershipAsync(m.id, multiraft.Change{Kind: kind, Node: node}, plan)
	s.afterDone(f.Done(), func() {
		_, err := f.Result()
		switch {
		case errors.Is(err, multiraft.ErrChangeRefused):
			// The range changed under the plan (another move, a split):
			// look again.
			s.log.Info("replica move: change refused; looking again", "group", m.id, "kind", kind, "node", node)
		case err != nil:
			m.done(kv.Descriptor{}, err)
			return
		default:
			s.log.Info("replica move: change applied", "group", m.id, "kind", kind, "node", node, "why", m.why)
			if r, ok := s.Get(m.id); ok {
				if d, ok := r.Descriptor(); ok {
					s.updateMeta([]kv.Descriptor{d.Clone()})
				}
			}
			if kind == multiraft.RemoveMember {
				s.env.Removed(node, m.id)
			}
		}
		s.moveStep(m)
	})
}

// handOff hands the range's leadership from this node, which is to leave
// it, to another voter: the move's new node if it votes, else another.
// Loop only.
func (s *Store) handOff(m *move, d *kv.Descriptor) {
	votes := func(n uint64) bool { return n != 0 && d.HasReplica(n) && !slices.Contains(d.Learners, n) }
	to := uint64(0)
	if votes(m.to) {
		to = m.to
	} else {
		// Another voter, one the Host hears from if there is one: a
		// transfer to a node that is down fails, and would be tried again.
		for _, v := range d.Replicas {
			if v != s.cfg.NodeID && votes(v) && (to == 0 || !s.cfg.Host.PeerDown(v)) {
				to = v
			}
			if to != 0 && !s.cfg.Host.PeerDown(to) {
				break
			}
		}
	}
	if to == 0 {
		m.done(kv.Descriptor{}, fmt.Errorf("%w: range %d: no other voter to hand the leadership to", multiraft.ErrInvalidRequest, m.id))
		return
	}
	afterRecv(s, s.cfg.Host.TransferLeadershipAsync(m.id, to), func(err error) {
		if err != nil {
			m.done(kv.Descriptor{}, err)
			return
		}
		m.done(kv.Descriptor{}, fmt.Errorf("%w: range %d: to node %d", ErrHandedOff, m.id, to))
	})
}

// mergeWaits reports whether a range frozen for a merge waits here to be
// taken in by range d, its left neighbour: the merge takes it in only
// while both have the same replicas, so d's must not change until it did.
// Whichever range ends where the frozen one starts finishes its merge
// (finishMerges), not only the one it was frozen for: that one may have
// split since, and d be its right half (seed 9301: an admin move of d and
// the merge finisher's alignment undid each other for ever). Loop only.
func (s *Store) mergeWaits(d *kv.Descriptor) bool {
	if len(d.End) == 0 {
		return false
	}
	r := s.startingAt(d.End)
	if r == nil {
		return false
	}
	_, _, frozen := r.SM.Frozen()
	return frozen
}

// alignForMerge moves one replica of range l, which this node leads, to
// make its replicas those of its right neighbour r, frozen for a merge
// into it: the merge needs both on the same nodes, and r's cannot change
// any more (it applies nothing). A move of l that raced the merge, or a
// membership change made without the Store, leaves them apart; this puts
// them together again, one move per call (Tick calls again).
//
// But l cannot follow r onto a node that takes no replica for good or
// for long (unplaced: dead, leaving, drained), and the merge's wait cannot
// end while a node holding both is dead or leaving (Config.Dead). Then,
// with the builds' leave (Config.SubsetMerge), l leaves its replicas that
// are not r's, or the one on that node, one a call, while those left are
// a majority of r's: the merge then takes place on them
// (subsetMergeable), and r's replicas elsewhere are left out. A node merely down now (PeerDown, not
// yet dead) is waited for: a pause of a second must not cost a range a
// replica until the rebalancer's repair (minutes). Loop only.
func (s *Store) alignForMerge(ld, rd *kv.Descriptor) {
	var extra, missing, gone uint64
	wait := false // a node of r's that l lacks is down now: back soon, or dead
	for _, n := range ld.Replicas {
		if !rd.HasReplica(n) {
			extra = n
			break
		}
	}
	for _, n := range rd.Replicas {
		// A learner of l (a move cut short) votes in r: it must be
		// promoted (a frozen range has no learners: kv refuses the freeze).
		learner := slices.Contains(ld.Learners, n)
		switch {
		case ld.HasReplica(n) && !learner:
			continue
		case !learner && s.unplaced(n):
			gone = n
			continue
		case !learner && s.down(n):
			wait = true
			continue
		}
		missing = n
		break
	}
	if missing == 0 && wait {
		return
	}
	if extra == 0 && missing == 0 && len(ld.Learners) == 0 && s.cfg.Dead != nil {
		// l's replicas are among r's: one on a dead or leaving node
		// holds the wait.
		for _, n := range ld.Replicas {
			if n != s.cfg.NodeID && s.cfg.Dead(n) {
				extra, gone = n, n
				break
			}
		}
	}
	if missing == 0 && gone != 0 {
		common := slices.DeleteFunc(slices.Clone(ld.Replicas), func(n uint64) bool { return n == extra || !rd.HasReplica(n) })
		if extra == 0 || !s.subsetAllowed(common, rd) {
			return // it waits for that node
		}
	}
	if extra == 0 && missing == 0 {
		return
	}
	id := ld.ID
	s.log.Info("moving a replica so that a frozen range can merge", "group", id, "frozen_group", rd.ID, "from", extra, "to", missing, "left_out", gone)
	s.startMove(id, extra, missing, "align for a merge", true, time.Time{}, func(_ kv.Descriptor, err error) {
		if err != nil {
			s.log.Debug("aligning for a merge did not finish yet", "group", id, "err", err)
		}
	})
}

// unplaced reports whether node n takes no replica for good or for long:
// dead (Config.Dead), or not placeable while up (leaving, drained). Not a
// node merely down now. Loop only.
func (s *Store) unplaced(n uint64) bool {
	if n == s.cfg.NodeID {
		return false
	}
	if s.cfg.Dead != nil && s.cfg.Dead(n) {
		return true
	}
	return s.cfg.Placeable != nil && !s.cfg.Placeable(n) && !s.cfg.Host.PeerDown(n)
}

// finishLearners finishes the adds of learners left by moves cut short
// (their node died, or lost the lead), in the ranges of win this node
// leads: a range with a learner neither splits nor merges. A learner this
// node has seen for Config.MoveCatchUp is promoted if it caught up and
// its range has fewer voters than Config.Replicas, and removed again
// otherwise. (Younger ones may belong to a move under way on another
// node.) Loop only.
func (s *Store) finishLearners(win []*Replica) {
	now := s.env.Now()
	for _, r := range win {
		d, ok := r.Descriptor()
		if !ok {
			continue
		}
		if len(d.Learners) == 0 || !s.leads(r.ID) {
			// Counted again from when this node leads it with one.
			if st := s.queue[r.ID]; st != nil {
				st.learnerSince = time.Time{}
			}
			continue
		}
		st := s.queueState(r.ID)
		if st.learnerSince.IsZero() {
			st.learnerSince = now
		}
		s.mu.RLock()
		busy := s.mu.busy[r.ID]
		s.mu.RUnlock()
		if busy || now.Sub(st.learnerSince) < s.cfg.MoveCatchUp {
			continue
		}
		st.learnerSince = now
		id, l := r.ID, d.Learners[0]
		from, to, why := uint64(0), l, "promote a learner left by a move"
		if voters := len(d.Replicas) - len(d.Learners); s.cfg.Replicas > 0 && voters >= s.cfg.Replicas {
			// The range has its voters (the move's other half, the
			// removal, happened or another move filled it): the learner
			// goes.
			from, to, why = l, 0, "remove a learner left by a move"
		}
		// A few looks at its progress, not a whole MoveCatchUp again.
		deadline := now.Add(5 * s.cfg.CampaignRetry)
		s.metrics.leftovers.Add(1)
		s.startMove(id, from, to, why, false, deadline, func(_ kv.Descriptor, err error) {
			if err != nil {
				s.log.Info("finishing a learner left by a move did not succeed", "group", id, "learner", l, "err", err)
			}
		})
	}
}

// checkFrozenMergedAway looks, for each frozen replica of win, whether its
// range merged away without it (checkMergedAway): a merge on a subset of
// the frozen range's replicas (subsetMergeable) leaves out the replica on
// a node gone (dead, leaving, drained), and that replica may well know a
// leader still, quiesced under a node that then merged it away and sends
// it nothing more: it would never ask (checkLeaderless), and its node
// would hold it, and the span, for good (the simulation, seed 4761: a
// decommission that never ended). Frozen replicas are few and short-lived: one meta lookup
// each per repair round. Loop only.
func (s *Store) checkFrozenMergedAway(win []*Replica) {
	for _, r := range win {
		if _, _, frozen := r.SM.Frozen(); !frozen {
			continue
		}
		if d, ok := r.Descriptor(); ok && len(d.Start) > 0 {
			s.checkMergedAway(r, d.Generation, slices.Clone(d.Start))
		}
	}
}

// checkLeaderless asks, for each replica of win that knows no leader, one
// of its range's other replicas whether it was removed (CheckRemoved): a
// replica removed while its node was away (a crash, a partition) hears
// of it from no one, and campaigns in vain. A different replica is asked
// each round. Loop only.
func (s *Store) checkLeaderless(win []*Replica) {
	round := s.ticks / uint64(max(s.cfg.MetaRepairTicks, 1))
	for _, r := range win {
		if l, _, err := s.cfg.Host.Leader(r.ID); err != nil || l != 0 {
			continue
		}
		d, ok := r.Descriptor()
		if !ok {
			continue
		}
		var others []uint64
		for _, n := range d.Replicas {
			if n != s.cfg.NodeID {
				others = append(others, n)
			}
		}
		if len(others) > 0 {
			s.CheckRemoved(r.ID, others[round%uint64(len(others))])
		}
	}
}

// CheckSuperseded is CheckRemoved, with peer, for each local replica
// whose span starts inside [start, end) (end nil: no end), which peer
// reports held by its range id at generation gen, when that replica is of
// another range and an earlier generation: such a replica's range may
// have been merged away, or this node removed from it, while this node
// was away (the mover's news lost), and, quiesced under a leader that
// sends it nothing more, it would never ask (checkLeaderless). The server
// calls it for its peers' discovery answers (the simulation, seed 4761: a
// decommission that never ended). A binary search of the index: no walk
// of every replica. Never blocks.
func (s *Store) CheckSuperseded(peer, id, gen uint64, start, end []byte) {
	idx := *s.index.Load()
	i, _ := slices.BinarySearchFunc(idx, start, func(r *Replica, k []byte) int {
		d, _ := r.SM.Descriptor()
		return bytes.Compare(d.Start, k)
	})
	for ; i < len(idx); i++ {
		d, ok := idx[i].SM.Descriptor()
		if !ok {
			continue
		}
		if len(end) > 0 && bytes.Compare(d.Start, end) >= 0 {
			break
		}
		if idx[i].ID != id && d.Generation < gen {
			s.CheckRemoved(idx[i].ID, peer)
		}
	}
}

// CheckRemoved asks node whether range id still has a replica here: if
// node's replica has a higher generation whose replicas leave this node
// out, this node's replica was removed and never applied its removal
// (the leader stops sending to a removed node), and it goes with its
// span's data (see the top). A node that removed this one's replica calls
// it (Env.Removed), and the server when a peer reports such a range.
// Never blocks.
func (s *Store) CheckRemoved(id, node uint64) {
	if s.env == nil {
		return
	}
	s.enqueue(func() {
		r, ok := s.Get(id)
		if !ok {
			return
		}
		d, ok := r.Descriptor()
		if !ok {
			return
		}
		if !d.HasReplica(s.cfg.NodeID) {
			// It applied its own removal: reconcile removes it, or has.
			s.reconcile(id)
			return
		}
		gen, start := d.Generation, slices.Clone(d.Start)
		s.env.PeerDescriptor(node, id, callback2(s, func(pd kv.Descriptor, ok bool) {
			if !ok {
				// No replica there (or no answer): the range may be gone
				// for good, merged away.
				s.checkMergedAway(r, gen, start)
				return
			}
			if pd.Generation <= gen || pd.HasReplica(s.cfg.NodeID) {
				return
			}
			if cur, ok := s.Get(id); !ok || cur != r {
				return
			}
			s.destroyMoved(r, fmt.Sprintf("removed from the range (%v on node %d)", pd.String(), node), &pd)
		}))
	})
}

// checkMergedAway removes replica r, whose descriptor had generation gen
// and span start start, if the meta index shows its range merged away: a
// record of another range holds start, at a higher generation. Why that
// suffices: a range keeps its start for as long as it lives (a split keeps
// it in the left half, which keeps the ID; a merge keeps the left range's),
// and the generation of whichever range holds a key rises with every
// change to it (a split gives both halves the old one plus one, a merge the
// higher of the two plus one, a membership change plus one). So a record
// of another range holding start at a higher generation comes after r's
// range gave start away, which it does only by merging into its left
// neighbour. The stale copy of the range that held start before r's range
// was split off it has a lower generation.
//
// Such a replica stays for good otherwise: its node was removed from the
// range (a move, a decommission) or from the merged range before it
// applied the merge, and its peers deleted their replicas of the range
// with the merge, so none answers CheckRemoved (the simulation found
// decommissions that never ended). It goes as a moved replica does, with
// its span's data unless a range here holds part of it; but a frozen one
// stays while a replica here may still apply its merge (mayMergeHere),
// which reads it: destroyed, the merge would stop the node, again at each
// restart. Loop only.
func (s *Store) checkMergedAway(r *Replica, gen uint64, start []byte) {
	s.env.Meta(start, 1, callback2(s, func(ds []kv.Descriptor, err error) {
		if err != nil || len(ds) == 0 {
			return
		}
		m := ds[0]
		if m.ID == r.ID || !m.Contains(start) || m.Generation <= gen {
			return
		}
		if cur, ok := s.Get(r.ID); !ok || cur != r {
			return
		}
		rd, ok := r.Descriptor()
		if !ok || rd.Generation != gen {
			return // it applied something since: looked at again
		}
		if _, _, frozen := r.SM.Frozen(); frozen && s.mayMergeHere(rd, m.Generation) {
			// Not mergePending: the merged range is the left one, by ID,
			// and the record a later descriptor of it.
			return
		}
		s.destroyMoved(r, fmt.Sprintf("merged away: range %d holds its start (%v in the meta index)", m.ID, m.String()), &m)
	}))
}

// mayMergeHere reports whether a replica here may still apply the merge
// of the frozen range rd, whose start a descriptor of generation gen holds
// now: one that ends where rd starts, at a lower generation than gen. The
// merge's generation is above that of every descriptor of the range it
// merged into as of before it, and no higher than gen (gen's range holds
// rd's start after the merge: the merged range, or a range split off it
// since); so one at gen or above is past the merge (the merged range split
// again at rd's start, say), and goes on no longer holding the frozen
// replica. One below may be past it too, or removed from its range
// (CheckRemoved removes it first): the frozen replica waits. Not only
// the range rd was frozen for: one split off it since, ending where rd
// starts, merges it. Loop only.
func (s *Store) mayMergeHere(rd *kv.Descriptor, gen uint64) bool {
	if len(rd.Start) == 0 {
		return false
	}
	for _, h := range s.holding(nil, nil) {
		if h.id != rd.ID && len(h.desc.End) > 0 && bytes.Equal(h.desc.End, rd.Start) && h.desc.Generation < gen {
			return true
		}
	}
	return false
}
