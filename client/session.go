package client

import (
	"sync"

	"github.com/flotilla/flotilla/api"
)

// session is the client's side of its session (kv/session.go): the
// sequence numbers of its writes, and per group the writes not yet
// answered and whether the group has the session.
//
// The floor sent with a write to group g is the lowest number still in
// flight in g: begin takes a number and records it in flight in one step
// under mu, so no write can be sent with a floor above a number another
// write has taken but not sent yet.
type session struct {
	id uint64
	mu struct {
		sync.Mutex
		next   uint64
		groups map[uint64]*groupWrites
	}
}

// groupWrites is the session's state in one group. Guarded by session.mu.
type groupWrites struct {
	// registered: a write of this session was answered by the group, so
	// the group has the session (until it expires: then the group says
	// so, and registered is cleared).
	registered bool
	// inflight: numbers taken and not yet ended, ascending; ended: those
	// among them that ended out of order.
	inflight []uint64
	ended    map[uint64]bool
}

func (s *session) init(id uint64) {
	s.id = id
	s.mu.groups = make(map[uint64]*groupWrites)
}

// begin takes the next sequence number for a write to group g.
func (s *session) begin(g uint64) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mu.next++
	gw := s.mu.groups[g]
	if gw == nil {
		gw = &groupWrites{ended: make(map[uint64]bool)}
		s.mu.groups[g] = gw
	}
	gw.inflight = append(gw.inflight, s.mu.next)
	return s.mu.next
}

// ref returns the session block of an attempt of write seq to group g.
func (s *session) ref(g, seq uint64) *api.Session {
	s.mu.Lock()
	defer s.mu.Unlock()
	gw := s.mu.groups[g]
	return &api.Session{Id: s.id, Seq: seq, Acked: gw.inflight[0], Register: !gw.registered}
}

// end records that write seq to group g is over: answered (applied true:
// the group has the session) or given up. Its number stops holding the
// floor down.
func (s *session) end(g, seq uint64, applied bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	gw := s.mu.groups[g]
	if applied {
		gw.registered = true
	}
	gw.ended[seq] = true
	for len(gw.inflight) > 0 && gw.ended[gw.inflight[0]] {
		delete(gw.ended, gw.inflight[0])
		gw.inflight = gw.inflight[1:]
	}
	if len(gw.inflight) == 0 {
		gw.inflight = nil // let the array go
	}
}

// unknown records that group g does not have the session (it expired):
// the next attempts register it again.
func (s *session) unknown(g uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mu.groups[g].registered = false
}
