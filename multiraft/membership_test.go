package multiraft_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/flotilla/flotilla/internal/mrtest"
	"github.com/flotilla/flotilla/multiraft"
	"github.com/flotilla/flotilla/storage"
	"github.com/flotilla/flotilla/transport"
	"go.etcd.io/raft/v3/raftpb"
)

// awaitChange drives c until f completes or ticks ticks pass, and returns
// its error and the ticks it took.
func awaitChange(t *testing.T, c *mrtest.Cluster, f multiraft.Future, ticks int) (int, error) {
	t.Helper()
	for i := 0; i <= ticks; i++ {
		must(t, c.Stabilize())
		select {
		case <-f.Done():
			_, err := f.Result()
			return i, err
		default:
		}
		c.Tick()
	}
	return ticks, fmt.Errorf("not done in %d ticks", ticks)
}

// A node added to a group that has never compacted its log gets the
// group's membership, not the log from its start: applying the first
// change of the log on an empty configuration made raft panic ("removed
// all voters"). The group then keeps committing with the new voter.
func TestJoinYoungGroup(t *testing.T) {
	c := newCluster(t, mrtest.Options{Nodes: 3, Groups: 1})
	electAll(t, c)
	if _, err := c.Propose(1, 1, "set young yes"); err != nil {
		t.Fatal(err)
	}
	must(t, c.AddNode(4))
	for _, step := range []struct {
		kind multiraft.ChangeKind
		node uint64
	}{{multiraft.AddLearner, 4}, {multiraft.PromoteLearner, 4}, {multiraft.RemoveMember, 3}} {
		if _, err := awaitChange(t, c, c.Hosts[1].ChangeMembershipAsync(1, multiraft.Change{Kind: step.kind, Node: step.node}, nil), 50); err != nil {
			t.Fatalf("change %v node %d: %v\n%s", step.kind, step.node, err, c.Status())
		}
	}
	if v := c.SMs[4][1].Get("young"); v != "yes" {
		t.Fatalf("node 4 has young=%q\n%s", v, c.Status())
	}
	// Node 4's vote is needed: with node 2 cut off, 1 and 4 commit.
	c.Crash(3)
	c.Net.Isolate(2, transport.LinkBlackHole)
	if _, err := c.Propose(1, 1, "set with four"); err != nil {
		t.Fatal(err)
	}
	if v := c.SMs[4][1].Get("with"); v != "four" {
		t.Fatalf("node 4 has with=%q\n%s", v, c.Status())
	}
}

// A new leader whose log holds entries of the previous term it has not
// applied yet turns a membership change into an empty entry (raft allows
// one unapplied change, and counts that log as one). The engine sees that
// the change was not appended and proposes it again once the leader has
// applied that far: the change, and a write proposed after it, complete
// within a few ticks, not at the request timeout (100 ticks here).
func TestConfChangeRefusedByNewLeader(t *testing.T) {
	c := newCluster(t, mrtest.Options{Nodes: 3, Groups: 1})
	electAll(t, c)
	// Node 1 commits a write with node 3; node 2 gets the entry but not
	// the news that it committed, and wins the next election.
	newLeaderWithUnapplied(t, c, func() multiraft.Future { return c.Hosts[1].ProposeAsync(1, []byte("set a 1")) })
	if v := c.SMs[2][1].Get("a"); v != "" {
		t.Fatalf("node 2 applied a=%q already: the test needs an unapplied entry", v)
	}
	cc := c.Hosts[2].ChangeMembershipAsync(1, multiraft.Change{Kind: multiraft.AddLearner, Node: 4}, nil)
	w := c.Hosts[2].ProposeAsync(1, []byte("set b 2"))
	ticks, err := awaitChange(t, c, cc, 20)
	if err != nil {
		t.Fatalf("membership change: %v (the change was held as pending)\n%s", err, c.Status())
	}
	if _, err := awaitChange(t, c, w, 5); err != nil {
		t.Fatalf("write after the change: %v", err)
	}
	st, _ := c.Hosts[2].GroupStatus(1)
	if fmt.Sprint(st.Learners) != "[4]" {
		t.Fatalf("learners %v, want [4]", st.Learners)
	}
	t.Logf("the change completed after %d ticks", ticks)
}

