package auth

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand"
	"testing"
)

// fixture is the tables of the table-driven tests.
func fixture() *Tables {
	key := func(prefix string, a Access) Permission {
		return Permission{Kind: KindKey, Prefix: []byte(prefix), Access: a}
	}
	return NewTables([]User{
		{Name: "alice", Roles: []string{"app", "elect", "missing"}},
		{Name: "bob", Roles: []string{"all-read", "ffs"}},
		{Name: "carol", Roles: []string{"w-a", "w-b"}},
		{Name: "dave", Roles: []string{"app", RootRole}},
		{Name: "erin"},
		{Name: "frank", Roles: []string{"missing", RootRole + "x"}},
		{Name: "gina", Roles: []string{"split"}},
	}, []Role{
		{Name: "app", Perms: []Permission{key("app/", ReadWrite), key("shared/", Read), key("logs/", Write)}},
		{Name: "elect", Perms: []Permission{{Kind: KindElection, Prefix: []byte("svc/"), Access: ReadWrite}}},
		{Name: "all-read", Perms: []Permission{key("", Read)}},
		{Name: "ffs", Perms: []Permission{key("\xff\xff", Write)}},
		{Name: "w-a", Perms: []Permission{key("a", Write)}},
		{Name: "w-b", Perms: []Permission{key("b", Write), key("b\x00", Read)}},
		{Name: "split", Perms: []Permission{key("k", Read), key("k", Write), key("m", ReadWrite), {Kind: KindKey, Access: 0}}},
		// A role record named root lists nothing: RootRole grants
		// everything regardless.
		{Name: RootRole},
	})
}

func keyNeed(a Access, k string) Need { return Need{Kind: KindKey, Access: a, Key: []byte(k)} }
func spanNeed(a Access, k, end string) Need {
	return Need{Kind: KindKey, Access: a, Key: []byte(k), Span: true, End: []byte(end)}
}

func TestCheck(t *testing.T) {
	tb := fixture()
	for _, tc := range []struct {
		user string
		need Need
		ok   bool
	}{
		// root, with no record, and a user granted the root role.
		{RootUser, spanNeed(ReadWrite, "", ""), true},
		{RootUser, Need{Kind: KindElection, Access: Write, Key: []byte("x")}, true},
		{"dave", spanNeed(ReadWrite, "", ""), true},
		{"dave", Need{Kind: KindElection, Access: ReadWrite, Span: true}, true},
		// Users without permissions, or without a record.
		{"erin", keyNeed(Read, "a"), false},
		{"erin", spanNeed(Read, "a", "b"), false},
		{"zed", keyNeed(Read, "app/x"), false},
		{"frank", keyNeed(Read, "x"), false},
		// A prefix's keys.
		{"alice", keyNeed(Read, "app/"), true},
		{"alice", keyNeed(ReadWrite, "app/x/y"), true},
		{"alice", keyNeed(Read, "app"), false},
		{"alice", keyNeed(Read, "app0"), false},
		{"alice", keyNeed(Read, "shared/x"), true},
		{"alice", keyNeed(Write, "shared/x"), false},
		{"alice", keyNeed(ReadWrite, "shared/x"), false},
		{"alice", keyNeed(Write, "logs/1"), true},
		{"alice", keyNeed(Read, "logs/1"), false},
		{"alice", keyNeed(Read, ""), false},
		// Keys and elections are apart.
		{"alice", Need{Kind: KindElection, Access: Write, Key: []byte("svc/a")}, true},
		{"alice", Need{Kind: KindElection, Access: Write, Key: []byte("app/a")}, false},
		{"alice", keyNeed(Write, "svc/a"), false},
		{"alice", Need{Kind: KindElection, Access: Read, Key: []byte("svc/"), Span: true, End: []byte("svc0")}, true},
		{"alice", Need{Kind: KindElection, Access: Read, Key: []byte("svc/"), Span: true}, false},
		// Spans.
		{"alice", spanNeed(Read, "app/", "app0"), true},
		{"alice", spanNeed(Read, "app/a", "app/b"), true},
		{"alice", spanNeed(Read, "app/", "app1"), false},
		{"alice", spanNeed(Read, "app.", "app/x"), false},
		{"alice", spanNeed(Read, "app/", ""), false},
		{"alice", spanNeed(Read, "", ""), false},
		// The empty prefix: everything, to the end of the keyspace.
		{"bob", keyNeed(Read, ""), true},
		{"bob", keyNeed(Read, "\xff\xff\xff"), true},
		{"bob", spanNeed(Read, "", ""), true},
		{"bob", spanNeed(Read, "x", ""), true},
		{"bob", spanNeed(Write, "", ""), false},
		// All 0xff: no end either.
		{"bob", keyNeed(Write, "\xff\xff"), true},
		{"bob", keyNeed(Write, "\xff\xff\x00"), true},
		{"bob", keyNeed(Write, "\xff\xfe\xff"), false},
		{"bob", keyNeed(Write, "\xff"), false},
		{"bob", spanNeed(Write, "\xff\xff", ""), true},
		{"bob", spanNeed(Write, "\xff\xff\x01", ""), true},
		{"bob", spanNeed(Write, "\xff", ""), false},
		{"bob", spanNeed(Write, "\xff\xfe", "\xff\xff\x01"), false},
		// Touching prefixes of two roles cover a span across them;
		// a gap does not.
		{"carol", spanNeed(Write, "a", "c"), true},
		{"carol", spanNeed(Write, "a\xff", "b\x00"), true},
		{"carol", spanNeed(Write, "a", "c\x00"), false},
		{"carol", spanNeed(Write, "", "b"), false},
		{"carol", spanNeed(Read, "b\x00", "b\x01"), true},
		{"carol", spanNeed(Read, "b", "b\x01"), false},
		// Read and write from two permissions of one prefix; an invalid
		// permission grants nothing.
		{"gina", keyNeed(ReadWrite, "k1"), true},
		{"gina", spanNeed(ReadWrite, "k", "l"), true},
		{"gina", spanNeed(ReadWrite, "k", "n"), false},
		{"gina", keyNeed(Read, "z"), false},
		// Empty spans need the permission on their start.
		{"alice", spanNeed(Read, "app/x", "app/x"), true},
		{"alice", spanNeed(Read, "app/x", "a"), true},
		{"alice", spanNeed(Read, "b", "a"), false},
		{"erin", spanNeed(Read, "b", "a"), false},
	} {
		err := tb.Check(tc.user, tc.need)
		if tc.ok && err != nil {
			t.Errorf("Check(%q, %+v) = %v, want nil", tc.user, tc.need, err)
		}
		if !tc.ok && !errors.Is(err, ErrPermissionDenied) {
			t.Errorf("Check(%q, %+v) = %v, want ErrPermissionDenied", tc.user, tc.need, err)
		}
	}
}

