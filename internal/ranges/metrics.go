package ranges

import "sync/atomic"

// storeMetrics counts what the Store did.
type storeMetrics struct {
	splits      atomic.Uint64
	merges      atomic.Uint64
	metaRepairs atomic.Uint64
}

// Splits returns how many splits this node coordinated.
func (s *Store) Splits() uint64 { return s.metrics.splits.Load() }

// MetaRepairs returns how many meta index records this node repaired.
func (s *Store) MetaRepairs() uint64 { return s.metrics.metaRepairs.Load() }
