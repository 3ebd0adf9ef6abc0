package kv

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync/atomic"

	"github.com/flotilla/flotilla/internal/keys"

	"github.com/cockroachdb/pebble/v2"

	"github.com/flotilla/flotilla/multiraft"
)

const (
	kindData    = byte(keys.Data)
	kindApplied = byte(keys.Applied)
	prefixLen   = 9
	snapMagic1  = "FKV1" // data keys only
	snapMagic   = "FKV2" // every kind: kind byte, key, value
)

// snapKinds are the kinds of record a snapshot holds.
// Adding a kind keeps older snapshots readable (they hold none of it);
// a node without the kind refuses a snapshot that has it.
var snapKinds = []byte{kindData, kindLease, kindElection, kindAttached, kindLeaseKeys, byte(keys.Session)}

// StateMachine is the KV state of one group, kept in a Pebble database
// shared with the raft logs and the other groups.
//
// Apply, Snapshot, Restore, Sync and AppliedIndex are called by the
// engine's worker that holds the group, one at a time. Query may run
// concurrently with them: it reads the held writes under their lock and
// Pebble, whose batches become visible to readers all at once.
type StateMachine struct {
	db     *pebble.DB
	group  uint64
	prefix [prefixLen]byte
	upper  [prefixLen]byte

	// applied and revision are written by the owning worker and read by
	// anyone (status pages).
	applied  atomic.Uint64
	revision atomic.Uint64

	// mayAttach: the group may hold a key attached to a lease. While it
	// is false, a put or delete needs no lookup of the key's attachment
	// (the common case of a group never used with leases). Owned by the
	// worker (set by New, Apply and Restore); never wrongly false.
	mayAttach bool

	// dirty holds applied puts and deletes not yet in Pebble (dirty.go).
	dirty dirtySet
	// persisted is the applied index Pebble has. Owned by the worker.
	persisted uint64
	// stage collects one Apply's writes before they are made visible, and
	// decoded its commands (they point into the commands' data); both kept
	// to reuse their arrays. Owned by the worker.
	stage   []dirtyWrite
	decoded []Command

	leases leaseTable // leases as applied, for the leader's expiry loop
	hub    watchHub   // election watchers

	// sessions are the client sessions of the group (session.go). Owned by
	// the worker.
	sessions sessionTable
}

var _ multiraft.StateMachine = (*StateMachine)(nil)

// Option configures New.
type Option func(*StateMachine)

// WithHoldBudget makes the state machine hold applied writes against b,
// shared with others (default: a budget of DefaultHoldBytes of its own).
func WithHoldBudget(b *HoldBudget) Option {
	return func(s *StateMachine) { s.dirty.budget = b }
}

// New returns the state machine of group, loading its applied index and
// revision from db. The caller keeps owning db and closes it after the
// engine stopped.
func New(db *pebble.DB, group uint64, opts ...Option) (*StateMachine, error) {
	s := &StateMachine{db: db, group: group}
	s.sessions.init()
	for _, o := range opts {
		o(s)
	}
	if s.dirty.budget == nil {
		s.dirty.budget = NewHoldBudget(DefaultHoldBytes)
	}
	s.prefix[0] = kindData
	binary.BigEndian.PutUint64(s.prefix[1:], group)
	// The group's keys end where the next group's begin. (Bumping the kind
	// byte instead would take in every later group: Restore's range delete
	// would wipe them, as the simulation found.)
	s.upper = s.prefix
	if end := prefixEnd(s.prefix[:]); len(end) == prefixLen {
		copy(s.upper[:], end)
	} else {
		s.upper[0]++ // the largest group ID: nothing follows it
	}
	leases, err := s.loadLeases(db)
	if err != nil {
		return nil, fmt.Errorf("kv: group %d: load leases: %w", group, err)
	}
	s.setLeases(leases, nil)
	if s.mayAttach, err = s.anyAttached(db); err != nil {
		return nil, fmt.Errorf("kv: group %d: look for attached keys: %w", group, err)
	}
	if err := s.sessions.load(db, group); err != nil {
		return nil, fmt.Errorf("kv: group %d: load sessions: %w", group, err)
	}
	v, closer, err := db.Get(s.metaKey())
	switch {
	case errors.Is(err, pebble.ErrNotFound):
		return s, nil
	case err != nil:
		return nil, fmt.Errorf("kv: group %d: load applied index: %w", group, err)
	}
	defer closer.Close()
	if len(v) != 16 {
		return nil, fmt.Errorf("%w: group %d: applied record of %d bytes", ErrCorrupt, group, len(v))
	}
	s.applied.Store(binary.BigEndian.Uint64(v))
	s.revision.Store(binary.BigEndian.Uint64(v[8:]))
	s.persisted = s.applied.Load()
	return s, nil
}

