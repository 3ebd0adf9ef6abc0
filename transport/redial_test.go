package transport

import (
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/connectivity"
)

// grownBackoff is the backoff the redial tests give node 1's lanes toward
// node 2: they wait at least 0.8 of it after one failure (gRPC's connect
// backoff stays under connectBackoffMax). redialBound is how long they give
// a send to get through once the peer is back: far below the backoff, so a
// send that gets through in time was not let through by it running out.
const (
	grownBackoff = 30 * time.Second
	redialBound  = 2 * time.Second
)

// TestRedialResetsBackoff: node 1 backs off toward node 2 while node 2 is
// down, then node 2 restarts at the same address and sends to node 1. Node
// 1's next send to node 2 must get through at once, not after its backoff.
// The variants turn parts of the reset off: with only the inbound stream or
// only the probe as evidence, the send gets through; with neither, or with a
// reset that leaves the lanes' backoff alone, it does not (the negative
// controls).
func TestRedialResetsBackoff(t *testing.T) {
	cases := []struct {
		name    string
		off     resetSwitches
		through bool
	}{
		{"inbound stream resets", resetSwitches{probe: true}, true},
		{"probe resets", resetSwitches{inbound: true}, true},
		{"no reset", resetSwitches{inbound: true, probe: true}, false},
		{"lanes left alone", resetSwitches{probe: true, lanes: true}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, took := redialAfterRestart(t, tc.off)
			switch {
			case tc.through && !got:
				t.Fatalf("the send to the restarted peer did not get through within %v", redialBound)
			case !tc.through && got:
				t.Fatalf("the send got through after %v with the reset (partly) off: this test cannot tell a reset from none", took)
			}
			t.Logf("got through: %v after %v", got, took)
		})
	}
}

// redialAfterRestart runs the scenario of TestRedialResetsBackoff with the
// parts of the reset in off turned off, and reports whether node 1's send
// got through to the restarted node 2 within redialBound, and when.
func redialAfterRestart(t *testing.T, off resetSwitches) (bool, time.Duration) {
	cfgA := testConfig(1, "127.0.0.1")
	cfgA.BackoffBase, cfgA.BackoffMax = grownBackoff, grownBackoff
	cfgA.ProbeInterval = 20 * time.Millisecond
	a, ra := newNode(t, cfgA, false)
	a.resetOff = off
	if err := a.Start(ra); err != nil {
		t.Fatal(err)
	}
	b, rb := newNode(t, testConfig(2, "127.0.0.1"), true)
	mesh(a, b)
	deliverEventually(t, a, rb, 2)

	// Node 2 goes down. Node 1's raft lane fails and backs off, and gRPC's
	// connection fails to reconnect.
	addr := b.Addr()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	p := a.peer(2)
	deadline := time.Now().Add(wait)
	for p.backoffLeft(kindRaft) < grownBackoff/2 || p.conn.GetState() != connectivity.TransientFailure {
		if time.Now().After(deadline) {
			t.Fatalf("no backoff toward the dead peer: lane %v, connection %v", p.backoffLeft(kindRaft), p.conn.GetState())
		}
		a.Send([]Envelope{{Group: 1, Msg: app(1, 2, 5, nil)}})
		p.conn.Connect()
		time.Sleep(5 * time.Millisecond) // polling the backoff state; bounded above
	}

	// Node 2 restarts at the same address and sends to node 1.
	cfgB := testConfig(2, "127.0.0.1")
	cfgB.ListenAddr = addr
	b2, rb2 := newNode(t, cfgB, true)
	b2.AddPeer(1, a.Addr())
	deliverEventually(t, b2, ra, 1)

	// Node 1's next sends to node 2.
	const mark = 888888
	start := time.Now()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	bound := time.NewTimer(redialBound)
	defer bound.Stop()
	has := func(e *Envelope) bool { return e.Msg.Index == mark }
	for rb2.count(has) == 0 {
		a.Send([]Envelope{{Group: 1, Msg: app(1, 2, mark, nil)}})
		select {
		case <-tick.C:
		case <-rb2.wake:
		case <-bound.C:
			if rb2.count(has) > 0 {
				return true, time.Since(start)
			}
			if left := p.backoffLeft(kindRaft); !off.lanes && left == 0 {
				t.Logf("lane backoff was reset, yet nothing got through (connection %v)", p.conn.GetState())
			}
			return false, time.Since(start)
		}
	}
	return true, time.Since(start)
}

// backoffPeer returns a peer of an unstarted transport, so that no loop owns
// its lanes and the test can drive a laneBackoff itself.
func backoffPeer(t *testing.T, base, max time.Duration) *grpcPeer {
	cfg := testConfig(1, "127.0.0.1")
	cfg.BackoffBase, cfg.BackoffMax = base, max
	a, _ := newNode(t, cfg, false)
	a.AddPeer(2, deadAddr(t))
	return a.peer(2)
}

