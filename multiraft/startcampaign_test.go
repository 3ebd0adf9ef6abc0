package multiraft_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/flotilla/flotilla/internal/mrtest"
	"github.com/flotilla/flotilla/multiraft"
)

// startPaced starts 60 new groups on 3 nodes, each node expected to lead
// 20 (bootLeader), with at most max campaigns at once per node and peer
// lanes of queueCap messages per delivery round.
func startPaced(t *testing.T, max, queueCap int) *mrtest.Cluster {
	t.Helper()
	return startStable(t, mrtest.Options{Groups: 60, Quiesce: true, BootLeader: bootLeader,
		MaxStartCampaigns: max, QueueCap: queueCap})
}

// ledBy counts the groups node leads at term 2 (one election), and those
// it is expected to lead that have a leader at a later term (more than one
// election).
func ledBy(c *mrtest.Cluster, node uint64) (first, later int) {
	for g := uint64(1); g <= 60; g++ {
		if bootLeader(g) != node {
			continue
		}
		l, term, err := c.Hosts[node].Leader(g)
		switch {
		case err != nil || l == 0:
		case l == node && term == 2:
			first++
		default:
			later++
		}
	}
	return first, later
}

func dropped(c *mrtest.Cluster) uint64 {
	var n uint64
	for _, id := range c.Nodes() {
		for _, s := range c.Net.Transport(id).Stats() {
			n += s.Dropped
		}
	}
	return n
}

// TestStartCampaignsPaced: a node expected to lead 20 new groups campaigns
// for at most MaxStartCampaigns (2) at once, the next ones only as the
// earlier ones have a leader: after k ticks exactly 2k of its groups are
// led (each by it, after one election), none before its turn. With peer
// lanes of 12 messages per delivery round, nothing is dropped. The control
// campaigns for all 20 at the first tick: its pre-votes, and the answers
// to the other nodes' pre-votes, overrun the lanes, messages are dropped,
// and groups miss their leader (the 30,000-range start of BENCHMARKS.md
// "Quiescence", in small).
func TestStartCampaignsPaced(t *testing.T) {
	c := startPaced(t, 2, 12)
	for k := 1; k <= 10; k++ {
		if err := c.TickStable(1); err != nil {
			t.Fatal(err)
		}
		for _, id := range c.Nodes() {
			first, later := ledBy(c, id)
			if first != 2*k || later != 0 {
				t.Fatalf("tick %d: node %d leads %d of its groups after one election and %d after more; want %d and 0:\n%s",
					k, id, first, later, 2*k, c.Status())
			}
			if w := c.Hosts[id].StartCampaignsWaiting(); w != 20-2*k {
				t.Fatalf("tick %d: node %d has %d groups waiting, want %d", k, id, w, 20-2*k)
			}
		}
	}
	if d := dropped(c); d != 0 {
		t.Fatalf("paced start dropped %d messages", d)
	}

	ctl := startPaced(t, 1<<20, 12)
	if err := ctl.TickStable(1); err != nil {
		t.Fatal(err)
	}
	d := dropped(ctl)
	missed := 0
	for _, id := range ctl.Nodes() {
		first, _ := ledBy(ctl, id)
		missed += 20 - first
	}
	if d == 0 || missed == 0 {
		t.Fatalf("control (every campaign at once): %d messages dropped, %d of 60 groups without their leader after the first tick; want both > 0", d, missed)
	}
	t.Logf("control: %d messages dropped, %d of 60 groups not led by their expected leader after one tick", d, missed)
}

// TestStartCampaignWokenIsSkipped: a group waiting for its turn that
// something else woke (here a campaign of its own) runs on its own: its
// turn is skipped and the queue moves on. Node 1's 20 groups campaign one
// at a time; group 4, second in line, was woken and led before the first
// tick, so the other 19 take 19 ticks, not 20.
func TestStartCampaignWokenIsSkipped(t *testing.T) {
	c := startPaced(t, 1, 4096)
	if err := c.Hosts[1].Campaign(4); err != nil {
		t.Fatal(err)
	}
	if err := c.Stabilize(); err != nil {
		t.Fatal(err)
	}
	if l := c.Leader(4); l != 1 {
		t.Fatalf("group 4 led by %d after its own campaign, want 1", l)
	}
	for k := 1; k <= 19; k++ {
		if err := c.TickStable(1); err != nil {
			t.Fatal(err)
		}
		want := 19 - k
		if k == 1 {
			want = 19 // group 4 is skipped at the second tick
		}
		if w := c.Hosts[1].StartCampaignsWaiting(); w != want {
			t.Fatalf("tick %d: node 1 has %d groups waiting, want %d", k, w, want)
		}
	}
	for g := uint64(1); g <= 60; g += 3 {
		if l, term, _ := c.Hosts[1].Leader(g); l != 1 || term != 2 {
			t.Fatalf("group %d led by %d at term %d, want 1 at 2:\n%s", g, l, term, c.Status())
		}
	}
}

