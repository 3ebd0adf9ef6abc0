package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"slices"
	"strings"
)

// Tables is a snapshot of the users and roles, and what each user may do,
// worked out once. It never changes after NewTables or Load return it, so
// any number of goroutines may use it at once; the server builds a new one
// when the records change.
type Tables struct {
	users  []userEntry // sorted by name
	byName map[string]*userEntry
	roles  []Role              // sorted by name
	roleAt map[string]int      // index in roles
	tokens map[[32]byte]string // token hash → user; users sharing a hash are left out
}

// userEntry is a user and what it may do.
type userEntry struct {
	user  User
	admin bool // granted RootRole
	// grants[kind-1][bit] are the intervals of keys (or election names)
	// of that kind on which the user has the access of bit (0: Read, 1:
	// Write), sorted, disjoint and not touching.
	grants [numKinds][2][]interval
}

// NewTables returns the Tables of users and roles. It copies them: the
// caller may change them afterwards. It takes them as given, without the
// checks of Load: of two users (or roles) of the same name the later one
// counts; a permission that is not valid (Permission.Validate) grants
// nothing; a zero TokenHash authenticates no one, and neither does a hash
// that two users share.
func NewTables(users []User, roles []Role) *Tables {
	t := &Tables{byName: make(map[string]*userEntry, len(users)), roleAt: make(map[string]int, len(roles)),
		tokens: make(map[[32]byte]string)}
	for _, r := range roles {
		r = Role{Name: r.Name, Perms: clonePerms(r.Perms)}
		if i, ok := t.roleAt[r.Name]; ok {
			t.roles[i] = r
			continue
		}
		t.roleAt[r.Name] = len(t.roles)
		t.roles = append(t.roles, r)
	}
	slices.SortFunc(t.roles, func(a, b Role) int { return strings.Compare(a.Name, b.Name) })
	for i, r := range t.roles {
		t.roleAt[r.Name] = i
	}
	// Each role's grants once, then each user's as the union of its
	// roles'.
	roleGrants := make([][numKinds][2][]interval, len(t.roles))
	for i, r := range t.roles {
		for k := range numKinds {
			for bit := range 2 {
				roleGrants[i][k][bit] = permIntervals(r.Perms, Kind(k+1), Access(1<<bit))
			}
		}
	}

	last := make(map[string]int, len(users))
	for i, u := range users {
		last[u.Name] = i
	}
	t.users = make([]userEntry, 0, len(last))
	for i, u := range users {
		if last[u.Name] != i {
			continue
		}
		e := userEntry{user: User{Name: u.Name, TokenHash: u.TokenHash, Roles: slices.Clone(u.Roles)}}
		var have [numKinds][2][][]interval
		for _, name := range u.Roles {
			if name == RootRole {
				e.admin = true
			}
			ri, ok := t.roleAt[name]
			if !ok {
				continue
			}
			for k := range numKinds {
				for bit := range 2 {
					have[k][bit] = append(have[k][bit], roleGrants[ri][k][bit])
				}
			}
		}
		if !e.admin {
			for k := range numKinds {
				for bit := range 2 {
					e.grants[k][bit] = union(have[k][bit])
				}
			}
		}
		t.users = append(t.users, e)
	}
	slices.SortFunc(t.users, func(a, b userEntry) int { return strings.Compare(a.user.Name, b.user.Name) })
	shared := make(map[[32]byte]bool)
	for i := range t.users {
		e := &t.users[i]
		t.byName[e.user.Name] = e
		h := e.user.TokenHash
		if h == ([32]byte{}) || shared[h] {
			continue
		}
		if _, ok := t.tokens[h]; ok {
			delete(t.tokens, h)
			shared[h] = true
			continue
		}
		t.tokens[h] = e.user.Name
	}
	return t
}

// Load returns the Tables of the records that records yields (an
// iter.Seq2 of table key and record value, as the server's table holds
// them: keys from UserKey and RoleKey, values from EncodeUser and
// EncodeRole). The keys and values need only stay valid during the call
// that yields them: Load copies what it keeps. A key that is not a table
// key, a record that does not decode, a user's or a role's record under
// the other's key or under another name, or a key yielded twice is an
// error wrapping ErrInvalid that names the key; Load then stops the
// iteration and returns no Tables.
func Load(records func(yield func(key, value []byte) bool)) (*Tables, error) {
	var users []User
	var roles []Role
	seen := make(map[string]bool)
	var err error
	records(func(k, v []byte) bool {
		if err = loadRecord(k, v, seen, &users, &roles); err != nil {
			err = invalid(fmt.Errorf("record %q: %w", k, err))
			return false
		}
		return true
	})
	if err != nil {
		return nil, err
	}
	return NewTables(users, roles), nil
}

