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
// behind a backlog (a compaction that is not optional waiting).
func TestPauseAfter(t *testing.T) {
	for _, c := range []struct {
		name     string
		duty     float64
		ran      time.Duration
		waiting  int
		optional bool
		released bool
		want     time.Duration
	}{
		{name: "a quarter", duty: 0.25, ran: 8 * time.Millisecond, want: 24 * time.Millisecond},
		{name: "a half", duty: 0.5, ran: 8 * time.Millisecond, want: 8 * time.Millisecond},
		{name: "a long stall", duty: 0.25, ran: 10 * time.Second, want: maxPause},
		{name: "unpaced", duty: 1, ran: 8 * time.Millisecond, want: 0},
		{name: "one waiting", duty: 0.25, ran: 8 * time.Millisecond, waiting: 1, want: 0},
		{name: "an optional one waiting", duty: 0.25, ran: 8 * time.Millisecond, waiting: 1, optional: true, want: 24 * time.Millisecond},
		{name: "closing", duty: 0.25, ran: 8 * time.Millisecond, released: true, want: 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := newCompactionScheduler(c.duty)
			s.db = &fakeCompactionDB{allowed: 1, waiting: c.waiting, optional: c.optional}
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
	s.wait = func(d time.Duration, _, _ <-chan struct{}) bool {
		waits = append(waits, d)
		now = now.Add(d)
		return false
	}
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
	// Stats.CompactionPause sums them.
	if got := time.Duration(s.paused.Load()); got != 39*time.Millisecond {
		t.Fatalf("paused %v in all, want 39ms", got)
	}
}

// TestPauseWoken: a compaction refused (TrySchedule) while the one
// slot's compaction pauses, or a flush (UpdateGetAllowedWithoutPermission),
// wakes the pause; it ends there if a compaction that is not optional
// waits, and waits out the rest if the one waiting is optional.
func TestPauseWoken(t *testing.T) {
	for _, c := range []struct {
		name     string
		flush    bool
		optional bool
		want     []time.Duration
		paused   time.Duration // Stats.CompactionPause: the time spent
	}{
		{name: "refused, not optional", want: []time.Duration{100 * time.Millisecond}, paused: 40 * time.Millisecond},
		{name: "refused, optional", optional: true, want: []time.Duration{100 * time.Millisecond, 60 * time.Millisecond}, paused: 100 * time.Millisecond},
		{name: "flushed, not optional", flush: true, want: []time.Duration{100 * time.Millisecond}, paused: 40 * time.Millisecond},
		{name: "flushed, optional", flush: true, optional: true, want: []time.Duration{100 * time.Millisecond, 60 * time.Millisecond}, paused: 100 * time.Millisecond},
	} {
		t.Run(c.name, func(t *testing.T) {
			now := time.Unix(0, 0)
			db := &fakeCompactionDB{allowed: 1}
			s := newCompactionScheduler(0.25)
			s.db = db
			s.now = func() time.Time { return now }
			s.mu.running = 1 // the pausing compaction holds the one slot
			var waits []time.Duration
			s.wait = func(d time.Duration, _, wake <-chan struct{}) bool {
				waits = append(waits, d)
				if len(waits) > 1 {
					now = now.Add(d)
					return false
				}
				now = now.Add(40 * time.Millisecond) // 40 ms in, another is wanted
				db.mu.Lock()
				db.waiting, db.optional = 1, c.optional
				db.mu.Unlock()
				if c.flush {
					s.UpdateGetAllowedWithoutPermission()
				} else if ok, _ := s.TrySchedule(); ok {
					t.Fatal("a compaction granted with the one slot taken")
				}
				select {
				case <-wake:
					return true
				default:
					t.Fatal("the pause was not woken")
					return false
				}
			}
			s.pause(100 * time.Millisecond)
			if fmt.Sprint(waits) != fmt.Sprint(c.want) {
				t.Fatalf("waits %v, want %v", waits, c.want)
			}
			if got := time.Duration(s.paused.Load()); got != c.paused {
				t.Fatalf("paused %v counted, want %v (the time spent, not the time asked)", got, c.paused)
			}
		})
	}
}

// TestWaitOrWake: the wait ends at its time, at release, or at a wake,
// and says which was a wake.
func TestWaitOrWake(t *testing.T) {
	wake := make(chan struct{}, 1)
	if waitOrWake(time.Millisecond, nil, wake) {
		t.Fatal("a timed-out wait reported a wake")
	}
	wake <- struct{}{}
	if !waitOrWake(time.Hour, nil, wake) {
		t.Fatal("a woken wait did not report the wake")
	}
	released := make(chan struct{})
	close(released)
	if waitOrWake(time.Hour, released, wake) {
		t.Fatal("a released wait reported a wake")
	}
}

// TestPebbleCompactionPacedAndReleased: a real store's compaction goes
// through the pacing (it pauses), and Close ends a pause that would not
// end by itself: Pebble's Close waits for the compaction.
func TestPebbleCompactionPacedAndReleased(t *testing.T) {
	s := newCompactionScheduler(DefaultCompactionDuty)
	var clock atomic.Int64 // every look sees a slice gone by
	s.now = func() time.Time { return time.Unix(0, clock.Add(int64(paceSlice))) }
	paused := make(chan struct{}, 1)
	s.wait = func(_ time.Duration, release, _ <-chan struct{}) bool {
		select {
		case paused <- struct{}{}:
		default:
		}
		<-release
		return false
	}
	p, err := openPebble("", PebbleOptions{FS: vfs.NewMem(), CacheBytes: 1 << 20, MemTableBytes: 1 << 20}, s)
	if err != nil {
		t.Fatal(err)
	}
	closing := false
	defer func() { // a failure before Close: the pause must not outlive the test
		if !closing {
			s.releasePacing()
			p.Close()
		}
	}()
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
	closing = true
	closed := make(chan error, 1)
	go func() { closed <- p.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		s.releasePacing() // so that Close and the compaction end
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
	for _, d := range []float64{0, MinCompactionDuty, 1} {
		p, err := OpenPebble("", PebbleOptions{FS: vfs.NewMem(), CompactionDuty: d})
		if err != nil {
			t.Fatalf("CompactionDuty %v: %v", d, err)
		}
		want := d
		if d == 0 {
			want = DefaultCompactionDuty
		}
		if p.sched.duty != want {
			t.Fatalf("CompactionDuty %v: scheduler duty %v, want %v", d, p.sched.duty, want)
		}
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
