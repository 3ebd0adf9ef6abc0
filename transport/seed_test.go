package transport

// The seed failures of docs/failures.md, each run against the gRPC transport (which
// must pass) and against a deliberately naive version of the part that
// guards against it (which must fail). A guard that cannot fail guards
// nothing.

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// naiveWait is how long the tests give a naive version to show progress
// before they call it stuck. A stuck naive version never progresses, so the
// verdict does not depend on the machine's speed.
const naiveWait = time.Second

// chanLock is a mutex whose Lock can be abandoned, so that the naive
// versions' deadlocks can be undone and their goroutines cleaned up.
type chanLock chan struct{}

func newChanLock() chanLock { return make(chanLock, 1) }

func (l chanLock) lock(abort <-chan struct{}) bool {
	select {
	case l <- struct{}{}:
		return true
	case <-abort:
		return false
	}
}

func (l chanLock) unlock() { <-l }

// ---------------------------------------------------------------------------
// Seed 002: a serial, synchronous sender lets one silently black-holed
// follower starve the healthy one of heartbeats.

// naiveSerialSender is the sender of seed 002: the Ready loop sends every
// message in turn with a blocking call and no deadline.
type naiveSerialSender struct {
	id    uint64
	conns map[uint64]*grpc.ClientConn
}

func newNaiveSerialSender(t *testing.T, id uint64, addrs map[uint64]string) *naiveSerialSender {
	n := &naiveSerialSender{id: id, conns: map[uint64]*grpc.ClientConn{}}
	for to, addr := range addrs {
		cc, err := grpc.NewClient("passthrough:///"+addr,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.CallContentSubtype(codecName)))
		if err != nil {
			t.Fatal(err)
		}
		n.conns[to] = cc
	}
	return n
}

func (n *naiveSerialSender) close() {
	for _, cc := range n.conns {
		_ = cc.Close()
	}
}

// send delivers batch one message at a time, each with a call that waits
// for the peer's answer.
func (n *naiveSerialSender) send(ctx context.Context, batch []Envelope) error {
	for _, e := range batch {
		desc, kind := &raftStreamDesc, kindRaft
		if IsHeartbeat(&e.Msg) {
			desc, kind = &heartbeatStreamDesc, kindHeartbeat
		}
		cs, err := n.conns[e.Msg.To].NewStream(ctx, desc, "/"+peerServiceName+"/"+desc.StreamName)
		if err != nil {
			return err
		}
		f := &frame{kind: kind, clusterID: testCluster, from: n.id, to: e.Msg.To,
			envs: []Envelope{e}, sizes: []int{e.Msg.Size()}}
		if err := cs.SendMsg(f); err != nil {
			return err
		}
		if kind == kindRaft {
			_ = cs.CloseSend()
		}
		// Wait for the answer: the ack, or the end of the call.
		if err := cs.RecvMsg(&frame{}); err != nil && kind == kindHeartbeat {
			return err
		}
	}
	return nil
}