// A follower refuses a membership change (ErrNotLeader) instead of
// forwarding it: the leader it would go to may replace it by an empty
// entry (here a new leader with an unapplied entry in its log), which the
// follower cannot see. It then held every later proposal of the group
// until the change expired as ambiguous (100 ticks here). Now the change
// fails at once and the write proposed after it commits.
func TestForwardedConfChangeRefused(t *testing.T) {
	c := newCluster(t, mrtest.Options{Nodes: 3, Groups: 1})
	electAll(t, c)
	newLeaderWithUnapplied(t, c, func() multiraft.Future { return c.Hosts[1].ProposeAsync(1, []byte("set a 1")) })
	// Node 3 learns that 2 leads; its acknowledgement is not delivered
	// yet, so 2 has not applied "set a 1" (raft counts it as a pending
	// change).
	for i := 0; ; i++ {
		if l, _, _ := c.Hosts[3].Leader(1); l == 2 {
			break
		}
		if i == 20 {
			t.Fatalf("node 3 did not learn that 2 leads\n%s", c.Status())
		}
		c.Net.Deliver()
		c.Hosts[3].Process()
	}
	if v := c.SMs[2][1].Get("a"); v != "" {
		t.Fatalf("node 2 applied a=%q already: the test needs an unapplied entry", v)
	}
	cc := c.Hosts[3].ChangeMembershipAsync(1, multiraft.Change{Kind: multiraft.AddLearner, Node: 4}, nil)
	w := c.Hosts[3].ProposeAsync(1, []byte("set b 2"))
	c.Hosts[3].Process()
	if _, err := awaitChange(t, c, w, 20); err != nil {
		t.Fatalf("a write proposed after a follower's membership change: %v (held behind it)\n%s", err, c.Status())
	}
	if _, err := awaitChange(t, c, cc, 1); !errors.Is(err, multiraft.ErrNotLeader) {
		t.Fatalf("a follower's membership change: %v, want ErrNotLeader", err)
	}
	if st, _ := c.Hosts[2].GroupStatus(1); len(st.Learners) != 0 {
		t.Fatalf("learners %v: the follower's change applied", st.Learners)
	}
}

// newLeaderWithUnapplied makes node 2 the leader of group 1 while its log
// holds what node 1 committed last (set up by commit, which node 1 commits
// with node 3 only) unapplied: raft counts that as a pending change.
func newLeaderWithUnapplied(t *testing.T, c *mrtest.Cluster, commit func() multiraft.Future) {
	t.Helper()
	f := commit()
	c.Process() // 1 appends and sends
	c.Process() // 2 and 3 append and acknowledge
	c.Net.SetLink(1, 2, transport.LinkBlackHole)
	must(t, c.Stabilize())
	select {
	case <-f.Done():
		if _, err := f.Result(); err != nil {
			t.Fatal(err)
		}
	default:
		t.Fatalf("node 1 did not commit\n%s", c.Status())
	}
	crashAndElectNode2(t, c)
}

// crashAndElectNode2 crashes node 1 and makes node 2 the leader of group
// 1, driving the cluster no further than that.
func crashAndElectNode2(t *testing.T, c *mrtest.Cluster) {
	t.Helper()
	c.Crash(1)
	must(t, c.Hosts[2].ForgetLeader(1))
	must(t, c.Hosts[3].ForgetLeader(1))
	must(t, c.Hosts[2].Campaign(1))
	for i := 0; ; i++ {
		if l, _, _ := c.Hosts[2].Leader(1); l == 2 {
			return
		}
		if i == 100 || c.Process() == 0 {
			t.Fatalf("node 2 did not win\n%s", c.Status())
		}
	}
}

