package server

import (
	"cmp"
	"maps"
	"slices"
	"sort"

	"github.com/flotilla/flotilla/kv"
)

// Balancing the bytes the members hold, once their replica counts are
// even (rebalanceOnce). Ranges split at RangeMaxBytes but start small
// and grow unevenly, so even counts can still leave one node holding far
// more data than another: a node that took the ranges of a bulk load, or
// a new node that was given the first ranges in key order (the small,
// young ones) by a count-only balancer.
//
// A node's bytes are the sum of the sizes of the ranges it holds a
// replica of (nodeBytes), each range's size as its leader last measured
// it (rangeSizes). A range whose size is not known counts 0 and is never
// moved for bytes.

// rangeSizes returns the size of each range of ds that is known:
// measured by its leader, read from this node's range store if this node
// leads it, else from its leader's last discovery answer (describeGroups,
// peerView.sizes: the view of the leader this node knows, else any view
// of a peer that answers), else the last size a pass found (last). A
// leadership that moves drops the range from its former leader's next
// answer before its new leader measured it: without last, the range
// counted 0 for a pass or two, and a node's bytes flickered from pass to
// pass (a swap a pass, back and forth, in a growth run). last is updated
// to the sizes returned.
func (s *Server) rangeSizes(ds []kv.Descriptor, last map[uint64]uint64) map[uint64]uint64 {
	sizes := make(map[uint64]uint64, len(ds))
	var leaders map[uint64]uint64 // of the ranges held here, led elsewhere
	for _, d := range ds {
		r, ok := s.ranges.Get(d.ID)
		if !ok {
			continue
		}
		l, _, err := s.host.Leader(d.ID)
		switch {
		case err != nil || l == 0:
		case l == s.cfg.NodeID:
			if n, ok := r.Size(); ok {
				sizes[d.ID] = n
			}
		default:
			if leaders == nil {
				leaders = map[uint64]uint64{}
			}
			leaders[d.ID] = l
		}
	}
	s.peers.Lock()
	for _, d := range ds {
		if _, ok := sizes[d.ID]; ok {
			continue
		}
		if v := s.peers.views[leaders[d.ID]]; v != nil && v.ok {
			if n, ok := v.sizes[d.ID]; ok {
				sizes[d.ID] = n
				continue
			}
		}
		for _, v := range s.peers.views {
			if n, ok := v.sizes[d.ID]; ok && v.ok {
				sizes[d.ID] = n
				break
			}
		}
	}
	s.peers.Unlock()
	for _, d := range ds {
		if _, ok := sizes[d.ID]; !ok {
			if n, ok := last[d.ID]; ok {
				sizes[d.ID] = n
			}
		}
	}
	clear(last)
	maps.Copy(last, sizes)
	return sizes
}

// nodeBytes returns the bytes each node holds: the sum of the sizes of
// the ranges of ds it holds a replica of (unknown sizes count 0).
func nodeBytes(ds []kv.Descriptor, sizes map[uint64]uint64) map[uint64]uint64 {
	out := map[uint64]uint64{}
	for _, d := range ds {
		for _, r := range d.Replicas {
			out[r] += sizes[d.ID]
		}
	}
	return out
}

// bytesSlack is the byte gap between two members that is not worth a
// move: a quarter of RangeMaxBytes (the default RangeMinBytes, the size
// below which a range counts as small). 0 when splits by size are off:
// then no range is measured, and rebalanceOnce balances counts only.
func (s *Server) bytesSlack() uint64 {
	return uint64(max(s.cfg.RangeMaxBytes/4, 0))
}

// exchange is a rebalancing of bytes between two members: range give
// moves from node from to node to, then, if back is set, range back moves
// from to to from (a swap, which keeps both counts).
type exchange struct {
	from, to   uint64
	give, back *kv.Descriptor
}