func TestSeed002BlackHoledFollowerDoesNotStarveHealthyOne(t *testing.T) {
	// Node 1 leads; node 2 silently drops everything from it (no RST, no
	// error: its streams just hang); node 3 is healthy.
	l, rl := newNode(t, testConfig(1, "127.0.0.1"), true)
	f1, rf1 := newNode(t, testConfig(2, "127.0.0.1"), true)
	f2, rf2 := newNode(t, testConfig(3, "127.0.0.1"), true)
	mesh(l, f1, f2)
	f1.Faults().SetIngressBlocked(1, true)

	payload := make([]byte, 32<<10)
	tickBatch := func(tick uint64) []Envelope {
		return []Envelope{
			{Group: 1, Msg: hb(1, 2, tick)}, {Group: 1, Msg: app(1, 2, tick, payload)},
			{Group: 1, Msg: hb(1, 3, tick)}, {Group: 1, Msg: app(1, 3, tick, payload)},
		}
	}
	gotHeartbeat := func(r *recorder, tick uint64) func() bool {
		return func() bool {
			for _, b := range r.mu.batches {
				for _, e := range b {
					if IsHeartbeat(&e.Msg) && e.Msg.Commit == tick {
						return true
					}
				}
			}
			return false
		}
	}

	// Flotilla: every tick's Send and FlushHeartbeats return, and the healthy
	// follower gets that tick's heartbeat batch.
	const ticks = 30
	for tick := uint64(1); tick <= ticks; tick++ {
		batch := tickBatch(tick)
		if ok, _ := returnsWithin(wait, func() { l.Send(batch); l.FlushHeartbeats(true) }); !ok {
			t.Fatalf("tick %d: Send blocked behind the black-holed follower", tick)
		}
		if !rf2.until(wait, gotHeartbeat(rf2, tick)) {
			t.Fatalf("tick %d: healthy follower got no heartbeat", tick)
		}
	}
	if n := rf1.count(func(*Envelope) bool { return true }); n != 0 {
		t.Fatalf("black-holed follower received %d messages", n)
	}
	// The dead streams are detected by their deadlines and the follower is
	// reported unreachable, while the healthy one keeps its heartbeats.
	tick := uint64(ticks)
	tk := time.NewTicker(20 * time.Millisecond)
	defer tk.Stop()
	deadline := time.After(wait)
	for rl.unreachableCount(2) == 0 {
		tick++
		l.Send(tickBatch(tick))
		l.FlushHeartbeats(true)
		select {
		case <-tk.C:
		case <-deadline:
			t.Fatal("black-holed follower never reported unreachable")
		}
	}
	if rl.unreachableCount(3) != 0 {
		t.Fatal("healthy follower reported unreachable")
	}
	if !rf2.until(wait, gotHeartbeat(rf2, tick)) {
		t.Fatalf("tick %d: healthy follower got no heartbeat", tick)
	}

	// The naive serial sender, same scenario: it blocks on the black-holed
	// follower at the first tick, and the healthy follower starves.
	naive := newNaiveSerialSender(t, 1, map[uint64]string{2: f1.Addr(), 3: f2.Addr()})
	defer naive.close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for tick := uint64(1001); tick <= 1000+ticks && ctx.Err() == nil; tick++ {
			_ = naive.send(ctx, tickBatch(tick))
		}
	}()
	starved := !rf2.until(naiveWait, gotHeartbeat(rf2, 1001))
	cancel()
	<-done
	if !starved {
		t.Fatal("the naive serial sender kept the healthy follower fed: this test cannot tell a good sender from a bad one")
	}
}

// ---------------------------------------------------------------------------
// Seed 003: a sender that holds the connection lock while it waits for room
// in a full output buffer deadlocks with a peer doing the same, because
// draining the buffers needs those locks.

// naiveGossipConn is the connection of seed 003: send holds the connection
// lock while it waits for room in the output buffer, and draining what the
// peer sent takes the same lock.
type naiveGossipConn struct {
	lock   chanLock
	out    chan string   // output buffer, drained by the peer's reader
	signal chan struct{} // tells the peer's reader out has something
	abort  <-chan struct{}
	locked chan struct{} // test instrumentation: a sender holds the lock
	got    atomic.Int64
}

func newNaiveGossipConn(abort <-chan struct{}) *naiveGossipConn {
	return &naiveGossipConn{lock: newChanLock(), out: make(chan string, 2),
		signal: make(chan struct{}, 1), abort: abort, locked: make(chan struct{}, 16)}
}

func (c *naiveGossipConn) send(m string) bool {
	if !c.lock.lock(c.abort) {
		return false
	}
	defer c.lock.unlock()
	c.locked <- struct{}{}
	select {
	case c.out <- m:
	case <-c.abort:
		return false
	}
	select {
	case c.signal <- struct{}{}:
	default:
	}
	return true
}

