package kv

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// Leases and elections in the state machine.
//
// A lease lives in the range that granted it, its owner: the one whose
// leader decides when it expires (see package election), and which
// proposes OpLeaseExpire. Its ID is unique in the cluster: the granting
// range's ID in the high 32 bits, the range's count of grants in the low
// 32 (LeaseID). Its home key is the start of the owner's span at the
// grant: whatever splits and merges follow, the range that holds the home
// key holds the lease (a split keeps the start in its left half, which
// keeps the lease; a merge takes the right range's lease into the left
// range, which then holds its start). Clients address the lease by it.
//
// A split leaves the right half a stub of each lease: a record that the
// lease exists, so that keys of that half stay attached to it and its
// candidacies there stand, but that the right half never expires. When
// the owner revokes or expires the lease it keeps a revocation record
// ('R') until its leader has revoked every stub in the ranges that
// overlap the lease's span at the grant (package ranges); then the stubs'
// keys are deleted and their candidacies withdrawn. So an election held
// across a split keeps one holder: a candidate in the right half is
// elected after the holder's lease ends, only once the owner says so.
//
// The state machine keeps only what is replicated: the lease's TTL, its
// span, whether it is a stub, and the elections it campaigns in. It keeps
// no deadline.
//
// An election is a queue of candidates, oldest first; the first is the
// leader. Its record holds the fencing token of the leader, the group
// revision at which it became the head of the queue, and the revision of
// the record's last change (ModRevision), which observers use to order
// states.

// Lease limits.
const (
	// MinLeaseTTL is the shortest lease.
	MinLeaseTTL = 100 * time.Millisecond
	// MaxLeaseTTL is the longest lease.
	MaxLeaseTTL = 24 * time.Hour
	// MaxCandidates is the most candidates one election holds.
	MaxCandidates = 10000
)

// LeaseID returns the ID of the seq'th lease granted by range rangeID.
func LeaseID(rangeID, seq uint64) uint64 { return rangeID<<32 | seq&0xffffffff }

// CheckTTL returns an error wrapping ErrInvalid unless ttl is within
// MinLeaseTTL..MaxLeaseTTL.
func CheckTTL(ttl time.Duration) error {
	if ttl < MinLeaseTTL || ttl > MaxLeaseTTL {
		return fmt.Errorf("%w: lease TTL %v outside %v..%v", ErrInvalid, ttl, MinLeaseTTL, MaxLeaseTTL)
	}
	return nil
}

// Candidate is one lease campaigning in an election.
type Candidate struct {
	Lease uint64
	Value []byte
	// Created is the revision at which it joined the queue.
	Created uint64
}

// Election is the replicated state of one election.
type Election struct {
	// ModRevision is the group revision of the record's last change; 0
	// for an election nobody ever campaigned in.
	ModRevision uint64
	// Token is the fencing token of the leader (Candidates[0]): the group
	// revision at which it became leader. Tokens of successive leaders of
	// one election only grow.
	Token uint64
	// Candidates, oldest first.
	Candidates []Candidate
}

// Leader returns the leading candidate, if any.
func (e Election) Leader() (Candidate, bool) {
	if len(e.Candidates) == 0 {
		return Candidate{}, false
	}
	return e.Candidates[0], true
}

func (e Election) encode() []byte {
	b := make([]byte, 0, 32)
	b = binary.BigEndian.AppendUint64(b, e.ModRevision)
	b = binary.BigEndian.AppendUint64(b, e.Token)
	b = binary.AppendUvarint(b, uint64(len(e.Candidates)))
	for _, c := range e.Candidates {
		b = binary.BigEndian.AppendUint64(b, c.Lease)
		b = binary.BigEndian.AppendUint64(b, c.Created)
		b = appendBytes(b, c.Value)
	}
	return b
}

// minCandidate is the size of the smallest candidate of an election
// record: its lease and revision, and its value's length (a byte).
const minCandidate = 8 + 8 + 1

