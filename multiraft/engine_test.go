package multiraft_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/flotilla/flotilla/internal/mrtest"
	"github.com/flotilla/flotilla/multiraft"
	"github.com/flotilla/flotilla/transport"
)

// electAll makes node ((g-1) mod nodes)+1 lead group g, deterministically.
func electAll(t *testing.T, c *mrtest.Cluster) {
	t.Helper()
	n := uint64(len(c.Nodes()))
	for g := uint64(1); g <= uint64(c.Opts.Groups); g++ {
		must(t, c.Hosts[(g-1)%n+1].Campaign(g))
	}
	must(t, c.Stabilize())
	must(t, c.TickStable(1))
	for g := uint64(1); g <= uint64(c.Opts.Groups); g++ {
		if l := c.Leader(g); l != (g-1)%n+1 {
			t.Fatalf("group %d led by %d, want %d\n%s", g, l, (g-1)%n+1, c.Status())
		}
	}
}

// A second membership change proposed while the first is pending must be
// held and proposed after the first applies: raft itself would turn it into
// an empty entry and its proposer would never hear back (seed 001). A
// command proposed in between must apply too.
func TestProposalsHeldOverConfChange(t *testing.T) {
	c := newCluster(t, mrtest.Options{Nodes: 3, Groups: 1})
	electAll(t, c)
	h := c.Hosts[1]
	f1 := h.ChangeMembershipAsync(1, multiraft.Change{Kind: multiraft.AddLearner, Node: 4}, nil)
	p := h.ProposeAsync(1, []byte("set k v"))
	f2 := h.ChangeMembershipAsync(1, multiraft.Change{Kind: multiraft.AddLearner, Node: 5}, nil)
	// One cycle on the leader: the first change goes to raft, the rest is
	// held, so the leader's log grows by exactly one entry.
	before, _ := h.GroupStatus(1)
	h.Process()
	must(t, c.Stabilize())
	for i, f := range []multiraft.Future{f1, p, f2} {
		for tick := 0; ; tick++ {
			select {
			case <-f.Done():
			default:
				if tick > 50 {
					t.Fatalf("request %d not done after 50 ticks\n%s", i, c.Status())
				}
				must(t, c.TickStable(1))
				continue
			}
			break
		}
		if _, err := f.Result(); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	st, _ := h.GroupStatus(1)
	if got := st.Learners; len(got) != 2 || got[0] != 4 || got[1] != 5 {
		t.Fatalf("learners %v, want [4 5]", got)
	}
	// Three entries: change, command, change, in that order.
	if st.Commit != before.Commit+3 {
		t.Fatalf("commit %d, want %d", st.Commit, before.Commit+3)
	}
	if v := c.SMs[2][1].Get("k"); v != "v" {
		t.Fatalf("follower has k=%q", v)
	}
}

// A leader-change event is published only once the new leader has
// committed an entry of its own term.
func TestLeaderEventOnlyAfterCommit(t *testing.T) {
	c := newCluster(t, mrtest.Options{Nodes: 3, Groups: 1})
	sub := c.Hosts[1].Subscribe()
	defer sub.Close()
	must(t, c.Hosts[1].Campaign(1))
	// Drive by hand until node 1 is leader, then drop every reply to it so
	// its first entry cannot commit.
	for i := 0; ; i++ {
		if i > 100 {
			t.Fatal("node 1 never became leader")
		}
		c.Process()
		if st, _ := c.Hosts[1].GroupStatus(1); st.Role == "StateLeader" {
			break
		}
	}
	c.Net.SetLink(2, 1, transport.LinkBlackHole)
	c.Net.SetLink(3, 1, transport.LinkBlackHole)
	must(t, c.Stabilize())
	if st, _ := c.Hosts[1].GroupStatus(1); st.Role != "StateLeader" || st.Leader != 1 {
		t.Fatalf("node 1 status %+v, want leader", st)
	}
	if evs := drain(t, sub); len(evs) != 0 {
		t.Fatalf("event before the leader committed in its term: %+v", evs)
	}
	c.Net.HealAll()
	// Heartbeats are coalesced and flushed once per tick, so the leader
	// hears the followers again within a few ticks.
	var evs []multiraft.LeaderEvent
	for i := 0; i < 10 && len(evs) == 0; i++ {
		must(t, c.TickStable(1))
		evs = drain(t, sub)
	}
	if len(evs) != 1 || evs[0].Leader != 1 || evs[0].Group != 1 {
		t.Fatalf("events %+v, want one for leader 1", evs)
	}
	st, _ := c.Hosts[1].GroupStatus(1)
	if evs[0].Term != st.Term {
		t.Fatalf("event term %d, status term %d", evs[0].Term, st.Term)
	}
}

// drain returns whatever events are pending, without waiting.
func drain(t *testing.T, s *multiraft.Subscription) []multiraft.LeaderEvent {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	b, err := s.Next(ctx)
	if err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	return b.Events
}

// Unreachable reports from the transport are only recorded; the groups'
// owners hand them to raft on the next tick (seed 000).
func TestUnreachableReportsDeferredToTick(t *testing.T) {
	c := newCluster(t, mrtest.Options{Nodes: 3, Groups: 4})
	electAll(t, c)
	h := c.Hosts[1]
	before := h.UnreachableReportsApplied()
	h.ReportUnreachable(2)
	h.ReportUnreachable(2)
	if n := h.Process(); n != 0 {
		t.Fatalf("a report scheduled %d groups before the tick", n)
	}
	if got := h.UnreachableReportsApplied(); got != before {
		t.Fatalf("reports applied before the tick: %d", got-before)
	}
	h.Tick()
	h.Process()
	// Two reports for one peer collapse into one; every group gets it.
	if got := h.UnreachableReportsApplied() - before; got != 4 {
		t.Fatalf("reports applied after the tick: %d, want 4 (one per group)", got)
	}
	must(t, c.TickStable(3))
	for g := uint64(1); g <= 4; g++ {
		if l := c.Leader(g); l != (g-1)%3+1 {
			t.Fatalf("group %d lost its leader after the report: %d", g, l)
		}
	}
}

// A follower that fell behind the truncation point catches up by snapshot.
func TestSnapshotCatchUp(t *testing.T) {
	c := newCluster(t, mrtest.Options{Nodes: 3, Groups: 1, SnapshotEntries: 20, CompactionOverhead: 5})
	electAll(t, c)
	c.Net.Isolate(3, transport.LinkBlackHole)
	for i := 0; i < 100; i++ {
		if _, err := c.Propose(1, 1, fmt.Sprintf("set k%d v%d", i, i)); err != nil {
			t.Fatal(err)
		}
	}
	if got := c.SMs[3][1].Len(); got != 0 {
		t.Fatalf("isolated node has %d keys", got)
	}
	st, err := c.Stores[1].Load(1)
	must(t, err)
	if st.Snapshot.Metadata.Index == 0 || len(st.Entries) >= 100 {
		t.Fatalf("leader log not truncated: snapshot at %d, %d entries", st.Snapshot.Metadata.Index, len(st.Entries))
	}
	c.Net.HealAll()
	must(t, c.TickStable(5))
	for i := 0; i < 100; i++ {
		if v := c.SMs[3][1].Get(fmt.Sprintf("k%d", i)); v != fmt.Sprintf("v%d", i) {
			t.Fatalf("node 3: k%d=%q after catch-up\n%s", i, v, c.Status())
		}
	}
	st3, err := c.Stores[3].Load(1)
	must(t, err)
	if st3.Snapshot.Metadata.Index == 0 {
		t.Fatal("node 3 caught up without a snapshot: the test proves nothing")
	}
}

// Every acknowledged proposal survives a crash of every node that loses
// their unsynced writes.
func TestRestartRecoversFromDisk(t *testing.T) {
	c := newCluster(t, mrtest.Options{Nodes: 3, Groups: 2, SnapshotEntries: 25})
	electAll(t, c)
	for i := 0; i < 60; i++ {
		g := uint64(i%2 + 1)
		if _, err := c.Propose(g, g, fmt.Sprintf("set k%d v%d", i, i)); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range c.Nodes() {
		c.Crash(n)
	}
	for _, n := range c.Nodes() {
		must(t, c.Restart(n))
	}
	electAll(t, c)
	for i := 0; i < 60; i++ {
		g := uint64(i%2 + 1)
		for _, n := range c.Nodes() {
			v, err := c.Read(n, g, fmt.Sprintf("k%d", i))
			must(t, err)
			if v != fmt.Sprintf("v%d", i) {
				t.Fatalf("node %d group %d: k%d=%q after restart", n, g, i, v)
			}
		}
	}
	// And the cluster takes new writes.
	if _, err := c.Propose(1, 1, "set after restart"); err != nil {
		t.Fatal(err)
	}
}

// The writes of many groups ready in one cycle share one batch and one
// sync.
func TestManyGroupsShareOneSync(t *testing.T) {
	const groups = 64
	c := newCluster(t, mrtest.Options{Nodes: 3, Groups: groups})
	for g := uint64(1); g <= groups; g++ {
		must(t, c.Hosts[1].Campaign(g))
	}
	must(t, c.Stabilize())
	must(t, c.TickStable(1))
	h := c.Hosts[1]
	var fs []multiraft.Future
	for g := uint64(1); g <= groups; g++ {
		fs = append(fs, h.ProposeAsync(g, []byte("set k v")))
	}
	before := c.Stores[1].Syncs()
	if n := h.Process(); n != groups {
		t.Fatalf("one cycle processed %d groups, want %d", n, groups)
	}
	if got := c.Stores[1].Syncs() - before; got != 1 {
		t.Fatalf("%d syncs for %d groups in one cycle, want 1", got, groups)
	}
	must(t, c.Stabilize())
	for i, f := range fs {
		<-f.Done()
		if _, err := f.Result(); err != nil {
			t.Fatalf("group %d: %v", i+1, err)
		}
	}
}

// Requests fail with clear sentinels instead of hanging.
func TestRequestErrors(t *testing.T) {
	c := newCluster(t, mrtest.Options{Nodes: 3, Groups: 1})
	h := c.Hosts[1]
	// No leader yet.
	f := h.ProposeAsync(1, []byte("set a b"))
	h.Process()
	<-f.Done()
	if _, err := f.Result(); !errors.Is(err, multiraft.ErrNoLeader) {
		t.Fatalf("propose without leader: %v", err)
	}
	if _, err := h.Propose(context.Background(), 99, nil); !errors.Is(err, multiraft.ErrGroupNotFound) {
		t.Fatalf("unknown group: %v", err)
	}
	if err := h.StartGroup(1, []uint64{1, 2, 3}, mrtest.NewKV()); !errors.Is(err, multiraft.ErrGroupExists) {
		t.Fatalf("double start: %v", err)
	}
	if err := h.ChangeMembership(context.Background(), 1, multiraft.AddVoter, 0); !errors.Is(err, multiraft.ErrInvalidRequest) {
		t.Fatalf("change for node 0: %v", err)
	}
	electAll(t, c)
	// A leader that loses its quorum: proposals end ambiguous, not hung.
	c.Net.Isolate(1, transport.LinkBlackHole)
	f = h.ProposeAsync(1, []byte("set a b"))
	for i := 0; i < 200; i++ {
		c.Tick()
		must(t, c.Stabilize())
	}
	select {
	case <-f.Done():
	default:
		t.Fatal("proposal to a cut-off leader still pending after 200 ticks")
	}
	if _, err := f.Result(); !errors.Is(err, multiraft.ErrAmbiguous) && !errors.Is(err, multiraft.ErrNoLeader) {
		t.Fatalf("cut-off leader: %v", err)
	}
	// Stopping the host fails what is pending.
	r := h.ReadAsync(1, []byte("a"))
	h.Stop()
	<-r.Done()
	if _, err := r.Result(); !errors.Is(err, multiraft.ErrStopped) {
		t.Fatalf("read across Stop: %v", err)
	}
	c.Hosts[1] = nil
}

func TestConfigValidation(t *testing.T) {
	tr := transport.NewMemNetwork(transport.MemOptions{Manual: true}).Transport(1)
	defer tr.Close()
	for _, cfg := range []multiraft.Config{
		{},
		{NodeID: 1, Transport: tr},
		{NodeID: 1, Transport: tr, DataDir: "x", ElectionTicks: 1, HeartbeatTicks: 1},
		{NodeID: 1, Transport: tr, DataDir: "x", SnapshotEntries: 5},
		{NodeID: 1, Transport: tr, DataDir: "x", Workers: 1000},
		{NodeID: 1, Transport: tr, DataDir: "x", EntryCacheBytes: 100},
		{NodeID: 1, Transport: tr, DataDir: "x", EntryCacheBytes: -2},
	} {
		if _, err := multiraft.NewHost(cfg); !errors.Is(err, multiraft.ErrConfig) {
			t.Errorf("config %+v: %v, want ErrConfig", cfg, err)
		}
	}
}

// A node joins as a learner, is promoted, and a voter is removed; the group
// keeps committing with the new membership.
func TestMembershipChanges(t *testing.T) {
	c := newCluster(t, mrtest.Options{Nodes: 3, Groups: 1, SnapshotEntries: 20, CompactionOverhead: 5})
	electAll(t, c)
	for i := 0; i < 30; i++ {
		if _, err := c.Propose(1, 1, fmt.Sprintf("set k%d v", i)); err != nil {
			t.Fatal(err)
		}
	}
	must(t, c.AddNode(4))
	change := func(kind multiraft.ChangeKind, node uint64) {
		t.Helper()
		f := c.Hosts[1].ChangeMembershipAsync(1, multiraft.Change{Kind: kind, Node: node}, nil)
		for i := 0; i < 50; i++ {
			must(t, c.TickStable(1))
			select {
			case <-f.Done():
				if _, err := f.Result(); err != nil {
					t.Fatalf("change %d node %d: %v", kind, node, err)
				}
				return
			default:
			}
		}
		t.Fatalf("change %d node %d not applied in 50 ticks", kind, node)
	}
	change(multiraft.AddLearner, 4)
	must(t, c.TickStable(3))
	if v := c.SMs[4][1].Get("k29"); v != "v" {
		t.Fatalf("learner did not catch up: k29=%q\n%s", v, c.Status())
	}
	change(multiraft.PromoteLearner, 4)
	change(multiraft.RemoveMember, 3)
	st, _ := c.Hosts[1].GroupStatus(1)
	if fmt.Sprint(st.Voters) != "[1 2 4]" || len(st.Learners) != 0 {
		t.Fatalf("membership voters=%v learners=%v", st.Voters, st.Learners)
	}
	c.Crash(3)
	if _, err := c.Propose(2, 1, "set after change"); err != nil {
		t.Fatal(err)
	}
	// Node 4's voice is needed now: cut node 2 and the group still commits.
	c.Net.Isolate(2, transport.LinkBlackHole)
	if _, err := c.Propose(1, 1, "set with four"); err != nil {
		t.Fatal(err)
	}
	if v := c.SMs[4][1].Get("with"); v != "four" {
		t.Fatalf("node 4 has with=%q", v)
	}
}

// Leadership moves on request, and the request returns once it has.
func TestTransferLeadership(t *testing.T) {
	c := newCluster(t, mrtest.Options{Nodes: 3, Groups: 2})
	electAll(t, c)
	h := c.Hosts[1]
	sub := h.Subscribe()
	defer sub.Close()
	drain(t, sub)
	// The request is queued before the call returns (a goroutine calling
	// TransferLeadership might not have queued it yet when the ticks below
	// ran out, on a loaded machine): drive the cluster until it is done.
	done := h.TransferLeadershipAsync(1, 3)
	for i := 0; i < 50; i++ {
		must(t, c.TickStable(1))
		select {
		case err := <-done:
			must(t, err)
			if l := c.Leader(1); l != 3 {
				t.Fatalf("leader after transfer: %d", l)
			}
			evs := drain(t, sub)
			if n := len(evs); n == 0 || evs[n-1].Leader != 3 {
				t.Fatalf("events after transfer: %+v", evs)
			}
			return
		default:
		}
	}
	t.Fatal("transfer did not finish in 50 ticks")
}

// A subscriber that never reads does not hold up the engine: its mailbox
// collapses to the latest state per group, says so, and the collapse is
// counted.
func TestSlowSubscriberSkipsToLatest(t *testing.T) {
	c := newCluster(t, mrtest.Options{Nodes: 3, Groups: 2})
	sub := c.Hosts[1].Subscribe()
	defer sub.Close()
	electAll(t, c)
	// Move group 1's leadership around far more often than the mailbox
	// (1024 events) holds, without reading.
	for i := 0; i < 700; i++ {
		to := uint64(i%3 + 1)
		if l := c.Leader(1); l == to {
			continue
		}
		must(t, c.Hosts[1].ForgetLeader(1))
		for _, n := range c.Nodes() {
			if n != to {
				must(t, c.Hosts[n].ForgetLeader(1))
			}
		}
		must(t, c.Campaign(to, 1))
	}
	must(t, c.TickStable(1))
	b, err := sub.Next(context.Background())
	must(t, err)
	if !b.Skipped {
		t.Fatalf("%d events and not marked skipped", len(b.Events))
	}
	if c.Hosts[1].EventsCollapsed() == 0 {
		t.Fatal("collapse not counted")
	}
	latest := map[uint64]multiraft.LeaderEvent{}
	for _, e := range b.Events {
		latest[e.Group] = e
	}
	if got, want := latest[1].Leader, c.Leader(1); got != want {
		t.Fatalf("latest event for group 1 names %d, leader is %d", got, want)
	}
	if len(b.Events) > 1024 {
		t.Fatalf("mailbox holds %d events, cap 1024", len(b.Events))
	}
}

// TestConfChangeHeldOverTransfer: a membership change, alone or followed by
// a proposal, that reaches a leader handing leadership away is held like a
// proposal: each gets exactly one outcome once the transfer is over (here
// the transfer completes, so both fail with ErrNotLeader, unappended). An
// earlier version held the proposal after the change in its place, which
// panicked on a change alone and finished the proposal twice.
func TestConfChangeHeldOverTransfer(t *testing.T) {
	for _, withPut := range []bool{false, true} {
		c := newCluster(t, mrtest.Options{Nodes: 3, Groups: 1, DisableProposalForwarding: true})
		must(t, c.Campaign(1, 1))
		h := c.Hosts[1]
		tr := h.TransferLeadershipAsync(1, 2)
		h.Process() // the transfer starts; its MsgTimeoutNow is not delivered yet
		var outcomes []int
		var errs []error
		cc := h.ChangeMembershipAsync(1, multiraft.Change{Kind: multiraft.AddLearner, Node: 4}, nil)
		var put multiraft.Future
		n := 1
		if withPut {
			put = h.ProposeAsync(1, []byte("set x 1"))
			n = 2
		}
		h.Process()
		must(t, c.TickStable(40))
		for i, f := range []multiraft.Future{cc, put}[:n] {
			select {
			case <-f.Done():
				_, err := f.Result()
				outcomes = append(outcomes, i)
				errs = append(errs, err)
			default:
			}
		}
		if len(outcomes) != n {
			t.Fatalf("withPut=%v: %d of %d requests finished", withPut, len(outcomes), n)
		}
		for _, err := range errs {
			if !errors.Is(err, multiraft.ErrNotLeader) {
				t.Errorf("withPut=%v: outcome %v, want ErrNotLeader (held, then refused unappended)", withPut, err)
			}
		}
		if err := <-tr; err != nil {
			t.Errorf("transfer: %v", err)
		}
	}
}
