package sim

import (
	"bytes"
	"errors"
	"fmt"
	"time"

	"github.com/flotilla/flotilla/internal/ranges"
	"github.com/flotilla/flotilla/kv"
	"github.com/flotilla/flotilla/multiraft"
)

// Ranges in the simulation: every node's ranges.Store runs on the
// simulation's goroutine, its loop drained after every step (node.drain)
// and ticked by the simulated clock; its Env reaches the other nodes
// through the simulated network's faults (a blocked link, a node down or
// paused), with the network's delays.

// simEpoch is the wall time the simulated clock starts at: the Unix epoch,
// as the clients' time stamps (Command.Time) count from it. (A clock far
// ahead of the others would expire every session of a range it proposes
// to: the range's clock is the latest stamp it applied.)
var simEpoch = time.UnixMilli(1)

// simEnv is one node incarnation's ranges.Env.
type simEnv struct{ n *node }

var _ ranges.Env = simEnv{}

func (e simEnv) Now() time.Time { return simEpoch.Add(e.n.s.now) }

// After runs fn on the simulated clock, then drains the node, as long as
// the same incarnation runs.
func (e simEnv) After(d time.Duration, fn func()) {
	n, inc := e.n, e.n.inc
	n.s.after(d, func() {
		if n.inc == inc && n.up {
			fn()
			n.drain()
		}
	})
}

// reach reports whether a message from a to b gets through now. A node
// that does not exist (the membership fault's ghost, which descriptors
// list while it is a learner) is never reached.
func (s *sim) reach(a, b uint64) bool {
	if b >= uint64(len(s.nodes)) || s.nodes[b] == nil {
		return false
	}
	return s.nodes[b].up && s.nodes[b].ranges != nil && !s.nodes[b].paused && (a == b || !s.net.isBlocked(a, b))
}

// Propose finds the node whose replica leads range id and proposes there,
// across the network (both ways), or fails after a while as a real
// forward would.
func (e simEnv) Propose(id uint64, cmd []byte, done func([]byte, error)) {
	n, s := e.n, e.n.s
	var leader *node
	for _, nid := range s.ids {
		m := s.nodes[nid]
		if m.up && !m.paused {
			if l, _, err := m.host.Leader(id); err == nil && l == nid {
				leader = m
			}
		}
	}
	if leader == nil || !s.reach(n.id, leader.id) {
		s.after(s.between(10*time.Millisecond, 100*time.Millisecond), func() {
			done(nil, fmt.Errorf("sim: range %d: %w", id, multiraft.ErrNoLeader))
		})
		return
	}
	linc := leader.inc
	cmd = bytes.Clone(cmd)
	s.after(s.net.delay(n.id, leader.id), func() {
		if !leader.up || leader.inc != linc || leader.paused {
			s.after(100*time.Millisecond, func() { done(nil, multiraft.ErrStopped) })
			return
		}
		leader.host.ProposeFunc(id, cmd, func(res []byte, err error) {
			// On the leader's worker (the simulation's goroutine): back
			// over the network, or lost.
			back := s.net.delay(leader.id, n.id)
			s.after(back, func() {
				if !s.reach(leader.id, n.id) {
					done(nil, multiraft.ErrAmbiguous)
					return
				}
				done(res, err)
			})
		})
		leader.drain()
	})
}

// PeerDescriptor asks node's replica of range id, across the network.
func (e simEnv) PeerDescriptor(node, id uint64, done func(kv.Descriptor, bool)) {
	n, s := e.n, e.n.s
	s.after(s.net.delay(n.id, node)+s.net.delay(node, n.id), func() {
		if !s.reach(n.id, node) || !s.reach(node, n.id) {
			done(kv.Descriptor{}, false)
			return
		}
		r, ok := s.nodes[node].ranges.Get(id)
		if !ok {
			done(kv.Descriptor{}, false)
			return
		}
		d, ok := r.Descriptor()
		if !ok {
			done(kv.Descriptor{}, false)
			return
		}
		done(d.Clone(), true)
	})
}

