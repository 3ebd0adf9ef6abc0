package sim

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/flotilla/flotilla/kv"
)

// Watches in the simulation.
//
// Each run has watchers that follow the whole keyspace from revision 1
// with kv.Watch, reading one node's replicas, as the server's Watch does.
// A watcher moves, resuming from its last token, when its node crashes or
// freezes, and at every leader change to the new leader's node (as a
// client that keeps its watch with the leaders would): every move is a
// resume, across splits, merges, snapshots and restarts. At the end
// (check), each watcher's events, key by key, must be exactly those of a
// fresh watch from revision 1 on a converged node (nothing lost, repeated
// or reordered), and every acknowledged write must be among them.

// watchers is how many watchers a run has; pollEvery how often each reads.
const (
	watchers  = 2
	pollEvery = 5 * time.Millisecond
)

// watchRec is one event as a watcher got it.
type watchRec struct {
	rev   uint64
	value string
	del   bool
}

func (r watchRec) String() string {
	if r.del {
		return fmt.Sprintf("del@%d", r.rev)
	}
	return fmt.Sprintf("%q@%d", r.value, r.rev)
}

// watcher is one simulated watcher. Owned by the run's goroutine.
type watcher struct {
	s    *sim
	id   int
	rng  *rand.Rand
	node uint64
	inc  uint64 // the node's incarnation its watch reads
	w    *kv.Watch
	// token resumes the watch after the events it got (nil: from 1).
	token []byte
	// epoch is the leader change it last moved for.
	epoch  int
	events map[string][]watchRec
	moves  int
	failed bool
}

// ackedPut is an acknowledged write of a value, for the watch check.
type ackedPut struct {
	key, value string
	rev        uint64
}

// startWatchers starts the run's watchers. Their random choices come from
// a stream of their own: the rest of the run is as it was without them.
func (s *sim) startWatchers() {
	rng := rand.New(rand.NewPCG(s.cfg.Seed, 0x3a7c4))
	for i := 0; i < watchers; i++ {
		w := &watcher{s: s, id: i, rng: rng, events: map[string][]watchRec{}}
		s.watchers = append(s.watchers, w)
		s.after(pollEvery, w.poll)
	}
}

// usable reports whether node id can serve a watch now.
func (s *sim) usable(id uint64) bool {
	n := s.nodes[id]
	return n != nil && n.up && !n.paused && n.ranges != nil
}

// poll moves the watcher if it must, then reads what is ready.
func (w *watcher) poll() {
	if w.failed {
		return
	}
	s := w.s
	defer s.after(pollEvery, w.poll)
	to := uint64(0)
	switch {
	case w.w == nil || !s.usable(w.node) || s.nodes[w.node].inc != w.inc:
		to = w.pick(0)
	case w.epoch != s.leaderEpoch:
		w.epoch = s.leaderEpoch
		if s.lastLeader != w.node && s.usable(s.lastLeader) {
			to = s.lastLeader
		}
	}
	if to != 0 && !w.moveTo(to) {
		return
	}
	if w.w == nil {
		return // no node to read from now
	}
	w.read()
}

// pick returns a usable node other than not, or 0.
func (w *watcher) pick(not uint64) uint64 {
	var ok []uint64
	for _, id := range w.s.ids {
		if id != not && w.s.usable(id) {
			ok = append(ok, id)
		}
	}
	if len(ok) == 0 {
		return 0
	}
	return ok[w.rng.IntN(len(ok))]
}

// moveTo starts the watch again on node id from the token; false if the
// watcher failed.
func (w *watcher) moveTo(id uint64) bool {
	if w.w != nil {
		w.w.Close()
		w.w = nil
	}
	if id == 0 {
		return true
	}
	opts := kv.WatchOptions{Token: w.token, Batch: 50, PlantedSkipOnResume: w.s.cfg.Bug == BugWatchDropAtLeaderChange}
	if w.token == nil {
		opts = kv.WatchOptions{Revision: 1, Batch: 50} // the whole keyspace
	}
	kw, err := kv.NewWatch(nodeReplicas{w.s.nodes[id]}, opts)
	if err != nil {
		w.s.violation("watcher %d: watch on node %d: %v", w.id, id, err)
		w.failed = true
		return false
	}
	w.w, w.node, w.inc = kw, id, w.s.nodes[id].inc
	w.moves++
	return true
}

// read takes what the watch has ready.
func (w *watcher) read() {
	for i := 0; i < 100_000; i++ {
		b, err := w.w.Poll()
		if errors.Is(err, kv.ErrNoReplica) {
			return // a range not here yet: read later
		}
		if err != nil {
			w.s.violation("watcher %d on node %d at %v: %v", w.id, w.node, w.s.now, err)
			w.failed = true
			return
		}
		if len(b.Token) > 0 {
			w.token = b.Token
		}
		if len(b.Events) == 0 {
			return
		}
		for _, e := range b.Events {
			k := string(e.KV.Key)
			w.events[k] = append(w.events[k], watchRec{rev: e.KV.Revision, value: string(e.KV.Value), del: e.Delete})
		}
	}
}

// nodeReplicas is a node's replicas as a watch reads them.
type nodeReplicas struct{ n *node }

