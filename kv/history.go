package kv

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// Revision history.
//
// Every write of a data key also writes a history record, keyed by the
// user key and the write's revision:
//
//	kindHistory, escape(user key), 0x00 0x01, revision(8) → stored value, or nothing for a delete
//
// The escape (0x00 → 0x00 0xff) keeps the records in user-key order, then
// revision order, whatever bytes a key holds, so that:
//   - the records of a span are one span of the database: like the data,
//     history belongs to whichever range holds its keys, and a split or
//     merge moves none of it (revisions go on across both: split.go);
//   - a read at revision R of key k is one seek: k's last record at or
//     before R.
//
// Retention. A range keeps every record above its floor, and, for each
// key, its last record at or below it (unless that is a delete): enough to
// read at any revision from the floor on, and to replay every write after
// it (a watch). The floor rises as the range's revision does
// (Retention); a sweep deletes what falls below it, a bounded slice of the
// span at a time, in the batches that write the range's applied record,
// which carries the floor: no record is gone before the floor that says
// so is on disk. The floor is the replica's own (replicas with different
// retentions keep different histories); a read or watch below it fails
// with ErrCompacted, which names the floor.

// ErrCompacted: a read or watch asked for a revision the range no longer
// keeps the history of. Errors wrapping it are *CompactedError.
var ErrCompacted = errors.New("kv: revision compacted")

// ErrFutureRevision: a read asked for a revision the range has not reached.
var ErrFutureRevision = errors.New("kv: revision not reached yet")

// CompactedError says which revision was asked for and how far the history
// of the range goes back.
type CompactedError struct {
	Range    uint64
	Revision uint64 // asked for
	Floor    uint64 // the history holds every revision after it
}

func (e *CompactedError) Error() string {
	return fmt.Sprintf("kv: revision %d of range %d has been compacted: its history is kept from revision %d on", e.Revision, e.Range, e.Floor)
}

// Is makes errors.Is(err, ErrCompacted) true.
func (e *CompactedError) Is(target error) bool { return target == ErrCompacted }

// DefaultHistoryRevisions is the retention of a state machine given none:
// the last 10,000 revisions of each range.
const DefaultHistoryRevisions = 10000

// Retention is how much history a range keeps: the last Revisions
// revisions, or the revisions of the last Age. At most one is set; neither
// (NoHistory) keeps no history: a read must be at the range's current
// revision, and a watch can start only from now.
type Retention struct {
	Revisions uint64
	Age       time.Duration
}

// NoHistory keeps no history.
var NoHistory = Retention{Age: -1}

// Off reports whether r keeps no history.
func (r Retention) Off() bool { return r.Revisions == 0 && r.Age <= 0 }

func (r Retention) String() string {
	switch {
	case r.Revisions > 0:
		return strconv.FormatUint(r.Revisions, 10)
	case r.Age > 0:
		return r.Age.String()
	}
	return "0"
}

