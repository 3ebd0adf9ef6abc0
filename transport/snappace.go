package transport

import (
	"context"
	"math"
	"sync"
	"time"
)

// Snapshot pacing: the bounds a node keeps on the snapshots it sends, over
// all its peers, so that moving replicas (which sends a snapshot per new
// replica) neither starves the foreground writes of disk and network nor
// delays a heartbeat (seed 002; heartbeats and raft messages have lanes of
// their own, and the pacing waits only on the snapshot lane):
//
//   - GRPCConfig.MaxSnapshotsInFlight: the snapshots sent at once (each
//     peer's snapshot lane sends one at a time; a lane waits for a slot);
//   - GRPCConfig.SnapshotRate: the bytes per second of snapshot data, a
//     token bucket that lets one chunk beyond the rate go at once and then
//     keeps the average rate (snapPacer).

// snapPacer paces snapshot bytes at rate bytes per second, letting burst
// bytes beyond the rate go at once (after an idle spell, burst bytes and
// the next send). A generic cell rate algorithm: tat is the time at
// which the bytes already let through would have gone at exactly the rate;
// a send waits until tat is no more than the burst's time ahead of now.
// mu is a leaf.
type snapPacer struct {
	rate  float64       // bytes per second; > 0
	burst time.Duration // the time the burst takes at rate
	mu    sync.Mutex
	tat   time.Time
}

// newSnapPacer returns a pacer for rate bytes per second with a burst of
// burst bytes, or nil (no pacing) for a rate of 0.
func newSnapPacer(rate int64, burst int) *snapPacer {
	if rate <= 0 {
		return nil
	}
	return &snapPacer{rate: float64(rate), burst: time.Duration(float64(burst) / float64(rate) * float64(time.Second))}
}

// reserve takes n bytes at time now and returns how long the caller must
// wait before sending them.
func (p *snapPacer) reserve(now time.Time, n int) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tat.Before(now) {
		p.tat = now
	}
	wait := p.tat.Sub(now) - p.burst
	// Rounded up: truncated, the schedule would run a little fast.
	p.tat = p.tat.Add(time.Duration(math.Ceil(float64(n) / p.rate * float64(time.Second))))
	return max(wait, 0)
}

// wait blocks until n bytes may be sent, or ctx ends (false). A nil pacer
// never waits.
func (p *snapPacer) wait(ctx context.Context, n int) bool {
	if p == nil {
		return true
	}
	d := p.reserve(time.Now(), n)
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// takeSnapshotSlot waits for one of the node's MaxSnapshotsInFlight
// slots, or the peer's end (false). Meanwhile it goes on reporting the
// snapshots dropped from this peer's full lane (snapWake), as the lane's
// loop does when idle: their groups must not wait for another peer's
// transfer to end to learn of it. The caller gives the slot back with
// releaseSnapshotSlot.
func (p *grpcPeer) takeSnapshotSlot() bool {
	t := p.t
	select {
	case t.snapSlots <- struct{}{}:
	default:
		start := time.Now()
		defer func() { t.metrics.snapshotWaits.WithLabelValues("slot").Add(time.Since(start).Seconds()) }()
	wait:
		for {
			select {
			case t.snapSlots <- struct{}{}:
				break wait
			case <-p.snapWake:
				p.reportSnapFailures()
			case <-p.ctx.Done():
				return false
			}
		}
	}
	n := t.snapInFlight.Add(1)
	for {
		m := t.snapInFlightMax.Load()
		if n <= m || t.snapInFlightMax.CompareAndSwap(m, n) {
			return true
		}
	}
}

// releaseSnapshotSlot gives back a slot takeSnapshotSlot took.
func (t *GRPCTransport) releaseSnapshotSlot() {
	t.snapInFlight.Add(-1)
	<-t.snapSlots
}

// paceSnapshot waits until n more snapshot bytes may be sent (SnapshotRate),
// or ctx's end (false).
func (t *GRPCTransport) paceSnapshot(ctx context.Context, n int) bool {
	if t.snapPace == nil {
		return true
	}
	start := time.Now()
	ok := t.snapPace.wait(ctx, n)
	t.metrics.snapshotWaits.WithLabelValues("rate").Add(time.Since(start).Seconds())
	return ok
}