// completionOrder drives c until every future is done (at most 300
// rounds) and returns their names in the order they completed, with
// their errors.
func completionOrder(c *mrtest.Cluster, names []string, fs []multiraft.Future) []string {
	var order []string
	done := make([]bool, len(fs))
	for i := 0; i < 300 && len(order) < len(fs); i++ {
		if c.Process() == 0 {
			c.Tick()
		}
		for j, f := range fs {
			select {
			case <-f.Done():
				if !done[j] {
					done[j] = true
					_, err := f.Result()
					order = append(order, fmt.Sprintf("%s:%v", names[j], err))
				}
			default:
			}
		}
	}
	return order
}

// What is proposed after a membership change raft refused waits for it,
// a second change included: the old term's change applying meanwhile
// does not release them ahead of it (review finding).
func TestRefusedChangeKeepsItsPlace(t *testing.T) {
	c := newCluster(t, mrtest.Options{Nodes: 3, Groups: 1})
	electAll(t, c)
	newLeaderWithUnapplied(t, c, func() multiraft.Future {
		return c.Hosts[1].ChangeMembershipAsync(1, multiraft.Change{Kind: multiraft.AddLearner, Node: 4}, nil)
	})
	if st, _ := c.Hosts[2].GroupStatus(1); len(st.Learners) != 0 {
		t.Fatalf("node 2 applied the old change already: %v", st.Learners)
	}
	h := c.Hosts[2]
	order := completionOrder(c, []string{"change(5)", "write", "change(6)"}, []multiraft.Future{
		h.ChangeMembershipAsync(1, multiraft.Change{Kind: multiraft.AddLearner, Node: 5}, nil),
		h.ProposeAsync(1, []byte("set b 2")),
		h.ChangeMembershipAsync(1, multiraft.Change{Kind: multiraft.AddLearner, Node: 6}, nil),
	})
	if fmt.Sprint(order) != "[change(5):<nil> write:<nil> change(6):<nil>]" {
		t.Fatalf("completion order %v, want change(5), write, change(6), all applied", order)
	}
	if st, _ := h.GroupStatus(1); fmt.Sprint(st.Learners) != "[4 5 6]" {
		t.Fatalf("learners %v", st.Learners)
	}
}

// Two refused changes in a row: the first is not lost (it used to be
// overwritten in the retry slot and never finished), and both apply.
func TestTwoRefusedChangesBothApply(t *testing.T) {
	c := newCluster(t, mrtest.Options{Nodes: 3, Groups: 1})
	electAll(t, c)
	// The old term's tail: a change that node 3 forwarded, and 6 MiB of
	// writes, so that the new leader applies it over two Readys. The
	// engine forwards no change, so node 3's forward is made by hand, as
	// raft would send it.
	cc, err := (&raftpb.ConfChangeV2{Changes: []raftpb.ConfChangeSingle{{Type: raftpb.ConfChangeAddLearnerNode, NodeID: 4}}}).Marshal()
	must(t, err)
	c.Hosts[1].HandleBatch(3, []transport.Envelope{{Group: 1, Msg: raftpb.Message{
		Type: raftpb.MsgProp, From: 3, To: 1, Entries: []raftpb.Entry{{Type: raftpb.EntryConfChangeV2, Data: cc}},
	}}})
	c.Process()
	c.Net.SetLink(2, 1, transport.LinkBlackHole)
	c.Net.SetLink(3, 1, transport.LinkBlackHole)
	big := strings.Repeat("x", 3<<19)
	for i := range 4 {
		c.Hosts[1].ProposeAsync(1, []byte(fmt.Sprintf("set w%d %s", i, big)))
		c.Process()
	}
	for range 10 {
		c.Process()
	}
	c.Net.HealAll()
	crashAndElectNode2(t, c)
	h := c.Hosts[2]
	order := completionOrder(c, []string{"change(5)", "change(6)"}, []multiraft.Future{
		h.ChangeMembershipAsync(1, multiraft.Change{Kind: multiraft.AddLearner, Node: 5}, nil),
		h.ChangeMembershipAsync(1, multiraft.Change{Kind: multiraft.AddLearner, Node: 6}, nil),
	})
	if fmt.Sprint(order) != "[change(5):<nil> change(6):<nil>]" {
		t.Fatalf("completion order %v, want change(5), change(6), both applied", order)
	}
	if st, _ := h.GroupStatus(1); fmt.Sprint(st.Learners) != "[4 5 6]" {
		t.Fatalf("learners %v", st.Learners)
	}
}

