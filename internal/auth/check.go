package auth

import (
	"bytes"
	"fmt"
	"slices"
)

// Need is what a request needs: Access on a key (or election name) of
// Kind, or on every key of a span.
type Need struct {
	Kind   Kind
	Access Access // Read, Write or ReadWrite (both)
	// Key is the key or election name when !Span, and the first of the
	// span when Span. Empty with Span: from the start of the keyspace.
	Key []byte
	// Span says that the request covers every key of [Key, End).
	Span bool
	// End is the end of the span, exclusive; empty: to the end of the
	// keyspace. A span whose End is not empty and not above Key holds no
	// key; Check asks for the permission on Key for it, as if !Span: a
	// request that names a key needs access to it even if it touches
	// nothing.
	End []byte
}

// Check returns nil if user may do what need says, and otherwise an
// error wrapping ErrPermissionDenied that names the user and the missing
// permission, such as `auth: permission denied: user "alice" has no read
// permission on key "secret/x"`. RootUser and users granted RootRole may
// do everything; a user not in t may do nothing; any other user may do
// what the union of its roles' permissions allows (see Need). A need of an
// invalid Kind or Access is an error wrapping ErrInvalid, for everyone but
// RootUser. Check does not allocate when it returns nil.
func (t *Tables) Check(user string, need Need) error {
	if user == RootUser {
		return nil
	}
	if !need.Kind.valid() || !need.Access.valid() {
		return invalid(fmt.Errorf("need of %v and %v", need.Kind, need.Access))
	}
	e, ok := t.byName[user]
	if !ok {
		return fmt.Errorf("%w: user %q does not exist", ErrPermissionDenied, user)
	}
	if e.admin {
		return nil
	}
	var missing Access
	for bit := range 2 {
		a := Access(1 << bit)
		if need.Access&a != 0 && !covers(e.grants[need.Kind-1][bit], need) {
			missing |= a
		}
	}
	if missing == 0 {
		return nil
	}
	return fmt.Errorf("%w: user %q has no %v permission on %s", ErrPermissionDenied, user, missing, describe(need))
}

// describe names what need is about, for an error.
func describe(need Need) string {
	noun := "key"
	if need.Kind == KindElection {
		noun = "election"
	}
	if !need.Span {
		return fmt.Sprintf("%s %q", noun, need.Key)
	}
	if need.Kind == KindElection {
		noun = "election span"
	} else {
		noun = "span"
	}
	if len(need.End) == 0 {
		return fmt.Sprintf("%s [%q, end of keyspace)", noun, need.Key)
	}
	if emptySpan(need) {
		return fmt.Sprintf("%s [%q, %q) (empty: the permission on its start is needed)", noun, need.Key, need.End)
	}
	return fmt.Sprintf("%s [%q, %q)", noun, need.Key, need.End)
}

// emptySpan reports whether need is a span that holds no key.
func emptySpan(need Need) bool {
	return need.Span && len(need.End) > 0 && bytes.Compare(need.End, need.Key) <= 0
}

// interval is the keys [start, end); an empty end is no end: every key
// from start on. (A bounded interval's end is never empty: it is above
// start.)
type interval struct {
	start, end []byte
}

// covers reports whether the intervals ivs (sorted, disjoint, not
// touching) hold need's key, or every key of its span. As they do not
// touch, a span is covered only if one interval holds all of it.
func covers(ivs []interval, need Need) bool {
	// The last interval starting at or before Key: the only one that can
	// hold it.
	lo, hi := 0, len(ivs)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if bytes.Compare(ivs[m].start, need.Key) <= 0 {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo == 0 {
		return false
	}
	iv := ivs[lo-1]
	if len(iv.end) == 0 {
		return true
	}
	if !need.Span || emptySpan(need) {
		return bytes.Compare(need.Key, iv.end) < 0
	}
	// A bounded interval cannot hold a span to the end of the keyspace.
	// Otherwise Key < End <= iv.end.
	return len(need.End) > 0 && bytes.Compare(need.End, iv.end) <= 0
}

// prefixEnd returns the first key after every key starting with prefix,
// or nil if there is none: prefix is empty, or all 0xff bytes.
func prefixEnd(prefix []byte) []byte {
	for i := len(prefix) - 1; i >= 0; i-- {
		if prefix[i] != 0xff {
			end := slices.Clone(prefix[:i+1])
			end[i]++
			return end
		}
	}
	return nil
}

// permIntervals returns the intervals of the keys on which perms grant
// access (one bit) of kind, merged (see union). Invalid permissions grant
// nothing.
func permIntervals(perms []Permission, kind Kind, access Access) []interval {
	var ivs []interval
	for _, p := range perms {
		if p.Kind == kind && p.Access&access != 0 && p.validate() == nil {
			ivs = append(ivs, interval{start: p.Prefix, end: prefixEnd(p.Prefix)})
		}
	}
	return merge(ivs)
}

// union returns the union of lists of intervals, merged.
func union(lists [][]interval) []interval {
	switch len(lists) {
	case 0:
		return nil
	case 1:
		return lists[0]
	}
	return merge(slices.Concat(lists...))
}

// merge sorts ivs and merges those that overlap or touch, in place: the
// result is sorted, disjoint and not touching (between two intervals
// there is at least one key that neither holds). Nil if ivs is empty.
func merge(ivs []interval) []interval {
	if len(ivs) == 0 {
		return nil
	}
	slices.SortFunc(ivs, func(a, b interval) int { return bytes.Compare(a.start, b.start) })
	out := ivs[:1]
	for _, iv := range ivs[1:] {
		last := &out[len(out)-1]
		switch {
		case len(last.end) == 0:
			// last holds everything from its start on.
		case bytes.Compare(iv.start, last.end) <= 0:
			if len(iv.end) == 0 || bytes.Compare(iv.end, last.end) > 0 {
				last.end = iv.end
			}
		default:
			out = append(out, iv)
		}
	}
	return slices.Clip(out)
}
