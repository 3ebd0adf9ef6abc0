package transport

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/peer"
)

func TestGRPCConfigValidation(t *testing.T) {
	good := testConfig(1, "127.0.0.1")
	cases := map[string]func(c *GRPCConfig){
		"no node id":        func(c *GRPCConfig) { c.NodeID = 0 },
		"no cluster id":     func(c *GRPCConfig) { c.ClusterID = 0 },
		"no listener":       func(c *GRPCConfig) { c.ListenAddr = "" },
		"both listeners":    func(c *GRPCConfig) { c.Server = grpc.NewServer() },
		"bad listen addr":   func(c *GRPCConfig) { c.ListenAddr = "nope" },
		"bad peer addr":     func(c *GRPCConfig) { c.PeerAddr = "nope" },
		"negative queue":    func(c *GRPCConfig) { c.QueueCap = -1 },
		"huge queue":        func(c *GRPCConfig) { c.QueueCap = 1 << 30 },
		"tiny frame":        func(c *GRPCConfig) { c.MaxFrameSize = 100 },
		"message > frame":   func(c *GRPCConfig) { c.MaxFrameSize = 64 << 10; c.MaxMessageSize = 64 << 10 },
		"chunk > frame":     func(c *GRPCConfig) { c.MaxFrameSize = 64 << 10; c.SnapshotChunkSize = 1 << 20 },
		"short keepalive":   func(c *GRPCConfig) { c.KeepaliveTime = time.Second },
		"tiny write to":     func(c *GRPCConfig) { c.WriteTimeout = time.Microsecond },
		"base > max":        func(c *GRPCConfig) { c.BackoffBase = time.Second; c.BackoffMax = 10 * time.Millisecond },
		"snapshot < chunk":  func(c *GRPCConfig) { c.MaxSnapshotSize = 1024 },
		"negative interval": func(c *GRPCConfig) { c.DropLogInterval = -time.Second },
	}
	for name, mod := range cases {
		t.Run(name, func(t *testing.T) {
			c := good
			mod(&c)
			tr, err := NewGRPC(c)
			if err == nil {
				_ = tr.Close()
				t.Fatal("NewGRPC accepted a bad config")
			}
			if !errors.Is(err, ErrConfig) || !strings.HasPrefix(err.Error(), "transport: ") {
				t.Fatalf("err = %v, want ErrConfig", err)
			}
		})
	}
	c, err := good.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if c.QueueCap != DefaultQueueCap || c.MaxMessageSize != DefaultMaxMessageSize || c.KeepaliveTime != DefaultKeepaliveTime {
		t.Fatalf("defaults not applied: %+v", c)
	}
}

func TestCodecRoundTrip(t *testing.T) {
	envs := []Envelope{
		{Group: 1, Msg: hb(1, 2, 5)},
		{Group: 1 << 40, Msg: app(1, 2, 9, []byte("hello"))},
	}
	f := &frame{kind: kindRaft, clusterID: 7, from: 1, to: 2, seq: 3, stamp: 99, envs: envs}
	for i := range envs {
		f.sizes = append(f.sizes, envs[i].Msg.Size())
	}
	bs, err := frameCodec{}.Marshal(f)
	if err != nil {
		t.Fatal(err)
	}
	wire := bs.Materialize()
	bs.Free()
	in := &frame{}
	if err := (frameCodec{}).Unmarshal(memSlice(wire), in); err != nil {
		t.Fatal(err)
	}
	r, err := in.decodeHeader()
	if err != nil {
		t.Fatal(err)
	}
	if err := in.decodeBody(r, 1<<20); err != nil {
		t.Fatal(err)
	}
	if in.kind != kindRaft || in.clusterID != 7 || in.from != 1 || in.to != 2 || in.seq != 3 || in.stamp != 99 {
		t.Fatalf("header mismatch: %+v", in)
	}
	if len(in.envs) != 2 || in.envs[1].Group != 1<<40 || string(in.envs[1].Msg.Entries[0].Data) != "hello" ||
		in.envs[0].Msg.Commit != 5 {
		t.Fatalf("body mismatch: %+v", in.envs)
	}
	// The decoded message owns its bytes: reusing the frame buffer does not
	// change it.
	clear(in.raw)
	if string(in.envs[1].Msg.Entries[0].Data) != "hello" {
		t.Fatal("decoded message aliases the frame buffer")
	}

	// Must frames.
	mf := &frame{kind: kindMust, clusterID: 7, from: 1, to: 2, seq: 4,
		must: []mustMsg{{group: 3, payload: []byte("abc")}, {group: 4}, {group: 5, payload: []byte("de")}}}
	bs, _ = frameCodec{}.Marshal(mf)
	in = &frame{}
	_ = frameCodec{}.Unmarshal(bs, in)
	bs.Free()
	r, _ = in.decodeHeader()
	if err := in.decodeBody(r, 100); err != nil {
		t.Fatal(err)
	}
	if len(in.must) != 3 || string(in.must[0].payload) != "abc" || in.must[1].payload != nil || string(in.must[2].payload) != "de" || in.must[2].group != 5 {
		t.Fatalf("must mismatch: %+v", in.must)
	}

	// Oversize and malformed input.
	in = &frame{raw: wire}
	r, _ = in.decodeHeader()
	if err := in.decodeBody(r, 4); !errors.Is(err, errOversize) {
		t.Fatalf("oversize: err = %v", err)
	}
	for cut := 0; cut < len(wire); cut++ {
		in = &frame{raw: wire[:cut]}
		r, err := in.decodeHeader()
		if err == nil {
			err = in.decodeBody(r, 1<<20)
		}
		if err == nil {
			t.Fatalf("truncated frame (%d of %d bytes) decoded", cut, len(wire))
		}
	}
	bad := append([]byte(nil), wire...)
	bad[0] = 9
	in = &frame{raw: bad}
	if _, err := in.decodeHeader(); !errors.Is(err, errMalformed) {
		t.Fatalf("bad version: err = %v", err)
	}
}

