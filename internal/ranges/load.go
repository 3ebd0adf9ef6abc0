package ranges

import (
	"math"
	"sync"
	"time"
)

// loadTracker turns each replica's count of applied commands and answered
// queries (kv.StateMachine.Ops) into a rate. mu is a leaf.
type loadTracker struct {
	mu    sync.Mutex
	byID  map[uint64]*loadStat
	clock time.Time
}

type loadStat struct {
	ops  uint64  // the count at the last sample
	rate float64 // ops per second, smoothed
	last float64 // ops per second over the last sample's interval
}

// sampleLoad takes a sample at now of the load of reps, the replicas the
// tick walks (walkSet): every replica whose count moved since its last
// sample is one, and one whose rate has not decayed to nothing stays one.
// Loop only.
func (s *Store) sampleLoad(now time.Time, reps []*Replica) {
	t := &s.load
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.byID == nil {
		t.byID = make(map[uint64]*loadStat)
	}
	dt := now.Sub(t.clock).Seconds()
	first := t.clock.IsZero()
	t.clock = now
	for _, r := range reps {
		ops := r.SM.Ops()
		st := r.load
		if st == nil {
			if st = t.byID[r.ID]; st == nil {
				st = &loadStat{ops: ops}
				t.byID[r.ID] = st
				r.load = st
				continue
			}
			r.load = st
		}
		if ops == st.ops && st.rate == 0 && st.last == 0 {
			continue // the sample would change nothing
		}
		if !first && dt > 0 {
			sample := float64(ops-st.ops) / dt
			w := 1 - pow2(-dt/s.cfg.LoadHalfLife.Seconds())
			st.rate += w * (sample - st.rate)
			st.last = sample
			if sample == 0 && st.rate < minLoad {
				st.rate = 0 // decayed away: the replica is idle again
			}
		}
		st.ops = ops
	}
	if all := s.Replicas(); len(t.byID) > len(all) {
		// Replicas went away: forget their samples.
		seen := make(map[uint64]bool, len(all))
		for _, r := range all {
			seen[r.ID] = true
		}
		for id := range t.byID {
			if !seen[id] {
				delete(t.byID, id)
			}
		}
	}
}

// minLoad is the rate, in operations per second, below which an idle
// replica's decaying load counts as none.
const minLoad = 1e-3

// Load returns range id's recent load on this replica, in operations per
// second (0 before two samples).
func (s *Store) Load(id uint64) float64 {
	s.load.mu.Lock()
	defer s.load.mu.Unlock()
	if st := s.load.byID[id]; st != nil {
		return st.rate
	}
	return 0
}

// pow2 returns 2^x, for the smoothing weight.
func pow2(x float64) float64 { return math.Exp2(x) }

// recentLoad returns range id's load over the last sample's interval.
func (s *Store) recentLoad(id uint64) float64 {
	s.load.mu.Lock()
	defer s.load.mu.Unlock()
	if st := s.load.byID[id]; st != nil {
		return st.last
	}
	return 0
}
