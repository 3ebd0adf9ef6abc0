package transport

// The receiving side of the peer service.
//
// The service is registered by hand: no .proto, four bidirectional streaming
// methods, one per lane, each carrying frames (codec.go). Every frame is
// checked before anything in it is used: version and kind, cluster ID,
// addressee, size limits, and every message's To. A bad frame is counted in
// flotilla_transport_messages_rejected_total{reason} and ends its stream
// with an error status whose message starts "transport: rejected"; the
// stream is never left half-read, because gRPC has read the whole frame
// before the handler looks at it. The first accepted frame of a stream shows
// that its sender is up, and ends this node's backoff toward it
// (grpc_redial.go).

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const peerServiceName = "flotilla.transport.v1.Peer"

var (
	raftStreamDesc = grpc.StreamDesc{
		StreamName: "Raft", ClientStreams: true, ServerStreams: true,
		Handler: func(srv any, ss grpc.ServerStream) error { return srv.(*GRPCTransport).serveStream(kindRaft, ss) },
	}
	heartbeatStreamDesc = grpc.StreamDesc{
		StreamName: "Heartbeat", ClientStreams: true, ServerStreams: true,
		Handler: func(srv any, ss grpc.ServerStream) error {
			return srv.(*GRPCTransport).serveStream(kindHeartbeat, ss)
		},
	}
	snapshotStreamDesc = grpc.StreamDesc{
		StreamName: "Snapshot", ClientStreams: true, ServerStreams: true,
		Handler: func(srv any, ss grpc.ServerStream) error {
			return srv.(*GRPCTransport).serveStream(kindSnapshot, ss)
		},
	}
	mustStreamDesc = grpc.StreamDesc{
		StreamName: "Must", ClientStreams: true, ServerStreams: true,
		Handler: func(srv any, ss grpc.ServerStream) error { return srv.(*GRPCTransport).serveStream(kindMust, ss) },
	}
	peerServiceDesc = grpc.ServiceDesc{
		ServiceName: peerServiceName,
		HandlerType: (*any)(nil),
		Streams:     []grpc.StreamDesc{raftStreamDesc, heartbeatStreamDesc, snapshotStreamDesc, mustStreamDesc},
		Metadata:    "hand-registered; frames in transport/codec.go",
	}
)

// reject counts a rejected frame.
func (t *GRPCTransport) reject(reason string) {
	t.rejectedTotal.Add(1)
	t.metrics.rejected.WithLabelValues(reason).Inc()
}

// rejectStatus counts a rejected frame and returns the status that ends its
// stream.
func (t *GRPCTransport) rejectStatus(reason string, code codes.Code, format string, args ...any) error {
	t.reject(reason)
	return status.Errorf(code, "%s: %s: %s", ErrRejected.Error(), reason, fmt.Sprintf(format, args...))
}

// checkFrame checks the header of a received frame and decodes its body,
// returning a rejection status for a bad one.
func (t *GRPCTransport) checkFrame(lane frameKind, f *frame) error {
	r, err := f.decodeHeader()
	if err != nil {
		return t.rejectStatus(RejectMalformed, codes.InvalidArgument, "bad header")
	}
	if f.clusterID != t.cfg.ClusterID {
		return t.rejectStatus(RejectClusterID, codes.FailedPrecondition,
			"cluster %d, this node is in cluster %d", f.clusterID, t.cfg.ClusterID)
	}
	if t.isRefused(f.from) {
		return t.rejectStatus(RejectRemoved, codes.PermissionDenied, "node %d was removed from the cluster", f.from)
	}
	if f.to != t.id {
		return t.rejectStatus(RejectWrongNode, codes.FailedPrecondition,
			"frame for node %d reached node %d", f.to, t.id)
	}
	if f.kind != lane {
		return t.rejectStatus(RejectMalformed, codes.InvalidArgument, "%v frame on the %v stream", f.kind, lane)
	}
	if err := f.decodeBody(r, t.cfg.MaxMessageSize); err != nil {
		if errors.Is(err, errOversize) {
			return t.rejectStatus(RejectOversize, codes.ResourceExhausted,
				"message over %d bytes", t.cfg.MaxMessageSize)
		}
		return t.rejectStatus(RejectMalformed, codes.InvalidArgument, "bad %v body", f.kind)
	}
	for i := range f.envs {
		if to := f.envs[i].Msg.To; to != t.id {
			return t.rejectStatus(RejectWrongNode, codes.FailedPrecondition,
				"message for node %d reached node %d", to, t.id)
		}
		if (f.envs[i].Msg.Type == raftpb.MsgSnap) != (lane == kindSnapshot) {
			return t.rejectStatus(RejectMalformed, codes.InvalidArgument,
				"%v on the %v stream", f.envs[i].Msg.Type, lane)
		}
	}
	return nil
}

