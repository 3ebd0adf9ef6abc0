package multiraft_test

import (
	"fmt"
	"testing"

	"github.com/flotilla/flotilla/internal/mrtest"
)

// TestLivenessStretchesWhileBehind: node 2 falls silent while node 1 is
// behind (each of its ticks comes late). Node 1 counts node 2 down only
// after the stretched timeout, LivenessStretch (4) liveness timeouts, not
// after one; once it keeps up again the stretch shrinks by one per
// liveness timeout. The naive node (LivenessStretch 1) counts node 2 down
// after one liveness timeout although it is itself behind: the overloaded
// node that woke every range it followed under a live peer.
func TestLivenessStretchesWhileBehind(t *testing.T) {
	const liveness = 5 // Manual mode: ElectionTicks/2
	for _, stretch := range []int{4, 1} {
		t.Run(fmt.Sprintf("stretch=%d", stretch), func(t *testing.T) {
			c := newCluster(t, mrtest.Options{Groups: 3, LivenessStretch: stretch})
			for g := uint64(1); g <= 3; g++ {
				if err := c.Campaign(g, g); err != nil {
					t.Fatal(err)
				}
			}
			h := c.Hosts[1]
			if h.PeerDown(2) || h.LivenessStretch() != 1 {
				t.Fatalf("before: down %v, stretch %d", h.PeerDown(2), h.LivenessStretch())
			}
			c.Crash(2)
			downAt := 0
			for i := 1; i <= stretch*liveness+1 && downAt == 0; i++ {
				h.TickLate()
				if h.PeerDown(2) {
					downAt = i
				}
			}
			if want := stretch * liveness; downAt != want {
				t.Fatalf("node 2 counted down after %d late ticks, want %d", downAt, want)
			}
			if got := h.LivenessStretch(); got != stretch {
				t.Fatalf("stretch %d while behind, want %d", got, stretch)
			}
			for i := 1; i < liveness; i++ {
				h.Tick()
			}
			if got := h.LivenessStretch(); got != stretch {
				t.Fatalf("stretch %d after %d ticks kept up, want %d", got, liveness-1, stretch)
			}
			h.Tick()
			if got, want := h.LivenessStretch(), max(stretch-1, 1); got != want {
				t.Fatalf("stretch %d after a liveness timeout kept up, want %d", got, want)
			}
		})
	}
}

// TestLivenessDownStaysDown: a peer found down stays down until it is
// heard from, even when this node falls behind right after and its
// stretched timeout (4 liveness timeouts) exceeds the peer's silence.
// Revived so, the peer's ranges would stop their failover, and when the
// stretch shrank again this node would wake every range it leads a second
// time. Heard from again, the peer is live at once.
func TestLivenessDownStaysDown(t *testing.T) {
	const liveness = 5 // Manual mode: ElectionTicks/2
	c := newCluster(t, mrtest.Options{Groups: 3})
	for g := uint64(1); g <= 3; g++ {
		if err := c.Campaign(g, g); err != nil {
			t.Fatal(err)
		}
	}
	h := c.Hosts[1]
	c.Crash(2)
	for i := 0; i < liveness; i++ {
		h.Tick()
	}
	if !h.PeerDown(2) {
		t.Fatalf("node 2 not down after %d silent ticks", liveness)
	}
	for i := 1; i <= 3; i++ {
		h.TickLate()
		if !h.PeerDown(2) {
			t.Fatalf("node 2 live again after %d late ticks (stretch %d), unheard", i, h.LivenessStretch())
		}
	}
	if err := c.Restart(2); err != nil {
		t.Fatal(err)
	}
	if err := c.TickStable(1); err != nil { // node 2's first ping
		t.Fatal(err)
	}
	if h.PeerDown(2) {
		t.Fatal("node 2 still down after it was heard from")
	}
}