func (r nodeReplicas) Covering(start, end []byte) []*kv.StateMachine {
	if r.n.ranges == nil {
		return nil
	}
	reps := r.n.ranges.Covering(start, end)
	out := make([]*kv.StateMachine, len(reps))
	for i, rep := range reps {
		out[i] = rep.SM
	}
	return out
}

// drain reads a watch to its end: everything applied on its node.
func drain(w *kv.Watch) (map[string][]watchRec, error) {
	out := map[string][]watchRec{}
	for i := 0; i < 1_000_000; i++ {
		b, err := w.Poll()
		if err != nil || len(b.Events) == 0 {
			return out, err
		}
		for _, e := range b.Events {
			k := string(e.KV.Key)
			out[k] = append(out[k], watchRec{rev: e.KV.Revision, value: string(e.KV.Value), del: e.Delete})
		}
	}
	return out, fmt.Errorf("a watch that does not end")
}

// checkWatches compares each watcher's events with a fresh watch's on a
// converged node, and looks for every acknowledged write among them.
func (s *sim) checkWatches() {
	ref := uint64(0)
	for _, id := range s.ids {
		if s.usable(id) {
			ref = id
			break
		}
	}
	if ref == 0 {
		return
	}
	rw, err := kv.NewWatch(nodeReplicas{s.nodes[ref]}, kv.WatchOptions{Revision: 1})
	if err != nil {
		s.violation("reference watch: %v", err)
		return
	}
	defer rw.Close()
	want, err := drain(rw)
	if err != nil {
		s.violation("reference watch on node %d: %v", ref, err)
		return
	}
	// Independently of the history: each key's last event is its value now
	// (a put of it at its mod revision), or a delete if it has none; and a
	// key with a value has events.
	final, frozen, err := finalState(s.nodes[ref])
	if err != nil {
		s.violation("reading node %d's state: %v", ref, err)
		return
	}
	inFrozen := func(k string) bool {
		return slices.ContainsFunc(frozen, func(d *kv.Descriptor) bool { return d.Contains([]byte(k)) })
	}
	for k, evs := range want {
		last := evs[len(evs)-1]
		cur, ok := final[k]
		if inFrozen(k) {
			continue // its range is frozen for a merge: no query reads it
		}
		if (ok && last != cur) || (!ok && !last.del) {
			s.violation("key %q: its last event on node %d is %v, but its state is %v (found %v)", k, ref, last, cur, ok)
			return
		}
	}
	for k, cur := range final {
		if _, ok := want[k]; !ok && !inFrozen(k) {
			s.violation("key %q holds %v on node %d, but has no event", k, cur, ref)
			return
		}
	}
	for _, a := range s.ackedPuts {
		if !slices.Contains(want[a.key], watchRec{rev: a.rev, value: a.value}) {
			s.violation("acknowledged write %q=%q at revision %d missing from the history of node %d: %v", a.key, a.value, a.rev, ref, want[a.key])
			return
		}
	}
	for _, w := range s.watchers {
		if w.failed {
			continue
		}
		if !s.usable(w.node) || s.nodes[w.node].inc != w.inc {
			if !w.moveTo(ref) {
				continue
			}
		}
		w.read()
		for k, evs := range want {
			if !slices.Equal(w.events[k], evs) {
				s.violation("watcher %d (%d moves, on node %d): key %q got events %v, want %v", w.id, w.moves, w.node, k, w.events[k], evs)
				return
			}
		}
		for k, evs := range w.events {
			if _, ok := want[k]; !ok {
				s.violation("watcher %d: events %v of key %q, which has none", w.id, evs, k)
				return
			}
		}
		for _, evs := range w.events {
			s.res.WatchEvents += len(evs)
		}
		s.res.WatchMoves += w.moves
		w.w.Close()
	}
}

// finalState reads every key a node's replicas hold, as a watch event of
// its last write would show it, and returns the spans of the replicas
// frozen for a merge, which no query reads.
func finalState(n *node) (map[string]watchRec, []*kv.Descriptor, error) {
	out := map[string]watchRec{}
	var frozen []*kv.Descriptor
	for _, rep := range n.ranges.Covering(nil, nil) {
		d, ok := rep.SM.Descriptor()
		if !ok {
			continue
		}
		if _, _, f := rep.SM.Frozen(); f {
			frozen = append(frozen, d)
			continue
		}
		start := d.Start
		for {
			q, err := kv.EncodeScan(start, d.End, kv.MaxScanLimit)
			if err != nil {
				return nil, nil, err
			}
			ans, err := rep.SM.Query(q)
			if errors.Is(err, kv.ErrKeyMismatch) {
				break // frozen or superseded: another replica serves the span
			}
			if err != nil {
				return nil, nil, err
			}
			kvs, resume, err := kv.DecodeScan(ans)
			if err != nil {
				return nil, nil, err
			}
			for _, e := range kvs {
				out[string(e.Key)] = watchRec{rev: e.Revision, value: string(e.Value)}
			}
			if len(resume) == 0 || (len(d.End) > 0 && string(resume) >= string(d.End)) {
				break
			}
			start = resume
		}
	}
	return out, frozen, nil
}
