package ranges

import (
	"bytes"
	"cmp"
	"fmt"
	"slices"
	"time"

	"github.com/flotilla/flotilla/kv"
)

// The split queue and the meta repair, run by Tick on the Store's loop.
//
// Each range this node leads is looked at every tick:
//
//   - Size. Once its replica has written MaxBytes/8 bytes since the last
//     measurement (kv.StateMachine.WrittenBytes, a cheap counter), its data
//     is measured (SpanBytes, a scan); over MaxBytes, it splits at the key
//     that halves its bytes.
//   - Load. Its load (requests per second, smoothed: load.go) above
//     SplitLoad for SplitLoadTicks ticks in a row splits it at the median
//     key of its recent requests (kv.StateMachine.LoadSplitKey), so both
//     halves take about half the load. A range that just split starts its
//     count again.
//
// And every MetaRepairTicks ticks each range it leads checks that the meta
// index records its descriptor, and records it if not: the repair of a lost
// meta update (split.go).

// Tick runs the periodic work: call it every Config.TickInterval on the
// Store's loop (Run does; the simulation calls it from its clock).
//
// Its cost follows what changed, not how many ranges there are: it looks
// at the replicas that applied or answered something since the last tick
// (kv.WithActivityHook), until their load decays, and the scans that must
// look at every range (a window of the split checks, merges, and every
// MetaRepairTicks the repairs) look at scanBudget replicas per tick, in
// turn. At 10,000 idle ranges a tick walking them all cost about 6 % of a
// core per node, and reading two counters of each still about 1 %
// (BENCHMARKS.md, "Quiescence").
func (s *Store) Tick() {
	now := s.env.Now()
	s.ticks++
	all := s.Replicas()
	walk := s.walkSet(all)
	s.sampleLoad(now, walk)
	for _, r := range walk {
		if s.splitIdle(r) {
			continue
		}
		if !s.leads(r.ID) {
			// Led elsewhere: what it wrote is that leader's to measure,
			// from here on (else a former leader's replica would stay
			// in the walk for good); and once it leads again, it is
			// measured again (its size, Replica.Size, would be that of
			// its former leadership, or, for a replica removed and
			// added again, none, for good).
			r.q.notLedAt = s.ticks
			r.q.written = r.SM.WrittenBytes()
			r.q.measured = false
			continue
		}
		d, ok := r.Descriptor()
		if !ok {
			continue
		}
		s.checkSplit(r, d)
	}
	if s.cfg.MinBytes > 0 {
		s.checkMerges(window(&s.mergeScan, all))
	}
	if s.cfg.MetaRepairTicks > 0 && s.ticks%uint64(s.cfg.MetaRepairTicks) == 0 {
		win := window(&s.repairScan, all)
		// Unfinished merges, lease revocations and lost meta updates come
		// with something applied (a freeze, a revocation, a split), so the
		// replicas walked are looked at too, not only the window: at
		// 10,000 ranges a pass of windows takes 20 repair rounds.
		recent := s.withWalk(win)
		s.finishMerges(s.withLeftNeighbours(recent))
		s.propagateRevocations(recent)
		if !s.cfg.LoseMetaUpdates {
			s.repairMeta(recent)
		}
		s.checkLeaderless(win)
		s.checkFrozenMergedAway(win)
		s.finishLearners(win)
	}
	s.settle()
}