// ParseRetention parses a retention: a count of revisions ("10000"), a
// duration ("1h", at least 1s), or "0" for none.
func ParseRetention(s string) (Retention, error) {
	s = strings.TrimSpace(s)
	if n, err := strconv.ParseUint(s, 10, 63); err == nil {
		if n == 0 {
			return NoHistory, nil
		}
		return Retention{Revisions: n}, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < time.Second {
		return Retention{}, fmt.Errorf("%w: history retention %q: want a count of revisions (10000) or a duration of 1s or more (1h)", ErrInvalid, s)
	}
	return Retention{Age: d}, nil
}

// WithHistory sets the state machine's retention (default:
// DefaultHistoryRevisions revisions).
func WithHistory(r Retention) Option { return func(s *StateMachine) { s.hist.retention = r } }

// WithClock gives the state machine a clock for an age retention (default
// time.Now).
func WithClock(now func() time.Time) Option { return func(s *StateMachine) { s.hist.now = now } }

// history is a state machine's history state. Owned by the worker, but for
// floor, which anyone reads.
type history struct {
	retention Retention
	// complete: every value has its history record (the applied record's
	// histKept). Off while the range kept no history, or before history
	// existed; backfillHistory sets it.
	complete bool
	now      func() time.Time
	// marks are (time, revision) samples, oldest first, for an age
	// retention: the floor is the revision of the last one older than the
	// retention.
	marks []histMark
	// staged are the history records of the commands being applied, to
	// publish to watchers once they are visible.
	staged []histWrite
	// cursor is where the next sweep starts (a history key); nil: at the
	// span's start. owed counts the records written since the last sweep:
	// a sweep visits at least as many, so it keeps up with the writes.
	cursor []byte
	owed   int
}

type histMark struct {
	at  time.Time
	rev uint64
}

// histWrite is one history record: key written at rev, stored its stored
// value (stored.go), nil for a delete.
type histWrite struct {
	key    string
	rev    uint64
	stored []byte
}

// escapeKey appends key escaped, then the terminator, to b.
func escapeKey(b, key []byte) []byte {
	for _, c := range key {
		if c == 0 {
			b = append(b, 0, 0xff)
		} else {
			b = append(b, c)
		}
	}
	return b
}

// histKey is the history key of key's write at rev.
func histKey(key []byte, rev uint64) []byte {
	b := make([]byte, 0, 1+len(key)+len(key)/8+2+8)
	b = append(b, kindHistory)
	b = escapeKey(b, key)
	b = append(b, 0, 1)
	return binary.BigEndian.AppendUint64(b, rev)
}

// histBounds returns the history keys of the user keys in [start, end)
// (end empty: to the end of the keyspace).
func histBounds(start, end []byte) (lo, hi []byte) {
	lo = escapeKey([]byte{kindHistory}, start)
	if len(end) == 0 {
		return lo, []byte{kindHistory + 1}
	}
	return lo, escapeKey([]byte{kindHistory}, end)
}

// parseHistKey returns the user key and revision of history key k (kind
// included); ok false if k is not one.
func parseHistKey(k []byte) (key []byte, rev uint64, ok bool) {
	if len(k) < 1+2+8 || k[0] != kindHistory {
		return nil, 0, false
	}
	body, revb := k[1:len(k)-8], k[len(k)-8:]
	if body[len(body)-2] != 0 || body[len(body)-1] != 1 {
		return nil, 0, false
	}
	body = body[:len(body)-2]
	key = make([]byte, 0, len(body))
	for i := 0; i < len(body); i++ {
		c := body[i]
		if c == 0 {
			if i+1 == len(body) || body[i+1] != 0xff {
				return nil, 0, false
			}
			i++
		}
		key = append(key, c)
	}
	return key, binary.BigEndian.Uint64(revb), true
}

// histRunKey is the part of history key k shared by every record of its
// user key: all but the revision.
func histRunKey(k []byte) []byte { return k[:len(k)-8] }

// Floor returns the range's history floor on this replica: reads and
// watches need a revision at or above it.
func (s *StateMachine) Floor() uint64 { return s.floor.Load() }

// Retention returns the state machine's retention.
func (s *StateMachine) Retention() Retention { return s.hist.retention }

// recordWrite notes the write of key at rev (stored nil: a delete) as a
// history record: through b if not nil, else for the held writes (they
// take s.hist.staged in dirtySet.apply). Called by the worker.
func (s *StateMachine) recordWrite(b *pebble.Batch, key []byte, rev uint64, stored []byte) error {
	// Staged whether or not the range is watched now: a watcher that
	// registers before the revision is stored expects them published
	// (feed.publish).
	s.hist.staged = append(s.hist.staged, histWrite{key: string(key), rev: rev, stored: stored})
	if s.hist.retention.Off() {
		return nil
	}
	s.hist.owed++
	if b == nil {
		return nil
	}
	if stored == nil {
		stored = []byte{}
	}
	return b.Set(histKey(key, rev), stored, nil)
}

// raiseFloor moves the floor up to what the retention keeps at revision
// rev. Called by the worker before it writes the applied record.
func (s *StateMachine) raiseFloor(rev uint64) {
	r := s.hist.retention
	f := s.floor.Load()
	switch {
	case r.Off():
		f = rev
	case r.Revisions > 0:
		if rev > r.Revisions {
			f = max(f, rev-r.Revisions)
		}
	default:
		now := time.Now
		if s.hist.now != nil {
			now = s.hist.now
		}
		t := now()
		m := s.hist.marks
		if len(m) == 0 || t.Sub(m[len(m)-1].at) >= r.Age/16 {
			m = append(m, histMark{at: t, rev: rev})
		}
		// The last mark older than the retention is the floor; the ones
		// before it are no longer needed.
		i := 0
		for i+1 < len(m) && t.Sub(m[i+1].at) >= r.Age {
			i++
		}
		if t.Sub(m[i].at) >= r.Age {
			f = max(f, m[i].rev)
		}
		s.hist.marks = append(m[:0], m[i:]...)
	}
	s.floor.Store(min(f, rev))
}

// sweepMin is the fewest history records a sweep visits.
const sweepMin = 64

// sweep deletes, through b, history records below the floor that the
// retention no longer needs: every record of a key at or below the floor
// but its last, and that one too if it is a delete. It visits a slice of
// the span from where the last sweep stopped. Called by the worker, in a
// batch that writes the applied record with the floor.
func (s *StateMachine) sweep(b *pebble.Batch, desc *Descriptor) error {
	if s.hist.retention.Off() {
		return nil
	}
	budget := max(sweepMin, 2*s.hist.owed)
	s.hist.owed = 0
	floor := s.floor.Load()
	if floor == 0 {
		return nil
	}
	lo, hi := histBounds(desc.Start, desc.End)
	from := lo
	if c := s.hist.cursor; c != nil && bytes.Compare(c, lo) > 0 && bytes.Compare(c, hi) < 0 {
		from = c
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: from, UpperBound: hi})
	if err != nil {
		return err
	}
	defer it.Close()
	// prev is the last record at or below the floor of the key being
	// visited, if any.
	var prev []byte
	prevDelete := false
	endRun := func() error {
		if prev != nil && prevDelete {
			return b.Delete(prev, nil)
		}
		return nil
	}
	n := 0
	for valid := it.First(); valid; valid = it.Next() {
		k := it.Key()
		if len(k) < 1+2+8 {
			return fmt.Errorf("%w: history key %x", ErrCorrupt, k)
		}
		if prev == nil || !bytes.Equal(histRunKey(prev), histRunKey(k)) {
			if err := endRun(); err != nil {
				return err
			}
			prev = nil
			if n >= budget {
				// Stop between keys: the next sweep starts at this one.
				s.hist.cursor = append(s.hist.cursor[:0], histRunKey(k)...)
				return it.Error()
			}
		}
		n++
		rev := binary.BigEndian.Uint64(k[len(k)-8:])
		if rev > floor {
			prevDelete = false // the last record at or below the floor stays
			continue
		}
		if prev != nil {
			if err := b.Delete(prev, nil); err != nil {
				return err
			}
		}
		prev = append(prev[:0:0], k...)
		prevDelete = len(it.Value()) == 0
	}
	if err := endRun(); err != nil {
		return err
	}
	s.hist.cursor = nil // the whole span is done: start over
	return it.Error()
}

