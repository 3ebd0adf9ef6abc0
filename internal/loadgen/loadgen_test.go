package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestRunCountsOpsErrorsAndLatency: every op is counted once as an op or
// an error, latencies are measured on successes only, and each client gets
// its own stream of random choices.
func TestRunCountsOpsErrorsAndLatency(t *testing.T) {
	var calls atomic.Uint64
	seen := make([]map[int]bool, 4)
	for i := range seen {
		seen[i] = map[int]bool{}
	}
	r := Run(context.Background(), Options{Clients: 4, Duration: 300 * time.Millisecond}, func(ctx context.Context, c int, rng *rand.Rand) error {
		n := calls.Add(1)
		seen[c][rng.IntN(1000)] = true
		if n%4 == 0 {
			return errors.New("planted failure")
		}
		select { // a request that takes a while, cut by the deadline at the end
		case <-time.After(time.Millisecond):
		case <-ctx.Done():
		}
		return nil
	})
	if r.Ops == 0 || r.Errors == 0 {
		t.Fatalf("ops %d errors %d: both kinds were planted", r.Ops, r.Errors)
	}
	if got := r.Ops + r.Errors; got > calls.Load() || calls.Load()-got > 4 {
		t.Fatalf("%d ops + %d errors from %d calls: at most the 4 cut by the deadline go uncounted", r.Ops, r.Errors, calls.Load())
	}
	if r.P50Ms < 1 || r.P99Ms < r.P50Ms {
		t.Fatalf("p50 %.3f ms, p99 %.3f ms: each success took at least 1 ms", r.P50Ms, r.P99Ms)
	}
	for c := range seen {
		if len(seen[c]) < 2 {
			t.Fatalf("client %d drew %d distinct values", c, len(seen[c]))
		}
	}
	// No Classify: every error is of the default kind.
	if want := map[string]uint64{DefaultKind: r.Errors}; !reflect.DeepEqual(r.ErrorsByKind, want) {
		t.Fatalf("errors_by_kind %v, want %v", r.ErrorsByKind, want)
	}
}

// kindErr is an error that carries its kind, as a gRPC status carries its
// code.
type kindErr struct{ kind string }

func (e kindErr) Error() string { return "planted " + e.kind }

var errPlanted = errors.New("planted sentinel")

// TestRunErrorsByKind: each client's ops fail on a fixed schedule with
// typed, wrapped and unnamed errors, then block until the deadline cuts
// them; errors_by_kind counts every error once, by the kind Classify
// names, and an unnamed one as DefaultKind.
func TestRunErrorsByKind(t *testing.T) {
	const clients = 4
	calls := make([]int, clients) // calls[c] is touched by client c only
	classify := func(err error) string {
		var ke kindErr
		switch {
		case errors.As(err, &ke):
			return ke.kind
		case errors.Is(err, errPlanted):
			return "planted"
		}
		return ""
	}
	r := Run(context.Background(), Options{Clients: clients, Duration: 500 * time.Millisecond, Classify: classify}, func(ctx context.Context, c int, rng *rand.Rand) error {
		calls[c]++
		n := calls[c]
		if n > 20 { // the rest of the run: one request, cut by the deadline
			<-ctx.Done()
			return ctx.Err()
		}
		switch n % 5 { // per client, of 20 calls: 4 of each error, 8 successes
		case 0:
			return fmt.Errorf("attempt %d: %w", n, kindErr{"unavailable"})
		case 1:
			return fmt.Errorf("attempt %d: %w", n, errPlanted)
		case 2:
			return errors.New("nobody names this one")
		}
		return nil
	})
	want := map[string]uint64{"unavailable": 4 * clients, "planted": 4 * clients, DefaultKind: 4 * clients}
	if !reflect.DeepEqual(r.ErrorsByKind, want) {
		t.Fatalf("errors_by_kind %v, want %v", r.ErrorsByKind, want)
	}
	if r.Ops != 8*clients || r.Errors != 12*clients {
		t.Fatalf("ops %d errors %d, want %d and %d", r.Ops, r.Errors, 8*clients, 12*clients)
	}
	if want := []Second{{T: 1, Ops: 8 * clients, Errors: 12 * clients}}; !reflect.DeepEqual(r.PerSecond, want) {
		t.Fatalf("per_second %+v, want %+v", r.PerSecond, want)
	}
	if s := (Report{Op: "put", Result: r}).String(); !strings.HasSuffix(s, "; errors: error 16, planted 16, unavailable 16") {
		t.Fatalf("table line %q lacks the kinds", s)
	}
}