// checkSender refuses a raft message that claims another sender than the
// node whose stream carries it: a node speaks only for itself (with TLS,
// CheckPeer tied the stream to the sender's certificate, and this ties
// every message to the stream).
func (t *GRPCTransport) checkSender(m *raftpb.Message, from uint64) error {
	if m.From != from {
		return t.rejectStatus(RejectIdentity, codes.PermissionDenied, "node %d sent a message from node %d", from, m.From)
	}
	return nil
}

// blackHole holds a stream whose sender is ingress-blocked: nothing is read
// or answered until the sender gives up (its deadline cancels the stream),
// the transport closes, or the fault is lifted.
func (t *GRPCTransport) blackHole(ss grpc.ServerStream, from uint64) error {
	for {
		st := t.faults.state()
		if !st.blocksIngress(from) {
			return status.Error(codes.Unavailable, "transport: ingress fault lifted")
		}
		select {
		case <-ss.Context().Done():
			return status.FromContextError(ss.Context().Err()).Err()
		case <-t.ctx.Done():
			return status.Error(codes.Unavailable, ErrClosed.Error())
		case <-st.changed:
		}
	}
}

// serveStream receives the frames of one stream of lane.
func (t *GRPCTransport) serveStream(lane frameKind, ss grpc.ServerStream) error {
	f := &frame{}
	var from uint64
	var received interface{ Inc() }
	var snap snapAssembly
	defer snap.discard() // a streamed snapshot's partial state, if the stream fails
	var taken uint64     // messages delivered on this stream, for acks
	var pacer *ackPacer
	announced := false    // peerUp called
	var lastAck time.Time // of the heartbeat lane's last ack
	if lane == kindRaft {
		pacer = t.startAckPacer(ss)
		defer pacer.stop()
	}
	for {
		if err := ss.RecvMsg(f); err != nil {
			if err == io.EOF {
				if lane == kindSnapshot && snap.data != nil {
					// The end of a streamed snapshot's state.
					return t.finishStreamed(ss, &snap, from)
				}
				if lane == kindSnapshot && snap.started {
					return t.rejectStatus(RejectMalformed, codes.InvalidArgument,
						"snapshot ended after %d of %d bytes", len(snap.buf), snap.total)
				}
				return nil
			}
			if status.Code(err) == codes.ResourceExhausted {
				return t.rejectStatus(RejectOversize, codes.ResourceExhausted, "frame over %d bytes", t.cfg.maxRecvSize())
			}
			return err
		}
		if err := t.checkFrame(lane, f); err != nil {
			return err
		}
		if from == 0 {
			if check := t.cfg.CheckPeer; check != nil {
				if err := check(ss.Context(), f.from); err != nil {
					return t.rejectStatus(RejectIdentity, codes.PermissionDenied, "%v", err)
				}
			}
			from = f.from
			received = t.metrics.receivedBatches.WithLabelValues(strconv.FormatUint(from, 10), lane.String())
		} else if f.from != from {
			return t.rejectStatus(RejectMalformed, codes.InvalidArgument, "sender changed from %d to %d", from, f.from)
		}
		if t.faults.state().blocksIngress(from) {
			return t.blackHole(ss, from)
		}
		hs := t.handler.Load()
		if hs == nil {
			return status.Error(codes.Unavailable, "transport: not started")
		}
		if !announced {
			// Proof that the peer is up: stop backing off toward it.
			announced = true
			t.peerUp(from)
		}
		received.Inc()
		switch lane {
		case kindRaft, kindHeartbeat:
			for i := range f.envs {
				if carriesMarker(&f.envs[i].Msg) {
					return t.rejectStatus(RejectMalformed, codes.InvalidArgument, "a snapshot marker outside the snapshot lane")
				}
				if err := t.checkSender(&f.envs[i].Msg, from); err != nil {
					return err
				}
			}
			ping := len(f.envs) == 0
			taken += uint64(len(f.envs))
			if !t.deliver(hs, from, f.envs) {
				return status.Error(codes.Unavailable, ErrClosed.Error())
			}
			f.envs = nil
			switch {
			case pacer != nil:
				if err := pacer.note(from, f.seq, f.stamp, taken); err != nil {
					return err
				}
			case ping && time.Since(lastAck) < t.pingAckInterval():
				// Not every ping needs its ack (pingAckInterval).
			default:
				if err := t.sendAck(ss, from, f.seq, f.stamp, taken); err != nil {
					return err
				}
				lastAck = time.Now()
			}
		case kindMust:
			if hs.must == nil {
				return t.rejectStatus(RejectNoMust, codes.Unimplemented, "node %d takes no must-deliver messages", t.id)
			}
			if !t.gate.enter() {
				return status.Error(codes.Unavailable, ErrClosed.Error())
			}
			for _, m := range f.must {
				hs.must.HandleMust(from, m.group, m.payload)
			}
			t.gate.leave()
			f.must = nil
			if err := t.sendAck(ss, from, f.seq, 0, 0); err != nil {
				return err
			}
		case kindSnapshot:
			if snap.data != nil {
				// The state of a streamed snapshot, after its message.
				if err := t.addData(&snap, f); err != nil {
					snap.discard()
					return err
				}
				continue
			}
			done, err := t.addChunk(&snap, f)
			if err != nil {
				return err
			}
			if !done {
				continue
			}
			env := []Envelope{{Group: snap.group}}
			if err := decodeSnapshotMessage(&env[0].Msg, snap.buf, t.id); err != nil {
				if errors.Is(err, errMalformed) {
					return t.rejectStatus(RejectMalformed, codes.InvalidArgument, "bad snapshot message: %v", err)
				}
				return t.rejectStatus(RejectWrongNode, codes.FailedPrecondition, "%v", err)
			}
			if err := t.checkSender(&env[0].Msg, from); err != nil {
				return err
			}
			group := snap.group
			snap = snapAssembly{}
			if _, streamed := StreamToken(env[0].Msg.Snapshot.Data); streamed {
				// Its state follows: into a file (or memory), then the
				// message goes up with it (finishStreamed).
				if err := t.startStreamed(&snap, group, env[0]); err != nil {
					return err
				}
				continue
			}
			if !t.deliver(hs, from, env) {
				return status.Error(codes.Unavailable, ErrClosed.Error())
			}
			if err := t.sendAck(ss, from, 1, 0, 0); err != nil {
				return err
			}
		}
	}
}