// A received snapshot's file waiting in the inbox of a group that is
// removed goes with the group (review finding).
func TestSnapshotFileGoesWithRemovedGroup(t *testing.T) {
	c := newCluster(t, mrtest.Options{Nodes: 3, Groups: 1})
	electAll(t, c)
	st, _ := c.Hosts[2].GroupStatus(1)
	path := filepath.Join(t.TempDir(), "g1-received")
	must(t, os.WriteFile(path, []byte("state"), 0o644))
	c.Hosts[2].HandleBatch(1, []transport.Envelope{{Group: 1, Msg: raftpb.Message{
		Type: raftpb.MsgSnap, From: 1, To: 2, Term: st.Term,
		Snapshot: &raftpb.Snapshot{Data: transport.FileMarker(path),
			Metadata: raftpb.SnapshotMetadata{Index: 1000, Term: st.Term, ConfState: raftpb.ConfState{Voters: []uint64{1, 2, 3}}}},
	}}})
	done, err := c.Hosts[2].RemoveGroupAsync(1)
	must(t, err)
	for range 10 {
		c.Process()
	}
	<-done
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("the received snapshot's file outlived its group: %v", err)
	}
}

// An empty replica takes a received snapshot; raft's storage names its
// file, and the node dies before the restore is durable. At the next start
// the clean-up of the snapshot directory keeps that file (the range may
// only start later, when a leader asks for it), and the replica restores
// from it (review finding: the file was removed, and the replica could
// never start again).
func TestStoredSnapshotFileSurvivesCleanUp(t *testing.T) {
	dir := t.TempDir()
	store := storage.NewMem()
	var crash atomic.Bool
	newHost := func() *multiraft.Host {
		h, err := multiraft.NewHost(multiraft.Config{
			NodeID: 4, Store: store, Manual: true,
			Transport: transport.NewMemNetwork(transport.MemOptions{Manual: true}).Transport(4),
			FailPoint: func(name string) error {
				if crash.Load() && name == multiraft.FailBeforeApply {
					return errors.New("crash")
				}
				return nil
			},
		})
		must(t, err)
		return h
	}
	h := newHost()
	must(t, h.StartGroup(1, nil, mrtest.NewKV()))
	src := mrtest.NewKV()
	must(t, src.Apply([]multiraft.Command{{Index: 50, Data: []byte("set kept yes")}}))
	var buf bytes.Buffer
	must(t, src.Snapshot(&buf))
	path := filepath.Join(dir, "g1-123")
	must(t, os.WriteFile(path, buf.Bytes(), 0o644))
	must(t, os.WriteFile(filepath.Join(dir, "g1-122"), []byte("an older one"), 0o644))
	crash.Store(true)
	h.HandleBatch(1, []transport.Envelope{{Group: 1, Msg: raftpb.Message{
		Type: raftpb.MsgSnap, From: 1, To: 4, Term: 2,
		Snapshot: &raftpb.Snapshot{Data: transport.FileMarker(path), Metadata: raftpb.SnapshotMetadata{
			Index: 50, Term: 2, ConfState: raftpb.ConfState{Voters: []uint64{1, 2, 3}, Learners: []uint64{4}}}},
	}}})
	h.Process()
	if h.Err() == nil {
		t.Fatal("the failure point did not stop the host")
	}
	h.Stop()
	must(t, transport.CleanSnapshotDir(dir, func(group uint64, p string) bool {
		stored, ok := multiraft.StoredSnapshotFile(store, group)
		return ok && stored == p
	}))
	if entries, _ := os.ReadDir(dir); len(entries) != 1 || entries[0].Name() != "g1-123" {
		t.Fatalf("after the clean-up: %v, want only the stored snapshot's file", entries)
	}
	crash.Store(false)
	h2 := newHost()
	defer h2.Stop()
	sm := mrtest.NewKV()
	must(t, h2.StartGroup(1, nil, sm))
	if v := sm.Get("kept"); v != "yes" {
		t.Fatalf("restored kept=%q", v)
	}
}

