package loadgen

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// The watch benchmark: watchers on one prefix while puts go in at a set
// rate (`flotilla bench watch`, tools/etcdbench --op watch). Each put's
// value carries the time it was sent; each watcher, on each event, takes
// the delivery latency (receive time less send time, one clock: the load
// generator's). The report counts deliveries as its ops: ops_per_sec is
// events delivered per second over all watchers, p50_ms and p99_ms the
// delivery latency, errors the puts that failed.

// WatchPrefix is the prefix of the watch benchmark's keys.
const WatchPrefix = "w/"

// WatchOptions configure RunWatch.
type WatchOptions struct {
	// Watchers: how many watch the prefix. Clients: how many put, each one
	// at a time, together at most Rate puts per second (0: no cap).
	Watchers, Clients int
	Rate              float64
	Duration          time.Duration
	// Keys: distinct keys under WatchPrefix; ValueSize at least 8.
	Keys, ValueSize int
	Label           string
	Progress        io.Writer
	Classify        func(error) string
	// Settle is how long after the last put the watchers may take to get
	// it. Default 2s.
	Settle time.Duration
}

// WatchStart starts watcher i on WatchPrefix and returns once it is live
// (it will see every put made after): it runs until ctx ends, calling
// observe with the value of each event it gets (from its own goroutine).
type WatchStart func(ctx context.Context, i int, observe func(value []byte)) error

// Put writes value at key.
type Put func(ctx context.Context, client int, key, value []byte) error

// WatchStats is what RunWatch counted besides the report.
type WatchStats struct {
	Puts, PutErrors uint64
	// Expected is Puts × Watchers; Delivered the events the watchers got
	// (Missing is the difference, if positive).
	Expected, Delivered, Missing uint64
}

// latencyHist is a histogram of latencies with 1% buckets from 1 µs.
type latencyHist struct {
	buckets [2400]atomic.Uint64
}

func (h *latencyHist) add(d time.Duration) {
	us := max(float64(d)/1e3, 1)
	i := min(int(math.Log(us)*100), len(h.buckets)-1)
	h.buckets[i].Add(1)
}

// quantile returns the q quantile in milliseconds (0 if empty).
func (h *latencyHist) quantile(q float64) float64 {
	var total uint64
	for i := range h.buckets {
		total += h.buckets[i].Load()
	}
	if total == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(total)))
	var seen uint64
	for i := range h.buckets {
		if seen += h.buckets[i].Load(); seen >= max(rank, 1) {
			return math.Exp(float64(i)/100) / 1e3
		}
	}
	return 0
}

// RunWatch starts the watchers, runs the puts, waits for the stragglers
// and reports.
func RunWatch(ctx context.Context, o WatchOptions, start WatchStart, put Put) (Report, WatchStats, error) {
	if o.ValueSize < 8 {
		return Report{}, WatchStats{}, fmt.Errorf("value size %d: a watch benchmark's value holds its send time, 8 bytes", o.ValueSize)
	}
	if o.Settle == 0 {
		o.Settle = 2 * time.Second
	}
	var hist latencyHist
	var delivered atomic.Uint64
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	// Deliveries by second of the run (index 0: before the puts began).
	var mu sync.Mutex
	var perSec []uint64
	var began atomic.Int64
	observe := func(v []byte) {
		now := time.Now()
		if len(v) < 8 {
			return
		}
		sent := time.Unix(0, int64(binary.BigEndian.Uint64(v)))
		hist.add(now.Sub(sent))
		delivered.Add(1)
		if b := began.Load(); b != 0 {
			s := int(now.Sub(time.Unix(0, b)) / time.Second)
			mu.Lock()
			for len(perSec) <= s {
				perSec = append(perSec, 0)
			}
			perSec[s]++
			mu.Unlock()
		}
	}
	if o.Progress != nil {
		fmt.Fprintf(o.Progress, "%s: starting %d watchers\n", o.Label, o.Watchers)
	}
	// Start them a few at a time: a thousand dials and streams at once
	// measure the start, not the watch.
	sem := make(chan struct{}, 32)
	errs := make(chan error, o.Watchers)
	var wg sync.WaitGroup
	for i := 0; i < o.Watchers; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := start(wctx, i, observe); err != nil {
				errs <- fmt.Errorf("watcher %d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return Report{}, WatchStats{}, err
	}
	values := make([][]byte, o.Clients)
	keys := make([][]byte, o.Clients)
	began.Store(time.Now().UnixNano())
	r := Run(ctx, Options{Clients: o.Clients, Duration: o.Duration, Label: o.Label + " puts", Progress: o.Progress, Classify: o.Classify, Rate: o.Rate},
		func(ctx context.Context, i int, rng *rand.Rand) error {
			if values[i] == nil {
				values[i] = make([]byte, o.ValueSize)
				for j := 8; j < len(values[i]); j++ {
					values[i][j] = 'a' + byte(j%26)
				}
			}
			binary.BigEndian.PutUint64(values[i], uint64(time.Now().UnixNano()))
			keys[i] = AppendKey(append(keys[i][:0], WatchPrefix...), rng.IntN(o.Keys))
			return put(ctx, i, keys[i], values[i])
		})
	st := WatchStats{Puts: r.Ops, PutErrors: r.Errors, Expected: r.Ops * uint64(o.Watchers)}
	// The stragglers: until every acknowledged put reached every watcher,
	// or Settle.
	deadline := time.Now().Add(o.Settle)
	for delivered.Load() < st.Expected && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	stop()
	st.Delivered = delivered.Load()
	if st.Delivered < st.Expected {
		st.Missing = st.Expected - st.Delivered
	}
	secs := r.Seconds
	rep := Report{Op: "watch", Clients: o.Watchers, ValueSize: o.ValueSize, Keys: o.Keys, Result: Result{
		Ops: st.Delivered, Errors: r.Errors, Seconds: secs, P50Ms: hist.quantile(0.5), P99Ms: hist.quantile(0.99),
		ErrorsByKind: r.ErrorsByKind,
	}}
	if secs > 0 {
		rep.OpsPerSec = float64(st.Delivered) / secs
	}
	mu.Lock()
	for i, n := range perSec {
		rep.PerSecond = append(rep.PerSecond, Second{T: i + 1, Ops: n})
	}
	mu.Unlock()
	if o.Progress != nil {
		fmt.Fprintf(o.Progress, "%s: %d puts (%d failed, %.0f/s), %d watchers: %d of %d deliveries (%d missing), delivery p50 %.2f ms, p99 %.2f ms\n",
			o.Label, st.Puts, st.PutErrors, r.OpsPerSec, o.Watchers, st.Delivered, st.Expected, st.Missing, rep.P50Ms, rep.P99Ms)
	}
	return rep, st, nil
}