// histRecord is a history record as read.
type histRecord struct {
	key    []byte
	rev    uint64
	stored []byte // nil: a delete
}

// historyView returns the history records of the user keys in [start, end)
// as of one instant: those held (not in Pebble yet) and an iterator over
// Pebble's, with the floor as it was once both are open. A record may be in
// both (a flush between the two); the caller drops the duplicate.
func (s *StateMachine) historyView(start, end []byte) ([]histWrite, *pebble.Iterator, uint64, error) {
	lo, hi := histBounds(start, end)
	held, it, err := s.dirty.historyView(start, end, func() (*pebble.Iterator, error) {
		return s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	})
	// The floor after the iterator opened: every record a sweep deleted
	// before then was at or below a floor no higher than this one.
	return held, it, s.floor.Load(), err
}

// checkRevision refuses a read at rev below the floor or above the range's
// revision.
func (s *StateMachine) checkRevision(rev, floor, current uint64) error {
	if rev < floor {
		return &CompactedError{Range: s.id, Revision: rev, Floor: floor}
	}
	if rev > current {
		return fmt.Errorf("%w: revision %d of range %d, which is at %d", ErrFutureRevision, rev, s.id, current)
	}
	return nil
}

// getAt reads key as of revision rev, which the range has reached.
func (s *StateMachine) getAt(key []byte, rev uint64) (found bool, m storedMeta, val []byte, err error) {
	current := s.revision.Load()
	if s.hist.retention.Off() {
		// Without history only the present is known: the key as it is
		// if no write after rev changed it.
		if found, m, val, err = s.get(key); err != nil || (found && m.Mod <= rev) || (!found && rev >= current) {
			return found, m, val, err
		}
		return false, storedMeta{}, nil, &CompactedError{Range: s.id, Revision: rev, Floor: s.revision.Load()}
	}
	recs, err := s.readHistory(key, append(bytes.Clone(key), 0), 0, rev, current, true)
	if err != nil || len(recs) == 0 {
		return false, storedMeta{}, nil, err
	}
	r := recs[len(recs)-1]
	if r.stored == nil {
		return false, storedMeta{}, nil, nil
	}
	m, val, err = decodeStored(r.stored)
	return err == nil, m, val, err
}