// loadRecord decodes one record of Load.
func loadRecord(k, v []byte, seen map[string]bool, users *[]User, roles *[]Role) error {
	isUser, name, err := parseKey(k)
	if err != nil {
		return err
	}
	if seen[string(k)] {
		return fmt.Errorf("key yielded twice")
	}
	seen[string(k)] = true
	var recName string
	if isUser {
		u, err := decodeUser(v)
		if err != nil {
			return err
		}
		*users = append(*users, u)
		recName = u.Name
	} else {
		r, err := decodeRole(v)
		if err != nil {
			return err
		}
		*roles = append(*roles, r)
		recName = r.Name
	}
	if recName != name {
		return fmt.Errorf("record of %q under the key of %q", recName, name)
	}
	return nil
}

// HasUser reports whether user name exists (RootUser always does). It
// allocates nothing: for the request path.
func (t *Tables) HasUser(name string) bool {
	_, ok := t.byName[name]
	return ok || name == RootUser
}

// IsAdmin reports whether user name may manage users and roles: RootUser,
// or a user granted RootRole. It allocates nothing.
func (t *Tables) IsAdmin(name string) bool {
	if name == RootUser {
		return true
	}
	e, ok := t.byName[name]
	return ok && e.admin
}

// User returns the user named name, and whether it is in t (RootUser is
// only if it has a record). The result is a copy the caller owns.
func (t *Tables) User(name string) (User, bool) {
	e, ok := t.byName[name]
	if !ok {
		return User{}, false
	}
	return cloneUser(e.user), true
}

// Role returns the role named name, and whether it is in t. The result
// is a copy the caller owns.
func (t *Tables) Role(name string) (Role, bool) {
	i, ok := t.roleAt[name]
	if !ok {
		return Role{}, false
	}
	return cloneRole(t.roles[i]), true
}

// Users returns every user of t, sorted by name. The result is a copy
// the caller owns.
func (t *Tables) Users() []User {
	us := make([]User, len(t.users))
	for i := range t.users {
		us[i] = cloneUser(t.users[i].user)
	}
	return us
}

// Roles returns every role of t, sorted by name. The result is a copy the
// caller owns.
func (t *Tables) Roles() []Role {
	rs := make([]Role, len(t.roles))
	for i, r := range t.roles {
		rs[i] = cloneRole(r)
	}
	return rs
}

func cloneUser(u User) User {
	u.Roles = slices.Clone(u.Roles)
	return u
}

func cloneRole(r Role) Role {
	r.Perms = clonePerms(r.Perms)
	return r
}

func clonePerms(ps []Permission) []Permission {
	ps = slices.Clone(ps)
	for i := range ps {
		ps[i].Prefix = slices.Clone(ps[i].Prefix)
	}
	return ps
}

// HashToken returns the SHA-256 hash of token: what a user's record keeps
// (User.TokenHash) in place of the token.
func HashToken(token string) [32]byte { return sha256.Sum256([]byte(token)) }

// NewToken returns a new token: 32 bytes from crypto/rand, in base64url
// without padding (43 characters). It returns an error only if the system's
// source of randomness fails.
func NewToken() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("auth: new token: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// UserByToken returns the name of the user whose token is token, and
// whether there is one. An empty token matches no one.
//
// The lookup is by the token's hash in a map, whose time may depend on
// that hash. That tells a prober about hashes of the tokens it sends, and
// nothing about a stored token's hash it did not already have: to find a
// token it must still guess 256 random bits. The hash found is then
// compared in constant time all the same.
func (t *Tables) UserByToken(token string) (string, bool) {
	if token == "" {
		return "", false
	}
	h := HashToken(token)
	name, ok := t.tokens[h]
	if !ok {
		return "", false
	}
	stored := t.byName[name].user.TokenHash
	if subtle.ConstantTimeCompare(stored[:], h[:]) != 1 {
		return "", false
	}
	return name, true
}
