// Package auth is Flotilla's authorisation model: users, roles and
// permissions, the binary records they are stored as, and the check that
// decides whether a user may make a request. It does no I/O: the server
// stores the records in a replicated table, builds a Tables from them, and
// asks it about every request.
//
// The model is etcd's role-based access control, with prefixes in place
// of etcd's key ranges:
//
//   - A Permission grants read, write or both on every key (KindKey) or
//     every election name (KindElection) that starts with its Prefix. An
//     empty Prefix covers every key, or every election, of its kind.
//   - A Role is a named list of permissions. A role grants the union of
//     its permissions; a role that a user names but that does not exist
//     grants nothing.
//   - A User is a name, the roles granted to it, and the SHA-256 hash of
//     its token. A user may do what the union of its roles grants, and
//     nothing else: a request that needs several keys (a span) is allowed
//     only if the permissions cover every key of it.
//   - The user RootUser may do everything, whether or not it is in the
//     tables. The role RootRole grants everything (whatever permissions a
//     stored role of that name lists, and whether or not it is stored):
//     granting it to a user makes the user an administrator.
//
// Users authenticate with a bearer token (or with a client certificate,
// which the server checks; names starting with "node." are kept for the
// certificates of nodes). A token is 256 random bits (NewToken), not a
// password a person chose, so a plain SHA-256 of it is as hard to reverse
// as the token is to guess: the tables keep only the hash (no salt or slow
// hash is needed), and a stolen copy of them lets no one in.
//
// A Tables is built once from all the records and never changes; the
// server builds a new one when the table changes. Building it does the
// work that Check would otherwise repeat: each user's permissions are
// merged into sorted, disjoint intervals of keys, one list per kind and
// access, so that Check is a map lookup and a binary search, and does not
// allocate when it allows.
package auth

import (
	"errors"
	"fmt"
)

var (
	// ErrPermissionDenied is wrapped by the error of Check when the user
	// may not do what it asks; the message names the user and the
	// missing permission.
	ErrPermissionDenied = errors.New("auth: permission denied")
	// ErrInvalid is wrapped by the errors about bad input: a bad name, a
	// bad permission, a malformed record or table key, a bad Need.
	ErrInvalid = errors.New("auth: invalid")
)

// RootUser is the name of the user that may do everything. It need not be
// in the tables: Check allows it whatever they say. It authenticates like
// any other user, so it needs a record for its token.
const RootUser = "root"

// RootRole is the name of the role that grants everything: a user granted
// it may do whatever RootUser may. It grants that whether or not a role
// record of that name exists, and whatever permissions such a record
// lists.
const RootRole = "root"

// Access is what a permission allows, or what a request needs: reading,
// writing, or both. Valid values are Read, Write and ReadWrite.
type Access uint8

// The kinds of access.
const (
	Read      Access = 1
	Write     Access = 2
	ReadWrite        = Read | Write
)

// String returns "read", "write" or "readwrite", or "access(N)" for an
// invalid value.
func (a Access) String() string {
	switch a {
	case Read:
		return "read"
	case Write:
		return "write"
	case ReadWrite:
		return "readwrite"
	}
	return fmt.Sprintf("access(%d)", uint8(a))
}

func (a Access) valid() bool { return a >= Read && a <= ReadWrite }

// Kind is what a permission is about: keys of the keyspace, or the names
// of elections. The two are separate: a permission on keys grants nothing
// on elections of the same names, and the reverse.
type Kind uint8

// The kinds of permission.
const (
	KindKey      Kind = 1
	KindElection Kind = 2
)

// numKinds is the number of valid kinds (1..numKinds).
const numKinds = 2