// readLoop drains the peer's output buffer into c, under c's lock.
func (c *naiveGossipConn) readLoop(peer *naiveGossipConn) {
	for {
		select {
		case <-peer.signal:
		case <-c.abort:
			return
		}
		if !c.lock.lock(c.abort) {
			return
		}
	drain:
		for {
			select {
			case <-peer.out:
				c.got.Add(1)
			default:
				break drain
			}
		}
		c.lock.unlock()
	}
}

func TestSeed003MustDeliverBothWaysWithFullBuffers(t *testing.T) {
	// Flotilla: two nodes, must-deliver lanes of two, every frame delayed so
	// that both lanes stay full while six senders per side push 20 messages
	// each to the other.
	cfgA, cfgB := testConfig(1, "127.0.0.1"), testConfig(2, "127.0.0.1")
	cfgA.MustQueueCap, cfgB.MustQueueCap = 2, 2
	a, ra := newNode(t, cfgA, true)
	b, rb := newNode(t, cfgB, true)
	mesh(a, b)
	a.Faults().SetEgressDelay(2, 50*time.Millisecond)
	b.Faults().SetEgressDelay(1, 50*time.Millisecond)

	const senders, each = 6, 20
	ctx := ctxWait(t)
	var wg sync.WaitGroup
	var returned atomic.Int64
	errs := make(chan error, 2*senders*each)
	for _, side := range []struct {
		tr *GRPCTransport
		to uint64
	}{{a, 2}, {b, 1}} {
		for s := range senders {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range each {
					if err := side.tr.SendMust(ctx, side.to, 1, fmt.Appendf(nil, "%d-%d-%d", side.tr.ID(), s, i)); err != nil {
						errs <- err
					}
					returned.Add(1)
				}
			}()
		}
	}
	// Both lanes full, senders waiting for room on both sides...
	pa, pb := a.peer(2), b.peer(1)
	deadline := time.Now().Add(wait)
	for len(pa.mustQ) < cap(pa.mustQ) || len(pb.mustQ) < cap(pb.mustQ) {
		if time.Now().After(deadline) {
			t.Fatal("must-deliver lanes never filled")
		}
		time.Sleep(time.Millisecond) // polling queue lengths; bounded above
	}
	// ...and the receive path and the droppable lane still work both ways.
	a.Send([]Envelope{{Group: 9, Msg: app(1, 2, 99, nil)}})
	b.Send([]Envelope{{Group: 9, Msg: app(2, 1, 99, nil)}})
	probe := func(e *Envelope) bool { return e.Group == 9 }
	if !rb.until(wait, func() bool { return len(rb.mu.batches) > 0 }) || rb.count(probe) != 1 ||
		!ra.until(wait, func() bool { return len(ra.mu.batches) > 0 }) || ra.count(probe) != 1 {
		t.Fatal("droppable lane blocked while must-deliver senders wait")
	}
	// Every other entry point takes the locks a waiting sender would hold if
	// it held one (the transport's and the peer's): each must return while
	// the senders wait.
	for _, tr := range []*GRPCTransport{a, b} {
		other := 3 - tr.ID()
		if ok, _ := returnsWithin(wait, func() {
			tr.Send([]Envelope{{Group: 9, Msg: hb(tr.ID(), other, 1)}})
			tr.FlushHeartbeats(true)
			_ = tr.Stats()
			tr.AddPeer(7, "127.0.0.1:1")
			tr.RemovePeer(7)
		}); !ok {
			t.Fatalf("node %d: Send/FlushHeartbeats/Stats/AddPeer blocked while must-deliver senders wait for room", tr.ID())
		}
	}
	if returned.Load() == 2*senders*each {
		t.Fatal("lanes drained before the check: the test did not exercise full buffers")
	}
	a.Faults().Heal()
	b.Faults().Heal()
	if ok, _ := returnsWithin(wait, wg.Wait); !ok {
		t.Fatalf("must-deliver senders stuck: %d of %d returned", returned.Load(), 2*senders*each)
	}
	close(errs)
	for err := range errs {
		t.Fatalf("SendMust: %v", err)
	}
	for _, r := range []*recorder{ra, rb} {
		ok := r.until(wait, func() bool {
			seen := map[string]bool{}
			for _, m := range r.mu.must {
				seen[m.payload] = true
			}
			return len(seen) == senders*each
		})
		if !ok {
			t.Fatalf("not every must-deliver message arrived: %d received", len(r.mu.must))
		}
	}

	// The naive connection, same shape: both output buffers full, a sender on
	// each side holding its connection lock while it waits for room. The
	// readers that would drain the buffers need those locks: deadlock.
	abort := make(chan struct{})
	p, q := newNaiveGossipConn(abort), newNaiveGossipConn(abort)
	for i := range 2 {
		p.send(fmt.Sprint("p", i))
		q.send(fmt.Sprint("q", i))
		<-p.locked
		<-q.locked
	}
	var naiveWG sync.WaitGroup
	naiveWG.Add(4)
	go func() { defer naiveWG.Done(); p.send("p-must") }()
	go func() { defer naiveWG.Done(); q.send("q-must") }()
	<-p.locked // both senders now hold their locks, waiting for room
	<-q.locked
	go func() { defer naiveWG.Done(); p.readLoop(q) }()
	go func() { defer naiveWG.Done(); q.readLoop(p) }()
	drained := func() bool { return p.got.Load() == 3 && q.got.Load() == 3 }
	tm := time.NewTimer(naiveWait)
	for !drained() {
		select {
		case <-tm.C:
		case <-time.After(10 * time.Millisecond): // polling counters; bounded by tm
			continue
		}
		break
	}
	tm.Stop()
	stuck := !drained()
	close(abort)
	naiveWG.Wait()
	if !stuck {
		t.Fatal("the naive connection did not deadlock: this test cannot tell a good lane from a bad one")
	}
}

