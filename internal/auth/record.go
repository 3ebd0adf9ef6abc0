package auth

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Records. Every record starts with its version, then a byte that says
// what it records; integers are big-endian and of fixed width, so every
// value has exactly one encoding and a decoder can be strict:
//
//	user: version(1)=1 'u' nameLen(1) name hash(32) nRoles(2) {nameLen(1) name}*nRoles
//	role: version(1)=1 'r' nameLen(1) name nPerms(2) {kind(1) access(1) prefixLen(2) prefix}*nPerms
//
// A user's roles are in ascending order, without repeats.
const (
	recordVersion = 1
	tagUser       = 'u'
	tagRole       = 'r'
)

// Sizes of the parts of a record, for the checks of counts against what
// the input can hold.
const (
	headerLen   = 2 // version and tag
	minNameLen  = 2 // length byte and one character
	permHeadLen = 4 // kind, access, prefix length
)

// EncodeUser returns the record of u, with u.Roles sorted and without
// repeats (u itself is not changed). It returns an error wrapping
// ErrInvalid if u's name or a role's name is not valid (ValidName), or if
// u has more than 1,000 distinct roles. The caller owns the result.
func EncodeUser(u User) ([]byte, error) {
	if err := validName(u.Name); err != nil {
		return nil, invalid(fmt.Errorf("user: %w", err))
	}
	roles := slices.Compact(slices.Sorted(slices.Values(u.Roles)))
	if len(roles) > maxUserRoles {
		return nil, invalid(fmt.Errorf("user %q: %d roles (at most %d)", u.Name, len(roles), maxUserRoles))
	}
	n := headerLen + 1 + len(u.Name) + len(u.TokenHash) + 2
	for _, r := range roles {
		if err := validName(r); err != nil {
			return nil, invalid(fmt.Errorf("user %q: role: %w", u.Name, err))
		}
		n += 1 + len(r)
	}
	b := make([]byte, 0, n)
	b = append(b, recordVersion, tagUser)
	b = appendName(b, u.Name)
	b = append(b, u.TokenHash[:]...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(roles)))
	for _, r := range roles {
		b = appendName(b, r)
	}
	return b, nil
}

// EncodeRole returns the record of r. It returns an error wrapping
// ErrInvalid if r's name is not valid (ValidName), a permission is not
// (Permission.Validate), or r has more than 10,000 permissions. The caller
// owns the result.
func EncodeRole(r Role) ([]byte, error) {
	if err := validName(r.Name); err != nil {
		return nil, invalid(fmt.Errorf("role: %w", err))
	}
	if len(r.Perms) > maxRolePerms {
		return nil, invalid(fmt.Errorf("role %q: %d permissions (at most %d)", r.Name, len(r.Perms), maxRolePerms))
	}
	n := headerLen + 1 + len(r.Name) + 2
	for i, p := range r.Perms {
		if err := p.validate(); err != nil {
			return nil, invalid(fmt.Errorf("role %q: permission %d: %w", r.Name, i, err))
		}
		n += permHeadLen + len(p.Prefix)
	}
	b := make([]byte, 0, n)
	b = append(b, recordVersion, tagRole)
	b = appendName(b, r.Name)
	b = binary.BigEndian.AppendUint16(b, uint16(len(r.Perms)))
	for _, p := range r.Perms {
		b = append(b, byte(p.Kind), byte(p.Access))
		b = binary.BigEndian.AppendUint16(b, uint16(len(p.Prefix)))
		b = append(b, p.Prefix...)
	}
	return b, nil
}

// appendName appends a valid name (at most 64 bytes) and its length.
func appendName(b []byte, name string) []byte {
	return append(append(b, byte(len(name))), name...)
}

// DecodeUser decodes a record made by EncodeUser. The result does not
// alias b; Roles is nil when the user has none. It returns an error
// wrapping ErrInvalid if b is not such a record: an unknown version, a
// role's record, a bad name, more than 1,000 roles or roles out of order
// or repeated, a record cut short or followed by more bytes.
func DecodeUser(b []byte) (User, error) {
	u, err := decodeUser(b)
	if err != nil {
		return User{}, invalid(fmt.Errorf("user record: %w", err))
	}
	return u, nil
}

// DecodeRole decodes a record made by EncodeRole. The result does not
// alias b; Perms is nil when the role has none, and so is a Prefix when
// empty. It returns an error wrapping ErrInvalid if b is not such a
// record: an unknown version, a user's record, a bad name or permission,
// more than 10,000 permissions, a record cut short or followed by more
// bytes.
func DecodeRole(b []byte) (Role, error) {
	r, err := decodeRole(b)
	if err != nil {
		return Role{}, invalid(fmt.Errorf("role record: %w", err))
	}
	return r, nil
}

