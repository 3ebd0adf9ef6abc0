package auth

import (
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"strings"
	"testing"

	"github.com/flotilla/flotilla/internal/testutil"
)

func TestTablesLookups(t *testing.T) {
	users := []User{
		{Name: "carol", Roles: []string{"b"}},
		{Name: "alice", TokenHash: HashToken("a"), Roles: []string{"a", "b"}},
		{Name: "bob"},
		{Name: "carol", Roles: []string{"a"}}, // the later one counts
	}
	roles := []Role{
		{Name: "b", Perms: []Permission{{Kind: KindKey, Prefix: []byte("b/"), Access: Read}}},
		{Name: "a", Perms: []Permission{{Kind: KindKey, Prefix: []byte("x"), Access: Write}}},
		{Name: "a", Perms: []Permission{{Kind: KindKey, Prefix: []byte("a/"), Access: Read}}},
	}
	tb := NewTables(users, roles)
	// NewTables copied what it was given.
	users[1].Roles[0] = "changed"
	roles[0].Perms[0].Prefix[0] = 'z'
	roles[0].Name = "changed"

	wantUsers := []User{
		{Name: "alice", TokenHash: HashToken("a"), Roles: []string{"a", "b"}},
		{Name: "bob"},
		{Name: "carol", Roles: []string{"a"}},
	}
	wantRoles := []Role{
		{Name: "a", Perms: []Permission{{Kind: KindKey, Prefix: []byte("a/"), Access: Read}}},
		{Name: "b", Perms: []Permission{{Kind: KindKey, Prefix: []byte("b/"), Access: Read}}},
	}
	if got := tb.Users(); !testutil.Same(got, wantUsers) {
		t.Fatalf("Users() = %+v, want %+v", got, wantUsers)
	}
	if got := tb.Roles(); !testutil.Same(got, wantRoles) {
		t.Fatalf("Roles() = %+v, want %+v", got, wantRoles)
	}
	for _, want := range wantUsers {
		got, ok := tb.User(want.Name)
		if !ok || !testutil.Same(got, want) {
			t.Fatalf("User(%q) = %+v, %v", want.Name, got, ok)
		}
	}
	for _, want := range wantRoles {
		got, ok := tb.Role(want.Name)
		if !ok || !testutil.Same(got, want) {
			t.Fatalf("Role(%q) = %+v, %v", want.Name, got, ok)
		}
	}
	for _, name := range []string{"dave", RootUser, ""} {
		if u, ok := tb.User(name); ok {
			t.Errorf("User(%q) = %+v, want none", name, u)
		}
	}
	if r, ok := tb.Role("c"); ok {
		t.Errorf("Role(c) = %+v, want none", r)
	}
	// What the lookups return is the caller's to change.
	u, _ := tb.User("alice")
	u.Roles[0] = "changed"
	tb.Users()[0].Roles[1] = "changed"
	r, _ := tb.Role("a")
	r.Perms[0].Prefix[0] = 'z'
	tb.Roles()[1].Perms[0].Prefix[0] = 'z'
	if !testutil.Same(tb.Users(), wantUsers) || !testutil.Same(tb.Roles(), wantRoles) {
		t.Fatalf("changing a lookup's result changed the tables: %+v %+v", tb.Users(), tb.Roles())
	}
	// The grants are the later role "a", and carol's later record.
	if err := tb.Check("carol", Need{Kind: KindKey, Access: Read, Key: []byte("a/1")}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []Need{{Kind: KindKey, Access: Read, Key: []byte("b/1")}, {Kind: KindKey, Access: Write, Key: []byte("x")}} {
		if err := tb.Check("carol", n); !errors.Is(err, ErrPermissionDenied) {
			t.Fatalf("Check(carol, %+v) = %v", n, err)
		}
	}
}

func TestEmptyTables(t *testing.T) {
	for _, tb := range []*Tables{NewTables(nil, nil), mustLoad(t, nil)} {
		if len(tb.Users()) != 0 || len(tb.Roles()) != 0 {
			t.Fatalf("empty tables list %+v %+v", tb.Users(), tb.Roles())
		}
		if err := tb.Check(RootUser, Need{Kind: KindKey, Access: ReadWrite, Span: true}); err != nil {
			t.Fatalf("root without a record: %v", err)
		}
		if err := tb.Check("alice", Need{Kind: KindKey, Access: Read}); !errors.Is(err, ErrPermissionDenied) {
			t.Fatalf("alice without a record: %v", err)
		}
	}
}

// records is a table's records, in the table's order.
type records [][2][]byte

func (rs records) all(yield func(k, v []byte) bool) {
	for _, r := range rs {
		if !yield(r[0], r[1]) {
			return
		}
	}
}

func mustLoad(t *testing.T, rs records) *Tables {
	t.Helper()
	tb, err := Load(rs.all)
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

// userRecord and roleRecord return the key and record of a user or a
// role.
func userRecord(t *testing.T, u User) [2][]byte { return record(t, UserKey(u.Name), u, EncodeUser) }
func roleRecord(t *testing.T, r Role) [2][]byte { return record(t, RoleKey(r.Name), r, EncodeRole) }

func record[V any](t *testing.T, key []byte, v V, encode func(V) ([]byte, error)) [2][]byte {
	t.Helper()
	b, err := encode(v)
	if err != nil {
		t.Fatal(err)
	}
	return [2][]byte{key, b}
}

func TestLoad(t *testing.T) {
	var rs records
	for _, r := range seedRoles {
		rs = append(rs, roleRecord(t, r))
	}
	for _, u := range seedUsers {
		rs = append(rs, userRecord(t, u))
	}
	tb := mustLoad(t, rs)
	want := NewTables(seedUsers, seedRoles)
	if !testutil.Same(tb.Users(), want.Users()) || !testutil.Same(tb.Roles(), want.Roles()) {
		t.Fatalf("Load: %+v %+v, want %+v %+v", tb.Users(), tb.Roles(), want.Users(), want.Roles())
	}
	// Load copies: the iterator's buffers may be reused.
	for _, r := range rs {
		clear(r[0])
		clear(r[1])
	}
	if !testutil.Same(tb.Users(), want.Users()) || !testutil.Same(tb.Roles(), want.Roles()) {
		t.Fatalf("Load's tables alias the records")
	}
}

func TestLoadRejects(t *testing.T) {
	alice := userRecord(t, User{Name: "alice"})
	ops := roleRecord(t, Role{Name: "ops"})
	for _, tc := range []struct {
		what string
		bad  [2][]byte
		key  string // named in the error
	}{
		{"bad key", [2][]byte{[]byte("x/alice"), alice[1]}, `"x/alice"`},
		{"bad name in key", [2][]byte{[]byte("u/node.3"), alice[1]}, `"u/node.3"`},
		{"bad record", [2][]byte{[]byte("u/bob"), alice[1][:5]}, `"u/bob"`},
		{"user under another name", [2][]byte{[]byte("u/bob"), alice[1]}, `"u/bob"`},
		{"role under a user's key", [2][]byte{[]byte("u/ops"), ops[1]}, `"u/ops"`},
		{"user under a role's key", [2][]byte{[]byte("r/alice"), alice[1]}, `"r/alice"`},
		{"key twice", alice, `"u/alice"`},
	} {
		rs := records{alice, ops, tc.bad, roleRecord(t, Role{Name: "zz"})}
		yielded := 0
		tb, err := Load(func(yield func(k, v []byte) bool) {
			for _, r := range rs {
				yielded++
				if !yield(r[0], r[1]) {
					return
				}
			}
		})
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "record "+tc.key) || tb != nil {
			t.Errorf("%s: Load = %v, %v, want ErrInvalid naming %s", tc.what, tb, err, tc.key)
		}
		if yielded != 3 {
			t.Errorf("%s: Load took %d records, want it to stop at the bad third", tc.what, yielded)
		}
	}
}

func TestTokens(t *testing.T) {
	seen := make(map[string]bool)
	for range 100 {
		tok, err := NewToken()
		if err != nil {
			t.Fatal(err)
		}
		raw, err := base64.RawURLEncoding.DecodeString(tok)
		if err != nil || len(raw) != 32 || len(tok) != 43 {
			t.Fatalf("NewToken() = %q: %d bytes, %v", tok, len(raw), err)
		}
		if seen[tok] {
			t.Fatalf("NewToken() gave %q twice", tok)
		}
		seen[tok] = true
	}
	if HashToken("abc") != sha256.Sum256([]byte("abc")) {
		t.Fatal("HashToken is not SHA-256")
	}

	tb := NewTables([]User{
		{Name: "alice", TokenHash: HashToken("alice-token")},
		{Name: "bob"}, // no token
		{Name: "carol", TokenHash: HashToken("shared")},
		{Name: "dave", TokenHash: HashToken("shared")},
		{Name: "erin", TokenHash: HashToken("")},
		{Name: RootUser, TokenHash: HashToken("root-token")},
	}, nil)
	for _, tc := range []struct{ token, user string }{
		{"alice-token", "alice"},
		{"root-token", RootUser},
		{"alice-token ", ""},
		{"Alice-token", ""},
		{"", ""},       // erin's hash, but an empty token is no token
		{"shared", ""}, // two users: neither
	} {
		got, ok := tb.UserByToken(tc.token)
		if got != tc.user || ok != (tc.user != "") {
			t.Errorf("UserByToken(%q) = %q, %v, want %q", tc.token, got, ok, tc.user)
		}
	}
	// No token hashes to zero: bob's zero hash is no hash at all.
	if name, ok := tb.tokens[[32]byte{}]; ok {
		t.Fatalf("the zero hash authenticates %q", name)
	}
}

// TestHasUserIsAdmin: the allocation-free lookups of the request path
// agree with User.
func TestHasUserIsAdmin(t *testing.T) {
	tb := NewTables([]User{{Name: "alice", Roles: []string{"app"}}, {Name: "boss", Roles: []string{RootRole}}}, nil)
	for _, tc := range []struct {
		name       string
		has, admin bool
	}{{"alice", true, false}, {"boss", true, true}, {RootUser, true, true}, {"nobody", false, false}} {
		if got := tb.HasUser(tc.name); got != tc.has {
			t.Errorf("HasUser(%q) = %v", tc.name, got)
		}
		if got := tb.IsAdmin(tc.name); got != tc.admin {
			t.Errorf("IsAdmin(%q) = %v", tc.name, got)
		}
	}
	if n := testing.AllocsPerRun(100, func() { tb.HasUser("alice"); tb.IsAdmin("boss") }); n != 0 {
		t.Errorf("%v allocations", n)
	}
}
