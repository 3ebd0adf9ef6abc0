package testutil

import (
	"encoding/binary"
	"reflect"
	"runtime"
	"testing"
)

// FuzzInput cuts typed values from a fuzz input, so that a fuzz target
// with one []byte argument can build structured values from it as well as
// decode it: the fuzzer's mutations of the bytes then reach both. Once
// the input runs out every value is zero.
type FuzzInput struct{ b []byte }

// NewFuzzInput returns a FuzzInput reading b.
func NewFuzzInput(b []byte) *FuzzInput { return &FuzzInput{b: b} }

// Byte returns the next byte.
func (in *FuzzInput) Byte() byte {
	if len(in.b) == 0 {
		return 0
	}
	v := in.b[0]
	in.b = in.b[1:]
	return v
}

// Bool returns the low bit of the next byte.
func (in *FuzzInput) Bool() bool { return in.Byte()&1 != 0 }

// Uint64 returns the next 8 bytes, big-endian (fewer at the end of the
// input, zero-padded).
func (in *FuzzInput) Uint64() uint64 {
	var p [8]byte
	n := copy(p[:], in.b)
	in.b = in.b[n:]
	return binary.BigEndian.Uint64(p[:])
}

// Small returns a number below n (n > 0) from the next byte: for counts
// and choices, which a whole uint64 would make mostly huge.
func (in *FuzzInput) Small(n int) int { return int(in.Byte()) % n }

// Bytes returns a slice of up to max bytes: a length byte, then that many
// bytes (fewer at the end of the input). The slice is a copy; nil when
// empty, as decoders return it.
func (in *FuzzInput) Bytes(max int) []byte {
	n := min(int(in.Byte()), max, len(in.b))
	if n == 0 {
		return nil
	}
	v := append([]byte(nil), in.b[:n]...)
	in.b = in.b[n:]
	return v
}

// CheckAlloc fails t if fn allocates more than limit bytes of heap
// (DecodeAllocLimit for a decoder). A decoder that sizes a buffer or a
// slice by a length or count it read must check it against what its input
// can hold first: a few bytes claiming a million elements fail this. The
// count is of the whole process (a leftover goroutine of another test may
// add to it), so fn runs again before the test fails: a decoder allocates
// the same every time.
func CheckAlloc(t testing.TB, what string, limit uint64, fn func()) {
	t.Helper()
	got := allocated(fn)
	if got <= limit {
		return
	}
	if again := allocated(fn); again < got {
		got = again
	}
	if got > limit {
		t.Fatalf("%s: %d bytes allocated, limit %d", what, got, limit)
	}
}

// allocated returns how many bytes of heap fn allocates.
func allocated(fn func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	fn()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// DecodeAllocLimit is the heap a decoder may allocate for an input of n
// bytes (see CheckAlloc): 256 KiB, plus 64 bytes per input byte, room for
// the structs of a list whose smallest element takes a couple of bytes.
func DecodeAllocLimit(n int) uint64 { return 256<<10 + 64*uint64(n) }

// AddSeeds adds each encoded value to f's seed corpus, with variants cut
// short and with a byte flipped: the inputs a torn write or a careless peer
// produce first.
func AddSeeds(f *testing.F, encoded ...[]byte) {
	for _, b := range encoded {
		f.Add(b)
		if len(b) == 0 {
			continue
		}
		f.Add(b[:len(b)-1])
		f.Add(b[:len(b)/2])
		bad := append([]byte(nil), b...)
		bad[len(bad)/2] ^= 0xff
		f.Add(bad)
	}
}

// Same reports whether a and b are deeply equal, unexported fields
// included, taking a nil slice and an empty one for the same: decoders
// return either for an empty field, and round-trip checks should not care.
func Same(a, b any) bool { return same(reflect.ValueOf(a), reflect.ValueOf(b)) }

func same(a, b reflect.Value) bool {
	if !a.IsValid() || !b.IsValid() {
		return a.IsValid() == b.IsValid()
	}
	if a.Type() != b.Type() {
		return false
	}
	switch a.Kind() {
	case reflect.Slice, reflect.Array:
		if a.Len() != b.Len() {
			return false
		}
		for i := range a.Len() {
			if !same(a.Index(i), b.Index(i)) {
				return false
			}
		}
		return true
	case reflect.Struct:
		for i := range a.NumField() {
			if !same(a.Field(i), b.Field(i)) {
				return false
			}
		}
		return true
	case reflect.Pointer, reflect.Interface:
		if a.IsNil() || b.IsNil() {
			return a.IsNil() == b.IsNil()
		}
		return same(a.Elem(), b.Elem())
	case reflect.Map:
		if a.Len() != b.Len() {
			return false
		}
		for it := a.MapRange(); it.Next(); {
			if v := b.MapIndex(it.Key()); !v.IsValid() || !same(it.Value(), v) {
				return false
			}
		}
		return true
	case reflect.Bool:
		return a.Bool() == b.Bool()
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return a.Int() == b.Int()
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return a.Uint() == b.Uint()
	case reflect.Float32, reflect.Float64:
		return a.Float() == b.Float()
	case reflect.String:
		return a.String() == b.String()
	}
	// Funcs and channels: the same one.
	return a.Pointer() == b.Pointer()
}

// Codec is a decoder and its encoder, which fuzz targets check against
// each other.
type Codec[V any] struct {
	Decode func([]byte) (V, error)
	Encode func(V) []byte
	// Clean reports whether err is an error Decode may return: the
	// package's error for malformed input, not a failure of its own.
	Clean func(err error) bool
}

// Check is the body of a decoder's fuzz target: Decode(b) stays within
// DecodeAllocLimit and fails cleanly, or what it decodes encodes to bytes
// that decode to the same (RoundTrip).
func (c Codec[V]) Check(t testing.TB, b []byte) {
	t.Helper()
	var v V
	var err error
	CheckAlloc(t, "decode", DecodeAllocLimit(len(b)), func() { v, err = c.Decode(b) })
	switch {
	case err == nil:
		c.RoundTrip(t, v)
	case !c.Clean(err):
		t.Fatalf("decode %x: %v", b, err)
	}
}

// RoundTrip fails t unless v encodes to bytes that decode to v.
func (c Codec[V]) RoundTrip(t testing.TB, v V) {
	t.Helper()
	enc := c.Encode(v)
	if got, err := c.Decode(enc); err != nil || !Same(got, v) {
		t.Fatalf("%+v encodes to %x, which decodes to %+v, %v", v, enc, got, err)
	}
}
