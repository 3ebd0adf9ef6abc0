package transport

import (
	"context"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
)

// ackStream is a server stream that records the acks sent on it and
// signals each one.
type ackStream struct {
	grpc.ServerStream // nil: only SendMsg is used
	mu                sync.Mutex
	acks              []frame
	sent              chan struct{}
}

func (s *ackStream) SendMsg(m any) error {
	s.mu.Lock()
	s.acks = append(s.acks, *m.(*frame))
	s.mu.Unlock()
	s.sent <- struct{}{}
	return nil
}

// TestAckPacerCoalesces: a burst of frames gets far fewer acks than
// frames, the first ack leaves without waiting for the burst, and the last
// one, sent at the latest when the stream ends, covers every frame.
func TestAckPacerCoalesces(t *testing.T) {
	tr := &GRPCTransport{id: 2, cfg: GRPCConfig{ClusterID: testCluster, WriteTimeout: time.Hour}}
	ss := &ackStream{sent: make(chan struct{}, 1000)}
	a := tr.startAckPacer(ss)
	if a.interval != maxAckInterval {
		t.Fatalf("interval %v, want %v", a.interval, maxAckInterval)
	}
	// The first ack of a quiet stream leaves at once.
	if err := a.note(1, 1, 11, 5); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ss.sent:
	case <-time.After(wait):
		t.Fatal("no ack for the first frame")
	}
	const frames = 2000
	for seq := uint64(2); seq <= frames; seq++ {
		if err := a.note(1, seq, seq*10, seq*5); err != nil {
			t.Fatal(err)
		}
	}
	a.stop()
	tr.wg.Wait()
	ss.mu.Lock()
	defer ss.mu.Unlock()
	n := len(ss.acks)
	if n < 2 || n > frames/10 {
		t.Fatalf("%d acks for %d frames: want at least 2 and at most %d", n, frames, frames/10)
	}
	last := ss.acks[n-1]
	if last.kind != kindAck || last.seq != frames || last.stamp != frames*10 || last.count != frames*5 || last.to != 1 || last.from != 2 {
		t.Fatalf("last ack %+v does not cover frame %d", last, frames)
	}
	for i := 1; i < n; i++ {
		if ss.acks[i].seq <= ss.acks[i-1].seq {
			t.Fatalf("ack %d has seq %d after %d", i, ss.acks[i].seq, ss.acks[i-1].seq)
		}
	}
}

// TestAckPacerInterval: the pacing interval stays well below WriteTimeout,
// the sender's deadline for acks.
func TestAckPacerInterval(t *testing.T) {
	tr := &GRPCTransport{cfg: GRPCConfig{WriteTimeout: 10 * time.Millisecond}}
	a := tr.startAckPacer(&ackStream{sent: make(chan struct{}, 1)})
	defer a.stop()
	if a.interval > tr.cfg.WriteTimeout/8 {
		t.Fatalf("interval %v with WriteTimeout %v", a.interval, tr.cfg.WriteTimeout)
	}
}

// TestAckPacerEndsWithTransport: the pacer of a stream that stays open
// ends when the transport closes, so Close does not wait for the stream.
func TestAckPacerEndsWithTransport(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	tr := &GRPCTransport{ctx: ctx, cfg: GRPCConfig{WriteTimeout: time.Hour}}
	a := tr.startAckPacer(&ackStream{sent: make(chan struct{}, 1)})
	cancel()
	tr.wg.Wait() // the pacer's goLoop ends without stop
	a.stop()     // and the handler's stop still returns
}
