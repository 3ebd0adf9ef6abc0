package client

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/kv"
)

// WatchSpec says what a watch follows. Set one of Key, Prefix, the span
// [Start, End) (both empty: the whole keyspace), or Token.
type WatchSpec struct {
	Key, Prefix, Start, End []byte
	// Revision: deliver the writes at or above it; 0: from now.
	Revision uint64
	// Token resumes a watch from a WatchResponse's Token: exactly the
	// writes after that response's events.
	Token []byte
	// PrevKV: events carry the key's previous value.
	PrevKV bool
	// Progress: an idle watch gets a response without events this often
	// (Progress true). 0: every 10 s; at least 50 ms.
	Progress time.Duration
}

// WatchEvent is one write.
type WatchEvent struct {
	// Delete: the key was deleted; KV holds its key and the delete's
	// revision.
	Delete bool
	KV     KeyValue
	// Prev is the key before the write, when asked for and it had a value.
	Prev *KeyValue
}

// WatchResponse is one batch of a watch: events in revision order for each
// key. A revision's writes in one range come in one batch, but for a
// transaction whose keys the watch holds in two pieces (a range that merged
// under it), whose writes may come in two.
type WatchResponse struct {
	Events []WatchEvent
	// Token resumes the watch right after Events (WatchSpec.Token), on any
	// node, in this process or another.
	Token []byte
	// Revision: every write of the span at or below it, in each of its
	// ranges, has been delivered.
	Revision uint64
	// Progress: a progress notification, without events: every write of
	// the span that the serving node (Node) has applied has been delivered
	// (a follower may lag the leader).
	Progress bool
	// Created: the watch's first response, without events: a node has set
	// the watch up (Token resumes it from its start).
	Created bool
	// Node is the node that served it.
	Node uint64
}

// defaultWatchProgress and minWatchProgress are the server's default and
// least progress intervals (server/watch.go).
const (
	defaultWatchProgress = 10 * time.Second
	minWatchProgress     = 50 * time.Millisecond
)

// watchMailbox bounds the responses a Watcher holds for a slow reader;
// beyond it the watcher stops reading its stream, and the server, its
// feed: a slow reader slows its watch, and never loses an event.
const watchMailbox = 64

// Watcher delivers a watch's responses. Create it with Client.Watch; Close
// it when done.
//
// It delivers every write of its span once, in order for each key: when
// its stream breaks (a node stops, a restart) it watches on from its last
// token on another node. It ends with ErrCompacted when the history it
// needs is gone (it fell further behind than the cluster keeps history),
// and then the caller must start again from a fresh read.
type Watcher struct {
	c      *Client
	spec   WatchSpec
	ctx    context.Context
	cancel context.CancelFunc
	queue  chan WatchResponse
	done   chan struct{} // closed when watchLoop returned
	// ready is closed once the first response is queued, or the watch
	// failed before it (readyOnce).
	ready     chan struct{}
	readyOnce sync.Once
	mu        struct {
		sync.Mutex
		err     error
		started bool // a response was queued
	}
}

// Watch starts a watch until ctx ends or Close. It returns once a node has
// set the watch up: every write that begins after Watch returns is
// delivered (a watch from now starts then). Its first response is that
// node's answer, without events (Created), whose Token resumes the watch
// from its start; a reconnect to another node brings another Created
// response, with the token the watch resumed from.
func (c *Client) Watch(ctx context.Context, spec WatchSpec) (*Watcher, error) {
	n := 0
	for _, set := range []bool{len(spec.Key) > 0, len(spec.Prefix) > 0, len(spec.Start) > 0 || len(spec.End) > 0, len(spec.Token) > 0} {
		if set {
			n++
		}
	}
	if n > 1 {
		return nil, fmt.Errorf("%w: a watch takes one of a key, a prefix, a span or a token", ErrInvalidArgument)
	}
	if len(spec.Token) > 0 {
		if _, _, err := kv.WatchTokenSpan(spec.Token); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalidArgument, err)
		}
	}
	if len(spec.Key) > 0 {
		if err := checkKV(spec.Key, nil); err != nil {
			return nil, err
		}
	}
	w := &Watcher{c: c, spec: spec, queue: make(chan WatchResponse, watchMailbox), done: make(chan struct{}), ready: make(chan struct{})}
	w.ctx, w.cancel = context.WithCancel(ctx)
	go w.watchLoop()
	select {
	case <-w.ready:
	case <-ctx.Done():
	}
	w.mu.Lock()
	started, err := w.mu.started, w.mu.err
	w.mu.Unlock()
	if !started {
		w.Close()
		if err == nil {
			err = ctx.Err()
		}
		return nil, err
	}
	return w, nil
}

