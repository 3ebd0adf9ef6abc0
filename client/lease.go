package client

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/kv"
)

// LeaseDriftMargin is the fraction of the TTL the client takes off its
// local deadline, so that it still knows first when its clock runs up to
// 2% slower than the leader's.
const LeaseDriftMargin = 0.02

// Lease errors. Check them with errors.Is.
var (
	// ErrLeaseLost: the lease expired, was revoked by someone else, or
	// could not be renewed for a full TTL counted from before the last
	// successful keep-alive was sent. Whoever holds an election with it
	// must stop acting as the holder.
	ErrLeaseLost = errors.New("client: lease lost")
	// ErrLeaseReleased: the lease's owner revoked or closed it.
	ErrLeaseReleased = errors.New("client: lease released")
)

// Lease is a granted lease whose keep-alives run in the background until
// it is lost, revoked or closed.
//
// The holder knows first. The lease counts its TTL from the moment before
// its last successful keep-alive request was sent, and its Context is
// cancelled at that local deadline unless a newer keep-alive succeeded.
// The group's leader cannot expire the lease before a full TTL from when
// it received that request (or from its own takeover, which comes later
// still), so a holder cut off from the cluster sees Done before any other
// campaigner can be elected, clock rates being equal.
//
// The local deadline is shortened by LeaseDriftMargin of the TTL, an
// allowance for the client's clock running slower than the leader's.
//
// Keep-alives are sent every TTL/3 on one gRPC stream to the group's
// leader; nothing is queued for the caller to drain.
type Lease struct {
	c     *Client
	id    uint64
	group uint64
	// home is the lease's home key: the range that holds it holds the
	// lease, whatever splits and merges follow (kv/lease.go). Empty for a
	// lease of range 1.
	home []byte
	ttl  time.Duration

	ctx    context.Context // cancelled, with a cause, when the lease ends
	cancel context.CancelCauseFunc

	deadline atomic.Int64 // local deadline, Unix nanoseconds
	renewals atomic.Uint64

	stop       chan struct{} // closed to stop the keep-alive loop
	loopCtx    context.Context
	loopCancel context.CancelFunc // called with stop
	stopOnce   sync.Once
	loopDone   chan struct{} // closed when keepAliveLoop returned
}

// ID returns the lease ID (unique in the cluster).
func (l *Lease) ID() uint64 { return l.id }

// Group returns the group that holds the lease.
func (l *Lease) Group() uint64 { return l.group }

// TTL returns the lease's time to live.
func (l *Lease) TTL() time.Duration { return l.ttl }

// Context is cancelled when the lease ends: lost (cause ErrLeaseLost) or
// released by Revoke or Close (cause ErrLeaseReleased). Pass it to work
// that must stop when the lease does.
func (l *Lease) Context() context.Context { return l.ctx }

// Done is closed when the lease ends; see Context.
func (l *Lease) Done() <-chan struct{} { return l.ctx.Done() }

// Err returns nil while the lease lives, then why it ended (wrapping
// ErrLeaseLost or ErrLeaseReleased).
func (l *Lease) Err() error {
	if l.ctx.Err() == nil {
		return nil
	}
	return context.Cause(l.ctx)
}

// Deadline returns the local deadline: the send time of the last
// successful keep-alive (or of the grant) plus the TTL less the drift
// margin.
func (l *Lease) Deadline() time.Time { return time.Unix(0, l.deadline.Load()) }

// Renewals returns how many keep-alives succeeded.
func (l *Lease) Renewals() uint64 { return l.renewals.Load() }

// Grant grants a lease of ttl (whole milliseconds, kv.MinLeaseTTL ..
// kv.MaxLeaseTTL) in range group and starts its keep-alives. An election,
// or a key, can use only a lease of its own range: use GrantFor for that.
func (c *Client) Grant(ctx context.Context, group uint64, ttl time.Duration) (*Lease, error) {
	if group == 0 {
		return nil, fmt.Errorf("%w: range 0", ErrGroupNotFound)
	}
	return c.grant(ctx, group, nil, ttl)
}