// TestBatching shows that the sender drains everything queued into one
// frame: 1000 messages queued before the sender runs arrive in one batch.
func TestBatching(t *testing.T) {
	a, _ := newNode(t, testConfig(1, "127.0.0.1"), false)
	b, rb := newNode(t, testConfig(2, "127.0.0.1"), true)
	mesh(a, b)
	const n = 1000
	batch := make([]Envelope, n)
	for i := range batch {
		batch[i] = Envelope{Group: uint64(i % 10), Msg: app(1, 2, uint64(i), []byte("x"))}
	}
	a.Send(batch) // queued: a's sender does not run until Start
	if err := a.Start(newRecorder()); err != nil {
		t.Fatal(err)
	}
	if !rb.until(wait, func() bool { return len(rb.messagesLocked()) == n }) {
		t.Fatalf("received %d of %d messages", rb.count(func(*Envelope) bool { return true }), n)
	}
	rb.mu.Lock()
	frames := len(rb.mu.batches)
	for i, e := range rb.messagesLocked() {
		if e.Msg.Index != uint64(i) {
			t.Errorf("message %d has index %d: order lost", i, e.Msg.Index)
			break
		}
	}
	rb.mu.Unlock()
	if frames != 1 {
		t.Fatalf("%d messages arrived in %d frames, want 1", n, frames)
	}
	if got := counterValue(b, "received", "1", "raft"); got != 1 {
		t.Fatalf("frames received = %v, want 1", got)
	}
	st := a.Stats()
	if len(st) != 1 || st[0].Sent != n || st[0].Dropped != 0 || st[0].LastContact.IsZero() {
		t.Fatalf("stats = %+v", st)
	}
}

