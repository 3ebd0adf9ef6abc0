package multiraft

import (
	"slices"
	"testing"
)

// TestSchedulerWakesOnlyForWork shows that workers are woken only for
// groups put in the queue: not for an empty batch (every tick and every
// peer's ping enqueue one on an idle node), nor for groups already queued
// or held by a worker, which done queues again.
func TestSchedulerWakesOnlyForWork(t *testing.T) {
	s := newScheduler()
	wakes := func(what string, want uint64, f func()) {
		t.Helper()
		before := s.wakes.Load()
		f()
		if got := s.wakes.Load() - before; got != want {
			t.Errorf("%s: %d wakes, want %d", what, got, want)
		}
	}
	wakes("nothing", 0, func() { s.enqueueAll(nil) })
	wakes("two groups", 1, func() { s.enqueueAll([]uint64{1, 2}) })
	wakes("the same two again", 0, func() { s.enqueueAll([]uint64{2, 1}) })
	var held []uint64
	wakes("taking them", 0, func() { held = s.next(nil, 8, false) })
	if !slices.Equal(held, []uint64{1, 2}) {
		t.Fatalf("next = %v, want [1 2]", held)
	}
	wakes("group 1 while held", 0, func() { s.enqueueAll([]uint64{1}) })
	wakes("group 3", 1, func() { s.enqueue(3) })
	wakes("releasing 1 (queued again) and 2", 1, func() { s.done(held) })
	if got := s.next(nil, 8, false); !slices.Equal(got, []uint64{3, 1}) {
		t.Fatalf("next = %v, want [3 1]", got)
	}
	if s.pending() != 0 {
		t.Fatalf("pending = %d, want 0", s.pending())
	}
}