// ---------------------------------------------------------------------------
// Seed 000: reporting a peer unreachable from the heartbeat coalescer, under
// the coalescer's lock, into code that takes a group's lock: lock-order
// inversion with a group that holds its lock while it queues heartbeats.

// group models a raft group whose owner holds its lock while it works, and
// whose ReportUnreachable (the old, synchronous kind) takes that lock.
type group struct {
	lock    chanLock
	abort   <-chan struct{}
	entered atomic.Int64 // ReportUnreachable calls started
	done    atomic.Int64 // ReportUnreachable calls finished
}

func (g *group) reportUnreachable() {
	g.entered.Add(1)
	if g.lock.lock(g.abort) {
		g.lock.unlock()
		g.done.Add(1)
	}
}

// naiveCoalescer is the heartbeat coalescer of seed 000: it sends under its
// lock and reports unreachable peers synchronously, still under it.
type naiveCoalescer struct {
	lock    chanLock
	abort   <-chan struct{}
	pending map[uint64][]Envelope
	send    func(to uint64, batch []Envelope) bool
	report  func(to uint64)
}

func (c *naiveCoalescer) queue(batch []Envelope) bool {
	if !c.lock.lock(c.abort) {
		return false
	}
	defer c.lock.unlock()
	for _, e := range batch {
		c.pending[e.Msg.To] = append(c.pending[e.Msg.To], e)
	}
	return true
}

func (c *naiveCoalescer) flush() {
	if !c.lock.lock(c.abort) {
		return
	}
	defer c.lock.unlock()
	for to, b := range c.pending {
		if !c.send(to, b) {
			c.report(to) // under the coalescer's lock
		}
	}
	clear(c.pending)
}