// PeerHolds asks node, across the network, whether it holds an
// initialized replica of range id.
func (e simEnv) PeerHolds(node, id uint64, done func(holds, answered bool)) {
	n, s := e.n, e.n.s
	s.after(s.net.delay(n.id, node)+s.net.delay(node, n.id), func() {
		if !s.reach(n.id, node) || !s.reach(node, n.id) {
			done(false, false)
			return
		}
		r, ok := s.nodes[node].ranges.Get(id)
		if !ok {
			done(false, true)
			return
		}
		_, ok = r.Descriptor()
		done(ok, true)
	})
}

// Removed tells node, across the network, that its replica of range id
// was removed; lost if the network drops it.
func (e simEnv) Removed(node, id uint64) {
	n, s := e.n, e.n.s
	s.after(s.net.delay(n.id, node), func() {
		if !s.reach(n.id, node) {
			return
		}
		m := s.nodes[node]
		m.ranges.CheckRemoved(id, n.id)
		m.drain()
	})
}

// ReplicaApplied asks node's replica of range id its applied index,
// across the network.
func (e simEnv) ReplicaApplied(node, id uint64, done func(uint64, bool)) {
	n, s := e.n, e.n.s
	s.after(s.net.delay(n.id, node)+s.net.delay(node, n.id), func() {
		if !s.reach(n.id, node) || !s.reach(node, n.id) {
			done(0, false)
			return
		}
		r, ok := s.nodes[node].ranges.Get(id)
		if !ok {
			done(0, false)
			return
		}
		done(r.SM.AppliedIndex(), true)
	})
}

// Meta reads the node's own replica of the meta range, as the server does
// when it has an initialized one; else it forwards the read, as the server
// does, here to the replica of the first running node that leads the meta
// range, across the network (it fails if there is none, or the network
// cuts the way there or back). The server picks the node by its own view
// of the leader, and tries the others; the simulation's choice is simpler.
// Without the forward, a node removed from the meta range never learned
// from it (a replica whose range merged away after its node left the
// merged range waited for good: Store.checkMergedAway).
func (e simEnv) Meta(key []byte, limit int, done func([]kv.Descriptor, error)) {
	n, s := e.n, e.n.s
	if _, ok := n.ranges.Get(kv.MetaRangeID); ok {
		ds, err := n.meta(key, limit)
		if !errors.Is(err, kv.ErrUninitialized) {
			done(ds, err)
			return
		}
	}
	var to uint64
	for _, id := range s.upNodes() {
		if o := s.nodes[id]; !o.paused {
			if l, _, err := o.host.Leader(kv.MetaRangeID); err == nil && l == id {
				to = id
				break
			}
		}
	}
	if to == 0 {
		done(nil, fmt.Errorf("sim: node %d has no meta range, and no node leads it", n.id))
		return
	}
	s.after(s.net.delay(n.id, to)+s.net.delay(to, n.id), func() {
		if o := s.nodes[to]; !s.reach(n.id, to) || !s.reach(to, n.id) || !o.up || o.ranges == nil {
			done(nil, fmt.Errorf("sim: node %d cannot reach node %d for the meta index", n.id, to))
			return
		}
		ds, err := s.nodes[to].meta(key, limit)
		done(ds, err)
	})
}

// meta reads up to limit records of the node's replica of the meta index.
func (n *node) meta(key []byte, limit int) ([]kv.Descriptor, error) {
	r, ok := n.ranges.Get(kv.MetaRangeID)
	if !ok {
		return nil, fmt.Errorf("sim: node %d has no meta range", n.id)
	}
	out, err := r.SM.Query(kv.EncodeMetaQuery(key, limit))
	if err != nil {
		return nil, err
	}
	return kv.DecodeDescriptors(out)
}

// storeFailPoints are the Store's steps the nemesis may crash a node
// between (ranges.Config.FailPoint).
var storeFailPoints = []string{ranges.FailSplitAllocated, ranges.FailSplitApplied, ranges.FailMergeFrozen, ranges.FailMergeApplied}

// rangeTickLoop ticks the node's Store every rangeTick, and reads its
// peers' reports every peerReportTicks of them.
func (n *node) rangeTickLoop() {
	if n.up && !n.paused && n.ranges != nil {
		n.ranges.Tick()
		n.drain()
		if n.rangeTicks++; n.rangeTicks%peerReportTicks == 0 {
			n.peerReports()
		}
	}
	n.s.after(rangeTick, n.rangeTickLoop)
}

// peerReportTicks: how many range ticks apart a node reads its peers'
// reports (peerReports): 500ms, as often as a server's discovery.
const peerReportTicks = 5

