package storage

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/cockroachdb/pebble/v2/vfs"
	"go.etcd.io/raft/v3/raftpb"
)

// PebbleOptions configure a Pebble store.
type PebbleOptions struct {
	// FS is the filesystem; nil means the real one. Tests pass vfs.NewMem().
	FS vfs.FS
	// CacheBytes is the block cache size in bytes. Default 32 MiB; 0 means
	// the default.
	CacheBytes int64
	// MemTableBytes is the memtable size in bytes, under 4 GiB - 1
	// (Pebble's limit on 64-bit); 0 means the default, drawn from 6 to 12
	// MiB (below). Every raft entry and state machine write is inserted in
	// the memtable's skiplist, and an insert costs more the larger the
	// skiplist (more levels, more cache misses): with 64 MiB the inserts
	// took a quarter of a node's CPU under `bench put`, with 8 MiB half of
	// that, for more flushing (BENCHMARKS.md).
	//
	// The default is drawn at open from 6 to 12 MiB, not fixed: the
	// replicas of a range get the same writes, and with one memtable size
	// the nodes of a 3-node cluster (every range on every node) filled
	// their memtables together, flushed together and compacted together,
	// all three at once every 10 s or so, each compaction rewriting the
	// whole of the bottom level: every range slowed at once. A growth's
	// lowest second was 0.37-0.49x of its median with one size, 0.44-0.59x
	// with sizes drawn (BENCHMARKS.md, "Compactions in step", 5 alternating
	// pairs; the mean rate may pay for it, 0.93x at the median, 0.79-1.01).
	// A size given here is used as given.
	MemTableBytes uint64
	// CompactionDuty is the share of the wall time a compaction runs while
	// Pebble waits for no other compaction, from MinCompactionDuty (0.05)
	// to 1; the rest of the time it pauses, in slices of a few
	// milliseconds, so that it leaves the node's CPU to the raft path
	// (compactpace.go). Approximate: a pause is at most 250 ms. 1 runs
	// compactions unpaced; 0 means DefaultCompactionDuty (0.1). A
	// compaction behind which another that is not optional waits runs
	// unpaced whatever this says. Outside these limits: ErrConfig.
	CompactionDuty float64
}

// The default memtable sizes (PebbleOptions.MemTableBytes): from
// memTableMin to memTableMax, both included, in steps of memTableStep.
const (
	memTableMin   = 6 << 20
	memTableMax   = 12 << 20
	memTableStep  = 64 << 10
	memTableSizes = (memTableMax-memTableMin)/memTableStep + 1
)

// memTableDefault draws the default memtable size.
func memTableDefault() uint64 { return memTableMin + memTableStep*rand.Uint64N(memTableSizes) }

// Pebble is a Store on a Pebble database. Safe for concurrent use.
type Pebble struct {
	db     *pebble.DB
	sched  *compactionScheduler
	stalls *stallClock

	// closing guards closed: Stats reads Pebble's metrics under its read
	// lock, Close sets closed under its write lock.
	closing sync.RWMutex
	closed  bool
}

var _ Store = (*Pebble)(nil)

// OpenPebble opens (creating if needed) the store in dir.
func OpenPebble(dir string, o PebbleOptions) (*Pebble, error) {
	if o.CacheBytes == 0 {
		o.CacheBytes = 32 << 20
	}
	if o.MemTableBytes == 0 {
		o.MemTableBytes = memTableDefault()
	}
	if o.CompactionDuty == 0 {
		o.CompactionDuty = DefaultCompactionDuty
	}
	if !(o.CompactionDuty >= MinCompactionDuty && o.CompactionDuty <= 1) { // NaN too
		return nil, fmt.Errorf("%w: CompactionDuty %v outside %v..1", ErrConfig, o.CompactionDuty, MinCompactionDuty)
	}
	return openPebble(dir, o, newCompactionScheduler(o.CompactionDuty))
}

// openPebble opens the store in dir with the options o, defaults filled
// in, and the compaction scheduler sched (a test's, or OpenPebble's).
func openPebble(dir string, o PebbleOptions, sched *compactionScheduler) (*Pebble, error) {
	opts := &pebble.Options{
		FS:           o.FS,
		CacheSize:    o.CacheBytes,
		MemTableSize: o.MemTableBytes,
		Logger:       quietLogger{},
	}
	// A Bloom filter in every table of L0 to L5 (L1-L5 inherit L0's), 10
	// bits a key, about 1% false positives: the apply path reads each
	// key's metadata before it writes the key (kv.readStored), and without
	// filters such a read looks into every L0 table that overlaps the key.
	// Not in L6: Pebble's reads skip L6 filters (unless
	// IterOptions.UseL6Filters, which nothing here sets), and L6 holds
	// most of the bytes, so its filters would be built in the largest
	// compactions and never read. Measured without a CPU quota: 1.06x
	// the put rate of the same store without filters, CPU per put lower
	// in 6 of 6 rounds (BENCHMARKS.md, "Bloom filters in the tables").
	opts.Levels[0].FilterPolicy = bloom.FilterPolicy(10)
	opts.Levels[len(opts.Levels)-1].FilterPolicy = pebble.NoFilterPolicy
	opts.Experimental.CompactionScheduler = sched
	stalls := &stallClock{now: time.Now}
	opts.EventListener = &pebble.EventListener{WriteStallBegin: stalls.begin, WriteStallEnd: stalls.end}
	db, err := pebble.Open(dir, opts)
	if err != nil {
		sched.abandon()
		return nil, fmt.Errorf("storage: open %s: %w", dir, err)
	}
	return &Pebble{db: db, sched: sched, stalls: stalls}, nil
}

