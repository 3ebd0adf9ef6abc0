package transport

import (
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"
)

// countingHandler counts what it receives and signals when it has target
// messages.
type countingHandler struct {
	funcHandler
	got    atomic.Int64
	target atomic.Int64
	done   chan struct{}
}

func newCountingHandler() *countingHandler {
	h := &countingHandler{done: make(chan struct{}, 1)}
	h.target.Store(-1)
	h.batch = func(_ uint64, batch []Envelope) {
		if n := h.got.Add(int64(len(batch))); n == h.target.Load() {
			h.done <- struct{}{}
		}
	}
	return h
}

func benchNode(b *testing.B, id uint64, h Handler, mod func(*GRPCConfig)) *GRPCTransport {
	cfg := testConfig(id, "127.0.0.1")
	if mod != nil {
		mod(&cfg)
	}
	tr, err := NewGRPC(cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = tr.Close() })
	if err := tr.Start(h); err != nil {
		b.Fatal(err)
	}
	return tr
}

// BenchmarkSendBlackHoledPeer measures the latency of Send (one message to a
// black-holed follower, one to a healthy one, and their heartbeats) while
// the black-holed follower's streams hang. Reports p50 and p99 per call.
func BenchmarkSendBlackHoledPeer(b *testing.B) {
	l := benchNode(b, 1, newCountingHandler(), nil)
	f1 := benchNode(b, 2, newCountingHandler(), nil)
	f2 := benchNode(b, 3, newCountingHandler(), nil)
	mesh(l, f1, f2)
	f1.Faults().SetIngressBlocked(1, true)
	entry := make([]byte, 256)
	batch := []Envelope{
		{Group: 1, Msg: app(1, 2, 1, entry)}, {Group: 1, Msg: hb(1, 2, 1)},
		{Group: 1, Msg: app(1, 3, 1, entry)}, {Group: 1, Msg: hb(1, 3, 1)},
	}
	lat := make([]time.Duration, 0, min(b.N, 1<<20))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		l.Send(batch)
		d := time.Since(start)
		if len(lat) < cap(lat) {
			lat = append(lat, d)
		}
		if i%64 == 63 {
			l.FlushHeartbeats(true) // a tick now and then, as the engine would
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)*50/100].Nanoseconds()), "p50-ns/send")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns/send")
}

// BenchmarkThroughput pushes MsgApps with one entry of the given size
// through one peer connection on loopback, as fast as the raft lane takes
// them, and reports messages/s; MB/s counts encoded message bytes.
func BenchmarkThroughput(b *testing.B) {
	for _, size := range []int{128, 1024, 16384} {
		b.Run(fmt.Sprintf("entry=%dB", size), func(b *testing.B) {
			h := newCountingHandler()
			a := benchNode(b, 1, newCountingHandler(), func(c *GRPCConfig) { c.QueueCap = 8192 })
			r := benchNode(b, 2, h, nil)
			mesh(a, r)
			p := a.peer(2)
			batch := make([]Envelope, 64)
			for i := range batch {
				batch[i] = Envelope{Group: uint64(i), Msg: app(1, 2, uint64(i), make([]byte, size))}
			}
			b.SetBytes(int64(batch[0].Msg.Size()))
			h.target.Store(int64(b.N))
			b.ReportAllocs()
			b.ResetTimer()
			for sent := 0; sent < b.N; {
				n := min(len(batch), b.N-sent)
				for len(p.raftQ) > cap(p.raftQ)-len(batch) {
					time.Sleep(20 * time.Microsecond) // the lane is full: back off
				}
				a.Send(batch[:n])
				sent += n
			}
			select {
			case <-h.done:
			case <-time.After(time.Minute):
				b.Fatalf("received %d of %d; stats %+v", h.got.Load(), b.N, a.Stats())
			}
			b.StopTimer()
			if d := p.dropped.Load(); d != 0 {
				b.Fatalf("%d dropped", d)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// BenchmarkFrameCodec measures encoding and decoding one frame of 64
// MsgApps with 128-byte entries.
func BenchmarkFrameCodec(b *testing.B) {
	f := &frame{kind: kindRaft, clusterID: 7, from: 1, to: 2}
	for i := range 64 {
		e := Envelope{Group: uint64(i), Msg: app(1, 2, uint64(i), make([]byte, 128))}
		f.envs = append(f.envs, e)
		f.sizes = append(f.sizes, e.Msg.Size())
	}
	in := &frame{}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		bs, err := frameCodec{}.Marshal(f)
		if err != nil {
			b.Fatal(err)
		}
		_ = frameCodec{}.Unmarshal(bs, in)
		bs.Free()
		r, _ := in.decodeHeader()
		if err := in.decodeBody(r, 1<<20); err != nil {
			b.Fatal(err)
		}
	}
}