// DecodeElection parses an election record or the answer to an election
// query.
func DecodeElection(b []byte) (Election, error) {
	var e Election
	r := reader{b: b}
	e.ModRevision = r.uint64()
	e.Token = r.uint64()
	n := r.uvarint()
	// A candidate takes at least minCandidate bytes: a count the record
	// cannot hold is refused before anything is allocated for it.
	if r.err || n > MaxCandidates || n > uint64(len(r.b)/minCandidate) {
		return Election{}, fmt.Errorf("%w: election record", ErrCorrupt)
	}
	e.Candidates = make([]Candidate, 0, n)
	for i := uint64(0); i < n; i++ {
		var c Candidate
		c.Lease = r.uint64()
		c.Created = r.uint64()
		c.Value = bytes.Clone(r.bytes())
		if r.err {
			return Election{}, fmt.Errorf("%w: election record", ErrCorrupt)
		}
		e.Candidates = append(e.Candidates, c)
	}
	if len(r.b) != 0 {
		return Election{}, fmt.Errorf("%w: election record trailing bytes", ErrCorrupt)
	}
	return e, nil
}

// leaseRec is the stored form of a lease: TTL in ms(8), flags(1), the
// span of its owner at the grant, then the elections it campaigns in.
type leaseRec struct {
	ttl time.Duration
	// stub: a split's copy; the range does not own the lease (see above).
	stub       bool
	start, end []byte   // the owner's span at the grant; start is the home key
	names      [][]byte // elections it campaigns in
}

func (l leaseRec) encode() []byte {
	b := binary.BigEndian.AppendUint64(nil, uint64(l.ttl/time.Millisecond))
	if l.stub {
		b = append(b, 1)
	} else {
		b = append(b, 0)
	}
	b = appendBytes(b, l.start)
	b = appendBytes(b, l.end)
	for _, n := range l.names {
		b = appendBytes(b, n)
	}
	return b
}

func decodeLease(b []byte) (leaseRec, error) {
	r := reader{b: b}
	// Every lease was granted with a TTL of at most MaxLeaseTTL; a larger
	// count of ms would wrap around when multiplied.
	ms := r.uint64()
	if ms > uint64(MaxLeaseTTL/time.Millisecond) {
		return leaseRec{}, fmt.Errorf("%w: lease record TTL of %d ms", ErrCorrupt, ms)
	}
	l := leaseRec{ttl: time.Duration(ms) * time.Millisecond}
	flags := r.byte()
	l.stub = flags&1 != 0
	l.start, l.end = bytes.Clone(r.bytes()), bytes.Clone(r.bytes())
	for !r.err && len(r.b) > 0 {
		l.names = append(l.names, bytes.Clone(r.bytes()))
	}
	if r.err || flags&^1 != 0 {
		return leaseRec{}, fmt.Errorf("%w: lease record", ErrCorrupt)
	}
	return l, nil
}

// revocationKey is the key of the owner's record that stubs of lease id
// remain to be revoked: → the lease's span (start, end).
func (s *StateMachine) revocationKey(id uint64) []byte {
	return binary.BigEndian.AppendUint64(localKey(kindRevoked, s.id, 8), id)
}

func (s *StateMachine) leaseKey(id uint64) []byte {
	return binary.BigEndian.AppendUint64(localKey(kindLease, s.id, 8), id)
}

func electionKey(name []byte) []byte { return globalKey(kindElection, name) }

func getRaw(r pebble.Reader, k []byte) ([]byte, bool, error) {
	v, closer, err := r.Get(k)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	defer closer.Close()
	return bytes.Clone(v), true, nil
}

func (s *StateMachine) loadLease(r pebble.Reader, id uint64) (leaseRec, bool, error) {
	v, ok, err := getRaw(r, s.leaseKey(id))
	if err != nil || !ok {
		return leaseRec{}, ok, err
	}
	l, err := decodeLease(v)
	return l, err == nil, err
}

func (s *StateMachine) loadElection(r pebble.Reader, name []byte) (Election, error) {
	v, ok, err := getRaw(r, electionKey(name))
	if err != nil || !ok {
		return Election{}, err
	}
	return DecodeElection(v)
}