// DB exposes the database, so that a state machine may keep its data in the
// same store (and commit it in the same batches if it wishes).
func (p *Pebble) DB() *pebble.DB { return p.db }

// Close implements Store. Compactions under way end unpaced: Pebble's
// Close waits for them.
func (p *Pebble) Close() error {
	p.sched.releasePacing()
	p.closing.Lock()
	p.closed = true
	p.closing.Unlock()
	return p.db.Close()
}

// Groups implements Store.
func (p *Pebble) Groups() ([]uint64, error) {
	it, err := p.db.NewIter(&pebble.IterOptions{
		LowerBound: []byte{kindConfState},
		UpperBound: []byte{kindConfState + 1},
	})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var out []uint64
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()
		if len(k) != groupKeyLen {
			return nil, fmt.Errorf("%w: key %x", ErrCorrupt, k)
		}
		out = append(out, binary.BigEndian.Uint64(k[1:]))
	}
	return out, it.Error()
}

func (p *Pebble) get(key []byte, fn func([]byte) error) (bool, error) {
	v, closer, err := p.db.Get(key)
	if err == pebble.ErrNotFound {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer closer.Close()
	if err := fn(v); err != nil {
		return false, fmt.Errorf("%w: key %x: %v", ErrCorrupt, key, err)
	}
	return true, nil
}

// Load implements Store.
func (p *Pebble) Load(group uint64) (GroupState, error) {
	var s GroupState
	if _, err := p.get(groupKey(kindHardState, group), s.HardState.Unmarshal); err != nil {
		return s, err
	}
	if _, err := p.get(groupKey(kindConfState, group), func(v []byte) error {
		return decodeConf(v, &s.ConfState, &s.ConfIndex)
	}); err != nil {
		return s, err
	}
	if _, err := p.get(groupKey(kindSnapshot, group), s.Snapshot.Unmarshal); err != nil {
		return s, err
	}
	it, err := p.db.NewIter(&pebble.IterOptions{
		LowerBound: logKey(group, s.Snapshot.Metadata.Index+1),
		UpperBound: logKey(group, math.MaxUint64),
	})
	if err != nil {
		return s, err
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		var e raftpb.Entry
		if err := e.Unmarshal(it.Value()); err != nil {
			return s, fmt.Errorf("%w: entry %x: %v", ErrCorrupt, it.Key(), err)
		}
		// An entry is stored under its own index. One under another
		// could be one the snapshot covers, or out of order, which raft
		// would take for the log.
		if k := it.Key(); len(k) != logKeyLen || binary.BigEndian.Uint64(k[9:]) != e.Index {
			return s, fmt.Errorf("%w: entry %d stored under key %x", ErrCorrupt, e.Index, k)
		}
		if n := len(s.Entries); n > 0 && s.Entries[n-1].Index+1 != e.Index {
			return s, fmt.Errorf("%w: group %d: log gap after index %d", ErrCorrupt, group, s.Entries[n-1].Index)
		}
		s.Entries = append(s.Entries, e)
	}
	return s, it.Error()
}

// Entries implements Store. It scans the group's log keys from lo, so a
// read costs one seek plus the entries returned.
func (p *Pebble) Entries(group, lo, hi, maxBytes uint64) ([]raftpb.Entry, error) {
	if lo >= hi {
		return nil, nil
	}
	it, err := p.db.NewIter(&pebble.IterOptions{
		LowerBound: logKey(group, lo),
		UpperBound: logKey(group, hi),
	})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	out := make([]raftpb.Entry, 0, min(hi-lo, 64))
	var size uint64
	next := lo
	for it.First(); it.Valid(); it.Next() {
		k, v := it.Key(), it.Value()
		if len(k) != logKeyLen {
			return nil, fmt.Errorf("%w: key %x", ErrCorrupt, k)
		}
		if i := binary.BigEndian.Uint64(k[9:]); i != next {
			return nil, fmt.Errorf("%w: group %d index %d", ErrEntryMissing, group, next)
		}
		// The stored value is the entry's encoding: its length is the
		// entry's Size.
		if len(out) > 0 && size+uint64(len(v)) > maxBytes {
			return out, nil
		}
		var e raftpb.Entry
		if err := e.Unmarshal(v); err != nil { // copies Data out of v
			return nil, fmt.Errorf("%w: entry %x: %v", ErrCorrupt, k, err)
		}
		if e.Index != next {
			return nil, fmt.Errorf("%w: entry %d stored under key %x", ErrCorrupt, e.Index, k)
		}
		out = append(out, e)
		size += uint64(len(v))
		next++
	}
	if err := it.Error(); err != nil {
		return nil, err
	}
	if next < hi {
		return nil, fmt.Errorf("%w: group %d index %d", ErrEntryMissing, group, next)
	}
	return out, nil
}

// NewBatch implements Store.
func (p *Pebble) NewBatch() Batch { return &pebbleBatch{db: p.db, b: p.db.NewBatch()} }

type pebbleBatch struct {
	db  *pebble.DB
	b   *pebble.Batch
	buf []byte
}

func (b *pebbleBatch) Append(group uint64, entries []raftpb.Entry, prevLast uint64) {
	for i := range entries {
		e := &entries[i]
		op := b.b.SetDeferred(logKeyLen, e.Size())
		putLogKey(op.Key, group, e.Index)
		if _, err := e.MarshalToSizedBuffer(op.Value); err != nil {
			panic(err) // sized buffer: cannot fail
		}
		_ = op.Finish()
	}
	if n := len(entries); n > 0 {
		if last := entries[n-1].Index; prevLast > last {
			_ = b.b.DeleteRange(logKey(group, last+1), logKey(group, prevLast+1), nil)
		}
	}
}

func (b *pebbleBatch) setMsg(kind byte, group uint64, size int, marshal func([]byte) (int, error)) {
	op := b.b.SetDeferred(groupKeyLen, size)
	putGroupKey(op.Key, kind, group)
	if _, err := marshal(op.Value); err != nil {
		panic(err)
	}
	_ = op.Finish()
}

func (b *pebbleBatch) SetHardState(group uint64, hs raftpb.HardState) {
	b.setMsg(kindHardState, group, hs.Size(), hs.MarshalToSizedBuffer)
}

func (b *pebbleBatch) SetConfState(group uint64, cs raftpb.ConfState, index uint64) {
	b.buf = encodeConf(b.buf[:0], &cs, index)
	_ = b.b.Set(groupKey(kindConfState, group), b.buf, nil)
}

func (b *pebbleBatch) SetSnapshot(group uint64, snap raftpb.Snapshot) {
	b.SetSnapshotKeepLog(group, snap)
	b.Truncate(group, math.MaxUint64) // the whole log: see Batch.SetSnapshot
}

func (b *pebbleBatch) SetSnapshotKeepLog(group uint64, snap raftpb.Snapshot) {
	b.setMsg(kindSnapshot, group, snap.Size(), snap.MarshalToSizedBuffer)
}

func (b *pebbleBatch) Truncate(group uint64, before uint64) {
	_ = b.b.DeleteRange(logKey(group, 0), logKey(group, before), nil)
}

func (b *pebbleBatch) DeleteGroup(group uint64) {
	_ = b.b.DeleteRange(logKey(group, 0), logKey(group, math.MaxUint64), nil)
	for _, k := range []byte{kindHardState, kindConfState, kindSnapshot} {
		_ = b.b.Delete(groupKey(k, group), nil)
	}
}

func (b *pebbleBatch) Empty() bool { return b.b.Empty() }

func (b *pebbleBatch) Commit(sync bool) error {
	opt := pebble.NoSync
	if sync {
		opt = pebble.Sync
	}
	err := b.b.Commit(opt)
	b.b.Reset()
	return err
}

func (b *pebbleBatch) Close() { _ = b.b.Close() }

func encodeConf(dst []byte, cs *raftpb.ConfState, index uint64) []byte {
	dst = binary.BigEndian.AppendUint64(dst, index)
	n := len(dst)
	dst = append(dst, make([]byte, cs.Size())...)
	if _, err := cs.MarshalToSizedBuffer(dst[n:]); err != nil {
		panic(err)
	}
	return dst
}

func decodeConf(v []byte, cs *raftpb.ConfState, index *uint64) error {
	if len(v) < 8 {
		return fmt.Errorf("conf state record of %d bytes", len(v))
	}
	*index = binary.BigEndian.Uint64(v)
	return cs.Unmarshal(v[8:])
}

// quietLogger keeps Pebble's informational chatter out of the node's logs;
// errors still surface through returned errors, and fatal ones panic.
type quietLogger struct{}

func (quietLogger) Infof(string, ...interface{})  {}
func (quietLogger) Errorf(string, ...interface{}) {}
func (quietLogger) Fatalf(format string, args ...interface{}) {
	panic(fmt.Sprintf("storage: pebble: "+format, args...))
}