// String returns "key" or "election", or "kind(N)" for an invalid value.
func (k Kind) String() string {
	switch k {
	case KindKey:
		return "key"
	case KindElection:
		return "election"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

func (k Kind) valid() bool { return k >= KindKey && k <= numKinds }

// maxPrefix is the longest Prefix a permission may have, in bytes.
const maxPrefix = 4096

// maxName is the longest name of a user or a role, in bytes.
const maxName = 64

// maxUserRoles is the most roles a user may be granted.
const maxUserRoles = 1000

// maxRolePerms is the most permissions a role may list.
const maxRolePerms = 10000

// nodePrefix starts the names kept for the certificates of nodes.
const nodePrefix = "node."

// Permission grants Access on every key (or election name) of its Kind
// that starts with Prefix. An empty Prefix covers everything of its Kind.
type Permission struct {
	Kind   Kind
	Prefix []byte
	Access Access
}

// Validate returns nil if p is a permission a role may hold: its Kind is
// KindKey or KindElection, its Access is Read, Write or ReadWrite, and its
// Prefix is at most 4096 bytes. Otherwise it returns an error
// wrapping ErrInvalid that says what is wrong.
func (p Permission) Validate() error {
	if err := p.validate(); err != nil {
		return invalid(err)
	}
	return nil
}

func (p Permission) validate() error {
	switch {
	case !p.Kind.valid():
		return fmt.Errorf("permission of unknown %v", p.Kind)
	case !p.Access.valid():
		return fmt.Errorf("permission with unknown %v", p.Access)
	case len(p.Prefix) > maxPrefix:
		return fmt.Errorf("permission prefix of %d bytes (at most %d)", len(p.Prefix), maxPrefix)
	}
	return nil
}

// Role is a named set of permissions. Name is a valid name (ValidName);
// Perms are valid (Permission.Validate) and at most 10,000. The
// order of Perms is kept, and a permission may repeat (it grants nothing
// more).
type Role struct {
	Name  string
	Perms []Permission
}

// User is a user: its name (ValidName), the SHA-256 hash of its token
// (HashToken; zero for a user without a token, who cannot authenticate by
// token) and the names of the roles granted to it (valid names, at most
// 1,000). Its records keep Roles sorted and without repeats.
type User struct {
	Name      string
	TokenHash [32]byte
	Roles     []string
}

// ValidName returns nil if name may name a user or a role: 1 to 64
// characters from A-Z, a-z, 0-9, '.', '_' and '-', not starting with
// "node." (kept for the certificates of nodes). Otherwise it returns an
// error wrapping ErrInvalid that says what is wrong.
func ValidName(name string) error {
	if err := validName(name); err != nil {
		return invalid(err)
	}
	return nil
}

func validName(name string) error {
	if len(name) == 0 || len(name) > maxName {
		return fmt.Errorf("name %q: %d bytes long, must be 1 to %d", name, len(name), maxName)
	}
	for i := range len(name) {
		c := name[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("name %q: character %q not allowed (A-Z, a-z, 0-9, '.', '_', '-')", name, c)
		}
	}
	if len(name) >= len(nodePrefix) && name[:len(nodePrefix)] == nodePrefix {
		return fmt.Errorf("name %q: names starting with %q are kept for nodes", name, nodePrefix)
	}
	return nil
}

// invalid returns err's reason as an error wrapping ErrInvalid:
// "auth: invalid: reason".
func invalid(err error) error { return fmt.Errorf("%w: %s", ErrInvalid, err.Error()) }

// Table keys: the server stores every record under one of these in a
// single table.
const (
	userKeyPrefix = "u/"
	roleKeyPrefix = "r/"
)

// UserKey returns the table key of the record of the user named name:
// "u/" + name. It does not check the name. The caller owns the result.
func UserKey(name string) []byte { return append([]byte(userKeyPrefix), name...) }

// RoleKey returns the table key of the record of the role named name:
// "r/" + name. It does not check the name. The caller owns the result.
func RoleKey(name string) []byte { return append([]byte(roleKeyPrefix), name...) }

// ParseKey parses a table key made by UserKey or RoleKey: isUser tells
// which, name is the name (a copy: it does not alias k). A key of neither
// shape, or with a name that is not valid, is an error wrapping ErrInvalid.
func ParseKey(k []byte) (isUser bool, name string, err error) {
	isUser, name, err = parseKey(k)
	if err != nil {
		return false, "", invalid(err)
	}
	return isUser, name, nil
}

func parseKey(k []byte) (isUser bool, name string, err error) {
	switch {
	case len(k) >= 2 && string(k[:2]) == userKeyPrefix:
		isUser = true
	case len(k) >= 2 && string(k[:2]) == roleKeyPrefix:
	default:
		return false, "", fmt.Errorf("table key %q: neither %q nor %q and a name", k, userKeyPrefix, roleKeyPrefix)
	}
	name = string(k[2:])
	if err := validName(name); err != nil {
		return false, "", fmt.Errorf("table key %q: %w", k, err)
	}
	return isUser, name, nil
}
