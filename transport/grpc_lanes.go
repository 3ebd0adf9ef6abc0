package transport

// The lanes of a gRPC peer, each a loop that owns its stream and backoff:
// raftSendLoop, heartbeatLoop (with writeBatch, their shared write path),
// ackLoop, snapshotLoop and mustLoop. They are started by grpcPeer.startLocked
// (and writeBatch, for ackLoop) through goLoop; see the goroutine inventory
// and the lock order at the top of grpc.go. No loop holds a lock across a
// blocking step.

import (
	"fmt"
	"io"
	"time"

	"google.golang.org/grpc"
)

// writeBatch writes f (a raft or heartbeat frame) on its lane, opening the
// stream (and its ackLoop) first if need be. It reports whether f was
// written.
func (p *grpcPeer) writeBatch(desc *grpc.StreamDesc, s **stream, bo *laneBackoff, f *frame) bool {
	n := len(f.envs)
	drop, delay := p.t.faults.state().egress(p.id)
	if delay > 0 && !p.waitFor(delay) {
		p.drop(p.m.dropClosed, n)
		return false
	}
	if drop {
		p.drop(p.m.dropFault, n)
		return false
	}
	if *s != nil {
		st := *s
		since := st.unackedSince.Load()
		switch {
		case st.dead():
			*s = nil
			st.close()
			bo.fail()
			p.settle(st, desc.StreamName, 0, st.endErr)
		case since != 0 && time.Since(time.Unix(0, since)) > p.t.cfg.WriteTimeout:
			// A black hole swallows writes without complaint until flow
			// control stops them: the missing acks give it away sooner.
			p.failStream(desc.StreamName, s, bo, 0, errAckTimeout)
		}
	}
	if *s == nil {
		if bo.left() > 0 {
			p.drop(p.m.dropUnreachable, n)
			p.reportUnreachable()
			return false
		}
		st, err := p.openStream(desc, bo.redial)
		if err != nil {
			bo.fail()
			p.drop(p.m.dropUnreachable, n)
			p.t.cfg.Logger.Debug("transport: cannot open stream", "to", p.id, "lane", desc.StreamName, "err", err)
			p.reportUnreachable()
			return false
		}
		st.done = make(chan struct{})
		p.t.goLoop("ackLoop", func() { p.ackLoop(st, f.kind) })
		*s = st
	}
	f.seq++
	f.stamp = p.t.nanotime()
	(*s).lastSeq.Store(f.seq)
	(*s).unackedSince.CompareAndSwap(0, time.Now().UnixNano())
	if err := (*s).send(f, p.t.cfg.WriteTimeout); err != nil {
		p.failStream(desc.StreamName, s, bo, n, err)
		return false
	}
	if c := (*s).addWritten(n); c != nil {
		p.drop(c, n)
		return false
	}
	bo.ok()
	p.sent.Add(uint64(n))
	p.m.sent.Add(float64(n))
	p.m.sentBytes.Add(float64(f.encodedSize()))
	p.contact()
	return true
}

