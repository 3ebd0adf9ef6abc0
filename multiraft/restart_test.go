package multiraft_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"

	"go.etcd.io/raft/v3/raftpb"

	"github.com/flotilla/flotilla/multiraft"
	"github.com/flotilla/flotilla/storage"
	"github.com/flotilla/flotilla/transport"
)

// durableSM claims its effects are durable through index applied, and fails
// if the engine hands it anything at or below that.
type durableSM struct{ applied uint64 }

func (s *durableSM) Apply(cmds []multiraft.Command) error {
	for _, c := range cmds {
		if c.Index <= s.applied {
			return fmt.Errorf("index %d applied again (durable through %d)", c.Index, s.applied)
		}
		s.applied = c.Index
	}
	return nil
}
func (s *durableSM) Query([]byte) ([]byte, error)    { return nil, nil }
func (s *durableSM) Snapshot(io.Writer) error        { return nil }
func (s *durableSM) Restore(io.Reader, uint64) error { return nil }
func (s *durableSM) AppliedIndex() uint64            { return s.applied }

var _ multiraft.StateMachine = (*durableSM)(nil)

// A crash can leave the state machine's applied index past a membership
// change whose conf state was never written (the conf state goes out in an
// unsynced batch after the state machine's own write). On restart the
// change must be applied again, and the commands must not.
func TestRestartReappliesConfChangeBehindAppliedIndex(t *testing.T) {
	store := storage.NewMem()
	cc := raftpb.ConfChangeV2{Changes: []raftpb.ConfChangeSingle{{Type: raftpb.ConfChangeAddLearnerNode, NodeID: 4}}}
	ccData, err := cc.Marshal()
	must(t, err)
	cmd := make([]byte, 9)
	b := store.NewBatch()
	b.SetConfState(1, raftpb.ConfState{Voters: []uint64{1, 2, 3}}, 0)
	b.Append(1, []raftpb.Entry{
		{Index: 1, Term: 1},
		{Index: 2, Term: 1, Type: raftpb.EntryConfChangeV2, Data: ccData},
		{Index: 3, Term: 1, Data: cmd},
	}, 0)
	b.SetHardState(1, raftpb.HardState{Term: 1, Vote: 1, Commit: 3})
	must(t, b.Commit(true))

	tr := transport.NewMemNetwork(transport.MemOptions{Manual: true}).Transport(1)
	defer tr.Close()
	h, err := multiraft.NewHost(multiraft.Config{NodeID: 1, Store: store, Transport: tr, Manual: true})
	must(t, err)
	defer h.Stop()
	must(t, h.StartGroup(1, nil, &durableSM{applied: 3}))
	for h.Process() > 0 {
	}
	if err := h.Err(); err != nil {
		t.Fatal(err)
	}
	st, err := h.GroupStatus(1)
	must(t, err)
	if fmt.Sprint(st.Learners) != "[4]" {
		t.Fatalf("learners after restart %v, want [4]: the membership change was lost", st.Learners)
	}
	if st.Applied != 3 {
		t.Fatalf("applied %d, want 3", st.Applied)
	}
}

// Requests that reach the inbox in the same cycle as StopGroup fail with
// ErrGroupRemoved instead of hanging.
func TestStopGroupFailsRequestsOfTheSameCycle(t *testing.T) {
	tr := transport.NewMemNetwork(transport.MemOptions{Manual: true}).Transport(1)
	defer tr.Close()
	h, err := multiraft.NewHost(multiraft.Config{NodeID: 1, Store: storage.NewMem(), Transport: tr, Manual: true})
	must(t, err)
	defer h.Stop()
	must(t, h.StartGroup(1, []uint64{1}, &durableSM{}))
	must(t, h.Campaign(1))
	for h.Process() > 0 {
	}
	p := h.ProposeAsync(1, []byte("x"))
	r := h.ReadAsync(1, nil)
	// A cancelled context makes StopGroup return at once, leaving its stop
	// request queued: stop, proposal and read are drained in one cycle.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := h.StopGroup(ctx, 1); !errors.Is(err, context.Canceled) {
		t.Fatalf("StopGroup with a cancelled context: %v", err)
	}
	h.Process()
	if _, err := h.GroupStatus(1); !errors.Is(err, multiraft.ErrGroupNotFound) {
		t.Fatalf("group still running after the cycle: %v", err)
	}
	for name, ch := range map[string]<-chan struct{}{"proposal": p.Done(), "read": r.Done()} {
		select {
		case <-ch:
		default:
			t.Fatalf("%s still pending after StopGroup", name)
		}
	}
	if _, err := p.Result(); !errors.Is(err, multiraft.ErrGroupRemoved) {
		t.Fatalf("proposal: %v, want ErrGroupRemoved", err)
	}
	if _, err := r.Result(); !errors.Is(err, multiraft.ErrGroupRemoved) {
		t.Fatalf("read: %v, want ErrGroupRemoved", err)
	}
}