func TestCheckMessages(t *testing.T) {
	tb := fixture()
	for _, tc := range []struct {
		user string
		need Need
		want string
	}{
		{"zed", keyNeed(Read, "a"), `auth: permission denied: user "zed" does not exist`},
		{"alice", keyNeed(Read, "secret/x"), `auth: permission denied: user "alice" has no read permission on key "secret/x"`},
		{"alice", keyNeed(ReadWrite, "shared/x"), `auth: permission denied: user "alice" has no write permission on key "shared/x"`},
		{"alice", keyNeed(ReadWrite, "x"), `auth: permission denied: user "alice" has no readwrite permission on key "x"`},
		{"alice", spanNeed(Read, "a", "b"), `auth: permission denied: user "alice" has no read permission on span ["a", "b")`},
		{"alice", spanNeed(Write, "a\x00", ""), `auth: permission denied: user "alice" has no write permission on span ["a\x00", end of keyspace)`},
		{"alice", spanNeed(Read, "b", "a"), `auth: permission denied: user "alice" has no read permission on span ["b", "a") (empty: the permission on its start is needed)`},
		{"alice", Need{Kind: KindElection, Access: Write, Key: []byte("e")}, `auth: permission denied: user "alice" has no write permission on election "e"`},
		{"alice", Need{Kind: KindElection, Access: Read, Span: true, End: []byte("e")}, `auth: permission denied: user "alice" has no read permission on election span ["", "e")`},
	} {
		err := tb.Check(tc.user, tc.need)
		if err == nil || err.Error() != tc.want || !errors.Is(err, ErrPermissionDenied) {
			t.Errorf("Check(%q, %+v) = %v, want %s", tc.user, tc.need, err, tc.want)
		}
	}
	// A bad need is an error for everyone but root.
	for _, n := range []Need{{Kind: 0, Access: Read}, {Kind: KindKey, Access: 0}, {Kind: KindKey, Access: 4}, {Kind: 3, Access: Read}} {
		for _, u := range []string{"alice", "dave", "zed"} {
			if err := tb.Check(u, n); !errors.Is(err, ErrInvalid) {
				t.Errorf("Check(%q, %+v) = %v, want ErrInvalid", u, n, err)
			}
		}
		if err := tb.Check(RootUser, n); err != nil {
			t.Errorf("Check(root, %+v) = %v", n, err)
		}
	}
}

