package auth

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/flotilla/flotilla/internal/testutil"
)

func TestValidName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"alice", true},
		{"root", true},
		{"A-Z_a.z-09", true},
		{"x", true},
		{strings.Repeat("n", 64), true},
		{"node", true},
		{"nodes.x", true},
		{"Node.1", true}, // the reserved prefix is lower case, as node certificates name it
		{"", false},
		{strings.Repeat("n", 65), false},
		{"node.", false},
		{"node.1", false},
		{"al ice", false},
		{"alice/x", false},
		{"ålice", false},
		{"a\x00", false},
	} {
		err := ValidName(tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("ValidName(%q) = %v, want ok %v", tc.name, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalid) {
			t.Errorf("ValidName(%q) = %v, want ErrInvalid", tc.name, err)
		}
	}
}

func TestPermissionValidate(t *testing.T) {
	for _, tc := range []struct {
		p  Permission
		ok bool
	}{
		{Permission{Kind: KindKey, Access: Read}, true},
		{Permission{Kind: KindElection, Access: ReadWrite, Prefix: []byte("e/")}, true},
		{Permission{Kind: KindKey, Access: Write, Prefix: bytes.Repeat([]byte{0xff}, 4096)}, true},
		{Permission{Kind: KindKey, Access: Write, Prefix: make([]byte, 4097)}, false},
		{Permission{Kind: 0, Access: Read}, false},
		{Permission{Kind: 3, Access: Read}, false},
		{Permission{Kind: KindKey, Access: 0}, false},
		{Permission{Kind: KindKey, Access: 4}, false},
	} {
		err := tc.p.Validate()
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrInvalid)) {
			t.Errorf("%+v.Validate() = %v, want ok %v", tc.p, err, tc.ok)
		}
	}
}

func TestStrings(t *testing.T) {
	for _, tc := range []struct {
		s    interface{ String() string }
		want string
	}{
		{Read, "read"}, {Write, "write"}, {ReadWrite, "readwrite"}, {Access(0), "access(0)"}, {Access(9), "access(9)"},
		{KindKey, "key"}, {KindElection, "election"}, {Kind(0), "kind(0)"},
	} {
		if got := tc.s.String(); got != tc.want {
			t.Errorf("String() = %q, want %q", got, tc.want)
		}
	}
}

func TestKeys(t *testing.T) {
	if got := string(UserKey("alice")); got != "u/alice" {
		t.Fatalf("UserKey = %q", got)
	}
	if got := string(RoleKey("ops")); got != "r/ops" {
		t.Fatalf("RoleKey = %q", got)
	}
	for _, tc := range []struct {
		key    string
		isUser bool
		name   string
	}{{"u/alice", true, "alice"}, {"r/ops", false, "ops"}, {"u/root", true, "root"}, {"r/u", false, "u"}} {
		k := []byte(tc.key)
		isUser, name, err := ParseKey(k)
		if err != nil || isUser != tc.isUser || name != tc.name {
			t.Errorf("ParseKey(%q) = %v, %q, %v", tc.key, isUser, name, err)
		}
		k[2] = '!' // the name is a copy
		if name != tc.name {
			t.Errorf("ParseKey(%q): name aliases the key", tc.key)
		}
	}
	for _, k := range []string{"", "u", "u/", "r/", "x/alice", "U/alice", "u/node.1", "r/a b", "ualice", "u//a"} {
		if _, _, err := ParseKey([]byte(k)); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseKey(%q) = %v, want ErrInvalid", k, err)
		}
	}
}

// seedUsers and seedRoles are records of every shape.
var (
	seedUsers = []User{
		{Name: "alice", TokenHash: HashToken("t"), Roles: []string{"app", "elect", "root"}},
		{Name: "root"},
		{Name: strings.Repeat("z", 64), Roles: []string{"r"}},
	}
	seedRoles = []Role{
		{Name: "app", Perms: []Permission{
			{Kind: KindKey, Prefix: []byte("app/"), Access: ReadWrite},
			{Kind: KindElection, Prefix: []byte("svc/"), Access: Write},
			{Kind: KindKey, Access: Read},
			{Kind: KindKey, Prefix: []byte{0, 0xff}, Access: Read},
			{Kind: KindKey, Prefix: []byte("app/"), Access: ReadWrite},
		}},
		{Name: "empty"},
	}
)