// decodeSnapshotMessage decodes into m the MsgSnap of an assembled
// snapshot sent to node id. A message that does not decode, or whose data
// is a file marker, is errMalformed: file markers are made by the
// receiving transport alone (for a streamed snapshot's state, which it
// wrote), and the engine reads the file a marker names and then removes
// it, so one from the wire would let a peer have any file of this node
// read as a snapshot and deleted. A message of another type or for
// another node is another error.
func decodeSnapshotMessage(m *raftpb.Message, buf []byte, id uint64) error {
	if !peerMessage(buf) {
		return fmt.Errorf("%w: not a message from a peer", errMalformed)
	}
	if err := m.Unmarshal(buf); err != nil {
		return fmt.Errorf("%w: %v", errMalformed, err)
	}
	if m.To != id || m.Type != raftpb.MsgSnap || m.Snapshot == nil {
		return fmt.Errorf("%v for node %d reached node %d", m.Type, m.To, id)
	}
	if _, file := SnapshotFile(m.Snapshot.Data); file {
		return fmt.Errorf("%w: a snapshot file marker from the wire", errMalformed)
	}
	return nil
}

// deliver hands envs to the Handler unless the transport is closing.
func (t *GRPCTransport) deliver(hs *handlers, from uint64, envs []Envelope) bool {
	if !t.gate.enter() {
		return false
	}
	defer t.gate.leave()
	hs.h.HandleBatch(from, envs) // an empty heartbeat frame is a ping
	return true
}

