// Package loadgen runs a closed-loop load: a number of clients, each with
// one request in flight, for a while, and reports throughput, latency
// percentiles, errors by kind and a per-second series. `flotilla bench` and
// tools/etcdbench both drive their systems with it, so a side-by-side
// comparison runs the same loop and the same arithmetic. loadgen knows
// neither system: each caller names its errors' kinds (Options.Classify).
package loadgen

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
)

// Op performs one request for client (0..clients-1), drawing any random
// choice from rng, which is that client's own. It is called from the
// client's goroutine; ctx ends at the deadline. A request that returns
// after ctx ended is cut by the deadline and counts as neither an op nor
// an error.
type Op func(ctx context.Context, client int, rng *rand.Rand) error

// DefaultKind is the kind of an error that Options.Classify does not name.
const DefaultKind = "error"

// Options configure a Run.
type Options struct {
	// Clients is the number of concurrent clients, each with one request
	// in flight.
	Clients int
	// Duration is how long the run lasts (less if ctx ends first).
	Duration time.Duration
	// Label starts each progress line ("bench put").
	Label string
	// Progress receives a progress line once a second (nil: none): that
	// second's ops/s and errors, then the running totals.
	Progress io.Writer
	// Classify names the kind of a failed op's error, a short snake_case
	// word ("unavailable", "timeout"), for Result.ErrorsByKind. It is
	// called from every client's goroutine, concurrently. nil, or an empty
	// answer: DefaultKind.
	Classify func(error) string
	// Rate caps the ops started per second over all clients (0: no cap,
	// each client starts its next op as soon as the last ends). The ops are
	// spread evenly over each second; a client waits for its turn.
	Rate float64
}

// Result is what a run measured. Latencies are of successful ops only.
type Result struct {
	Ops       uint64  `json:"ops"`
	Errors    uint64  `json:"errors"`
	Seconds   float64 `json:"seconds"`
	OpsPerSec float64 `json:"ops_per_sec"`
	P50Ms     float64 `json:"p50_ms"`
	P99Ms     float64 `json:"p99_ms"`
	// ErrorsByKind counts the errors by the kind Options.Classify named;
	// the counts sum to Errors. Never nil after Run.
	ErrorsByKind map[string]uint64 `json:"errors_by_kind"`
	// PerSecond is the run second by second, by the time each op
	// completed: PerSecond[i] (T = i+1) counts the ops and errors that
	// completed in [i s, i+1 s) after the start; the last one may be
	// shorter (the run's Duration need not be whole seconds). Every second
	// of the run is there, with zeros if nothing completed in it (a
	// stall). Ops and Errors sum to Result's.
	PerSecond []Second `json:"per_second"`
}

// Second is one second of a run (Result.PerSecond).
type Second struct {
	T      int    `json:"t"` // end of the second, in whole seconds since the start: 1 is [0s, 1s)
	Ops    uint64 `json:"ops"`
	Errors uint64 `json:"errors"`
}

// Report is a run's result with its workload, as `flotilla bench -w json`
// prints it: the JSON field names and their order are a contract
// (docs/design.md): op, ops, errors, seconds, ops_per_sec, p50_ms, p99_ms,
// clients, value_size, keys, errors_by_kind (always an object, {} when
// there were no errors), per_second (always an array). See MarshalJSON.
type Report struct {
	Op string `json:"op"`
	Result
	Clients   int `json:"clients"`
	ValueSize int `json:"value_size"`
	Keys      int `json:"keys"`
}

// MarshalJSON writes the report's fields in the contract's order: the
// fields added to Result after the workload's (errors_by_kind, then
// per_second) come last, and never as null.
func (r Report) MarshalJSON() ([]byte, error) {
	type plain Report // Report's fields without this method
	kinds, series := r.ErrorsByKind, r.PerSecond
	if kinds == nil {
		kinds = map[string]uint64{}
	}
	if series == nil {
		series = []Second{}
	}
	// The outer fields hide Result's fields of the same names (they are
	// shallower) and come after plain's in the output.
	return json.Marshal(struct {
		plain
		ErrorsByKind map[string]uint64 `json:"errors_by_kind"`
		PerSecond    []Second          `json:"per_second"`
	}{plain(r), kinds, series})
}