// TestHeartbeatCoalescing shows heartbeats for many groups going out as one
// batch per peer per flush, with the metrics that count them, and the RTT
// measured from the batch acks.
func TestHeartbeatCoalescing(t *testing.T) {
	reg := prometheus.NewRegistry()
	cfg := testConfig(1, "127.0.0.1")
	cfg.Registerer = reg
	a, _ := newNode(t, cfg, true)
	b, rb := newNode(t, testConfig(2, "127.0.0.1"), true)
	c, rc := newNode(t, testConfig(3, "127.0.0.1"), true)
	mesh(a, b, c)
	const groups = 100
	for tick := uint64(1); tick <= 3; tick++ {
		var batch []Envelope
		for g := uint64(0); g < groups; g++ {
			batch = append(batch, Envelope{Group: g, Msg: hb(1, 2, tick)}, Envelope{Group: g, Msg: hb(1, 3, tick)})
		}
		a.Send(batch)
		if rb.count(func(*Envelope) bool { return true }) != 0 && tick == 1 {
			t.Fatal("heartbeats sent before FlushHeartbeats")
		}
		a.FlushHeartbeats(true)
		for _, r := range []*recorder{rb, rc} {
			if !r.until(wait, func() bool { return len(r.mu.batches) == int(tick) }) {
				t.Fatalf("tick %d: no heartbeat batch", tick)
			}
			r.mu.Lock()
			last := r.mu.batches[len(r.mu.batches)-1]
			r.mu.Unlock()
			if len(last) != groups || last[0].Msg.Commit != tick {
				t.Fatalf("tick %d: batch of %d heartbeats (commit %d), want %d", tick, len(last), last[0].Msg.Commit, groups)
			}
		}
	}
	for _, to := range []string{"2", "3"} {
		// The sender counts a batch once its write returns, which may be
		// after the receiver has it: wait (bounded) for the count.
		for deadline := time.Now().Add(wait); counterValue(a, "hbBatches", to) < 3 && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
		}
		if got := counterValue(a, "hbBatches", to); got != 3 {
			t.Errorf("heartbeat batches to %s = %v, want 3", to, got)
		}
		if got := counterValue(a, "hbCoalesced", to); got != 3*groups {
			t.Errorf("heartbeats coalesced to %s = %v, want %d", to, got, 3*groups)
		}
	}
	// The metrics are registered under their contract names.
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	for _, n := range []string{"flotilla_transport_heartbeat_batches_sent_total", "flotilla_transport_heartbeats_coalesced_total"} {
		if !names[n] {
			t.Errorf("metric %s not registered", n)
		}
	}
	// RTT comes from the batch acks.
	ok := rb.until(wait, func() bool {
		for _, s := range a.Stats() {
			if s.RTT <= 0 {
				return false
			}
		}
		return true
	})
	if !ok {
		t.Fatalf("no RTT measured: %+v", a.Stats())
	}
	_ = c
}

// TestPingAcksSparse shows the heartbeat lane leaving most pings unacked
// (pingAckInterval) and still acking often enough that a stream carrying
// nothing but pings is never taken for a black hole: over four times the
// ack deadline (WriteTimeout), node 1 opens one heartbeat stream to node 2.
// With no ack for pings at all, the stream fails every WriteTimeout.
func TestPingAcksSparse(t *testing.T) {
	a, _ := newNode(t, testConfig(1, "127.0.0.1"), true)
	b, rb := newNode(t, testConfig(2, "127.0.0.1"), true)
	mesh(a, b)
	until := time.Now().Add(4 * a.cfg.WriteTimeout)
	pings := 0
	for time.Now().Before(until) {
		a.FlushHeartbeats(true)
		pings++
		time.Sleep(2 * time.Millisecond)
	}
	if !rb.until(wait, func() bool { return len(rb.mu.batches) >= pings/2 }) {
		t.Fatalf("node 2 got %d of %d pings", len(rb.mu.batches), pings)
	}
	rb.mu.Lock()
	got := len(rb.mu.batches)
	rb.mu.Unlock()
	acks := b.acksSent.Load()
	// One ack per pingAckInterval (WriteTimeout/8), so about 32 here; one
	// per ping would be several hundred.
	if acks == 0 || acks > uint64(got)/4 {
		t.Errorf("node 2 acked %d of %d pings, want between 1 and a quarter", acks, got)
	}
	if n := a.peer(2).opened.Load(); n != 1 {
		t.Errorf("node 1 opened %d streams to node 2, want 1 (the heartbeat stream, never failed)", n)
	}
}

// TestHeartbeatLaneIndependent shows that heartbeats do not wait behind bulk
// traffic: with the receiver stuck on a raft batch and the raft stream
// blocked in flow control, heartbeat batches still arrive.
func TestHeartbeatLaneIndependent(t *testing.T) {
	a, _ := newNode(t, testConfig(1, "127.0.0.1"), true)
	cfgB := testConfig(2, "127.0.0.1")
	b, err := NewGRPC(cfgB)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	release := make(chan struct{})
	stuck := make(chan struct{}, 1)
	hbs := make(chan uint64, 100)
	h := &funcHandler{batch: func(from uint64, batch []Envelope) {
		if batch[0].Msg.Type == raftpb.MsgApp {
			select {
			case stuck <- struct{}{}:
			default:
			}
			<-release // a misbehaving handler: blocks the raft stream
			return
		}
		hbs <- batch[0].Msg.Commit
	}}
	if err := b.Start(h); err != nil {
		t.Fatal(err)
	}
	defer close(release)
	mesh(a, b)
	big := make([]byte, 256<<10)
	for i := range 32 { // 8 MiB: far more than the stream window
		a.Send([]Envelope{{Group: 1, Msg: app(1, 2, uint64(i), big)}})
	}
	select {
	case <-stuck:
	case <-time.After(wait):
		t.Fatal("raft batch never arrived")
	}
	for tick := uint64(1); tick <= 5; tick++ {
		a.Send([]Envelope{{Group: 1, Msg: hb(1, 2, tick)}})
		a.FlushHeartbeats(true)
		select {
		case got := <-hbs:
			if got != tick {
				t.Fatalf("heartbeat %d, want %d", got, tick)
			}
		case <-time.After(wait):
			t.Fatalf("tick %d: heartbeat stuck behind bulk traffic", tick)
		}
	}
}

