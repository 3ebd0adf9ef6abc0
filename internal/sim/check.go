package sim

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

// regState is the model's state of one key.
type regState struct {
	Found bool
	Value string
}

// pairState is the model's state of a key pair: a key and its partner
// (PartnerSuffix), which transactions write together.
type pairState struct{ Key, Partner regState }

// PartnerSuffix makes a workload key's partner: key+PartnerSuffix. A
// transaction (OpTxn) names the key and writes both; gets, puts and CASes
// name either. The suffix sorts below every character of workload keys,
// so the nemesis's splits (at workload keys, or at two hex digits) never
// cut a pair. A load split may (at the median key of recent requests,
// which may be a partner): the pair's transactions are then refused
// (KeyMismatch, nothing applied) and end dropped from the history.
const PartnerSuffix = "'"

// Register returns the key whose pair key holds: key itself, or the key
// whose partner it is. Histories are partitioned by it.
func Register(key string) string { return strings.TrimSuffix(key, PartnerSuffix) }

// reg returns the register of pair st that key names.
func (st *pairState) reg(key string) *regState {
	if strings.HasSuffix(key, PartnerSuffix) {
		return &st.Partner
	}
	return &st.Key
}

// RegisterModel is the porcupine model of the workload: one register per
// key, in pairs (histories are partitioned by pair) with get, put,
// compare-and-swap, and a transaction that swaps both keys of a pair at
// once if the first holds the expected value, else reads both. Inputs are
// Input, outputs Output. A write with an unknown outcome may take effect
// or not; since its Return is NeverReturned, "not" is the same as taking
// effect after everything else.
var RegisterModel = porcupine.Model{
	Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		var keys []string
		for _, op := range h {
			k := Register(op.Input.(Input).Key)
			if _, ok := byKey[k]; !ok {
				keys = append(keys, k)
			}
			byKey[k] = append(byKey[k], op)
		}
		out := make([][]porcupine.Operation, 0, len(keys))
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() any { return pairState{} },
	Step: func(state, input, output any) (bool, any) {
		st, in, out := state.(pairState), input.(Input), output.(Output)
		r := st.reg(in.Key)
		switch in.Kind {
		case OpGet:
			return out.Found == r.Found && out.Value == r.Value, st
		case OpPut:
			next := st
			*next.reg(in.Key) = regState{Found: true, Value: in.Value}
			return true, next
		case OpCAS, OpTxn:
			match := (in.ExpectAbsent && !r.Found) || (!in.ExpectAbsent && r.Found && r.Value == in.Expected)
			next := st
			if match {
				*next.reg(in.Key) = regState{Found: true, Value: in.Value}
				if in.Kind == OpTxn {
					next.Partner = regState{Found: true, Value: in.Value}
				}
			}
			if out.Unknown {
				return true, next
			}
			if out.OK != match {
				return false, st
			}
			if !match && (out.Found != r.Found || out.Value != r.Value) {
				return false, st
			}
			if !match && in.Kind == OpTxn && (out.Found2 != st.Partner.Found || out.Value2 != st.Partner.Value) {
				return false, st
			}
			return true, next
		}
		return false, st
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(Input), output.(Output)
		res := "?"
		if !out.Unknown {
			switch {
			case in.Kind == OpPut:
				res = "ok"
			case (in.Kind == OpCAS || in.Kind == OpTxn) && out.OK:
				res = "swapped"
			case !out.Found:
				res = "absent"
			default:
				res = fmt.Sprintf("%q", out.Value)
			}
			if in.Kind == OpTxn && !out.OK {
				res += ", " + describeReg(regState{Found: out.Found2, Value: out.Value2})
			}
		}
		exp := fmt.Sprintf("%q", in.Expected)
		if in.ExpectAbsent {
			exp = "absent"
		}
		switch in.Kind {
		case OpGet:
			return fmt.Sprintf("get(%s) → %s", in.Key, res)
		case OpPut:
			return fmt.Sprintf("put(%s, %s) → %s", in.Key, in.Value, res)
		case OpTxn:
			return fmt.Sprintf("txn(%s=%s ? %s,%s%s←%s : get both) → %s", in.Key, exp, in.Key, in.Key, PartnerSuffix, in.Value, res)
		default:
			return fmt.Sprintf("cas(%s, %s→%s) → %s", in.Key, exp, in.Value, res)
		}
	},
	DescribeState: func(state any) string {
		st := state.(pairState)
		return describeReg(st.Key) + ", " + describeReg(st.Partner)
	},
}

func describeReg(r regState) string {
	if !r.Found {
		return "absent"
	}
	return fmt.Sprintf("%q", r.Value)
}

