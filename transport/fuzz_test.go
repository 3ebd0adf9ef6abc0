package transport

// Fuzz targets of what a node decodes from its peers: frames (raft and
// heartbeat batches, must-deliver batches, snapshot chunks, acks), the
// message of an assembled snapshot, and the markers in a snapshot's data.
// Each asserts that the decoder never panics, refuses a count or length
// its input cannot hold before allocating for it, and agrees with the
// encoder both ways. go test -run '^$' -fuzz '^FuzzFrame$' ./transport
// runs one; tools/fuzz.sh runs them all.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"go.etcd.io/raft/v3/raftpb"

	"github.com/flotilla/flotilla/internal/testutil"
)

// fuzzMaxMsg is the message size limit of decoded frames.
const fuzzMaxMsg = 64 << 10

// encodeFrame returns f's wire form, as the codec's Marshal writes it.
func encodeFrame(t testing.TB, f *frame) []byte {
	t.Helper()
	f.sizes = f.sizes[:0]
	for i := range f.envs {
		f.sizes = append(f.sizes, f.envs[i].Msg.Size())
	}
	b := make([]byte, f.encodedSize())
	if err := f.encodeTo(b); err != nil {
		t.Fatalf("encode %+v: %v", f, err)
	}
	return b
}

// decodeFrame decodes raw as a receiver does.
func decodeFrame(raw []byte) (*frame, error) {
	f := &frame{raw: raw}
	r, err := f.decodeHeader()
	if err == nil {
		err = f.decodeBody(r, fuzzMaxMsg)
	}
	return f, err
}

// sameFrame reports whether two decoded frames carry the same.
func sameFrame(a, b *frame) bool {
	return a.kind == b.kind && a.clusterID == b.clusterID && a.from == b.from && a.to == b.to &&
		a.seq == b.seq && a.stamp == b.stamp && a.count == b.count && testutil.Same(a.envs, b.envs) &&
		testutil.Same(a.must, b.must) && a.group == b.group && a.total == b.total && a.offset == b.offset &&
		bytes.Equal(a.chunk, b.chunk)
}

// seedFrames returns a frame of every kind, as peers send them.
func seedFrames() []*frame {
	snap := raftpb.Message{Type: raftpb.MsgSnap, From: 1, To: 2, Term: 3,
		Snapshot: &raftpb.Snapshot{Data: StreamMarker(9), Metadata: raftpb.SnapshotMetadata{Index: 10, Term: 3, ConfState: raftpb.ConfState{Voters: []uint64{1, 2, 3}}}}}
	data, _ := snap.Marshal()
	return []*frame{
		{kind: kindRaft, clusterID: 7, from: 1, to: 2, seq: 3, stamp: 99,
			envs: []Envelope{{Group: 1, Msg: hb(1, 2, 5)}, {Group: 1 << 40, Msg: app(1, 2, 9, []byte("hello"))}}},
		{kind: kindHeartbeat, clusterID: 7, from: 1, to: 2, seq: 4, stamp: 1 << 50,
			envs: []Envelope{{Group: 3, Msg: hb(1, 2, 5)}, {Group: 4, Msg: raftpb.Message{Type: raftpb.MsgHeartbeatResp, From: 2, To: 1, Term: 2}}}},
		{kind: kindHeartbeat, clusterID: 7, from: 1, to: 2, seq: 5}, // a ping
		{kind: kindMust, clusterID: 7, from: 1, to: 2, seq: 4,
			must: []mustMsg{{group: 3, payload: []byte("abc")}, {group: 4}, {group: 5, payload: []byte("de")}}},
		{kind: kindSnapshot, clusterID: 7, from: 1, to: 2, group: 6, total: uint64(len(data)), chunk: data},
		{kind: kindSnapshot, clusterID: 7, from: 1, to: 2, group: 6, offset: 1 << 20, chunk: []byte("state")},
		{kind: kindAck, clusterID: 7, from: 2, to: 1, seq: 3, stamp: 99, count: 2},
	}
}

