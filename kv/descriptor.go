package kv

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
)

// Descriptor describes one range: a contiguous span [Start, End) of the
// ordered keyspace, served by one raft group. Every range holds its own
// descriptor, replicated with it (keys.Descriptor), and the meta range
// indexes all of them (meta.go). docs/design.md, "The range model".
type Descriptor struct {
	// ID is the range's ID, also its raft group's ID. Range 1 is the meta
	// range.
	ID uint64
	// Start is the first key of the span (inclusive). Empty: the
	// beginning of the keyspace.
	Start []byte
	// End is the end of the span (exclusive). Empty: the end of the
	// keyspace.
	End []byte
	// Replicas are the nodes that hold a replica, preferred leader first.
	Replicas []uint64
	// Learners are those of Replicas that do not vote yet: replicas being
	// added (a move), catching up. A range with learners neither splits
	// nor merges (replicas.go).
	Learners []uint64
	// Generation grows with every split and merge: both halves of a split
	// of generation g get g+1, a merge of g1 and g2 gets max(g1, g2)+1;
	// and by 1 with every change of Replicas or Learners (replicas.go).
	// So of two descriptors that ever covered a common key, the one with
	// the higher generation is the more recent (the meta index relies on
	// it).
	Generation uint64
	// Sticky: the boundary at Start was placed by an operator (a split
	// they asked for) or by the bootstrap (the initial ranges), not by
	// the size or load of the data. The merge queue does not undo it; an
	// operator's merge does.
	Sticky bool
}

// MaxReplicas bounds a descriptor's replica list.
const MaxReplicas = 64

// Contains reports whether key is in the span.
func (d *Descriptor) Contains(key []byte) bool {
	return bytes.Compare(key, d.Start) >= 0 && (len(d.End) == 0 || bytes.Compare(key, d.End) < 0)
}

// Overlaps reports whether the span intersects [start, end) (end empty: to
// the end of the keyspace).
func (d *Descriptor) Overlaps(start, end []byte) bool {
	return (len(end) == 0 || bytes.Compare(d.Start, end) < 0) && (len(d.End) == 0 || bytes.Compare(start, d.End) < 0)
}

// ContainsSpan reports whether [start, end) lies inside the span.
func (d *Descriptor) ContainsSpan(start, end []byte) bool {
	if bytes.Compare(start, d.Start) < 0 {
		return false
	}
	if len(d.End) == 0 {
		return true
	}
	return len(end) != 0 && bytes.Compare(end, d.End) <= 0
}

// Equal reports whether two descriptors are the same.
func (d *Descriptor) Equal(o *Descriptor) bool {
	return d.ID == o.ID && d.Generation == o.Generation && bytes.Equal(d.Start, o.Start) &&
		bytes.Equal(d.End, o.End) && slices.Equal(d.Replicas, o.Replicas) && slices.Equal(d.Learners, o.Learners) && d.Sticky == o.Sticky
}

// Clone returns a deep copy.
func (d *Descriptor) Clone() Descriptor {
	return Descriptor{ID: d.ID, Start: bytes.Clone(d.Start), End: bytes.Clone(d.End),
		Replicas: slices.Clone(d.Replicas), Learners: slices.Clone(d.Learners), Generation: d.Generation, Sticky: d.Sticky}
}

// HasReplica reports whether node holds a replica.
func (d *Descriptor) HasReplica(node uint64) bool { return slices.Contains(d.Replicas, node) }

// SameReplicas reports whether two descriptors have the same replica set,
// in any order, and the same learners.
func (d *Descriptor) SameReplicas(o *Descriptor) bool {
	if len(d.Replicas) != len(o.Replicas) || len(d.Learners) != len(o.Learners) {
		return false
	}
	for _, l := range d.Learners {
		if !slices.Contains(o.Learners, l) {
			return false
		}
	}
	for _, r := range d.Replicas {
		if !o.HasReplica(r) {
			return false
		}
	}
	return true
}

// VotersWithin reports whether neither descriptor has learners and every
// replica of d is one of o's: a merge of d with o frozen into it may take
// place on d's replicas (each of their nodes holds o's replica), and o's
// other replicas are left out (StateMachineVersion 1).
func (d *Descriptor) VotersWithin(o *Descriptor) bool {
	if len(d.Learners) > 0 || len(o.Learners) > 0 {
		return false
	}
	for _, r := range d.Replicas {
		if !o.HasReplica(r) {
			return false
		}
	}
	return len(d.Replicas) > 0
}

// String is for logs: r7[61, 6f)@g3.
func (d *Descriptor) String() string {
	end := "∞"
	if len(d.End) > 0 {
		end = fmt.Sprintf("%q", d.End)
	}
	return fmt.Sprintf("r%d[%q, %s)@g%d", d.ID, d.Start, end, d.Generation)
}

