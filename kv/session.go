package kv

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"slices"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// Client sessions: exactly-once writes (the Raft dissertation, §6.3).
//
// A client gives every write a session (a random ID of its own) and a
// sequence number, and tells with each write the lowest sequence number it
// has not yet had answered in that group (Acked). The state machine of the
// group keeps, per session, the results of the writes it applied whose
// numbers are not yet acknowledged. A write whose number it has seen is not
// applied again: it gets the first result. So a client may resend a write
// after a timeout, a lost connection or a leader change, and a duplicated,
// delayed or forwarded copy cannot apply twice.
//
//   - A session exists in a group once a write of it that carried Register
//     has applied there. A client sets Register until it has had an answer
//     from the group. A write of a session the group does not have (it
//     expired) is refused unapplied (Result.SessionUnknown); the client
//     sends it again with Register.
//   - A write numbered below the session's floor (every write below was
//     answered, or given up by the client) is refused unapplied
//     (Result.SessionStale): nobody waits for it, and applying a copy the
//     client gave up on would be a late second effect.
//   - The group's clock is the latest proposer time its commands carried
//     (Command.Time, stamped by the leader that proposed them), never going
//     back. A session with no write for SessionTTL by that clock expires, in
//     the same apply on every replica: all of this is a function of the log.
//     Clients never retry a write past SessionTTL/2 after they first sent it
//     (client.Config.RequestTimeout is capped so), so a retry cannot outlive
//     its session unless the clocks of the proposing leaders are apart by
//     more than that.
//
// Sessions are replicated state: stored under keys.Session with the group's
// applied index (the same Pebble batch), in snapshots, and reloaded on
// restart. The record of session 0 holds the group's clock.

// SessionTTL is how long a session lives in a group after its last write
// there, by the group's clock.
const SessionTTL = 10 * time.Minute

// Bounds on what sessions keep, so that a client cannot grow a group's
// memory, its snapshots or its restart without end. Past a bound the oldest
// goes: a session's oldest results (their retries are then refused as
// stale, and the client reports them ambiguous), or the session touched
// least recently (its next write is refused as unknown, and registers it
// again; a retry of a write it had applied but not had answered would then
// apply twice, so the bound is far above what a client needs).
const (
	// MaxSessionResults bounds the results one session keeps in one group.
	MaxSessionResults = 100000
	// MaxSessionBytes bounds the bytes of the results one session keeps
	// in one group (a failed CAS's result holds the key's value); it
	// bounds the session's stored record too.
	MaxSessionBytes = 8 << 20
	// MaxSessions bounds the sessions of one group.
	MaxSessions = 100000
)

// sessionRecordLimit is the largest stored session record: its results
// (MaxSessionBytes, passed by at most one result: a failed CAS's holds a
// value, a transaction's at most maxTxnResultBytes), plus the sequence
// numbers and lengths that frame them.
const sessionRecordLimit = MaxSessionBytes + max(MaxValueSize+64, maxTxnResultBytes) + MaxSessionResults*20

// sweepEvery is how far the clock moves between two sweeps for expired
// sessions.
const sweepEvery = SessionTTL / 8

// sessionRec is one session's state in one group.
type sessionRec struct {
	// floor: every sequence number below it was answered or given up.
	floor uint64
	// touched: the group clock (ms) of its last write.
	touched int64
	// results of applied writes at or above floor, ascending by sequence
	// number (a client's writes mostly apply in order, so record appends);
	// bytes is the sum of their lengths.
	results []seqResult
	bytes   int
}

type seqResult struct {
	seq uint64
	res []byte
}

// find returns the position of seq in r.results, and whether it is there.
func (r *sessionRec) find(seq uint64) (int, bool) {
	return slices.BinarySearchFunc(r.results, seq, func(e seqResult, seq uint64) int { return cmp.Compare(e.seq, seq) })
}

