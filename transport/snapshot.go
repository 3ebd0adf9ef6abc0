package transport

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"

	"go.etcd.io/raft/v3/raftpb"
)

// errNoSource: a stream marker reached a transport whose handler has no
// SnapshotSource to read it from.
var errNoSource = errors.New("transport: snapshot stream marker without a SnapshotSource")

// Streamed snapshots. A snapshot's state can be far larger than memory
// should hold, so the engine does not put it in the MsgSnap: the message's
// Snapshot.Data is a stream marker (StreamMarker), and the transport asks
// the sending node's SnapshotSource for the state as a stream when it sends
// the message. It sends the message, then the stream in chunks. The
// receiving transport writes the chunks to a file in its snapshot
// directory and delivers the message with Data replaced by a file marker
// (FileMarker), which the engine restores from. So a snapshot is never
// whole in memory at either end.
//
// Transports without a snapshot directory (in-memory ones, the
// simulation's) deliver the state itself as Data instead: the engine takes
// either.

// Markers of snapshot data.
const (
	streamMarkerPrefix = "flotilla:snapshot-stream\x00"
	fileMarkerPrefix   = "flotilla:snapshot-file\x00"
)

// StreamMarker returns the Data of a MsgSnap whose state is to be streamed:
// the transport opens stream token of the SnapshotSource when it sends it.
func StreamMarker(token uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte(streamMarkerPrefix), token)
}

// StreamToken returns the token of a stream marker; ok false for other
// data.
func StreamToken(data []byte) (token uint64, ok bool) {
	if len(data) != len(streamMarkerPrefix)+8 || !bytes.HasPrefix(data, []byte(streamMarkerPrefix)) {
		return 0, false
	}
	return binary.BigEndian.Uint64(data[len(streamMarkerPrefix):]), true
}

// FileMarker returns the Data of a delivered MsgSnap whose state the
// transport wrote to the file at path. The receiver of the message owns
// the file: it removes it once it no longer needs it.
func FileMarker(path string) []byte { return append([]byte(fileMarkerPrefix), path...) }

// SnapshotFile returns the path of a file marker; ok false for other data.
func SnapshotFile(data []byte) (path string, ok bool) {
	if !bytes.HasPrefix(data, []byte(fileMarkerPrefix)) || len(data) == len(fileMarkerPrefix) {
		return "", false
	}
	return string(data[len(fileMarkerPrefix):]), true
}

// carriesMarker reports whether m is a MsgSnap whose data is a stream or
// file marker: only the snapshot lane carries those, and a received one
// only as a stream marker (the receiver makes the file marker itself).
func carriesMarker(m *raftpb.Message) bool {
	if m.Type != raftpb.MsgSnap || m.Snapshot == nil {
		return false
	}
	d := m.Snapshot.Data
	return bytes.HasPrefix(d, []byte(streamMarkerPrefix)) || bytes.HasPrefix(d, []byte(fileMarkerPrefix))
}

// SnapshotSource is implemented by a Handler whose MsgSnaps may carry a
// stream marker (the engine). OpenSnapshot returns the state of stream
// token of group; the caller reads it to the end or not, and closes it.
// Each token opens once. It is called by the sending transport's snapshot
// lane goroutine; it must not block on anything but the local disk.
type SnapshotSource interface {
	OpenSnapshot(group, token uint64) (io.ReadCloser, error)
}

// Materialize replaces a stream marker in a MsgSnap's data with the
// state itself, read from src: for transports that deliver snapshots
// whole (in memory). Other data is returned as is.
func Materialize(src Handler, group uint64, data []byte) ([]byte, error) {
	token, ok := StreamToken(data)
	if !ok {
		return data, nil
	}
	ss, ok := src.(SnapshotSource)
	if !ok {
		return nil, errNoSource
	}
	r, err := ss.OpenSnapshot(group, token)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(r)
}