// TestRunPerSecondSeriesShowsStall: every client blocks once, from before
// the end of the first second until into the third, and that op then
// fails; the series has every second of the run, counts each op in the
// second it completed (the stalled ops' errors in the third, although they
// started in the first), so the second second is empty, and sums to the
// totals. The progress lines are written.
func TestRunPerSecondSeriesShowsStall(t *testing.T) {
	const clients = 4
	errStalled := errors.New("stalled")
	stalled := make([]bool, clients) // stalled[c] and calls[c] are client c's
	calls := make([]int, clients)
	classify := func(err error) string {
		if errors.Is(err, errStalled) {
			return "stalled"
		}
		return "planted"
	}
	var progress bytes.Buffer
	begin := time.Now() // the run starts after this: its seconds end a little later
	r := Run(context.Background(), Options{Clients: clients, Duration: 2500 * time.Millisecond, Label: "bench test", Progress: &progress, Classify: classify},
		func(ctx context.Context, c int, rng *rand.Rand) error {
			if !stalled[c] && time.Since(begin) >= 750*time.Millisecond {
				stalled[c] = true
				select { // ~1.3 s, until past 2 s
				case <-time.After(time.Until(begin.Add(2100 * time.Millisecond))):
				case <-ctx.Done():
				}
				return errStalled
			}
			select {
			case <-time.After(time.Millisecond):
			case <-ctx.Done():
			}
			calls[c]++
			if !stalled[c] && calls[c]%5 == 0 { // errors in the first second only
				return errPlanted
			}
			return nil
		})
	if len(r.PerSecond) != 3 {
		t.Fatalf("per_second %+v: want the 3 seconds of a 2.5 s run", r.PerSecond)
	}
	var ops, errs uint64
	for i, s := range r.PerSecond {
		if s.T != i+1 {
			t.Fatalf("per_second[%d].t = %d: %+v", i, s.T, r.PerSecond)
		}
		ops += s.Ops
		errs += s.Errors
	}
	if ops != r.Ops || errs != r.Errors {
		t.Fatalf("per_second %+v sums to %d ops, %d errors; the run counted %d ops, %d errors", r.PerSecond, ops, errs, r.Ops, r.Errors)
	}
	if r.ErrorsByKind["stalled"] != clients || r.ErrorsByKind["planted"]+clients != r.Errors {
		t.Fatalf("errors_by_kind %v, %d errors: want %d stalled, the rest planted", r.ErrorsByKind, r.Errors, clients)
	}
	if s := r.PerSecond; s[0].Ops == 0 || s[0].Errors != r.Errors-clients || s[1] != (Second{T: 2}) || s[2].Ops == 0 || s[2].Errors != clients {
		t.Fatalf("per_second %+v: want ops and the planted errors in the first second, nothing in the stalled second, "+
			"ops and the %d stalled ops' errors in the third", s, clients)
	}
	if !strings.Contains(progress.String(), "\rbench test:") || !strings.Contains(progress.String(), "| total ") {
		t.Fatalf("no progress line in %q", progress.String())
	}
}

// TestProgressLine: each line shows the ops/s and errors since the
// previous line, and the totals; a stall shows as 0 ops/s at once.
func TestProgressLine(t *testing.T) {
	t0 := time.Unix(1000, 0)
	p := progress{label: "bench put", start: t0, prev: t0}
	lines := []string{
		p.line(t0.Add(time.Second), 5000, 2),
		p.line(t0.Add(2*time.Second), 5000, 2),          // stalled
		p.line(t0.Add(3500*time.Millisecond), 8000, 10), // a late tick: 3000 ops in 1.5 s
	}
	want := []string{
		"\rbench put:    1s     5000 ops/s      2 errors | total 5000 ops, 2 errors ",
		"\rbench put:    2s        0 ops/s      0 errors | total 5000 ops, 2 errors ",
		"\rbench put:    4s     2000 ops/s      8 errors | total 8000 ops, 10 errors ",
	}
	for i := range want {
		if lines[i] != want[i] {
			t.Errorf("line %d: got %q, want %q", i, lines[i], want[i])
		}
	}
}