// readHistory returns the history records of the user keys in [start, end)
// with revisions in (after, upto], in key then revision order. With last,
// only the last such record of each key (a read at upto); a delete is
// kept, so that it hides an older record. current is the range's revision
// the caller saw before, for the check of upto. Values are copies.
func (s *StateMachine) readHistory(start, end []byte, after, upto, current uint64, last bool) ([]histRecord, error) {
	held, it, floor, err := s.historyView(start, end)
	if err != nil {
		return nil, err
	}
	defer it.Close()
	lowest := upto
	if !last {
		lowest = after
	}
	if err := s.checkRevision(lowest, floor, max(current, upto)); err != nil {
		return nil, err
	}
	var out []histRecord
	add := func(key []byte, rev uint64, v []byte) {
		if rev <= after || rev > upto {
			return
		}
		if last && len(out) > 0 && bytes.Equal(out[len(out)-1].key, key) {
			out = out[:len(out)-1]
		}
		rec := histRecord{key: key, rev: rev}
		if len(v) > 0 {
			rec.stored = bytes.Clone(v)
		}
		out = append(out, rec)
	}
	for valid := it.First(); valid; valid = it.Next() {
		key, rev, ok := parseHistKey(it.Key())
		if !ok {
			return nil, fmt.Errorf("%w: history key %x", ErrCorrupt, it.Key())
		}
		add(key, rev, it.Value())
	}
	if err := it.Error(); err != nil {
		return nil, err
	}
	if len(held) > 0 {
		// Held records are newer than Pebble's, but for a flush's
		// duplicates: merge them in by key, then revision.
		for _, h := range held {
			out = append(out, histRecord{key: []byte(h.key), rev: h.rev, stored: h.stored})
		}
		slices.SortStableFunc(out, func(a, b histRecord) int {
			if c := bytes.Compare(a.key, b.key); c != 0 {
				return c
			}
			return cmpUint(a.rev, b.rev)
		})
		out = slices.CompactFunc(out, func(a, b histRecord) bool { return a.rev == b.rev && bytes.Equal(a.key, b.key) })
		w := 0
		for i, r := range out {
			if r.rev <= after || r.rev > upto {
				continue
			}
			if last && i+1 < len(out) && bytes.Equal(out[i+1].key, r.key) && out[i+1].rev <= upto {
				continue
			}
			out[w] = r
			w++
		}
		out = out[:w]
	}
	return out, nil
}

