package storage

import (
	"errors"
	"fmt"
	"math"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// TestPauseAfter: a compaction pauses for (1-duty)/duty of the time it
// ran, at most maxPause; not at all unpaced, after the store's close, or
// behind a backlog (more than one compaction allowed, or one that is not
// optional waiting).
func TestPauseAfter(t *testing.T) {
	for _, c := range []struct {
		name     string
		duty     float64
		ran      time.Duration
		allowed  int
		waiting  int
		optional bool
		released bool
		want     time.Duration
	}{
		{name: "a quarter", duty: 0.25, ran: 8 * time.Millisecond, allowed: 1, want: 24 * time.Millisecond},
		{name: "a half", duty: 0.5, ran: 8 * time.Millisecond, allowed: 1, want: 8 * time.Millisecond},
		{name: "a long stall", duty: 0.25, ran: 10 * time.Second, allowed: 1, want: maxPause},
		{name: "unpaced", duty: 1, ran: 8 * time.Millisecond, allowed: 1, want: 0},
		{name: "two allowed", duty: 0.25, ran: 8 * time.Millisecond, allowed: 2, want: 0},
		{name: "one waiting", duty: 0.25, ran: 8 * time.Millisecond, allowed: 1, waiting: 1, want: 0},
		{name: "an optional one waiting", duty: 0.25, ran: 8 * time.Millisecond, allowed: 1, waiting: 1, optional: true, want: 24 * time.Millisecond},
		{name: "closing", duty: 0.25, ran: 8 * time.Millisecond, allowed: 1, released: true, want: 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := newCompactionScheduler(c.duty)
			s.db = &fakeCompactionDB{allowed: c.allowed, waiting: c.waiting, optional: c.optional}
			if c.released {
				s.releasePacing()
				s.releasePacing() // twice is allowed
			}
			if got := s.pauseAfter(c.ran); got != c.want {
				t.Fatalf("pauseAfter(%v) = %v, want %v", c.ran, got, c.want)
			}
		})
	}
}

// TestCompactionGrantPaces: on a hand-driven clock, a compaction runs
// paceSlice between looks, and pauses three times as long as it ran at
// a duty of 0.25; the time of a pause does not count as running.
func TestCompactionGrantPaces(t *testing.T) {
	now := time.Unix(0, 0)
	var waits []time.Duration
	s := newCompactionScheduler(0.25)
	s.db = &fakeCompactionDB{allowed: 1}
	s.now = func() time.Time { return now }
	s.wait = func(d time.Duration, _ <-chan struct{}) { waits = append(waits, d); now = now.Add(d) }
	g := &compactionGrant{s: s}
	g.Started()
	for _, step := range []struct {
		advance time.Duration
		want    []time.Duration
	}{
		{3 * time.Millisecond, nil},                                                           // under a slice
		{2 * time.Millisecond, []time.Duration{15 * time.Millisecond}},                        // 5 ms ran
		{time.Millisecond, []time.Duration{15 * time.Millisecond}},                            // 1 ms since the pause
		{7 * time.Millisecond, []time.Duration{15 * time.Millisecond, 24 * time.Millisecond}}, // 8 ms since
	} {
		now = now.Add(step.advance)
		g.CumulativeStats(pebble.CompactionGrantHandleStats{})
		if fmt.Sprint(waits) != fmt.Sprint(step.want) {
			t.Fatalf("after %v more: pauses %v, want %v", step.advance, waits, step.want)
		}
	}
}

// TestPebbleCompactionPacedAndReleased: a real store's compaction goes
// through the pacing (it pauses), and Close ends a pause that would not
// end by itself: Pebble's Close waits for the compaction.
func TestPebbleCompactionPacedAndReleased(t *testing.T) {
	s := newCompactionScheduler(compactionDutyDefault)
	var clock atomic.Int64 // every look sees a slice gone by
	s.now = func() time.Time { return time.Unix(0, clock.Add(int64(paceSlice))) }
	paused := make(chan struct{}, 1)
	s.wait = func(_ time.Duration, release <-chan struct{}) {
		select {
		case paused <- struct{}{}:
		default:
		}
		<-release
	}
	p, err := openPebble("", PebbleOptions{FS: vfs.NewMem(), CacheBytes: 1 << 20, MemTableBytes: 1 << 20}, s)
	if err != nil {
		t.Fatal(err)
	}
	val := make([]byte, 1024)
	deadline := time.After(30 * time.Second)
	for f := 0; ; f++ {
		select {
		case <-paused:
		case <-deadline:
			t.Fatalf("no compaction paused after %d flushes", f)
		default:
			for i := 0; i < 200; i++ {
				if err := p.db.Set([]byte(fmt.Sprintf("k%03d-%04d", i, f)), val, pebble.NoSync); err != nil {
					t.Fatal(err)
				}
			}
			if err := p.db.Flush(); err != nil {
				t.Fatal(err)
			}
			continue
		}
		break
	}
	closed := make(chan error, 1)
	go func() { closed <- p.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Close did not end the pause of a compaction")
	}
}

// TestOpenPebbleCompactionDuty: a duty outside 0.05..1 is refused with
// ErrConfig; 1 opens unpaced.
func TestOpenPebbleCompactionDuty(t *testing.T) {
	for _, d := range []float64{-0.25, 0.04, 1.01, math.NaN(), math.Inf(1)} {
		if _, err := OpenPebble("", PebbleOptions{FS: vfs.NewMem(), CompactionDuty: d}); !errors.Is(err, ErrConfig) {
			t.Fatalf("CompactionDuty %v: err %v, want ErrConfig", d, err)
		}
	}
	for _, d := range []float64{0, compactionDutyMin, 1} {
		p, err := OpenPebble("", PebbleOptions{FS: vfs.NewMem(), CompactionDuty: d})
		if err != nil {
			t.Fatalf("CompactionDuty %v: %v", d, err)
		}
		want := d
		if d == 0 {
			want = compactionDutyDefault
		}
		if p.sched.duty != want {
			t.Fatalf("CompactionDuty %v: scheduler duty %v, want %v", d, p.sched.duty, want)
		}
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
