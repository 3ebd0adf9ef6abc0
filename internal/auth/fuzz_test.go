package auth

// The fuzz target of the package's records. The server reads them from
// its replicated table (written by any node's leader, and restored from
// snapshots other nodes send), so the decoders must refuse whatever is not
// a record, without panicking and without allocating for counts the input
// cannot hold (testutil.CheckAlloc). The encoding has one form per value:
// whatever decodes encodes back to the same bytes.
//
// go test -run '^$' -fuzz '^FuzzDecodeRecords$' -fuzztime 20s ./internal/auth
// runs it; tools/fuzz.sh runs it with the others.

import (
	"bytes"
	"errors"
	"slices"
	"testing"

	"github.com/flotilla/flotilla/internal/testutil"
)

// names are the names fuzz-built records use: valid, and some not.
var names = []string{"alice", "root", "app", "r", "a.b-c_D9", "", "node.1", "a b", "x/y"}

// userFrom builds a user, valid or not, from fuzz input.
func userFrom(in *testutil.FuzzInput) User {
	u := User{Name: names[in.Small(len(names))]}
	if in.Bool() {
		u.TokenHash = HashToken(string(in.Bytes(8)))
	}
	for range in.Small(6) {
		u.Roles = append(u.Roles, names[in.Small(len(names))])
	}
	return u
}

// roleFrom builds a role, valid or not, from fuzz input.
func roleFrom(in *testutil.FuzzInput) Role {
	r := Role{Name: names[in.Small(len(names))]}
	for range in.Small(6) {
		r.Perms = append(r.Perms, Permission{Kind: Kind(in.Small(4)), Access: Access(in.Small(5)), Prefix: in.Bytes(16)})
	}
	return r
}

// checkRecord fails t unless v encodes to bytes that decode to want, or
// fails to encode with ErrInvalid. It returns whether v encoded.
func checkRecord[V any](t *testing.T, v, want V, encode func(V) ([]byte, error), decode func([]byte) (V, error)) bool {
	t.Helper()
	b, err := encode(v)
	if err != nil {
		if !errors.Is(err, ErrInvalid) {
			t.Fatalf("encode %+v: %v, want ErrInvalid", v, err)
		}
		return false
	}
	got, err := decode(b)
	if err != nil || !testutil.Same(got, want) {
		t.Fatalf("%+v encodes to %x, which decodes to %+v, %v", v, b, got, err)
	}
	return true
}

// checkDecode fails t unless decode(b) fails with ErrInvalid or decodes
// to a value that encodes to b again, within testutil.DecodeAllocLimit.
// It returns what decoded, and whether it did.
func checkDecode[V any](t *testing.T, b []byte, encode func(V) ([]byte, error), decode func([]byte) (V, error)) (V, bool) {
	t.Helper()
	var v V
	var err error
	testutil.CheckAlloc(t, "decode", testutil.DecodeAllocLimit(len(b)), func() { v, err = decode(b) })
	if err != nil {
		if !errors.Is(err, ErrInvalid) {
			t.Fatalf("decode %x: %v, want ErrInvalid", b, err)
		}
		return v, false
	}
	enc, err := encode(v)
	if err != nil || !bytes.Equal(enc, b) {
		t.Fatalf("%x decodes to %+v, which encodes to %x, %v", b, v, enc, err)
	}
	checkRecord(t, v, v, encode, decode)
	return v, true
}

// FuzzDecodeRecords: DecodeUser and DecodeRole against EncodeUser and
// EncodeRole, and Load and Check on what decodes.
func FuzzDecodeRecords(f *testing.F) {
	for _, u := range seedUsers {
		b, err := EncodeUser(u)
		if err != nil {
			f.Fatal(err)
		}
		testutil.AddSeeds(f, b)
	}
	for _, r := range seedRoles {
		b, err := EncodeRole(r)
		if err != nil {
			f.Fatal(err)
		}
		testutil.AddSeeds(f, b)
	}
	// Counts the record cannot hold; roles out of order.
	f.Add(append(rawRole("r")[:4:4], 0x27, 0x10))
	f.Add(append(rawUser("u")[:36:36], 0x03, 0xe8))
	f.Add(rawUser("u", "b", "a"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if u, ok := checkDecode(t, b, EncodeUser, DecodeUser); ok {
			tb, err := Load(records{{UserKey(u.Name), b}}.all)
			if err != nil {
				t.Fatalf("Load of the user record %x: %v", b, err)
			}
			if got, ok := tb.User(u.Name); !ok || !testutil.Same(got, u) {
				t.Fatalf("Load of %+v: User gives %+v, %v", u, got, ok)
			}
		}
		if r, ok := checkDecode(t, b, EncodeRole, DecodeRole); ok {
			checkGrants(t, r)
		}

		in := testutil.NewFuzzInput(b)
		u := userFrom(in)
		want := u
		want.Roles = slices.Compact(slices.Sorted(slices.Values(u.Roles)))
		checkRecord(t, u, want, EncodeUser, DecodeUser)
		r := roleFrom(in)
		if checkRecord(t, r, r, EncodeRole, DecodeRole) {
			checkGrants(t, r)
		}
	})
}

// checkGrants fails t unless a user granted role r alone may do what each
// of its permissions says, on the whole of the permission's prefix, and a
// user without it may do nothing.
func checkGrants(t *testing.T, r Role) {
	t.Helper()
	tb := NewTables([]User{{Name: "u", Roles: []string{r.Name}}, {Name: "none"}}, []Role{r})
	for _, p := range r.Perms {
		span := Need{Kind: p.Kind, Access: p.Access, Key: p.Prefix, Span: true, End: prefixEnd(p.Prefix)}
		key := Need{Kind: p.Kind, Access: p.Access, Key: append(slices.Clone(p.Prefix), 0xff, 0)}
		for _, n := range []Need{span, key} {
			if err := tb.Check("u", n); err != nil {
				t.Fatalf("role %+v: Check(%+v) = %v", r, n, err)
			}
			if err := tb.Check("none", n); !errors.Is(err, ErrPermissionDenied) {
				t.Fatalf("a user without roles: Check(%+v) = %v", n, err)
			}
		}
	}
}
