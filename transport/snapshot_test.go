package transport

import (
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"

	"github.com/flotilla/flotilla/internal/testutil"
)

// sourceRecorder is a recorder that is also a SnapshotSource: stream token
// t of group g is size bytes of a pattern, generated as it is read.
type sourceRecorder struct {
	*recorder
	size   int64
	opened atomic.Int32
}

func (s *sourceRecorder) OpenSnapshot(group, token uint64) (io.ReadCloser, error) {
	if token != 77 {
		return nil, fmt.Errorf("no stream %d", token)
	}
	s.opened.Add(1)
	return io.NopCloser(io.LimitReader(&pattern{}, s.size)), nil
}

// pattern reads an endless, position-dependent byte pattern.
type pattern struct{ off int64 }

func (p *pattern) Read(b []byte) (int, error) {
	for i := range b {
		b[i] = byte(p.off*7 + p.off>>11)
		p.off++
	}
	return len(b), nil
}

// TestStreamedSnapshot: a snapshot whose message carries a stream marker is
// sent with its state read from the sender's SnapshotSource as it goes, and
// the receiver writes the state to a file in its snapshot directory and
// delivers the message with a file marker naming it, intact. Memory stays
// flat at both ends: 256 MiB go through while the heap of the whole process
// (both transports) grows by less than 48 MiB.
func TestStreamedSnapshot(t *testing.T) {
	const size = 256 << 20
	dir := t.TempDir()
	ca, cb := testConfig(1, "127.0.0.1"), testConfig(2, "127.0.0.1")
	cb.SnapshotDir = dir
	a, err := NewGRPC(ca)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	src := &sourceRecorder{recorder: newRecorder(), size: size}
	if err := a.Start(src); err != nil {
		t.Fatal(err)
	}
	b, rb := newNode(t, cb, true)
	mesh(a, b)

	snap := raftpb.Message{Type: raftpb.MsgSnap, From: 1, To: 2, Term: 3,
		Snapshot: &raftpb.Snapshot{Data: StreamMarker(77), Metadata: raftpb.SnapshotMetadata{Index: 10, Term: 3}}}
	grew := testutil.HeapGrowth(func() {
		a.Send([]Envelope{{Group: 42, Msg: snap}})
		if !rb.until(time.Minute, func() bool { return len(rb.mu.batches) == 1 }) {
			t.Fatal("streamed snapshot not delivered")
		}
	})
	got := rb.messagesLocked()[0]
	path, ok := SnapshotFile(got.Msg.Snapshot.Data)
	if !ok || got.Group != 42 || got.Msg.Snapshot.Metadata.Index != 10 {
		t.Fatalf("delivered %v with data %q", got.Msg.Type, got.Msg.Snapshot.Data)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want, have := crc32.NewIEEE(), crc32.NewIEEE()
	if n, err := io.Copy(have, f); err != nil || n != size {
		t.Fatalf("the file holds %d bytes (%v), want %d", n, err, size)
	}
	io.Copy(want, io.LimitReader(&pattern{}, size))
	if want.Sum32() != have.Sum32() {
		t.Fatal("the received state differs from the sent one")
	}
	if src.opened.Load() != 1 {
		t.Fatalf("the stream was opened %d times", src.opened.Load())
	}
	if grew > 48<<20 {
		t.Fatalf("the heap grew by %d MiB to send and receive %d MiB: the snapshot was held whole", grew>>20, size>>20)
	} else {
		t.Logf("%d MiB streamed; the heap grew by at most %d MiB", size>>20, max(grew, 0)>>20)
	}
	// A stream that cannot be opened: the snapshot fails, nothing is left.
	bad := snap
	bad.Snapshot = &raftpb.Snapshot{Data: StreamMarker(78), Metadata: raftpb.SnapshotMetadata{Index: 11, Term: 3}}
	a.Send([]Envelope{{Group: 43, Msg: bad}})
	if !src.until(wait, func() bool { return len(src.mu.snaps) == 2 }) || src.mu.snaps[1] != (snapReport{43, 2, false}) {
		t.Fatalf("snapshot reports %+v, want a failure for group 43", src.mu.snaps)
	}
	// A peer cannot name a file to the engine (which would open it, and
	// remove it): a file marker from a peer is refused, delivered never.
	victim := filepath.Join(t.TempDir(), "precious")
	os.WriteFile(victim, []byte("not a snapshot"), 0o644)
	forged := snap
	forged.Snapshot = &raftpb.Snapshot{Data: FileMarker(victim), Metadata: raftpb.SnapshotMetadata{Index: 12, Term: 3}}
	a.Send([]Envelope{{Group: 44, Msg: forged}})
	if !src.until(wait, func() bool { return len(src.mu.snaps) == 3 }) || src.mu.snaps[2] != (snapReport{44, 2, false}) {
		t.Fatalf("snapshot reports %+v, want a failure for group 44", src.mu.snaps)
	}
	if n := len(rb.messagesLocked()); n != 1 {
		t.Fatalf("node 2 got %d messages, want only the first snapshot", n)
	}
	if !carriesMarker(&forged) || carriesMarker(&raftpb.Message{Type: raftpb.MsgApp}) {
		t.Fatal("carriesMarker")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("snapshot dir holds %d files, want the one delivered", len(entries))
	}
	// At a start, files of receipts a stop cut short and delivered ones
	// no group needs are removed; those a group still needs stay.
	os.WriteFile(dir+"/g9-1"+snapshotSuffix, []byte("partial"), 0o644)
	os.WriteFile(dir+"/g7-2", []byte("stale"), 0o644)
	var asked []uint64
	if err := CleanSnapshotDir(dir, func(group uint64, p string) bool {
		asked = append(asked, group)
		return p == path
	}); err != nil {
		t.Fatal(err)
	}
	if entries, _ = os.ReadDir(dir); len(entries) != 1 || dir+"/"+entries[0].Name() != path {
		t.Fatalf("after the clean-up: %v (asked about groups %v)", entries, asked)
	}
}
