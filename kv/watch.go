package kv

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"time"
)

// Watches.
//
// A watch follows the writes of a span, whatever ranges hold it, from the
// node's own replicas (leaders or followers): it reads each range's feed
// (feed.go), or its history (history.go) when the feed has moved on.
//
// Its progress is a list of pieces that tile the watched span, each with a
// revision: every write of a key in the piece at or below the revision has
// been delivered, and none above it. Revisions order the writes of one key
// whatever ranges hold it over time (a split's right half goes on from the
// left's revision; a merge takes the higher), so a piece's revision stays
// meaningful when the ranges change under it: a split splits the piece
// and a merge leaves two pieces, each read on from where it was. The
// pieces, encoded, are the resume token: a watch started from a token on
// any node delivers exactly the writes after it.

// WatchEvent is one write a watch delivers.
type WatchEvent struct {
	// Delete: the key was deleted; KV carries only Key and Revision (the
	// delete's).
	Delete bool
	KV     KeyValue
	// Prev is the key before the write, if the watch asked for it and the
	// key had a value then (nil otherwise).
	Prev *KeyValue
}

// WatchBatch is what one Next returns.
type WatchBatch struct {
	// Events in revision order for each key (the events of one piece come
	// in revision order; those of different pieces in no set order). A
	// batch never holds part of a revision's writes in one piece (a
	// transaction over two pieces of a merged range may come in two).
	Events []WatchEvent
	// Token resumes the watch right after Events (WatchOptions.Token).
	Token []byte
	// Revision is the lowest of the pieces' revisions: every write of the
	// span at or below it has been delivered.
	Revision uint64
}

// Replicas is where a watch finds the ranges it reads.
type Replicas interface {
	// Covering returns the initialized replicas on this node whose spans
	// overlap [start, end) (end empty: to the end of the keyspace), in key
	// order. Called from the watch's goroutine; must not block.
	Covering(start, end []byte) []*StateMachine
}

// ErrNoReplica: no replica on this node holds part of a watched span.
var ErrNoReplica = errors.New("kv: no replica here holds the span")

// DefaultWatchBatch is the most events one WatchBatch holds, but for
// the writes of one revision, which are never split.
const DefaultWatchBatch = 1000

// WatchOptions say what to watch.
type WatchOptions struct {
	// Start, End: the span (End empty: to the end of the keyspace; a
	// single key is [key, key+"\x00")).
	Start, End []byte
	// Revision: deliver the writes at or above it; 0: from now (each
	// range's current revision on this node).
	Revision uint64
	// Token, if set, resumes a watch (the span and revisions are the
	// token's; Start, End and Revision are ignored).
	Token []byte
	// PrevKV: events carry the key's previous value.
	PrevKV bool
	// Batch bounds the events of one batch (default DefaultWatchBatch).
	Batch int
	// PlantedSkipOnResume: a watch resumed from a token loses the first
	// event it reads, as an off-by-one resume would. A planted bug the
	// simulation proves its watch checker against; never set it.
	PlantedSkipOnResume bool
}

// piece is a part of the watched span and its revision.
type piece struct {
	start, end []byte
	rev        uint64
	now        bool // from now: rev is set at the first plan
	sm         *StateMachine
	desc       *Descriptor // sm's descriptor when planned
}

// Watch is one watch. Not safe for concurrent use: one goroutine calls
// Next, then Close.
type Watch struct {
	src    Replicas
	opts   WatchOptions
	pieces []piece
	// feeds are the replicas whose feeds the watch is registered with.
	feeds map[*StateMachine]bool
	// skip: events to lose (PlantedSkipOnResume).
	skip int
}

// NewWatch starts a watch on src. It reads nothing yet.
func NewWatch(src Replicas, opts WatchOptions) (*Watch, error) {
	if opts.Batch <= 0 {
		opts.Batch = DefaultWatchBatch
	}
	w := &Watch{src: src, opts: opts, feeds: make(map[*StateMachine]bool)}
	if len(opts.Token) > 0 {
		ps, err := decodeToken(opts.Token)
		if err != nil {
			return nil, err
		}
		w.pieces = ps
		if opts.PlantedSkipOnResume {
			w.skip = 1
		}
		return w, nil
	}
	if len(opts.End) > 0 && bytes.Compare(opts.Start, opts.End) >= 0 {
		return nil, fmt.Errorf("%w: watch span %s is empty", ErrInvalid, SpanString(opts.Start, opts.End))
	}
	p := piece{start: bytes.Clone(opts.Start), end: bytes.Clone(opts.End), now: opts.Revision == 0}
	if opts.Revision > 0 {
		p.rev = opts.Revision - 1
	}
	w.pieces = []piece{p}
	return w, nil
}