var errShort = errors.New("cut short")

// reader reads a record, failing with errShort when it runs out.
type reader struct{ b []byte }

func (r *reader) bytes(n int) ([]byte, error) {
	if len(r.b) < n {
		return nil, errShort
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v, nil
}

func (r *reader) byte() (byte, error) {
	v, err := r.bytes(1)
	if err != nil {
		return 0, err
	}
	return v[0], nil
}

func (r *reader) uint16() (int, error) {
	v, err := r.bytes(2)
	if err != nil {
		return 0, err
	}
	return int(binary.BigEndian.Uint16(v)), nil
}

// header reads the version, checks the tag, and reads the name of what
// the record records.
func (r *reader) header(tag byte) (string, error) {
	v, err := r.byte()
	if err != nil {
		return "", err
	}
	if v != recordVersion {
		return "", fmt.Errorf("unknown version %d", v)
	}
	t, err := r.byte()
	if err != nil {
		return "", err
	}
	if t != tag {
		return "", fmt.Errorf("record of kind %q, want %q", t, tag)
	}
	return r.name()
}

// name reads a valid name (a copy).
func (r *reader) name() (string, error) {
	n, err := r.byte()
	if err != nil {
		return "", err
	}
	v, err := r.bytes(int(n))
	if err != nil {
		return "", err
	}
	if err := validName(string(v)); err != nil {
		return "", err
	}
	return string(v), nil
}

// count reads a count of at most limit items of at least minSize bytes
// each, refusing one that the rest of the record cannot hold before
// anything is allocated for it.
func (r *reader) count(what string, limit, minSize int) (int, error) {
	n, err := r.uint16()
	if err != nil {
		return 0, err
	}
	if n > limit {
		return 0, fmt.Errorf("%d %s (at most %d)", n, what, limit)
	}
	if n*minSize > len(r.b) {
		return 0, fmt.Errorf("%d %s in %d bytes: %w", n, what, len(r.b), errShort)
	}
	return n, nil
}

// end checks that the whole record was read.
func (r *reader) end() error {
	if len(r.b) > 0 {
		return fmt.Errorf("%d bytes after the record", len(r.b))
	}
	return nil
}

func decodeUser(b []byte) (User, error) {
	r := reader{b}
	var u User
	var err error
	if u.Name, err = r.header(tagUser); err != nil {
		return User{}, err
	}
	hash, err := r.bytes(len(u.TokenHash))
	if err != nil {
		return User{}, err
	}
	copy(u.TokenHash[:], hash)
	n, err := r.count("roles", maxUserRoles, minNameLen)
	if err != nil {
		return User{}, err
	}
	if n > 0 {
		u.Roles = make([]string, n)
	}
	for i := range u.Roles {
		if u.Roles[i], err = r.name(); err != nil {
			return User{}, fmt.Errorf("user %q: role %d: %w", u.Name, i, err)
		}
		if i > 0 && strings.Compare(u.Roles[i-1], u.Roles[i]) >= 0 {
			return User{}, fmt.Errorf("user %q: role %q after %q: roles out of order or repeated", u.Name, u.Roles[i], u.Roles[i-1])
		}
	}
	return u, r.end()
}

func decodeRole(b []byte) (Role, error) {
	r := reader{b}
	var role Role
	var err error
	if role.Name, err = r.header(tagRole); err != nil {
		return Role{}, err
	}
	n, err := r.count("permissions", maxRolePerms, permHeadLen)
	if err != nil {
		return Role{}, err
	}
	if n == 0 {
		return role, r.end()
	}
	// One copy of the rest of the record holds every prefix: the result
	// does not alias b, and costs two allocations however many
	// permissions there are.
	r.b = append([]byte(nil), r.b...)
	role.Perms = make([]Permission, n)
	for i := range role.Perms {
		p := &role.Perms[i]
		head, err := r.bytes(permHeadLen)
		if err != nil {
			return Role{}, err
		}
		p.Kind, p.Access = Kind(head[0]), Access(head[1])
		if p.Prefix, err = r.bytes(int(binary.BigEndian.Uint16(head[2:]))); err != nil {
			return Role{}, err
		}
		if len(p.Prefix) == 0 {
			p.Prefix = nil
		}
		if err := p.validate(); err != nil {
			return Role{}, fmt.Errorf("role %q: permission %d: %w", role.Name, i, err)
		}
	}
	return role, r.end()
}
