package multiraft

// The request API: proposals, reads, leadership, membership, status.

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

func (h *Host) lookup(id uint64) (*group, error) {
	if h.isStopped() {
		return nil, h.stoppedErr()
	}
	h.mu.RLock()
	g := h.mu.groups[id]
	h.mu.RUnlock()
	if g == nil {
		return nil, fmt.Errorf("%w: %d", ErrGroupNotFound, id)
	}
	return g, nil
}

// Future is the result of an asynchronous proposal.
type Future struct{ p *proposal }

// Done is closed once the result is known.
func (f Future) Done() <-chan struct{} { return f.p.done }

// Result returns the state machine's result and error; valid once Done is
// closed. The caller owns the result.
func (f Future) Result() ([]byte, error) { return f.p.result, f.p.err }

// ProposeAsync proposes cmd to group and returns at once. The Future
// completes with the state machine's result once the command is applied on
// this node, or with ErrNoLeader, ErrDropped, ErrAmbiguous,
// ErrGroupRemoved or ErrStopped. cmd is copied.
func (h *Host) ProposeAsync(group uint64, cmd []byte) Future {
	data := make([]byte, 8+len(cmd))
	copy(data[8:], cmd)
	p := &proposal{data: data, done: make(chan struct{})}
	h.submit(group, p)
	return Future{p}
}

// ProposeFunc proposes cmd to group like ProposeAsync, but hands the
// outcome to done instead of a Future, which saves a goroutine and a
// channel per proposal for callers that gather many outcomes (a server
// answering a stream of writes). done is called exactly once, with the
// state machine's result (owned by done) or one of ProposeAsync's errors.
// It runs on a scheduler worker, or on the caller's goroutine before
// ProposeFunc returns when the proposal fails at once. It must not block
// and must not call the Host: the worker that runs it is applying the
// group (seed 001: the engine never waits on its consumer). cmd is copied.
func (h *Host) ProposeFunc(group uint64, cmd []byte, done func(result []byte, err error)) {
	data := make([]byte, 8+len(cmd))
	copy(data[8:], cmd)
	h.submit(group, &proposal{data: data, cb: done})
}

func (h *Host) submit(group uint64, p *proposal) {
	p.key = h.newKey()
	if p.cc != nil {
		p.cc.Context = changeContext(p.key, p.kind, p.ccData)
	} else {
		binary.BigEndian.PutUint64(p.data, p.key)
	}
	g, err := h.lookup(group)
	if err != nil {
		p.finish(nil, err)
		return
	}
	g.in.Lock()
	if g.in.closed {
		g.in.Unlock()
		p.finish(nil, fmt.Errorf("%w: %d", ErrGroupRemoved, group))
		return
	}
	g.in.props = append(g.in.props, p)
	g.in.Unlock()
	h.sched.enqueue(group)
}

