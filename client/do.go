package client

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/kv"
)

// mdLeader is the trailer in which a server names a group's leader (see
// server.MDLeader).
const mdLeader = "flotilla-leader"

// Messages that start the status of a refused session write (see
// server.MsgSessionUnknown and MsgSessionStale), and of a request whose
// range does not hold its key (server.MsgKeyMismatch), which carries the
// ranges the node knows in the mdRanges trailer.
const (
	msgSessionUnknown = "kv: session unknown"
	msgSessionStale   = "kv: session stale"
	msgKeyMismatch    = "kv: key not in range"
	msgTxnSpansRanges = "kv: transaction spans ranges"
	mdRanges          = "flotilla-ranges-bin"
)

// maxOutstanding bounds the attempts of one request in flight at once: the
// first and up to two hedges.
const maxOutstanding = 3

// answer is the outcome of one attempt.
type answer struct {
	addr string    // where it went
	sent time.Time // when
	val  any       // the response, when err is nil
	// leader and term: the group's leader as the answer names it (header
	// or hint; term 0 for a hint). group: the range that answered (from
	// the header; 0 if none).
	leader, term, group uint64
	// ranges: descriptors a refusal carried (mdRanges).
	ranges []kv.Descriptor
	err    error
}

// attempt is what an attemptFunc starts an attempt with: its request.
// Queueing an op on a Batch stream needs nothing else; an RPC takes its
// context from rpcContext.
type attempt struct{ req *request }

// rpcContext returns the context of an RPC of the attempt: it ends with
// the request (once do returns, an attempt still out is abandoned) and
// within AttemptTimeout. Call it before handing the attempt to another
// goroutine.
func (at attempt) rpcContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(at.req.context(), at.req.c.cfg.AttemptTimeout)
}

// request is one call of do. Its context is made on demand (most attempts
// go over a Batch stream and need none of their own). Owned by do's
// goroutine.
type request struct {
	c      *Client
	parent context.Context
	limit  time.Time // the request's cap (RequestTimeout; a write's SessionTTL/2)
	ctx    context.Context
	cancel context.CancelFunc
}

func (r *request) context() context.Context {
	if r.ctx == nil {
		if d, ok := r.parent.Deadline(); ok && !d.After(r.limit) {
			r.ctx, r.cancel = context.WithCancel(r.parent)
		} else {
			r.ctx, r.cancel = context.WithDeadline(r.parent, r.limit)
		}
	}
	return r.ctx
}

func (r *request) end() {
	if r.cancel != nil {
		r.cancel()
	}
}

// over reports whether the request's time is up.
func (r *request) over() bool { return r.parent.Err() != nil || !time.Now().Before(r.limit) }

// attemptFunc starts one attempt of a request on cc and calls done exactly
// once with its outcome (val, leader, term, err), from any goroutine. done
// never blocks. Attempts of one request may run at the same time: an
// attemptFunc must not write state that another attempt reads; it hands
// its response back in answer.val. It is called on do's goroutine.
type attemptFunc func(at attempt, cc *grpc.ClientConn, done func(answer))

// unary runs a unary RPC as an attempt, on a goroutine of its own. call
// must pass opts to the RPC (they collect the leader hint) and return the
// response's header, if it has one.
func unary(at attempt, done func(answer), call func(ctx context.Context, opts ...grpc.CallOption) (any, *api.Header, error)) {
	ctx, cancel := at.rpcContext()
	go func() {
		defer cancel()
		var md metadata.MD
		v, h, err := call(ctx, grpc.Trailer(&md))
		a := answer{val: v, err: err}
		switch {
		case h != nil:
			a.leader, a.term, a.group = h.Leader, h.Term, h.Group
		case err != nil:
			a.leader = leaderHint(md)
			a.ranges = rangesHint(md)
		}
		done(a)
	}()
}

// outcome classifies a failed attempt.
type outcome int

const (
	fatal          outcome = iota // return the error
	retry                         // not done: try again, elsewhere if possible
	ambiguous                     // may have been applied; a session write may be sent again
	unreachable                   // the node did not answer; may have been applied unless notSent
	sessionUnknown                // the group does not have the session: register and resend
	mismatch                      // the range does not hold the key: look it up again, resend
)

