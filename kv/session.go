package kv

import (
	"encoding/binary"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/flotilla/flotilla/internal/keys"
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

// MaxSessionResults bounds the results one session keeps in one group: a
// client with more writes unanswered in one group than this loses the
// oldest (their retries are refused as stale, so the client reports them
// ambiguous) instead of growing the group's memory without end.
const MaxSessionResults = 100000

// sweepEvery is how far the clock moves between two sweeps for expired
// sessions.
const sweepEvery = SessionTTL / 8

// sessionRec is one session's state in one group.
type sessionRec struct {
	// floor: every sequence number below it was answered or given up.
	floor uint64
	// touched: the group clock (ms) of its last write.
	touched int64
	// results of applied writes at or above floor, by sequence number.
	results map[uint64][]byte
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

func (t *sessionTable) init() {
	t.m = make(map[uint64]*sessionRec)
	t.dirty = make(map[uint64]struct{})
}

func (t *sessionTable) touch(id uint64) { t.dirty[id] = struct{}{} }

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
		r = &sessionRec{floor: cmd.Acked, results: make(map[uint64][]byte)}
		t.m[cmd.Session] = r
	}
	r.touched = t.clock
	t.touch(cmd.Session)
	if cmd.Acked > r.floor {
		r.forget(cmd.Acked)
	}
	if cmd.Seq < r.floor {
		return Result{SessionStale: true}.encode(), true
	}
	if prev, ok := r.results[cmd.Seq]; ok {
		return prev, true
	}
	return nil, false
}

// record keeps the result of cmd, which check let apply. res is copied.
func (t *sessionTable) record(cmd *Command, res []byte) {
	if cmd.Session == 0 || t.off {
		return
	}
	r := t.m[cmd.Session]
	r.results[cmd.Seq] = append([]byte(nil), res...)
	if len(r.results) > MaxSessionResults {
		r.forget(slices.Min(slices.Collect(maps.Keys(r.results))) + 1)
	}
}

// forget raises the floor to floor and drops the results below it.
func (r *sessionRec) forget(floor uint64) {
	r.floor = floor
	for seq := range r.results {
		if seq < floor {
			delete(r.results, seq)
		}
	}
}

// sessionKey is the key of session id's record in group g.
func sessionKey(g, id uint64) []byte {
	k := make([]byte, prefixLen+8)
	k[0] = byte(keys.Session)
	binary.BigEndian.PutUint64(k[1:], g)
	binary.BigEndian.PutUint64(k[prefixLen:], id)
	return k
}

func (r *sessionRec) encode() []byte {
	b := binary.AppendUvarint(nil, r.floor)
	b = binary.AppendVarint(b, r.touched)
	b = binary.AppendUvarint(b, uint64(len(r.results)))
	for _, seq := range slices.Sorted(maps.Keys(r.results)) {
		b = binary.AppendUvarint(b, seq)
		b = appendBytes(b, r.results[seq])
	}
	return b
}

func decodeSession(b []byte) (*sessionRec, error) {
	r := reader{b: b}
	rec := &sessionRec{floor: r.uvarint(), touched: r.varint(), results: make(map[uint64][]byte)}
	count := r.uvarint()
	if r.err || count > MaxSessionResults {
		return nil, fmt.Errorf("%w: session record", ErrCorrupt)
	}
	for range count {
		seq := r.uvarint()
		res := r.bytes()
		if r.err {
			return nil, fmt.Errorf("%w: session record", ErrCorrupt)
		}
		rec.results[seq] = append([]byte(nil), res...)
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
	lo := sessionKey(g, 0)
	hi := prefixEnd(lo[:prefixLen])
	if hi == nil {
		hi = []byte{byte(keys.Session) + 1}
	}
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return err
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()
		if len(k) != prefixLen+8 {
			return fmt.Errorf("%w: session key %x", ErrCorrupt, k)
		}
		id := binary.BigEndian.Uint64(k[prefixLen:])
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
		t.m[id] = rec
	}
	return it.Error()
}

// Sessions returns how many client sessions the group holds. For tests
// and status; call it on the worker that owns the group, or after the
// engine stopped.
func (s *StateMachine) Sessions() int { return len(s.sessions.m) }