// CheckHistory checks ops for linearizability under RegisterModel within
// timeout. It returns "ok", "illegal" or "unknown", and the information
// porcupine needs to draw the history.
func CheckHistory(ops []Op, timeout time.Duration) (string, porcupine.LinearizationInfo) {
	pops := make([]porcupine.Operation, len(ops))
	for i, o := range ops {
		pops[i] = porcupine.Operation{ClientId: o.Client, Input: o.In, Output: o.Out, Call: o.Call, Return: o.Return}
	}
	res, info := porcupine.CheckOperationsVerbose(RegisterModel, pops, timeout)
	switch res {
	case porcupine.Ok:
		return "ok", info
	case porcupine.Illegal:
		return "illegal", info
	}
	return "unknown", info
}

// check runs the end-of-run checks: replica agreement, lost
// acknowledgements, linearizability.
func (s *sim) check() {
	r := s.res
	r.Ops = len(s.hist.ops)
	r.History = s.hist.ops
	if len(r.Violations) == 0 {
		s.checkReplicas()
		s.checkRanges()
		s.checkDecommissioned()
	}
	if len(r.Violations) == 0 {
		s.checkWatches()
	}
	for _, a := range s.acked {
		if _, ok := s.effects[[2]uint64{a.session, a.seq}]; !ok {
			r.LostAcks++
		}
	}
	if r.LostAcks > 0 {
		s.violation("%d acknowledged writes missing from the applied log", r.LostAcks)
	}
	var info porcupine.LinearizationInfo
	r.Linearizable, info = CheckHistory(s.hist.ops, s.cfg.CheckTimeout)
	if r.Linearizable != "ok" && s.cfg.VisualizeDir != "" {
		path := filepath.Join(s.cfg.VisualizeDir, fmt.Sprintf("seed-%d.html", s.cfg.Seed))
		if err := os.MkdirAll(s.cfg.VisualizeDir, 0o755); err == nil {
			if err := porcupine.VisualizePath(RegisterModel, info, path); err == nil {
				r.Visualization = path
			}
		}
	}
	r.TraceHash = s.trace.Sum64()
}

// checkReplicas compares, group by group, every replica's applied index and
// state machine contents once the run converged.
func (s *sim) checkReplicas() {
	for _, g := range s.rangeIDs() {
		var ref []byte
		var refApplied uint64
		for i, id := range s.ids {
			n := s.nodes[id]
			if !n.up {
				return
			}
			// The live state machine: Pebble alone may lag behind it (writes
			// held in memory, kv/dirty.go). The run is over, so nothing
			// else calls it.
			r, ok := n.ranges.Get(g)
			if !ok {
				s.violation("node %d has no replica of group %d", id, g)
				continue
			}
			sm := r.SM
			var buf bytes.Buffer
			if err := sm.Snapshot(&buf); err != nil {
				s.violation("node %d group %d snapshot: %v", id, g, err)
				continue
			}
			st, err := n.host.GroupStatus(g)
			if err != nil {
				s.violation("node %d group %d: %v", id, g, err)
				continue
			}
			if i == 0 {
				ref, refApplied = buf.Bytes(), st.Applied
				continue
			}
			if st.Applied != refApplied || !bytes.Equal(buf.Bytes(), ref) {
				s.violation("group %d: node %d (applied %d) differs from node %d (applied %d): %q vs %q",
					g, id, st.Applied, s.ids[0], refApplied, buf.Bytes(), ref)
			}
		}
	}
}

// checkFailover checks, as a paused node resumes, that the others took
// over its ranges: in a run whose only fault is pauses (so nothing else
// stands in the way), once the node has been paused, and a majority of the
// others running, for longer than the liveness timeout plus two election
// timeouts (with a margin for the nodes' clock rates), every range must
// have a leader other than the paused node, as each running node sees it.
// Idle ranges are quiesced (nobody ticks them): only node liveness can wake
// their followers.
func (s *sim) checkFailover(paused *node, since time.Duration) {
	if s.cfg.Faults != FaultPause {
		return
	}
	liveness := max(s.cfg.ElectionTicks/2, 3*s.cfg.HeartbeatTicks)
	bound := time.Duration(liveness+2*s.cfg.ElectionTicks) * s.cfg.TickInterval * 6 / 5
	var others []*node
	for _, id := range s.ids {
		n := s.nodes[id]
		if n == paused || !n.up || n.paused {
			continue
		}
		others = append(others, n)
		since = max(since, n.runningSince)
	}
	if len(others) <= len(s.ids)/2 || s.now-since < bound {
		return
	}
	for _, g := range s.rangeIDs() {
		for _, n := range others {
			st, err := n.host.GroupStatus(g)
			if err != nil {
				continue
			}
			if st.Leader == 0 || st.Leader == paused.id {
				s.violation("range %d: node %d sees leader %d %v after node %d paused and the others all ran (bound %v): %s",
					g, n.id, st.Leader, s.now-since, paused.id, bound, s.describe())
				return
			}
		}
	}
}
