package multiraft

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"sync"

	"go.etcd.io/raft/v3/raftpb"

	"github.com/flotilla/flotilla/storage"
	"github.com/flotilla/flotilla/transport"
)

// Streamed snapshots (transport/snapshot.go). A state machine that can hand
// out its state as a stream (SnapshotOpener) never builds a snapshot whole:
// when raft asks for one for a follower, the group opens the stream at the
// applied index and puts a stream marker in the message; the transport
// reads the stream as it sends it (Host.OpenSnapshot). The receiving
// transport writes the state to a file and delivers a file marker, which
// the group restores from (openSnapshotData), syncs, and removes.

// SnapshotOpener is implemented by a state machine that can hand out its
// state as a stream instead of writing it whole (StateMachine.Snapshot).
// The engine streams only the state of a state machine that is also a
// Syncer: a received state is kept in a file until the state machine has
// made its restore durable, and an in-memory state machine never does.
// OpenSnapshot is called by the worker that holds the group, at the
// applied index; the stream may be read later, from another goroutine, and
// must show the state as of the call whatever is applied meanwhile. Its
// format is Snapshot's: Restore reads either. Its holder closes it: the
// transport once it has read it, the engine if it goes unread (expired,
// superseded by a newer snapshot for the same follower, or its group
// stopped).
type SnapshotOpener interface {
	OpenSnapshot() (io.ReadCloser, error)
}

// streamTTLTicks is how long an opened stream waits for the transport to
// read it before it is closed (a message dropped on the way never asks).
const streamTTLTicks = 600

// snapStreams holds the streams opened for snapshots in flight, by token.
// mu is a leaf.
type snapStreams struct {
	mu sync.Mutex
	m  map[uint64]snapStream
}

type snapStream struct {
	group uint64
	to    uint64 // the follower it is for; 0 until its MsgSnap leaves
	r     io.ReadCloser
	at    int64 // tick opened
}

// openStream opens group g's state as a stream and returns the snapshot
// whose Data marks it. Called by the owner.
func (g *group) openStream(op SnapshotOpener, meta raftpb.SnapshotMetadata) (raftpb.Snapshot, error) {
	r, err := op.OpenSnapshot()
	if err != nil {
		return raftpb.Snapshot{}, fmt.Errorf("group %d: open snapshot at %d: %w", g.id, meta.Index, err)
	}
	h := g.h
	token := h.newKey()
	h.streams.mu.Lock()
	if h.streams.m == nil {
		h.streams.m = make(map[uint64]snapStream)
	}
	h.streams.m[token] = snapStream{group: g.id, r: r, at: h.live.ticks.Load()}
	h.streams.mu.Unlock()
	return raftpb.Snapshot{Data: transport.StreamMarker(token), Metadata: meta}, nil
}

// OpenSnapshot implements transport.SnapshotSource: the stream of token,
// once.
func (h *Host) OpenSnapshot(group, token uint64) (io.ReadCloser, error) {
	h.streams.mu.Lock()
	s, ok := h.streams.m[token]
	delete(h.streams.m, token)
	h.streams.mu.Unlock()
	if !ok || s.group != group {
		if ok {
			s.r.Close()
		}
		return nil, fmt.Errorf("%w: no snapshot stream %x of group %d (expired?)", ErrInvalidRequest, token, group)
	}
	return s.r, nil
}

// streamSent records that the MsgSnap of stream token left for follower
// to, and closes the older streams of the group for that follower that
// the transport has not read: raft asks for a new snapshot whenever the
// last one failed (a transport that drops a snapshot never reads its
// stream), so each unread one is superseded by the next. Called by the
// owner, in the Ready cycle.
func (h *Host) streamSent(group, token, to uint64) {
	var stale []io.ReadCloser
	h.streams.mu.Lock()
	if s, ok := h.streams.m[token]; ok {
		s.to = to
		h.streams.m[token] = s
		for t, o := range h.streams.m {
			if t != token && o.group == group && o.to == to {
				stale = append(stale, o.r)
				delete(h.streams.m, t)
			}
		}
	}
	h.streams.mu.Unlock()
	for _, r := range stale {
		r.Close()
	}
}