// effects are what an Apply batch changes outside Pebble, made visible
// once the batch is committed.
type effects struct {
	leases    map[uint64]time.Duration // 0: deleted
	elections map[string]Election
	splits    [][2]Descriptor // splits applied, in order: left, right
	frozen    *frozenRec      // a freeze applied
	merged    *Descriptor     // a merge applied: the merged descriptor
	auth      authSize        // the change of the auth table's size
}

func (f *effects) lease(id uint64, ttl time.Duration) {
	if f.leases == nil {
		f.leases = make(map[uint64]time.Duration)
	}
	f.leases[id] = ttl
}

func (f *effects) election(name []byte, e Election) {
	if f.elections == nil {
		f.elections = make(map[string]Election)
	}
	f.elections[string(name)] = e
}

// applyLease applies one lease or election command through batch b.
func (s *StateMachine) applyLease(b *pebble.Batch, desc *Descriptor, cmd Command, rev *uint64, fx *effects) (Result, error) {
	switch cmd.Op {
	case OpLeaseGrant:
		*rev++
		s.leaseSeq++
		if s.leaseSeq&0xffffffff == 0 {
			s.leaseSeq++ // after 2^32 grants the count wraps; 0 is no lease
		}
		id := LeaseID(s.id, s.leaseSeq)
		rec := leaseRec{ttl: cmd.TTL, start: bytes.Clone(desc.Start), end: bytes.Clone(desc.End)}
		if err := b.Set(s.leaseKey(id), rec.encode(), nil); err != nil {
			return Result{}, err
		}
		fx.lease(id, cmd.TTL)
		// Current carries the lease's home key (see above).
		return Result{OK: true, Lease: id, Found: true, Current: rec.start}, nil

	case OpLeaseRevoke, OpLeaseExpire:
		// Current carries the range's descriptor: a revocation of stubs
		// checks that it reached the ranges it meant (package ranges).
		cur := EncodeDescriptors([]Descriptor{*desc})
		l, found, err := s.loadLease(b, cmd.Lease)
		if err != nil || !found {
			return Result{Current: cur}, err
		}
		if cmd.Op == OpLeaseExpire && l.stub {
			return Result{Current: cur}, nil // only the owner expires a lease
		}
		*rev++
		if err := b.Delete(s.leaseKey(cmd.Lease), nil); err != nil {
			return Result{}, err
		}
		if _, err := s.deleteAttached(b, cmd.Lease, *rev); err != nil {
			return Result{}, err
		}
		if !l.stub && (len(l.end) == 0 || !desc.ContainsSpan(l.start, l.end)) {
			// The owner ends it: the stubs in the rest of its span go too
			// (package ranges revokes them, then OpRevoked forgets this).
			v := appendBytes(appendBytes(nil, l.start), l.end)
			if err := b.Set(s.revocationKey(cmd.Lease), v, nil); err != nil {
				return Result{}, err
			}
		}
		for _, name := range l.names {
			if !desc.Contains(name) {
				// Another range holds it now (a split copied the lease
				// and its names): its own copy of the lease withdraws.
				continue
			}
			e, err := s.loadElection(b, name)
			if err != nil {
				return Result{}, err
			}
			if e, changed := withdraw(e, cmd.Lease, *rev); changed {
				if err := b.Set(electionKey(name), e.encode(), nil); err != nil {
					return Result{}, err
				}
				fx.election(name, e)
			}
		}
		fx.lease(cmd.Lease, 0)
		return Result{OK: true, Current: cur}, nil

	case OpCampaign:
		l, found, err := s.loadLease(b, cmd.Lease)
		if err != nil || !found {
			return Result{}, err
		}
		e, err := s.loadElection(b, cmd.Key)
		if err != nil {
			return Result{}, err
		}
		i := slices.IndexFunc(e.Candidates, func(c Candidate) bool { return c.Lease == cmd.Lease })
		changed := false
		switch {
		case i >= 0 && !bytes.Equal(e.Candidates[i].Value, cmd.Value):
			*rev++
			e.Candidates[i].Value = bytes.Clone(cmd.Value)
			changed = true
		case i < 0 && len(e.Candidates) >= MaxCandidates:
			return Result{Err: fmt.Sprintf("election has %d candidates, the limit", MaxCandidates)}, nil
		case i < 0:
			*rev++
			e.Candidates = append(e.Candidates, Candidate{Lease: cmd.Lease, Value: bytes.Clone(cmd.Value), Created: *rev})
			if len(e.Candidates) == 1 {
				e.Token = *rev
			}
			changed = true
		}
		if changed {
			e.ModRevision = *rev
			if err := b.Set(electionKey(cmd.Key), e.encode(), nil); err != nil {
				return Result{}, err
			}
			fx.election(cmd.Key, e)
		}
		if !slices.ContainsFunc(l.names, func(n []byte) bool { return bytes.Equal(n, cmd.Key) }) {
			l.names = append(l.names, bytes.Clone(cmd.Key))
			if err := b.Set(s.leaseKey(cmd.Lease), l.encode(), nil); err != nil {
				return Result{}, err
			}
		}
		return electionResult(e, cmd.Lease, true), nil

	case OpResign:
		e, err := s.loadElection(b, cmd.Key)
		if err != nil {
			return Result{}, err
		}
		e, changed := withdraw(e, cmd.Lease, *rev+1)
		if changed {
			*rev++
			if err := b.Set(electionKey(cmd.Key), e.encode(), nil); err != nil {
				return Result{}, err
			}
			fx.election(cmd.Key, e)
		}
		return electionResult(e, cmd.Lease, changed), nil
	}
	return Result{}, fmt.Errorf("%w: op %d", ErrBadCommand, cmd.Op)
}