func classify(err error) (outcome, error) {
	st, ok := status.FromError(err)
	if !ok {
		return fatal, err
	}
	switch st.Code() {
	case codes.OutOfRange:
		switch {
		case strings.Contains(st.Message(), "has been compacted"):
			return fatal, fmt.Errorf("%w: %s", ErrCompacted, st.Message())
		case strings.Contains(st.Message(), kv.ErrFutureRevision.Error()):
			return fatal, fmt.Errorf("%w: %s", ErrFutureRevision, st.Message())
		}
		return fatal, fmt.Errorf("%w: %s", ErrInvalidArgument, st.Message())
	case codes.InvalidArgument, codes.ResourceExhausted:
		if strings.HasPrefix(st.Message(), msgTxnSpansRanges) {
			return fatal, fmt.Errorf("%w: %w: %s", ErrInvalidArgument, ErrTxnSpansRanges, st.Message())
		}
		return fatal, fmt.Errorf("%w: %s", ErrInvalidArgument, st.Message())
	case codes.NotFound:
		if strings.HasPrefix(st.Message(), kv.ErrLeaseNotFound.Error()) {
			return fatal, fmt.Errorf("%w: %s", ErrLeaseNotFound, st.Message())
		}
		return fatal, fmt.Errorf("%w: %s", ErrGroupNotFound, st.Message())
	case codes.FailedPrecondition:
		if strings.HasPrefix(st.Message(), msgSessionUnknown) {
			return sessionUnknown, fmt.Errorf("%w: %s", ErrNotLeader, st.Message())
		}
		if strings.HasPrefix(st.Message(), msgKeyMismatch) {
			return mismatch, fmt.Errorf("%w: %s", ErrRangeChanged, st.Message())
		}
		return retry, fmt.Errorf("%w: %s", ErrNotLeader, st.Message())
	case codes.Aborted:
		if strings.HasPrefix(st.Message(), msgSessionStale) {
			return fatal, fmt.Errorf("%w: %s", ErrAmbiguous, st.Message())
		}
		return ambiguous, fmt.Errorf("%w: %s", ErrAmbiguous, st.Message())
	case codes.PermissionDenied:
		return fatal, fmt.Errorf("%w: %s", ErrPermissionDenied, st.Message())
	case codes.Unauthenticated:
		return fatal, fmt.Errorf("%w: %s", ErrUnauthenticated, st.Message())
	case codes.Unavailable:
		if certificateRefused(st.Message()) {
			return fatal, fmt.Errorf("%w: %s", ErrUnauthenticated, st.Message())
		}
		return unreachable, err
	case codes.DeadlineExceeded, codes.Canceled:
		return unreachable, err
	}
	return fatal, fmt.Errorf("client: %s: %s", st.Code(), st.Message())
}