func TestPrefixEnd(t *testing.T) {
	for _, tc := range []struct{ prefix, end string }{
		{"", ""},
		{"a", "b"},
		{"app/", "app0"},
		{"a\xff", "b"},
		{"a\xff\xff", "b"},
		{"\x00", "\x01"},
		{"\xfe\xff", "\xff"},
		{"\xff", ""},
		{"\xff\xff\xff", ""},
	} {
		got := prefixEnd([]byte(tc.prefix))
		if string(got) != tc.end || (tc.end == "") != (got == nil) {
			t.Errorf("prefixEnd(%q) = %q, want %q", tc.prefix, got, tc.end)
		}
	}
	p := []byte("ab")
	prefixEnd(p)
	if string(p) != "ab" {
		t.Fatalf("prefixEnd changed its argument to %q", p)
	}
}

// The property tests draw prefixes, keys and span ends from alphabet (the
// lowest byte, the highest, two in the middle), up to maxLen bytes long.
// Every question of coverage they ask is then answered by the keys over
// universe (alphabet and each of its bytes plus one) up to maxLen bytes
// long: if some key of a span is not covered, cutting it to maxLen bytes,
// then replacing each byte outside the alphabet by one more than the
// largest alphabet byte below it (a byte of the universe between the same
// two alphabet bytes), keeps it in the span and uncovered.
var (
	alphabet = []byte{0x00, 'a', 'b', 0xff}
	universe = []byte{0x00, 0x01, 'a', 'b', 'c', 0xff}
)

const maxLen = 3

// allKeys returns every key over universe up to maxLen bytes long.
func allKeys() [][]byte {
	keys := [][]byte{{}}
	for prev := keys; len(prev[0]) < maxLen; {
		var next [][]byte
		for _, k := range prev {
			for _, c := range universe {
				next = append(next, append(append([]byte(nil), k...), c))
			}
		}
		keys = append(keys, next...)
		prev = next
	}
	return keys
}

func randKey(rng *rand.Rand, maxLen int) []byte {
	k := make([]byte, rng.Intn(maxLen+1))
	for i := range k {
		k[i] = alphabet[rng.Intn(len(alphabet))]
	}
	return k
}

// allowed is the reference: whether perms allow access (one bit) of kind
// on key, by the definition.
func allowed(perms []Permission, kind Kind, access Access, key []byte) bool {
	for _, p := range perms {
		if p.Kind == kind && p.Access&access != 0 && bytes.HasPrefix(key, p.Prefix) {
			return true
		}
	}
	return false
}

// reference reports whether perms allow need, by brute force over keys.
func reference(perms []Permission, keys [][]byte, need Need) bool {
	for _, a := range []Access{Read, Write} {
		if need.Access&a == 0 {
			continue
		}
		if !need.Span || len(need.End) > 0 && bytes.Compare(need.End, need.Key) <= 0 {
			if !allowed(perms, need.Kind, a, need.Key) {
				return false
			}
			continue
		}
		for _, k := range keys {
			inSpan := bytes.Compare(k, need.Key) >= 0 && (len(need.End) == 0 || bytes.Compare(k, need.End) < 0)
			if inSpan && !allowed(perms, need.Kind, a, k) {
				return false
			}
		}
	}
	return true
}

// TestCheckProperty compares Check with the reference on random roles,
// users and needs.
func TestCheckProperty(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	keys := allKeys()
	checked, allowedCount := 0, 0
	for round := range 300 {
		var roles []Role
		for i := range 1 + rng.Intn(4) {
			r := Role{Name: fmt.Sprint("r", i)}
			for range rng.Intn(5) {
				r.Perms = append(r.Perms, Permission{Kind: Kind(1 + rng.Intn(2)), Access: Access(1 + rng.Intn(3)), Prefix: randKey(rng, 2+rng.Intn(2))})
			}
			roles = append(roles, r)
		}
		// The user has some of the roles, and one that does not exist.
		u := User{Name: "u", Roles: []string{"nope"}}
		var perms []Permission
		for _, r := range roles {
			if rng.Intn(3) > 0 {
				u.Roles = append(u.Roles, r.Name)
				perms = append(perms, r.Perms...)
			}
		}
		tb := NewTables([]User{u}, roles)
		for range 50 {
			need := Need{Kind: Kind(1 + rng.Intn(2)), Access: Access(1 + rng.Intn(3)), Key: randKey(rng, maxLen), Span: rng.Intn(4) > 0}
			if need.Span && rng.Intn(4) > 0 {
				need.End = randKey(rng, maxLen)
			}
			want := reference(perms, keys, need)
			err := tb.Check("u", need)
			if (err == nil) != want || err != nil && !errors.Is(err, ErrPermissionDenied) {
				t.Fatalf("round %d: roles %+v, user %+v: Check(%+v) = %v, reference says allowed %v", round, roles, u, need, err, want)
			}
			checked++
			if want {
				allowedCount++
			}
		}
	}
	// Both answers were tested, often.
	if allowedCount < checked/10 || allowedCount > checked*9/10 {
		t.Fatalf("%d of %d needs allowed: the test draws too lopsided a sample", allowedCount, checked)
	}
}