// TestStartCampaignRequeued: node 1 starts its 20 groups while nodes 2
// and 3 are down (still starting, in a real cluster). Its campaigns find
// no leader; each goes back to the queue after two election timeouts,
// quiesced again, so at no tick do more than MaxStartCampaigns (2) of its
// start groups run, where without the requeue every failed one would keep
// running its election timer. Once 2 and 3 are back, every group is led.
func TestStartCampaignRequeued(t *testing.T) {
	c := startPaced(t, 2, 4096)
	c.Crash(2)
	c.Crash(3)
	awake := func() int {
		n := 0
		for g := uint64(1); g <= 60; g += 3 {
			if st, err := c.Hosts[1].GroupStatus(g); err == nil && !st.Quiesced {
				n++
			}
		}
		return n
	}
	for k := 1; k <= 100; k++ {
		if err := c.TickStable(1); err != nil {
			t.Fatal(err)
		}
		if n := awake(); n > 2 {
			t.Fatalf("tick %d: %d of node 1's start groups run, want at most 2", k, n)
		}
	}
	if r := c.Hosts[1].StartCampaignRequeues(); r < 8 {
		t.Fatalf("%d start campaigns requeued in 100 ticks, want 8 (2 every 20 ticks from tick 1)", r)
	}
	for _, id := range []uint64{2, 3} {
		if err := c.Restart(id); err != nil {
			t.Fatal(err)
		}
	}
	for k := 1; k <= 200; k++ {
		if err := c.TickStable(1); err != nil {
			t.Fatal(err)
		}
		led := 0
		for g := uint64(1); g <= 60; g++ {
			if c.Leader(g) != 0 {
				led++
			}
		}
		if led == 60 {
			t.Logf("every group led %d ticks after nodes 2 and 3 came back", k)
			return
		}
	}
	t.Fatalf("not every group led 200 ticks after nodes 2 and 3 came back:\n%s", c.Status())
}

// TestStartRequeueOrderDeterministic: two runs of the same paced
// start must campaign the same groups at the same ticks (the simulation
// replays the order groups are queued in). paceStartCampaigns walks the
// starting set, a map, to requeue the campaigns that gave up, and appends
// their IDs to the tick's IDs in map order; the owners then requeue them
// (maybeRequeueStart) in the order they run, so the queue's order, and
// which groups campaign at later ticks, differs from run to run.
func TestStartRequeueOrderDeterministic(t *testing.T) {
	trace := func() string {
		c := startPaced(t, 7, 4096)
		c.Crash(2)
		c.Crash(3)
		var b strings.Builder
		for k := 1; k <= 200; k++ {
			if err := c.TickStable(1); err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&b, "%d:", k)
			for g := uint64(1); g <= 60; g += 3 {
				if st, err := c.Hosts[1].GroupStatus(g); err == nil && !st.Quiesced {
					fmt.Fprintf(&b, " %d", g)
				}
			}
			b.WriteString("\n")
		}
		return b.String()
	}
	first := trace()
	for run := 2; run <= 6; run++ {
		if got := trace(); got != first {
			a, b := strings.Split(first, "\n"), strings.Split(got, "\n")
			for i := range a {
				if a[i] != b[i] {
					t.Fatalf("run %d campaigns differently from run 1 at tick %s vs %s", run, b[i], a[i])
				}
			}
		}
	}
}

// TestStartGroupsLeaderNotMember: an expected leader outside the group's
// members is refused, and nothing starts (it could never campaign, and its
// turn would come back forever).
func TestStartGroupsLeaderNotMember(t *testing.T) {
	c, err := mrtest.NewCluster(mrtest.Options{Groups: 1, Quiesce: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	err = c.Hosts[1].StartGroups([]multiraft.GroupStart{{ID: 9, Members: []uint64{1, 2, 3}, SM: mrtest.NewKV(), Leader: 4}})
	if !errors.Is(err, multiraft.ErrInvalidRequest) {
		t.Fatalf("StartGroups with leader 4 outside members 1,2,3: %v, want ErrInvalidRequest", err)
	}
	if _, err := c.Hosts[1].GroupStatus(9); err == nil {
		t.Fatal("group 9 started anyway")
	}
}