// frameFrom builds a frame of any kind from fuzz input.
func frameFrom(in *testutil.FuzzInput) *frame {
	f := &frame{kind: frameKind(in.Small(int(kindAck)) + 1), clusterID: in.Uint64(), from: in.Uint64(), to: in.Uint64()}
	switch f.kind {
	case kindRaft, kindHeartbeat:
		f.seq, f.stamp = in.Uint64(), in.Uint64()
		for range in.Small(4) {
			m := raftpb.Message{Type: raftpb.MessageType(in.Small(24)), From: in.Uint64(), To: in.Uint64(),
				Term: in.Uint64(), Index: in.Uint64(), Commit: in.Uint64(), Reject: in.Bool(), Context: in.Bytes(16)}
			for range in.Small(3) {
				m.Entries = append(m.Entries, raftpb.Entry{Term: in.Uint64(), Index: in.Uint64(), Data: in.Bytes(64)})
			}
			f.envs = append(f.envs, Envelope{Group: in.Uint64(), Msg: m})
		}
	case kindMust:
		f.seq = in.Uint64()
		for range in.Small(4) {
			f.must = append(f.must, mustMsg{group: in.Uint64(), payload: in.Bytes(64)})
		}
	case kindSnapshot:
		f.group, f.total, f.offset, f.chunk = in.Uint64(), in.Uint64(), in.Uint64(), in.Bytes(255)
	case kindAck:
		f.seq, f.stamp, f.count = in.Uint64(), in.Uint64(), in.Uint64()
	}
	return f
}

// FuzzFrame: the decoding of every frame a peer sends (raft and heartbeat
// batches, must-deliver batches, snapshot chunks) and of every ack.
func FuzzFrame(f *testing.F) {
	for _, fr := range seedFrames() {
		testutil.AddSeeds(f, encodeFrame(f, fr))
	}
	// Counts the frame cannot hold: many empty messages, each of which
	// would cost the receiver a raftpb.Message.
	many := &frame{kind: kindRaft, clusterID: 7, from: 1, to: 2}
	wire := encodeFrame(f, many)
	wire = append(wire[:len(wire)-1], 0xc0, 0x3e) // 8000 messages
	f.Add(append(wire, make([]byte, 16000)...))
	// A message with 3000 empty Responses, each of which would cost the
	// receiver a raftpb.Message.
	resp := &frame{kind: kindRaft, clusterID: 7, from: 1, to: 2, envs: []Envelope{{Group: 1, Msg: hb(1, 2, 5)}}}
	wire = encodeFrame(f, resp)
	msg := append(wire[len(wire)-resp.sizes[0]:], bytes.Repeat([]byte{responsesField<<3 | 2, 0}, 3000)...)
	head := len(wire) - resp.sizes[0] - 1 // up to the message's length (one byte)
	wire = binary.AppendUvarint(wire[:head:head], uint64(len(msg)))
	f.Add(append(wire, msg...))
	f.Fuzz(func(t *testing.T, raw []byte) {
		var in *frame
		var err error
		testutil.CheckAlloc(t, "frame decode", testutil.DecodeAllocLimit(len(raw)), func() { in, err = decodeFrame(raw) })
		switch {
		case err == nil:
			out, err := decodeFrame(encodeFrame(t, in))
			if err != nil || !sameFrame(in, out) {
				t.Fatalf("%x decodes to %+v, which encodes to bytes that decode to %+v, %v", raw, in, out, err)
			}
			for i := range in.envs {
				if n := len(in.envs[i].Msg.Responses); n > 0 {
					t.Fatalf("a peer's message carries %d responses", n)
				}
			}
		case !errors.Is(err, errMalformed) && !errors.Is(err, errOversize):
			t.Fatalf("decode error %v, want errMalformed or errOversize", err)
		}
		built := frameFrom(testutil.NewFuzzInput(raw))
		if out, err := decodeFrame(encodeFrame(t, built)); err != nil {
			if !errors.Is(err, errOversize) {
				t.Fatalf("%+v does not come back: %v", built, err)
			}
		} else if !sameFrame(built, out) {
			t.Fatalf("%+v comes back as %+v", built, out)
		}
	})
}

// FuzzSnapshotMessage: the decoding of an assembled snapshot's message.
// One that is accepted is a MsgSnap for this node whose data is never a
// file marker (see decodeSnapshotMessage).
func FuzzSnapshotMessage(f *testing.F) {
	for _, data := range [][]byte{[]byte("state"), StreamMarker(4), FileMarker("/etc/passwd"), nil} {
		m := raftpb.Message{Type: raftpb.MsgSnap, From: 1, To: 2, Term: 3,
			Snapshot: &raftpb.Snapshot{Data: data, Metadata: raftpb.SnapshotMetadata{Index: 10, Term: 3}}}
		b, err := m.Marshal()
		if err != nil {
			f.Fatal(err)
		}
		testutil.AddSeeds(f, b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var m raftpb.Message
		if err := decodeSnapshotMessage(&m, b, 2); err != nil {
			return
		}
		if m.Type != raftpb.MsgSnap || m.To != 2 || m.Snapshot == nil {
			t.Fatalf("accepted %v to %d", m.Type, m.To)
		}
		if path, file := SnapshotFile(m.Snapshot.Data); file {
			t.Fatalf("accepted a snapshot that names file %q", path)
		}
		enc, err := m.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		var back raftpb.Message
		if err := decodeSnapshotMessage(&back, enc, 2); err != nil || !testutil.Same(back, m) {
			t.Fatalf("%+v comes back as %+v, %v", m, back, err)
		}
	})
}

