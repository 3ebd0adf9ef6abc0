package ranges

import "sync/atomic"

// storeMetrics counts what the Store did.
type storeMetrics struct {
	splits      atomic.Uint64
	merges      atomic.Uint64
	metaRepairs atomic.Uint64
	// emptyReplicas: replicas started empty for a snapshot (UnknownGroup).
	emptyReplicas atomic.Uint64
	// movedAway: replicas removed because their range left this node (a
	// replica move), with their span's data.
	movedAway atomic.Uint64
	// leftovers: learners left by moves cut short that finishLearners
	// took up.
	leftovers atomic.Uint64
	// mergeAligns: moves a merge made to put its ranges on the same
	// nodes (alignMerge).
	mergeAligns atomic.Uint64
	// mergeHandOns: leaderships handed to a node holding the right
	// neighbour, for a merge (handMergesOn).
	mergeHandOns atomic.Uint64
	// autoMerges: merges the merge queue made (checkMerges).
	autoMerges atomic.Uint64
	// subsetMerges: merges on the left range's replicas alone, a subset
	// of its frozen right neighbour's (subsetMergeable).
	subsetMerges atomic.Uint64
}

// SubsetMerges returns how many merges this node made on the left range's
// replicas alone, leaving out a replica of the frozen right range on a
// node that takes none.
func (s *Store) SubsetMerges() uint64 { return s.metrics.subsetMerges.Load() }

// AutoMerges returns how many merges this node's merge queue made (small,
// cold neighbours), not counting the operator's.
func (s *Store) AutoMerges() uint64 { return s.metrics.autoMerges.Load() }

// MergeHandOns returns how many times this node handed a range's
// leadership to a node that holds its right neighbour, so that the two
// could merge.
func (s *Store) MergeHandOns() uint64 { return s.metrics.mergeHandOns.Load() }

// MergeAligns returns how many replica moves this node made to put two
// neighbours on the same nodes for a merge.
func (s *Store) MergeAligns() uint64 { return s.metrics.mergeAligns.Load() }

// Leftovers returns how many learners left by moves cut short this node
// took up (promoted or removed again).
func (s *Store) Leftovers() uint64 { return s.metrics.leftovers.Load() }

// MovedAway returns how many replicas this node removed because their
// range no longer had a replica here (a replica move).
func (s *Store) MovedAway() uint64 { return s.metrics.movedAway.Load() }

// EmptyReplicas returns how many replicas this node started empty, to
// receive a snapshot (a range made by a split the node had not applied).
func (s *Store) EmptyReplicas() uint64 { return s.metrics.emptyReplicas.Load() }

// Splits returns how many splits this node coordinated.
func (s *Store) Splits() uint64 { return s.metrics.splits.Load() }

// MetaRepairs returns how many meta index records this node repaired.
func (s *Store) MetaRepairs() uint64 { return s.metrics.metaRepairs.Load() }
