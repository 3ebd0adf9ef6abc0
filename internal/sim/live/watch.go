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

// checkWatches compares the watchers' events with a fresh watch's, and
// looks for every acknowledged write among them.
func (r *run) checkWatches(ctx context.Context, cl *client.Client, ws []*liveWatcher, res *Result) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	since := time.Now()
	ref, err := startWatcher(ctx, cl)
	if err != nil {
		res.WatchViolations = append(res.WatchViolations, fmt.Sprintf("reference watch: %v", err))
		return
	}
	err = ref.current(ctx, since)
	// Stopped before its events are read: its goroutine writes them.
	ref.w.Close()
	<-ref.done
	if err != nil {
		res.WatchViolations = append(res.WatchViolations, fmt.Sprintf("reference watch: %v", err))
		return
	}
	want := ref.mu.events
	r.mu.Lock()
	ops := append([]sim.Op(nil), r.mu.ops...)
	r.mu.Unlock()
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
				res.WatchViolations = append(res.WatchViolations, fmt.Sprintf("acknowledged write %q=%q missing from a fresh watch's events: %v", k, o.In.Value, want[k]))
			}
		}
	}
	for i, w := range ws {
		if err := w.current(ctx, since); err != nil {
			res.WatchViolations = append(res.WatchViolations, fmt.Sprintf("watcher %d: %v", i, err))
			continue
		}
		w.mu.Lock()
		for k, evs := range want {
			if !slices.Equal(w.mu.events[k], evs) {
				res.WatchViolations = append(res.WatchViolations, fmt.Sprintf("watcher %d (served by nodes %v): key %q got %v, want %v", i, w.mu.nodes, k, w.mu.events[k], evs))
			}
		}
		for k, evs := range w.mu.events {
			res.WatchEvents += len(evs)
			if _, ok := want[k]; !ok {
				res.WatchViolations = append(res.WatchViolations, fmt.Sprintf("watcher %d: events %v of key %q, which has none", i, evs, k))
			}
		}
		res.WatchResumes += len(w.mu.nodes) - 1
		w.mu.Unlock()
	}
	if len(res.WatchViolations) > 0 {
		r.logf("watch check: %d violations; the first: %s", len(res.WatchViolations), res.WatchViolations[0])
	} else {
		r.logf("watch check: %d watchers got %d events, resumed on another node %d times, each exactly the writes of a fresh watch", len(ws), res.WatchEvents, res.WatchResumes)
	}
}