// grant grants a lease in range group, or with key set in the range that
// holds key.
func (c *Client) grant(ctx context.Context, group uint64, key []byte, ttl time.Duration) (*Lease, error) {
	if err := kv.CheckTTL(ttl); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	route := group
	if key != nil {
		route = c.rangeOf(ctx, key)
	}
	ttl = ttl.Truncate(time.Millisecond)
	// The lease's TTL starts on the cluster when the grant applies, after
	// the first attempt left (a retried grant applies once): count the
	// local deadline from before it.
	sent := time.Now()
	v, err := c.write(ctx, route, func(at attempt, cc *grpc.ClientConn, sess *api.Session, done func(answer)) {
		unary(at, done, func(ctx context.Context, opts ...grpc.CallOption) (any, *api.Header, error) {
			r, err := api.NewElectionClient(cc).LeaseGrant(ctx, &api.LeaseGrantRequest{Group: group, Key: key, TtlMs: ttl.Milliseconds(), Session: sess}, opts...)
			return r, r.GetHeader(), err
		})
	})
	if err != nil {
		return nil, err
	}
	id := v.(*api.LeaseGrantResponse).GetId()
	group = v.(*api.LeaseGrantResponse).GetHeader().GetGroup()
	l := &Lease{c: c, id: id, group: group, home: v.(*api.LeaseGrantResponse).GetHomeKey(), ttl: ttl,
		stop: make(chan struct{}), loopDone: make(chan struct{})}
	l.ctx, l.cancel = context.WithCancelCause(context.Background())
	l.loopCtx, l.loopCancel = context.WithCancel(context.Background())
	l.deadline.Store(sent.Add(localTTL(ttl)).UnixNano())
	if !c.track(l) {
		l.cancel(ErrClosed)
		l.loopCancel()
		return nil, ErrClosed
	}
	go l.keepAliveLoop()
	return l, nil
}

// GrantFor grants a lease of ttl in the range that holds name: the lease
// an election of that name can use, or a key of that name (Put with
// WithLease), or any key of that range. Keys of other ranges cannot
// attach to it.
func (c *Client) GrantFor(ctx context.Context, name string, ttl time.Duration) (*Lease, error) {
	if err := kv.CheckKey([]byte(name)); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	return c.grant(ctx, 0, []byte(name), ttl)
}

// track registers a lease so that Close stops it; false if closed.
func (c *Client) track(l *Lease) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.mu.closed {
		return false
	}
	if c.mu.leases == nil {
		c.mu.leases = make(map[*Lease]struct{})
	}
	c.mu.leases[l] = struct{}{}
	return true
}

func (c *Client) untrack(l *Lease) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.mu.leases, l)
}

// Revoke stops the keep-alives (the lease's Context ends at once, cause
// ErrLeaseReleased), then deletes the lease on the cluster, which
// withdraws it from every election. Safe to retry; revoking a lease that
// is already gone succeeds.
func (l *Lease) Revoke(ctx context.Context) error {
	l.halt(ErrLeaseReleased)
	_, err := l.c.write(ctx, l.group, func(at attempt, cc *grpc.ClientConn, sess *api.Session, done func(answer)) {
		unary(at, done, func(ctx context.Context, opts ...grpc.CallOption) (any, *api.Header, error) {
			r, err := api.NewElectionClient(cc).LeaseRevoke(ctx, &api.LeaseRevokeRequest{Group: l.group, Id: l.id, Session: sess, Key: l.home}, opts...)
			return r, r.GetHeader(), err
		})
	})
	return err
}

// Close stops the keep-alives without revoking: the cluster expires the
// lease one TTL later. The lease's Context ends at once.
func (l *Lease) Close() {
	l.halt(ErrLeaseReleased)
}

// halt stops the keep-alive loop and waits for it.
func (l *Lease) halt(cause error) {
	l.stopOnce.Do(func() {
		close(l.stop)
		l.loopCancel()
	})
	<-l.loopDone
	l.cancel(cause)
	l.c.untrack(l)
}

// TimeToLive asks the cluster whether the lease exists and, if the
// answering node leads its group, how long it has left by that node's
// clock (-1 if unknown).
func (l *Lease) TimeToLive(ctx context.Context) (found bool, remaining time.Duration, err error) {
	v, err := l.c.do(ctx, l.group, false, func(at attempt, cc *grpc.ClientConn, done func(answer)) {
		unary(at, done, func(ctx context.Context, opts ...grpc.CallOption) (any, *api.Header, error) {
			r, err := api.NewElectionClient(cc).LeaseTimeToLive(ctx, &api.LeaseTimeToLiveRequest{Group: l.group, Id: l.id, Key: l.home}, opts...)
			return r, r.GetHeader(), err
		})
	})
	if err != nil {
		return false, 0, err
	}
	resp := v.(*api.LeaseTimeToLiveResponse)
	found, remaining = resp.Found, time.Duration(resp.RemainingMs)*time.Millisecond
	if resp.RemainingMs < 0 {
		remaining = -1
	}
	return found, remaining, nil
}

