package kv

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"slices"

	"github.com/cockroachdb/pebble/v2"
)

// A range's snapshot:
//
//	"FKV4" revision(8) leases granted(8) history floor(8) descriptor(bytes)
//	then records: kind(1) key(bytes) value(bytes)
//
// Records of the range-local kinds (localKinds) carry their key after the
// kind and range ID; records of the global kinds (globalKinds) carry their
// user key, and only those in the range's span are in it; history records
// (history.go) carry their key after the kind, and only those of user keys
// in the span are in it.

// Snapshot implements multiraft.StateMachine: the range's state at the
// applied index.
func (s *StateMachine) Snapshot(w io.Writer) error {
	desc := s.desc.Load()
	if desc == nil {
		return fmt.Errorf("%w: range %d: snapshot", ErrUninitialized, s.id)
	}
	if err := s.flush(); err != nil {
		return err
	}
	return writeSnapshot(w, s.db, s.id, desc, s.revision.Load(), s.leaseSeq, s.floorWord())
}

// OpenSnapshot implements multiraft.SnapshotOpener: the range's state at
// the applied index, read from a Pebble snapshot as the stream is read, so
// that it is never whole in memory and applies go on meanwhile. Called by
// the worker that holds the range.
func (s *StateMachine) OpenSnapshot() (io.ReadCloser, error) {
	desc := s.desc.Load()
	if desc == nil {
		return nil, fmt.Errorf("%w: range %d: snapshot", ErrUninitialized, s.id)
	}
	if err := s.flush(); err != nil {
		return nil, err
	}
	return &snapshotStream{db: s.db, id: s.id, desc: desc.Clone(), rev: s.revision.Load(), leaseSeq: s.leaseSeq,
		floor: s.floorWord(), snap: s.db.NewSnapshot()}, nil
}

// snapshotStream is a range's snapshot read from a Pebble snapshot: its
// writer goroutine (writeSnapshot into a pipe) starts at the first Read;
// Close stops it and releases the Pebble snapshot.
type snapshotStream struct {
	db            *pebble.DB
	id            uint64
	desc          Descriptor
	rev, leaseSeq uint64
	floor         uint64 // with histKept
	snap          *pebble.Snapshot

	pr   *io.PipeReader
	done chan struct{} // closed when the writer goroutine is gone
}

func (st *snapshotStream) Read(p []byte) (int, error) {
	if st.pr == nil {
		pr, pw := io.Pipe()
		st.pr, st.done = pr, make(chan struct{})
		go func() { // snapshotWriter: one per snapshot being sent
			defer close(st.done)
			err := writeSnapshot(pw, st.snap, st.id, &st.desc, st.rev, st.leaseSeq, st.floor)
			st.snap.Close()
			pw.CloseWithError(err)
		}()
	}
	return st.pr.Read(p)
}

// Close releases the stream, waiting for its writer to stop.
func (st *snapshotStream) Close() error {
	if st.pr == nil {
		return st.snap.Close()
	}
	st.pr.Close() // the writer's next write fails
	<-st.done
	return nil
}

// writeSnapshot writes range id's snapshot, as r holds it, to w.
func writeSnapshot(w io.Writer, r pebble.Reader, id uint64, desc *Descriptor, rev, leaseSeq, floor uint64) error {
	bw := bufio.NewWriterSize(w, 64<<10)
	bw.WriteString(snapMagic)
	var hdr [24]byte
	binary.BigEndian.PutUint64(hdr[:], rev)
	binary.BigEndian.PutUint64(hdr[8:], leaseSeq)
	binary.BigEndian.PutUint64(hdr[16:], floor)
	bw.Write(hdr[:])
	bw.Write(appendBytes(nil, desc.Encode()))
	var buf []byte
	emit := func(kind byte, lo, hi []byte, skip int) error {
		it, err := r.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
		if err != nil {
			return err
		}
		defer it.Close()
		for it.First(); it.Valid(); it.Next() {
			buf = append(buf[:0], kind)
			buf = appendBytes(buf, it.Key()[skip:])
			buf = appendBytes(buf, it.Value())
			if _, err := bw.Write(buf); err != nil {
				return err
			}
		}
		return it.Error()
	}
	for _, kind := range localKinds {
		lo, hi := localBounds(kind, id)
		if err := emit(kind, lo, hi, localLen); err != nil {
			return err
		}
	}
	for _, kind := range globalKinds {
		lo, hi := globalBounds(kind, desc.Start, desc.End)
		if err := emit(kind, lo, hi, 1); err != nil {
			return err
		}
	}
	lo, hi := histBounds(desc.Start, desc.End)
	if err := emit(kindHistory, lo, hi, 1); err != nil {
		return err
	}
	return bw.Flush()
}