// TestLaneBackoffReset drives the reset mechanism directly: a reset ends a
// lane's wait and restarts its doubling from the base, a reset before the
// lane's last success does not count, waitBackoff wakes on a reset (a plain
// timed wait, the negative control, does not), and concurrent resets race
// with nothing.
func TestLaneBackoffReset(t *testing.T) {
	const base = time.Minute
	p := backoffPeer(t, base, 8*base)

	bo := p.newBackoff(kindRaft)
	bo.fail()
	bo.fail() // 2 minutes
	if l := bo.left(); l < base+base/2 {
		t.Fatalf("after two failures left %v, want about 2m", l)
	}
	if !p.lanesBackingOff() || p.backoffLeft(kindRaft) < base {
		t.Fatalf("backoff not published: %v", p.backoffLeft(kindRaft))
	}
	select {
	case <-p.probeWake:
	default:
		t.Fatal("a failure did not wake the probe")
	}

	p.resetBackoff("test")
	if l := bo.left(); l != 0 || !bo.redial {
		t.Fatalf("after a reset left %v, redial %v; want 0, true", l, bo.redial)
	}
	if p.lanesBackingOff() || p.backoffLeft(kindRaft) != 0 {
		t.Fatalf("reset not published: %v", p.backoffLeft(kindRaft))
	}
	bo.fail()
	if l := bo.left(); l <= 0 || l > base+base/4 || bo.redial {
		t.Fatalf("first failure after a reset: left %v redial %v; want about 1m, false", l, bo.redial)
	}

	// A reset before the last success is spent.
	p.resetBackoff("test")
	bo.ok()
	bo.fail()
	if l := bo.left(); l < base/2 {
		t.Fatalf("a reset before the last success ended a later wait (left %v)", l)
	}

	// A reset that finds the lane not backing off leaves nothing behind.
	bo.ok()
	p.resetBackoff("test")
	if l := bo.left(); l != 0 || bo.redial {
		t.Fatalf("reset of an idle lane: left %v redial %v", l, bo.redial)
	}

	// The wait of mustLoop wakes on a reset; a plain timed wait (the
	// negative control) does not. The signal is taken before the reset, as
	// waitBackoff takes it in left, so the reset may come before or after
	// the waiter starts waiting.
	bo.fail()
	sig, d := *bo.seen, bo.left()
	woke := make(chan struct{})
	go func() {
		defer close(woke)
		p.waitReset(d, sig)
	}()
	naive := p.newBackoff(kindMust)
	naive.fail()
	naiveLeft := naive.left()
	naiveWoke := make(chan struct{})
	go func() {
		defer close(naiveWoke)
		p.waitFor(naiveLeft) // mustLoop's wait before the reset existed
	}()
	p.resetBackoff("test")
	select {
	case <-woke:
	case <-time.After(wait):
		t.Fatal("the backoff wait slept through a reset")
	}
	select {
	case <-naiveWoke:
		t.Fatal("the plain timed wait returned after a reset: this test cannot tell the two apart")
	case <-time.After(200 * time.Millisecond): // the naive wait has a minute to go
	}
	// And waitBackoff, whichever way its race with a reset goes.
	bo.fail()
	ok, _ := returnsWithin(wait, func() {
		p.resetBackoff("test")
	})
	if !ok {
		t.Fatal("resetBackoff blocked")
	}
	if ok, _ := returnsWithin(wait, func() { p.waitBackoff(&bo) }); !ok {
		t.Fatal("waitBackoff waited out a backoff that was reset")
	}
	p.t.RemovePeer(2) // ends the naive wait
	<-naiveWoke

	// Resets from many goroutines while the owner fails and looks: each
	// signal is closed once, and the last reset is never missed.
	q := backoffPeer(t, base, base)
	qb := q.newBackoff(kindHeartbeat)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				q.resetBackoff("test")
			}
		}()
	}
	for range 200 {
		qb.fail()
		qb.left()
	}
	wg.Wait()
	qb.fail()
	q.resetBackoff("test")
	if l := qb.left(); l != 0 {
		t.Fatalf("the last reset was missed: left %v", l)
	}
}

// TestResetSwitchOff: with the lanes' part of the reset off, a reset leaves
// the wait alone (what the negative controls rely on).
func TestResetSwitchOff(t *testing.T) {
	p := backoffPeer(t, time.Minute, time.Minute)
	p.t.resetOff.lanes = true
	bo := p.newBackoff(kindSnapshot)
	bo.fail()
	p.resetBackoff("test")
	if l := bo.left(); l < time.Minute/2 {
		t.Fatalf("reset with the lanes' part off ended the wait (left %v)", l)
	}
}