func TestSnakeCase(t *testing.T) {
	for in, want := range map[string]string{
		"Unavailable": "unavailable", "DeadlineExceeded": "deadline_exceeded", "OK": "ok",
		"FailedPrecondition": "failed_precondition", "session expired": "session_expired",
		"HTTPError": "http_error", "lease-not found!": "lease_not_found", "": "", "Code(17)": "code_17",
	} {
		if got := SnakeCase(in); got != want {
			t.Errorf("SnakeCase(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestPercentile(t *testing.T) {
	ms := func(n ...int) []time.Duration {
		var d []time.Duration
		for _, x := range n {
			d = append(d, time.Duration(x)*time.Millisecond)
		}
		return d
	}
	if p := percentile(nil, 0.5); p != 0 {
		t.Fatalf("empty: %v", p)
	}
	s := ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
	if p50, p99 := percentile(s, 0.5), percentile(s, 0.99); p50 != 6 || p99 != 10 {
		t.Fatalf("p50 %v p99 %v, want 6 and 10", p50, p99)
	}
}

// TestReportJSON: the field names and order of `bench -w json` are a
// contract (docs/design.md); errors_by_kind and per_second come last, and are
// never null.
func TestReportJSON(t *testing.T) {
	r := Report{Op: "put", Result: Result{Ops: 1, Errors: 2, Seconds: 3, OpsPerSec: 4, P50Ms: 5, P99Ms: 6,
		ErrorsByKind: map[string]uint64{"unavailable": 1, "ambiguous": 1},
		PerSecond:    []Second{{T: 1, Ops: 1, Errors: 0}, {T: 2, Ops: 0, Errors: 2}}},
		Clients: 7, ValueSize: 8, Keys: 9}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"op":"put","ops":1,"errors":2,"seconds":3,"ops_per_sec":4,"p50_ms":5,"p99_ms":6,"clients":7,"value_size":8,"keys":9,` +
		`"errors_by_kind":{"ambiguous":1,"unavailable":1},"per_second":[{"t":1,"ops":1,"errors":0},{"t":2,"ops":0,"errors":2}]}`
	if string(b) != want {
		t.Fatalf("got  %s\nwant %s", b, want)
	}
	var back Report
	if err := json.Unmarshal(b, &back); err != nil || !reflect.DeepEqual(back, r) {
		t.Fatalf("round trip: %+v, %v; want %+v", back, err, r)
	}

	b, err = json.Marshal(Report{Op: "get"})
	if err != nil {
		t.Fatal(err)
	}
	want = `{"op":"get","ops":0,"errors":0,"seconds":0,"ops_per_sec":0,"p50_ms":0,"p99_ms":0,"clients":0,"value_size":0,"keys":0,"errors_by_kind":{},"per_second":[]}`
	if string(b) != want {
		t.Fatalf("no errors: got  %s\nwant %s", b, want)
	}
}

// TestAppendKey: keys are 16 hex digits, distinct for distinct numbers,
// and spread evenly over the first hex digit (what the initial ranges
// cut): no digit gets more than 1.5 times its share of 64k keys.
func TestAppendKey(t *testing.T) {
	seen := map[string]bool{}
	var first [16]int
	const n = 1 << 16
	for i := range n {
		k := string(AppendKey([]byte("x"), i))
		if len(k) != 17 || k[0] != 'x' {
			t.Fatalf("AppendKey(%d) = %q", i, k)
		}
		if want := "x" + fmt.Sprintf("%016x", mix(uint64(i))); k != want {
			t.Fatalf("AppendKey(%d) = %q, want %q", i, k, want)
		}
		if seen[k] {
			t.Fatalf("AppendKey(%d) = %q repeats an earlier key", i, k)
		}
		seen[k] = true
		d := strings.IndexByte("0123456789abcdef", k[1])
		if d < 0 {
			t.Fatalf("AppendKey(%d) = %q: not hex", i, k)
		}
		first[d]++
	}
	for d, c := range first {
		if c > n/16*3/2 {
			t.Fatalf("first digit %x has %d of %d keys", d, c, n)
		}
	}
}

// TestRunRate: with a Rate, eight clients of instant ops start no more
// ops than the rate allows over the run (the pacer's ticks bound them),
// and some do start. Without it they start thousands.
func TestRunRate(t *testing.T) {
	instant := func(context.Context, int, *rand.Rand) error { return nil }
	r := Run(context.Background(), Options{Clients: 8, Duration: 500 * time.Millisecond, Rate: 40}, instant)
	if r.Ops == 0 || r.Ops > 20 {
		t.Fatalf("rate 40/s for 0.5s: %d ops, want 1..20", r.Ops)
	}
	free := Run(context.Background(), Options{Clients: 8, Duration: 100 * time.Millisecond}, instant)
	if free.Ops <= 20 {
		t.Fatalf("no rate: only %d ops in 0.1s", free.Ops)
	}
}