// withdraw removes lease's candidate from e at revision rev; a new head
// gets rev as its token.
func withdraw(e Election, lease, rev uint64) (Election, bool) {
	i := slices.IndexFunc(e.Candidates, func(c Candidate) bool { return c.Lease == lease })
	if i < 0 {
		return e, false
	}
	e.Candidates = slices.Delete(e.Candidates, i, i+1)
	e.ModRevision = rev
	if i == 0 {
		e.Token = 0
		if len(e.Candidates) > 0 {
			e.Token = rev
		}
	}
	return e, true
}

// electionResult describes e to the proposer of an op by lease: Found
// says lease leads; Lease, Token and Current describe the leader.
func electionResult(e Election, lease uint64, ok bool) Result {
	res := Result{OK: ok, CurrentRevision: e.ModRevision}
	if l, has := e.Leader(); has {
		res.Found = l.Lease == lease
		res.Lease, res.Token, res.Current = l.Lease, e.Token, l.Value
	}
	return res
}

// EncodeLeaseQuery returns the query that looks up lease id.
func EncodeLeaseQuery(id uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte{byte(QueryLease)}, id)
}

// DecodeLeaseQuery parses the answer to a lease query.
func DecodeLeaseQuery(b []byte) (found bool, ttl time.Duration, err error) {
	// A TTL over MaxLeaseTTL no lease has; as a count of ms it would wrap
	// around when multiplied.
	if len(b) != 9 || b[0] > 1 || binary.BigEndian.Uint64(b[1:]) > uint64(MaxLeaseTTL/time.Millisecond) {
		return false, 0, fmt.Errorf("%w: lease answer", ErrCorrupt)
	}
	return b[0] == 1, time.Duration(binary.BigEndian.Uint64(b[1:])) * time.Millisecond, nil
}

// EncodeElectionQuery returns the query that reads election name.
func EncodeElectionQuery(name []byte) ([]byte, error) {
	if err := CheckKey(name); err != nil {
		return nil, err
	}
	return append([]byte{byte(QueryElection)}, name...), nil
}

func (s *StateMachine) queryLease(q []byte) ([]byte, error) {
	if len(q) != 8 {
		return nil, fmt.Errorf("%w: lease query", ErrBadCommand)
	}
	l, found, err := s.loadLease(s.db, binary.BigEndian.Uint64(q))
	if err != nil {
		return nil, err
	}
	return encodeLeaseAnswer(found, l.ttl), nil
}