// Group returns the group ID.
func (s *StateMachine) Group() uint64 { return s.group }

// Revision returns the group's revision: the number of writes applied.
func (s *StateMachine) Revision() uint64 { return s.revision.Load() }

func (s *StateMachine) metaKey() []byte {
	k := make([]byte, prefixLen)
	k[0] = kindApplied
	binary.BigEndian.PutUint64(k[1:], s.group)
	return k
}

func (s *StateMachine) dataKey(key []byte) []byte {
	k := make([]byte, 0, prefixLen+len(key))
	k = append(k, s.prefix[:]...)
	return append(k, key...)
}

func metaValue(applied, revision uint64) []byte {
	v := make([]byte, 16)
	binary.BigEndian.PutUint64(v, applied)
	binary.BigEndian.PutUint64(v[8:], revision)
	return v
}

var _ multiraft.Syncer = (*StateMachine)(nil)

// Sync implements multiraft.Syncer: Apply holds writes in memory or
// commits them without sync (the log can redo them); this writes what is
// held and syncs Pebble's WAL, which then holds every apply so far, before
// the engine truncates the log behind them.
func (s *StateMachine) Sync() error {
	if err := s.flush(); err != nil {
		return err
	}
	if err := s.db.LogData(nil, pebble.Sync); err != nil {
		return fmt.Errorf("kv: group %d: sync: %w", s.group, err)
	}
	return nil
}

// AppliedIndex implements multiraft.StateMachine.
func (s *StateMachine) AppliedIndex() uint64 { return s.applied.Load() }

// getFrom reads key through r (the database or an indexed batch).
func getFrom(r pebble.Reader, k []byte) (found bool, rev uint64, val []byte, err error) {
	v, closer, err := r.Get(k)
	if errors.Is(err, pebble.ErrNotFound) {
		return false, 0, nil, nil
	}
	if err != nil {
		return false, 0, nil, err
	}
	defer closer.Close()
	if len(v) < 8 {
		return false, 0, nil, fmt.Errorf("%w: value of key %x", ErrCorrupt, k)
	}
	return true, binary.BigEndian.Uint64(v), bytes.Clone(v[8:]), nil
}

// flush writes the held writes to Pebble with the applied index, in one
// batch, without sync. Called by the worker.
func (s *StateMachine) flush() error {
	applied := s.applied.Load()
	if s.dirty.empty() && s.persisted == applied {
		return nil
	}
	b := s.db.NewBatch()
	defer b.Close()
	if err := s.dirty.writeTo(b, s.prefix[:]); err != nil {
		return err
	}
	if err := s.sessions.writeTo(b, s.group); err != nil {
		return err
	}
	if err := b.Set(s.metaKey(), metaValue(applied, s.revision.Load()), nil); err != nil {
		return err
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("kv: group %d: commit held writes: %w", s.group, err)
	}
	// Pebble and the held writes agree until reset: readers see the same
	// state through either.
	s.dirty.reset()
	s.persisted = applied
	return nil
}