// add keeps the result of seq (not there yet), then drops the oldest while
// the session is over its bounds.
func (r *sessionRec) add(seq uint64, res []byte) {
	i, _ := r.find(seq)
	r.results = slices.Insert(r.results, i, seqResult{seq, res})
	r.bytes += len(res)
	n := 0
	for len(r.results)-n > MaxSessionResults || (r.bytes > MaxSessionBytes && len(r.results)-n > 1) {
		r.bytes -= len(r.results[n].res)
		n++
	}
	if n > 0 {
		r.floor = r.results[n-1].seq + 1
		r.results = slices.Delete(r.results, 0, n)
	}
}

// forget raises the floor to floor and drops the results below it.
func (r *sessionRec) forget(floor uint64) {
	r.floor = floor
	i, _ := r.find(floor)
	for _, e := range r.results[:i] {
		r.bytes -= len(e.res)
	}
	r.results = slices.Delete(r.results, 0, i)
}

// sessionTable is the sessions of one group. Owned by the worker that
// owns the state machine (Apply, Snapshot, Restore run there); nothing
// else reads it.
type sessionTable struct {
	m map[uint64]*sessionRec
	// clock is the group's clock in unix ms; lastSweep the clock of the
	// last sweep.
	clock, lastSweep int64
	// dirty sessions (and the clock, under 0) to write with the next
	// applied index; a dirty ID missing from m is deleted.
	dirty map[uint64]struct{}
	// off: dedup disabled (WithoutDedup), for the simulation's planted bug.
	off bool
}

// WithoutDedup makes the state machine apply every write as it comes,
// ignoring sessions: the naive version the simulation proves its checker
// against. Never use it in a real node.
func WithoutDedup() Option { return func(s *StateMachine) { s.sessions.off = true } }

// init empties the table. Its maps are made on the first write (put,
// touch): most ranges never see a session, and two empty maps were about
// 100 bytes of every idle replica (BENCHMARKS.md, "Quiescence: memory per
// idle replica").
func (t *sessionTable) init() {
	t.m, t.dirty = nil, nil
}

func (t *sessionTable) touch(id uint64) {
	if t.dirty == nil {
		t.dirty = make(map[uint64]struct{})
	}
	t.dirty[id] = struct{}{}
}

// put sets session id's record.
func (t *sessionTable) put(id uint64, r *sessionRec) {
	if t.m == nil {
		t.m = make(map[uint64]*sessionRec)
	}
	t.m[id] = r
}

// advance moves the clock to ms if later, and expires sessions idle for
// SessionTTL once the clock has moved sweepEvery since the last sweep.
func (t *sessionTable) advance(ms int64) {
	if ms <= t.clock {
		return
	}
	t.clock = ms
	t.touch(0)
	if t.clock-t.lastSweep < sweepEvery.Milliseconds() {
		return
	}
	t.lastSweep = t.clock
	cutoff := t.clock - SessionTTL.Milliseconds()
	for id, r := range t.m {
		if r.touched < cutoff {
			delete(t.m, id)
			t.touch(id)
		}
	}
}

// check decides whether cmd may apply. It returns a result to answer
// instead, with skip true, for a duplicate (the first result), a stale
// write or an unknown session. Commands without a session always apply.
func (t *sessionTable) check(cmd *Command) (res []byte, skip bool) {
	if cmd.Time != 0 {
		t.advance(cmd.Time)
	}
	if cmd.Session == 0 || t.off {
		return nil, false
	}
	r := t.m[cmd.Session]
	if r == nil {
		if !cmd.Register {
			return Result{SessionUnknown: true}.encode(), true
		}
		if len(t.m) >= MaxSessions {
			t.evictOldest()
		}
		r = &sessionRec{floor: cmd.Acked}
		t.put(cmd.Session, r)
	}
	r.touched = t.clock
	t.touch(cmd.Session)
	if cmd.Acked > r.floor {
		r.forget(cmd.Acked)
	}
	if cmd.Seq < r.floor {
		return Result{SessionStale: true}.encode(), true
	}
	if i, ok := r.find(cmd.Seq); ok {
		return r.results[i].res, true
	}
	return nil, false
}

// evictOldest drops the session touched least recently (ties: the lowest
// ID, so that every replica drops the same one).
func (t *sessionTable) evictOldest() {
	var oldest uint64
	var at int64
	for id, r := range t.m {
		if oldest == 0 || r.touched < at || (r.touched == at && id < oldest) {
			oldest, at = id, r.touched
		}
	}
	delete(t.m, oldest)
	t.touch(oldest)
}