// encodeLeaseAnswer returns the answer to a lease query: found(1), TTL in
// ms(8).
func encodeLeaseAnswer(found bool, ttl time.Duration) []byte {
	out := []byte{0}
	if found {
		out[0] = 1
	}
	return binary.BigEndian.AppendUint64(out, uint64(ttl/time.Millisecond))
}

func (s *StateMachine) queryElection(name []byte) ([]byte, error) {
	e, err := s.loadElection(s.db, name)
	if err != nil {
		return nil, err
	}
	return e.encode(), nil
}

// leaseTable is the in-memory copy of the group's leases (ID → TTL), kept
// for the leader's expiry loop. Written by the owning worker after each
// committed Apply or Restore; read by anyone. mu is a leaf lock.
type leaseTable struct {
	mu      sync.Mutex
	ttl     map[uint64]time.Duration
	version uint64
}

// Leases returns the group's leases (ID → TTL) as applied on this
// replica, and a version that changes whenever they do. With since equal
// to the current version it returns a nil map and the version, so a
// caller that polls copies only after a change.
func (s *StateMachine) Leases(since uint64) (map[uint64]time.Duration, uint64) {
	s.leases.mu.Lock()
	defer s.leases.mu.Unlock()
	if since == s.leases.version && since != 0 {
		return nil, since
	}
	out := make(map[uint64]time.Duration, len(s.leases.ttl))
	for id, ttl := range s.leases.ttl {
		out[id] = ttl
	}
	return out, s.leases.version
}

// setLeases replaces the table with all if replace (nil: no lease), then
// applies changes (a TTL of 0 deletes).
func (s *StateMachine) setLeases(replace bool, all map[uint64]time.Duration, changes map[uint64]time.Duration) {
	s.leases.mu.Lock()
	defer s.leases.mu.Unlock()
	if replace {
		s.leases.ttl = all
	}
	for id, ttl := range changes {
		if ttl == 0 {
			delete(s.leases.ttl, id)
		} else {
			if s.leases.ttl == nil {
				s.leases.ttl = make(map[uint64]time.Duration)
			}
			s.leases.ttl[id] = ttl
		}
	}
	s.leases.version++
}

// loadLeases reads every lease of the group from r.
func (s *StateMachine) loadLeases(r pebble.Reader) (map[uint64]time.Duration, error) {
	lo, hi := localBounds(kindLease, s.id)
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	// Made on the first lease: most ranges have none (an empty map is
	// 48 bytes of every idle replica).
	var out map[uint64]time.Duration
	for it.First(); it.Valid(); it.Next() {
		k, v := it.Key(), it.Value()
		if len(k) != localLen+8 || len(v) < 9 {
			return nil, fmt.Errorf("%w: lease key %x", ErrCorrupt, k)
		}
		if v[8]&1 != 0 {
			continue // a stub: its owner decides when it ends
		}
		if out == nil {
			out = make(map[uint64]time.Duration)
		}
		out[binary.BigEndian.Uint64(k[localLen:])] = time.Duration(binary.BigEndian.Uint64(v)) * time.Millisecond
	}
	return out, it.Error()
}

// Revocation is a lease the range revoked or expired whose stubs in other
// ranges remain to be revoked: those of the ranges that overlap
// [Start, End), the span of its owner at the grant (End empty: to the end
// of the keyspace).
type Revocation struct {
	Lease      uint64
	Start, End []byte
}

// Revocations returns the range's pending revocations, as applied here.
// Safe from any goroutine.
func (s *StateMachine) Revocations() ([]Revocation, error) {
	lo, hi := localBounds(kindRevoked, s.id)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var out []Revocation
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()
		r := reader{b: it.Value()}
		start, end := r.bytes(), r.bytes()
		if len(k) != localLen+8 || r.err || len(r.b) != 0 {
			return nil, fmt.Errorf("%w: revocation record %x", ErrCorrupt, k)
		}
		out = append(out, Revocation{Lease: binary.BigEndian.Uint64(k[localLen:]), Start: bytes.Clone(start), End: bytes.Clone(end)})
	}
	return out, it.Error()
}