// keepAliveLoop renews the lease until it is lost or stopped. It owns
// the stream, the send times and the local-deadline timer.
func (l *Lease) keepAliveLoop() {
	defer close(l.loopDone)
	interval := max(l.ttl/3, 10*time.Millisecond)
	lost := time.NewTimer(time.Until(l.Deadline()))
	defer lost.Stop()
	backoff := l.c.cfg.BackoffBase
	for attempt := 0; ; attempt++ {
		end, renewed := l.runStream(attempt, interval, lost)
		switch {
		case end != nil:
			l.cancel(end)
			return
		case renewed:
			attempt, backoff = 0, l.c.cfg.BackoffBase
		}
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-l.stop:
			t.Stop()
			return
		case <-lost.C:
			t.Stop()
			l.cancel(fmt.Errorf("%w: lease %d: not renewed within its TTL of %v", ErrLeaseLost, l.id, l.ttl))
			return
		}
		backoff = min(2*backoff, l.c.cfg.BackoffMax, interval)
	}
}

// runStream runs one keep-alive stream until it fails. It returns a
// non-nil end when the lease ended (lost, or the client closed) and
// renewed when at least one keep-alive succeeded.
func (l *Lease) runStream(attempt int, interval time.Duration, lost *time.Timer) (end error, renewed bool) {
	select {
	case <-l.stop:
		return ErrLeaseReleased, false
	default:
	}
	addr := l.c.target(l.group, attempt)
	cc, err := l.c.conn(addr)
	if err != nil {
		return err, false
	}
	sctx, scancel := context.WithCancel(context.Background())
	defer scancel()
	// Opening a stream can block while the connection is being set up;
	// it must not outlive a stop or the local deadline.
	unwatch := context.AfterFunc(l.loopCtx, scancel)
	watchdog := time.AfterFunc(time.Until(l.Deadline()), scancel)
	stream, err := api.NewElectionClient(cc).LeaseKeepAlive(sctx)
	watchdog.Stop()
	unwatch()
	if err != nil {
		return nil, false
	}
	respc := make(chan *api.LeaseKeepAliveResponse, 1)
	errc := make(chan error, 1)
	recvDone := make(chan struct{})
	go l.recvLoop(sctx, stream, respc, errc, recvDone)
	defer func() {
		scancel()
		<-recvDone
	}()
	sent := make(map[uint64]time.Time)
	var seq uint64
	send := func() error {
		seq++
		sent[seq] = time.Now() // before the request leaves: the client's TTL starts here
		return stream.Send(&api.LeaseKeepAliveRequest{Group: l.group, Id: l.id, Seq: seq, Key: l.home})
	}
	if err := send(); err != nil {
		return nil, false
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-l.stop:
			return ErrLeaseReleased, renewed
		case <-lost.C:
			return fmt.Errorf("%w: lease %d: not renewed within its TTL of %v", ErrLeaseLost, l.id, l.ttl), renewed
		case <-tick.C:
			if err := send(); err != nil {
				return nil, renewed
			}
		case r := <-respc:
			at, ok := sent[r.Seq]
			for s := range sent {
				if s <= r.Seq {
					delete(sent, s)
				}
			}
			if !r.Found {
				return fmt.Errorf("%w: lease %d: expired or revoked on the cluster", ErrLeaseLost, l.id), renewed
			}
			if !ok {
				continue
			}
			if time.Now().UnixNano() > l.deadline.Load() {
				// The local deadline passed before this answer was read:
				// the holder must already have stopped.
				return fmt.Errorf("%w: lease %d: not renewed within its TTL of %v", ErrLeaseLost, l.id, l.ttl), renewed
			}
			if d := at.Add(localTTL(l.ttl)); d.UnixNano() > l.deadline.Load() {
				l.deadline.Store(d.UnixNano())
				lost.Reset(time.Until(d))
			}
			l.renewals.Add(1)
			renewed = true
		case err := <-errc:
			l.c.noteLeader(l.group, leaderHint(stream.Trailer()), 0, 0)
			l.c.log.Debug("client: keep-alive stream ended", "lease", l.id, "group", l.group, "addr", addr, "err", err)
			return nil, renewed
		}
	}
}

// recvLoop reads keep-alive answers until the stream ends.
func (l *Lease) recvLoop(ctx context.Context, stream api.Election_LeaseKeepAliveClient, respc chan<- *api.LeaseKeepAliveResponse, errc chan<- error, done chan<- struct{}) {
	defer close(done)
	for {
		r, err := stream.Recv()
		if err != nil {
			errc <- err
			return
		}
		select {
		case respc <- r:
		case <-ctx.Done():
			return
		}
	}
}

// localTTL is the TTL the client counts: the TTL less LeaseDriftMargin.
func localTTL(ttl time.Duration) time.Duration {
	return ttl - time.Duration(float64(ttl)*LeaseDriftMargin)
}