// closeGroupStreams closes the unread streams of a group that stops.
func (h *Host) closeGroupStreams(group uint64) {
	h.closeStreamsWhere(func(s snapStream) bool { return s.group == group })
}

// expireStreams closes the streams nobody read in time. Called by tick.
func (h *Host) expireStreams() {
	now := h.live.ticks.Load()
	h.closeStreamsWhere(func(s snapStream) bool { return now-s.at > streamTTLTicks })
}

// closeStreamsWhere closes the unread streams for which drop is true,
// after unlocking (a Close waits for the stream's writer).
func (h *Host) closeStreamsWhere(drop func(snapStream) bool) {
	var stale []io.ReadCloser
	h.streams.mu.Lock()
	for t, s := range h.streams.m {
		if drop(s) {
			stale = append(stale, s.r)
			delete(h.streams.m, t)
		}
	}
	h.streams.mu.Unlock()
	for _, r := range stale {
		r.Close()
	}
}

// closeStreams closes every open stream. Called when the Host stops.
func (h *Host) closeStreams() {
	h.streams.mu.Lock()
	m := h.streams.m
	h.streams.m = nil
	h.streams.mu.Unlock()
	for _, s := range m {
		s.r.Close()
	}
}

// openSnapshotData returns a reader of a snapshot's state: the file a
// transport wrote it to (file marker), or the data itself.
func openSnapshotData(data []byte) (io.ReadCloser, string, error) {
	if path, ok := transport.SnapshotFile(data); ok {
		f, err := os.Open(path)
		if err != nil {
			return nil, "", fmt.Errorf("open received snapshot: %w", err)
		}
		return f, path, nil
	}
	if _, ok := transport.StreamToken(data); ok {
		return nil, "", fmt.Errorf("%w: a snapshot stream marker reached the state machine", ErrInvalidRequest)
	}
	return io.NopCloser(bytes.NewReader(data)), "", nil
}

// releaseSnapshot removes the file of a received snapshot (m a MsgSnap
// with a file marker) that will not be stepped: dropped, or its group
// gone. It does I/O: never with a lock held.
func releaseSnapshot(m *raftpb.Message) {
	for _, f := range appendSnapshotFile(nil, m) {
		os.Remove(f)
	}
}

// appendSnapshotFile appends the file of m's received snapshot, if m is a
// MsgSnap with a file marker.
func appendSnapshotFile(files []string, m *raftpb.Message) []string {
	if m.Type != raftpb.MsgSnap || m.Snapshot == nil {
		return files
	}
	if path, ok := transport.SnapshotFile(m.Snapshot.Data); ok {
		files = append(files, path)
	}
	return files
}

// StoredSnapshotFile returns the file of a received snapshot that group's
// raft state in store names: the group restores from it when it starts
// (until the restore is durable), so it must not be removed before. For
// clean-ups at start-up (transport.CleanSnapshotDir). An unreadable store
// answers ok with an empty path: keep what might be needed.
func StoredSnapshotFile(store storage.Store, group uint64) (path string, ok bool) {
	st, err := store.Load(group)
	if err != nil {
		return "", true
	}
	return transport.SnapshotFile(st.Snapshot.Data)
}

// restore restores sm from snap's state at its index. A state the
// transport received into a file is removed once the state machine has
// made the restore durable (a Syncer syncs it here); until then a crash
// restores it again from the file, which raft's storage names.
func restore(sm StateMachine, snap *raftpb.Snapshot) error {
	r, path, err := openSnapshotData(snap.Data)
	if err != nil {
		return err
	}
	err = sm.Restore(r, snap.Metadata.Index)
	r.Close()
	if err != nil || path == "" {
		return err
	}
	if sy, ok := sm.(Syncer); ok {
		if err := sy.Sync(); err != nil {
			return err
		}
		os.Remove(path)
	}
	return nil
}
