package server

import (
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/internal/ranges"
	"github.com/flotilla/flotilla/kv"
)

// Watch limits.
const (
	// defaultProgressInterval is how often an idle watch hears of its
	// progress when the request does not say.
	defaultProgressInterval = 10 * time.Second
	// minProgressInterval bounds how often a watch may ask to.
	minProgressInterval = 50 * time.Millisecond
	// watchLeaderCheck is how often an idle watch checks that its ranges
	// have a leader here (watchLeaders).
	watchLeaderCheck = time.Second
	// watchLeaderlessTimeouts: a watch ends when one of its ranges has had
	// no leader here for this many election timeouts.
	watchLeaderlessTimeouts = 3
)

// watchSpan returns the span a watch request names; InvalidArgument if it
// names none or more than one.
func watchSpan(r *api.WatchRequest) (start, end []byte, err error) {
	n := 0
	for _, set := range []bool{len(r.Key) > 0, len(r.Prefix) > 0, len(r.Start) > 0 || len(r.End) > 0, len(r.ResumeToken) > 0} {
		if set {
			n++
		}
	}
	switch {
	case n > 1:
		return nil, nil, status.Error(codes.InvalidArgument, "server: a watch takes one of a key, a prefix, a span or a resume token")
	case len(r.ResumeToken) > 0:
		if r.StartRevision != 0 {
			return nil, nil, status.Error(codes.InvalidArgument, "server: a watch resumed from a token takes no start revision")
		}
		start, end, err = kv.WatchTokenSpan(r.ResumeToken)
		if err != nil {
			return nil, nil, status.Error(codes.InvalidArgument, err.Error())
		}
		return start, end, nil
	case len(r.Key) > 0:
		if err := kv.CheckKey(r.Key); err != nil {
			return nil, nil, status.Error(codes.InvalidArgument, err.Error())
		}
		return r.Key, append(append([]byte(nil), r.Key...), 0), nil
	case len(r.Prefix) > 0:
		return r.Prefix, kv.PrefixEnd(r.Prefix), nil
	}
	// A span; none at all is the whole keyspace.
	return r.Start, r.End, nil
}

// storeReplicas is the node's replicas as a watch reads them.
type storeReplicas struct{ st *ranges.Store }

func (r storeReplicas) Covering(start, end []byte) []*kv.StateMachine {
	reps := r.st.Covering(start, end)
	out := make([]*kv.StateMachine, len(reps))
	for i, rep := range reps {
		out[i] = rep.SM
	}
	return out
}

// Watch streams the writes of a span from this node's replicas (see
// kv/watch.go). Leader or follower, a replica serves its writes as it
// applies them; a watch costs the apply path one append to the range's
// feed while it is watched, and a slow watcher reads the history at its
// own pace, holding one batch at a time.
func (k *kvService) Watch(req *api.WatchRequest, stream api.KV_WatchServer) error {
	start, end, err := watchSpan(req)
	if err != nil {
		return k.s.count("watch", err)
	}
	progress := defaultProgressInterval
	if req.ProgressIntervalMs > 0 {
		progress = max(time.Duration(req.ProgressIntervalMs)*time.Millisecond, minProgressInterval)
	}
	w, err := kv.NewWatch(storeReplicas{k.s.ranges}, kv.WatchOptions{
		Start: start, End: end, Revision: req.StartRevision, Token: req.ResumeToken, PrevKV: req.PrevKv,
	})
	if err != nil {
		return k.s.count("watch", status.Error(codes.InvalidArgument, err.Error()))
	}
	defer w.Close()
	k.s.metrics.watchers.Inc()
	defer k.s.metrics.watchers.Dec()
	ctx := stream.Context()
	// The first response, at once: the watch is set up (a watch from now
	// starts here), and its token resumes it from there.
	if err := w.Start(ctx); err != nil {
		return k.s.count("watch", watchError(err))
	}
	// Between events the watch looks at least once a second whether its
	// ranges still have a leader here, and sends progress at its own pace.
	check := min(progress, watchLeaderCheck)
	leaderless := map[uint64]time.Time{}
	if err := k.sendWatch(stream, w.Current(), true); err != nil {
		return err
	}
	lastSent := time.Now()
	for {
		b, err := w.Next(ctx, check)
		if err != nil {
			return k.s.count("watch", watchError(err))
		}
		if len(b.Events) == 0 {
			if err := k.s.watchLeaders(w.Ranges(), leaderless); err != nil {
				return k.s.count("watch", err)
			}
			if time.Since(lastSent) < progress {
				continue
			}
		}
		if err := k.sendWatch(stream, b, false); err != nil {
			return err
		}
		lastSent = time.Now()
	}
}

// sendWatch sends one batch of a watch: its first (created), or events, or
// a progress notification.
func (k *kvService) sendWatch(stream api.KV_WatchServer, b kv.WatchBatch, created bool) error {
	resp := &api.WatchResponse{
		Header:      &api.Header{Node: k.s.cfg.NodeID},
		Events:      make([]*api.WatchEvent, len(b.Events)),
		ResumeToken: b.Token,
		Revision:    b.Revision,
		Progress:    len(b.Events) == 0 && !created,
		Created:     created,
	}
	for i, ev := range b.Events {
		e := &api.WatchEvent{Kv: apiKeyValue(ev.KV, 0)}
		if ev.Delete {
			e.Type = api.WatchEvent_DELETE
		}
		if ev.Prev != nil {
			e.PrevKv = apiKeyValue(*ev.Prev, 0)
		}
		resp.Events[i] = e
	}
	if err := stream.Send(resp); err != nil {
		return err
	}
	k.s.metrics.watchEvents.Add(float64(len(b.Events)))
	return nil
}

// watchLeaders ends a watch (Unavailable) when one of its ranges has had
// no leader on this node for watchLeaderlessTimeouts election timeouts:
// the node is cut off from the others, or they lost their quorum. Its
// replicas would go on serving a watch that sees no new write, with
// progress notifications that look healthy, for as long as the cut lasts;
// the client goes on from its token on another node instead. since holds
// when each range was first seen without a leader.
func (s *Server) watchLeaders(ranges []uint64, since map[uint64]time.Time) error {
	if s.watchIgnoreLeaders {
		return nil // the naive watch of the negative control
	}
	bound := time.Duration(watchLeaderlessTimeouts*s.cfg.ElectionTicks) * s.cfg.TickInterval
	now := time.Now()
	for _, g := range ranges {
		if s.leaderOf(g) != 0 {
			delete(since, g)
			continue
		}
		t, ok := since[g]
		if !ok {
			since[g] = now
			continue
		}
		if now.Sub(t) >= bound {
			return status.Errorf(codes.Unavailable, "server: range %d has had no leader on node %d for %v (watch from another node)", g, s.cfg.NodeID, now.Sub(t).Round(time.Millisecond))
		}
	}
	return nil
}

// watchError maps a watch's error to a gRPC status: OutOfRange when its
// history is gone, Unavailable when this node holds no replica of part of
// the span (the client goes on elsewhere from its token).
func watchError(err error) error {
	switch {
	case errors.Is(err, kv.ErrCompacted):
		return status.Error(codes.OutOfRange, err.Error())
	case errors.Is(err, kv.ErrNoReplica):
		return status.Error(codes.Unavailable, fmt.Sprintf("server: %v (watch from another node)", err))
	case status.Code(err) != codes.Unknown:
		return err
	}
	return status.FromContextError(err).Err()
}
