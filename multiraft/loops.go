package multiraft

// The driver loops: workers that run cycles, the ticker, and their Manual-mode
// counterparts (Tick, Process).

import (
	"sort"
	"time"
)

// workerLoop takes groups that have work and processes them, one cycle at
// a time, until the Host stops.
func (h *Host) workerLoop(w *worker) {
	defer h.wg.Done()
	for {
		ids := h.sched.next(w.ids[:0], h.cfg.MaxGroupsPerCycle, true)
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
	t := time.NewTicker(h.cfg.TickInterval)
	defer t.Stop()
	var ids []uint64
	for {
		select {
		case <-h.stopc:
			return
		case <-t.C:
			ids = h.tick(ids[:0])
		}
	}
}

// Tick advances every group by one tick. Only in Manual mode; in automatic
// mode the Host ticks itself every TickInterval.
func (h *Host) Tick() {
	if !h.cfg.Manual {
		panic("multiraft: Tick outside Manual mode")
	}
	h.tick(nil)
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
func (h *Host) tick(ids []uint64) []uint64 {
	h.live.ticks.Add(1)
	h.tr.FlushHeartbeats()
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
	ids = h.paceStartCampaigns(ids)
	h.tickScratch = h.act.snapshot(h.tickScratch[:0])
	for _, g := range h.tickScratch {
		g.in.Lock()
		g.in.ticks++
		g.in.unreachable = append(g.in.unreachable, unreachable...)
		g.in.Unlock()
		ids = append(ids, g.id)
	}
	clear(h.tickScratch)
	h.sched.enqueueAll(ids)
	return ids
}
