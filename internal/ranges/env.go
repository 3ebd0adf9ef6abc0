package ranges

import (
	"sync"
	"time"

	"github.com/flotilla/flotilla/internal/phase"
	"github.com/flotilla/flotilla/kv"
)

// Env is what a Store needs from the node around it (the server, or the
// simulation): proposing to any range wherever its leader is, asking
// another node about its replica, reading the meta index, and a clock.
// Its callbacks may run on any goroutine and must be called exactly once;
// the Store hands them to its own loop.
type Env interface {
	// Propose proposes cmd (an encoded kv.Command) to range id at its
	// leader, on this node or another, and calls done with the result
	// bytes or an error.
	Propose(id uint64, cmd []byte, done func(res []byte, err error))
	// PeerDescriptor asks node for the descriptor of its replica of range
	// id; ok false if it has no initialized one or did not answer.
	PeerDescriptor(node, id uint64, done func(d kv.Descriptor, ok bool))
	// PeerHolds asks node whether it holds an initialized replica of
	// range id: answered false if it did not answer (holds is then
	// meaningless).
	PeerHolds(node, id uint64, done func(holds, answered bool))
	// ReplicaApplied asks node (this node too) for the applied index of
	// its replica of range id; ok false if it has none or did not answer.
	ReplicaApplied(node, id uint64, done func(applied uint64, ok bool))
	// Removed tells node, best effort, that its replica of range id was
	// removed (a replica move): it checks with this node before it
	// removes anything (Store.CheckRemoved).
	Removed(node, id uint64)
	// Meta reads up to limit descriptors of the meta index from the one
	// holding key (a serializable read is enough: a cache).
	Meta(key []byte, limit int, done func(ds []kv.Descriptor, err error))
	// After calls fn once d has passed.
	After(d time.Duration, fn func())
	// Now returns the current time.
	Now() time.Time
}

// tasks is the Store's queue of work for its loop: what hooks on engine
// workers and Env callbacks hand over (they must not block), run one at a
// time by RunPending. mu is a leaf.
type tasks struct {
	mu    sync.Mutex
	queue []func()
	wake  chan struct{} // capacity 1
}

// enqueue queues fn for the Store's loop; never blocks.
func (s *Store) enqueue(fn func()) {
	s.tasks.mu.Lock()
	s.tasks.queue = append(s.tasks.queue, fn)
	s.tasks.mu.Unlock()
	select {
	case s.tasks.wake <- struct{}{}:
	default:
	}
}

// RunPending runs the queued tasks, and those they queue, until none is
// left; it returns how many ran. The server's loop calls it (Run); the
// simulation calls it after every step. Tasks never run concurrently.
func (s *Store) RunPending() int {
	n := 0
	for {
		s.tasks.mu.Lock()
		q := s.tasks.queue
		s.tasks.queue = nil
		s.tasks.mu.Unlock()
		if len(q) == 0 {
			return n
		}
		for _, fn := range q {
			fn()
			n++
		}
	}
}

// Run is the Store's loop (the server's rangeLoop): it runs queued tasks as
// they come and Tick every interval, until stop is closed.
func (s *Store) Run(stop <-chan struct{}, interval time.Duration) {
	t := phase.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-s.tasks.wake:
			s.RunPending()
		case <-t.C:
			t.Next()
			s.RunPending()
			s.Tick()
			s.RunPending()
		}
	}
}

// callback returns a function that runs fn on the Store's loop.
func callback2[A, B any](s *Store, fn func(A, B)) func(A, B) {
	return func(a A, b B) { s.enqueue(func() { fn(a, b) }) }
}
