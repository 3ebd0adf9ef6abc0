package transport

// Wire format of the gRPC peer service.
//
// No .proto is involved: the service is registered by hand (see grpc.go) and
// every stream message is one frame, carried by the codec below under the
// content-subtype "flotilla-frame-v1". A frame is:
//
//	byte     version (1)
//	byte     kind
//	uvarint  cluster ID
//	uvarint  from (node ID of the writer)
//	uvarint  to   (node ID of the reader)
//	... kind-specific body:
//
//	raft, heartbeat:  uvarint seq, uvarint stamp, uvarint n,
//	                  n × (uvarint group, uvarint len, len bytes raftpb.Message)
//	must:             uvarint seq, uvarint n,
//	                  n × (uvarint group, uvarint len, len bytes payload)
//	snapshot chunk:   uvarint group, uvarint total, uvarint offset,
//	                  uvarint len, len bytes (a slice of the encoded MsgSnap)
//	ack:              uvarint seq, uvarint stamp, uvarint count
//	                  (echoes the acked frame's seq and stamp; count is the
//	                  number of messages the reader has taken on this stream)
//
// Outgoing frames are encoded straight into a buffer from gRPC's buffer pool,
// which gRPC returns to the pool once the bytes are on the wire. Incoming
// frames are copied into a buffer owned by the receiving stream and reused
// for every frame of that stream; raftpb's Unmarshal copies what it keeps.

import (
	"encoding/binary"
	"errors"
	"fmt"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
)

const (
	codecName    = "flotilla-frame-v1"
	frameVersion = 1
)

type frameKind uint8

const (
	kindRaft frameKind = iota + 1
	kindHeartbeat
	kindSnapshot
	kindMust
	kindAck
)