// peerReports is the server's check of its peers' discovery answers
// (server.notHeld): a peer whose replica of a range this node holds
// reports it at a higher generation that leaves this node out, and the
// Store asks that peer whether its replica here was removed
// (Store.CheckRemoved). Without it, a removed replica that knew a leader
// and was quiesced never learned of its removal: the leader sends nothing
// to a node it removed, and only a leaderless replica asks by itself (a
// decommission that never ended: seed 91 in a schedule of the change that
// brought the merge queue into the simulation). A peer the network cuts
// either way reports nothing. Every 500ms, where a server looks only at
// the answers that changed. Also a replica here of a range merged away
// (or that removed this node) while this node was away, whose start a
// peer's range of a later generation holds (Store.CheckSuperseded).
func (n *node) peerReports() {
	s := n.s
	for _, id := range s.ids {
		o := s.nodes[id]
		if id == n.id || !o.up || o.ranges == nil || !s.reach(n.id, id) || !s.reach(id, n.id) {
			continue
		}
		for _, pr := range o.ranges.Replicas() {
			pd, ok := pr.Descriptor()
			if !ok || len(pd.Replicas) == 0 {
				continue
			}
			n.ranges.CheckSuperseded(id, pd.ID, pd.Generation, pd.Start, pd.End)
			if pd.HasReplica(n.id) {
				continue
			}
			if r, ok := n.ranges.Get(pr.ID); ok {
				if d, ok := r.Descriptor(); ok && pd.Generation > d.Generation {
					n.ranges.CheckRemoved(pr.ID, id)
				}
			}
		}
	}
	n.drain()
}

// rangeTick is the simulated Store's tick.
const rangeTick = 100 * time.Millisecond

// splitLoop splits or merges a range now and then through the faulty
// phase, besides the nemesis's other faults.
func (s *sim) splitLoop() {
	if s.healed || s.now >= s.cfg.Duration {
		return
	}
	if s.cfg.Faults&FaultMerge != 0 && (s.cfg.Faults&FaultSplit == 0 || s.rng.IntN(2) == 0) {
		s.mergeNemesis()
	} else if s.cfg.Faults&FaultSplit != 0 {
		s.splitNemesis()
	}
	s.after(s.between(50*time.Millisecond, 400*time.Millisecond), s.splitLoop)
}

// mergeNemesis merges a random range with the next one, from the node that
// leads it.
func (s *sim) mergeNemesis() {
	key := []byte(s.keyName(s.rng.IntN(s.cfg.Keys)))
	if id, n, r := s.leaderOfKey(key); r != nil {
		s.res.Faults++
		s.record("merge", id, r.ID)
		n.ranges.Merge(r.ID, func(d kv.Descriptor, err error) {
			if err == nil {
				s.res.Merges++
				s.record("merge-done", d.ID)
			}
		})
		n.drain()
	}
}

// splitNemesis splits a random range, from the node that leads it, at a
// random key: a key of the workload, or a point between them. In a run
// with the merge queue, half the splits leave a boundary it may undo.
func (s *sim) splitNemesis() {
	key := []byte(s.keyName(s.rng.IntN(s.cfg.Keys)))
	if s.rng.IntN(2) == 0 {
		key = []byte(fmt.Sprintf("%02x", s.rng.IntN(256)))
	}
	if id, n, r := s.leaderOfKey(key); r != nil {
		s.res.Faults++
		s.record("split", id, r.ID, cmdHash(key))
		split := n.ranges.Split
		if s.splitLoad > 0 && s.rng.IntN(2) == 0 {
			// Where the merge queue runs: a boundary it may undo.
			split = n.ranges.SplitUnsticky
		}
		split(r.ID, key, func(left, right kv.Descriptor, err error) {
			if err == nil {
				s.res.Splits++
				s.record("split-done", left.ID, right.ID)
			}
		})
		n.drain()
	}
}

// leaderOfKey returns the first running, unpaused node that leads the
// range of key as its replica there sees it, with that replica; a nil
// replica if none does.
func (s *sim) leaderOfKey(key []byte) (uint64, *node, *ranges.Replica) {
	for _, id := range s.upNodes() {
		n := s.nodes[id]
		if n.paused {
			continue
		}
		r := n.ranges.Lookup(key)
		if r == nil {
			continue
		}
		if l, _, err := n.host.Leader(r.ID); err == nil && l == id {
			return id, n, r
		}
	}
	return 0, nil, nil
}