// FuzzSnapshotMarker: the markers a snapshot's data may be. No data is
// both; each marker is exactly what its encoder writes.
func FuzzSnapshotMarker(f *testing.F) {
	testutil.AddSeeds(f, StreamMarker(0), StreamMarker(1<<63), FileMarker("/data/snap/g1-1"), FileMarker("x"), []byte("FKV3"))
	f.Fuzz(func(t *testing.T, data []byte) {
		token, stream := StreamToken(data)
		path, file := SnapshotFile(data)
		if stream && file {
			t.Fatalf("%q is both a stream marker and a file marker", data)
		}
		if stream && !bytes.Equal(StreamMarker(token), data) {
			t.Fatalf("%q reads as stream %d, whose marker is %q", data, token, StreamMarker(token))
		}
		if file && (path == "" || !bytes.Equal(FileMarker(path), data)) {
			t.Fatalf("%q reads as file %q, whose marker is %q", data, path, FileMarker(path))
		}
		in := testutil.NewFuzzInput(data)
		tok := in.Uint64()
		if got, ok := StreamToken(StreamMarker(tok)); !ok || got != tok {
			t.Fatalf("stream %d comes back as %d, %v", tok, got, ok)
		}
		if p := string(in.Bytes(64)); p != "" {
			if got, ok := SnapshotFile(FileMarker(p)); !ok || got != p {
				t.Fatalf("file %q comes back as %q, %v", p, got, ok)
			}
		}
	})
}

// FuzzSnapshotChunks: the assembly of a snapshot message from the chunk
// frames a peer sends (addChunk). Whatever totals and offsets the frames
// claim, the receiver allocates in proportion to the bytes that arrived
// (a claimed total of a gigabyte does not make it allocate one), never
// takes a chunk out of place, and completes exactly the message sent.
func FuzzSnapshotChunks(f *testing.F) {
	for _, chunks := range [][]string{{"message"}, {"mes", "sa", "ge"}, {"me", "ss"}} {
		var b []byte
		total, offset := 0, 0
		for _, c := range chunks {
			total += len(c)
		}
		for _, c := range chunks {
			b = binary.BigEndian.AppendUint64(b, 3) // group
			b = binary.BigEndian.AppendUint64(b, uint64(total))
			b = binary.BigEndian.AppendUint64(b, uint64(offset))
			b = append(b, byte(len(c)))
			b = append(b, c...)
			offset += len(c)
		}
		testutil.AddSeeds(f, b)
	}
	// A first chunk that claims a total of a gigabyte.
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0x40, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 'x'})
	tr, _ := newNode(f, testConfig(1, "127.0.0.1"), false)
	f.Fuzz(func(t *testing.T, b []byte) {
		in := testutil.NewFuzzInput(b)
		var a snapAssembly
		var sent []byte
		for i := 0; ; i++ {
			fr := &frame{kind: kindSnapshot, group: in.Uint64() % 4, total: in.Uint64(), offset: in.Uint64(), chunk: in.Bytes(255)}
			if fr.chunk == nil && i > 0 {
				return
			}
			var done bool
			var err error
			before := a // CheckAlloc may run the chunk twice: from the same state
			testutil.CheckAlloc(t, "addChunk", testutil.DecodeAllocLimit(len(b))+snapshotPrealloc, func() {
				a = before
				done, err = tr.addChunk(&a, fr)
			})
			if err != nil {
				return // the stream ends
			}
			if fr.offset != uint64(len(sent)) {
				t.Fatalf("chunk at %d taken after %d bytes", fr.offset, len(sent))
			}
			sent = append(sent, fr.chunk...)
			if !bytes.Equal(a.buf, sent) || uint64(len(sent)) > a.total {
				t.Fatalf("assembled %q of %d, sent %q", a.buf, a.total, sent)
			}
			if done != (uint64(len(sent)) == a.total) {
				t.Fatalf("done %v with %d of %d bytes", done, len(sent), a.total)
			}
			if done {
				return
			}
		}
	})
}