// TestProbe: the probe counts a serving gRPC server as up, and neither a dead
// address, nor a listener that accepts and stays silent (what the kernel
// does for a paused process), nor one that answers something else. The
// naive probe, a bare TCP dial, takes the silent listener for a live peer.
func TestProbe(t *testing.T) {
	srv, _ := newNode(t, testConfig(2, "127.0.0.1"), true)

	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	other, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	defer func() {
		_ = other.Close()
		wg.Wait()
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := other.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte("HTTP/1.1 400 Bad Request\r\n\r\n"))
			_ = c.Close()
		}
	}()

	a, _ := newNode(t, testConfig(1, "127.0.0.1"), false)
	probe := func(addr string) bool {
		a.AddPeer(2, addr)
		return a.peer(2).probe(200 * time.Millisecond)
	}
	naive := func(addr string) bool {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			return false
		}
		_ = c.Close()
		return true
	}
	cases := []struct {
		name, addr string
		up         bool
	}{
		{"grpc server", srv.Addr(), true},
		{"dead address", deadAddr(t), false},
		{"silent listener", silent.Addr().String(), false},
		{"not grpc", other.Addr().String(), false},
	}
	for _, c := range cases {
		if got := probe(c.addr); got != c.up {
			t.Errorf("%s: probe says up=%v, want %v", c.name, got, c.up)
		}
	}
	if !naive(silent.Addr().String()) {
		t.Error("the naive probe refused the silent listener: this test cannot tell the probes apart")
	}

	// A probe in flight ends when its peer stops.
	a.AddPeer(2, silent.Addr().String())
	p := a.peer(2)
	done := make(chan bool)
	go func() { done <- p.probe(wait) }()
	a.RemovePeer(2)
	select {
	case up := <-done:
		if up {
			t.Error("a stopped probe said up")
		}
	case <-time.After(wait):
		t.Fatal("the probe outlived its peer")
	}
}

// TestInboundResetOnlyWhenBackingOff: a stream from a peer toward which
// nothing backs off and the connection is up resets nothing.
func TestInboundResetOnlyWhenBackingOff(t *testing.T) {
	a, ra := newNode(t, testConfig(1, "127.0.0.1"), true)
	b, rb := newNode(t, testConfig(2, "127.0.0.1"), true)
	mesh(a, b)
	deliverEventually(t, a, rb, 2)
	p := a.peer(2)
	before := p.resets.Load()
	if !p.connReady() {
		t.Fatalf("connection %v after a delivery", p.conn.GetState())
	}
	deliverEventually(t, b, ra, 1) // node 2 opens its streams to node 1
	if p.resets.Load() != before {
		t.Fatal("an inbound stream reset a backoff that was not there")
	}
}

// TestProbeStep drives the probe loop's decisions directly. A peer whose
// connection is down is probed and its backoff reset when it answers; a
// connection that came back resets it too; but lanes that back off over a
// connection that stayed up (frames rejected, acks missing) keep their
// backoff even though the peer answers a probe, which the naive rule,
// "reset when the probe answers", would not.
func TestProbeStep(t *testing.T) {
	srv, _ := newNode(t, testConfig(2, "127.0.0.1"), true)
	cfg := testConfig(1, "127.0.0.1")
	cfg.BackoffBase, cfg.BackoffMax = time.Minute, time.Minute
	a, _ := newNode(t, cfg, false) // not started: the test owns the lanes
	step := func(down bool) (over, reset bool) {
		p := a.peer(2)
		before := p.resets.Load()
		over = p.probeStep(&down)
		return over, p.resets.Load() != before
	}

	// Nothing backs off: nothing to do.
	a.AddPeer(2, srv.Addr())
	if over, reset := step(false); !over || reset {
		t.Fatalf("no backoff: over %v reset %v", over, reset)
	}

	// Backing off, connection down (never connected), peer answers.
	bo := a.peer(2).newBackoff(kindRaft)
	bo.fail()
	if over, reset := step(false); !over || !reset {
		t.Fatalf("connection down, peer up: over %v reset %v", over, reset)
	}

	// Backing off, connection down, peer dead: keep probing.
	a.AddPeer(2, deadAddr(t))
	bo = a.peer(2).newBackoff(kindRaft)
	bo.fail()
	if over, reset := step(false); over || reset {
		t.Fatalf("peer dead: over %v reset %v", over, reset)
	}

	// Backing off over a connection that is up.
	a.AddPeer(2, srv.Addr())
	p := a.peer(2)
	p.conn.Connect()
	deadline := time.Now().Add(wait)
	for !p.connReady() {
		if time.Now().After(deadline) {
			t.Fatalf("connection %v", p.conn.GetState())
		}
		time.Sleep(5 * time.Millisecond) // polling the connection state; bounded above
	}
	bo = p.newBackoff(kindRaft)
	bo.fail()
	if over, reset := step(false); !over || reset {
		t.Fatalf("connection up all along: over %v reset %v", over, reset)
	}
	if !p.probe(time.Second) {
		t.Fatal("the peer does not answer the probe: the naive rule would not have reset either, so this case shows nothing")
	}
	// The same connection, seen down earlier in the spell: it came back.
	if over, reset := step(true); !over || !reset {
		t.Fatalf("connection back: over %v reset %v", over, reset)
	}
}
