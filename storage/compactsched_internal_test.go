package storage

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/flotilla/flotilla/internal/testutil"
)

// fakeCompactionDB is a pebble.DBForCompaction whose allowance and waiting
// compactions the test sets; Schedule reports each grant on granted.
type fakeCompactionDB struct {
	mu      sync.Mutex
	allowed int
	waiting int
	// optional: the waiting compactions are optional ones.
	optional bool
	granted  chan struct{}
}

func (d *fakeCompactionDB) GetAllowedWithoutPermission() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.allowed
}

func (d *fakeCompactionDB) GetWaitingCompaction() (bool, pebble.WaitingCompaction) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.waiting > 0, pebble.WaitingCompaction{Optional: d.optional}
}

func (d *fakeCompactionDB) Schedule(pebble.CompactionGrantHandle) bool {
	d.mu.Lock()
	if d.waiting == 0 {
		d.mu.Unlock()
		return false
	}
	d.waiting--
	d.mu.Unlock()
	d.granted <- struct{}{}
	return true
}

func (d *fakeCompactionDB) set(allowed, waiting int) {
	d.mu.Lock()
	d.allowed, d.waiting = allowed, waiting
	d.mu.Unlock()
}

func (s *compactionScheduler) runningNow() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.running
}

// TestCompactionScheduler: at most the allowed number run; a compaction
// refused for want of a slot starts when one ends, or when the allowance
// grows, without waiting for the regrant period; nothing after Unregister.
func TestCompactionScheduler(t *testing.T) {
	db := &fakeCompactionDB{allowed: 2, granted: make(chan struct{}, 8)}
	s := newCompactionScheduler(1)
	s.Register(2, db)
	var handles []pebble.CompactionGrantHandle
	for i := 0; i < 2; i++ {
		ok, h := s.TrySchedule()
		if !ok {
			t.Fatalf("compaction %d of 2 allowed refused", i+1)
		}
		handles = append(handles, h)
	}
	if ok, _ := s.TrySchedule(); ok {
		t.Fatal("a third compaction granted with 2 allowed")
	}
	// The refused one waits in the DB; a slot frees: it starts at once.
	db.set(2, 1)
	start := time.Now()
	handles[0].Done()
	select {
	case <-db.granted:
	case <-time.After(regrantInterval / 2):
		t.Fatal("a waiting compaction did not start when a running one ended")
	}
	if n := s.runningNow(); n != 2 {
		t.Fatalf("running %d after a Done and a grant, want 2", n)
	}
	// The allowance grows: the waiting one starts on the poke.
	db.set(3, 1)
	s.UpdateGetAllowedWithoutPermission()
	select {
	case <-db.granted:
	case <-time.After(regrantInterval / 2):
		t.Fatal("a waiting compaction did not start when the allowance grew")
	}
	if waited := time.Since(start); waited >= regrantInterval {
		t.Fatalf("grants took %v, not before the regrant period", waited)
	}
	// With no poke, the periodic regrant finds one the DB wants.
	db.set(4, 1)
	select {
	case <-db.granted:
	case <-time.After(3 * regrantInterval):
		t.Fatal("the periodic regrant did not start a waiting compaction")
	}
	s.Unregister()
	db.set(10, 1)
	if ok, _ := s.TrySchedule(); ok {
		t.Fatal("a compaction granted after Unregister")
	}
	handles[1].Done() // a compaction that was running ends after the close: no grant
	select {
	case <-db.granted:
		t.Fatal("a compaction granted after Unregister")
	default:
	}
}

// TestPebbleCompacts: with this scheduler a store still compacts its L0
// files away, which is what the scheduler is there to let happen.
func TestPebbleCompacts(t *testing.T) {
	p, err := OpenPebble("", PebbleOptions{FS: vfs.NewMem(), MemTableBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	val := make([]byte, 1024)
	for f := 0; f < 12; f++ {
		for i := 0; i < 200; i++ {
			if err := p.db.Set([]byte(fmt.Sprintf("k%03d-%04d", i, f)), val, pebble.NoSync); err != nil {
				t.Fatal(err)
			}
		}
		if err := p.db.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	testutil.WaitFor(t, 30*time.Second, "a compaction after 12 flushes", func() error {
		if m := p.db.Metrics(); m.Compact.Count == 0 {
			return fmt.Errorf("none yet; L0 holds %d files", m.Levels[0].TablesCount)
		}
		return nil
	})
}