// withWalk returns win and the replicas of the walk, without repeats, in
// ID order. Loop only.
func (s *Store) withWalk(win []*Replica) []*Replica {
	if len(s.walk) == 0 {
		return win
	}
	out := slices.Clone(win)
	for _, r := range s.walk {
		if _, found := slices.BinarySearchFunc(win, r.ID, func(a *Replica, id uint64) int { return cmp.Compare(a.ID, id) }); !found {
			out = append(out, r)
		}
	}
	slices.SortFunc(out, func(a, b *Replica) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// withLeftNeighbours returns rs and, for each frozen replica of rs, the
// replica here that ends where it starts (finishMerges looks at the pairs
// whose left range it leads), without repeats, in ID order. Loop only.
func (s *Store) withLeftNeighbours(rs []*Replica) []*Replica {
	var lefts []*Replica
	idx := *s.index.Load()
	for _, r := range rs {
		d, ok := r.Descriptor()
		if _, _, frozen := r.SM.Frozen(); !ok || !frozen || len(d.Start) == 0 {
			continue
		}
		i, _ := slices.BinarySearchFunc(idx, d.Start, func(o *Replica, k []byte) int {
			od, _ := o.Descriptor()
			return bytes.Compare(od.Start, k)
		})
		if i > 0 {
			if ld, ok := idx[i-1].Descriptor(); ok && bytes.Equal(ld.End, d.Start) {
				lefts = append(lefts, idx[i-1])
			}
		}
	}
	if len(lefts) == 0 {
		return rs
	}
	out := append(slices.Clone(rs), lefts...)
	slices.SortFunc(out, func(a, b *Replica) int { return cmp.Compare(a.ID, b.ID) })
	return slices.CompactFunc(out, func(a, b *Replica) bool { return a == b })
}

// walkSet adds to the walk the replicas active since the last tick (their
// activity hook rearmed before their counters are read) and this tick's
// window of all, and returns it in ID order (the simulation replays it).
// Loop only.
func (s *Store) walkSet(all []*Replica) []*Replica {
	s.active.Lock()
	ids := s.active.ids
	s.active.ids = nil
	s.active.Unlock()
	for _, id := range ids {
		if r, ok := s.Get(id); ok {
			r.SM.Quiet()
			s.addWalk(r)
		}
	}
	for _, r := range window(&s.splitScan, all) {
		s.addWalk(r)
	}
	slices.SortFunc(s.walk, func(a, b *Replica) int { return cmp.Compare(a.ID, b.ID) })
	return s.walk
}

func (s *Store) addWalk(r *Replica) {
	if !r.walked {
		r.walked = true
		s.walk = append(s.walk, r)
	}
}

// settle drops from the walk the replicas with nothing left to watch: no
// load (its decay done), no count of hot ticks, measured or led elsewhere.
// Any later activity puts them back (touched). Loop only.
func (s *Store) settle() {
	keep := s.walk[:0]
	for _, r := range s.walk {
		if cur, ok := s.Get(r.ID); !ok || cur != r {
			r.walked = false // removed
			continue
		}
		busy := r.load != nil && (r.load.rate != 0 || r.load.last != 0)
		if busy || (r.q != nil && r.q.hot != 0) || !s.splitIdle(r) {
			keep = append(keep, r)
			continue
		}
		r.walked = false
	}
	clear(s.walk[len(keep):])
	s.walk = keep
}

// scanBudget is how many replicas a periodic scan looks at per tick: all
// of them up to this many, then this many in turn (window), so that a scan
// of 10,000 ranges takes 20 ticks instead of one tick's worth of CPU.
const scanBudget = 512

// window returns the next scanBudget replicas of all (by ID, wrapping
// around) from *at, and advances *at past them; all of all if it has no
// more than scanBudget.
func window(at *int, all []*Replica) []*Replica {
	if len(all) <= scanBudget {
		*at = 0
		return all
	}
	if *at >= len(all) {
		*at = 0
	}
	end := min(*at+scanBudget, len(all))
	win := all[*at:end]
	*at = end
	return win
}

// scanState is what the periodic scans last found for a replica, to skip
// work that cannot have changed. Owned by the loop.
type scanState struct {
	// noRevocationsAt: the applied index at which the replica last had no
	// revocation records (0: not known). Records change only by applying,
	// which moves the index.
	noRevocationsAt uint64
	// metaGen: the generation of the descriptor the meta index was last
	// found to hold as it is (0: not known), at tick metaAt. A range's
	// own descriptor changes only with its generation, and the index only
	// replaces a record by one of a later generation; it is checked again
	// after metaRecheckTicks all the same.
	metaGen, metaAt uint64
	// mergeBytes: the replica's data size when it had applied up to
	// mergeAt, if mergeSized (mergeBytes, the function).
	mergeSized          bool
	mergeAt, mergeBytes uint64
}

// metaRecheckTicks: how long a meta record found right is trusted (1,200
// ticks: 10 minutes at the default RangeTick).
const metaRecheckTicks = 1200

// leadRecheckTicks: a replica that was not measured because another node
// led it is asked about again after this many ticks when it is walked (an
// idle range this node comes to lead is measured when it next applies
// something, or when the window reaches it).
const leadRecheckTicks = 8

// splitIdle reports whether checkSplit would do nothing for r: it was
// measured and has written less than MaxBytes/8 since, and has no load
// above SplitLoad nor a count of hot ticks to reset. Loop only.
func (s *Store) splitIdle(r *Replica) bool {
	q := r.q
	if q == nil {
		q = s.queueState(r.ID)
		r.q = q
	}
	// A replica not measured yet is one another node led when last asked
	// (within leadRecheckTicks: asking the Host is a map lookup, for each
	// of thousands of followers every tick), or one to measure now.
	known := s.measured(r, q) || (q.notLedAt != 0 && s.ticks-q.notLedAt < leadRecheckTicks)
	if s.cfg.MaxBytes > 0 && (!known || r.SM.WrittenBytes()-q.written >= uint64(s.cfg.MaxBytes)/8) {
		return false
	}
	if s.cfg.SplitLoad > 0 && (q.hot != 0 || (r.load != nil && r.load.last > s.cfg.SplitLoad)) {
		return false
	}
	return true
}

// checkMerges merges each range this node leads with its right neighbour
// when both are small (under MinBytes, and under MaxBytes/2 together) and
// cold (under a tenth of SplitLoad), have not split lately, and the
// boundary between them was not placed by an operator or the bootstrap
// (Descriptor.Sticky). Neighbours on different nodes are put on the same
// ones first (alignMerge): with 3 replicas on 5 nodes, most neighbours
// are, and small ranges never merged.
func (s *Store) checkMerges(win []*Replica) {
	for _, p := range s.ledNeighbours(win) {
		l, r, rd := p.l, p.r, p.rd
		if rd.Sticky {
			continue
		}
		lb, lok := s.mergeSmall(l)
		if !lok {
			continue
		}
		rb, rok := s.mergeSmall(r)
		if !rok || (s.cfg.MaxBytes > 0 && lb+rb >= uint64(s.cfg.MaxBytes)/2) {
			continue
		}
		id := l.ID
		why := fmt.Sprintf("sizes %d and %d < %d, cold", lb, rb, s.cfg.MinBytes)
		st := s.queueState(id)
		if s.ticks < st.mergeNotBefore || st.merging {
			continue
		}
		calling, failedNow := true, false
		st.merging = true
		s.merge(id, why, func(_ kv.Descriptor, err error) {
			st.merging = false
			if err == nil {
				st.mergeFails = 0
				s.metrics.autoMerges.Add(1)
				return
			}
			s.log.Debug("automatic merge did not happen", "group", id, "why", why, "err", err)
			st.backOffMerge(s.ticks)
			failedNow = calling
		})
		calling = false
		if failedNow {
			// Refused at once (a pair that cannot be aligned now: a
			// node of the right range drained, or learners): the next
			// pair may merge, and this one waits its back-off.
			continue
		}
		return // one at a time: the neighbours changed
	}
	s.handMergesOn(win)
}

// mergeCold reports whether range id is cold enough to merge: its load
// here under a tenth of SplitLoad (100/s without one). Safe for
// concurrent use.
func (s *Store) mergeCold(id uint64) bool {
	coldBelow := s.cfg.SplitLoad / 10
	if coldBelow == 0 {
		coldBelow = 100
	}
	return s.Load(id) < coldBelow
}

// MergeBound reports whether the merge queue may merge range id into its
// right neighbour on this node, and returns that neighbour's descriptor:
// merges are on (MinBytes above 0), both ranges have a replica here,
// their boundary is not sticky, and range id is cold (mergeCold, as the
// queue and its hand-on count it). Sizes and the cool-down after a split
// are left out (the queue measures sizes by a scan): a range said bound
// may not merge. For the leadership balancer, which gives such a range
// away last. Safe for concurrent use.
func (s *Store) MergeBound(id uint64) (*kv.Descriptor, bool) {
	if s.cfg.MinBytes <= 0 {
		return nil, false
	}
	r, ok := s.Get(id)
	if !ok {
		return nil, false
	}
	d, ok := r.Descriptor()
	if !ok || len(d.End) == 0 {
		return nil, false
	}
	right := s.startingAt(d.End)
	if right == nil {
		return nil, false
	}
	rd, ok := right.Descriptor()
	if !ok || rd.Sticky {
		return nil, false
	}
	return rd, s.mergeCold(id)
}

// mergeSmall reports whether r may merge by its size and load: small
// (under MinBytes; its size), cold (under a tenth of SplitLoad), and not
// split lately. Loop only.
func (s *Store) mergeSmall(r *Replica) (uint64, bool) {
	st := s.queueState(r.ID)
	if s.ticks-st.born < uint64(s.cfg.MergeCooldownTicks) || !s.mergeCold(r.ID) {
		return 0, false
	}
	n, err := s.mergeBytes(r)
	return n, err == nil && n < uint64(s.cfg.MinBytes)
}

// mergeBytes returns r's data size for the merge queue: the last scan's
// (SpanBytes) while r applied nothing since, else a new scan's. Why: the
// queue asks each time its window passes a cold pair, and a cold range
// above MinBytes was scanned whole every tick of its leader
// (TestMergeSizeKept). Not the split queue's Replica.Size: that one counts
// only what puts wrote since, so a range emptied by deletes would merge
// only at its next measurement; any delete, expiry or snapshot moves the
// applied index. Loop only.
func (s *Store) mergeBytes(r *Replica) (uint64, error) {
	// Read before the scan: the state machine publishes the index after
	// the data (kv.StateMachine.AppliedIndex), so a scan that saw newer
	// data is kept under the older index, and done again.
	at := r.SM.AppliedIndex()
	if r.scan.mergeSized && r.scan.mergeAt == at {
		return r.scan.mergeBytes, nil
	}
	n, err := r.SM.SpanBytes()
	if err != nil {
		return 0, err
	}
	s.mergeScans++
	r.scan.mergeSized, r.scan.mergeAt, r.scan.mergeBytes = true, at, n
	return n, nil
}

// handMergesOn hands the leadership of a small, cold range of win that this
// node leads to another of its voters that holds a replica of its right
// neighbour, when this node holds none: checkMerges looks only at the
// neighbours its node holds both of, and such a pair waited for a
// leadership move nothing made (tools/mergebench.sh: the last pair of
// ranges on different nodes stayed apart for good). The neighbour's
// descriptor comes from the meta index; the new leader's queue decides
// on the merge. One range per tick, and each at most once per merge
// back-off (mergeBackoffTicks, doubling). Loop only.
func (s *Store) handMergesOn(win []*Replica) {
	for _, l := range win {
		ld, ok := l.Descriptor()
		if !ok || len(ld.End) == 0 || len(ld.Learners) > 0 || s.startingAt(ld.End) != nil || !s.leads(l.ID) {
			continue
		}
		if _, _, frozen := l.SM.Frozen(); frozen {
			continue
		}
		st := s.queueState(l.ID)
		if s.ticks < st.mergeNotBefore || (st.stickyEnd != nil && bytes.Equal(st.stickyEnd, ld.End)) {
			continue
		}
		if _, ok := s.mergeSmall(l); !ok {
			continue
		}
		st.backOffMerge(s.ticks)
		id, end := l.ID, ld.End
		s.env.Meta(end, 1, callback2(s, func(ds []kv.Descriptor, err error) {
			if err == nil && len(ds) > 0 && bytes.Equal(ds[0].Start, end) && ds[0].Sticky {
				st.stickyEnd = end // never merged by the queue: not looked up again
			}
			if err != nil || len(ds) == 0 || !bytes.Equal(ds[0].Start, end) || ds[0].Sticky || len(ds[0].Learners) > 0 {
				return
			}
			rd := ds[0]
			cur, ok := s.Get(id)
			if !ok || cur != l || !s.leads(id) {
				return
			}
			d, ok := l.Descriptor()
			if !ok || !bytes.Equal(d.End, end) || len(d.Learners) > 0 {
				return
			}
			for _, n := range d.Replicas {
				if n == s.cfg.NodeID || !rd.HasReplica(n) || s.cfg.Host.PeerDown(n) {
					continue
				}
				s.log.Info("handing a range's leadership to a node that holds its right neighbour, so that they can merge",
					"group", id, "right_group", rd.ID, "to", n)
				s.metrics.mergeHandOns.Add(1)
				afterRecv(s, s.cfg.Host.TransferLeadershipAsync(id, n), func(err error) {
					if err != nil {
						s.log.Debug("handing the leadership on for a merge failed", "group", id, "to", n, "err", err)
					}
				})
				return
			}
		}))
		return
	}
}

// mergeBackoffTicks is how many ticks an automatic merge that failed
// waits before the pair is tried again (10 s at the server's default
// RangeTick, 500ms), doubled with each failure in a row up to
// maxMergeBackoffTicks (5 min): a pair that cannot be aligned (a node of
// the right range drained) neither holds the queue nor moves a replica
// every tick.
const (
	mergeBackoffTicks    = 20
	maxMergeBackoffTicks = 600
)

// leads reports whether this node leads range id.
func (s *Store) leads(id uint64) bool {
	l, _, err := s.cfg.Host.Leader(id)
	return err == nil && l == s.cfg.NodeID
}

// measured reports whether r's size (q, its queue state) is known and
// current but for what was written since: measured, and not since split,
// merged or moved (a new descriptor generation: a split leaves the left
// range's measurement the whole range's, a merge the left range's alone,
// and WrittenBytes counts neither). Loop only.
func (s *Store) measured(r *Replica, q *queueState) bool {
	if !q.measured || r.size.Load() == 0 {
		return false
	}
	d, ok := r.Descriptor()
	return ok && d.Generation == q.gen
}

// checkSplit splits r if it is too big or too hot.
func (s *Store) checkSplit(r *Replica, d *kv.Descriptor) {
	st := s.queueState(r.ID)
	if s.cfg.MaxBytes > 0 {
		written := r.SM.WrittenBytes()
		if !s.measured(r, st) || written-st.written >= uint64(s.cfg.MaxBytes)/8 {
			st.measured, st.written, st.gen = true, written, d.Generation
			n, err := r.SM.SpanBytes()
			if err == nil && r.size.Swap(n+1) != n+1 {
				s.sized.Add(1)
			}
			if err != nil {
				s.log.Warn("measure range", "group", r.ID, "err", err)
			} else if n > uint64(s.cfg.MaxBytes) {
				st.written = 0 // measure again soon after the split
				s.autoSplit(r.ID, nil, fmt.Sprintf("size %d > %d", n, s.cfg.MaxBytes))
				return
			}
		}
	}
	if s.cfg.SplitLoad > 0 {
		if load := s.recentLoad(r.ID); load > s.cfg.SplitLoad {
			st.hot++
		} else {
			st.hot = 0
		}
		if st.hot >= max(s.cfg.SplitLoadTicks, 1) {
			st.hot = 0
			if key, ok := r.SM.LoadSplitKey(); ok {
				s.autoSplit(r.ID, key, fmt.Sprintf("load %.0f/s > %.0f/s", s.recentLoad(r.ID), s.cfg.SplitLoad))
			}
		}
	}
}

// autoSplit splits range id unless it is busy; a failure is logged (the
// queue looks again next tick).
func (s *Store) autoSplit(id uint64, key []byte, why string) {
	s.split(id, key, why, func(_, _ kv.Descriptor, err error) {
		if err != nil {
			s.log.Debug("automatic split did not happen", "group", id, "why", why, "err", err)
		}
	})
}

// queueState is the split queue's memory of one range. Owned by the loop.
type queueState struct {
	measured bool
	written  uint64 // WrittenBytes at the last measurement
	gen      uint64 // the descriptor's generation at the last measurement
	hot      int    // ticks in a row over SplitLoad
	born     uint64 // the tick of its last split (or of its making)
	notLedAt uint64 // the tick it was last found led by another node (0: never)
	// learnerSince: when this node, leading, first saw the range's
	// current learners (zero: none); finishLearners.
	learnerSince time.Time
	// mergeFails counts the automatic merges of the range with its right
	// neighbour that failed in a row; none is tried before the tick
	// mergeNotBefore (checkMerges).
	mergeFails     int
	mergeNotBefore uint64
	// merging: an automatic merge of the range is under way (its first
	// steps wait for answers: replicasAnswer), and checkMerges starts no
	// other meanwhile.
	merging bool
	// stickyEnd: the range's end when its right neighbour was found to
	// start at a boundary the queue never undoes (Descriptor.Sticky), by
	// handMergesOn; nil: not known.
	stickyEnd []byte
}

// backOffMerge counts a failed (or handed-on) automatic merge of the
// range and puts its next try mergeBackoffTicks after the tick now,
// doubled with each failure in a row, up to maxMergeBackoffTicks.
func (st *queueState) backOffMerge(now uint64) {
	st.mergeFails++
	st.mergeNotBefore = now + uint64(min(mergeBackoffTicks<<min(st.mergeFails-1, 5), maxMergeBackoffTicks))
}

func (s *Store) queueState(id uint64) *queueState {
	if s.queue == nil {
		s.queue = make(map[uint64]*queueState)
	}
	st := s.queue[id]
	if st == nil {
		st = &queueState{born: s.ticks}
		s.queue[id] = st
	}
	return st
}

// repairMeta records in the meta index the descriptor of every range of
// win this node leads that the index does not hold as it is.
func (s *Store) repairMeta(win []*Replica) {
	type check struct {
		r *Replica
		d kv.Descriptor
	}
	var mine []check
	for _, r := range win {
		d, ok := r.Descriptor()
		if !ok {
			continue
		}
		recent := r.scan.metaGen == d.Generation && s.ticks-r.scan.metaAt < metaRecheckTicks
		if recent || !s.leads(r.ID) {
			continue
		}
		mine = append(mine, check{r, d.Clone()})
	}
	for _, c := range mine {
		r, d := c.r, c.d
		s.env.Meta(d.Start, 1, callback2(s, func(ds []kv.Descriptor, err error) {
			if err != nil {
				return
			}
			if len(ds) == 1 && sameSpan(&ds[0], &d) {
				r.scan.metaGen, r.scan.metaAt = d.Generation, s.ticks
				return
			}
			s.log.Info("meta index lacks a range; recording it", "group", d.ID, "desc", d.String())
			s.metrics.metaRepairs.Add(1)
			s.updateMeta([]kv.Descriptor{d})
		}))
	}
}

// sameSpan reports whether a meta record is exactly descriptor d.
func sameSpan(rec, d *kv.Descriptor) bool {
	return rec.ID == d.ID && rec.Generation == d.Generation && bytes.Equal(rec.Start, d.Start) && bytes.Equal(rec.End, d.End)
}

// forget drops a range's load history (its span changed).
func (t *loadTracker) forget(id uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if st := t.byID[id]; st != nil {
		st.rate, st.last = 0, 0
	}
}

// defaultTick is the Store's default tick.
const defaultTick = time.Second