// TestMergeProperty: merging random intervals gives sorted, disjoint, not
// touching intervals that hold exactly the keys the inputs held.
func TestMergeProperty(t *testing.T) {
	rng := rand.New(rand.NewSource(2))
	keys := allKeys()
	for range 500 {
		var in []interval
		for range rng.Intn(6) {
			p := randKey(rng, 2)
			in = append(in, interval{start: p, end: prefixEnd(p)})
		}
		holds := func(ivs []interval, k []byte) bool {
			for _, iv := range ivs {
				if bytes.Compare(k, iv.start) >= 0 && (len(iv.end) == 0 || bytes.Compare(k, iv.end) < 0) {
					return true
				}
			}
			return false
		}
		want := make([]bool, len(keys))
		for i, k := range keys {
			want[i] = holds(in, k)
		}
		out := merge(append([]interval(nil), in...))
		for i := 1; i < len(out); i++ {
			if len(out[i-1].end) == 0 || bytes.Compare(out[i-1].end, out[i].start) >= 0 {
				t.Fatalf("merge(%q) = %q: %d and %d overlap or touch", in, out, i-1, i)
			}
		}
		for i, k := range keys {
			if holds(out, k) != want[i] {
				t.Fatalf("merge(%q) = %q: holds %q %v, want %v", in, out, k, !want[i], want[i])
			}
		}
	}
}

func TestCheckAllocs(t *testing.T) {
	tb := fixture()
	for _, tc := range []struct {
		user string
		need Need
	}{
		{"alice", keyNeed(ReadWrite, "app/x")},
		{"alice", spanNeed(Read, "app/a", "app/b")},
		{"bob", spanNeed(Read, "x", "")},
		{"alice", Need{Kind: KindElection, Access: Write, Key: []byte("svc/a")}},
		{"dave", keyNeed(Write, "x")},
		{RootUser, keyNeed(Write, "x")},
	} {
		var err error
		if n := testing.AllocsPerRun(100, func() { err = tb.Check(tc.user, tc.need) }); n != 0 || err != nil {
			t.Errorf("Check(%q, %+v): %v allocations, %v; want 0, nil", tc.user, tc.need, n, err)
		}
	}
}

// BenchmarkCheck: a user with 100 roles of 20 permissions each, some
// overlapping, asked about keys and spans it may access.
func BenchmarkCheck(b *testing.B) {
	rng := rand.New(rand.NewSource(3))
	var roles []Role
	u := User{Name: "u"}
	for i := range 100 {
		r := Role{Name: fmt.Sprint("r", i)}
		for j := range 20 {
			prefix := fmt.Sprintf("t%02d/%02d/", rng.Intn(60), j)
			r.Perms = append(r.Perms, Permission{Kind: KindKey, Access: Access(1 + rng.Intn(3)), Prefix: []byte(prefix)})
		}
		roles = append(roles, r)
		u.Roles = append(u.Roles, r.Name)
	}
	tb := NewTables([]User{u}, roles)
	var needs []Need
	for _, r := range roles {
		for _, p := range r.Perms {
			needs = append(needs, Need{Kind: KindKey, Access: p.Access, Key: append(bytes.Clone(p.Prefix), "key"...)})
		}
	}
	spans := make([]Need, len(needs))
	for i, n := range needs {
		spans[i] = Need{Kind: KindKey, Access: n.Access, Key: n.Key, Span: true, End: append(bytes.Clone(n.Key), 0)}
	}
	for _, bc := range []struct {
		name  string
		needs []Need
	}{{"key", needs}, {"span", spans}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if err := tb.Check("u", bc.needs[i]); err != nil {
					b.Fatal(err)
				}
				i++
				if i == len(bc.needs) {
					i = 0
				}
			}
		})
	}
}