// check returns an error wrapping ErrInvalid for a descriptor no range can
// have.
func (d *Descriptor) check() error {
	switch {
	case d.ID == 0:
		return fmt.Errorf("%w: descriptor of range 0", ErrInvalid)
	case len(d.Start) > MaxKeySize || len(d.End) > MaxKeySize:
		return fmt.Errorf("%w: descriptor bound over %d bytes", ErrInvalid, MaxKeySize)
	case len(d.End) > 0 && bytes.Compare(d.Start, d.End) >= 0:
		return fmt.Errorf("%w: descriptor %v: start not below end", ErrInvalid, d)
	case len(d.Replicas) == 0 || len(d.Replicas) > MaxReplicas:
		return fmt.Errorf("%w: descriptor %v with %d replicas", ErrInvalid, d, len(d.Replicas))
	case len(d.Learners) >= len(d.Replicas):
		return fmt.Errorf("%w: descriptor %v: learners %v and no voter", ErrInvalid, d, d.Learners)
	}
	for _, l := range d.Learners {
		if !d.HasReplica(l) {
			return fmt.Errorf("%w: descriptor %v: learner %d is not a replica", ErrInvalid, d, l)
		}
	}
	return nil
}

// Encode returns the descriptor's stored form.
func (d *Descriptor) Encode() []byte {
	b := make([]byte, 0, 32+len(d.Start)+len(d.End)+8*len(d.Replicas))
	return d.appendTo(b)
}

func (d *Descriptor) appendTo(b []byte) []byte {
	b = binary.AppendUvarint(b, d.ID)
	b = binary.AppendUvarint(b, d.Generation)
	b = appendBytes(b, d.Start)
	b = appendBytes(b, d.End)
	b = binary.AppendUvarint(b, uint64(len(d.Replicas)))
	for _, r := range d.Replicas {
		b = binary.AppendUvarint(b, r)
	}
	var flags byte
	if d.Sticky {
		flags |= 1
	}
	if len(d.Learners) > 0 {
		flags |= 2
	}
	b = append(b, flags)
	if len(d.Learners) > 0 {
		b = binary.AppendUvarint(b, uint64(len(d.Learners)))
		for _, l := range d.Learners {
			b = binary.AppendUvarint(b, l)
		}
	}
	return b
}

// DecodeDescriptor parses a stored descriptor.
func DecodeDescriptor(b []byte) (Descriptor, error) {
	r := reader{b: b}
	d := r.descriptor()
	if r.err || len(r.b) != 0 {
		return Descriptor{}, fmt.Errorf("%w: descriptor", ErrCorrupt)
	}
	return d, nil
}

// descriptor reads one descriptor; the slices are copies.
func (r *reader) descriptor() Descriptor {
	var d Descriptor
	d.ID = r.uvarint()
	d.Generation = r.uvarint()
	d.Start = bytes.Clone(r.bytes())
	d.End = bytes.Clone(r.bytes())
	n := r.uvarint()
	if r.err || n == 0 || n > MaxReplicas {
		r.err = true
		return Descriptor{}
	}
	d.Replicas = make([]uint64, n)
	for i := range d.Replicas {
		d.Replicas[i] = r.uvarint()
	}
	flags := r.byte()
	if flags&^3 != 0 {
		r.err = true
	}
	d.Sticky = flags&1 != 0
	if flags&2 != 0 {
		n := r.uvarint()
		if r.err || n == 0 || n > MaxReplicas {
			r.err = true
			return Descriptor{}
		}
		d.Learners = make([]uint64, n)
		for i := range d.Learners {
			d.Learners[i] = r.uvarint()
		}
	}
	if !r.err && d.check() != nil {
		r.err = true
	}
	return d
}

// InitialSplits returns the n-1 split keys of a cluster bootstrapped with
// n ranges: the hexadecimal key space cut in n even parts. Range i covers
// [split(i-1), split(i)), the first from the beginning of the keyspace and
// the last to its end. Each split key is the start of its part written as
// d lowercase hex digits, d the fewest with 16^d ≥ 16n (so parts differ in
// size by under 1/16). Keys that are hex strings (as the benchmark's are:
// internal/loadgen) spread evenly over the ranges from the first write;
// other keys may not, and load-based splitting spreads them.
func InitialSplits(n int) [][]byte {
	if n <= 1 {
		return nil
	}
	d := 1
	space := uint64(16)
	for space < 16*uint64(n) && d < 15 {
		d++
		space *= 16
	}
	out := make([][]byte, 0, n-1)
	for i := 1; i < n; i++ {
		v := uint64(i) * space / uint64(n)
		out = append(out, []byte(fmt.Sprintf("%0*x", d, v)))
	}
	return out
}

// SpanString formats a span for messages: ["a", "b") or ["a", ∞).
func SpanString(start, end []byte) string {
	var b strings.Builder
	fmt.Fprintf(&b, "[%q, ", start)
	if len(end) == 0 {
		b.WriteString("∞)")
	} else {
		fmt.Fprintf(&b, "%q)", end)
	}
	return b.String()
}