// restoreBatchBytes bounds the Pebble batch a restore fills before it
// commits it and starts another: a restore holds this much at a time,
// whatever the size of the snapshot. Well under half of any memtable we
// configure: Pebble keeps a batch of half a memtable or more whole in
// memory until it is flushed. Restoring 97 MiB grew the heap by 19 MiB
// with it (TestStreamedSnapshotFlat).
const restoreBatchBytes = 1 << 20

// restoreReadBytes is how much a restore reads of a record at a time.
const restoreReadBytes = 64 << 10

// Restore implements multiraft.StateMachine: the range's state is replaced
// by the snapshot's, in batches of restoreBatchBytes, the applied index and
// descriptor in the last: a crash in between leaves the old applied index,
// and the engine restores the snapshot again (it keeps it until the
// restore is durable). Queries fail with ErrUninitialized meanwhile. The
// data of the span the replica held before is deleted with it: what the
// snapshot's span holds comes from the snapshot, and what the old span held
// outside it belongs to other ranges now, whose replicas here restore it
// from their own snapshots (package ranges makes sure no other replica here
// holds any of it: ranges.Store.AcceptSnapshot).
func (s *StateMachine) Restore(r io.Reader, index uint64) error {
	br := bufio.NewReaderSize(r, 64<<10)
	hdr := make([]byte, snapHeaderLen)
	if _, err := io.ReadFull(br, hdr); err != nil {
		return fmt.Errorf("%w: snapshot header: %v", ErrCorrupt, err)
	}
	if magic := string(hdr[:len(snapMagic)]); magic != snapMagic {
		return fmt.Errorf("%w: snapshot magic %q", ErrCorrupt, magic)
	}
	rev := binary.BigEndian.Uint64(hdr[len(snapMagic):])
	leaseSeq := binary.BigEndian.Uint64(hdr[len(snapMagic)+8:])
	floor := binary.BigEndian.Uint64(hdr[len(snapMagic)+16:])
	readChunk := func(limit uint64) ([]byte, error) {
		n, err := binary.ReadUvarint(br)
		if err != nil {
			return nil, err
		}
		if n > limit {
			return nil, fmt.Errorf("%w: snapshot record of %d bytes", ErrCorrupt, n)
		}
		// The buffer grows with the bytes that arrive, not with the
		// length read: a torn or hostile snapshot of a few bytes could
		// otherwise make every restore allocate up to the limit (64 MiB).
		v := make([]byte, 0, min(n, restoreReadBytes))
		for uint64(len(v)) < n {
			k := int(min(n-uint64(len(v)), restoreReadBytes))
			v = slices.Grow(v, k)
			got, err := io.ReadFull(br, v[len(v):len(v)+k])
			v = v[:len(v)+got]
			if err != nil {
				return nil, err
			}
		}
		return v, nil
	}
	db, err := readChunk(1 << 20)
	if err != nil {
		return fmt.Errorf("%w: snapshot descriptor: %v", ErrCorrupt, err)
	}
	desc, err := DecodeDescriptor(db)
	if err != nil {
		return err
	}
	if desc.ID != s.id {
		return fmt.Errorf("%w: snapshot of range %d restored into range %d", ErrCorrupt, desc.ID, s.id)
	}
	// Out with the held writes first: replacing Pebble's state under them
	// would show readers a mix of the two.
	if err := s.flush(); err != nil {
		return err
	}
	s.restore.Lock()
	defer s.restore.Unlock()
	b := s.db.NewBatch()
	defer func() { b.Close() }()
	for _, kind := range localKinds {
		lo, hi := localBounds(kind, s.id)
		if err := b.DeleteRange(lo, hi, nil); err != nil {
			return err
		}
	}
	spans := []*Descriptor{&desc}
	if old := s.desc.Load(); old != nil {
		spans = append(spans, old)
	}
	for _, d := range spans {
		if err := deleteSpanData(b, d.Start, d.End); err != nil {
			return err
		}
	}
	for {
		kind, err := br.ReadByte()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("%w: snapshot kind: %v", ErrCorrupt, err)
		}
		local := slices.Contains(localKinds, kind)
		if !local && !slices.Contains(globalKinds, kind) && kind != kindHistory {
			return fmt.Errorf("%w: snapshot record kind %q", ErrCorrupt, kind)
		}
		k, err := readChunk(2*MaxKeySize + 16) // a history key escapes its bytes
		if err != nil {
			return fmt.Errorf("%w: snapshot key: %v", ErrCorrupt, err)
		}
		limit := uint64(MaxKeySize + MaxValueSize + 8)
		switch kind {
		case kindSession:
			limit = sessionRecordLimit // a session's results (session.go)
		case kindElection:
			limit = 64 << 20 // up to MaxCandidates candidates with values
		}
		v, err := readChunk(limit)
		if err != nil {
			return fmt.Errorf("%w: snapshot value: %v", ErrCorrupt, err)
		}
		var key []byte
		switch {
		case local:
			key = append(localKey(kind, s.id, len(k)), k...)
		case kind == kindHistory:
			key = append([]byte{kind}, k...)
			uk, _, ok := parseHistKey(key)
			if !ok || !desc.Contains(uk) {
				return fmt.Errorf("%w: snapshot of %v holds history key %x", ErrCorrupt, &desc, k)
			}
		default:
			if !desc.Contains(k) {
				return fmt.Errorf("%w: snapshot of %v holds key %q", ErrCorrupt, &desc, k)
			}
			key = globalKey(kind, k)
		}
		if err := b.Set(key, v, nil); err != nil {
			return err
		}
		if b.Len() >= restoreBatchBytes {
			// From here until the last batch commits, the range holds
			// part of each state: if the restore fails, no query may run.
			s.restoreFailed.Store(true)
			if err := b.Commit(pebble.NoSync); err != nil {
				return fmt.Errorf("kv: range %d: commit restore: %w", s.id, err)
			}
			b.Close()
			b = s.db.NewBatch()
		}
	}
	if err := b.Set(localKey(kindDescriptor, s.id, 0), desc.Encode(), nil); err != nil {
		return err
	}
	s.leaseSeq = leaseSeq
	// The sender's floor, and whether it kept history (then this replica
	// keeps it too, or fills it in below).
	if err := b.Set(s.appliedKey(), encodeApplied(index, rev, leaseSeq, min(floor&^histKept, rev)|floor&histKept), nil); err != nil {
		return err
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("kv: range %d: commit restore: %w", s.id, err)
	}
	// Readers see the new descriptor and index only once the state is in.
	if err := s.load(s.db); err != nil {
		return err
	}
	s.restoreFailed.Store(false)
	s.hist.cursor, s.hist.marks = nil, nil
	if err := s.backfillHistory(); err != nil {
		return err
	}
	s.feedp.Load().reset(rev) // watchers read what they lack from the history
	s.descriptorChanged()
	s.leasesChanged()
	s.publish(nil, true)
	return nil
}
