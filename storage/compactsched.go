package storage

import (
	"context"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/flotilla/flotilla/internal/phase"
)

// regrantInterval is how often the compaction scheduler looks for a
// compaction Pebble wants and was refused, when nothing else made it look.
// Pebble's own scheduler looks every 100 ms: ten wakes a second of an idle
// node, a tenth of the goroutine wakes of a node with 10,000 quiesced
// ranges (BENCHMARKS.md, "Quiescence: the idle floor and memory, later"). A
// refused compaction is also granted when a running one ends (Done) and
// when the number allowed grows (UpdateGetAllowedWithoutPermission), so the
// period only bounds the wait of a case neither covers.
const regrantInterval = time.Second

// compactionScheduler is the pebble.CompactionScheduler of a store: it
// lets as many compactions run at once as the DB allows without
// permission (GetAllowedWithoutPermission), like Pebble's default, with
// the slower regrant above; and it paces each compaction it grants
// (compactpace.go).
//
// Locks: mu is taken after any lock of Pebble's DB (Pebble may call
// TrySchedule holding its own); DB methods other than
// GetAllowedWithoutPermission are called without mu held.
//
// Goroutines: grantLoop, started by Register and stopped by Unregister.
// A paced compaction waits on Pebble's compaction goroutine (no goroutine
// of its own).
type compactionScheduler struct {
	db pebble.DBForCompaction
	// duty is the share of the wall time a compaction runs while the DB
	// waits for no other (compactpace.go); 1 runs compactions unpaced.
	// Set before Register, then read only.
	duty float64
	// now and wait are time.Now and waitOrWake, or a test's. Set before
	// Register, then read only.
	now  func() time.Time
	wait func(d time.Duration, release, wake <-chan struct{}) (woken bool)
	// wake holds a value once TrySchedule refused a compaction for want
	// of a slot, or a flush ended (UpdateGetAllowedWithoutPermission): a
	// pause under way looks then at what waits, and ends if it must
	// (compactionScheduler.pause). Capacity 1; sends do not block.
	wake chan struct{}
	// released is closed by releasePacing, as the store closes: pauses
	// end and no compaction waits again.
	released    chan struct{}
	releaseOnce sync.Once
	// registered: Register ran (grantLoop runs). Written by Register,
	// read by abandon, both on the goroutine of pebble.Open.
	registered bool
	// paused sums the pauses of the pacing, in nanoseconds (Stats).
	paused atomic.Int64
	poke   chan struct{}
	stop   chan struct{}
	ended  chan struct{}

	mu struct {
		sync.Mutex
		// running counts the compactions granted and not Done.
		running int
		// closed: Unregister ran; nothing more is granted.
		closed bool
		// granting: a grant is calling into the DB (without mu); one at a
		// time, and Unregister waits for it (idle signals its end).
		granting bool
		idle     *sync.Cond
	}
}

var _ pebble.CompactionScheduler = (*compactionScheduler)(nil)

// newCompactionScheduler returns the scheduler of one store, pacing its
// compactions to the duty given (0 < duty <= 1; compactpace.go).
func newCompactionScheduler(duty float64) *compactionScheduler {
	s := &compactionScheduler{
		duty:     duty,
		now:      time.Now,
		wait:     waitOrWake,
		wake:     make(chan struct{}, 1),
		released: make(chan struct{}),
		poke:     make(chan struct{}, 1),
		stop:     make(chan struct{}),
		ended:    make(chan struct{}),
	}
	s.mu.idle = sync.NewCond(&s.mu.Mutex)
	return s
}

// Register implements pebble.CompactionScheduler. Pebble calls it once,
// when the DB opened.
func (s *compactionScheduler) Register(_ int, db pebble.DBForCompaction) {
	s.db = db
	s.registered = true
	go pprof.Do(context.Background(), pprof.Labels("flotilla.storage", "grantLoop"), func(context.Context) { s.grantLoop() })
}

// Unregister implements pebble.CompactionScheduler: it stops grantLoop and
// waits for a grant under way. Pebble calls it once, as the DB closes.
func (s *compactionScheduler) Unregister() {
	close(s.stop)
	<-s.ended
	s.mu.Lock()
	s.mu.closed = true
	for s.mu.granting {
		s.mu.idle.Wait()
	}
	s.mu.Unlock()
}

// abandon stops the scheduler of a DB that failed to open: Pebble calls
// Register part way through Open, and does not call Unregister if Open
// fails after it. Called on the goroutine that called pebble.Open, after
// it returned.
func (s *compactionScheduler) abandon() {
	if s.registered {
		s.Unregister()
	}
}

// TrySchedule implements pebble.CompactionScheduler: a compaction may
// start if fewer than the DB allows run. One refused for want of a slot
// wakes a paused compaction (wake). Pebble may call it holding the DB's
// mutex.
func (s *compactionScheduler) TrySchedule() (bool, pebble.CompactionGrantHandle) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.closed {
		return false, nil
	}
	if s.mu.running >= s.db.GetAllowedWithoutPermission() {
		select {
		case s.wake <- struct{}{}:
		default:
		}
		return false, nil
	}
	s.mu.running++
	return true, &compactionGrant{s: s}
}

// UpdateGetAllowedWithoutPermission implements pebble.CompactionScheduler:
// the number allowed may have grown, so grantLoop looks now. Pebble calls
// it after every flush, holding the DB's mutex; a flush may also make a
// compaction that must not wait pickable, so a paused one looks too
// (wake). Pebble does not call TrySchedule again while one it refused
// still waits, so without this a pause would miss that compaction.
func (s *compactionScheduler) UpdateGetAllowedWithoutPermission() {
	for _, c := range []chan struct{}{s.poke, s.wake} {
		select {
		case c <- struct{}{}:
		default:
		}
	}
}

// done: a compaction granted ended (compactionGrant.Done), and its slot
// goes to one that waits. Pebble calls it holding no lock.
func (s *compactionScheduler) done() {
	s.mu.Lock()
	s.mu.running--
	s.mu.Unlock()
	s.grant()
}

// grant starts waiting compactions while fewer than the DB allows run.
// One grant at a time: a caller waits for the one under way, then looks
// itself (that one may have found nothing waiting just before this
// caller's slot freed; returning at once, the slot would wait for the next
// regrant). Pebble never calls Done or TrySchedule from inside Schedule.
func (s *compactionScheduler) grant() {
	s.mu.Lock()
	for s.mu.granting && !s.mu.closed {
		s.mu.idle.Wait()
	}
	if s.mu.closed {
		s.mu.Unlock()
		return
	}
	s.mu.granting = true
	for !s.mu.closed && s.mu.running < s.db.GetAllowedWithoutPermission() {
		s.mu.Unlock()
		waiting, _ := s.db.GetWaitingCompaction()
		accepted := waiting && s.db.Schedule(&compactionGrant{s: s})
		s.mu.Lock()
		if !accepted {
			break
		}
		s.mu.running++
	}
	s.mu.granting = false
	s.mu.idle.Broadcast()
	s.mu.Unlock()
}

// grantLoop grants every regrantInterval, and when poked, until Unregister.
func (s *compactionScheduler) grantLoop() {
	defer close(s.ended)
	t := phase.NewTicker(regrantInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			t.Next()
		case <-s.poke:
		}
		s.grant()
	}
}
