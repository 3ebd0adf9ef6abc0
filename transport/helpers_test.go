package transport

import (
	"context"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc/mem"
)

// testCluster is the cluster ID of test transports.
const testCluster = 7

// wait bounds every wait of the tests for something that must happen.
const wait = 10 * time.Second

// recorder is a Handler (and MustHandler) that records what it gets. Its
// methods never block; waiters are woken through a channel.
type recorder struct {
	mu struct {
		sync.Mutex
		batches     [][]Envelope
		froms       []uint64
		unreachable map[uint64]int
		snaps       []snapReport
		must        []mustRec
	}
	wake chan struct{}
}

type snapReport struct {
	group, to uint64
	ok        bool
}

type mustRec struct {
	from, group uint64
	payload     string
}

func newRecorder() *recorder {
	r := &recorder{wake: make(chan struct{}, 1)}
	r.mu.unreachable = make(map[uint64]int)
	return r
}

func (r *recorder) poke() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

func (r *recorder) HandleBatch(from uint64, batch []Envelope) {
	r.mu.Lock()
	r.mu.batches = append(r.mu.batches, batch)
	r.mu.froms = append(r.mu.froms, from)
	r.mu.Unlock()
	r.poke()
}

func (r *recorder) ReportUnreachable(to uint64) {
	r.mu.Lock()
	r.mu.unreachable[to]++
	r.mu.Unlock()
	r.poke()
}

func (r *recorder) ReportSnapshot(group, to uint64, ok bool) {
	r.mu.Lock()
	r.mu.snaps = append(r.mu.snaps, snapReport{group, to, ok})
	r.mu.Unlock()
	r.poke()
}

func (r *recorder) HandleMust(from, group uint64, payload []byte) {
	r.mu.Lock()
	r.mu.must = append(r.mu.must, mustRec{from, group, string(payload)})
	r.mu.Unlock()
	r.poke()
}

// until waits, at most d, for cond (evaluated under r's lock) to hold.
func (r *recorder) until(d time.Duration, cond func() bool) bool {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		ok := cond()
		r.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-r.wake:
		case <-deadline.C:
			r.mu.Lock()
			ok := cond()
			r.mu.Unlock()
			return ok
		}
	}
}

// messages returns every message received, in order.
func (r *recorder) messagesLocked() []Envelope {
	var out []Envelope
	for _, b := range r.mu.batches {
		out = append(out, b...)
	}
	return out
}

func (r *recorder) count(pred func(*Envelope) bool) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, b := range r.mu.batches {
		for i := range b {
			if pred(&b[i]) {
				n++
			}
		}
	}
	return n
}

func (r *recorder) unreachableCount(to uint64) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.mu.unreachable[to]
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// testConfig returns a config with short timeouts for node id on host.
func testConfig(id uint64, host string) GRPCConfig {
	return GRPCConfig{
		NodeID:       id,
		ClusterID:    testCluster,
		ListenAddr:   net.JoinHostPort(host, "0"),
		Logger:       discardLogger(),
		WriteTimeout: 300 * time.Millisecond,
		DialTimeout:  time.Second,
		BackoffBase:  10 * time.Millisecond,
		BackoffMax:   100 * time.Millisecond,
	}
}

// newNode returns a transport (closed at cleanup) and its recorder. It is
// not started unless start is true.
func newNode(tb testing.TB, cfg GRPCConfig, start bool) (*GRPCTransport, *recorder) {
	tb.Helper()
	tr, err := NewGRPC(cfg)
	if err != nil {
		tb.Fatalf("NewGRPC(%d): %v", cfg.NodeID, err)
	}
	tb.Cleanup(func() { _ = tr.Close() })
	rec := newRecorder()
	if start {
		if err := tr.Start(rec); err != nil {
			tb.Fatal(err)
		}
	}
	return tr, rec
}

// mesh makes every transport a peer of every other.
func mesh(ts ...*GRPCTransport) {
	for _, a := range ts {
		for _, b := range ts {
			if a != b {
				a.AddPeer(b.ID(), b.Addr())
			}
		}
	}
}

func hb(from, to, commit uint64) raftpb.Message {
	return raftpb.Message{Type: raftpb.MsgHeartbeat, From: from, To: to, Term: 1, Commit: commit}
}

func app(from, to, index uint64, data []byte) raftpb.Message {
	return raftpb.Message{Type: raftpb.MsgApp, From: from, To: to, Term: 1, Index: index,
		Entries: []raftpb.Entry{{Term: 1, Index: index + 1, Data: data}}}
}

// deadAddr returns an address on which nothing listens.
func deadAddr(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return addr
}

// returnsWithin runs fn and reports whether it returned within d. If it did
// not, fn keeps running; the caller must unblock it.
func returnsWithin(d time.Duration, fn func()) (bool, <-chan struct{}) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-done:
		return true, done
	case <-tm.C:
		return false, done
	}
}

func counterValue(tr *GRPCTransport, vec string, labels ...string) float64 {
	switch vec {
	case "dropped":
		return testutil.ToFloat64(tr.metrics.dropped.WithLabelValues(labels...))
	case "rejected":
		return testutil.ToFloat64(tr.metrics.rejected.WithLabelValues(labels...))
	case "hbBatches":
		return testutil.ToFloat64(tr.metrics.hbBatches.WithLabelValues(labels...))
	case "hbCoalesced":
		return testutil.ToFloat64(tr.metrics.hbCoalesced.WithLabelValues(labels...))
	case "received":
		return testutil.ToFloat64(tr.metrics.receivedBatches.WithLabelValues(labels...))
	}
	panic(vec)
}

// ctxWait returns a context cancelled at test cleanup.
func ctxWait(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	t.Cleanup(cancel)
	return ctx
}

func memSlice(b []byte) mem.BufferSlice { return mem.BufferSlice{mem.SliceBuffer(b)} }
