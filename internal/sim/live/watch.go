package live

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/flotilla/flotilla/client"
	"github.com/flotilla/flotilla/internal/sim"
)

// The watch checker of a live run.
//
// Watchers follow every key of the workload from revision 1 with the Go
// client's Watch, through the run's faults: when a node is killed, paused
// or cut off, a watcher's stream breaks or goes silent and the client goes
// on from its token elsewhere. After the faults, each watcher reads until
// it is current (a progress notification after the final reads), and its
// events, key by key, must be exactly those of a fresh watch from revision
// 1: none lost, repeated or out of order. Every acknowledged write must be
// among them.

// watchProgress is how often an idle watcher hears of its progress: the
// check waits for one to know a watcher is current.
const watchProgress = 200 * time.Millisecond

// liveEvent is an event as a watcher got it.
type liveEvent struct {
	rev   uint64
	value string
	del   bool
}

func (e liveEvent) String() string {
	if e.del {
		return fmt.Sprintf("del@%d", e.rev)
	}
	return fmt.Sprintf("%q@%d", e.value, e.rev)
}

// liveWatcher is one watcher of the run.
type liveWatcher struct {
	w  *client.Watcher
	mu struct {
		sync.Mutex
		events map[string][]liveEvent
		// nodes that served it, in the order they did.
		nodes []uint64
		// lastProgress is when it last got a progress notification.
		lastProgress time.Time
		err          error
	}
	done chan struct{}
}

func startWatcher(ctx context.Context, cl *client.Client) (*liveWatcher, error) {
	w, err := cl.Watch(ctx, client.WatchSpec{Prefix: []byte("k"), Revision: 1, Progress: watchProgress})
	if err != nil {
		return nil, err
	}
	lw := &liveWatcher{w: w, done: make(chan struct{})}
	lw.mu.events = map[string][]liveEvent{}
	go lw.run(ctx) // liveWatcher: one per watcher of the run
	return lw, nil
}

func (lw *liveWatcher) run(ctx context.Context) {
	defer close(lw.done)
	for {
		r, err := lw.w.Next(ctx)
		lw.mu.Lock()
		if err != nil {
			if ctx.Err() == nil {
				lw.mu.err = err
			}
			lw.mu.Unlock()
			return
		}
		if n := len(lw.mu.nodes); n == 0 || lw.mu.nodes[n-1] != r.Node {
			lw.mu.nodes = append(lw.mu.nodes, r.Node)
		}
		if r.Progress {
			lw.mu.lastProgress = time.Now()
		}
		for _, e := range r.Events {
			k := string(e.KV.Key)
			lw.mu.events[k] = append(lw.mu.events[k], liveEvent{rev: e.KV.Revision, value: string(e.KV.Value), del: e.Delete})
		}
		lw.mu.Unlock()
	}
}

// current waits until the watcher got a progress notification after since.
func (lw *liveWatcher) current(ctx context.Context, since time.Time) error {
	for {
		lw.mu.Lock()
		ok, err := lw.mu.lastProgress.After(since), lw.mu.err
		lw.mu.Unlock()
		switch {
		case err != nil:
			return err
		case ok:
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// events returns a copy of the watcher's events.
func (lw *liveWatcher) events() map[string][]liveEvent {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	out := make(map[string][]liveEvent, len(lw.mu.events))
	for k, evs := range lw.mu.events {
		out[k] = slices.Clone(evs)
	}
	return out
}

// checkWatches compares the watchers' events with a fresh watch's, and
// looks for every acknowledged write among them. A progress notification
// says a watch has what its node applied, and a node may lag: until a
// deadline, a difference is looked at again after the next one.
func (r *run) checkWatches(ctx context.Context, cl *client.Client, ws []*liveWatcher, res *Result) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	ref, err := startWatcher(ctx, cl)
	if err != nil {
		res.WatchViolations = append(res.WatchViolations, fmt.Sprintf("reference watch: %v", err))
		return
	}
	defer func() {
		ref.w.Close()
		<-ref.done
	}()
	r.mu.Lock()
	ops := append([]sim.Op(nil), r.mu.ops...)
	r.mu.Unlock()
	deadline := time.Now().Add(20 * time.Second)
	var violations []string
	for {
		since := time.Now()
		violations = violations[:0]
		if err := ref.current(ctx, since); err != nil {
			violations = append(violations, fmt.Sprintf("reference watch: %v", err))
			break
		}
		want := ref.events()
		violations = append(violations, missingAcks(ops, want)...)
		for i, w := range ws {
			if err := w.current(ctx, since); err != nil {
				violations = append(violations, fmt.Sprintf("watcher %d: %v", i, err))
				continue
			}
			got := w.events()
			w.mu.Lock()
			nodes := slices.Clone(w.mu.nodes)
			w.mu.Unlock()
			for k, evs := range want {
				if !slices.Equal(got[k], evs) {
					violations = append(violations, fmt.Sprintf("watcher %d (served by nodes %v): key %q got %v, want %v", i, nodes, k, got[k], evs))
				}
			}
			for k, evs := range got {
				if _, ok := want[k]; !ok {
					violations = append(violations, fmt.Sprintf("watcher %d: events %v of key %q, which has none", i, evs, k))
				}
			}
		}
		if len(violations) == 0 || time.Now().After(deadline) {
			break
		}
	}
	res.WatchViolations = append(res.WatchViolations, violations...)
	for _, w := range ws {
		for _, evs := range w.events() {
			res.WatchEvents += len(evs)
		}
		w.mu.Lock()
		res.WatchResumes += len(w.mu.nodes) - 1
		w.mu.Unlock()
	}
	if len(res.WatchViolations) > 0 {
		r.logf("watch check: %d violations; the first: %s", len(res.WatchViolations), res.WatchViolations[0])
	} else {
		r.logf("watch check: %d watchers got %d events, resumed on another node %d times, each exactly the writes of a fresh watch", len(ws), res.WatchEvents, res.WatchResumes)
	}
}

// missingAcks lists the acknowledged writes of ops missing from want.
func missingAcks(ops []sim.Op, want map[string][]liveEvent) []string {
	var out []string
	for _, o := range ops {
		acked := o.Return != sim.NeverReturned && !o.Out.Unknown
		if !acked || o.In.Kind == sim.OpGet || ((o.In.Kind == sim.OpCAS || o.In.Kind == sim.OpTxn) && !o.Out.OK) {
			continue
		}
		keys := []string{o.In.Key}
		if o.In.Kind == sim.OpTxn {
			keys = append(keys, o.In.Key+sim.PartnerSuffix)
		}
		for _, k := range keys {
			if !slices.ContainsFunc(want[k], func(e liveEvent) bool { return !e.del && e.value == o.In.Value }) {
				out = append(out, fmt.Sprintf("acknowledged write %q=%q missing from a fresh watch's events: %v", k, o.In.Value, want[k]))
			}
		}
	}
	return out
}