type funcHandler struct {
	batch       func(from uint64, batch []Envelope)
	unreachable func(to uint64)
	snapshot    func(group, to uint64, ok bool)
}

func (h *funcHandler) HandleBatch(from uint64, batch []Envelope) {
	if h.batch != nil {
		h.batch(from, batch)
	}
}

func (h *funcHandler) ReportUnreachable(to uint64) {
	if h.unreachable != nil {
		h.unreachable(to)
	}
}

func (h *funcHandler) ReportSnapshot(group, to uint64, ok bool) {
	if h.snapshot != nil {
		h.snapshot(group, to, ok)
	}
}

// TestSnapshot shows a snapshot sent in chunks, reassembled intact, and its
// outcome reported both ways.
func TestSnapshot(t *testing.T) {
	cfg := testConfig(1, "127.0.0.1")
	cfg.SnapshotChunkSize = 256 << 10
	a, ra := newNode(t, cfg, true)
	b, rb := newNode(t, testConfig(2, "127.0.0.1"), true)
	mesh(a, b)
	data := bytes.Repeat([]byte("snapshot"), 128<<10) // 1 MiB
	snap := raftpb.Message{Type: raftpb.MsgSnap, From: 1, To: 2, Term: 3,
		Snapshot: &raftpb.Snapshot{Data: data, Metadata: raftpb.SnapshotMetadata{Index: 10, Term: 3}}}
	a.Send([]Envelope{{Group: 42, Msg: snap}})
	if !rb.until(wait, func() bool { return len(rb.mu.batches) == 1 }) {
		t.Fatal("snapshot not delivered")
	}
	got := rb.messagesLocked()[0]
	if got.Group != 42 || got.Msg.Type != raftpb.MsgSnap || !bytes.Equal(got.Msg.Snapshot.Data, data) || got.Msg.Snapshot.Metadata.Index != 10 {
		t.Fatal("snapshot corrupted")
	}
	if !ra.until(wait, func() bool { return len(ra.mu.snaps) == 1 }) || ra.mu.snaps[0] != (snapReport{42, 2, true}) {
		t.Fatalf("snapshot reports = %+v, want one ok", ra.mu.snaps)
	}
	chunks := counterValue(b, "received", "1", "snapshot")
	if want := float64((snap.Size() + cfg.SnapshotChunkSize - 1) / cfg.SnapshotChunkSize); chunks != want || want < 4 {
		t.Fatalf("snapshot arrived in %v chunks, want %v", chunks, want)
	}

	// A black-holed receiver: the outcome is a failure, reported.
	b.Faults().SetIngressBlocked(1, true)
	a.Send([]Envelope{{Group: 43, Msg: snap}})
	if !ra.until(wait, func() bool { return len(ra.mu.snaps) == 2 }) || ra.mu.snaps[1] != (snapReport{43, 2, false}) {
		t.Fatalf("snapshot reports = %+v, want a failure for group 43", ra.mu.snaps)
	}
	if ra.unreachableCount(2) == 0 {
		t.Fatal("failed snapshot did not report the peer unreachable")
	}
}