// appendEnv adds e to f if it fits in *budget bytes (a frame always takes
// its first message). It returns false if e did not fit; e is left to the
// caller. A message over MaxMessageSize is dropped and counted.
func (p *grpcPeer) appendEnv(f *frame, e *Envelope, budget *int) bool {
	sz := e.Msg.Size()
	if sz > p.t.cfg.MaxMessageSize {
		p.drop(p.m.dropTooLarge, 1)
		return true
	}
	need := sz + 2*10
	if len(f.envs) > 0 && need > *budget {
		return false
	}
	*budget -= need
	f.envs = append(f.envs, *e)
	f.sizes = append(f.sizes, sz)
	return true
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func resetEnvs(f *frame) {
	if shrink(len(f.envs), cap(f.envs)) {
		f.envs, f.sizes = nil, nil
		return
	}
	clear(f.envs)
	f.envs = f.envs[:0]
	f.sizes = f.sizes[:0]
}

// shrink reports whether a reused buffer of capacity c that last held n
// items should be let go instead: one that grew large once (10,000 ranges
// electing at start, each with a heartbeat per peer) and now holds few (the
// ranges quiesced). Kept, two peers' heartbeat buffers held about 20 MiB
// of a 10,000-range node's heap.
func shrink(n, c int) bool { return c > 1024 && n < c/4 }

// idleKeep is the most envelopes an idle heartbeat lane keeps room for (a
// lane is idle when it pings: it has no heartbeat to send). An Envelope is
// about 0.2 KiB: the start of 10,000 ranges left two peers' lanes holding
// 1 MB (BENCHMARKS.md, "Quiescence: the idle floor and memory, later"). A
// ping comes only after a tick with no heartbeat, so a busy lane keeps its
// buffers.
const idleKeep = 256

// raftSendLoop drains the raft lane: everything queued goes out in one frame
// per write (up to MaxFrameSize).
func (p *grpcPeer) raftSendLoop() {
	var s *stream
	defer func() {
		if s != nil {
			s.close()
		}
	}()
	bo := p.newBackoff(kindRaft)
	f := p.newFrame(kindRaft)
	var next Envelope
	have := false
	for {
		if !have {
			select {
			case <-p.ctx.Done():
				p.drop(p.m.dropClosed, len(p.raftQ))
				return
			case next = <-p.raftQ:
			}
		}
		have = false
		budget := p.t.cfg.MaxFrameSize - frameSlack
		p.appendEnv(f, &next, &budget)
	fill:
		for {
			select {
			case next = <-p.raftQ:
				if !p.appendEnv(f, &next, &budget) {
					have = true
					break fill
				}
			default:
				break fill
			}
		}
		if len(f.envs) > 0 {
			p.writeBatch(&raftStreamDesc, &s, &bo, f)
		}
		resetEnvs(f)
	}
}

// heartbeatLoop writes each flushed heartbeat batch as one frame on the
// heartbeat stream, which nothing else uses. The peer acks every batch,
// and pings at most every pingAckInterval (grpc_server.go); a
// frame unacked for WriteTimeout marks the stream dead (see writeBatch).
func (p *grpcPeer) heartbeatLoop() {
	var s *stream
	defer func() {
		if s != nil {
			s.close()
		}
	}()
	bo := p.newBackoff(kindHeartbeat)
	f := p.newFrame(kindHeartbeat)
	for {
		select {
		case <-p.ctx.Done():
			p.mu.Lock()
			n := len(p.mu.hbReady) + len(p.mu.hbPending)
			p.mu.Unlock()
			p.drop(p.m.dropClosed, n)
			return
		case <-p.hbWake:
		}
		p.mu.Lock()
		batch, ping := p.mu.hbReady, p.mu.ping
		p.mu.hbReady, p.mu.ping = nil, false
		p.mu.Unlock()
		if len(batch) == 0 {
			if ping {
				// An empty frame: the peer learns this node is alive.
				p.writeBatch(&heartbeatStreamDesc, &s, &bo, f)
				p.m.pings.Inc()
				// No heartbeat to send: the lane is idle, and lets go of
				// what a burst grew, which it would otherwise keep until
				// its next batch (idleKeep).
				if cap(f.envs) > idleKeep {
					f.envs, f.sizes = nil, nil
				}
				p.mu.Lock()
				if cap(p.mu.hbSpare) > idleKeep {
					p.mu.hbSpare = nil
				}
				p.mu.Unlock()
			}
			continue
		}
		for i := 0; i < len(batch); {
			budget := p.t.cfg.MaxFrameSize - frameSlack
			for i < len(batch) && p.appendEnv(f, &batch[i], &budget) {
				i++
			}
			n := len(f.envs)
			if n > 0 && p.writeBatch(&heartbeatStreamDesc, &s, &bo, f) {
				p.m.hbBatches.Inc()
				p.m.hbCoalesced.Add(float64(n))
			}
			resetEnvs(f)
		}
		clear(batch)
		if shrink(len(batch), cap(batch)) {
			batch = nil
		}
		p.mu.Lock()
		p.mu.hbSpare = batch[:0]
		p.mu.Unlock()
	}
}

// ackLoop reads the acks of one raft or heartbeat stream until it ends, then
// counts what the stream lost. Acks on the heartbeat lane measure the RTT.
func (p *grpcPeer) ackLoop(s *stream, lane frameKind) {
	defer close(s.done)
	ack := &frame{}
	for {
		if err := s.cs.RecvMsg(ack); err != nil {
			s.endErr = err
			if err == io.EOF {
				s.endErr = io.ErrUnexpectedEOF
			}
			p.settle(s, lane.String(), 0, s.endErr)
			return
		}
		if err := p.checkAck(ack); err != nil {
			p.t.cfg.Logger.Warn("transport: bad ack", "to", p.id, "lane", lane, "err", err)
			s.cancel()
			s.endErr = err
			p.settle(s, lane.String(), 0, err)
			return
		}
		s.mu.Lock()
		s.mu.acked = max(s.mu.acked, ack.count)
		s.mu.Unlock()
		// unackedSince measures how long the stream has gone without
		// progress while writes are outstanding.
		if ack.seq >= s.lastSeq.Load() {
			s.unackedSince.Store(0)
		} else {
			s.unackedSince.Store(time.Now().UnixNano())
		}
		if lane == kindHeartbeat {
			if now := p.t.nanotime(); ack.stamp <= now {
				p.rtt.Store(int64(now - ack.stamp))
			}
		}
		p.contact()
	}
}

// checkAck decodes and checks an ack from p.
func (p *grpcPeer) checkAck(ack *frame) error {
	r, err := ack.decodeHeader()
	if err == nil {
		err = ack.decodeBody(r, 0)
	}
	if err != nil {
		return err
	}
	if ack.kind != kindAck || ack.clusterID != p.t.cfg.ClusterID || ack.to != p.t.id || ack.from != p.id {
		p.t.reject(RejectWrongNode)
		return fmt.Errorf("%w: %v from %d to %d cluster %d", errBadAck, ack.kind, ack.from, ack.to, ack.clusterID)
	}
	return nil
}

// snapshotLoop sends snapshots one at a time, each on a stream of its own,
// and reports every outcome.
func (p *grpcPeer) snapshotLoop() {
	bo := p.newBackoff(kindSnapshot)
	for {
		select {
		case <-p.ctx.Done():
			for {
				select {
				case e := <-p.snapQ:
					p.drop(p.m.dropClosed, 1)
					p.reportSnapshot(e.Group, false)
				default:
					p.reportSnapFailures()
					return
				}
			}
		case <-p.snapWake:
			p.reportSnapFailures()
		case e := <-p.snapQ:
			ok := p.sendSnapshot(&bo, &e)
			p.reportSnapshot(e.Group, ok)
		}
	}
}

func (p *grpcPeer) sendSnapshot(bo *laneBackoff, e *Envelope) bool {
	drop, delay := p.t.faults.state().egress(p.id)
	if delay > 0 && !p.waitFor(delay) {
		p.drop(p.m.dropClosed, 1)
		return false
	}
	if drop {
		p.drop(p.m.dropFault, 1)
		return false
	}
	if bo.left() > 0 {
		p.drop(p.m.dropUnreachable, 1)
		p.reportUnreachable()
		return false
	}
	data, err := e.Msg.Marshal()
	if err != nil || int64(len(data)) > p.t.cfg.MaxSnapshotSize {
		p.drop(p.m.dropTooLarge, 1)
		return false
	}
	// A streamed snapshot's state comes from the engine, read as it is
	// sent (snapshot.go): opened before anything is sent, so that a
	// failure leaves the receiver nothing half done.
	var state io.ReadCloser
	if token, ok := StreamToken(e.Msg.Snapshot.Data); ok {
		src, _ := p.t.handler.Load().h.(SnapshotSource)
		if src == nil {
			p.drop(p.m.dropTooLarge, 1)
			return false
		}
		if state, err = src.OpenSnapshot(e.Group, token); err != nil {
			p.t.cfg.Logger.Warn("transport: cannot open a snapshot to send", "group", e.Group, "to", p.id, "err", err)
			p.drop(p.m.dropTooLarge, 1)
			return false
		}
		defer state.Close()
	}
	// One of the node's snapshot slots (snappace.go), held until the ack.
	// Taken after the state is opened: the engine closes a stream nobody
	// opened for a while (600 ticks), and a wait for a slot must not use
	// that time up.
	if !p.takeSnapshotSlot() {
		p.drop(p.m.dropClosed, 1)
		return false
	}
	defer p.t.releaseSnapshotSlot()
	s, err := p.openStream(&snapshotStreamDesc, bo.redial)
	if err != nil {
		bo.fail()
		p.drop(p.m.dropUnreachable, 1)
		p.reportUnreachable()
		return false
	}
	defer s.close()
	f := p.newFrame(kindSnapshot)
	f.group, f.total = e.Group, uint64(len(data))
	chunk := p.t.cfg.SnapshotChunkSize
	var bytes int
	for off := 0; off < len(data); off += chunk {
		f.offset = uint64(off)
		f.chunk = data[off:min(off+chunk, len(data))]
		if !p.t.paceSnapshot(p.ctx, len(f.chunk)) {
			p.drop(p.m.dropClosed, 1)
			return false
		}
		// gRPC flow control holds the write until the receiver has room; the
		// deadline bounds that wait per chunk.
		if err := s.sendRecv(f, p.t.cfg.WriteTimeout); err != nil {
			p.failSnapshot(bo, err)
			return false
		}
		bytes += len(f.chunk)
	}
	if state != nil {
		// The state, chunk by chunk (total 0), one buffer for all: the
		// sender holds one chunk at a time.
		buf := make([]byte, chunk)
		f.total = 0
		for off := uint64(0); ; {
			n, rerr := io.ReadFull(state, buf)
			if n > 0 {
				f.offset, f.chunk = off, buf[:n]
				if !p.t.paceSnapshot(p.ctx, n) {
					p.drop(p.m.dropClosed, 1)
					return false
				}
				if err := s.sendRecv(f, p.t.cfg.WriteTimeout); err != nil {
					p.failSnapshot(bo, err)
					return false
				}
				off += uint64(n)
				bytes += n
			}
			if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
				break
			}
			if rerr != nil {
				p.t.cfg.Logger.Warn("transport: cannot read a snapshot to send", "group", e.Group, "to", p.id, "err", rerr)
				p.drop(p.m.dropTooLarge, 1)
				return false
			}
		}
	}
	if err := s.cs.CloseSend(); err != nil {
		p.failSnapshot(bo, err)
		return false
	}
	// The receiver syncs the state before it acks: allow for that, at a
	// disk's pace (32 MiB/s at the least).
	ack := &frame{}
	if err := s.recv(ack, p.t.cfg.WriteTimeout+time.Duration(bytes>>25)*time.Second); err != nil {
		p.failSnapshot(bo, err)
		return false
	}
	if err := p.checkAck(ack); err != nil {
		p.failSnapshot(bo, err)
		return false
	}
	bo.ok()
	p.sent.Add(1)
	p.m.sent.Inc()
	p.m.sentBytes.Add(float64(bytes))
	p.contact()
	return true
}