// A membership change raft would accept and then panic on at apply (the
// last voter removed), or that does not match its kind, is refused with
// ErrInvalidRequest and changes nothing; the group keeps committing.
func TestMembershipChangeChecked(t *testing.T) {
	c := newCluster(t, mrtest.Options{Nodes: 3, Groups: 1})
	electAll(t, c)
	l := c.Leader(1)
	h := c.Hosts[l]
	var others []uint64
	for id := uint64(1); id <= 3; id++ {
		if id != l {
			others = append(others, id)
		}
	}
	for _, bad := range []struct {
		kind multiraft.ChangeKind
		node uint64
	}{
		{multiraft.RemoveMember, 9},       // not a member
		{multiraft.PromoteLearner, 4},     // not a learner
		{multiraft.AddLearner, others[0]}, // a voter
	} {
		if _, err := awaitChange(t, c, h.ChangeMembershipAsync(1, multiraft.Change{Kind: bad.kind, Node: bad.node}, nil), 5); !errors.Is(err, multiraft.ErrInvalidRequest) {
			t.Fatalf("change %v of node %d: %v, want ErrInvalidRequest", bad.kind, bad.node, err)
		}
	}
	for _, id := range others {
		if _, err := awaitChange(t, c, h.ChangeMembershipAsync(1, multiraft.Change{Kind: multiraft.RemoveMember, Node: id}, nil), 50); err != nil {
			t.Fatalf("remove node %d: %v\n%s", id, err, c.Status())
		}
	}
	if _, err := awaitChange(t, c, h.ChangeMembershipAsync(1, multiraft.Change{Kind: multiraft.RemoveMember, Node: l}, nil), 5); !errors.Is(err, multiraft.ErrInvalidRequest) {
		t.Fatalf("remove the last voter: %v, want ErrInvalidRequest", err)
	}
	if _, err := c.Propose(l, 1, "set still here"); err != nil {
		t.Fatalf("a write after the refused changes: %v", err)
	}
	if st, _ := h.GroupStatus(1); fmt.Sprint(st.Voters) != fmt.Sprintf("[%d]", l) {
		t.Fatalf("voters %v, want [%d]", st.Voters, l)
	}
}

// A leader that removes itself steps down once the change applies, and
// the remaining voters elect one of themselves; the removed node does not
// keep leading as a non-member.
func TestRemovedLeaderStepsDown(t *testing.T) {
	c := newCluster(t, mrtest.Options{Nodes: 3, Groups: 1})
	electAll(t, c)
	l := c.Leader(1)
	if _, err := awaitChange(t, c, c.Hosts[l].ChangeMembershipAsync(1, multiraft.Change{Kind: multiraft.RemoveMember, Node: l}, nil), 50); err != nil {
		t.Fatalf("remove the leader, node %d: %v\n%s", l, err, c.Status())
	}
	if st, _ := c.Hosts[l].GroupStatus(1); st.Role == "StateLeader" {
		t.Fatalf("node %d still leads after applying its removal: %+v", l, st)
	}
	for i := 0; ; i++ {
		if nl := c.Leader(1); nl != 0 && nl != l {
			break
		}
		if i == 100 {
			t.Fatalf("no leader among the remaining voters after %d ticks\n%s", i, c.Status())
		}
		c.Tick()
		must(t, c.Stabilize())
	}
	if _, err := c.Propose(c.Leader(1), 1, "set after removal yes"); err != nil {
		t.Fatal(err)
	}
}

