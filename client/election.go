package client

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"google.golang.org/grpc"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/kv"
)

// Election errors. Check them with errors.Is.
var (
	// ErrNoLeader: the election has no holder.
	ErrNoLeader = errors.New("client: election has no leader")
	// ErrCampaigning: the Election already campaigns with another lease;
	// Resign first.
	ErrCampaigning = errors.New("client: already campaigning with another lease")
)

// ElectionState is an election as of one revision.
type ElectionState struct {
	Name string
	// HasLeader is false when nobody holds the election; the fields below
	// are then zero.
	HasLeader bool
	// Value and Lease are the holder's.
	Value []byte
	Lease uint64
	// Token is the holder's fencing token: the group revision at which it
	// was elected. Successive holders of an election have growing tokens;
	// pass it to whatever the holder writes to, which should refuse a
	// token lower than the highest it has seen.
	Token uint64
	// Revision orders the states of one election (the group revision of
	// its last change; 0 if nobody ever campaigned).
	Revision uint64
	// Candidates counts the leases campaigning, the holder included
	// (0 when unknown).
	Candidates int
	// Skipped (Observe only): changes between the previous state delivered
	// and this one were not delivered.
	Skipped bool
}

func stateOf(st *api.ElectionState) ElectionState {
	if st == nil {
		return ElectionState{}
	}
	return ElectionState{Name: string(st.Name), HasLeader: st.HasLeader, Value: st.Value, Lease: st.Lease,
		Token: st.Token, Revision: st.Revision, Candidates: int(st.Candidates)}
}

// Leadership is a won election.
type Leadership struct {
	Name  string
	Value []byte
	// Lease is the lease the election was won with; the leadership ends
	// when it does.
	Lease *Lease
	// Token is the fencing token (see ElectionState.Token).
	Token uint64
}

// Context is cancelled when the leadership may have ended: when its lease
// is lost or released. It is cancelled before any other campaigner can be
// elected (see Lease).
func (l Leadership) Context() context.Context { return l.Lease.Context() }

// Done is closed when the leadership may have ended; see Context.
func (l Leadership) Done() <-chan struct{} { return l.Lease.Done() }

// Election campaigns in, resigns from and reads one election. It keeps
// the lease it campaigns with as local state, cleared only once the
// cluster confirmed the resignation, so a Resign that failed can be
// retried. Safe for concurrent use; one campaign at a time.
//
// Use an Election to pick one leader among processes outside the cluster
// (one active scheduler, one writer). To follow which node leads a raft
// group inside the cluster, subscribe to the engine instead
// (multiraft.Host.Subscribe).
type Election struct {
	c     *Client
	name  []byte
	group uint64
	mu    struct {
		sync.Mutex
		lease *Lease // campaigning or holding with it; nil: neither
	}
}

// Election returns the election called name (a non-empty string of at
// most kv.MaxKeySize bytes). Its leases must come from GrantFor(name).
func (c *Client) Election(name string) (*Election, error) {
	if err := kv.CheckKey([]byte(name)); err != nil {
		return nil, fmt.Errorf("%w: election name: %v", ErrInvalidArgument, err)
	}
	// group is a routing hint (0 if the range is not cached yet): every
	// node routes by the name.
	return &Election{c: c, name: []byte(name), group: c.GroupOf([]byte(name))}, nil
}

// Name returns the election's name.
func (e *Election) Name() string { return string(e.name) }