func (p *grpcPeer) failSnapshot(bo *laneBackoff, err error) {
	bo.fail()
	if isRejection(err) {
		p.drop(p.m.dropRejected, 1)
		p.t.cfg.Logger.Warn("transport: peer rejected snapshot", "to", p.id, "err", err)
		return
	}
	p.drop(p.m.dropUnreachable, 1)
	p.reportUnreachable()
}

// mustLoop sends must-deliver messages: it drains what is queued into one
// frame, writes it, waits for the peer's ack and retries (after backoff, on a
// new stream) until it gets one. Nothing is dropped while the peer exists.
func (p *grpcPeer) mustLoop() {
	var s *stream
	defer func() {
		if s != nil {
			s.close()
		}
	}()
	bo := p.newBackoff(kindMust)
	f := p.newFrame(kindMust)
	ack := &frame{}
	var pending []mustMsg
	var carry mustMsg // taken from the queue, did not fit the last frame
	haveCarry := false
	for {
		if len(pending) == 0 {
			if haveCarry {
				pending, haveCarry = append(pending, carry), false
			} else {
				select {
				case <-p.ctx.Done():
					p.drop(p.m.dropClosed, len(p.mustQ))
					return
				case m := <-p.mustQ:
					pending = append(pending, m)
				}
			}
			budget := p.t.cfg.MaxFrameSize - frameSlack - len(pending[0].payload)
		fill:
			for {
				select {
				case m := <-p.mustQ:
					if need := len(m.payload) + 2*10; need > budget {
						carry, haveCarry = m, true
						break fill
					} else {
						budget -= need
					}
					pending = append(pending, m)
				default:
					break fill
				}
			}
		}
		if p.ctx.Err() != nil {
			p.drop(p.m.dropClosed, len(pending)+len(p.mustQ)+b2i(haveCarry))
			return
		}
		st := p.t.faults.state()
		drop, delay := st.egress(p.id)
		if drop {
			// Must-deliver messages are never dropped: wait for the fault
			// to change.
			select {
			case <-st.changed:
			case <-p.ctx.Done():
			}
			continue
		}
		if delay > 0 && !p.waitFor(delay) {
			continue
		}
		if s == nil {
			if !p.waitBackoff(&bo) {
				continue
			}
			var err error
			if s, err = p.openStream(&mustStreamDesc, bo.redial); err != nil {
				s = nil
				bo.fail()
				p.reportUnreachable()
				continue
			}
		}
		f.must = pending
		f.seq++
		err := s.sendRecv(f, p.t.cfg.WriteTimeout)
		if err == nil {
			err = s.recv(ack, p.t.cfg.WriteTimeout)
		}
		if err == nil {
			if err = p.checkAck(ack); err == nil && ack.seq != f.seq {
				err = fmt.Errorf("%w: seq %d, want %d", errBadAck, ack.seq, f.seq)
			}
		}
		f.must = nil
		if err != nil {
			s.close()
			s = nil
			bo.fail()
			if isRejection(err) {
				p.t.cfg.Logger.Warn("transport: peer rejected must-deliver frame", "to", p.id, "err", err)
			} else {
				p.reportUnreachable()
			}
			continue
		}
		bo.ok()
		n := len(pending)
		p.sent.Add(uint64(n))
		p.m.sent.Add(float64(n))
		p.m.mustDelivered.Add(float64(n))
		p.contact()
		clear(pending)
		pending = pending[:0]
	}
}