// maxPingAckInterval bounds the wait of a ping's ack; see pingAckInterval.
const maxPingAckInterval = 250 * time.Millisecond

// pingAckInterval is how long the heartbeat lane may leave pings (empty
// frames) unacked: acks are cumulative, so the next ack stands for the pings
// before it, and a stream's deadline for acks is WriteTimeout, of which
// this is at most an eighth. Heartbeat batches are acked each, and their
// stamps measure the RTT.
//
// Why: every node pings every peer it has no heartbeat for (then each
// tick; every PingTicks since), so on an idle node acking
// each ping was a third of the socket writes and of the goroutine wakeups
// (the ack's write here, its read and ackLoop at the sender; BENCHMARKS.md,
// "The idle floor").
func (t *GRPCTransport) pingAckInterval() time.Duration {
	return min(maxPingAckInterval, t.cfg.WriteTimeout/8)
}

func (t *GRPCTransport) sendAck(ss grpc.ServerStream, to, seq, stamp, count uint64) error {
	ack := frame{kind: kindAck, clusterID: t.cfg.ClusterID, from: t.id, to: to, seq: seq, stamp: stamp, count: count}
	t.acksSent.Add(1)
	return ss.SendMsg(&ack)
}

// snapAssembly collects the chunks of one snapshot: its message, then for
// a streamed snapshot its state (data set). Owned by its stream's handler.
type snapAssembly struct {
	started bool
	group   uint64
	total   uint64
	buf     []byte

	// A streamed snapshot's state: written to data (a file in the
	// snapshot directory, path; or memory), written bytes so far.
	env     Envelope
	data    io.Writer
	file    *os.File
	path    string
	mem     *bytes.Buffer
	written uint64
}

// discard drops a streamed snapshot's partial state.
func (a *snapAssembly) discard() {
	if a.file != nil {
		a.file.Close()
		os.Remove(a.path)
		a.file = nil
	}
	a.data = nil
}

// snapshotSuffix marks the files of snapshots still being received.
const snapshotSuffix = ".recv"

// startStreamed begins receiving the state of env's streamed snapshot.
func (t *GRPCTransport) startStreamed(a *snapAssembly, group uint64, env Envelope) error {
	*a = snapAssembly{started: true, group: group, env: env}
	if t.cfg.SnapshotDir == "" {
		a.mem = &bytes.Buffer{}
		a.data = a.mem
		return nil
	}
	f, err := os.CreateTemp(t.cfg.SnapshotDir, fmt.Sprintf("g%d-*%s", group, snapshotSuffix))
	if err != nil {
		t.cfg.Logger.Warn("transport: cannot receive a snapshot", "group", group, "err", err)
		return status.Errorf(codes.Unavailable, "transport: snapshot file: %v", err)
	}
	a.file, a.path = f, f.Name()
	a.data = bufio.NewWriterSize(f, 1<<20)
	return nil
}

// addData writes one chunk of a streamed snapshot's state.
func (t *GRPCTransport) addData(a *snapAssembly, f *frame) error {
	if f.group != a.group || f.total != 0 || f.offset != a.written || len(f.chunk) == 0 {
		return t.rejectStatus(RejectMalformed, codes.InvalidArgument,
			"snapshot data at %d (+%d), have %d", f.offset, len(f.chunk), a.written)
	}
	limit := uint64(maxSnapshotData)
	if a.mem != nil {
		limit = uint64(t.cfg.MaxSnapshotSize) // held in memory
	}
	if a.written+uint64(len(f.chunk)) > limit {
		return t.rejectStatus(RejectOversize, codes.ResourceExhausted, "snapshot data over %d bytes", limit)
	}
	if _, err := a.data.Write(f.chunk); err != nil {
		return status.Errorf(codes.Unavailable, "transport: write snapshot: %v", err)
	}
	before := a.written
	a.written += uint64(len(f.chunk))
	if a.file != nil && before/writeBackEvery != a.written/writeBackEvery {
		// Start writing the file back as it grows, without waiting, so
		// that the sync before the ack has little left to do.
		if err := a.data.(*bufio.Writer).Flush(); err != nil {
			return status.Errorf(codes.Unavailable, "transport: write snapshot: %v", err)
		}
		startWriteBack(a.file)
	}
	return nil
}