// Start plans the watch, waiting for the replicas of its span to be here
// (a split's right half not started yet) if it must: from then on it has
// its revisions (a watch from now, its start) and Token says where it is.
func (w *Watch) Start(ctx context.Context) error {
	if !w.needsPlan() {
		return nil
	}
	return w.plan(ctx)
}

// Current returns a batch without events: the watch's token and progress
// as of now.
func (w *Watch) Current() WatchBatch { return w.batch(nil) }

// Close unregisters the watch from the feeds it reads.
func (w *Watch) Close() {
	for sm := range w.feeds {
		sm.watchFeed().unregister()
	}
	clear(w.feeds)
}

// planRetry is how long Next waits before it looks for the replicas of a
// span again when none holds part of it (a split's right half not started
// yet); planTries how often.
const (
	planRetry = 10 * time.Millisecond
	planTries = 300
)

// plan assigns each piece the replica that holds it, splitting pieces at
// range boundaries, and registers the watch with their feeds.
func (w *Watch) plan(ctx context.Context) error {
	for try := 0; ; try++ {
		ok, err := w.planOnce()
		if ok || err != nil {
			return err
		}
		if try == planTries {
			return fmt.Errorf("%w: %s", ErrNoReplica, SpanString(w.pieces[0].start, w.pieces[len(w.pieces)-1].end))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(planRetry):
		}
	}
}

func (w *Watch) planOnce() (bool, error) {
	var out []piece
	used := make(map[*StateMachine]bool)
	for _, p := range w.pieces {
		cur, done := p.start, false
		for _, sm := range w.src.Covering(p.start, p.end) {
			// A range frozen for a merge still serves its writes up to the
			// freeze; once the merge applies it is destroyed, and the
			// watch reads on from the merged range.
			d, ok := sm.Descriptor()
			if !ok || sm.destroyed.Load() {
				continue
			}
			if !d.Contains(cur) {
				if bytes.Compare(d.Start, cur) > 0 {
					return false, nil // a gap: a range not here (yet)
				}
				continue
			}
			end := spanMinEnd(d.End, p.end)
			if !w.feeds[sm] {
				sm.watchFeed().register(sm.Revision)
				w.feeds[sm] = true
			}
			used[sm] = true
			q := piece{start: bytes.Clone(cur), end: bytes.Clone(end), rev: p.rev, sm: sm, desc: d}
			if p.now {
				q.rev = sm.Revision() // after the registration: no write in between is lost
			}
			out = append(out, q)
			if len(end) == 0 || bytes.Equal(end, p.end) {
				done = true
				break
			}
			cur = end
		}
		if !done {
			return false, nil
		}
	}
	for sm := range w.feeds {
		if !used[sm] {
			sm.watchFeed().unregister()
			delete(w.feeds, sm)
		}
	}
	// Adjacent pieces of one replica at one revision are one piece.
	merged := out[:0]
	for _, p := range out {
		if n := len(merged); n > 0 && merged[n-1].sm == p.sm && merged[n-1].rev == p.rev && bytes.Equal(merged[n-1].end, p.start) {
			merged[n-1].end = p.end
			continue
		}
		merged = append(merged, p)
	}
	w.pieces = merged
	return true, nil
}

// stale reports whether a piece's replica changed its span or state since
// it was planned.
func (p *piece) stale() bool {
	return p.sm == nil || p.sm.desc.Load() != p.desc || p.sm.destroyed.Load()
}

// Token returns the watch's resume token as of now.
func (w *Watch) Token() []byte { return encodeToken(w.pieces) }

// Next returns the next batch of events, waiting for one. If progress is
// positive and nothing happens for that long it returns a batch without
// events (a progress notification). It fails with a *CompactedError when
// the history the watch needs is gone (the watcher must start again from
// a fresh read), ErrNoReplica, or ctx's error.
func (w *Watch) Next(ctx context.Context, progress time.Duration) (WatchBatch, error) {
	var timer <-chan time.Time
	if progress > 0 {
		t := time.NewTimer(progress)
		defer t.Stop()
		timer = t.C
	}
	for {
		if w.needsPlan() {
			if err := w.plan(ctx); err != nil {
				return WatchBatch{}, err
			}
		}
		events, waits, stale, err := w.read()
		switch {
		case err != nil:
			return WatchBatch{}, err
		case len(events) > 0:
			return w.batch(events), nil
		case stale:
			continue
		}
		if err := waitAny(ctx, waits, timer); err != nil {
			if errors.Is(err, errProgress) {
				return w.batch(nil), nil
			}
			return WatchBatch{}, err
		}
	}
}