// TestRejects shows frames with a wrong cluster ID, for another node, or
// over the size limits rejected and counted, and the sender told so.
func TestRejects(t *testing.T) {
	t.Run("cluster", func(t *testing.T) {
		a, _ := newNode(t, testConfig(1, "127.0.0.1"), true)
		cfg := testConfig(2, "127.0.0.1")
		cfg.ClusterID = testCluster + 1
		b, rb := newNode(t, cfg, true)
		mesh(a, b)
		a.Send([]Envelope{{Group: 1, Msg: app(1, 2, 1, nil)}})
		waitCounter(t, b, "rejected", RejectClusterID)
		waitCounter(t, a, "dropped", "2", DropRejected)
		if rb.count(func(*Envelope) bool { return true }) != 0 {
			t.Fatal("rejected message delivered")
		}
	})
	t.Run("removed node", func(t *testing.T) {
		a, _ := newNode(t, testConfig(1, "127.0.0.1"), true)
		b, rb := newNode(t, testConfig(2, "127.0.0.1"), true)
		mesh(a, b)
		a.Send([]Envelope{{Group: 1, Msg: app(1, 2, 1, nil)}})
		if !rb.until(wait, func() bool { return len(rb.messagesLocked()) == 1 }) {
			t.Fatal("message before the refusal not delivered")
		}
		b.Refuse(1)
		b.AddPeer(1, a.Addr()) // refused: not added back
		if b.peer(1) != nil {
			t.Fatal("a refused node was added back as a peer")
		}
		for i := uint64(2); i < 5; i++ {
			a.Send([]Envelope{{Group: 1, Msg: app(1, 2, i, nil)}})
		}
		waitCounter(t, b, "rejected", RejectRemoved)
		if n := rb.count(func(*Envelope) bool { return true }); n != 1 {
			t.Fatalf("%d messages delivered, want only the one before the refusal", n)
		}
	})
	t.Run("wrong node", func(t *testing.T) {
		a, _ := newNode(t, testConfig(1, "127.0.0.1"), true)
		b, rb := newNode(t, testConfig(2, "127.0.0.1"), true)
		a.AddPeer(3, b.Addr()) // node 3's address points at node 2
		a.Send([]Envelope{{Group: 1, Msg: hb(1, 3, 1)}})
		a.FlushHeartbeats(true)
		waitCounter(t, b, "rejected", RejectWrongNode)
		if rb.count(func(*Envelope) bool { return true }) != 0 {
			t.Fatal("misaddressed message delivered")
		}
	})
	t.Run("oversize message", func(t *testing.T) {
		a, _ := newNode(t, testConfig(1, "127.0.0.1"), true)
		cfg := testConfig(2, "127.0.0.1")
		cfg.MaxMessageSize = 4 << 10
		b, rb := newNode(t, cfg, true)
		mesh(a, b)
		a.Send([]Envelope{{Group: 1, Msg: app(1, 2, 1, make([]byte, 8<<10))}})
		waitCounter(t, b, "rejected", RejectOversize)
		waitCounter(t, a, "dropped", "2", DropRejected)
		// The stream was closed cleanly: the next small message gets through
		// on a new stream.
		deliverEventually(t, a, rb, 2)
	})
	t.Run("oversize frame", func(t *testing.T) {
		a, _ := newNode(t, testConfig(1, "127.0.0.1"), true)
		cfg := testConfig(2, "127.0.0.1")
		cfg.MaxFrameSize = 64 << 10
		cfg.MaxMessageSize = 60 << 10
		b, _ := newNode(t, cfg, true)
		mesh(a, b)
		batch := make([]Envelope, 20)
		for i := range batch {
			batch[i] = Envelope{Group: 1, Msg: app(1, 2, uint64(i), make([]byte, 10<<10))}
		}
		a.Send(batch)
		waitCounter(t, b, "rejected", RejectOversize)
	})
	t.Run("sender drops too large", func(t *testing.T) {
		cfg := testConfig(1, "127.0.0.1")
		cfg.MaxMessageSize = 4 << 10
		a, _ := newNode(t, cfg, true)
		b, rb := newNode(t, testConfig(2, "127.0.0.1"), true)
		mesh(a, b)
		a.Send([]Envelope{{Group: 1, Msg: app(1, 2, 1, make([]byte, 8<<10))}})
		waitCounter(t, a, "dropped", "2", DropTooLarge)
		deliverEventually(t, a, rb, 2)
	})
}

// waitCounter waits until the counter is positive.
func waitCounter(t *testing.T, tr *GRPCTransport, vec string, labels ...string) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for counterValue(tr, vec, labels...) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("counter %s%v stayed zero", vec, labels)
		}
		time.Sleep(5 * time.Millisecond) // polling a counter; bounded above
	}
}

// deliverEventually sends a marked message from a to node to every 20ms
// until r has it (bounded): redial and backoff take a few attempts.
func deliverEventually(t *testing.T, a *GRPCTransport, r *recorder, to uint64) {
	t.Helper()
	const mark = 777777
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(wait)
	has := func(e *Envelope) bool { return e.Msg.Index == mark }
	for r.count(has) == 0 {
		a.Send([]Envelope{{Group: 1, Msg: app(a.ID(), to, mark, nil)}})
		select {
		case <-tick.C:
		case <-r.wake:
		case <-deadline:
			t.Fatalf("message to %d never delivered; stats %+v", to, a.Stats())
		}
	}
}

