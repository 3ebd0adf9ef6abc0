package multiraft

// The driver loops: workers that run cycles, the ticker, and their Manual-mode
// counterparts (Tick, Process).

import (
	"sort"
	"time"

	"github.com/flotilla/flotilla/internal/phase"
)

// workerLoop takes groups that have work and processes them, one cycle at
// a time, until the Host stops.
func (h *Host) workerLoop(w *worker) {
	defer h.wg.Done()
	for {
		var ids []uint64
		if w.grown() {
			// Let go of a burst's buffers once there is no work: kept,
			// they would stay with an idle worker (reuse).
			if ids = h.sched.next(w.ids[:0], h.cfg.MaxGroupsPerCycle, false); len(ids) == 0 {
				w.trim()
			}
		}
		if len(ids) == 0 {
			ids = h.sched.next(w.ids[:0], h.cfg.MaxGroupsPerCycle, true)
		}
		if ids == nil {
			w.batch.Close()
			return
		}
		w.ids = ids
		h.processCycle(w, ids)
		h.sched.done(ids)
	}
}

// tickLoop ticks every group once per TickInterval.
func (h *Host) tickLoop() {
	defer h.wg.Done()
	t := phase.NewTicker(h.cfg.TickInterval)
	defer t.Stop()
	var ids []uint64
	for {
		select {
		case <-h.stopc:
			return
		case now := <-t.C:
			t.Next()
			// A tick taken a whole interval after it fired says this loop
			// waited that long for a CPU: the node is behind (liveness.go,
			// "An overloaded node"). The ticker drops the ticks it could
			// not deliver meanwhile, so one stall is one late tick.
			ids = h.tick(ids[:0], time.Since(now) >= h.cfg.TickInterval)
		}
	}
}

// Tick advances every group by one tick. Only in Manual mode; in automatic
// mode the Host ticks itself every TickInterval.
func (h *Host) Tick() {
	if !h.cfg.Manual {
		panic("multiraft: Tick outside Manual mode")
	}
	h.tick(nil, false)
}

// TickLate is Tick for a tick that came a whole interval late or more, as
// the automatic mode's ticker delivers one when its loop waited that long
// for a CPU: the node counts as behind (Config.LivenessStretch). Only in
// Manual mode; the simulation ticks a node so when it resumes from a
// pause.
func (h *Host) TickLate() {
	if !h.cfg.Manual {
		panic("multiraft: TickLate outside Manual mode")
	}
	h.tick(nil, true)
}

// Process runs one cycle over every group that has work, on the caller's
// goroutine, and returns how many groups it processed. Only in Manual mode.
func (h *Host) Process() int {
	if !h.cfg.Manual {
		panic("multiraft: Process outside Manual mode")
	}
	if h.isStopped() {
		return 0
	}
	w := h.manualW
	ids := h.sched.next(w.ids[:0], 1<<30, false)
	w.ids = ids
	if len(ids) == 0 {
		return 0
	}
	h.processCycle(w, ids)
	h.sched.done(ids)
	return len(ids)
}

// tick sends the heartbeats coalesced during the last tick, hands pending
// transport feedback to the groups, and queues a tick for every group.
func (h *Host) tick(ids []uint64, late bool) []uint64 {
	// The stretch moves before the tick count: a PeerDown between the two
	// would otherwise judge the new count by the old stretch, and a peer
	// found down stays down until heard (liveness.down).
	h.live.judge(late, int64(h.cfg.LivenessTicks), int64(h.cfg.LivenessStretch))
	n := h.live.ticks.Add(1)
	if h.announced.Load() {
		// A ping every PingTicks ticks, the first at once, and on every
		// late tick: an overloaded node's ticker drops ticks, and pings
		// spaced in the ticks it runs would reach its peers further apart
		// than their liveness timeout (liveness.go, "An overloaded node").
		ping := late || h.lastPing == 0 || n-h.lastPing >= int64(h.cfg.PingTicks)
		if ping {
			h.lastPing = n
		}
		h.tr.FlushHeartbeats(ping)
	}
	h.expireStreams()
	var unreachable []uint64
	h.feedback.Lock()
	for id := range h.feedback.unreachable {
		unreachable = append(unreachable, id)
		delete(h.feedback.unreachable, id)
	}
	h.feedback.Unlock()
	sort.Slice(unreachable, func(i, j int) bool { return unreachable[i] < unreachable[j] })

	// Only the active groups tick: a quiesced one costs nothing here
	// (quiesce.go); liveness wakes those that must wake.
	ids = h.wakeOnLiveness(ids)
	ids = h.paceCatchUps(ids)
	ids = h.paceStartCampaigns(ids)
	ids = h.paceHellos(ids)
	// A group whose last tick its owner has not run yet gets no second
	// one: ticks coalesce, so an overloaded node's groups run slow clocks
	// instead of running several ticks in a row, ahead of the messages
	// queued with them. Counted as several, the ticks of a leader a busy
	// worker reached late ran its CheckQuorum twice before it stepped its
	// followers' responses, and it stepped down: when a node came back to
	// 3 nodes with 10,000 ranges and every survivor's leader woke to catch
	// it up, 2,100 leaders stepped down and clients stalled for 6 s
	// (BENCHMARKS.md, "At the client, with 10,000 ranges"). Node liveness
	// (liveness.go) counts the Host's ticks, not the groups': an overload
	// does not slow the failover.
	h.tickScratch = h.act.snapshot(h.tickScratch[:0])
	coalesced := 0
	for _, g := range h.tickScratch {
		g.in.Lock()
		if g.in.tick {
			coalesced++
		}
		g.in.tick = true
		g.in.unreachable = append(g.in.unreachable, unreachable...)
		g.in.Unlock()
		ids = append(ids, g.id)
	}
	h.metrics.ticksCoalesced.Add(uint64(coalesced))
	clear(h.tickScratch)
	h.sched.enqueueAll(ids)
	return ids
}

// TicksCoalesced returns how many ticks local replicas did not get
// because they had not run their previous one yet (tick).
func (h *Host) TicksCoalesced() uint64 { return h.metrics.ticksCoalesced.Load() }
