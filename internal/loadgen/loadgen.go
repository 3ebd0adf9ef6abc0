// Package loadgen runs a closed-loop load: a number of clients, each with
// one request in flight, for a while, and reports throughput and latency
// percentiles. `flotilla bench` and tools/etcdbench both drive their
// systems with it, so a side-by-side comparison runs the same loop and the
// same arithmetic.
package loadgen

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Op performs one request for client (0..clients-1), drawing any random
// choice from rng, which is that client's own. It is called from the
// client's goroutine; ctx ends at the deadline. A request that returns
// after ctx ended is cut by the deadline and counts as neither an op nor
// an error.
type Op func(ctx context.Context, client int, rng *rand.Rand) error

// Result is what a run measured. Latencies are of successful ops only.
type Result struct {
	Ops       uint64  `json:"ops"`
	Errors    uint64  `json:"errors"`
	Seconds   float64 `json:"seconds"`
	OpsPerSec float64 `json:"ops_per_sec"`
	P50Ms     float64 `json:"p50_ms"`
	P99Ms     float64 `json:"p99_ms"`
}

// Report is a run's result with its workload, as `flotilla bench -w json`
// prints it: the JSON field names are a contract (DESIGN.md).
type Report struct {
	Op string `json:"op"`
	Result
	Clients   int `json:"clients"`
	ValueSize int `json:"value_size"`
	Keys      int `json:"keys"`
}

// String is the report as one table line.
func (r Report) String() string {
	return fmt.Sprintf("bench %s: %d ops, %d errors in %.1fs: %.0f ops/s, p50 %.2f ms, p99 %.2f ms",
		r.Op, r.Ops, r.Errors, r.Seconds, r.OpsPerSec, r.P50Ms, r.P99Ms)
}

// Run runs op from clients goroutines for d (or until ctx ends) and
// returns the figures. Once a second it writes a progress line, labelled
// label, to progress (nil: none).
func Run(ctx context.Context, clients int, d time.Duration, label string, progress io.Writer, op Op) Result {
	var ops, errs atomic.Uint64
	lats := make([][]time.Duration, clients)
	start := time.Now()
	rctx, cancel := context.WithDeadline(ctx, start.Add(d))
	defer cancel()
	var wg sync.WaitGroup
	for i := range clients {
		wg.Add(1)
		go func() { // clientLoop
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(i), uint64(start.UnixNano())))
			for rctx.Err() == nil {
				t0 := time.Now()
				err := op(rctx, i, rng)
				if rctx.Err() != nil {
					return
				}
				if err != nil {
					errs.Add(1)
					continue
				}
				lats[i] = append(lats[i], time.Since(t0))
				ops.Add(1)
			}
		}()
	}
	done := make(chan struct{})
	var pwg sync.WaitGroup
	if progress != nil {
		pwg.Add(1)
		go func() { // progressLoop
			defer pwg.Done()
			t := time.NewTicker(time.Second)
			defer t.Stop()
			for {
				select {
				case <-done:
					fmt.Fprintln(progress)
					return
				case <-t.C:
					el := time.Since(start).Seconds()
					fmt.Fprintf(progress, "\r%s: %4.0fs  %d ops  %.0f ops/s  %d errors ", label, el, ops.Load(), float64(ops.Load())/el, errs.Load())
				}
			}
		}()
	}
	wg.Wait()
	close(done)
	pwg.Wait()
	elapsed := time.Since(start).Seconds()
	var all []time.Duration
	for _, l := range lats {
		all = append(all, l...)
	}
	slices.Sort(all)
	return Result{
		Ops: ops.Load(), Errors: errs.Load(), Seconds: elapsed,
		OpsPerSec: float64(ops.Load()) / elapsed,
		P50Ms:     percentile(all, 0.50), P99Ms: percentile(all, 0.99),
	}
}

// percentile returns the p-quantile (0..1) of sorted latencies in
// milliseconds, 0 if there are none.
func percentile(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	return float64(sorted[min(len(sorted)-1, int(p*float64(len(sorted))))]) / float64(time.Millisecond)
}

// AppendKey appends the benchmark key of number n (0 ≤ n < 10^8) to dst:
// "bench-" and n in 8 zero-padded digits, the same keys as
// fmt.Sprintf("bench-%08d", n) without fmt's cost on every op, which was
// a tenth of the load generator's CPU.
func AppendKey(dst []byte, n int) []byte {
	dst = append(dst, "bench-00000000"...)
	for i := len(dst) - 1; n > 0 && i >= len(dst)-8; i-- {
		dst[i] = byte('0' + n%10)
		n /= 10
	}
	return dst
}