// Propose proposes cmd to group and waits for the state machine's result.
// It returns ctx's error if ctx ends first (the command may still apply),
// or one of the errors of ProposeAsync.
func (h *Host) Propose(ctx context.Context, group uint64, cmd []byte) ([]byte, error) {
	f := h.ProposeAsync(group, cmd)
	select {
	case <-f.p.done:
		return f.p.result, f.p.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// ReadFuture is the result of an asynchronous read.
type ReadFuture struct {
	r     *readReq
	g     *group
	query []byte
}

// Done is closed once the read index is confirmed and applied locally (or
// the read failed).
func (f ReadFuture) Done() <-chan struct{} { return f.r.done }

// Result runs the query against the state machine; valid once Done is
// closed. Errors as Read.
func (f ReadFuture) Result() ([]byte, error) {
	if f.r.err != nil {
		return nil, f.r.err
	}
	return f.g.sm.Query(f.query)
}

// ReadAsync starts a linearizable read of group and returns at once; see
// Read.
func (h *Host) ReadAsync(group uint64, query []byte) ReadFuture {
	r := &readReq{done: make(chan struct{})}
	fail := func(err error) ReadFuture {
		r.err = err
		close(r.done)
		return ReadFuture{r: r}
	}
	g, err := h.lookup(group)
	if err != nil {
		return fail(err)
	}
	g.in.Lock()
	if g.in.closed {
		g.in.Unlock()
		return fail(fmt.Errorf("%w: %d", ErrGroupRemoved, group))
	}
	g.in.reads = append(g.in.reads, r)
	g.in.Unlock()
	h.sched.enqueue(group)
	return ReadFuture{r: r, g: g, query: query}
}

// Read answers query on group's state machine linearizably: it waits until
// this replica has applied everything committed before the call (ReadIndex,
// batched with the other reads of the group), then calls Query on the
// caller's goroutine. Errors: ctx's, ErrNoLeader, ErrLeaderChanged,
// ErrTimeout (all safe to retry), ErrGroupNotFound, ErrStopped, or Query's.
func (h *Host) Read(ctx context.Context, group uint64, query []byte) ([]byte, error) {
	f := h.ReadAsync(group, query)
	select {
	case <-f.Done():
		return f.Result()
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// QueryLocal answers query from this replica's state without any check:
// a serializable, possibly stale read.
func (h *Host) QueryLocal(group uint64, query []byte) ([]byte, error) {
	g, err := h.lookup(group)
	if err != nil {
		return nil, err
	}
	return g.sm.Query(query)
}

// TransferLeadership asks the group's leader (which must be this node) to
// hand leadership to node to, and waits until this node sees to as leader.
// Proposals that reach this leader meanwhile are held, not dropped, and
// proposed again if the transfer fails, or failed with ErrNotLeader (never
// appended) once another node leads. Errors: ctx's, ErrTimeout,
// ErrGroupNotFound, ErrGroupRemoved, ErrStopped.
func (h *Host) TransferLeadership(ctx context.Context, group, to uint64) error {
	select {
	case err := <-h.TransferLeadershipAsync(group, to):
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// TransferLeadershipAsync is TransferLeadership without the wait: the
// channel (buffered) receives the outcome once.
func (h *Host) TransferLeadershipAsync(group, to uint64) <-chan error {
	done := make(chan error, 1)
	g, err := h.lookup(group)
	if err == nil && to == 0 {
		err = fmt.Errorf("%w: transfer to node 0", ErrInvalidRequest)
	}
	if err != nil {
		done <- err
		return done
	}
	t := &transfer{to: to, done: done}
	g.in.Lock()
	if g.in.closed {
		g.in.Unlock()
		done <- fmt.Errorf("%w: %d", ErrGroupRemoved, group)
		return done
	}
	g.in.transfers = append(g.in.transfers, t)
	g.in.Unlock()
	h.sched.enqueue(group)
	return done
}

// ChangeKind is a kind of membership change.
type ChangeKind uint8

const (
	// AddVoter adds a voting member.
	AddVoter ChangeKind = iota
	// AddLearner adds a non-voting member that receives the log.
	AddLearner
	// PromoteLearner makes a learner a voter.
	PromoteLearner
	// RemoveMember removes a voter or learner.
	RemoveMember
)

// Change is one membership change: what ChangeMembershipWith proposes and
// MembershipApplier.ApplyMembership sees.
type Change struct {
	Kind ChangeKind
	Node uint64
}

// MaxChangeData bounds the data of ChangeMembershipWith, in bytes.
const MaxChangeData = 4 << 10

// ChangeMembership proposes one membership change to group (a ConfChangeV2)
// and waits until it is applied on this node. Proposals that arrive while
// it is pending are held and proposed after it applies. Only the leader
// proposes one: on another replica it fails with ErrNotLeader (never
// forwarded). A change raft would panic on, or that does not match its
// kind (removing a node that is not a member or the last voter, promoting
// a node that is no member, adding a voter as a learner) fails with
// ErrInvalidRequest and changes nothing. A change the group's state
// machine refuses as it applies (MembershipApplier) fails with
// ErrChangeRefused and changes nothing. Other errors as Propose.
//
// A node added back after its removal must hold no replica of the group
// from before (package ranges asks it first): the group's replicas drop
// the node's acknowledgements of entries below the index of the change
// that added it back (at their term or an earlier one), with which an old
// replica kept there would be caught up, or never be.
func (h *Host) ChangeMembership(ctx context.Context, group uint64, kind ChangeKind, node uint64) error {
	return h.ChangeMembershipWith(ctx, group, Change{Kind: kind, Node: node}, nil)
}

// ChangeMembershipWith is ChangeMembership with data for the state
// machine: a MembershipApplier receives it with the change as every
// replica applies it (say, the version of the group's membership record
// the change was planned on). data is copied.
func (h *Host) ChangeMembershipWith(ctx context.Context, group uint64, ch Change, data []byte) error {
	f := h.ChangeMembershipAsync(group, ch, data)
	select {
	case <-f.Done():
		_, err := f.Result()
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// ChangeMembershipAsync is ChangeMembershipWith without the wait.
func (h *Host) ChangeMembershipAsync(group uint64, ch Change, data []byte) Future {
	p := &proposal{done: make(chan struct{})}
	var t raftpb.ConfChangeType
	switch ch.Kind {
	case AddVoter, PromoteLearner:
		t = raftpb.ConfChangeAddNode
	case AddLearner:
		t = raftpb.ConfChangeAddLearnerNode
	case RemoveMember:
		t = raftpb.ConfChangeRemoveNode
	default:
		p.finish(nil, fmt.Errorf("%w: change kind %d", ErrInvalidRequest, ch.Kind))
		return Future{p}
	}
	if ch.Node == 0 {
		p.finish(nil, fmt.Errorf("%w: membership change for node 0", ErrInvalidRequest))
		return Future{p}
	}
	if len(data) > MaxChangeData {
		p.finish(nil, fmt.Errorf("%w: %d bytes of change data, over %d", ErrInvalidRequest, len(data), MaxChangeData))
		return Future{p}
	}
	p.cc = &raftpb.ConfChangeV2{Changes: []raftpb.ConfChangeSingle{{Type: t, NodeID: ch.Node}}}
	p.promote = ch.Kind == PromoteLearner
	p.kind, p.ccData = ch.Kind, bytes.Clone(data)
	h.submit(group, p)
	return Future{p}
}

// Campaign makes this node's replica of group start an election now,
// instead of waiting for its election timeout. Used to place leaders (the
// node spreads them at start) and by deterministic tests.
func (h *Host) Campaign(group uint64) error {
	g, err := h.lookup(group)
	if err != nil {
		return err
	}
	g.in.Lock()
	g.in.campaign = true
	g.in.Unlock()
	h.sched.enqueue(group)
	return nil
}

// ForgetLeader makes this node's follower replica of group forget its
// leader, so that it grants a pre-vote at once instead of waiting out the
// leader's lease. For when the leader is known to be gone (its process was
// killed) and by deterministic tests.
func (h *Host) ForgetLeader(group uint64) error {
	g, err := h.lookup(group)
	if err != nil {
		return err
	}
	g.in.Lock()
	g.in.forget = true
	g.in.Unlock()
	h.sched.enqueue(group)
	return nil
}

// EventsCollapsed counts leader events that slow subscribers did not see
// one by one (their mailbox was collapsed to the latest state per group).
func (h *Host) EventsCollapsed() uint64 { return h.hub.collapsed.Load() }

// Subscribe returns a subscription to leader changes of every group. Its
// first batch holds the current leader of every group that has one. The
// engine never waits for a subscriber: one that falls behind gets the
// latest state per group with Skipped set. Close it when done.
func (h *Host) Subscribe() *Subscription { return h.hub.subscribe() }

// GroupStatus describes one local replica.
type GroupStatus struct {
	ID      uint64
	Leader  uint64
	Term    uint64
	Commit  uint64
	Applied uint64
	Role    string
	// Voters and Learners are shared with other groups and calls: read
	// them, never modify them.
	Voters   []uint64
	Learners []uint64
	// Quiesced: the replica does not tick (quiesce.go).
	Quiesced bool
}

// Status returns the status of every local replica, by group ID.
func (h *Host) Status() []GroupStatus {
	h.mu.RLock()
	gs := make([]*group, 0, len(h.mu.ids))
	for _, id := range h.mu.ids {
		gs = append(gs, h.mu.groups[id])
	}
	h.mu.RUnlock()
	out := make([]GroupStatus, 0, len(gs))
	for _, g := range gs {
		out = append(out, g.status())
	}
	return out
}

// StatusVersion returns a node-wide counter of changes to what Status
// reports, for callers that poll Status and want to skip an unchanged one.
// Every change moves it just after the change is visible in Status. So a
// caller that reads the version, then calls Status, holds a status that
// every later change moves the version past: while StatusVersion still
// returns the value read, the status held is current (but for Quiesced,
// which it does not cover, and for a change being published at that very
// moment, which moves it right after). Read it before Status, never
// after. Reading it costs one atomic load.
//
// It moves (by one or more; its values mean nothing but equality) when:
//   - a group starts (StartGroup, StartGroups, a restart) or is removed
//     or stopped;
//   - a replica's Leader, Term, Commit, Applied or Role changes, as
//     published after each processing cycle;
//   - a replica's Voters or Learners are published: a membership change
//     applied, a snapshot restored, the group started.
//
// Quiescing and waking alone do not move it (Quiesced is not covered):
// a liveness change wakes many groups without changing their status.
// Idle ticks of a settled group, quiesced or not, move nothing it covers
// (heartbeats carry no new commit), so the counter stays put while
// nothing happens. Anything a state machine applies moves Applied, so a
// caller that pairs Status with state read from the state machines (a
// range's descriptor) after reading the version sees that state change
// too. It starts at 0 with each Host and is not persisted.
func (h *Host) StatusVersion() uint64 { return h.statusVersion.Load() }

// GroupStatus returns the status of one local replica.
func (h *Host) GroupStatus(id uint64) (GroupStatus, error) {
	g, err := h.lookup(id)
	if err != nil {
		return GroupStatus{}, err
	}
	return g.status(), nil
}

func (g *group) status() GroupStatus {
	s := GroupStatus{
		ID:       g.id,
		Leader:   g.st.lead.Load(),
		Term:     g.st.term.Load(),
		Commit:   g.st.commit.Load(),
		Applied:  g.st.applied.Load(),
		Role:     raft.StateType(g.st.role.Load()).String(),
		Quiesced: g.st.quiesced.Load(),
	}
	if v := g.st.voters.Load(); v != nil {
		s.Voters = *v
	}
	if l := g.st.learners.Load(); l != nil {
		s.Learners = *l
	}
	return s
}

// Leader returns the group's leader as this replica knows it (0 if none)
// and its term.
func (h *Host) Leader(group uint64) (leader, term uint64, err error) {
	g, err := h.lookup(group)
	if err != nil {
		return 0, 0, err
	}
	return g.st.lead.Load(), g.st.term.Load(), nil
}

// Groups returns the IDs of the local replicas, ascending.
func (h *Host) Groups() []uint64 {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return append([]uint64(nil), h.mu.ids...)
}