// TestRedialAfterPeerRestart shows the peer reported unreachable while it
// is down and the connection coming back when it restarts on the same
// address.
func TestRedialAfterPeerRestart(t *testing.T) {
	a, ra := newNode(t, testConfig(1, "127.0.0.1"), true)
	b, rb := newNode(t, testConfig(2, "127.0.0.1"), true)
	mesh(a, b)
	deliverEventually(t, a, rb, 2)
	addr := b.Addr()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for ra.unreachableCount(2) == 0 {
		a.Send([]Envelope{{Group: 1, Msg: hb(1, 2, 1)}, {Group: 1, Msg: app(1, 2, 5, nil)}})
		a.FlushHeartbeats(true)
		select {
		case <-tick.C:
		case <-time.After(wait):
			t.Fatal("peer down but never reported unreachable")
		}
	}
	cfg := testConfig(2, "127.0.0.1")
	cfg.ListenAddr = addr
	b2, rb2 := newNode(t, cfg, true)
	b2.AddPeer(1, a.Addr())
	deliverEventually(t, a, rb2, 2)
}

// TestDropCounting shows a full queue dropping and counting, in Stats, the
// metric and the rate-limited log, while a healthy transport logs nothing.
func TestDropCounting(t *testing.T) {
	var logA, logB syncBuffer
	cfg := testConfig(1, "127.0.0.1")
	cfg.QueueCap = 4
	cfg.DropLogInterval = 10 * time.Millisecond
	cfg.Logger = slog.New(slog.NewTextHandler(&logA, &slog.HandlerOptions{Level: slog.LevelWarn}))
	a, _ := newNode(t, cfg, false)
	cfgB := testConfig(2, "127.0.0.1")
	cfgB.DropLogInterval = 10 * time.Millisecond
	cfgB.Logger = slog.New(slog.NewTextHandler(&logB, &slog.HandlerOptions{Level: slog.LevelWarn}))
	b, _ := newNode(t, cfgB, true)
	mesh(a, b)
	for i := range 10 {
		a.Send([]Envelope{{Group: 1, Msg: app(1, 2, uint64(i), nil)}})
	}
	a.Send([]Envelope{{Group: 1, Msg: app(1, 9, 1, nil)}}) // unknown peer
	st := a.Stats()
	if len(st) != 1 || st[0].QueueLen != 4 || st[0].Dropped != 6 {
		t.Fatalf("stats = %+v, want queue 4, dropped 6", st)
	}
	if got := counterValue(a, "dropped", "2", DropQueueFull); got != 6 {
		t.Fatalf("queue_full drops = %v, want 6", got)
	}
	if got := counterValue(a, "dropped", "9", DropUnknownPeer); got != 1 {
		t.Fatalf("unknown_peer drops = %v, want 1", got)
	}
	if err := a.Start(newRecorder()); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(wait)
	for !strings.Contains(logA.String(), "dropped=6") {
		if time.Now().After(deadline) {
			t.Fatalf("no drop log; log: %q", logA.String())
		}
		time.Sleep(5 * time.Millisecond) // polling the log; bounded above
	}
	if s := logB.String(); s != "" {
		t.Fatalf("healthy transport logged: %q", s)
	}
	// Only deltas are logged: one line for the six drops.
	if n := strings.Count(logA.String(), "dropped messages"); n != 1 {
		t.Fatalf("%d drop log lines, want 1: %q", n, logA.String())
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestFaultHooks shows each fault hook taking effect and being removed at
// run time.
func TestFaultHooks(t *testing.T) {
	a, ra := newNode(t, testConfig(1, "127.0.0.1"), true)
	b, rb := newNode(t, testConfig(2, "127.0.0.1"), true)
	c, rc := newNode(t, testConfig(3, "127.0.0.1"), true)
	mesh(a, b, c)
	deliverEventually(t, a, rb, 2)

	t.Run("egress drop", func(t *testing.T) {
		a.Faults().SetEgressDropped(2, true)
		before := rb.count(func(*Envelope) bool { return true })
		a.Send([]Envelope{{Group: 1, Msg: app(1, 2, 1, nil)}})
		waitCounter(t, a, "dropped", "2", DropFault)
		a.Faults().SetEgressDropped(2, false)
		deliverEventually(t, a, rb, 2)
		if n := rb.count(func(e *Envelope) bool { return e.Msg.Index == 1 }); n != 0 {
			t.Fatalf("dropped message delivered (%d, before %d)", n, before)
		}
	})
	t.Run("egress delay", func(t *testing.T) {
		const d = 300 * time.Millisecond
		a.Faults().SetEgressDelay(2, d)
		start := time.Now()
		a.Send([]Envelope{{Group: 1, Msg: app(1, 2, 4242, nil)}})
		if !rb.until(wait, func() bool {
			for _, e := range rb.messagesLocked() {
				if e.Msg.Index == 4242 {
					return true
				}
			}
			return false
		}) {
			t.Fatal("delayed message never arrived")
		}
		if el := time.Since(start); el < d {
			t.Fatalf("delayed message arrived after %v, before the %v delay", el, d)
		}
		a.Faults().SetEgressDelay(2, 0)
	})
	t.Run("ingress block", func(t *testing.T) {
		b.Faults().SetIngressBlocked(1, true)
		before := rb.count(func(*Envelope) bool { return true })
		unreach := ra.unreachableCount(2)
		// Heartbeats into the black hole: the missing acks make the sender
		// give up on the stream and report the peer, after WriteTimeout.
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		deadline := time.After(wait)
		for ra.unreachableCount(2) == unreach {
			a.Send([]Envelope{{Group: 1, Msg: hb(1, 2, 1)}})
			a.FlushHeartbeats(true)
			select {
			case <-tick.C:
			case <-deadline:
				t.Fatal("black-holed peer never reported unreachable")
			}
		}
		if n := rb.count(func(*Envelope) bool { return true }); n != before {
			t.Fatalf("black-holed peer received %d messages", n-before)
		}
		b.Faults().SetIngressBlocked(1, false)
		deliverEventually(t, a, rb, 2)
	})
	t.Run("partition", func(t *testing.T) {
		for _, tr := range []*GRPCTransport{a, b, c} {
			tr.Faults().Partition([]uint64{1}, []uint64{2, 3})
		}
		a.Send([]Envelope{{Group: 1, Msg: app(1, 3, 31, nil)}})
		waitCounter(t, a, "dropped", "3", DropFault)
		deliverEventually(t, b, rc, 3) // same side
		for _, tr := range []*GRPCTransport{a, b, c} {
			tr.Faults().Heal()
		}
		deliverEventually(t, a, rc, 3)
		deliverEventually(t, c, ra, 1)
		if n := rc.count(func(e *Envelope) bool { return e.Msg.Index == 31 }); n != 0 {
			t.Fatal("message crossed the partition")
		}
	})
}

// TestSourceAddress shows outbound connections leaving from the host of the
// local peer address, as the receiving server sees them.
func TestSourceAddress(t *testing.T) {
	for _, src := range []string{"127.0.0.1", "127.0.0.3"} {
		t.Run(src, func(t *testing.T) {
			var mu sync.Mutex
			var remotes []string
			srv := grpc.NewServer(append(ServerOptions(GRPCConfig{}),
				grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
					if p, ok := peer.FromContext(ss.Context()); ok {
						mu.Lock()
						remotes = append(remotes, p.Addr.String())
						mu.Unlock()
					}
					return h(srv, ss)
				}))...)
			lis, err := net.Listen("tcp", "127.0.0.2:0")
			if err != nil {
				t.Skipf("cannot listen on 127.0.0.2: %v", err)
			}
			cfgB := testConfig(2, "127.0.0.2")
			cfgB.ListenAddr = ""
			cfgB.Server = srv
			cfgB.PeerAddr = lis.Addr().String()
			b, rb := newNode(t, cfgB, true)
			served := make(chan struct{})
			go func() {
				defer close(served)
				_ = srv.Serve(lis)
			}()
			t.Cleanup(func() {
				srv.Stop()
				<-served
			})
			a, _ := newNode(t, testConfig(1, src), true)
			a.AddPeer(2, b.Addr())
			deliverEventually(t, a, rb, 2)
			mu.Lock()
			defer mu.Unlock()
			if len(remotes) == 0 {
				t.Fatal("no stream seen")
			}
			for _, r := range remotes {
				host, _, _ := net.SplitHostPort(r)
				if host != src {
					t.Fatalf("server saw remote %s, want host %s", r, src)
				}
			}
		})
	}
}