// Apply implements multiraft.StateMachine. Plain puts and deletes are held
// in memory (dirtySet); any other command first writes what is held, then
// goes in one Pebble batch with its data and the applied index.
func (s *StateMachine) Apply(cmds []multiraft.Command) error {
	if len(cmds) == 0 {
		return nil
	}
	if s.holdable(cmds) {
		return s.applyHeld(cmds)
	}
	if err := s.flush(); err != nil {
		return err
	}
	b := s.db.NewIndexedBatch()
	defer b.Close()
	rev := s.revision.Load()
	var last uint64
	var fx effects
	for i := range cmds {
		c := &cmds[i]
		last = c.Index
		cmd, err := decodeCommand(c.Data)
		if err != nil {
			c.Result = Result{Revision: rev, Err: err.Error()}.encode()
			continue
		}
		if res, skip := s.sessions.check(&cmd); skip {
			c.Result = res
			continue
		}
		k := s.dataKey(cmd.Key)
		var res Result
		switch cmd.Op {
		case OpPut:
			if missing, err := s.leaseMissing(b, cmd.Lease); err != nil {
				return err
			} else if missing {
				res = Result{LeaseMissing: true}
				break
			}
			rev++
			if err := b.Set(k, stored(rev, cmd.Value), nil); err != nil {
				return err
			}
			if err := s.setAttachment(b, cmd.Key, cmd.Lease); err != nil {
				return err
			}
			res = Result{OK: true}
		case OpDelete:
			found, _, _, err := getFrom(b, k)
			if err != nil {
				return err
			}
			if found {
				rev++
				if err := b.Delete(k, nil); err != nil {
					return err
				}
				if err := s.setAttachment(b, cmd.Key, 0); err != nil {
					return err
				}
			}
			res = Result{OK: found}
		case OpCAS:
			if missing, err := s.leaseMissing(b, cmd.Lease); err != nil {
				return err
			} else if missing {
				res = Result{LeaseMissing: true}
				break
			}
			found, curRev, cur, err := getFrom(b, k)
			if err != nil {
				return err
			}
			match := (cmd.ExpectAbsent && !found) || (!cmd.ExpectAbsent && found && bytes.Equal(cur, cmd.Expected))
			if match {
				rev++
				if err := b.Set(k, stored(rev, cmd.Value), nil); err != nil {
					return err
				}
				if err := s.setAttachment(b, cmd.Key, cmd.Lease); err != nil {
					return err
				}
				res = Result{OK: true, Found: true, Current: cmd.Value, CurrentRevision: rev}
			} else {
				res = Result{Found: found, Current: cur, CurrentRevision: curRev}
			}
		default:
			if res, err = s.applyLease(b, cmd, &rev, &fx); err != nil {
				return err
			}
		}
		res.Revision = rev
		c.Result = res.encode()
		s.sessions.record(&cmd, c.Result)
	}
	if err := s.sessions.writeTo(b, s.group); err != nil {
		return err
	}
	if err := b.Set(s.metaKey(), metaValue(last, rev), nil); err != nil {
		return err
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("kv: group %d: commit apply: %w", s.group, err)
	}
	s.persisted = last
	s.applied.Store(last)
	s.revision.Store(rev)
	if fx.leases != nil {
		s.setLeases(nil, fx.leases)
	}
	if fx.elections != nil {
		s.publish(fx.elections, false)
	}
	return nil
}

// holdable reports whether every command is a well-formed put or delete
// that touches no lease, in a group where no key is attached to one: such
// commands only write data keys, and may be held (applyHeld). It leaves
// them decoded in s.decoded.
func (s *StateMachine) holdable(cmds []multiraft.Command) bool {
	if s.mayAttach || s.dirty.budget.limit == 0 {
		return false
	}
	s.decoded = s.decoded[:0]
	for i := range cmds {
		cmd, err := decodeCommand(cmds[i].Data)
		if err != nil || (cmd.Op != OpPut && cmd.Op != OpDelete) || cmd.Lease != 0 {
			return false
		}
		s.decoded = append(s.decoded, cmd)
	}
	return true
}

// applyHeld applies holdable commands into the dirty set, and writes it out
// once it is full.
func (s *StateMachine) applyHeld(cmds []multiraft.Command) error {
	rev := s.revision.Load()
	st := s.stage[:0]
	// Every result here has the same size: one allocation holds them all.
	resSize := Result{}.size()
	results := make([]byte, 0, resSize*len(cmds))
	for i := range cmds {
		c, cmd := &cmds[i], &s.decoded[i]
		if prev, skip := s.sessions.check(cmd); skip {
			c.Result = prev
			continue
		}
		res := Result{OK: true}
		switch cmd.Op {
		case OpPut:
			rev++
			st = append(st, dirtyWrite{key: string(cmd.Key), stored: stored(rev, cmd.Value)})
		case OpDelete:
			found, err := s.heldFound(st, cmd.Key)
			if err != nil {
				return err
			}
			if found {
				rev++
				st = append(st, dirtyWrite{key: string(cmd.Key)})
			}
			res.OK = found
		}
		res.Revision = rev
		n := len(results)
		results = res.appendTo(results)
		c.Result = results[n:len(results):len(results)]
		s.sessions.record(cmd, c.Result)
	}
	s.dirty.apply(st)
	clear(st) // drop the references the arrays would keep
	s.stage = st[:0]
	clear(s.decoded)
	s.revision.Store(rev)
	s.applied.Store(cmds[len(cmds)-1].Index)
	if s.dirty.full() {
		return s.flush()
	}
	return nil
}