// Campaign enters lease as a candidate with value and waits until it is
// elected, the lease ends (an error wrapping ErrLeaseLost or
// ErrLeaseReleased) or ctx ends (ctx's error). Candidates are elected in
// the order they first campaigned. Campaigning again with the same lease
// keeps its place and updates its value. When Campaign fails after the
// request was sent, it withdraws the candidate (best effort; Resign
// retries it).
func (e *Election) Campaign(ctx context.Context, lease *Lease, value []byte) (Leadership, error) {
	if err := kv.CheckValue(value); err != nil {
		return Leadership{}, fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	if err := lease.Err(); err != nil {
		return Leadership{}, err
	}
	e.mu.Lock()
	if e.mu.lease != nil && e.mu.lease != lease {
		e.mu.Unlock()
		return Leadership{}, fmt.Errorf("%w: election %q, lease %d", ErrCampaigning, e.name, e.mu.lease.ID())
	}
	// Remembered before the request: a campaign whose outcome is unknown
	// can still be withdrawn by Resign.
	e.mu.lease = lease
	e.mu.Unlock()

	// Waiting ends with the lease.
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := context.AfterFunc(lease.Context(), func() { cancel(lease.Err()) })
	defer stop()

	st, elected, err := e.campaign(wctx, lease, value)
	if err == nil && !elected {
		st, err = e.waitElected(wctx, lease)
	}
	if err != nil {
		if cause := context.Cause(wctx); cause != nil && ctx.Err() == nil {
			err = cause // the lease ended
		}
		e.withdraw(lease)
		return Leadership{}, err
	}
	return Leadership{Name: string(e.name), Value: st.Value, Lease: lease, Token: st.Token}, nil
}

// campaign sends the campaign request (retried: it is idempotent).
func (e *Election) campaign(ctx context.Context, lease *Lease, value []byte) (ElectionState, bool, error) {
	v, err := e.c.write(ctx, e.group, func(at attempt, cc *grpc.ClientConn, sess *api.Session, done func(answer)) {
		unary(at, done, func(ctx context.Context, opts ...grpc.CallOption) (any, *api.Header, error) {
			r, err := api.NewElectionClient(cc).Campaign(ctx, &api.CampaignRequest{Name: e.name, Value: value, Lease: lease.ID(), Group: e.group, Session: sess}, opts...)
			return r, r.GetHeader(), err
		})
	})
	if err != nil {
		return ElectionState{}, false, err
	}
	resp := v.(*api.CampaignResponse)
	if !resp.LeaseFound {
		return ElectionState{}, false, fmt.Errorf("%w: lease %d is gone on the cluster", ErrLeaseLost, lease.ID())
	}
	return stateOf(resp.State), resp.Elected, nil
}

// waitElected observes the election until lease holds it.
func (e *Election) waitElected(ctx context.Context, lease *Lease) (ElectionState, error) {
	obs := e.Observe(ctx)
	defer obs.Close()
	for {
		st, err := obs.Next(ctx)
		if err != nil {
			return ElectionState{}, err
		}
		if st.HasLeader && st.Lease == lease.ID() {
			return st, nil
		}
	}
}

// withdraw resigns a failed campaign, best effort and bounded.
func (e *Election) withdraw(lease *Lease) {
	ctx, cancel := context.WithTimeout(context.Background(), e.c.cfg.AttemptTimeout)
	defer cancel()
	if err := e.Resign(ctx); err != nil {
		e.c.log.Debug("client: withdrawing a failed campaign", "election", string(e.name), "lease", lease.ID(), "err", err)
	}
}

// Resign withdraws this Election's candidate (elected or waiting), so
// the next candidate is elected at once. It returns nil when there is
// nothing to withdraw, so it is safe to repeat. The local state is
// cleared only once the cluster confirmed; after an error, call Resign
// again (the lease's expiry withdraws the candidate too). Resign does not
// revoke the lease.
func (e *Election) Resign(ctx context.Context) error {
	e.mu.Lock()
	lease := e.mu.lease
	e.mu.Unlock()
	if lease == nil {
		return nil
	}
	_, err := e.c.write(ctx, e.group, func(at attempt, cc *grpc.ClientConn, sess *api.Session, done func(answer)) {
		unary(at, done, func(ctx context.Context, opts ...grpc.CallOption) (any, *api.Header, error) {
			r, err := api.NewElectionClient(cc).Resign(ctx, &api.ResignRequest{Name: e.name, Lease: lease.ID(), Group: e.group, Session: sess}, opts...)
			return r, r.GetHeader(), err
		})
	})
	if err != nil {
		return err
	}
	e.mu.Lock()
	if e.mu.lease == lease {
		e.mu.lease = nil
	}
	e.mu.Unlock()
	return nil
}

// Leader returns the election's current state, read linearizably, or an
// error wrapping ErrNoLeader when nobody holds it.
func (e *Election) Leader(ctx context.Context) (ElectionState, error) {
	v, err := e.c.do(ctx, e.group, false, func(at attempt, cc *grpc.ClientConn, done func(answer)) {
		unary(at, done, func(ctx context.Context, opts ...grpc.CallOption) (any, *api.Header, error) {
			r, err := api.NewElectionClient(cc).Leader(ctx, &api.LeaderRequest{Name: e.name, Group: e.group}, opts...)
			return r, r.GetHeader(), err
		})
	})
	if err != nil {
		return ElectionState{}, err
	}
	st := stateOf(v.(*api.LeaderResponse).State)
	if !st.HasLeader {
		return st, fmt.Errorf("%w: %q", ErrNoLeader, e.name)
	}
	return st, nil
}

// observeMailbox bounds the states an Observer holds for a slow reader
// before it collapses them to the latest.
const observeMailbox = 64

// Observer delivers an election's states in order. Create it with
// Election.Observe; Close it when done.
//
// Every state it delivers is newer than the one before (by Revision):
// never a stale one, never one twice. While its reader keeps up and its
// stream stays up it delivers every change, "no leader" included. A
// reader more than 64 states behind gets only the latest, and after a
// reconnect the first state is the current one; both are marked Skipped
// when changes may have been missed.
type Observer struct {
	e      *Election
	ctx    context.Context
	cancel context.CancelFunc
	notify chan struct{}
	done   chan struct{} // closed when observeLoop returned
	mu     struct {
		sync.Mutex
		queue   []ElectionState
		last    uint64 // revision of the newest state queued
		started bool
		err     error
	}
}

// Observe starts observing the election until ctx ends or Close.
func (e *Election) Observe(ctx context.Context) *Observer {
	o := &Observer{e: e, notify: make(chan struct{}, 1), done: make(chan struct{})}
	o.ctx, o.cancel = context.WithCancel(ctx)
	go o.observeLoop()
	return o
}

// Next returns the next state, waiting until one arrives or ctx or the
// Observer ends.
func (o *Observer) Next(ctx context.Context) (ElectionState, error) {
	for {
		o.mu.Lock()
		if len(o.mu.queue) > 0 {
			st := o.mu.queue[0]
			o.mu.queue = o.mu.queue[1:]
			o.mu.Unlock()
			return st, nil
		}
		err := o.mu.err
		o.mu.Unlock()
		if err != nil {
			return ElectionState{}, err
		}
		select {
		case <-o.notify:
		case <-ctx.Done():
			return ElectionState{}, ctx.Err()
		}
	}
}

// Close stops observing; Next then returns context.Canceled.
func (o *Observer) Close() {
	o.cancel()
	<-o.done
}

// push queues st unless it is not newer than what was queued.
func (o *Observer) push(st ElectionState, skipped bool) {
	o.mu.Lock()
	if o.mu.started && st.Revision <= o.mu.last {
		o.mu.Unlock()
		return
	}
	st.Skipped = skipped
	o.mu.started, o.mu.last = true, st.Revision
	o.mu.queue = append(o.mu.queue, st)
	if len(o.mu.queue) > observeMailbox {
		st.Skipped = true
		o.mu.queue = append(o.mu.queue[:0], st)
	}
	o.mu.Unlock()
	select {
	case o.notify <- struct{}{}:
	default:
	}
}

func (o *Observer) fail(err error) {
	o.mu.Lock()
	o.mu.err = err
	o.mu.Unlock()
	select {
	case o.notify <- struct{}{}:
	default:
	}
}

// observeLoop keeps one Observe stream open, reconnecting after failures,
// and queues what it receives.
func (o *Observer) observeLoop() {
	defer close(o.done)
	c := o.e.c
	backoff := c.cfg.BackoffBase
	reconnected := false
	for attempt := 0; ; attempt++ {
		if o.ctx.Err() != nil {
			o.fail(o.ctx.Err())
			return
		}
		cc, err := c.conn(c.target(o.e.group, attempt))
		if err != nil {
			o.fail(err)
			return
		}
		stream, err := api.NewElectionClient(cc).Observe(o.ctx, &api.ObserveRequest{Name: o.e.name, Group: o.e.group})
		if err == nil {
			first := true
			for {
				r, rerr := stream.Recv()
				if rerr != nil {
					err = rerr
					break
				}
				o.push(stateOf(r.State), r.Skipped || (first && reconnected))
				first = false
				attempt, backoff = 0, c.cfg.BackoffBase
			}
			c.noteLeader(o.e.group, leaderHint(stream.Trailer()), 0, 0)
		}
		if o.ctx.Err() != nil {
			o.fail(o.ctx.Err())
			return
		}
		if kind, cerr := classify(err); kind == fatal {
			o.fail(cerr)
			return
		}
		reconnected = true
		c.log.Debug("client: observe stream ended", "election", string(o.e.name), "err", err)
		if wait(o.ctx, backoff) != nil {
			o.fail(o.ctx.Err())
			return
		}
		backoff = min(2*backoff, c.cfg.BackoffMax)
	}
}
