package multiraft

// transport.Handler: what the transport hands the Host. Nothing here blocks
// or waits for a group's owner (seed 000).

import (
	"os"

	"github.com/flotilla/flotilla/transport"
)

// HandleBatch implements transport.Handler: messages go to their groups'
// inboxes. Never blocks; a full inbox drops (raft retransmits).
func (h *Host) HandleBatch(from uint64, batch []transport.Envelope) {
	h.live.note(from)
	var ids, unknown []uint64
	var dropped int
	var files []string // of dropped snapshots: removed once unlocked
	h.mu.RLock()
	var g *group
	for i := range batch {
		e := &batch[i]
		if g == nil || g.id != e.Group {
			if g != nil {
				g.in.Unlock()
			}
			g = h.mu.groups[e.Group]
			if g == nil {
				dropped++
				unknown = append(unknown, e.Group)
				files = appendSnapshotFile(files, &e.Msg)
				continue
			}
			g.in.Lock()
			if n := len(ids); n == 0 || ids[n-1] != g.id {
				ids = append(ids, g.id)
			}
		}
		if len(g.in.msgs) >= h.cfg.MaxInboxMsgs || g.in.closed {
			dropped++
			files = appendSnapshotFile(files, &e.Msg)
			continue
		}
		g.in.msgs = append(g.in.msgs, e.Msg)
	}
	if g != nil {
		g.in.Unlock()
	}
	h.mu.RUnlock()
	for _, f := range files {
		os.Remove(f)
	}
	if dropped > 0 {
		h.metrics.inboxDropped.Add(float64(dropped))
	}
	h.sched.enqueueAll(ids)
	if len(unknown) > 0 && h.cfg.UnknownGroup != nil {
		h.reportUnknown(unknown, from)
	}
}

// reportUnknown hands unknown groups to Config.UnknownGroup, each at most
// once per election timeout (a leader probes an absent replica every
// heartbeat). Time is the Host's tick count, so the simulation replays it.
func (h *Host) reportUnknown(groups []uint64, from uint64) {
	now, every := h.live.ticks.Load(), int64(h.cfg.ElectionTicks)
	h.unknown.Lock()
	if h.unknown.seen == nil {
		h.unknown.seen = make(map[uint64]int64)
	}
	var report []uint64
	for _, g := range groups {
		if last, ok := h.unknown.seen[g]; ok && now-last < every {
			continue
		}
		h.unknown.seen[g] = now
		report = append(report, g)
	}
	if len(h.unknown.seen) > 4096 {
		for g, last := range h.unknown.seen {
			if now-last >= every {
				delete(h.unknown.seen, g)
			}
		}
	}
	h.unknown.Unlock()
	for _, g := range report {
		h.cfg.UnknownGroup(g, from)
	}
}

// ReportUnreachable implements transport.Handler. The report is recorded
// under a leaf lock and handed to every group on the next tick by the
// group's owner, never applied here (seed 000).
func (h *Host) ReportUnreachable(to uint64) {
	h.feedback.Lock()
	h.feedback.unreachable[to] = struct{}{}
	h.feedback.Unlock()
}

// ReportSnapshot implements transport.Handler: recorded in the group's
// inbox, applied by its owner.
func (h *Host) ReportSnapshot(group, to uint64, ok bool) {
	h.mu.RLock()
	g := h.mu.groups[group]
	if g != nil {
		g.in.Lock()
		g.in.snaps = append(g.in.snaps, snapReport{to: to, ok: ok})
		g.in.Unlock()
	}
	h.mu.RUnlock()
	if g != nil {
		h.sched.enqueue(group)
	}
}