// heldFound reports whether key exists as of the writes staged so far:
// the latest of staged, held, then Pebble.
func (s *StateMachine) heldFound(staged []dirtyWrite, key []byte) (bool, error) {
	for i := len(staged) - 1; i >= 0; i-- {
		if staged[i].key == string(key) {
			return staged[i].stored != nil, nil
		}
	}
	if v, ok := s.dirty.lookupLocked(key); ok {
		return v != nil, nil
	}
	found, _, _, err := getFrom(s.db, s.dataKey(key))
	return found, err
}

// leaseMissing reports whether a put or CAS names a lease (not 0) that
// the group does not have.
func (s *StateMachine) leaseMissing(r pebble.Reader, lease uint64) (bool, error) {
	if lease == 0 {
		return false, nil
	}
	ok, err := s.leaseExists(r, lease)
	return !ok, err
}

func stored(rev uint64, value []byte) []byte {
	v := make([]byte, 8+len(value))
	binary.BigEndian.PutUint64(v, rev)
	copy(v[8:], value)
	return v
}

// Query implements multiraft.StateMachine; see EncodeGet and EncodeScan.
func (s *StateMachine) Query(q []byte) ([]byte, error) {
	if len(q) < 1 {
		return nil, ErrBadCommand
	}
	switch QueryKind(q[0]) {
	case QueryGet:
		found, rev, val, err := s.get(q[1:])
		if err != nil {
			return nil, err
		}
		out := make([]byte, 0, 9+len(val))
		if found {
			out = append(out, 1)
		} else {
			out = append(out, 0)
		}
		out = binary.BigEndian.AppendUint64(out, rev)
		return append(out, val...), nil
	case QueryScan:
		r := reader{b: q[1:]}
		limit := r.uvarint()
		if r.err || limit == 0 || limit > MaxScanLimit {
			return nil, fmt.Errorf("%w: scan limit", ErrBadCommand)
		}
		return s.scan(r.b, int(limit))
	case QueryLease:
		return s.queryLease(q[1:])
	case QueryElection:
		return s.queryElection(q[1:])
	case QueryAttached:
		return s.queryAttached(q[1:])
	}
	return nil, fmt.Errorf("%w: query kind %q", ErrBadCommand, q[0])
}

// get reads a data key: the held write if there is one, else Pebble.
func (s *StateMachine) get(key []byte) (found bool, rev uint64, val []byte, err error) {
	v, held := s.dirty.get(key)
	if !held {
		// Anything flushed since the lookup is in Pebble by now: a flush
		// commits before it forgets.
		return getFrom(s.db, s.dataKey(key))
	}
	if v == nil {
		return false, 0, nil, nil
	}
	return true, binary.BigEndian.Uint64(v), bytes.Clone(v[8:]), nil
}