// scanAt lists up to limit keys of [start, end) ∩ the range's span as of
// revision rev (see DecodeScan for the answer).
func (s *StateMachine) scanAt(desc *Descriptor, start, end []byte, limit int, rev uint64) ([]byte, error) {
	stop, resume := end, []byte(nil)
	if len(desc.End) > 0 && (len(end) == 0 || bytes.Compare(desc.End, end) < 0) {
		stop, resume = desc.End, desc.End
	}
	current := s.revision.Load()
	if s.hist.retention.Off() {
		if rev < current {
			return nil, &CompactedError{Range: s.id, Revision: rev, Floor: current}
		}
		return s.scan(desc, start, end, limit)
	}
	recs, err := s.readHistory(start, stop, 0, rev, current, true)
	if err != nil {
		return nil, err
	}
	var body []byte
	n := 0
	for _, r := range recs {
		if r.stored == nil {
			continue
		}
		if n == limit {
			return encodeScanAnswer(n, body, r.key), nil // go on from this key
		}
		m, val, err := decodeStored(r.stored)
		if err != nil {
			return nil, fmt.Errorf("%w (key %x)", err, r.key)
		}
		body = appendScanEntry(body, r.key, m, val)
		n++
	}
	return encodeScanAnswer(n, body, resume), nil
}

// held returns the staged history records for the held writes when history
// is kept (dirtySet keeps them until a flush writes them), nil if not.
func (s *StateMachine) held() []histWrite {
	if s.hist.retention.Off() {
		return nil
	}
	return s.hist.staged
}

// publishHistory hands the staged records to the watchers, if any, and
// forgets them. Called by the worker once they are visible and the
// revision rev stored.
func (s *StateMachine) publishHistory(rev uint64) {
	if f := s.feedp.Load(); f.watched() {
		f.publish(s.hist.staged, rev)
	}
	clear(s.hist.staged)
	s.hist.staged = s.hist.staged[:0]
}

// histKept marks, in the floor word of the applied record and of a
// snapshot's header, a range that keeps history: each of its values has
// its history record.
const histKept = uint64(1) << 63

// floorWord is the floor as the applied record and snapshots carry it.
func (s *StateMachine) floorWord() uint64 {
	if s.hist.retention.Off() {
		return s.floor.Load()
	}
	return s.floor.Load() | histKept
}

// backfillHistory gives every value of the range its history record if the
// range kept no history so far (a node that ran without it, or a snapshot
// from one), and records that it keeps it: a read at a revision from the
// floor on then finds every value. Called when the state is loaded, before
// anything reads it.
func (s *StateMachine) backfillHistory() error {
	desc := s.desc.Load()
	if s.hist.retention.Off() || s.hist.complete || desc == nil {
		s.hist.complete = !s.hist.retention.Off()
		return nil
	}
	// The floor moves to the present: the past before it was not kept.
	// Records left from a time the range kept history are stale (deletes
	// made since wrote none): out with them.
	s.floor.Store(s.revision.Load())
	hlo, hhi := histBounds(desc.Start, desc.End)
	if err := s.db.DeleteRange(hlo, hhi, pebble.NoSync); err != nil {
		return err
	}
	lo, hi := globalBounds(kindData, desc.Start, desc.End)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return err
	}
	defer it.Close()
	b := s.db.NewBatch()
	defer func() { b.Close() }()
	for valid := it.First(); valid; valid = it.Next() {
		m, _, err := decodeStored(it.Value())
		if err != nil {
			return fmt.Errorf("%w (key %x)", err, it.Key()[1:])
		}
		if err := b.Set(histKey(it.Key()[1:], m.Mod), it.Value(), nil); err != nil {
			return err
		}
		if b.Len() >= restoreBatchBytes {
			if err := b.Commit(pebble.NoSync); err != nil {
				return err
			}
			b.Close()
			b = s.db.NewBatch()
		}
	}
	if err := it.Error(); err != nil {
		return err
	}
	s.hist.complete = true
	if err := b.Set(s.appliedKey(), s.appliedValue(s.applied.Load(), s.revision.Load()), nil); err != nil {
		return err
	}
	return b.Commit(pebble.Sync)
}