// Next returns the next response, waiting until one arrives, or the
// watch's error once it ended.
func (w *Watcher) Next(ctx context.Context) (WatchResponse, error) {
	select {
	case r, ok := <-w.queue:
		if ok {
			return r, nil
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		return WatchResponse{}, w.mu.err
	case <-ctx.Done():
		return WatchResponse{}, ctx.Err()
	}
}

// Close stops the watch; Next then returns context.Canceled.
func (w *Watcher) Close() {
	w.cancel()
	<-w.done
}

// watchLoop keeps one Watch stream open, on the endpoints in turn,
// resuming from the last token after a failure, and queues what it
// receives.
func (w *Watcher) watchLoop() {
	defer close(w.done)
	defer close(w.queue)
	c := w.c
	req := &api.WatchRequest{Key: w.spec.Key, Prefix: w.spec.Prefix, Start: w.spec.Start, End: w.spec.End,
		StartRevision: w.spec.Revision, ResumeToken: w.spec.Token, PrevKv: w.spec.PrevKV,
		ProgressIntervalMs: uint32(w.spec.Progress / time.Millisecond)}
	fail := func(err error) {
		w.mu.Lock()
		w.mu.err = err
		w.mu.Unlock()
		w.readyOnce.Do(func() { close(w.ready) })
	}
	// A stream silent for three progress intervals is given up, and the
	// watch goes on elsewhere: its node may be frozen or cut off, with the
	// connection still open (the promise: one quietly bad peer must not
	// stop a client).
	silence := defaultWatchProgress
	if w.spec.Progress > 0 {
		silence = max(w.spec.Progress, minWatchProgress)
	}
	silence = max(3*silence, time.Second)
	backoff := c.cfg.BackoffBase
	for attempt := 0; ; attempt++ {
		if w.ctx.Err() != nil {
			fail(w.ctx.Err())
			return
		}
		cc, err := c.conn(c.target(0, attempt))
		if err != nil {
			fail(err)
			return
		}
		sctx, scancel := context.WithCancel(w.ctx)
		watchdog := time.AfterFunc(silence, scancel)
		stream, err := api.NewKVClient(cc).Watch(sctx, req)
		if err == nil {
			for {
				r, rerr := stream.Recv()
				if rerr != nil {
					err = rerr
					break
				}
				// A slow reader is no silent stream: the watchdog waits
				// while the response waits for room.
				watchdog.Stop()
				resp := watchResponse(r)
				select {
				case w.queue <- resp:
				case <-w.ctx.Done():
					scancel()
					fail(w.ctx.Err())
					return
				}
				w.mu.Lock()
				w.mu.started = true
				w.mu.Unlock()
				w.readyOnce.Do(func() { close(w.ready) })
				watchdog.Reset(silence)
				// From now on the watch resumes after this response.
				req = &api.WatchRequest{ResumeToken: r.ResumeToken, PrevKv: req.PrevKv, ProgressIntervalMs: req.ProgressIntervalMs}
				// The backoff starts over, but not the choice of node: a
				// node that answers and then ends the watch (cut off from
				// the others: no leader there) must not get it again and
				// again. attempt only grows, so the watch goes round the
				// nodes.
				backoff = c.cfg.BackoffBase
			}
		}
		watchdog.Stop()
		scancel()
		if w.ctx.Err() != nil {
			fail(w.ctx.Err())
			return
		}
		if kind, cerr := classify(err); kind == fatal {
			fail(cerr)
			return
		}
		c.log.Debug("client: watch stream ended", "err", err)
		if wait(w.ctx, backoff) != nil {
			fail(w.ctx.Err())
			return
		}
		backoff = min(2*backoff, c.cfg.BackoffMax)
	}
}

func watchResponse(r *api.WatchResponse) WatchResponse {
	out := WatchResponse{Token: bytes.Clone(r.ResumeToken), Revision: r.Revision, Progress: r.Progress, Created: r.Created,
		Node: r.GetHeader().GetNode(), Events: make([]WatchEvent, len(r.Events))}
	for i, e := range r.Events {
		ev := WatchEvent{Delete: e.Type == api.WatchEvent_DELETE, KV: keyValue(e.Kv)}
		if e.PrevKv != nil {
			p := keyValue(e.PrevKv)
			ev.Prev = &p
		}
		out.Events[i] = ev
	}
	return out
}