func (k frameKind) String() string {
	switch k {
	case kindRaft:
		return "raft"
	case kindHeartbeat:
		return "heartbeat"
	case kindSnapshot:
		return "snapshot"
	case kindMust:
		return "must"
	case kindAck:
		return "ack"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// mustMsg is one must-deliver payload.
type mustMsg struct {
	group   uint64
	payload []byte
}

// frame is the message type of every stream of the peer service, in both
// directions. A frame is owned by the goroutine that sends or receives it and
// is reused from one message to the next.
type frame struct {
	kind                frameKind
	clusterID, from, to uint64
	seq, stamp          uint64
	count               uint64 // acks only

	// raft and heartbeat frames. sizes[i] is envs[i].Msg.Size(), filled by
	// the sender before it hands the frame to gRPC.
	envs  []Envelope
	sizes []int
	// must frames.
	must []mustMsg
	// snapshot chunks.
	group, total, offset uint64
	chunk                []byte

	// raw holds the bytes of the last frame received into this frame.
	raw []byte
}

// Errors of frame decoding; the receiver maps them to reject reasons.
var (
	errMalformed = errors.New("transport: malformed frame")
	errOversize  = errors.New("transport: message over size limit")
)

func uvarintLen(x uint64) int {
	n := 1
	for x >= 0x80 {
		x >>= 7
		n++
	}
	return n
}

// encodedSize returns the size of f on the wire.
func (f *frame) encodedSize() int {
	n := 2 + uvarintLen(f.clusterID) + uvarintLen(f.from) + uvarintLen(f.to)
	switch f.kind {
	case kindRaft, kindHeartbeat:
		n += uvarintLen(f.seq) + uvarintLen(f.stamp) + uvarintLen(uint64(len(f.envs)))
		for i := range f.envs {
			n += uvarintLen(f.envs[i].Group) + uvarintLen(uint64(f.sizes[i])) + f.sizes[i]
		}
	case kindMust:
		n += uvarintLen(f.seq) + uvarintLen(uint64(len(f.must)))
		for i := range f.must {
			n += uvarintLen(f.must[i].group) + uvarintLen(uint64(len(f.must[i].payload))) + len(f.must[i].payload)
		}
	case kindSnapshot:
		n += uvarintLen(f.group) + uvarintLen(f.total) + uvarintLen(f.offset) +
			uvarintLen(uint64(len(f.chunk))) + len(f.chunk)
	case kindAck:
		n += uvarintLen(f.seq) + uvarintLen(f.stamp) + uvarintLen(f.count)
	}
	return n
}

// encodeTo writes f into b, which must be exactly encodedSize() long.
func (f *frame) encodeTo(b []byte) error {
	b[0] = frameVersion
	b[1] = byte(f.kind)
	off := 2
	off += binary.PutUvarint(b[off:], f.clusterID)
	off += binary.PutUvarint(b[off:], f.from)
	off += binary.PutUvarint(b[off:], f.to)
	switch f.kind {
	case kindRaft, kindHeartbeat:
		off += binary.PutUvarint(b[off:], f.seq)
		off += binary.PutUvarint(b[off:], f.stamp)
		off += binary.PutUvarint(b[off:], uint64(len(f.envs)))
		for i := range f.envs {
			off += binary.PutUvarint(b[off:], f.envs[i].Group)
			sz := f.sizes[i]
			off += binary.PutUvarint(b[off:], uint64(sz))
			n, err := f.envs[i].Msg.MarshalToSizedBuffer(b[off : off+sz])
			if err != nil {
				return err
			}
			if n != sz {
				return fmt.Errorf("transport: message changed size while encoding (%d != %d)", n, sz)
			}
			off += sz
		}
	case kindMust:
		off += binary.PutUvarint(b[off:], f.seq)
		off += binary.PutUvarint(b[off:], uint64(len(f.must)))
		for i := range f.must {
			off += binary.PutUvarint(b[off:], f.must[i].group)
			off += binary.PutUvarint(b[off:], uint64(len(f.must[i].payload)))
			off += copy(b[off:], f.must[i].payload)
		}
	case kindSnapshot:
		off += binary.PutUvarint(b[off:], f.group)
		off += binary.PutUvarint(b[off:], f.total)
		off += binary.PutUvarint(b[off:], f.offset)
		off += binary.PutUvarint(b[off:], uint64(len(f.chunk)))
		off += copy(b[off:], f.chunk)
	case kindAck:
		off += binary.PutUvarint(b[off:], f.seq)
		off += binary.PutUvarint(b[off:], f.stamp)
		off += binary.PutUvarint(b[off:], f.count)
	default:
		return fmt.Errorf("transport: cannot encode %v", f.kind)
	}
	if off != len(b) {
		return fmt.Errorf("transport: frame encoded to %d bytes, expected %d", off, len(b))
	}
	return nil
}

// reader decodes uvarints and byte strings from a frame, remembering the
// first error.
type reader struct {
	b   []byte
	off int
	err error
}

func (r *reader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b[r.off:])
	if n <= 0 {
		r.err = errMalformed
		return 0
	}
	r.off += n
	return v
}

// bytes returns the next n bytes, aliasing the frame.
func (r *reader) bytes(n uint64, limit int) []byte {
	if r.err != nil {
		return nil
	}
	if n > uint64(len(r.b)-r.off) {
		r.err = errMalformed
		return nil
	}
	if n > uint64(limit) {
		r.err = errOversize
		return nil
	}
	s := r.b[r.off : r.off+int(n)]
	r.off += int(n)
	return s
}

// count reads an element count and checks it against the bytes left, each
// element taking at least minSize bytes, so that a bad count cannot make the
// receiver allocate much.
func (r *reader) count(minSize int) int {
	n := r.uvarint()
	if r.err == nil && n > uint64((len(r.b)-r.off)/minSize) {
		r.err = errMalformed
	}
	return int(n)
}

// minMsgSize is the size of the smallest encoded raftpb.Message: raftpb
// writes each of its scalar fields, even when zero, so no message is
// shorter than an empty one.
var minMsgSize = (&raftpb.Message{}).Size()

// responsesField is the field number of raftpb.Message.Responses.
const responsesField = 14

// peerMessage checks the top-level fields of an encoded raftpb.Message
// before it is decoded: they must be well formed, and none may be
// Responses. Raft fills in Responses only in the messages it hands its
// own storage thread, never in one to a peer; and decoding them costs a
// whole Message (over 150 bytes) for every two bytes of input, so a
// frame of them would make the receiver allocate a hundred times its
// size.
func peerMessage(b []byte) bool {
	for len(b) > 0 {
		key, n := binary.Uvarint(b)
		if n <= 0 || key>>3 == responsesField {
			return false
		}
		b = b[n:]
		switch key & 7 {
		case 0: // varint
			if _, n = binary.Uvarint(b); n <= 0 {
				return false
			}
			b = b[n:]
		case 1: // 64-bit
			if len(b) < 8 {
				return false
			}
			b = b[8:]
		case 2: // length-delimited
			l, n := binary.Uvarint(b)
			if n <= 0 || l > uint64(len(b)-n) {
				return false
			}
			b = b[n+int(l):]
		case 5: // 32-bit
			if len(b) < 4 {
				return false
			}
			b = b[4:]
		default:
			return false
		}
	}
	return true
}

// decodeHeader parses the header of f.raw into f and returns a reader
// positioned at the body.
func (f *frame) decodeHeader() (*reader, error) {
	if len(f.raw) < 2 || f.raw[0] != frameVersion {
		return nil, errMalformed
	}
	r := &reader{b: f.raw, off: 2}
	f.kind = frameKind(f.raw[1])
	f.clusterID = r.uvarint()
	f.from = r.uvarint()
	f.to = r.uvarint()
	return r, r.err
}

// decodeBody parses the body of f.raw. Raft and heartbeat messages are
// decoded into a fresh slice f.envs (the receiver hands it to the Handler,
// which owns it); must payloads are copied into one fresh buffer; a snapshot
// chunk aliases f.raw and is valid until the next frame is received.
func (f *frame) decodeBody(r *reader, maxMsg int) error {
	switch f.kind {
	case kindRaft, kindHeartbeat:
		f.seq = r.uvarint()
		f.stamp = r.uvarint()
		// Each message takes its group and length (a byte each) and at
		// least minMsgSize bytes: a count the frame cannot hold is
		// refused before an Envelope (170 bytes) is allocated for each.
		n := r.count(2 + minMsgSize)
		if r.err != nil {
			return r.err
		}
		f.envs = make([]Envelope, n)
		for i := range n {
			f.envs[i].Group = r.uvarint()
			b := r.bytes(r.uvarint(), maxMsg)
			if r.err != nil {
				return r.err
			}
			if len(b) < minMsgSize || !peerMessage(b) {
				return errMalformed
			}
			if err := f.envs[i].Msg.Unmarshal(b); err != nil {
				return errMalformed
			}
		}
	case kindMust:
		f.seq = r.uvarint()
		n := r.count(2)
		if r.err != nil {
			return r.err
		}
		start := r.off
		f.must = make([]mustMsg, n)
		for i := range n {
			f.must[i].group = r.uvarint()
			f.must[i].payload = r.bytes(r.uvarint(), maxMsg)
		}
		if r.err != nil {
			return r.err
		}
		// One copy for all payloads: the handler owns them.
		body := append([]byte(nil), f.raw[start:r.off]...)
		for i := range f.must {
			p := f.must[i].payload
			if len(p) == 0 {
				f.must[i].payload = nil
				continue
			}
			at := cap(f.raw[start:]) - cap(p)
			f.must[i].payload = body[at : at+len(p) : at+len(p)]
		}
	case kindSnapshot:
		f.group = r.uvarint()
		f.total = r.uvarint()
		f.offset = r.uvarint()
		f.chunk = r.bytes(r.uvarint(), len(r.b))
	case kindAck:
		f.seq = r.uvarint()
		f.stamp = r.uvarint()
		f.count = r.uvarint()
	default:
		return errMalformed
	}
	if r.err != nil {
		return r.err
	}
	if r.off != len(r.b) {
		return errMalformed
	}
	return nil
}

// frameCodec carries frames over gRPC.
type frameCodec struct{}

func init() { encoding.RegisterCodecV2(frameCodec{}) }

func (frameCodec) Name() string { return codecName }

func (frameCodec) Marshal(v any) (mem.BufferSlice, error) {
	f, ok := v.(*frame)
	if !ok {
		return nil, fmt.Errorf("transport: codec cannot marshal %T", v)
	}
	n := f.encodedSize()
	pool := mem.DefaultBufferPool()
	bp := pool.Get(n)
	if err := f.encodeTo(*bp); err != nil {
		pool.Put(bp)
		return nil, err
	}
	return mem.BufferSlice{mem.NewBuffer(bp, pool)}, nil
}

func (frameCodec) Unmarshal(data mem.BufferSlice, v any) error {
	f, ok := v.(*frame)
	if !ok {
		return fmt.Errorf("transport: codec cannot unmarshal into %T", v)
	}
	n := data.Len()
	if cap(f.raw) < n {
		f.raw = make([]byte, n)
	}
	f.raw = f.raw[:n]
	data.CopyTo(f.raw)
	return nil
}