func (s *StateMachine) scan(prefix []byte, limit int) ([]byte, error) {
	lower := s.dataKey(prefix)
	upper := s.upper[:]
	if len(prefix) > 0 {
		upper = prefixEnd(lower)
	}
	held, it, err := s.dirty.view(prefix, func() (*pebble.Iterator, error) {
		return s.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var body []byte
	n := 0
	more := false
	// Merge Pebble's keys with the held writes, which win on a tie.
	for valid := it.First(); ; {
		var key, v []byte
		fromPebble := false
		switch {
		case len(held) > 0 && (!valid || held[0].key <= string(it.Key()[prefixLen:])):
			if valid && held[0].key == string(it.Key()[prefixLen:]) {
				valid = it.Next()
			}
			key, v = []byte(held[0].key), held[0].stored
			held = held[1:]
			if v == nil {
				continue // deleted
			}
		case valid:
			key, v, fromPebble = it.Key()[prefixLen:], it.Value(), true
		default:
			key = nil
		}
		if key == nil {
			break
		}
		if n == limit {
			more = true
			break
		}
		if len(v) < 8 {
			return nil, fmt.Errorf("%w: value of key %x", ErrCorrupt, key)
		}
		body = appendBytes(body, key)
		body = binary.BigEndian.AppendUint64(body, binary.BigEndian.Uint64(v))
		body = appendBytes(body, v[8:])
		n++
		if fromPebble {
			valid = it.Next() // key and v are Pebble's until then
		}
	}
	if err := it.Error(); err != nil {
		return nil, err
	}
	out := make([]byte, 0, 1+binary.MaxVarintLen64+len(body))
	if more {
		out = append(out, 1)
	} else {
		out = append(out, 0)
	}
	out = binary.AppendUvarint(out, uint64(n))
	return append(out, body...), nil
}

// prefixEnd returns the smallest key greater than every key with prefix p,
// or nil when there is none. p always starts with the data kind byte, so
// it is never all 0xff.
func prefixEnd(p []byte) []byte {
	end := bytes.Clone(p)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil
}

// Snapshot implements multiraft.StateMachine: the revision, then every
// key with its stored value.
func (s *StateMachine) Snapshot(w io.Writer) error {
	if err := s.flush(); err != nil {
		return err
	}
	bw := bufio.NewWriterSize(w, 64<<10)
	bw.WriteString(snapMagic)
	var hdr [8]byte
	binary.BigEndian.PutUint64(hdr[:], s.revision.Load())
	bw.Write(hdr[:])
	var buf []byte
	for _, kind := range snapKinds {
		lo, hi := s.kindBounds(kind)
		it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
		if err != nil {
			return err
		}
		for it.First(); it.Valid(); it.Next() {
			buf = append(buf[:0], kind)
			buf = appendBytes(buf, it.Key()[prefixLen:])
			buf = appendBytes(buf, it.Value())
			if _, err := bw.Write(buf); err != nil {
				it.Close()
				return err
			}
		}
		err = it.Error()
		it.Close()
		if err != nil {
			return err
		}
	}
	return bw.Flush()
}

// Restore implements multiraft.StateMachine: the group's data is replaced
// in one batch together with the applied index.
func (s *StateMachine) Restore(r io.Reader, index uint64) error {
	br := bufio.NewReaderSize(r, 64<<10)
	hdr := make([]byte, len(snapMagic)+8)
	if _, err := io.ReadFull(br, hdr); err != nil {
		return fmt.Errorf("%w: snapshot header: %v", ErrCorrupt, err)
	}
	magic := string(hdr[:len(snapMagic)])
	if magic != snapMagic && magic != snapMagic1 {
		return fmt.Errorf("%w: snapshot magic %q", ErrCorrupt, hdr[:len(snapMagic)])
	}
	rev := binary.BigEndian.Uint64(hdr[len(snapMagic):])
	// Out with the held writes first: replacing Pebble's state under them
	// would show readers a mix of the two.
	if err := s.flush(); err != nil {
		return err
	}
	b := s.db.NewIndexedBatch()
	defer b.Close()
	for _, kind := range snapKinds {
		lo, hi := s.kindBounds(kind)
		if err := b.DeleteRange(lo, hi, nil); err != nil {
			return err
		}
	}
	readChunk := func(limit uint64) ([]byte, error) {
		n, err := binary.ReadUvarint(br)
		if err != nil {
			return nil, err
		}
		if n > limit {
			return nil, fmt.Errorf("%w: snapshot record of %d bytes", ErrCorrupt, n)
		}
		v := make([]byte, n)
		_, err = io.ReadFull(br, v)
		return v, err
	}
	for {
		kind := byte(kindData)
		if magic == snapMagic {
			c, err := br.ReadByte()
			if err == io.EOF {
				break
			}
			if err != nil {
				return fmt.Errorf("%w: snapshot kind: %v", ErrCorrupt, err)
			}
			if !slices.Contains(snapKinds, c) {
				return fmt.Errorf("%w: snapshot record kind %q", ErrCorrupt, c)
			}
			kind = c
		}
		k, err := readChunk(MaxKeySize + 8)
		if err == io.EOF && magic == snapMagic1 {
			break
		}
		if err != nil {
			return fmt.Errorf("%w: snapshot key: %v", ErrCorrupt, err)
		}
		limit := uint64(MaxKeySize + MaxValueSize + 8)
		if kind == byte(keys.Session) {
			limit = sessionRecordLimit // a session's results (session.go)
		}
		v, err := readChunk(limit)
		if err != nil {
			return fmt.Errorf("%w: snapshot value: %v", ErrCorrupt, err)
		}
		lo, _ := s.kindBounds(kind)
		if err := b.Set(append(lo, k...), v, nil); err != nil {
			return err
		}
	}
	leases, err := s.loadLeases(b)
	if err != nil {
		return err
	}
	mayAttach, err := s.anyAttached(b)
	if err != nil {
		return err
	}
	if err := s.sessions.load(b, s.group); err != nil {
		return err
	}
	if err := b.Set(s.metaKey(), metaValue(index, rev), nil); err != nil {
		return err
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("kv: group %d: commit restore: %w", s.group, err)
	}
	s.persisted = index
	s.applied.Store(index)
	s.revision.Store(rev)
	s.mayAttach = mayAttach
	s.setLeases(leases, nil)
	s.publish(nil, true)
	return nil
}
