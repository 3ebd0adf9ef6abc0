package multiraft

import (
	"sync"
	"sync/atomic"
)

// scheduler hands groups that have work to workers, one worker per group at
// a time (CockroachDB's raft scheduler is the model). A group enqueued while
// a worker holds it is queued again when that worker lets it go, so no
// signal is lost and no group is processed twice at once.
//
// scheduler.mu is a leaf lock; cond waits on it.
type scheduler struct {
	cond *sync.Cond
	// wakes counts the signals and broadcasts to workers (tests).
	wakes atomic.Uint64
	mu    struct {
		sync.Mutex
		queue   []uint64 // FIFO; head is queue[head]
		head    int
		state   map[uint64]uint8
		stopped bool
	}
}

const (
	schedQueued uint8 = 1 << iota
	schedProcessing
)

func newScheduler() *scheduler {
	s := &scheduler{}
	s.mu.state = make(map[uint64]uint8)
	s.cond = sync.NewCond(&s.mu.Mutex)
	return s
}

// enqueue marks group id as having work. It never blocks.
func (s *scheduler) enqueue(id uint64) {
	s.mu.Lock()
	st := s.mu.state[id]
	if st&schedQueued == 0 {
		s.mu.state[id] = st | schedQueued
		if st&schedProcessing == 0 {
			s.mu.queue = append(s.mu.queue, id)
			s.wakeLocked(false)
		}
	}
	s.mu.Unlock()
}

// enqueueAll is enqueue for many groups under one lock acquisition. It
// wakes workers only for groups it put in the queue: every tick and every
// peer's ping call it, mostly with nothing, and a broadcast for nothing woke
// every worker three times a tick on an idle node (120 wakeups a second of
// an idle node's 330, in a 5 s execution trace; BENCHMARKS.md, "The idle
// floor").
func (s *scheduler) enqueueAll(ids []uint64) {
	if len(ids) == 0 {
		return
	}
	s.mu.Lock()
	added := 0
	for _, id := range ids {
		st := s.mu.state[id]
		if st&schedQueued == 0 {
			s.mu.state[id] = st | schedQueued
			if st&schedProcessing == 0 {
				s.mu.queue = append(s.mu.queue, id)
				added++
			}
		}
	}
	if added > 0 {
		s.wakeLocked(added > 1)
	}
	s.mu.Unlock()
}

// next waits for work and returns up to max groups, now held by the caller.
// It returns nil once the scheduler is stopped. With wait false it returns
// at once, possibly with nothing.
func (s *scheduler) next(dst []uint64, max int, wait bool) []uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	for wait && !s.mu.stopped && s.mu.head == len(s.mu.queue) {
		s.cond.Wait()
	}
	if s.mu.stopped {
		return nil
	}
	for s.mu.head < len(s.mu.queue) && len(dst) < max {
		id := s.mu.queue[s.mu.head]
		s.mu.head++
		s.mu.state[id] = schedProcessing
		dst = append(dst, id)
	}
	if s.mu.head == len(s.mu.queue) {
		s.mu.queue, s.mu.head = s.mu.queue[:0], 0
	} else if s.mu.head > 1024 && s.mu.head*2 > len(s.mu.queue) {
		n := copy(s.mu.queue, s.mu.queue[s.mu.head:])
		s.mu.queue, s.mu.head = s.mu.queue[:n], 0
	}
	return dst
}

// done releases groups taken by next, queueing again those enqueued while
// they were held.
func (s *scheduler) done(ids []uint64) {
	s.mu.Lock()
	requeued := false
	for _, id := range ids {
		if s.mu.state[id]&schedQueued != 0 {
			s.mu.state[id] = schedQueued
			s.mu.queue = append(s.mu.queue, id)
			requeued = true
		} else {
			delete(s.mu.state, id)
		}
	}
	if requeued {
		s.wakeLocked(true)
	}
	s.mu.Unlock()
}

// wakeLocked wakes one waiting worker, or all of them. s.mu is held.
func (s *scheduler) wakeLocked(all bool) {
	s.wakes.Add(1)
	if all {
		s.cond.Broadcast()
	} else {
		s.cond.Signal()
	}
}

// pending reports how many groups wait in the queue.
func (s *scheduler) pending() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.mu.queue) - s.mu.head
}

// stop wakes every waiting worker; next returns nil from now on.
func (s *scheduler) stop() {
	s.mu.Lock()
	s.mu.stopped = true
	s.cond.Broadcast()
	s.mu.Unlock()
}
