package multiraft_test

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/cockroachdb/datadriven"

	"github.com/flotilla/flotilla/internal/mrtest"
	"github.com/flotilla/flotilla/multiraft"
	"github.com/flotilla/flotilla/transport"
)

// TestInteraction runs the scenarios under testdata/: a whole cluster in
// one goroutine, driven by hand (see mrtest). Regenerate the expected
// output with: go test ./multiraft -run TestInteraction -rewrite
//
// Commands:
//
//	cluster nodes=N groups=G [snapshot-entries=S] [failover=off] [forwarding=off]
//	campaign node=N group=G
//	tick [n=K]                       tick K times, stabilizing after each
//	propose node=N group=G           the input is the command
//	read node=N group=G key=K
//	read-many nodes=(A,B,...) group=G key=K   reads started at once, no ticks
//	link from=A to=B state=ok|blackhole|cut
//	isolate node=N state=ok|blackhole|cut
//	forget-leader node=N group=G     the follower forgets its leader
//	crash node=N / restart node=N
//	report-unreachable node=N peer=P
//	events node=N                    leader events since the last call
//	transfer node=N group=G to=M       starts a leadership transfer, no wait
//	propose-async node=N group=G name=X   the input is the command; no wait
//	outcome name=X                   pending, or the result of propose-async
//	                                 or change-async X
//	campaign node=N group=G rounds=K   campaigns, then K rounds instead of
//	                                 stabilizing
//	process [n=K]                    K rounds of processing and delivery, no tick
//	add-node node=N                  a new node, with every group empty
//	change-async node=N group=G op=add-learner|add-voter|promote|remove target=M name=X
//	                                 proposes a membership change; no wait
//	membership node=N group=G        the group's voters and learners on node N
//	status
func TestInteraction(t *testing.T) {
	datadriven.Walk(t, "testdata", func(t *testing.T, path string) {
		var c *mrtest.Cluster
		subs := map[uint64]*multiraft.Subscription{}
		futures := map[string]multiraft.Future{}
		changes := map[string]multiraft.Future{}
		var transfers []chan error
		defer func() {
			if c != nil {
				c.Close()
			}
			for _, done := range transfers {
				<-done // Close failed whatever was left
			}
		}()
		u := func(d *datadriven.TestData, key string) uint64 {
			var v uint64
			d.ScanArgs(t, key, &v)
			return v
		}
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			errOr := func(s string, err error) string {
				if err != nil {
					return fmt.Sprintf("error: %v\n", err)
				}
				return s
			}
			switch d.Cmd {
			case "cluster":
				o := mrtest.Options{Nodes: int(u(d, "nodes")), Groups: int(u(d, "groups"))}
				if d.HasArg("snapshot-entries") {
					o.SnapshotEntries = u(d, "snapshot-entries")
				}
				off := func(key string) bool {
					var v string
					if d.HasArg(key) {
						d.ScanArgs(t, key, &v)
					}
					return v == "off"
				}
				o.DisableFailover = off("failover")
				o.DisableProposalForwarding = off("forwarding")
				if d.HasArg("quiesce") {
					var v string
					d.ScanArgs(t, "quiesce", &v)
					o.Quiesce = v == "on"
				}
				var err error
				c, err = mrtest.NewCluster(o)
				if err != nil {
					return errOr("", err)
				}
				for _, n := range c.Nodes() {
					subs[n] = c.Hosts[n].Subscribe()
				}
				return c.Status()
			case "campaign":
				if !d.HasArg("rounds") {
					err := c.Campaign(u(d, "node"), u(d, "group"))
					return errOr(c.Status(), err)
				}
				if err := c.Hosts[u(d, "node")].Campaign(u(d, "group")); err != nil {
					return errOr("", err)
				}
				for range u(d, "rounds") {
					c.Process()
				}
				return c.Status()
			case "process":
				n := uint64(1)
				if d.HasArg("n") {
					n = u(d, "n")
				}
				for range n {
					c.Process()
				}
				return c.Status()
			case "add-node":
				n := u(d, "node")
				if err := c.AddNode(n); err != nil {
					return errOr("", err)
				}
				subs[n] = c.Hosts[n].Subscribe()
				return c.Status()
			case "change-async":
				var name, op string
				d.ScanArgs(t, "name", &name)
				d.ScanArgs(t, "op", &op)
				kind, ok := map[string]multiraft.ChangeKind{"add-learner": multiraft.AddLearner,
					"add-voter": multiraft.AddVoter, "promote": multiraft.PromoteLearner, "remove": multiraft.RemoveMember}[op]
				if !ok {
					d.Fatalf(t, "unknown op %q", op)
				}
				var data []byte
				if d.HasArg("data") {
					var v string
					d.ScanArgs(t, "data", &v)
					data = []byte(v)
				}
				changes[name] = c.Hosts[u(d, "node")].ChangeMembershipAsync(u(d, "group"), multiraft.Change{Kind: kind, Node: u(d, "target")}, data)
				return "ok\n"
			case "applied-changes":
				// The membership changes node's state machine of group
				// saw (mrtest.KV is a MembershipApplier).
				var b strings.Builder
				for _, ch := range c.SMs[u(d, "node")][u(d, "group")].Changes() {
					fmt.Fprintf(&b, "index %d: %v node %d data %q taken %v\n", ch.Index, ch.Change.Kind, ch.Change.Node, ch.Data, ch.Taken)
				}
				return b.String()
			case "membership":
				st, err := c.Hosts[u(d, "node")].GroupStatus(u(d, "group"))
				return errOr(fmt.Sprintf("voters %v learners %v\n", st.Voters, st.Learners), err)
			case "forget-leader":
				if err := c.Hosts[u(d, "node")].ForgetLeader(u(d, "group")); err != nil {
					return errOr("", err)
				}
				err := c.Stabilize()
				return errOr(c.Status(), err)
			case "tick":
				n := uint64(1)
				if d.HasArg("n") {
					n = u(d, "n")
				}
				err := c.TickStable(int(n))
				return errOr(c.Status(), err)
			case "propose":
				res, err := c.Propose(u(d, "node"), u(d, "group"), strings.TrimSpace(d.Input))
				return errOr(fmt.Sprintf("ok, previous value %q\n", res), err)
			case "read":
				var key string
				d.ScanArgs(t, "key", &key)
				v, err := c.Read(u(d, "node"), u(d, "group"), key)
				return errOr(fmt.Sprintf("%s=%q\n", key, v), err)
			case "transfer":
				h, g, to := c.Hosts[u(d, "node")], u(d, "group"), u(d, "to")
				done := make(chan error, 1)
				transfers = append(transfers, done)
				go func() { done <- h.TransferLeadership(context.Background(), g, to) }()
				// The request is in the group's inbox once the call has
				// queued it; Process would race the goroutine, so wait for
				// the inbox by polling the Host (no raft step runs here).
				for !h.HasWork(g) {
					runtime.Gosched()
				}
				return "started\n"
			case "propose-async":
				var name string
				d.ScanArgs(t, "name", &name)
				futures[name] = c.Hosts[u(d, "node")].ProposeAsync(u(d, "group"), []byte(strings.TrimSpace(d.Input)))
				return "ok\n"
			case "outcome":
				var name string
				d.ScanArgs(t, "name", &name)
				f, change := changes[name]
				if !change {
					f = futures[name]
				}
				select {
				case <-f.Done():
					res, err := f.Result()
					if change {
						return errOr("applied\n", err)
					}
					return errOr(fmt.Sprintf("applied, previous value %q\n", res), err)
				default:
					return "pending\n"
				}
			case "read-many":
				var key string
				var nodes []string
				d.ScanArgs(t, "key", &key)
				d.ScanArgs(t, "nodes", &nodes)
				var ids []uint64
				for _, n := range nodes {
					var id uint64
					if _, err := fmt.Sscan(n, &id); err != nil {
						d.Fatalf(t, "bad node %q", n)
					}
					ids = append(ids, id)
				}
				vals, err := c.ReadMany(ids, u(d, "group"), key)
				if err != nil {
					return errOr("", err)
				}
				var out string
				for i, id := range ids {
					out += fmt.Sprintf("n%d: %s=%s\n", id, key, vals[i])
				}
				return out
			case "link", "isolate":
				var st string
				d.ScanArgs(t, "state", &st)
				s := map[string]transport.LinkState{"ok": transport.LinkOK, "blackhole": transport.LinkBlackHole, "cut": transport.LinkCut}[st]
				if d.Cmd == "link" {
					c.Net.SetLink(u(d, "from"), u(d, "to"), s)
				} else {
					c.Net.Isolate(u(d, "node"), s)
				}
				return "ok\n"
			case "crash":
				n := u(d, "node")
				subs[n].Close()
				c.Crash(n)
				return c.Status()
			case "restart":
				n := u(d, "node")
				if err := c.Restart(n); err != nil {
					return errOr("", err)
				}
				subs[n] = c.Hosts[n].Subscribe()
				err := c.Stabilize()
				return errOr(c.Status(), err)
			case "report-unreachable":
				h := c.Hosts[u(d, "node")]
				before := h.UnreachableReportsApplied()
				h.ReportUnreachable(u(d, "peer"))
				processed := h.Process()
				return fmt.Sprintf("groups processed before the tick: %d, reports applied: %d\n",
					processed, h.UnreachableReportsApplied()-before)
			case "events":
				var out string
				for _, ev := range drain(t, subs[u(d, "node")]) {
					out += fmt.Sprintf("group %d leader %d term %d\n", ev.Group, ev.Leader, ev.Term)
				}
				if out == "" {
					out = "none\n"
				}
				return out
			case "status":
				return c.Status()
			case "quiet":
				// Which replicas of group are quiesced; how often the
				// node's replicas (of any group) woke, and how often a
				// follower's leader quiesced while it waited for something
				// of its own (its election timer stopped).
				g := u(d, "group")
				var out string
				for _, n := range c.Nodes() {
					h := c.Hosts[n]
					if h == nil {
						out += fmt.Sprintf("n%d down\n", n)
						continue
					}
					st, err := h.GroupStatus(g)
					if err != nil {
						return errOr("", err)
					}
					state := "awake"
					if st.Quiesced {
						state = "quiesced"
					}
					out += fmt.Sprintf("n%d %s; this node's replicas woke %d times, waited behind a quiesced leader %d times\n",
						n, state, h.Wakes(), h.LeaderQuietFollowers())
				}
				return out
			default:
				d.Fatalf(t, "unknown command %q", d.Cmd)
				return ""
			}
		})
	})
}