// rangeIDs returns every range any running node has a replica of.
func (s *sim) rangeIDs() []uint64 {
	seen := map[uint64]bool{}
	for _, id := range s.ids {
		n := s.nodes[id]
		if !n.up || n.ranges == nil {
			continue
		}
		for _, r := range n.ranges.Replicas() {
			seen[r.ID] = true
		}
	}
	return sortedKeys(seen)
}

// checkRanges checks, once the run converged, that every node's ranges
// tile the keyspace and agree with each other, and that the meta index
// records exactly them.
func (s *sim) checkRanges() {
	var ref []kv.Descriptor
	for i, id := range s.ids {
		n := s.nodes[id]
		ds, err := n.tiling()
		if err != nil {
			s.violation("node %d: %v", id, err)
			continue
		}
		if i == 0 {
			ref = ds
			continue
		}
		if !sameDescriptors(ds, ref) {
			s.violation("node %d's ranges %v differ from node %d's %v", id, ds, s.ids[0], ref)
		}
	}
	for _, id := range s.ids {
		meta, err := s.nodes[id].meta(nil, kv.MaxMetaUpdate)
		if err != nil {
			s.violation("node %d: read meta: %v", id, err)
			continue
		}
		if !sameDescriptors(meta, ref) {
			s.violation("node %d: the meta index %v does not record the ranges %v", id, meta, ref)
		}
	}
}

// tiling returns the node's initialized replicas in key order, or an error
// if they do not tile the keyspace.
func (n *node) tiling() ([]kv.Descriptor, error) {
	var out []kv.Descriptor
	var at []byte
	for _, r := range n.ranges.Overlapping(nil, nil) {
		d, _ := r.Descriptor()
		if !bytes.Equal(d.Start, at) || (len(out) > 0 && len(out[len(out)-1].End) == 0) {
			return nil, fmt.Errorf("ranges do not tile the keyspace at %v (after %v)", d, out)
		}
		out = append(out, d.Clone())
		at = d.End
	}
	if len(out) == 0 || len(at) != 0 {
		return nil, fmt.Errorf("ranges do not reach the end of the keyspace: %v", out)
	}
	return out, nil
}

func sameDescriptors(a, b []kv.Descriptor) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !a[i].Equal(&b[i]) {
			return false
		}
	}
	return true
}

// metaConverged reports whether every node's meta index records every
// range as its replicas have it.
func (s *sim) metaConverged() bool {
	var ref []kv.Descriptor
	for i, id := range s.ids {
		ds, err := s.nodes[id].tiling()
		if err != nil {
			return false
		}
		if i == 0 {
			ref = ds
		} else if !sameDescriptors(ds, ref) {
			return false
		}
	}
	for _, id := range s.ids {
		meta, err := s.nodes[id].meta(nil, kv.MaxMetaUpdate)
		if err != nil || !sameDescriptors(meta, ref) {
			return false
		}
	}
	return true
}

// allUp reports whether every node runs.
func (s *sim) allUp() bool {
	for _, id := range s.ids {
		if !s.nodes[id].up {
			return false
		}
	}
	return true
}

// describeMeta shows every node's replicas and meta index.
func (s *sim) describeMeta() string {
	var b bytes.Buffer
	for _, id := range s.ids {
		n := s.nodes[id]
		fmt.Fprintf(&b, "node %d:", id)
		for _, r := range n.ranges.Replicas() {
			st, _ := n.host.GroupStatus(r.ID)
			if d, ok := r.Descriptor(); ok {
				fmt.Fprintf(&b, " %v", d)
			} else {
				fmt.Fprintf(&b, " r%d(empty)", r.ID)
			}
			fmt.Fprintf(&b, "[lead=%d term=%d applied=%d", st.Leader, st.Term, st.Applied)
			if into, at, frozen := r.SM.Frozen(); frozen {
				fmt.Fprintf(&b, " frozen into r%d at %d", into, at)
			}
			b.WriteString("]")
		}
		meta, err := n.meta(nil, kv.MaxMetaUpdate)
		fmt.Fprintf(&b, " meta %v %v; ", meta, err)
	}
	return b.String()
}