// writeBackEvery: the writeback of a streamed snapshot's file is started
// each time this many more bytes have been received.
const writeBackEvery = 32 << 20

// maxSnapshotData bounds a streamed snapshot's state: 1 TiB.
const maxSnapshotData = 1 << 40

// finishStreamed makes a streamed snapshot's state durable and delivers its
// message with it (a file marker, or the state itself), then acks.
func (t *GRPCTransport) finishStreamed(ss grpc.ServerStream, a *snapAssembly, from uint64) error {
	env := []Envelope{a.env}
	snap := *env[0].Msg.Snapshot
	if a.mem != nil {
		snap.Data = a.mem.Bytes()
	} else {
		err := a.data.(*bufio.Writer).Flush()
		if err == nil {
			err = a.file.Sync()
		}
		if cerr := a.file.Close(); err == nil {
			err = cerr
		}
		a.file = nil
		final := strings.TrimSuffix(a.path, snapshotSuffix)
		if err == nil {
			err = os.Rename(a.path, final)
		}
		if err == nil {
			// The engine stores the file's name in raft's storage: the
			// rename must survive a power loss too.
			err = syncDir(t.cfg.SnapshotDir)
		}
		if err != nil {
			os.Remove(a.path)
			return status.Errorf(codes.Unavailable, "transport: store snapshot: %v", err)
		}
		snap.Data = FileMarker(final)
	}
	env[0].Msg.Snapshot = &snap
	*a = snapAssembly{}
	hs := t.handler.Load()
	if hs == nil || !t.deliver(hs, from, env) {
		if path, ok := SnapshotFile(snap.Data); ok {
			os.Remove(path)
		}
		return status.Error(codes.Unavailable, ErrClosed.Error())
	}
	return t.sendAck(ss, from, 1, 0, 0)
}

// syncDir makes the entries of directory dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// CleanSnapshotDir removes from dir the files of snapshots whose receipt a
// stop cut short, and the delivered ones for which keep (given the file's
// group and path) is false: keep those that a group's stored raft snapshot
// names, which the group restores from (and then removes) when it starts,
// however late that is. Call it before the transport serves.
func CleanSnapshotDir(dir string, keep func(group uint64, path string) bool) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		path := filepath.Join(dir, e.Name())
		var group uint64
		if !strings.HasSuffix(e.Name(), snapshotSuffix) {
			if _, err := fmt.Sscanf(e.Name(), "g%d-", &group); err == nil && keep(group, path) {
				continue
			}
		}
		if err := os.Remove(path); err != nil {
			return err
		}
	}
	return nil
}

// snapshotPrealloc bounds what a snapshot message's first chunk makes
// the receiver allocate: the buffer grows past it only as chunks arrive,
// so a peer that claims a total of a gigabyte and sends a byte costs a
// megabyte, not the total. Snapshot messages are small (the state streams
// after them), so this is rarely outgrown.
const snapshotPrealloc = 1 << 20

// addChunk appends the chunk in f; done when the snapshot is complete.
func (t *GRPCTransport) addChunk(a *snapAssembly, f *frame) (done bool, err error) {
	if !a.started {
		if f.offset != 0 || f.total == 0 {
			return false, t.rejectStatus(RejectMalformed, codes.InvalidArgument, "snapshot starts at %d of %d", f.offset, f.total)
		}
		if f.total > uint64(t.cfg.MaxSnapshotSize) {
			return false, t.rejectStatus(RejectOversize, codes.ResourceExhausted,
				"snapshot of %d bytes, limit %d", f.total, t.cfg.MaxSnapshotSize)
		}
		*a = snapAssembly{started: true, group: f.group, total: f.total,
			buf: make([]byte, 0, min(f.total, snapshotPrealloc))}
	}
	if f.group != a.group || f.total != a.total || f.offset != uint64(len(a.buf)) ||
		uint64(len(f.chunk)) > a.total-uint64(len(a.buf)) || len(f.chunk) == 0 {
		return false, t.rejectStatus(RejectMalformed, codes.InvalidArgument,
			"snapshot chunk at %d (+%d), have %d of %d", f.offset, len(f.chunk), len(a.buf), a.total)
	}
	a.buf = append(a.buf, f.chunk...)
	return uint64(len(a.buf)) == a.total, nil
}