func TestSeed000UnreachableReportsNeverTakeGroupLock(t *testing.T) {
	// Flotilla: node 1 coalesces heartbeats for node 2 (healthy) and node 3
	// (nothing listens). Its Handler's ReportUnreachable takes the group's
	// lock — the worst a handler can do — while the group's owner holds
	// that lock and keeps queuing and flushing heartbeats.
	l, err := NewGRPC(testConfig(1, "127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	abort := make(chan struct{})
	defer close(abort) // before l.Close: frees a report stuck on the group lock
	g := &group{lock: newChanLock(), abort: abort}
	h := &funcHandler{unreachable: func(uint64) { g.reportUnreachable() }}
	if err := l.Start(h); err != nil {
		t.Fatal(err)
	}
	f, rf := newNode(t, testConfig(2, "127.0.0.1"), true)
	l.AddPeer(2, f.Addr())
	l.AddPeer(3, deadAddr(t))

	if !g.lock.lock(abort) { // the owner takes the group's lock
		t.Fatal("lock")
	}
	gotTick := func(tick uint64) func() bool {
		return func() bool {
			for _, b := range rf.mu.batches {
				if b[0].Msg.Commit == tick {
					return true
				}
			}
			return false
		}
	}
	tick := uint64(0)
	ownerTick := func() bool {
		tick++
		ok, _ := returnsWithin(wait, func() {
			l.Send([]Envelope{{Group: 1, Msg: hb(1, 2, tick)}, {Group: 1, Msg: hb(1, 3, tick)}})
			l.FlushHeartbeats(true)
		})
		return ok && rf.until(wait, gotTick(tick))
	}
	// Tick until the transport's report for node 3 is waiting on the
	// group's lock...
	deadline := time.Now().Add(wait)
	for g.entered.Load() == 0 {
		if !ownerTick() {
			t.Fatalf("tick %d: owner stuck or heartbeat lost", tick)
		}
		if time.Now().After(deadline) {
			t.Fatal("node 3 never reported unreachable")
		}
	}
	// ...and the owner still queues and flushes, and node 2 still gets
	// every heartbeat batch.
	for range 10 {
		if !ownerTick() {
			t.Fatalf("tick %d: owner or heartbeats stuck while a report waits for the group lock", tick)
		}
	}
	if g.done.Load() != 0 {
		t.Fatal("report finished while the owner held the lock")
	}
	g.lock.unlock()
	deadline = time.Now().Add(wait)
	for g.done.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("report never finished after the owner released the lock")
		}
		time.Sleep(time.Millisecond) // polling a counter; bounded above
	}

	// The naive coalescer, same scenario: its flush reports node 3 under the
	// coalescer's lock and waits for the group's lock; the owner, holding the
	// group's lock, waits for the coalescer's lock to queue heartbeats.
	naiveAbort := make(chan struct{})
	ng := &group{lock: newChanLock(), abort: naiveAbort}
	delivered := make(chan uint64, 100)
	nc := &naiveCoalescer{
		lock: newChanLock(), abort: naiveAbort, pending: map[uint64][]Envelope{},
		send: func(to uint64, b []Envelope) bool {
			if to == 3 {
				return false
			}
			delivered <- b[0].Msg.Commit
			return true
		},
		report: func(uint64) { ng.reportUnreachable() },
	}
	if !ng.lock.lock(naiveAbort) { // the owner holds the group's lock
		t.Fatal("lock")
	}
	nc.queue([]Envelope{{Group: 1, Msg: hb(1, 2, 1)}, {Group: 1, Msg: hb(1, 3, 1)}})
	var naiveWG sync.WaitGroup
	naiveWG.Add(1)
	go func() { defer naiveWG.Done(); nc.flush() }() // the coalescer's tick
	for deadline := time.Now().Add(wait); ng.entered.Load() == 0; {
		if time.Now().After(deadline) {
			close(naiveAbort)
			naiveWG.Wait()
			t.Fatal("the naive flush never reached the report")
		}
		time.Sleep(time.Millisecond) // polling a flag; bounded above
	}
	ok, ownerDone := returnsWithin(naiveWait, func() {
		// The owner's next tick.
		if nc.queue([]Envelope{{Group: 1, Msg: hb(1, 2, 2)}, {Group: 1, Msg: hb(1, 3, 2)}}) {
			nc.flush()
		}
	})
	close(naiveAbort) // undo the deadlock so every goroutine ends
	<-ownerDone
	naiveWG.Wait()
	if ok {
		t.Fatal("the naive coalescer did not deadlock: this test cannot tell a good coalescer from a bad one")
	}
}