// TestSendMust shows must-deliver messages arriving through a full lane and
// a dropped link, SendMust's errors, and a peer without a MustHandler.
func TestSendMust(t *testing.T) {
	cfg := testConfig(1, "127.0.0.1")
	cfg.MustQueueCap = 2
	a, _ := newNode(t, cfg, true)
	b, rb := newNode(t, testConfig(2, "127.0.0.1"), true)
	mesh(a, b)
	ctx := ctxWait(t)
	a.Faults().SetEgressDropped(2, true) // nothing leaves: the lane fills
	for i := range 3 {                   // one taken by the loop, two queued
		if err := a.SendMust(ctx, 2, 5, []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	ok, _ := returnsWithin(wait, func() {
		// The lane may still take one more; then it is full.
		for i := 3; ; i++ {
			if err := a.SendMust(short, 2, 5, []byte(fmt.Sprint(i))); err != nil {
				if !errors.Is(err, context.DeadlineExceeded) {
					t.Errorf("SendMust on a full lane: %v", err)
				}
				return
			}
		}
	})
	cancel()
	if !ok {
		t.Fatal("SendMust ignored its context")
	}
	if rb.until(0, func() bool { return len(rb.mu.must) > 0 }) {
		t.Fatal("delivered through a dropped link")
	}
	a.Faults().SetEgressDropped(2, false)
	if !rb.until(wait, func() bool { return len(rb.mu.must) >= 3 }) {
		t.Fatal("must-deliver messages not delivered after the fault lifted")
	}
	if err := a.SendMust(ctx, 2, 1, make([]byte, DefaultMaxMessageSize+1)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("too large: %v", err)
	}
	if err := a.SendMust(ctx, 9, 1, nil); !errors.Is(err, ErrUnknownPeer) {
		t.Fatalf("unknown peer: %v", err)
	}

	// A peer whose handler takes no must-deliver messages rejects them.
	c, err := NewGRPC(testConfig(3, "127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Start(&funcHandler{}); err != nil {
		t.Fatal(err)
	}
	a.AddPeer(3, c.Addr())
	if err := a.SendMust(ctx, 3, 1, []byte("x")); err != nil {
		t.Fatal(err)
	}
	waitCounter(t, c, "rejected", RejectNoMust)

	_ = a.Close()
	if err := a.SendMust(ctx, 2, 1, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
	a.Send([]Envelope{{Group: 1, Msg: app(1, 2, 1, nil)}}) // no panic
	a.FlushHeartbeats(true)
}

// TestRemovePeerAndClose shows RemovePeer forgetting a peer and Close
// stopping everything, twice without harm.
func TestRemovePeerAndClose(t *testing.T) {
	a, _ := newNode(t, testConfig(1, "127.0.0.1"), true)
	b, rb := newNode(t, testConfig(2, "127.0.0.1"), true)
	mesh(a, b)
	deliverEventually(t, a, rb, 2)
	a.RemovePeer(2)
	if len(a.Stats()) != 0 {
		t.Fatal("removed peer still in stats")
	}
	a.Send([]Envelope{{Group: 1, Msg: app(1, 2, 1, nil)}})
	if got := counterValue(a, "dropped", "2", DropUnknownPeer); got != 1 {
		t.Fatalf("unknown_peer drops = %v", got)
	}
	a.AddPeer(2, b.Addr())
	deliverEventually(t, a, rb, 2)
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := a.Start(newRecorder()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Start after Close: %v", err)
	}
}

// A message queued on a peer that AddPeer or RemovePeer has just stopped
// (Send raced with the replacement) is counted as dropped, and a snapshot
// among them is reported failed: raft would otherwise wait for its outcome
// forever.
func TestSendToStoppedPeerIsReclaimed(t *testing.T) {
	a, ra := newNode(t, testConfig(1, "127.0.0.1"), true)
	b, _ := newNode(t, testConfig(2, "127.0.0.1"), true)
	mesh(a, b)
	stale := a.peer(2)
	a.RemovePeer(2)
	// What Send does with a stale peer map entry: queue, then check.
	stale.snapQ <- Envelope{Group: 5, Msg: raftpb.Message{Type: raftpb.MsgSnap, From: 1, To: 2}}
	stale.raftQ <- Envelope{Group: 5, Msg: app(1, 2, 1, nil)}
	before := stale.dropped.Load()
	stale.reclaimIfStopped()
	if len(stale.snapQ) != 0 || len(stale.raftQ) != 0 {
		t.Fatalf("queues not drained: snap %d raft %d", len(stale.snapQ), len(stale.raftQ))
	}
	if got := stale.dropped.Load() - before; got != 2 {
		t.Fatalf("dropped %d, want 2", got)
	}
	if !ra.until(wait, func() bool {
		for _, s := range ra.mu.snaps {
			if s.group == 5 && !s.ok {
				return true
			}
		}
		return false
	}) {
		t.Fatal("the lost snapshot was not reported failed")
	}
}