// Poll is Next without waiting, for a caller that drives time itself (the
// simulation): the events ready now, perhaps none (then Events is empty).
// It fails with ErrNoReplica while the ranges of the span are not all
// here (try again later).
func (w *Watch) Poll() (WatchBatch, error) {
	for {
		if w.needsPlan() {
			ok, err := w.planOnce()
			if err != nil {
				return WatchBatch{}, err
			}
			if !ok {
				return WatchBatch{}, fmt.Errorf("%w: %s", ErrNoReplica, SpanString(w.pieces[0].start, w.pieces[len(w.pieces)-1].end))
			}
		}
		events, _, stale, err := w.read()
		switch {
		case err != nil:
			return WatchBatch{}, err
		case stale && len(events) == 0:
			continue
		}
		return w.batch(events), nil
	}
}

// needsPlan reports whether a piece's replica changed since the plan.
func (w *Watch) needsPlan() bool {
	for _, p := range w.pieces {
		if p.stale() {
			return true
		}
	}
	return false
}

// read reads each piece on from its revision, up to a batch of events in
// all. stale: a piece's replica changed its span while it was read (what
// it read may miss writes of keys it gave away); the events of the pieces
// read before it stand, and the caller plans again. waits are the feeds'
// channels to wait on when there is nothing.
func (w *Watch) read() (events []WatchEvent, waits []<-chan struct{}, stale bool, err error) {
	for i := range w.pieces {
		p := &w.pieces[i]
		evs, upto, changed, err := p.read(w.opts.Batch-len(events), w.opts.PrevKV)
		if testHookPieceRead != nil {
			testHookPieceRead(i)
		}
		if p.stale() {
			// Whatever it read or failed with: its replica changed
			// under it (removed, restored, split). Plan again.
			return events, waits, true, nil
		}
		if err != nil {
			return nil, nil, false, err
		}
		waits = append(waits, changed)
		for _, ev := range evs {
			if w.skip > 0 {
				w.skip-- // the planted bug: this event is lost
				continue
			}
			events = append(events, ev)
		}
		p.rev = max(p.rev, upto)
		if len(events) >= w.opts.Batch {
			break
		}
	}
	return events, waits, false, nil
}

func (w *Watch) batch(events []WatchEvent) WatchBatch {
	b := WatchBatch{Events: events, Token: w.Token()}
	for i, p := range w.pieces {
		if i == 0 || p.rev < b.Revision {
			b.Revision = p.rev
		}
	}
	return b
}

var errProgress = errors.New("progress")

// waitAny waits for any of chans to close, for ctx, or for timer
// (errProgress).
func waitAny(ctx context.Context, chans []<-chan struct{}, timer <-chan time.Time) error {
	if len(chans) == 1 { // the common case, without reflection
		select {
		case <-chans[0]:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-timer:
			return errProgress
		}
	}
	cases := make([]reflect.SelectCase, 0, len(chans)+2)
	cases = append(cases,
		reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(ctx.Done())},
		reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(timer)})
	for _, c := range chans {
		cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(c)})
	}
	switch i, _, _ := reflect.Select(cases); i {
	case 0:
		return ctx.Err()
	case 1:
		return errProgress
	}
	return nil
}

// read returns the events of the piece above its revision: from the feed,
// or the history if the feed no longer has them; at most limit of them, but
// never part of a revision; and the revision up to which they are
// complete. While the replica restores a snapshot it returns none (upto
// is the piece's revision): its state is half old, half new; the restore
// changes the descriptor, and the watch plans again.
func (p *piece) read(limit int, prevKV bool) ([]WatchEvent, uint64, <-chan struct{}, error) {
	sm := p.sm
	if !sm.restore.TryRLock() {
		return nil, p.rev, sm.watchFeed().changes(), nil
	}
	defer sm.restore.RUnlock()
	if sm.restoreFailed.Load() {
		return nil, 0, nil, fmt.Errorf("%w: range %d: a restore failed", ErrUninitialized, sm.id)
	}
	recs, upto, ok, changed := sm.watchFeed().since(p.start, p.end, p.rev, max(limit, 1))
	if !ok {
		var err error
		if recs, upto, err = p.readHistory(limit); err != nil {
			return nil, 0, changed, err
		}
	}
	evs := make([]WatchEvent, len(recs))
	for i, r := range recs {
		ev, err := p.event(r, prevKV)
		if err != nil {
			return nil, 0, changed, err
		}
		evs[i] = ev
	}
	return evs, upto, changed, nil
}