// A change checked against a configuration a new leader has not applied
// yet is not refused for it: node 1 adds learner 4 and applies it (the
// caller is told it is done), then node 2 leads with that change in its
// log, unapplied, and is asked to remove learner 4. Checked against the
// configuration node 2 had applied, 4 is no member; the engine checks it
// again once node 2 applied its log, and the removal applies.
func TestChangeCheckedAfterInheritedTail(t *testing.T) {
	c := newCluster(t, mrtest.Options{Nodes: 3, Groups: 1})
	electAll(t, c)
	newLeaderWithUnapplied(t, c, func() multiraft.Future {
		return c.Hosts[1].ChangeMembershipAsync(1, multiraft.Change{Kind: multiraft.AddLearner, Node: 4}, nil)
	})
	if st, _ := c.Hosts[2].GroupStatus(1); len(st.Learners) != 0 {
		t.Fatalf("node 2 applied the change already: learners %v", st.Learners)
	}
	if _, err := awaitChange(t, c, c.Hosts[2].ChangeMembershipAsync(1, multiraft.Change{Kind: multiraft.RemoveMember, Node: 4}, nil), 20); err != nil {
		t.Fatalf("remove learner 4 on the new leader: %v\n%s", err, c.Status())
	}
	if st, _ := c.Hosts[2].GroupStatus(1); len(st.Learners) != 0 || fmt.Sprint(st.Voters) != "[1 2 3]" {
		t.Fatalf("voters %v learners %v, want [1 2 3] and none", st.Voters, st.Learners)
	}
}

// A state machine that keeps its own record of the membership
// (MembershipApplier) sees every change as it applies, with the data its
// proposer gave, and may refuse it: then every replica applies an empty
// change in its place, the membership stays, the proposer gets
// ErrChangeRefused, and the group goes on (a write after it is not held).
// mrtest.KV refuses a change whose data is RefuseChange.
func TestStateMachineRefusesChange(t *testing.T) {
	c := newCluster(t, mrtest.Options{Nodes: 3, Groups: 1})
	electAll(t, c)
	must(t, c.AddNode(4))
	l := c.Leader(1)
	ask := func(kind multiraft.ChangeKind, data string) error {
		t.Helper()
		_, err := awaitChange(t, c, c.Hosts[l].ChangeMembershipAsync(1, multiraft.Change{Kind: kind, Node: 4}, []byte(data)), 50)
		return err
	}
	if err := ask(multiraft.AddLearner, mrtest.RefuseChange); !errors.Is(err, multiraft.ErrChangeRefused) {
		t.Fatalf("refused change: %v, want ErrChangeRefused", err)
	}
	for _, id := range []uint64{1, 2, 3} {
		if st, _ := c.Hosts[id].GroupStatus(1); len(st.Learners) != 0 || fmt.Sprint(st.Voters) != "[1 2 3]" {
			t.Fatalf("node %d after a refused change: voters %v learners %v", id, st.Voters, st.Learners)
		}
	}
	if _, err := c.Propose(l, 1, "set after refused"); err != nil {
		t.Fatalf("a write after a refused change: %v", err)
	}
	if err := ask(multiraft.AddLearner, "plan 7"); err != nil {
		t.Fatal(err)
	}
	if err := ask(multiraft.PromoteLearner, "plan 8"); err != nil {
		t.Fatal(err)
	}
	want := []string{"add-learner 4 refuse false", "add-learner 4 plan 7 true", "promote 4 plan 8 true"}
	var idx []uint64
	for _, id := range []uint64{1, 2, 3} {
		got := c.SMs[id][1].Changes()
		var s []string
		for _, ch := range got {
			s = append(s, fmt.Sprintf("%v %d %s %v", ch.Change.Kind, ch.Change.Node, ch.Data, ch.Taken))
		}
		if strings.Join(s, "|") != strings.Join(want, "|") {
			t.Fatalf("node %d saw changes %q, want %q", id, s, want)
		}
		var at []uint64
		for _, ch := range got {
			at = append(at, ch.Index)
		}
		if idx == nil {
			idx = at
		} else if !slices.Equal(at, idx) {
			t.Fatalf("node %d saw the changes at %v, node 1 at %v", id, at, idx)
		}
	}
	if st, _ := c.Hosts[l].GroupStatus(1); fmt.Sprint(st.Voters) != "[1 2 3 4]" {
		t.Fatalf("voters %v after the promotion, want [1 2 3 4]", st.Voters)
	}
	// Too much data is refused before raft sees it.
	big := make([]byte, multiraft.MaxChangeData+1)
	if _, err := awaitChange(t, c, c.Hosts[l].ChangeMembershipAsync(1, multiraft.Change{Kind: multiraft.RemoveMember, Node: 4}, big), 5); !errors.Is(err, multiraft.ErrInvalidRequest) {
		t.Fatalf("oversized change data: %v, want ErrInvalidRequest", err)
	}
}