func TestRecordRoundTrip(t *testing.T) {
	for _, u := range seedUsers {
		got := roundTrip(t, u, EncodeUser, DecodeUser)
		if u.Roles == nil && got.Roles != nil {
			t.Errorf("%+v: decoded Roles %#v, want nil", u, got.Roles)
		}
	}
	for _, r := range seedRoles {
		got := roundTrip(t, r, EncodeRole, DecodeRole)
		if r.Perms == nil && got.Perms != nil || len(got.Perms) > 2 && got.Perms[2].Prefix != nil {
			t.Errorf("%+v: decoded %#v, want nil for what is empty", r, got)
		}
	}
}

// roundTrip fails t unless v encodes to a record that decodes to v and
// that the decoded value does not alias. It returns the decoded value.
func roundTrip[V any](t *testing.T, v V, encode func(V) ([]byte, error), decode func([]byte) (V, error)) V {
	t.Helper()
	b, err := encode(v)
	if err != nil {
		t.Fatal(err)
	}
	got, err := decode(b)
	if err != nil || !testutil.Same(got, v) {
		t.Fatalf("%+v encodes to %x, which decodes to %+v, %v", v, b, got, err)
	}
	clear(b)
	if !testutil.Same(got, v) {
		t.Fatalf("decoded %+v aliases its record", v)
	}
	return got
}

// TestEncodeUserSortsRoles: a user's record keeps its roles sorted and
// without repeats, and the User given is not changed.
func TestEncodeUserSortsRoles(t *testing.T) {
	roles := []string{"b", "a", "c", "a", "b"}
	b, err := EncodeUser(User{Name: "u", Roles: roles})
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeUser(b)
	if err != nil || !testutil.Same(got.Roles, []string{"a", "b", "c"}) {
		t.Fatalf("decoded %+v, %v", got, err)
	}
	if !testutil.Same(roles, []string{"b", "a", "c", "a", "b"}) {
		t.Fatalf("EncodeUser changed its argument's roles: %q", roles)
	}
	// 1,000 distinct roles fit, however many repeats.
	many := make([]string, 0, 2000)
	for i := range 1000 {
		n := roleName(i)
		many = append(many, n, n)
	}
	if _, err := EncodeUser(User{Name: "u", Roles: many}); err != nil {
		t.Fatalf("1,000 distinct roles: %v", err)
	}
}

// roleName returns a distinct valid name for each i.
func roleName(i int) string { return fmt.Sprintf("r%d", i) }

func TestEncodeRejects(t *testing.T) {
	many := make([]string, 1001)
	for i := range many {
		many[i] = roleName(i)
	}
	for _, u := range []User{
		{Name: ""},
		{Name: "node.1"},
		{Name: "a", Roles: []string{"ok", "b/c"}},
		{Name: "a", Roles: []string{""}},
		{Name: "a", Roles: many},
	} {
		if b, err := EncodeUser(u); !errors.Is(err, ErrInvalid) {
			t.Errorf("EncodeUser(%.60v) = %x, %v, want ErrInvalid", u, b, err)
		}
	}
	for _, r := range []Role{
		{Name: "a b"},
		{Name: "r", Perms: []Permission{{Kind: KindKey, Access: Read}, {Kind: KindKey, Access: 0}}},
		{Name: "r", Perms: []Permission{{Kind: 9, Access: Read}}},
		{Name: "r", Perms: []Permission{{Kind: KindKey, Access: Read, Prefix: make([]byte, 4097)}}},
		{Name: "r", Perms: make([]Permission, 10001)},
	} {
		if b, err := EncodeRole(r); !errors.Is(err, ErrInvalid) {
			t.Errorf("EncodeRole(%.60v) = %x, %v, want ErrInvalid", r, b, err)
		}
	}
	// The limits themselves are fine.
	perms := make([]Permission, 10000)
	for i := range perms {
		perms[i] = Permission{Kind: KindKey, Access: Read, Prefix: make([]byte, 4096)[:i%4097]}
	}
	b, err := EncodeRole(Role{Name: "big", Perms: perms})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := DecodeRole(b); err != nil || len(got.Perms) != 10000 {
		t.Fatalf("10,000 permissions: %d, %v", len(got.Perms), err)
	}
}