// pickBytes chooses an exchange that evens out bytes (nodeBytes) over
// members, or nil if there is none worth making. It acts only when the
// replica counts are even (count differs by at most 1 over members:
// pickRebalance's work comes first) and a pair of members differ by more
// than max(a tenth of their mean, slack), and only between two members
// every range of which has a known size (else their bytes are a guess);
// it tries the pairs from the widest gap down. Between the pair hi (more
// bytes) and lo:
//   - a range of hi and a smaller one of lo trade places (a swap: both
//     counts stay as they are);
//   - or, if hi holds more replicas than lo, one range moves from hi to
//     lo (the counts stay even: lo then holds at most what hi held).
//
// Of the ranges that may move (not skipped: movesSkip; a replica on the
// source and none on the target), it takes the one (or the pair) whose move leaves
// the pair's gap smallest, and only if that shrinks the gap by at least
// slack/2. With the sizes holding still and every move made, each exchange
// lowers the sum of the squares of the members' bytes and leaves the
// counts even, so a sequence of them ends, and pickRebalance and pickBytes
// do not undo each other's moves. (A move that fails is another matter:
// rebalancer.failed backs its range off for longer each time.)
func pickBytes(members []uint64, count map[uint64]int, bytes, sizes map[uint64]uint64, ds []kv.Descriptor, skip func(uint64) bool, slack uint64) *exchange {
	if len(members) < 2 || slack == 0 {
		return nil
	}
	lo, hi := count[members[0]], count[members[0]]
	var total uint64
	for _, m := range members {
		lo, hi = min(lo, count[m]), max(hi, count[m])
		total += bytes[m]
	}
	if hi-lo > 1 {
		return nil
	}
	// Each member's ranges that may move, once, rather than a scan of
	// every range for every pair (at 10,000 ranges and 50 nodes that was a
	// third of a second a pass).
	held := map[uint64][]*kv.Descriptor{}
	unsized := map[uint64]bool{}
	for k := range ds {
		d := &ds[k]
		_, sized := sizes[d.ID]
		for _, r := range d.Replicas {
			switch {
			case !sized:
				unsized[r] = true
			case !skip(d.ID):
				held[r] = append(held[r], d)
			}
		}
	}
	limit := max(total/uint64(len(members))/10, slack)
	byBytes := slices.Clone(members)
	slices.SortStableFunc(byBytes, func(a, b uint64) int { return cmp.Compare(bytes[b], bytes[a]) })
	for i := 0; i < len(byBytes)-1; i++ {
		for j := len(byBytes) - 1; j > i; j-- {
			from, to := byBytes[i], byBytes[j]
			gap := bytes[from] - bytes[to]
			if gap <= limit {
				break
			}
			if unsized[from] || unsized[to] {
				continue
			}
			x := bestExchange(from, to, gap, count[from] > count[to], held[from], held[to], sizes)
			if x != nil && gap-absDiff(gap, 2*x.net(sizes)) >= slack/2 {
				return x
			}
		}
	}
	return nil
}

// bestExchange returns the exchange between from and to (gap bytes
// apart) that leaves them closest, of ranges of fromHeld (to give) and
// toHeld (to take back), those with no replica on the other node: a swap,
// or a single move if single allows; nil if none shrinks the gap.
func bestExchange(from, to, gap uint64, single bool, fromHeld, toHeld []*kv.Descriptor, sizes map[uint64]uint64) *exchange {
	var gives, backs []*kv.Descriptor
	for _, d := range fromHeld {
		if !d.HasReplica(to) {
			gives = append(gives, d)
		}
	}
	for _, d := range toHeld {
		if !d.HasReplica(from) {
			backs = append(backs, d)
		}
	}
	// What is left of the gap after moving net bytes from from to to:
	// |gap - 2·net|; a move shrinks it while 0 < net < gap.
	var best *exchange
	bestLeft := gap
	consider := func(give, back *kv.Descriptor) {
		x := &exchange{from: from, to: to, give: give, back: back}
		net := x.net(sizes)
		if left := absDiff(gap, 2*net); net > 0 && left < bestLeft {
			best, bestLeft = x, left
		}
	}
	if single {
		for _, g := range gives {
			consider(g, nil)
		}
	}
	// A swap: for each range given, the range taken back whose size is
	// nearest to its size less half the gap (a binary search over backs
	// sorted by size).
	slices.SortStableFunc(backs, func(a, b *kv.Descriptor) int { return cmp.Compare(sizes[a.ID], sizes[b.ID]) })
	for _, g := range gives {
		sg := sizes[g.ID]
		want := int64(sg) - int64(gap/2)
		k := sort.Search(len(backs), func(i int) bool { return int64(sizes[backs[i].ID]) >= want })
		for _, b := range []int{k - 1, k} {
			if b >= 0 && b < len(backs) && sizes[backs[b].ID] < sg {
				consider(g, backs[b])
			}
		}
	}
	return best
}

// net is the bytes x moves from x.from to x.to.
func (x *exchange) net(sizes map[uint64]uint64) uint64 {
	n := sizes[x.give.ID]
	if x.back != nil {
		n -= sizes[x.back.ID] // bestExchange takes back only a smaller range
	}
	return n
}

// absDiff returns |a - b|.
func absDiff(a, b uint64) uint64 {
	if a > b {
		return a - b
	}
	return b - a
}