// ElectionEvent is one change of an election as this replica applied it.
type ElectionEvent struct {
	Election Election
	// Reset: the replica's state was replaced by a snapshot; changes may
	// have been missed and the watcher should read the state again.
	Reset bool
}

// watchMailbox bounds the events one ElectionWatch holds before it
// collapses them to the latest.
const watchMailbox = 64

// watchHub fans election changes out to watchers without ever waiting.
// Lock order: watchHub.mu < ElectionWatch.mu; both are leaves otherwise.
type watchHub struct {
	mu    sync.Mutex
	names map[string]map[*ElectionWatch]struct{}
}

// ElectionWatch receives the changes of one election applied on this
// replica, in order. It never makes Apply wait: a watcher that falls more
// than 64 events behind gets only the latest, with skipped set.
type ElectionWatch struct {
	sm     *StateMachine
	name   string
	notify chan struct{}
	mu     struct {
		sync.Mutex
		events  []ElectionEvent
		skipped bool
		closed  bool
	}
}

// WatchElection starts watching election name. Close the watch when done.
func (s *StateMachine) WatchElection(name []byte) *ElectionWatch {
	w := &ElectionWatch{sm: s, name: string(name), notify: make(chan struct{}, 1)}
	s.hub.mu.Lock()
	defer s.hub.mu.Unlock()
	if s.hub.names == nil {
		s.hub.names = make(map[string]map[*ElectionWatch]struct{})
	}
	m := s.hub.names[w.name]
	if m == nil {
		m = make(map[*ElectionWatch]struct{})
		s.hub.names[w.name] = m
	}
	m[w] = struct{}{}
	return w
}

// publish delivers committed changes; never blocks.
func (s *StateMachine) publish(changes map[string]Election, reset bool) {
	s.hub.mu.Lock()
	defer s.hub.mu.Unlock()
	if reset {
		for _, m := range s.hub.names {
			for w := range m {
				w.deliver(ElectionEvent{Reset: true})
			}
		}
		return
	}
	names := make([]string, 0, len(changes))
	for n := range changes {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		for w := range s.hub.names[n] {
			w.deliver(ElectionEvent{Election: changes[n]})
		}
	}
}

func (w *ElectionWatch) deliver(ev ElectionEvent) {
	w.mu.Lock()
	w.mu.events = append(w.mu.events, ev)
	if len(w.mu.events) > watchMailbox {
		last := w.mu.events[len(w.mu.events)-1]
		reset := slices.ContainsFunc(w.mu.events, func(e ElectionEvent) bool { return e.Reset })
		w.mu.events = append(w.mu.events[:0], last)
		if reset {
			w.mu.events[0].Reset = true
		}
		w.mu.skipped = true
	}
	w.mu.Unlock()
	select {
	case w.notify <- struct{}{}:
	default:
	}
}

// Next returns the events since the last call, waiting for at least one
// until ctx ends. skipped says intermediate events were dropped.
func (w *ElectionWatch) Next(done <-chan struct{}) (evs []ElectionEvent, skipped bool, ok bool) {
	for {
		w.mu.Lock()
		if len(w.mu.events) > 0 {
			evs, skipped = w.mu.events, w.mu.skipped
			w.mu.events, w.mu.skipped = nil, false
			w.mu.Unlock()
			return evs, skipped, true
		}
		closed := w.mu.closed
		w.mu.Unlock()
		if closed {
			return nil, false, false
		}
		select {
		case <-w.notify:
		case <-done:
			return nil, false, false
		}
	}
}

// Close stops the watch.
func (w *ElectionWatch) Close() {
	w.sm.hub.mu.Lock()
	if m := w.sm.hub.names[w.name]; m != nil {
		delete(m, w)
		if len(m) == 0 {
			delete(w.sm.hub.names, w.name)
		}
	}
	w.sm.hub.mu.Unlock()
	w.mu.Lock()
	w.mu.closed = true
	w.mu.Unlock()
	select {
	case w.notify <- struct{}{}:
	default:
	}
}
