package ranges

import (
	"fmt"

	"github.com/flotilla/flotilla/kv"
)

// Lease revocations (kv/lease.go). A lease's owner range revokes or
// expires it and keeps a revocation record; its leader's Store then
// revokes the stubs a split left in the ranges that overlap the lease's
// span at the grant, and once every one of them answered (and each
// answered with the descriptor the meta index gave for it, so that no range
// a split made since escaped), it proposes OpRevoked to forget the record.
// A failure, or a range that changed, leaves the record for the next
// round.

// propagateRevocations runs one round for every range of win this node
// leads. Called by Tick.
func (s *Store) propagateRevocations(win []*Replica) {
	for _, r := range win {
		// A replica found without records is not read again (a scan of
		// its records) until it applied something.
		applied := r.SM.AppliedIndex()
		if applied == r.scan.noRevocationsAt || !s.leads(r.ID) {
			continue
		}
		revs, err := r.SM.Revocations()
		if err != nil {
			s.log.Warn("read lease revocations", "group", r.ID, "err", err)
			continue
		}
		if len(revs) == 0 {
			r.scan.noRevocationsAt = applied
		}
		for _, rev := range revs {
			key := [2]uint64{r.ID, rev.Lease}
			if s.revoking[key] {
				continue
			}
			if s.revoking == nil {
				s.revoking = make(map[[2]uint64]bool)
			}
			s.revoking[key] = true
			owner, rev := r.ID, rev
			s.revokeStubs(owner, rev, func(err error) {
				delete(s.revoking, key)
				if err != nil {
					s.log.Debug("lease stubs not revoked yet", "group", owner, "lease", rev.Lease, "err", err)
				}
			})
		}
	}
}

// revokeStubs revokes lease rev.Lease in every range of its span other
// than owner, then forgets the owner's record.
func (s *Store) revokeStubs(owner uint64, rev kv.Revocation, done func(error)) {
	var targets []kv.Descriptor
	var collect func(at []byte)
	collect = func(at []byte) {
		s.env.Meta(at, 64, callback2(s, func(ds []kv.Descriptor, err error) {
			if err != nil || len(ds) == 0 {
				done(fmt.Errorf("read the meta index: %v", err))
				return
			}
			for _, d := range ds {
				if !d.Overlaps(rev.Start, rev.End) {
					s.revokeEach(owner, rev, targets, done)
					return
				}
				targets = append(targets, d)
				if len(d.End) == 0 {
					s.revokeEach(owner, rev, targets, done)
					return
				}
			}
			collect(ds[len(ds)-1].End)
		}))
	}
	collect(rev.Start)
}

// revokeEach proposes the revoke to each target, then OpRevoked to the
// owner if every target answered as the descriptor the meta index gave.
func (s *Store) revokeEach(owner uint64, rev kv.Revocation, targets []kv.Descriptor, done func(error)) {
	pending, failed := 0, error(nil)
	finish := func() {
		if failed != nil {
			done(failed)
			return
		}
		s.propose(owner, kv.Command{Op: kv.OpRevoked, Lease: rev.Lease}, func(_ kv.Result, err error) { done(err) })
	}
	for _, d := range targets {
		if d.ID == owner {
			continue
		}
		pending++
		d := d
		s.propose(d.ID, kv.Command{Op: kv.OpLeaseRevoke, Lease: rev.Lease}, func(res kv.Result, err error) {
			if err == nil && res.KeyMismatch {
				err = fmt.Errorf("range %d is frozen", d.ID)
			}
			if err == nil {
				cur, derr := kv.DecodeDescriptors(res.Current)
				if derr != nil || len(cur) != 1 || cur[0].Generation != d.Generation {
					err = fmt.Errorf("range %d changed since the meta index recorded it", d.ID)
				}
			}
			if err != nil && failed == nil {
				failed = err
			}
			if pending--; pending == 0 {
				finish()
			}
		})
	}
	if pending == 0 {
		finish()
	}
}
