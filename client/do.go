package client

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/kv"
)

// mdLeader is the trailer in which a server names a group's leader (see
// server.MDLeader).
const mdLeader = "flotilla-leader"

// rpcFunc makes one attempt on conn cc. It returns the group leader the
// answer names (0 if none) and the RPC error. opts must be passed to the
// RPC: they collect the trailer.
type rpcFunc func(ctx context.Context, cc *grpc.ClientConn, opts ...grpc.CallOption) (uint64, error)

// outcome classifies a failed attempt.
type outcome int

const (
	fatal       outcome = iota // return the error
	retry                      // not done: try again, elsewhere if possible
	ambiguous                  // may have been applied
	unreachable                // the node did not answer; may have been applied unless notSent
)

func classify(err error) (outcome, error) {
	st, ok := status.FromError(err)
	if !ok {
		return fatal, err
	}
	switch st.Code() {
	case codes.InvalidArgument, codes.ResourceExhausted, codes.OutOfRange:
		return fatal, fmt.Errorf("%w: %s", ErrInvalidArgument, st.Message())
	case codes.NotFound:
		if strings.HasPrefix(st.Message(), kv.ErrLeaseNotFound.Error()) {
			return fatal, fmt.Errorf("%w: %s", ErrLeaseNotFound, st.Message())
		}
		return fatal, fmt.Errorf("%w: %s", ErrGroupNotFound, st.Message())
	case codes.FailedPrecondition:
		return retry, fmt.Errorf("%w: %s", ErrNotLeader, st.Message())
	case codes.Aborted:
		return ambiguous, fmt.Errorf("%w: %s", ErrAmbiguous, st.Message())
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
		return unreachable, err
	}
	return fatal, fmt.Errorf("client: %s: %s", st.Code(), st.Message())
}

// notSent reports whether a transport failure happened before the request
// left the client (gRPC fails such RPCs at once while the connection is
// down), so that even a non-idempotent request may be retried.
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

// do runs call against the node serving group g (0: any node) until it
// succeeds, fails for good, or the attempts or ctx run out. idempotent
// says whether a request that may have been applied may be sent again.
func (c *Client) do(ctx context.Context, g uint64, idempotent bool, call rpcFunc) error {
	backoff := c.cfg.BackoffBase
	var last error
	for attempt := 0; attempt < c.cfg.MaxAttempts; attempt++ {
		if attempt > 0 {
			if err := wait(ctx, backoff); err != nil {
				return c.ctxErr(err, last, false)
			}
			backoff = min(2*backoff, c.cfg.BackoffMax)
		}
		addr := c.target(g, attempt)
		cc, err := c.conn(addr)
		if err != nil {
			return err
		}
		var md metadata.MD
		actx, cancel := context.WithTimeout(ctx, c.cfg.AttemptTimeout)
		hint, err := call(actx, cc, grpc.Trailer(&md))
		cancel()
		if err == nil {
			c.noteLeader(g, hint)
			return nil
		}
		if ctx.Err() != nil {
			return c.ctxErr(ctx.Err(), err, !idempotent && !notSent(err))
		}
		kind, cerr := classify(err)
		last = fmt.Errorf("%s: %w", addr, cerr)
		c.log.Debug("client: attempt failed", "group", g, "attempt", attempt, "addr", addr, "err", err)
		switch kind {
		case fatal:
			return cerr
		case ambiguous:
			if !idempotent {
				return cerr
			}
		case unreachable:
			if !idempotent && !notSent(err) {
				return fmt.Errorf("%w: %s: %v", ErrAmbiguous, addr, err)
			}
		}
		hint = leaderHint(md)
		if hint == 0 {
			hint = batchHint(err)
		}
		c.noteLeader(g, hint)
		if attempt%3 == 2 {
			rctx, rcancel := context.WithTimeout(ctx, c.cfg.AttemptTimeout)
			_ = c.refresh(rctx)
			rcancel()
		}
	}
	return fmt.Errorf("%w: %d attempts: %w", ErrUnavailable, c.cfg.MaxAttempts, last)
}

// ctxErr reports the caller's context ending; a non-idempotent request in
// flight at that moment may have been applied.
func (c *Client) ctxErr(err, last error, inFlight bool) error {
	if inFlight {
		return fmt.Errorf("%w: %w", ErrAmbiguous, err)
	}
	if last != nil {
		return fmt.Errorf("%w (last error: %v)", err, last)
	}
	return err
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