// readHistory is read from the history. Called with the restore lock held.
func (p *piece) readHistory(limit int) ([]histWrite, uint64, error) {
	sm := p.sm
	current := sm.revision.Load()
	if sm.hist.retention.Off() {
		return nil, 0, &CompactedError{Range: sm.id, Revision: p.rev + 1, Floor: current}
	}
	hs, err := sm.readHistory(p.start, p.end, p.rev, ^uint64(0)>>1, current, false)
	if err != nil {
		var ce *CompactedError
		if errors.As(err, &ce) {
			ce.Revision = p.rev + 1
		}
		return nil, 0, err
	}
	upto := current
	slices.SortStableFunc(hs, func(a, b histRecord) int { return cmpUint(a.rev, b.rev) })
	if len(hs) > 0 {
		upto = max(upto, hs[len(hs)-1].rev)
	}
	out := make([]histWrite, 0, min(len(hs), limit+8))
	for i, h := range hs {
		if len(out) >= limit && h.rev != hs[i-1].rev {
			upto = hs[i-1].rev
			break
		}
		out = append(out, histWrite{key: string(h.key), rev: h.rev, stored: h.stored})
	}
	return out, upto, nil
}

// event returns the event of record r. Called with the restore lock held.
func (p *piece) event(r histWrite, prevKV bool) (WatchEvent, error) {
	ev := WatchEvent{KV: KeyValue{Key: []byte(r.key), Revision: r.rev}}
	if r.stored == nil {
		ev.Delete = true
	} else {
		m, val, err := decodeStored(r.stored)
		if err != nil {
			return WatchEvent{}, fmt.Errorf("%w (key %x)", err, r.key)
		}
		ev.KV = KeyValue{Key: []byte(r.key), Value: bytes.Clone(val), Revision: m.Mod, CreateRevision: m.Create, Version: m.Version}
	}
	if prevKV && r.rev > 1 {
		found, m, val, err := p.sm.getAt([]byte(r.key), r.rev-1)
		if err != nil && !errors.Is(err, ErrCompacted) {
			return WatchEvent{}, err
		}
		if found && err == nil {
			ev.Prev = &KeyValue{Key: []byte(r.key), Value: val, Revision: m.Mod, CreateRevision: m.Create, Version: m.Version}
		}
	}
	return ev, nil
}

// The resume token: tokenVersion, the count of pieces, then each piece's
// start, end (length-prefixed) and revision (uvarint).
const tokenVersion = 1

func encodeToken(ps []piece) []byte {
	b := []byte{tokenVersion}
	b = binary.AppendUvarint(b, uint64(len(ps)))
	for _, p := range ps {
		b = appendBytes(b, p.start)
		b = appendBytes(b, p.end)
		b = binary.AppendUvarint(b, p.rev)
	}
	return b
}

// maxTokenPieces bounds a token's pieces (one per range the span covered).
const maxTokenPieces = 1 << 16

func decodeToken(b []byte) ([]piece, error) {
	bad := fmt.Errorf("%w: watch resume token", ErrInvalid)
	if len(b) < 2 || b[0] != tokenVersion {
		return nil, bad
	}
	r := reader{b: b[1:]}
	n := r.uvarint()
	if r.err || n == 0 || n > maxTokenPieces || n > uint64(len(r.b)/3) {
		return nil, bad
	}
	ps := make([]piece, 0, n)
	for i := uint64(0); i < n; i++ {
		p := piece{start: bytes.Clone(r.bytes()), end: bytes.Clone(r.bytes()), rev: r.uvarint()}
		if r.err {
			return nil, bad
		}
		// The pieces tile a span: each starts where the one before ends.
		if i > 0 && !bytes.Equal(ps[i-1].end, p.start) {
			return nil, bad
		}
		if len(p.end) > 0 && bytes.Compare(p.start, p.end) >= 0 {
			return nil, bad
		}
		if len(p.end) == 0 && i != n-1 {
			return nil, bad
		}
		ps = append(ps, p)
	}
	if len(r.b) != 0 {
		return nil, bad
	}
	return ps, nil
}

// testHookPieceRead, if set (by tests), runs after each piece is read.
var testHookPieceRead func(piece int)

// spanMinEnd returns the lower of two span ends (empty: the end of the
// keyspace).
func spanMinEnd(a, b []byte) []byte {
	switch {
	case len(a) == 0:
		return b
	case len(b) == 0:
		return a
	case bytes.Compare(a, b) < 0:
		return a
	}
	return b
}

// WatchTokenSpan returns the span a resume token watches.
func WatchTokenSpan(token []byte) (start, end []byte, err error) {
	ps, err := decodeToken(token)
	if err != nil {
		return nil, nil, err
	}
	return ps[0].start, ps[len(ps)-1].end, nil
}

// Ranges returns the IDs of the ranges the watch reads now (as of its last
// plan).
func (w *Watch) Ranges() []uint64 {
	var ids []uint64
	for _, p := range w.pieces {
		if p.sm != nil && !slices.Contains(ids, p.sm.id) {
			ids = append(ids, p.sm.id)
		}
	}
	return ids
}