// rawUser, rawRole and rawPerm build records, and records the encoders
// refuse to build.
func rawUser(name string, roles ...string) []byte {
	b := append([]byte{recordVersion, tagUser, byte(len(name))}, name...)
	b = append(b, make([]byte, 32)...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(roles)))
	for _, r := range roles {
		b = append(append(b, byte(len(r))), r...)
	}
	return b
}

func rawRole(name string, perms ...[]byte) []byte {
	b := append([]byte{recordVersion, tagRole, byte(len(name))}, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(perms)))
	for _, p := range perms {
		b = append(b, p...)
	}
	return b
}

func rawPerm(kind, access byte, prefixLen int) []byte {
	b := binary.BigEndian.AppendUint16([]byte{kind, access}, uint16(prefixLen))
	return append(b, make([]byte, prefixLen)...)
}

func TestDecodeRejects(t *testing.T) {
	goodUser, err := EncodeUser(seedUsers[0])
	if err != nil {
		t.Fatal(err)
	}
	goodRole, err := EncodeRole(seedRoles[0])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := DecodeUser(rawUser("u", "a", "b")); err != nil {
		t.Fatalf("the raw encoding is wrong: %v", err)
	}
	if _, err := DecodeRole(rawRole("r", rawPerm(1, 3, 2))); err != nil {
		t.Fatalf("the raw encoding is wrong: %v", err)
	}
	manyRoles := make([]string, 1001)
	for i := range manyRoles {
		manyRoles[i] = roleName(i)
	}
	withVersion := func(b []byte, v byte) []byte { b = bytes.Clone(b); b[0] = v; return b }
	users := map[string][]byte{
		"empty":             nil,
		"version 0":         withVersion(goodUser, 0),
		"version 2":         withVersion(goodUser, 2),
		"a role's record":   goodRole,
		"trailing byte":     append(bytes.Clone(goodUser), 0),
		"name empty":        rawUser(""),
		"name reserved":     rawUser("node.1"),
		"name bad":          rawUser("a/b"),
		"role name bad":     rawUser("u", "a", "b c"),
		"roles unsorted":    rawUser("u", "b", "a"),
		"roles repeated":    rawUser("u", "a", "a"),
		"1001 roles":        rawUser("u", manyRoles...),
		"count beyond data": binary.BigEndian.AppendUint16(bytes.TrimSuffix(rawUser("u"), []byte{0, 0}), 1000),
	}
	for i := range len(goodUser) {
		users[fmt.Sprintf("cut at %d", i)] = goodUser[:i]
	}
	for what, b := range users {
		if u, err := DecodeUser(b); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: DecodeUser(%x) = %+v, %v, want ErrInvalid", what, b, u, err)
		}
	}
	roles := map[string][]byte{
		"empty":           nil,
		"version 2":       withVersion(goodRole, 2),
		"a user's record": goodUser,
		"trailing byte":   append(bytes.Clone(goodRole), 0),
		"name bad":        rawRole("a b"),
		"kind 0":          rawRole("r", rawPerm(0, 1, 0)),
		"kind 3":          rawRole("r", rawPerm(3, 1, 0)),
		"access 0":        rawRole("r", rawPerm(1, 0, 0)),
		"access 4":        rawRole("r", rawPerm(1, 4, 0)),
		"prefix 4097":     rawRole("r", rawPerm(1, 1, 4097)),
		"prefix cut":      rawRole("r", rawPerm(1, 1, 5)[:8]),
		"10001 perms":     rawRole("r", slicesRepeat(rawPerm(1, 1, 0), 10001)...),
		"count beyond":    binary.BigEndian.AppendUint16([]byte{recordVersion, tagRole, 1, 'r'}, 10000),
	}
	for i := range len(goodRole) {
		roles[fmt.Sprintf("cut at %d", i)] = goodRole[:i]
	}
	for what, b := range roles {
		if r, err := DecodeRole(b); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: DecodeRole(%x) = %+v, %v, want ErrInvalid", what, b, r, err)
		}
	}
}

func slicesRepeat(b []byte, n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = b
	}
	return out
}
