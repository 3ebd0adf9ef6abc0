package multiraft

// One cycle of a worker over the groups it holds: the Ready cycle.

import (
	"fmt"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/flotilla/flotilla/storage"
	"github.com/flotilla/flotilla/transport"
)

// worker is the scratch state of one scheduler worker. Owned by it.
type worker struct {
	batch   storage.Batch
	ids     []uint64
	readies []readyGroup
	early   []transport.Envelope
	late    []transport.Envelope
	cmds    []Command
	keys    []uint64
	events  []LeaderEvent
	again   []uint64
}

// oversized reports whether a buffer of capacity c whose last use held n
// items is let go rather than kept: it grew past keep items and that use
// took under a quarter of it. A raft.Ready is about 0.3 KiB: 10,000
// ranges electing at a node's start grew the four workers' buffers to
// 1.4 MB, kept for good once they quiesced (BENCHMARKS.md, "Quiescence:
// the idle floor and memory, later"). Under a steady load the cycles use
// what they keep, and nothing is let go.
func oversized(n, c, keep int) bool { return c > keep && n < c/4 }

// cycleKeep is the size past which a worker lets a buffer go after a
// cycle that used under a quarter of it (reuse); idleKeep the same once
// the worker is idle (trim).
const cycleKeep, idleKeep = 1024, 256

// reuse empties a worker's buffer for the next cycle, or lets it go if
// oversized (cycleKeep) after its last cycle.
func reuse[T any](s []T) []T {
	if oversized(len(s), cap(s), cycleKeep) {
		return nil
	}
	clear(s)
	return s[:0]
}

// trimmed returns s, or nil if an idle worker lets it go (idleKeep).
func trimmed[T any](s []T) []T {
	if oversized(len(s), cap(s), idleKeep) {
		return nil
	}
	return s
}

// grown reports whether trim would let go of a buffer. The lengths are
// those of the last cycle (processCycle empties the buffers at the start
// of the next).
func (w *worker) grown() bool {
	return oversized(len(w.readies), cap(w.readies), idleKeep) || oversized(len(w.early), cap(w.early), idleKeep) ||
		oversized(len(w.late), cap(w.late), idleKeep) || oversized(len(w.ids), cap(w.ids), idleKeep)
}

// trim lets go of the buffers a burst grew and the last cycle did not
// use; the worker is idle.
func (w *worker) trim() {
	w.readies, w.early, w.late, w.ids = trimmed(w.readies), trimmed(w.early), trimmed(w.late), trimmed(w.ids)
}

type readyGroup struct {
	g  *group
	rd raft.Ready
}

func (h *Host) newWorker() *worker { return &worker{batch: h.store.NewBatch()} }

