package ranges

import (
	"bytes"
	"fmt"
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
func (s *Store) Tick() {
	now := s.env.Now()
	s.SampleLoad(now)
	s.ticks++
	for _, r := range s.Replicas() {
		if !s.leads(r.ID) {
			continue
		}
		d, ok := r.Descriptor()
		if !ok {
			continue
		}
		s.checkSplit(r, d)
	}
	if s.cfg.MinBytes > 0 {
		s.checkMerges()
	}
	if s.cfg.MetaRepairTicks > 0 && s.ticks%uint64(s.cfg.MetaRepairTicks) == 0 {
		s.finishMerges()
		s.propagateRevocations()
		if !s.cfg.LoseMetaUpdates {
			s.repairMeta()
		}
	}
}

// mergeCooldownTicks: a range merges no sooner than this many ticks after
// it split (or was made by a split), so that a split by load is not undone
// while its load settles.
const mergeCooldownTicks = 20

// checkMerges merges each range this node leads with its right neighbour
// when both are small (under MinBytes, and under MaxBytes/2 together) and
// cold (under a tenth of SplitLoad), have the same replicas, have not
// split lately, and the boundary between them was not placed by an
// operator or the bootstrap (Descriptor.Sticky).
func (s *Store) checkMerges() {
	coldBelow := s.cfg.SplitLoad / 10
	if coldBelow == 0 {
		coldBelow = 100
	}
	small := func(r *Replica) (uint64, bool) {
		st := s.queueState(r.ID)
		if s.ticks-st.born < mergeCooldownTicks || s.Load(r.ID) >= coldBelow {
			return 0, false
		}
		n, err := r.SM.SpanBytes()
		return n, err == nil && n < uint64(s.cfg.MinBytes)
	}
	for _, p := range s.ledNeighbours() {
		l, r, ld, rd := p.l, p.r, p.ld, p.rd
		if !ld.SameReplicas(rd) || rd.Sticky {
			continue
		}
		lb, lok := small(l)
		if !lok {
			continue
		}
		rb, rok := small(r)
		if !rok || (s.cfg.MaxBytes > 0 && lb+rb >= uint64(s.cfg.MaxBytes)/2) {
			continue
		}
		id := l.ID
		why := fmt.Sprintf("sizes %d and %d < %d, cold", lb, rb, s.cfg.MinBytes)
		s.merge(id, why, func(_ kv.Descriptor, err error) {
			if err != nil {
				s.log.Debug("automatic merge did not happen", "group", id, "why", why, "err", err)
			}
		})
		return // one at a time: the neighbours changed
	}
}

// leads reports whether this node leads range id.
func (s *Store) leads(id uint64) bool {
	l, _, err := s.cfg.Host.Leader(id)
	return err == nil && l == s.cfg.NodeID
}

// checkSplit splits r if it is too big or too hot.
func (s *Store) checkSplit(r *Replica, d *kv.Descriptor) {
	st := s.queueState(r.ID)
	if s.cfg.MaxBytes > 0 {
		written := r.SM.WrittenBytes()
		if !st.measured || written-st.written >= uint64(s.cfg.MaxBytes)/8 {
			st.measured, st.written = true, written
			n, err := r.SM.SpanBytes()
			if err != nil {
				s.log.Warn("measure range", "group", r.ID, "err", err)
			} else if st.bytes = n; n > uint64(s.cfg.MaxBytes) {
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
	bytes    uint64 // the last measurement
	hot      int    // ticks in a row over SplitLoad
	born     uint64 // the tick of its last split (or of its making)
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

// repairMeta records in the meta index the descriptor of every range this
// node leads that the index does not hold as it is.
func (s *Store) repairMeta() {
	var mine []kv.Descriptor
	for _, r := range s.Replicas() {
		if !s.leads(r.ID) {
			continue
		}
		if d, ok := r.Descriptor(); ok {
			mine = append(mine, d.Clone())
		}
	}
	for _, d := range mine {
		s.env.Meta(d.Start, 1, callback2(s, func(ds []kv.Descriptor, err error) {
			if err != nil || (len(ds) == 1 && sameSpan(&ds[0], &d)) {
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
