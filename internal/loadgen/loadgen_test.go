package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
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
	var out bytes.Buffer
	r := Run(context.Background(), 4, 1200*time.Millisecond, "bench test", &out, func(ctx context.Context, c int, rng *rand.Rand) error {
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
	if !strings.Contains(out.String(), "bench test:") {
		t.Fatalf("no progress line in %q", out.String())
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
// contract (DESIGN.md).
func TestReportJSON(t *testing.T) {
	b, err := json.Marshal(Report{Op: "put", Result: Result{Ops: 1, Errors: 2, Seconds: 3, OpsPerSec: 4, P50Ms: 5, P99Ms: 6}, Clients: 7, ValueSize: 8, Keys: 9})
	if err != nil {
		t.Fatal(err)
	}
	want := `{"op":"put","ops":1,"errors":2,"seconds":3,"ops_per_sec":4,"p50_ms":5,"p99_ms":6,"clients":7,"value_size":8,"keys":9}`
	if string(b) != want {
		t.Fatalf("got  %s\nwant %s", b, want)
	}
}

func TestAppendKey(t *testing.T) {
	for _, n := range []int{0, 7, 10, 999, 12345678, 99999999} {
		if got, want := string(AppendKey([]byte("x"), n)), "x"+fmt.Sprintf("bench-%08d", n); got != want {
			t.Fatalf("AppendKey(%d) = %q, want %q", n, got, want)
		}
	}
}