// processCycle runs one cycle for the groups a worker holds: step inputs,
// persist all Readys with one batch and one sync, send, apply, advance.
func (h *Host) processCycle(w *worker, ids []uint64) {
	defer func() {
		// A storage error on the raft path stops the Host (fatal), and the
		// log then answers raft with nothing (memLog.Entries), which some
		// of raft's paths take for a broken log and panic on (a campaign
		// scanning the unapplied entries). That panic ends the cycle of a
		// Host already stopping; any other is a bug and goes on.
		if r := recover(); r != nil {
			if h.err.Load() == nil {
				panic(r)
			}
			h.log.Error("multiraft: cycle ended by a panic after a fatal error", "panic", r)
		}
	}()
	w.readies = reuse(w.readies)
	h.mu.RLock()
	for _, id := range ids {
		if g := h.mu.groups[id]; g != nil {
			w.readies = append(w.readies, readyGroup{g: g})
		}
	}
	h.mu.RUnlock()
	n := 0
	for _, r := range w.readies {
		r.g.handleInputs()
		if !r.g.stopped && r.g.rn.HasReady() {
			r.rd = r.g.rn.Ready()
			w.readies[n] = r
			n++
		} else if len(r.g.outbox) > 0 {
			h.tr.Send(r.g.outbox)
			r.g.outbox = nil // rare (quiesce heartbeats): no buffer kept per group
		}
	}
	w.readies = w.readies[:n]
	if n == 0 {
		return
	}

	// 1. Persist. A leader's appends leave before its own write (Raft
	// thesis 10.2.1); everything else waits for the sync, because votes and
	// acknowledgements promise durability.
	w.early, w.late = reuse(w.early), reuse(w.late)
	for i := range w.readies {
		g, rd := w.readies[i].g, &w.readies[i].rd
		g.noteState(rd)
		g.checkConfAppended(rd.Entries)
		if !raft.IsEmptySnap(rd.Snapshot) {
			w.batch.SetSnapshot(g.id, rd.Snapshot)
			w.batch.SetConfState(g.id, rd.Snapshot.Metadata.ConfState, rd.Snapshot.Metadata.Index)
		}
		if len(rd.Entries) > 0 {
			w.batch.Append(g.id, rd.Entries, g.log.lastIndex())
		}
		if !raft.IsEmptyHardState(rd.HardState) {
			w.batch.SetHardState(g.id, rd.HardState)
		}
		for _, m := range rd.Messages {
			e := transport.Envelope{Group: g.id, Msg: m}
			if m.Type == raftpb.MsgSnap && m.Snapshot != nil {
				if token, ok := transport.StreamToken(m.Snapshot.Data); ok {
					h.streamSent(g.id, token, m.To)
				}
			}
			if m.Type == raftpb.MsgApp || m.Type == raftpb.MsgSnap {
				w.early = append(w.early, e)
			} else {
				w.late = append(w.late, e)
			}
		}
		w.late = append(w.late, g.outbox...)
		g.outbox = nil // rare (quiesce heartbeats): no buffer kept per group
	}
	if len(w.early) > 0 {
		h.tr.Send(w.early)
	}
	if !w.batch.Empty() {
		if h.failAt(FailBeforePersist) {
			return
		}
		if err := w.batch.Commit(!h.cfg.DisableSync); err != nil {
			h.fatal(fmt.Errorf("persist raft state: %w", err))
			return
		}
		h.metrics.syncs.Add(1)
		if h.failAt(FailAfterPersist) {
			return
		}
	}
	for i := range w.readies {
		g, rd := w.readies[i].g, &w.readies[i].rd
		if !raft.IsEmptySnap(rd.Snapshot) {
			g.log.applySnapshot(rd.Snapshot.Metadata)
		}
		g.log.append(rd.Entries)
		if !raft.IsEmptyHardState(rd.HardState) {
			g.log.hs = rd.HardState
		}
	}

	// 2. Send the rest. The transport never blocks.
	if len(w.late) > 0 {
		if h.failAt(FailBeforeSend) {
			return
		}
		h.tr.Send(w.late)
	}
	clear(w.early)
	clear(w.late)

	// 3. Apply, then advance.
	if h.failAt(FailBeforeApply) {
		return
	}
	w.events = reuse(w.events)
	for i := range w.readies {
		g, rd := w.readies[i].g, &w.readies[i].rd
		ev, ok, alive := g.applyReady(rd, w)
		if !alive {
			return
		}
		if ok {
			w.events = append(w.events, ev)
		}
	}
	if !w.batch.Empty() {
		if err := w.batch.Commit(false); err != nil {
			h.fatal(fmt.Errorf("persist applied state: %w", err))
			return
		}
	}
	if h.failAt(FailAfterApply) {
		return
	}
	w.again = reuse(w.again)
	for i := range w.readies {
		g := w.readies[i].g
		g.rn.Advance(w.readies[i].rd)
		if g.releaseAfterAdvance {
			g.releaseAfterAdvance = false
			g.releaseHeld()
		}
		g.releaseTransferHeld()
		g.retryConf()
		if g.rn.HasReady() {
			w.again = append(w.again, g.id)
		}
		w.readies[i] = readyGroup{}
	}
	if len(w.again) > 0 {
		h.sched.enqueueAll(w.again)
	}
	if len(w.events) > 0 {
		h.metrics.leaderChanges.Add(float64(len(w.events)))
		h.hub.publish(w.events)
		// publish keeps no reference to the slice's backing array past the
		// call except through subscriber mailboxes, which copy.
		w.events = nil
	}
}
