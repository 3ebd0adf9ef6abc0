package multiraft_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
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
		if _, err := awaitChange(t, c, c.Hosts[1].ChangeMembershipAsync(1, step.kind, step.node), 50); err != nil {
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
	cc := c.Hosts[2].ChangeMembershipAsync(1, multiraft.AddLearner, 4)
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
	newLeaderWithUnapplied(t, c, func() multiraft.Future { return c.Hosts[1].ChangeMembershipAsync(1, multiraft.AddLearner, 4) })
	if st, _ := c.Hosts[2].GroupStatus(1); len(st.Learners) != 0 {
		t.Fatalf("node 2 applied the old change already: %v", st.Learners)
	}
	h := c.Hosts[2]
	order := completionOrder(c, []string{"change(5)", "write", "change(6)"}, []multiraft.Future{
		h.ChangeMembershipAsync(1, multiraft.AddLearner, 5),
		h.ProposeAsync(1, []byte("set b 2")),
		h.ChangeMembershipAsync(1, multiraft.AddLearner, 6),
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
	// The old term's tail: a forwarded change and 6 MiB of writes, so that
	// the new leader applies it over two Readys.
	c.Hosts[3].ChangeMembershipAsync(1, multiraft.AddLearner, 4) // forwarded to 1
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
		h.ChangeMembershipAsync(1, multiraft.AddLearner, 5),
		h.ChangeMembershipAsync(1, multiraft.AddLearner, 6),
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