// record keeps the result of cmd, which check let apply. res is copied.
func (t *sessionTable) record(cmd *Command, res []byte) {
	if cmd.Session == 0 || t.off {
		return
	}
	t.m[cmd.Session].add(cmd.Seq, append([]byte(nil), res...))
}

// sessionKey is the key of session id's record in range g.
func sessionKey(g, id uint64) []byte {
	return binary.BigEndian.AppendUint64(localKey(kindSession, g, 8), id)
}

func (r *sessionRec) encode() []byte {
	b := binary.AppendUvarint(nil, r.floor)
	b = binary.AppendVarint(b, r.touched)
	b = binary.AppendUvarint(b, uint64(len(r.results)))
	for _, e := range r.results {
		b = binary.AppendUvarint(b, e.seq)
		b = appendBytes(b, e.res)
	}
	return b
}

func decodeSession(b []byte) (*sessionRec, error) {
	r := reader{b: b}
	rec := &sessionRec{floor: r.uvarint(), touched: r.varint()}
	count := r.uvarint()
	// A result takes at least two bytes (its sequence number and length):
	// a count the record cannot hold is refused before anything is
	// allocated for it.
	if r.err || count > MaxSessionResults || count > uint64(len(r.b)/2) {
		return nil, fmt.Errorf("%w: session record", ErrCorrupt)
	}
	rec.results = make([]seqResult, 0, count)
	for range count {
		seq := r.uvarint()
		res := r.bytes()
		if r.err || (len(rec.results) > 0 && seq <= rec.results[len(rec.results)-1].seq) {
			return nil, fmt.Errorf("%w: session record", ErrCorrupt)
		}
		rec.results = append(rec.results, seqResult{seq, append([]byte(nil), res...)})
		rec.bytes += len(res)
	}
	if len(r.b) != 0 {
		return nil, fmt.Errorf("%w: session record trailing bytes", ErrCorrupt)
	}
	return rec, nil
}

func encodeClock(clock, lastSweep int64) []byte {
	b := binary.AppendVarint(nil, clock)
	return binary.AppendVarint(b, lastSweep)
}

func decodeClock(b []byte) (clock, lastSweep int64, err error) {
	r := reader{b: b}
	clock, lastSweep = r.varint(), r.varint()
	if r.err || len(r.b) != 0 {
		return 0, 0, fmt.Errorf("%w: session clock", ErrCorrupt)
	}
	return clock, lastSweep, nil
}

// writeTo writes the dirty records into b (for group g) and marks them
// clean. Called with the batch that also writes the applied index.
func (t *sessionTable) writeTo(b *pebble.Batch, g uint64) error {
	for id := range t.dirty {
		var err error
		switch r := t.m[id]; {
		case id == 0:
			err = b.Set(sessionKey(g, 0), encodeClock(t.clock, t.lastSweep), nil)
		case r == nil:
			err = b.Delete(sessionKey(g, id), nil)
		default:
			err = b.Set(sessionKey(g, id), r.encode(), nil)
		}
		if err != nil {
			return err
		}
	}
	clear(t.dirty)
	return nil
}

// load replaces the table with the records of group g in r.
func (t *sessionTable) load(r pebble.Reader, g uint64) error {
	off := t.off
	t.init()
	t.off = off
	t.clock, t.lastSweep = 0, 0
	lo, hi := localBounds(kindSession, g)
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return err
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()
		if len(k) != localLen+8 {
			return fmt.Errorf("%w: session key %x", ErrCorrupt, k)
		}
		id := binary.BigEndian.Uint64(k[localLen:])
		if id == 0 {
			if t.clock, t.lastSweep, err = decodeClock(it.Value()); err != nil {
				return err
			}
			continue
		}
		rec, err := decodeSession(it.Value())
		if err != nil {
			return err
		}
		t.put(id, rec)
	}
	return it.Error()
}

// Sessions returns how many client sessions the group holds. For tests
// and status; call it on the worker that owns the group, or after the
// engine stopped.
func (s *StateMachine) Sessions() int { return len(s.sessions.m) }