// A replica removed with RemoveReplicaAsync keeps its term and vote, and
// nothing else: started again it is empty at that term, so it neither
// votes twice in a term nor takes a leader of a term it had left behind
// (RemoveGroupAsync keeps nothing: the negative control).
func TestRemoveReplicaKeepsVote(t *testing.T) {
	c := newCluster(t, mrtest.Options{Nodes: 3, Groups: 2})
	electAll(t, c)
	if _, err := c.Propose(c.Leader(1), 1, "set a 1"); err != nil {
		t.Fatal(err)
	}
	h := c.Hosts[2]
	for _, g := range []uint64{1, 2} {
		before, err := h.Store().Load(g)
		must(t, err)
		remove := h.RemoveReplicaAsync
		if g == 2 {
			remove = h.RemoveGroupAsync
		}
		done, err := remove(g)
		must(t, err)
		for range 10 {
			c.Process()
		}
		<-done
		after, err := h.Store().Load(g)
		must(t, err)
		want := raftpb.HardState{Term: before.HardState.Term, Vote: before.HardState.Vote}
		if g == 2 {
			want = raftpb.HardState{}
		}
		if after.HardState != want || len(after.Entries) != 0 || len(after.ConfState.Voters) != 0 || after.Snapshot.Metadata.Index != 0 {
			t.Fatalf("group %d after removal: hard state %+v (want %+v), %d entries, conf %v, snapshot at %d",
				g, after.HardState, want, len(after.Entries), after.ConfState, after.Snapshot.Metadata.Index)
		}
		if before.HardState.Term < 2 || before.HardState.Commit == 0 {
			t.Fatalf("group %d: nothing to keep: %+v", g, before.HardState)
		}
	}
	// Started again, the kept replica is an empty one at its old term,
	// and one stale message at an older term moves it nowhere.
	before, err := h.Store().Load(1)
	must(t, err)
	must(t, h.StartGroup(1, nil, mrtest.NewKV()))
	h.HandleBatch(3, []transport.Envelope{{Group: 1, Msg: raftpb.Message{
		Type: raftpb.MsgHeartbeat, From: 3, To: 2, Term: before.HardState.Term - 1, Commit: 5}}})
	c.Process()
	if st, err := h.GroupStatus(1); err != nil || st.Term < before.HardState.Term {
		t.Fatalf("restarted replica: %+v %v, want term %d", st, err, before.HardState.Term)
	}
}

// A replica started with NoVoteWhileEmpty (one of a group that removed
// its node before) answers no vote or pre-vote request while it has no
// log and no snapshot: a candidate of a configuration that still counts
// the node could otherwise win with its vote. Without the flag the vote
// request is stepped: the replica takes its term and grants its vote (the
// control).
func TestNoVoteWhileEmpty(t *testing.T) {
	for _, noVote := range []bool{true, false} {
		h, err := multiraft.NewHost(multiraft.Config{
			NodeID: 4, Store: storage.NewMem(), Manual: true,
			Transport: transport.NewMemNetwork(transport.MemOptions{Manual: true}).Transport(4),
		})
		must(t, err)
		must(t, h.StartGroups([]multiraft.GroupStart{{ID: 1, SM: mrtest.NewKV(), NoVoteWhileEmpty: noVote}}))
		for _, typ := range []raftpb.MessageType{raftpb.MsgPreVote, raftpb.MsgVote} {
			h.HandleBatch(2, []transport.Envelope{{Group: 1, Msg: raftpb.Message{
				Type: typ, From: 2, To: 4, Term: 7, LogTerm: 5, Index: 20}}})
			h.Process()
		}
		hs := h.Store()
		st, err := hs.Load(1)
		must(t, err)
		voted := st.HardState.Term == 7 && st.HardState.Vote == 2
		if voted == noVote {
			t.Fatalf("NoVoteWhileEmpty %v: hard state %+v after a vote request at term 7 from 2", noVote, st.HardState)
		}
		h.Stop()
	}
}
