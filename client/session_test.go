package client

import "testing"

// TestSessionFloor: the floor a write carries is the lowest number still in
// flight in the whole session, whatever range the write goes to and
// whatever order writes end in, so that no range (nor a copy of the session
// a split made) refuses as stale a write the client still waits for; and a
// range is registered once a write was answered there, until it says it
// lost the session.
func TestSessionFloor(t *testing.T) {
	var s session
	s.init(7)
	a := s.begin() // 1, to range 1
	b := s.begin() // 2, to range 1
	other := s.begin()
	c := s.begin() // 4, to range 1
	check := func(g, seq, want uint64, register bool) {
		t.Helper()
		r := s.ref(g, seq)
		if r.Acked != want || r.Seq != seq || r.Id != 7 || r.Register != register {
			t.Fatalf("ref(%d, %d) = %+v, want acked %d register %v", g, seq, r, want, register)
		}
		if r.Acked > seq {
			t.Fatalf("write %d to range %d carries floor %d above itself: the range would refuse it", seq, g, r.Acked)
		}
	}
	check(1, c, a, true)
	s.end(1, b, true) // the middle one ends first
	check(1, c, a, false)
	// The write to range 2 is held down by range 1's oldest: it may move
	// to range 1 (a merge) and must not find range 1's copy above it.
	check(2, other, a, true)
	s.end(1, a, false) // given up: the floor passes it
	check(1, c, other, false)
	check(2, other, other, true)
	s.end(2, other, true)
	check(1, c, c, false)
	d := s.begin()
	s.end(1, c, true)
	check(1, d, d, false)
	s.unknown(1)
	check(1, d, d, true)
	if s.floor() != d {
		t.Fatalf("floor %d, want %d", s.floor(), d)
	}
	// Range 0 (the client does not know the range yet) always registers.
	check(0, d, d, true)
}