// String is the report as one table line; errors are followed by their
// kinds.
func (r Report) String() string {
	s := fmt.Sprintf("bench %s: %d ops, %d errors in %.1fs: %.0f ops/s, p50 %.2f ms, p99 %.2f ms",
		r.Op, r.Ops, r.Errors, r.Seconds, r.OpsPerSec, r.P50Ms, r.P99Ms)
	if len(r.ErrorsByKind) > 0 {
		var b strings.Builder
		for i, k := range slices.Sorted(maps.Keys(r.ErrorsByKind)) {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "%s %d", k, r.ErrorsByKind[k])
		}
		s += "; errors: " + b.String()
	}
	return s
}

// tally is what one client counted; only its goroutine touches it until
// the run ends.
type tally struct {
	lats  []time.Duration
	kinds map[string]uint64
	secs  []Second
}

// Run runs op from o.Clients goroutines for o.Duration (or until ctx
// ends) and returns the figures.
func Run(ctx context.Context, o Options, op Op) Result {
	classify := o.Classify
	if classify == nil {
		classify = func(error) string { return DefaultKind }
	}
	// The last second's index: an op that completes at the deadline
	// itself still counts in the run's last second.
	last := max(0, int((o.Duration+time.Second-1)/time.Second)-1)
	var ops, errs atomic.Uint64
	tallies := make([]tally, o.Clients)
	start := time.Now()
	rctx, cancel := context.WithDeadline(ctx, start.Add(o.Duration))
	defer cancel()
	var wg sync.WaitGroup
	var turns chan struct{} // with a Rate: one per op allowed to start
	if o.Rate > 0 {
		turns = make(chan struct{})
		wg.Add(1)
		go func() { // paceLoop
			defer wg.Done()
			t := time.NewTicker(time.Duration(float64(time.Second) / o.Rate))
			defer t.Stop()
			for {
				select {
				case <-rctx.Done():
					return
				case <-t.C:
				}
				select {
				case turns <- struct{}{}:
				case <-rctx.Done():
					return
				case <-t.C: // every client busy: this turn is lost
				}
			}
		}()
	}
	for i := range o.Clients {
		wg.Add(1)
		go func() { // clientLoop
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(i), uint64(start.UnixNano())))
			t := tally{kinds: map[string]uint64{}}
			defer func() { tallies[i] = t }()
			for rctx.Err() == nil {
				if turns != nil {
					select {
					case <-turns:
					case <-rctx.Done():
						return
					}
				}
				t0 := time.Now()
				err := op(rctx, i, rng)
				done := time.Now()
				if rctx.Err() != nil {
					return
				}
				s := min(last, int(done.Sub(start)/time.Second))
				for len(t.secs) <= s {
					t.secs = append(t.secs, Second{T: len(t.secs) + 1})
				}
				if err != nil {
					kind := classify(err)
					if kind == "" {
						kind = DefaultKind
					}
					t.kinds[kind]++
					t.secs[s].Errors++
					errs.Add(1)
					continue
				}
				t.lats = append(t.lats, done.Sub(t0))
				t.secs[s].Ops++
				ops.Add(1)
			}
		}()
	}
	stop := make(chan struct{})
	var pwg sync.WaitGroup
	if o.Progress != nil {
		pwg.Add(1)
		go func() { // progressLoop
			defer pwg.Done()
			t := time.NewTicker(time.Second)
			defer t.Stop()
			p := progress{label: o.Label, start: start, prev: start}
			for {
				select {
				case <-stop:
					fmt.Fprintln(o.Progress)
					return
				case <-t.C:
					io.WriteString(o.Progress, p.line(time.Now(), ops.Load(), errs.Load()))
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	pwg.Wait()
	elapsed := time.Since(start)
	res := Result{
		Ops: ops.Load(), Errors: errs.Load(), Seconds: elapsed.Seconds(),
		OpsPerSec:    float64(ops.Load()) / elapsed.Seconds(),
		ErrorsByKind: map[string]uint64{},
	}
	// Every second the run lasted, even those in which nothing completed.
	n := min(last+1, int((min(elapsed, o.Duration)+time.Second-1)/time.Second))
	var all []time.Duration
	for _, t := range tallies {
		all = append(all, t.lats...)
		for k, c := range t.kinds {
			res.ErrorsByKind[k] += c
		}
		n = max(n, len(t.secs))
	}
	res.PerSecond = make([]Second, n)
	for i := range res.PerSecond {
		res.PerSecond[i].T = i + 1
	}
	for _, t := range tallies {
		for i, s := range t.secs {
			res.PerSecond[i].Ops += s.Ops
			res.PerSecond[i].Errors += s.Errors
		}
	}
	slices.Sort(all)
	res.P50Ms, res.P99Ms = percentile(all, 0.50), percentile(all, 0.99)
	return res
}

// progress makes the progress lines: the ops/s and the errors since the
// previous line (so that a stall shows as 0 ops/s at once, where a running
// average would barely move), then the totals. Each line starts with \r:
// on a terminal it overwrites the previous one; the fields have fixed
// widths, and the totals only grow, so nothing of the previous line stays.
type progress struct {
	label             string
	start, prev       time.Time
	prevOps, prevErrs uint64
}

func (p *progress) line(now time.Time, ops, errs uint64) string {
	rate := 0.0
	if dt := now.Sub(p.prev).Seconds(); dt > 0 {
		rate = float64(ops-p.prevOps) / dt
	}
	s := fmt.Sprintf("\r%s: %4.0fs %8.0f ops/s %6d errors | total %d ops, %d errors ",
		p.label, now.Sub(p.start).Seconds(), rate, errs-p.prevErrs, ops, errs)
	p.prev, p.prevOps, p.prevErrs = now, ops, errs
	return s
}

// percentile returns the p-quantile (0..1) of sorted latencies in
// milliseconds, 0 if there are none.
func percentile(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	return float64(sorted[min(len(sorted)-1, int(p*float64(len(sorted))))]) / float64(time.Millisecond)
}

// SnakeCase turns a name into an error kind: "DeadlineExceeded" →
// "deadline_exceeded", "session expired" → "session_expired", "OK" → "ok".
// Runs of anything but letters and digits become one underscore; an
// underscore also goes where a lower-case letter or digit meets an upper-
// case one, and before the last capital of an acronym that starts a word
// ("HTTPError" → "http_error").
func SnakeCase(s string) string {
	rs := []rune(s)
	var b strings.Builder
	sep := false // an underscore is due before the next letter or digit
	for i, r := range rs {
		if !unicode.IsLetter(r) && !unicode.IsDigit(r) {
			sep = b.Len() > 0
			continue
		}
		if unicode.IsUpper(r) && i > 0 {
			prev := rs[i-1]
			nextLower := i+1 < len(rs) && unicode.IsLower(rs[i+1])
			if unicode.IsLower(prev) || unicode.IsDigit(prev) || (unicode.IsUpper(prev) && nextLower) {
				sep = b.Len() > 0
			}
		}
		if sep {
			b.WriteByte('_')
			sep = false
		}
		b.WriteRune(unicode.ToLower(r))
	}
	return b.String()
}

// AppendKey appends the benchmark key of number n (n ≥ 0) to dst: 16
// lowercase hex digits of a bijective mix of n (splitmix64's finalizer).
// Distinct numbers give distinct keys, spread evenly over the hex
// keyspace, which a cluster's initial ranges cut in even parts
// (kv.InitialSplits), so a uniform workload loads every range alike from
// the first second; the same keys as fmt.Sprintf("%016x", mix(n)) without
// fmt's cost on every op (a tenth of the load generator's CPU).
func AppendKey(dst []byte, n int) []byte {
	const digits = "0123456789abcdef"
	x := mix(uint64(n))
	var b [16]byte
	for i := 15; i >= 0; i-- {
		b[i] = digits[x&15]
		x >>= 4
	}
	return append(dst, b[:]...)
}

// mix is splitmix64's finalizer: a bijection of uint64 that spreads
// consecutive numbers over the whole range.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
