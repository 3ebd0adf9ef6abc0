package client

import "testing"

// TestSessionFloor: the floor a write carries is the lowest number still in
// flight in its group, whatever order writes end in, so that a group never
// refuses as stale a write the client still waits for; and the group is
// registered once a write was answered, until it says it lost the session.
func TestSessionFloor(t *testing.T) {
	var s session
	s.init(7)
	a := s.begin(1) // 1
	b := s.begin(1) // 2
	other := s.begin(2)
	c := s.begin(1) // 4
	check := func(g, seq, want uint64, register bool) {
		t.Helper()
		r := s.ref(g, seq)
		if r.Acked != want || r.Seq != seq || r.Id != 7 || r.Register != register {
			t.Fatalf("ref(%d, %d) = %+v, want acked %d register %v", g, seq, r, want, register)
		}
		if r.Acked > seq {
			t.Fatalf("write %d of group %d carries floor %d above itself: the group would refuse it", seq, g, r.Acked)
		}
	}
	check(1, c, a, true)
	s.end(1, b, true) // the middle one ends first
	check(1, c, a, false)
	check(2, other, other, true)
	s.end(1, a, false) // given up: the floor passes it
	check(1, c, c, false)
	d := s.begin(1)
	s.end(1, c, true)
	check(1, d, d, false)
	s.unknown(1)
	check(1, d, d, true)
}