// notSent reports whether a transport failure happened before the request
// left the client (gRPC fails such RPCs at once while the connection is
// down).
func notSent(err error) bool {
	if status.Code(err) != codes.Unavailable {
		return false
	}
	msg := status.Convert(err).Message()
	for _, s := range []string{"while dialing", "connection refused", "no such host", "produced zero addresses", "connection active"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// do runs a request to group g (0: any node) until an attempt succeeds,
// one fails for good, or the request's deadline ends: ctx's, else
// RequestTimeout from now; a write's never later than kv.SessionTTL/2
// from now. It returns the successful attempt's answer.val.
//
// Attempts. The first goes to the node pick chooses (the cached leader).
// An attempt unanswered for its node's hedge delay is hedged: the request
// goes to another node too (up to maxOutstanding at once), and the node is
// suspect unless it answered something else meanwhile. A failed attempt is
// retried at once on the leader its answer named, else after a backoff,
// around the nodes that failed it. Writes carry their session (start
// builds the request with it), so a write may be retried however it
// failed. A write whose deadline ends while an attempt's outcome is unknown
// returns ErrAmbiguous. A write refused before proposal (permission, bad
// argument) while a hedge is out waits for the hedge: the refusal stands
// if the hedge did not apply the write either, and is ErrAmbiguous if its
// outcome is unknown.
func (c *Client) do(ctx context.Context, g uint64, write bool, start attemptFunc) (any, error) {
	// The request ends with ctx, or at its own cap if that comes first
	// (no timer of its own for ctx's deadline: the caller must see ctx end
	// first, not a twin timer a moment earlier).
	now := time.Now()
	req := &request{c: c, parent: ctx, limit: now.Add(c.cfg.RequestTimeout)}
	if cap := now.Add(kv.SessionTTL / 2); write && cap.Before(req.limit) {
		req.limit = cap
	}
	defer req.end() // abandons the attempts still out
	var expired <-chan time.Time
	if d, ok := ctx.Deadline(); !ok || d.After(req.limit) {
		t := time.NewTimer(time.Until(req.limit))
		defer t.Stop()
		expired = t.C
	}

	failover := !c.cfg.DisableFailover
	results := make(chan answer, maxOutstanding) // each attempt sends once; at most maxOutstanding out
	var busy, avoid []string                     // nodes with an attempt out; nodes that failed this request
	var sentAt [maxOutstanding]time.Time         // when each busy node's attempt left, by position
	attempts := 0
	var last error
	unknown := false  // a write attempt whose outcome is unknown
	var refused error // a write's refusal, held while its hedges are out
	backoff := c.cfg.BackoffBase
	var timer *time.Timer
	var timerC <-chan time.Time
	hedging := false // what the timer is for: a hedge, else a retry
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	arm := func(d time.Duration, hedge bool) {
		if timer == nil {
			timer = time.NewTimer(d)
		} else {
			timer.Reset(d) // (Go 1.23 timers: no stale value to drain)
		}
		timerC, hedging = timer.C, hedge
	}
	removeBusy := func(addr string) {
		if i := slices.Index(busy, addr); i >= 0 {
			busy = slices.Delete(busy, i, i+1)
			copy(sentAt[i:], sentAt[i+1:])
		}
	}
	// launch starts an attempt on a node with none of this request's
	// attempts out; false if there is none, or the attempts ran out.
	launch := func() bool {
		if c.cfg.MaxAttempts > 0 && attempts >= c.cfg.MaxAttempts {
			return false
		}
		addr := c.pick(g, attempts, busy, avoid)
		if addr == "" {
			return false
		}
		cc, err := c.conn(addr)
		if err != nil {
			last = err
			return false
		}
		attempts++
		sent := time.Now()
		sentAt[len(busy)] = sent
		busy = append(busy, addr)
		start(attempt{req: req}, cc, func(a answer) {
			a.addr, a.sent = addr, sent
			results <- a
		})
		switch {
		case len(busy) >= maxOutstanding:
		case failover:
			arm(c.health.hedgeDelay(addr, c.cfg.HedgeDelayMin, c.cfg.HedgeDelayMax), true)
		default:
			// Without failover detection an attempt is given up only after
			// AttemptTimeout (its answer is still taken if it comes).
			arm(c.cfg.AttemptTimeout, true)
		}
		return true
	}
	end := func(cause error) error {
		switch {
		case write && (unknown || len(busy) > 0):
			return fmt.Errorf("%w: %w (last error: %v)", ErrAmbiguous, cause, last)
		case ctx.Err() != nil:
			if last != nil {
				return fmt.Errorf("%w (last error: %v)", ctx.Err(), last)
			}
			return ctx.Err()
		}
		return fmt.Errorf("%w: %d attempts: %w", ErrUnavailable, attempts, cmpErr(last, cause))
	}

	if !launch() {
		return nil, end(errNoNode)
	}
	for {
		select {
		case a := <-results:
			removeBusy(a.addr)
			if a.err == nil {
				if failover {
					c.health.answered(a.addr, a.sent)
				}
				if a.group != 0 && g != 0 && a.group != g {
					// The node routed the request to another range than
					// the cache said (it split or merged): the cache
					// learns the key's range at the next lookup.
					c.ranges.Evict(g, ^uint64(0))
					c.noteLeader(a.group, a.leader, a.term, c.nodeOf(a.addr))
					return a.val, nil
				}
				c.noteLeader(g, a.leader, a.term, c.nodeOf(a.addr))
				return a.val, nil
			}
			kind, cerr := classify(a.err)
			if failover {
				if kind == unreachable {
					if !req.over() {
						c.health.unreachable(a.addr)
					}
				} else {
					c.health.answered(a.addr, a.sent) // it answered, if only with an error
				}
			}
			last = fmt.Errorf("%s: %w", a.addr, cerr)
			c.log.Debug("client: attempt failed", "group", g, "attempt", attempts, "addr", a.addr, "err", a.err)
			fails := true
			switch kind {
			case fatal:
				if write && !errors.Is(cerr, ErrLeaseNotFound) {
					// A node refused this attempt before proposing it
					// (bad argument, permission, a transaction's keys
					// over several ranges after a split). (A refusal of
					// the range itself, ErrLeaseNotFound, answers for the
					// write: through the session, a write that applied
					// would have its first result.)
					if unknown {
						// An earlier attempt may have applied.
						return nil, refusedAmbiguous(cerr)
					}
					if len(busy) > 0 {
						// A hedge is still out: its answer says whether
						// it applied. Wait for it, launching nothing more.
						refused, timerC = cerr, nil
						continue
					}
				}
				return nil, cerr
			case sessionUnknown:
				c.session.unknown(g) // the next attempt registers; nothing was written
				fails = false
			case mismatch:
				// Nothing was done. The node routes by key: the next
				// attempt finds the range, and the cache learns it.
				c.ranges.Evict(g, ^uint64(0))
				c.ranges.Insert(a.ranges...)
				fails = false
			case ambiguous:
				unknown = unknown || write
			case unreachable:
				unknown = unknown || (write && !notSent(a.err))
			case retry:
				fails = a.leader == 0 || a.leader == c.nodeOf(a.addr)
			}
			if refused != nil {
				// This answer came from a hedge out when a node refused
				// the write, and it did not apply it either.
				switch {
				case unknown:
					return nil, refusedAmbiguous(refused)
				case len(busy) > 0:
					continue
				}
				return nil, refused
			}
			if fails && !slices.Contains(avoid, a.addr) {
				avoid = append(avoid, a.addr)
			}
			c.noteLeader(g, a.leader, a.term, c.nodeOf(a.addr))
			if req.over() {
				return nil, end(errDeadline)
			}
			if len(busy) > 0 {
				continue // another attempt is out: wait for it (or its hedge)
			}
			// Retry now if the answer named another live leader or asked
			// for registration, else after a backoff.
			if kind == sessionUnknown || kind == mismatch || (a.leader != 0 && a.leader != c.nodeOf(a.addr) && !c.health.suspect(c.leaderAddr(g))) {
				if launch() {
					continue
				}
			}
			if c.cfg.MaxAttempts > 0 && attempts >= c.cfg.MaxAttempts {
				return nil, end(errNoNode)
			}
			arm(jitter(backoff), false)
			backoff = min(2*backoff, c.cfg.BackoffMax)
		case <-timerC:
			timerC = nil
			if hedging {
				if failover {
					for i, addr := range busy {
						c.health.slow(addr, sentAt[i])
					}
				} else {
					// The attempt out timed out: its outcome is unknown.
					unknown = unknown || write
				}
				if launch() {
					if failover {
						c.hedges.Add(1)
					}
				} else if len(busy) == 0 {
					return nil, end(errNoNode)
				}
				continue
			}
			if len(avoid) >= len(c.candidates()) {
				avoid = avoid[:0] // every node failed once: start over
			}
			if !launch() && len(busy) == 0 {
				return nil, end(errNoNode)
			}
		case <-ctx.Done():
			return nil, end(ctx.Err())
		case <-expired:
			return nil, end(errDeadline)
		case <-c.stop:
			if write && (unknown || len(busy) > 0) {
				return nil, fmt.Errorf("%w: %w", ErrAmbiguous, ErrClosed)
			}
			return nil, ErrClosed
		}
	}
}

// refusedAmbiguous is a write's refusal after an earlier attempt's
// outcome became unknown: the refusal says nothing of that attempt, so
// the write is ErrAmbiguous, not the refusal's kind.
func refusedAmbiguous(refusal error) error {
	return fmt.Errorf("%w: %v; an earlier attempt's outcome is unknown", ErrAmbiguous, refusal)
}

// errDeadline: the request's own cap (RequestTimeout) ended it.
var errDeadline = errors.New("request timeout")

// errNoNode: no node left to try.
var errNoNode = errors.New("no node to try")

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// jitter returns d ± 20%.
func jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

// rangesHint returns the descriptors a refusal carried.
func rangesHint(md metadata.MD) []kv.Descriptor {
	for _, v := range md.Get(mdRanges) {
		if ds, err := kv.DecodeDescriptors([]byte(v)); err == nil {
			return ds
		}
	}
	return nil
}

func leaderHint(md metadata.MD) uint64 {
	for _, v := range md.Get(mdLeader) {
		if id, err := strconv.ParseUint(v, 10, 64); err == nil {
			return id
		}
	}
	return 0
}

// wait waits d or until ctx ends.
func wait(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// certificateRefused reports whether a connection failed because a
// certificate did not verify (on either side), which no retry can mend;
// a handshake cut short by the network (EOF, reset) is not one. The
// server's refusal of the client's certificate is a TLS alert that, under
// TLS 1.3, arrives after the client's side of the handshake has finished:
// gRPC reports it on reading the server's preface, not as a failed
// handshake.
func certificateRefused(msg string) bool {
	if strings.Contains(msg, "remote error: tls: ") && strings.Contains(msg, "certificate") {
		return true // bad, unknown, expired, ... certificate; certificate required
	}
	return strings.Contains(msg, "authentication handshake failed") &&
		(strings.Contains(msg, "x509:") || strings.Contains(msg, "certs:") || strings.Contains(msg, "tls: "))
}
