package multiraft

import (
	"encoding/binary"
	"strconv"

	"go.etcd.io/raft/v3/raftpb"
)

// A membership change's raft Context is the proposal's key (8 bytes, big
// endian), then the change's kind (1 byte), then the proposer's data
// (ChangeMembershipWith). Entries written before the kind existed carry
// the key alone; their kind comes from the raft change type.
func changeContext(key uint64, kind ChangeKind, data []byte) []byte {
	ctx := make([]byte, 9+len(data))
	binary.BigEndian.PutUint64(ctx, key)
	ctx[8] = byte(kind)
	copy(ctx[9:], data)
	return ctx
}

// decodeChange returns the proposal key, the change and its data of the
// membership change cc with Context ctx; single false if cc is not one
// change of one node (the empty change a refusal leaves, or a change
// written by something else than ChangeMembershipWith): the state machine
// is not asked about it.
func decodeChange(cc raftpb.ConfChangeI, ctx []byte) (key uint64, ch Change, data []byte, single bool) {
	if len(ctx) >= 8 {
		key = binary.BigEndian.Uint64(ctx)
	}
	v2 := cc.AsV2()
	if len(v2.Changes) != 1 || v2.Changes[0].NodeID == 0 {
		return key, Change{}, nil, false
	}
	c := v2.Changes[0]
	ch.Node = c.NodeID
	switch c.Type {
	case raftpb.ConfChangeAddNode:
		ch.Kind = AddVoter
	case raftpb.ConfChangeAddLearnerNode:
		ch.Kind = AddLearner
	case raftpb.ConfChangeRemoveNode:
		ch.Kind = RemoveMember
	default:
		return key, Change{}, nil, false
	}
	if len(ctx) >= 9 {
		if k := ChangeKind(ctx[8]); k == PromoteLearner && ch.Kind == AddVoter {
			ch.Kind = PromoteLearner
		}
		data = ctx[9:]
	}
	return key, ch, data, true
}

// refusedChange is what raft applies in place of a change the state
// machine refused: a change of node 0, which raft skips (confchange
// ignores it, for exactly this use), so that the configuration stays and
// raft's pending change is done with.
var refusedChange = raftpb.ConfChangeV2{Changes: []raftpb.ConfChangeSingle{{Type: raftpb.ConfChangeAddNode, NodeID: 0}}}

// String names the kind, for errors and logs.
func (k ChangeKind) String() string {
	switch k {
	case AddVoter:
		return "add-voter"
	case AddLearner:
		return "add-learner"
	case PromoteLearner:
		return "promote"
	case RemoveMember:
		return "remove"
	}
	return "change-kind-" + strconv.Itoa(int(k))
}
