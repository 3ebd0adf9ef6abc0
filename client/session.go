package client

import (
	"slices"
	"sync"

	"github.com/flotilla/flotilla/api"
)

// session is the client's side of its session (kv/session.go): the
// sequence numbers of its writes, the writes not yet answered, and per
// range whether the range has the session.
//
// The floor sent with every write (Acked) is the lowest number still in
// flight in the whole session, not in the write's range: a write may be
// sent to one range and, after a split or merge, again to another, and a
// range's copy of the session (a split copies it to both halves) must
// never have a floor above a write that may still reach it. begin takes a
// number and records it in flight in one step under mu, so no write can
// be sent with a floor above a number another write has taken but not
// sent yet.
type session struct {
	id uint64
	mu struct {
		sync.Mutex
		next uint64
		// inflight: numbers taken and not yet ended, ascending; ended:
		// those among them that ended out of order.
		inflight []uint64
		ended    map[uint64]bool
		// registered: ranges that answered a write of this session, so
		// have the session (until it expires there: then the range says
		// so, and the entry is cleared).
		registered map[uint64]bool
	}
}

func (s *session) init(id uint64) {
	s.id = id
	s.mu.ended = make(map[uint64]bool)
	s.mu.registered = make(map[uint64]bool)
}

// begin takes the next sequence number for a write.
func (s *session) begin() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mu.next++
	s.mu.inflight = append(s.mu.inflight, s.mu.next)
	return s.mu.next
}

// ref returns the session block of an attempt of write seq to range g (0:
// not known).
func (s *session) ref(g, seq uint64) *api.Session {
	s.mu.Lock()
	defer s.mu.Unlock()
	return &api.Session{Id: s.id, Seq: seq, Acked: s.mu.inflight[0], Register: g == 0 || !s.mu.registered[g]}
}

// end records that write seq is over: answered by range g (applied true:
// g has the session) or given up. Its number stops holding the floor down.
func (s *session) end(g, seq uint64, applied bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if applied && g != 0 {
		s.mu.registered[g] = true
	}
	s.mu.ended[seq] = true
	for len(s.mu.inflight) > 0 && s.mu.ended[s.mu.inflight[0]] {
		delete(s.mu.ended, s.mu.inflight[0])
		s.mu.inflight = s.mu.inflight[1:]
	}
	if len(s.mu.inflight) == 0 {
		s.mu.inflight = nil // let the array go
	}
}

// unknown records that range g does not have the session (it expired, or
// the write reached another range than the client thought): the next
// attempts register it.
func (s *session) unknown(g uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.mu.registered, g)
}

// floor returns the session's current floor, for tests.
func (s *session) floor() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.mu.inflight) == 0 {
		return s.mu.next + 1
	}
	return slices.Min(s.mu.inflight)
}
