package kv

// Fuzz targets of the package's decoders. Everything they decode comes
// from outside the process: commands in raft log entries (written by any
// replica's leader), query answers (read by clients from any node),
// records read back from disk, snapshots sent by another node. Each target
// asserts that its decoder never panics; that it refuses a count or a
// length its input cannot hold before it allocates for it
// (testutil.CheckAlloc); and that it agrees with its encoder both ways:
// a value built from the fuzz input encodes and decodes to itself, and
// whatever decodes encodes to bytes that decode to the same value.
//
// go test -run '^$' -fuzz '^FuzzCommand$' -fuzztime 20s ./kv runs one;
// tools/fuzz.sh runs them all.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/flotilla/flotilla/internal/testutil"
	"github.com/flotilla/flotilla/multiraft"
	"github.com/flotilla/flotilla/transport"
)

// seedDescriptor is the range most seeds describe.
var seedDescriptor = Descriptor{ID: 3, Start: []byte("b"), End: []byte("m"), Replicas: []uint64{1, 2, 3}, Generation: 4, Sticky: true}

// seedCommands returns one command of every op, as the Store and clients
// build them.
func seedCommands(t testing.TB) []Command {
	split, err := SplitCommand(&seedDescriptor, []byte("f"), 9, true)
	if err != nil {
		t.Fatal(err)
	}
	right := Descriptor{ID: 5, Start: []byte("m"), End: []byte("t"), Replicas: []uint64{1, 2, 3}, Generation: 2}
	return []Command{
		{Op: OpPut, Key: []byte("a"), Value: []byte("1")},
		{Op: OpPut, Key: []byte("k"), Value: []byte("v"), Lease: LeaseID(3, 1)},
		sessionWrite(Command{Op: OpDelete, Key: []byte("a")}, 42, 7, 3, false, 1_700_000_000_000),
		{Op: OpCAS, Key: []byte("a"), Value: []byte("2"), Expected: []byte("1")},
		sessionWrite(Command{Op: OpCAS, Key: []byte("b"), Value: []byte("x"), ExpectAbsent: true}, 9, 1, 1, true, 5),
		{Op: OpLeaseGrant, TTL: 5 * time.Second, Time: 1},
		{Op: OpLeaseRevoke, Lease: 77},
		{Op: OpLeaseExpire, Lease: 77},
		{Op: OpCampaign, Key: []byte("e"), Value: []byte("me"), Lease: 77},
		{Op: OpResign, Key: []byte("e"), Lease: 77},
		{Op: OpDeleteRange, Key: []byte("a"), End: []byte("z")},
		{Op: OpDeleteRange, Key: []byte("a")},
		{Op: OpMetaUpdate, Value: EncodeDescriptors([]Descriptor{seedDescriptor, right})},
		{Op: OpAllocRangeID},
		split,
		FreezeCommand(&right, 3),
		MergeCommand(&seedDescriptor, &right, 12),
		{Op: OpRevoked, Lease: 77},
		AuthPut([]byte("u/alice"), []byte("record"), nil, false),
		sessionWrite(AuthPut([]byte("u/alice"), []byte("new"), nil, true), 9, 2, 1, false, 6),
		AuthPut([]byte("r/admin"), []byte("new"), []byte("old"), false),
		AuthDelete([]byte("u/alice"), nil),
		sessionWrite(AuthDelete([]byte("r/admin"), []byte("new")), 9, 3, 2, false, 7),
		TxnCommand(Txn{}),
		sessionWrite(TxnCommand(Txn{
			Compares: []Compare{{Key: []byte("a"), Target: CompareValue, Op: CompareEqual, Value: []byte("1")}, {Key: []byte("b"), Target: CompareModRevision, Op: CompareLess, Number: 9}},
			Then:     []TxnOp{{Kind: TxnPut, Key: []byte("a"), Value: []byte("2"), Lease: 5}, {Kind: TxnDeleteRange, Key: []byte("c"), End: []byte("d")}},
			Else:     []TxnOp{{Kind: TxnGet, Key: []byte("a")}, {Kind: TxnScan, Key: []byte("a"), End: []byte("z"), Limit: 3}, {Kind: TxnDelete, Key: []byte("e")}},
		}), 9, 4, 3, false, 8),
	}
}

// txnFrom builds a transaction from fuzz input: any target, operator and
// op kind (and some that do not exist).
func txnFrom(in *testutil.FuzzInput) *Txn {
	t := &Txn{}
	for n := in.Small(3); n > 0; n-- {
		c := Compare{Key: in.Bytes(8), Target: CompareTarget(in.Small(6)), Op: CompareOp(in.Small(6))}
		if c.Target == CompareValue {
			c.Value = in.Bytes(8)
		} else {
			c.Number = in.Uint64()
		}
		t.Compares = append(t.Compares, c)
	}
	for _, ops := range []*[]TxnOp{&t.Then, &t.Else} {
		for n := in.Small(3); n > 0; n-- {
			op := TxnOp{Kind: TxnOpKind(in.Small(7)), Key: in.Bytes(8)}
			switch op.Kind {
			case TxnPut:
				op.Value, op.Lease = in.Bytes(8), in.Uint64()
			case TxnScan:
				op.End, op.Limit = in.Bytes(8), in.Small(MaxTxnScanLimit+2)
			case TxnDeleteRange:
				op.End = in.Bytes(8)
			}
			*ops = append(*ops, op)
		}
	}
	return t
}

// sent is what of c its encoding carries: the TTL only of lease ops, the
// lease only of lease ops and of the writes that attach a key.
func sent(c Command) Command {
	if c.Op == OpTxn {
		// Encode writes the transaction, decoded from Value if not given.
		if c.Txn == nil {
			t, err := decodeTxn(c.Value)
			if err != nil {
				return c
			}
			c.Txn = t
		}
		c.Value = c.Txn.encode()
	}
	if !c.Op.hasLease() {
		c.TTL = 0
		if !c.Op.canAttach() {
			c.Lease = 0
		}
	}
	return c
}

// commandFrom builds a command from fuzz input: any op (and two that do
// not exist), fields of every kind, sometimes a session.
func commandFrom(in *testutil.FuzzInput) Command {
	c := Command{
		Op:           Op(in.Small(int(opLast) + 2)),
		Key:          in.Bytes(32),
		Value:        in.Bytes(32),
		Expected:     in.Bytes(32),
		End:          in.Bytes(32),
		ExpectAbsent: in.Bool(),
		Register:     in.Bool(),
		Lease:        in.Uint64(),
		TTL:          time.Duration(in.Uint64()%uint64(2*MaxLeaseTTL/time.Millisecond)) * time.Millisecond,
		Time:         int64(in.Uint64() >> 1),
	}
	if in.Bool() {
		c.Session, c.Seq, c.Acked = in.Uint64(), in.Uint64(), in.Uint64()
	}
	if c.Op == OpMetaUpdate && in.Bool() {
		c.Value = EncodeDescriptors(descriptorsFrom(in))
	}
	if c.Op == OpTxn && in.Bool() {
		c.Key, c.Expected, c.End, c.ExpectAbsent = nil, nil, nil, false
		c.Txn = txnFrom(in)
	}
	return c
}

// checkCommand fails t unless enc decodes to want.
func checkCommand(t *testing.T, enc []byte, want Command) {
	t.Helper()
	got, err := decodeCommand(enc)
	if err != nil {
		t.Fatalf("%+v encodes to %x, which does not decode: %v", want, enc, err)
	}
	if !testutil.Same(got, want) {
		t.Fatalf("%+v encodes to %x, which decodes to %+v", want, enc, got)
	}
}

// FuzzCommand: decodeCommand, which reads every committed log entry of a
// range, against Command.Encode, which every proposer uses.
func FuzzCommand(f *testing.F) {
	for _, c := range seedCommands(f) {
		b, err := c.Encode()
		if err != nil {
			f.Fatal(err)
		}
		testutil.AddSeeds(f, b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var c Command
		var err error
		testutil.CheckAlloc(t, "decodeCommand", testutil.DecodeAllocLimit(len(b)), func() { c, err = decodeCommand(b) })
		if err == nil {
			// What decodes is what a proposer could have encoded: the
			// state machine must never apply a command that Encode
			// refuses (an empty span to delete, an out-of-range TTL).
			enc, err := c.Encode()
			if err != nil {
				t.Fatalf("%x decodes to %+v, which Encode refuses: %v", b, c, err)
			}
			checkCommand(t, enc, c)
		} else if !errors.Is(err, ErrBadCommand) {
			t.Fatalf("decode error %v, want ErrBadCommand", err)
		}
		c = commandFrom(testutil.NewFuzzInput(b))
		if enc, err := c.Encode(); err == nil {
			checkCommand(t, enc, sent(c))
		}
	})
}

// resultFrom builds a result from fuzz input.
func resultFrom(in *testutil.FuzzInput) Result {
	return Result{Revision: in.Uint64(), OK: in.Bool(), Found: in.Bool(), Current: in.Bytes(64),
		CurrentRevision: in.Uint64(), Err: string(in.Bytes(16)), Lease: in.Uint64(), Token: in.Uint64(),
		LeaseMissing: in.Bool(), SessionUnknown: in.Bool(), SessionStale: in.Bool(), KeyMismatch: in.Bool(),
		Count: in.Uint64(), TxnOps: txnOpsFrom(in)}
}

// txnOpsFrom builds a transaction's results from fuzz input.
func txnOpsFrom(in *testutil.FuzzInput) []TxnOpResult {
	var ops []TxnOpResult
	for n := in.Small(3); n > 0; n-- {
		op := TxnOpResult{Kind: TxnOpKind(1 + in.Small(int(TxnScan))), Found: in.Bool(), More: in.Bool(), Count: in.Uint64()}
		for m := in.Small(3); m > 0; m-- {
			op.KVs = append(op.KVs, KeyValue{Key: in.Bytes(8), Value: in.Bytes(8), Revision: in.Uint64(), CreateRevision: in.Uint64(), Version: in.Uint64()})
		}
		ops = append(ops, op)
	}
	return ops
}

// checkResult fails t unless r encodes, in exactly r.size() bytes, to
// bytes that decode to r.
func checkResult(t *testing.T, r Result) {
	t.Helper()
	enc := r.encode()
	if len(enc) != r.size() {
		t.Fatalf("%+v encodes to %d bytes, size() says %d", r, len(enc), r.size())
	}
	got, err := DecodeResult(enc)
	if (err != nil) != (r.Err != "") || (err != nil && !errors.Is(err, ErrBadCommand)) {
		t.Fatalf("%+v encodes to %x, which decodes with error %v", r, enc, err)
	}
	if !testutil.Same(got, r) {
		t.Fatalf("%+v encodes to %x, which decodes to %+v", r, enc, got)
	}
}

// FuzzResult: DecodeResult, which reads the result of every write a
// client makes, against Result.encode.
func FuzzResult(f *testing.F) {
	for _, r := range []Result{
		{Revision: 7, OK: true},
		{Revision: 9, Found: true, Current: []byte("cur"), CurrentRevision: 3},
		{Err: "kv: malformed command"},
		{Lease: LeaseID(2, 5), Token: 11, KeyMismatch: true, SessionStale: true, SessionUnknown: true, LeaseMissing: true},
		{Count: 1 << 40, Current: EncodeDescriptors([]Descriptor{seedDescriptor})},
		{Revision: 12, OK: true, TxnOps: []TxnOpResult{{Kind: TxnPut}, {Kind: TxnGet, Found: true, KVs: []KeyValue{{Key: []byte("a"), Value: []byte("1"), Revision: 12, CreateRevision: 3, Version: 4}}}, {Kind: TxnScan, More: true}, {Kind: TxnDeleteRange, Count: 7}}},
	} {
		testutil.AddSeeds(f, r.encode())
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var r Result
		var err error
		testutil.CheckAlloc(t, "DecodeResult", testutil.DecodeAllocLimit(len(b)), func() { r, err = DecodeResult(b) })
		switch {
		case err == nil || errors.Is(err, ErrBadCommand):
			checkResult(t, r)
		case !errors.Is(err, ErrCorrupt):
			t.Fatalf("decode error %v, want ErrCorrupt or ErrBadCommand", err)
		}
		checkResult(t, resultFrom(testutil.NewFuzzInput(b)))
	})
}

// corrupt is the error the package's decoders return for malformed input.
func corrupt(err error) bool { return errors.Is(err, ErrCorrupt) }

// getAnswer is the answer to a get query.
type getAnswer struct {
	found bool
	kv    KeyValue
}

var getCodec = testutil.Codec[getAnswer]{
	Decode: func(b []byte) (getAnswer, error) {
		found, kv, err := DecodeGet(b)
		return getAnswer{found, kv}, err
	},
	Encode: func(a getAnswer) []byte { return encodeGetAnswer(a.found, metaOf(a.kv), a.kv.Value) },
	Clean:  corrupt,
}

// FuzzGetAnswer: DecodeGet, the client's reading of a get's answer.
func FuzzGetAnswer(f *testing.F) {
	testutil.AddSeeds(f, encodeGetAnswer(true, storedMeta{12, 3, 4}, []byte("value")), encodeGetAnswer(false, storedMeta{}, nil), encodeGetAnswer(true, storedMeta{1, 1, 1}, nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		getCodec.Check(t, b)
		in := testutil.NewFuzzInput(b)
		if in.Bool() {
			getCodec.RoundTrip(t, getAnswer{true, KeyValue{Revision: in.Uint64(), CreateRevision: in.Uint64(), Version: in.Uint64(), Value: in.Bytes(64)}})
		} else {
			getCodec.RoundTrip(t, getAnswer{})
		}
	})
}

// metaOf returns the revisions of kv as the state machine keeps them.
func metaOf(kv KeyValue) storedMeta {
	return storedMeta{Mod: kv.Revision, Create: kv.CreateRevision, Version: kv.Version}
}

// encodeScan encodes a scan answer with the state machine's encoder.
func encodeScan(kvs []KeyValue, resume []byte) []byte {
	var body []byte
	for _, kv := range kvs {
		body = appendScanEntry(body, kv.Key, metaOf(kv), kv.Value)
	}
	return encodeScanAnswer(len(kvs), body, resume)
}

// scanAnswer is the answer to a scan query.
type scanAnswer struct {
	kvs    []KeyValue
	resume []byte
}

var scanCodec = testutil.Codec[scanAnswer]{
	Decode: func(b []byte) (scanAnswer, error) {
		kvs, resume, err := DecodeScan(b)
		return scanAnswer{kvs, resume}, err
	},
	Encode: func(a scanAnswer) []byte { return encodeScan(a.kvs, a.resume) },
	Clean:  corrupt,
}

// FuzzScanAnswer: DecodeScan, the client's reading of a scan's answer.
func FuzzScanAnswer(f *testing.F) {
	kvs := []KeyValue{{Key: []byte("a"), Value: []byte("1"), Revision: 3, CreateRevision: 2, Version: 2}, {Key: []byte("b"), Revision: 4, CreateRevision: 4, Version: 1}}
	testutil.AddSeeds(f, encodeScan(kvs, []byte("b\x00")), encodeScan(kvs[:1], nil), encodeScan(nil, []byte("m")))
	// A count the answer cannot hold: refused before anything is
	// allocated for it.
	f.Add(encodeScanAnswer(MaxScanLimit, nil, nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		scanCodec.Check(t, b)
		in := testutil.NewFuzzInput(b)
		a := scanAnswer{kvs: make([]KeyValue, in.Small(8))}
		for i := range a.kvs {
			a.kvs[i] = KeyValue{Key: in.Bytes(16), Value: in.Bytes(32), Revision: in.Uint64(), CreateRevision: in.Uint64(), Version: in.Uint64()}
		}
		a.resume = in.Bytes(16)
		scanCodec.RoundTrip(t, a)
	})
}

// encodeAuth encodes an auth answer with the state machine's encoder:
// the revision of the first record (0 if none).
func encodeAuth(kvs []KeyValue) []byte {
	var body []byte
	var rev uint64
	for i, kv := range kvs {
		if i == 0 {
			rev = kv.Revision
		}
		body = appendBytes(appendBytes(body, kv.Key), kv.Value)
	}
	return encodeAuthAnswer(rev, len(kvs), body)
}

var authCodec = testutil.Codec[[]KeyValue]{Decode: DecodeAuthRecords, Encode: encodeAuth, Clean: corrupt}

// FuzzAuthAnswer: DecodeAuthRecords, the server's reading of the auth
// table.
func FuzzAuthAnswer(f *testing.F) {
	kvs := []KeyValue{{Key: []byte("r/admin"), Value: []byte("role"), Revision: 9}, {Key: []byte("u/alice"), Value: []byte("user"), Revision: 9}}
	testutil.AddSeeds(f, encodeAuth(kvs), encodeAuth(kvs[1:]), encodeAuth(nil))
	// A count the answer cannot hold.
	f.Add(encodeAuthAnswer(1, MaxAuthRecords, nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		authCodec.Check(t, b)
		// Built from the input: records in key order, at one revision,
		// come back.
		in := testutil.NewFuzzInput(b)
		rev := in.Uint64()
		var kvs []KeyValue
		for range in.Small(8) {
			k := append([]byte{byte(len(kvs))}, in.Bytes(16)...)
			kvs = append(kvs, KeyValue{Key: k, Value: append([]byte{'r'}, in.Bytes(32)...), Revision: rev})
		}
		authCodec.RoundTrip(t, kvs)
	})
}

// FuzzLeaseAnswer: the client's reading of the answers to lease and
// attachment queries, and the state machine's of a stored freeze record.
func FuzzLeaseAnswer(f *testing.F) {
	testutil.AddSeeds(f, encodeLeaseAnswer(true, 5*time.Second), encodeLeaseAnswer(false, 0),
		encodeLeaseAnswer(true, MaxLeaseTTL), []byte{0, 0, 0, 0, 0, 0, 0, 7})
	f.Fuzz(func(t *testing.T, b []byte) {
		if found, ttl, err := DecodeLeaseQuery(b); err == nil {
			enc := encodeLeaseAnswer(found, ttl)
			if found2, ttl2, err := DecodeLeaseQuery(enc); err != nil || found2 != found || ttl2 != ttl {
				t.Fatalf("(%v, %v) encodes to %x, which decodes to (%v, %v), %v", found, ttl, enc, found2, ttl2, err)
			}
		} else if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("lease answer error %v, want ErrCorrupt", err)
		}
		if lease, err := DecodeAttachedQuery(b); err == nil && !bytes.Equal(b, binary.BigEndian.AppendUint64(nil, lease)) {
			t.Fatalf("%x decodes to lease %d", b, lease)
		}
		in := testutil.NewFuzzInput(b)
		found, ttl := in.Bool(), time.Duration(in.Uint64()%uint64(MaxLeaseTTL/time.Millisecond))*time.Millisecond
		if found2, ttl2, err := DecodeLeaseQuery(encodeLeaseAnswer(found, ttl)); err != nil || found2 != found || ttl2 != ttl {
			t.Fatalf("(%v, %v) comes back as (%v, %v), %v", found, ttl, found2, ttl2, err)
		}
	})
}

// electionFrom builds an election record from fuzz input.
func electionFrom(in *testutil.FuzzInput) Election {
	e := Election{ModRevision: in.Uint64(), Token: in.Uint64()}
	for range in.Small(6) {
		e.Candidates = append(e.Candidates, Candidate{Lease: in.Uint64(), Created: in.Uint64(), Value: in.Bytes(32)})
	}
	return e
}

// FuzzElection: DecodeElection, which reads election records from disk
// and snapshots, and the answers to election queries.
func FuzzElection(f *testing.F) {
	e := Election{ModRevision: 9, Token: 4, Candidates: []Candidate{{Lease: 77, Value: []byte("me"), Created: 4}, {Lease: 78, Created: 8}}}
	testutil.AddSeeds(f, e.encode(), Election{}.encode())
	// A count of candidates the record cannot hold.
	f.Add(Election{ModRevision: 1, Token: 1, Candidates: make([]Candidate, MaxCandidates)}.encode()[:19])
	codec := testutil.Codec[Election]{Decode: DecodeElection, Encode: Election.encode, Clean: corrupt}
	f.Fuzz(func(t *testing.T, b []byte) {
		codec.Check(t, b)
		codec.RoundTrip(t, electionFrom(testutil.NewFuzzInput(b)))
	})
}

// FuzzLeaseRecord: decodeLease, which reads a range's stored leases.
func FuzzLeaseRecord(f *testing.F) {
	owner := leaseRec{ttl: 5 * time.Second, start: []byte("b"), end: []byte("m"), names: [][]byte{[]byte("e1"), []byte("e2")}}
	testutil.AddSeeds(f, owner.encode(), leaseRec{ttl: MaxLeaseTTL, stub: true}.encode())
	codec := testutil.Codec[leaseRec]{Decode: decodeLease, Encode: leaseRec.encode, Clean: corrupt}
	f.Fuzz(func(t *testing.T, b []byte) {
		codec.Check(t, b)
		in := testutil.NewFuzzInput(b)
		l := leaseRec{ttl: time.Duration(in.Uint64()%uint64(MaxLeaseTTL/time.Millisecond)) * time.Millisecond,
			stub: in.Bool(), start: in.Bytes(16), end: in.Bytes(16)}
		for range in.Small(4) {
			l.names = append(l.names, in.Bytes(16))
		}
		codec.RoundTrip(t, l)
	})
}

// FuzzSession: decodeSession and decodeClock, which read a range's stored
// client sessions and its session clock.
func FuzzSession(f *testing.F) {
	rec := &sessionRec{floor: 3, touched: 1_700_000_000_000}
	rec.add(3, Result{Revision: 9, OK: true}.encode())
	rec.add(5, Result{Revision: 10, Found: true, Current: []byte("x")}.encode())
	testutil.AddSeeds(f, rec.encode(), (&sessionRec{}).encode(), encodeClock(1_700_000_000_000, 1_699_999_000_000))
	// A count of results the record cannot hold.
	f.Add([]byte{3, 4, 0xa0, 0x8d, 0x06})
	codec := testutil.Codec[*sessionRec]{Decode: decodeSession, Encode: (*sessionRec).encode, Clean: corrupt}
	type clock struct{ clock, lastSweep int64 }
	clocks := testutil.Codec[clock]{
		Decode: func(b []byte) (clock, error) {
			c, l, err := decodeClock(b)
			return clock{c, l}, err
		},
		Encode: func(c clock) []byte { return encodeClock(c.clock, c.lastSweep) },
		Clean:  corrupt,
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		codec.Check(t, b)
		clocks.Check(t, b)
		in := testutil.NewFuzzInput(b)
		// Far enough below the top that the sequence numbers cannot wrap.
		r := &sessionRec{floor: in.Uint64() >> 1, touched: int64(in.Uint64())}
		seq := r.floor
		for range in.Small(8) {
			seq += uint64(in.Small(4)) + 1
			res := in.Bytes(32)
			r.results = append(r.results, seqResult{seq, res})
			r.bytes += len(res)
		}
		codec.RoundTrip(t, r)
	})
}

// descriptorFrom builds a descriptor from fuzz input; it may be one no
// range can have (Encode writes it all the same).
func descriptorFrom(in *testutil.FuzzInput) Descriptor {
	d := Descriptor{ID: in.Uint64(), Start: in.Bytes(16), End: in.Bytes(16), Generation: in.Uint64(), Sticky: in.Bool()}
	for range in.Small(5) {
		d.Replicas = append(d.Replicas, uint64(in.Small(256)))
	}
	return d
}

func descriptorsFrom(in *testutil.FuzzInput) []Descriptor {
	ds := make([]Descriptor, in.Small(4))
	for i := range ds {
		ds[i] = descriptorFrom(in)
	}
	return ds
}

// FuzzDescriptor: DecodeDescriptor, which reads a range's stored
// descriptor, the descriptor in a snapshot's header and the answer to a
// descriptor query.
func FuzzDescriptor(f *testing.F) {
	meta := rangeDesc(1, "", "")
	testutil.AddSeeds(f, seedDescriptor.Encode(), meta.Encode())
	f.Fuzz(func(t *testing.T, b []byte) {
		var d Descriptor
		var err error
		testutil.CheckAlloc(t, "DecodeDescriptor", testutil.DecodeAllocLimit(len(b)), func() { d, err = DecodeDescriptor(b) })
		switch {
		case err == nil:
			if cerr := d.check(); cerr != nil {
				t.Fatalf("%x decodes to a descriptor no range can have: %v", b, cerr)
			}
			enc := d.Encode()
			if got, err := DecodeDescriptor(enc); err != nil || !testutil.Same(got, d) {
				t.Fatalf("%v encodes to %x, which decodes to %v, %v", &d, enc, &got, err)
			}
		case !errors.Is(err, ErrCorrupt):
			t.Fatalf("decode error %v, want ErrCorrupt", err)
		}
		d = descriptorFrom(testutil.NewFuzzInput(b))
		enc := d.Encode()
		got, err := DecodeDescriptor(enc)
		// Exactly the descriptors a range can have come back.
		if (err == nil) != (d.check() == nil) || (err == nil && !testutil.Same(got, d)) {
			t.Fatalf("%v (check: %v) encodes to %x, which decodes to %v, %v", &d, d.check(), enc, &got, err)
		}
	})
}

// FuzzDescriptors: DecodeDescriptors, which reads meta updates in log
// entries, meta answers and split, merge and revocation results.
func FuzzDescriptors(f *testing.F) {
	testutil.AddSeeds(f, EncodeDescriptors([]Descriptor{seedDescriptor, rangeDesc(1, "", "b")}), EncodeDescriptors(nil))
	// A count of descriptors the list cannot hold.
	f.Add([]byte{0x80, 0x80, 0x01})
	codec := testutil.Codec[[]Descriptor]{Decode: DecodeDescriptors, Encode: EncodeDescriptors, Clean: corrupt}
	f.Fuzz(func(t *testing.T, b []byte) {
		codec.Check(t, b)
		ds := descriptorsFrom(testutil.NewFuzzInput(b))
		valid := true
		for i := range ds {
			valid = valid && ds[i].check() == nil
		}
		// Exactly the lists of descriptors ranges can have come back.
		if valid {
			codec.RoundTrip(t, ds)
		} else if got, err := DecodeDescriptors(EncodeDescriptors(ds)); err == nil {
			t.Fatalf("%v, which holds a descriptor no range can have, comes back as %v", ds, got)
		}
	})
}

// FuzzSplitMerge: the parameters of split, freeze and merge commands,
// which the ranges of a split or merge decode when they apply it.
func FuzzSplitMerge(f *testing.F) {
	right := Descriptor{ID: 5, Start: []byte("m"), End: []byte("t"), Replicas: []uint64{1, 2, 3}, Generation: 2}
	for _, c := range seedCommands(f) {
		if c.Op == OpSplit || c.Op == OpFreeze || c.Op == OpMerge {
			testutil.AddSeeds(f, c.Value)
		}
	}
	testutil.AddSeeds(f, FreezeCommand(&right, 1<<40).Value)
	f.Fuzz(func(t *testing.T, b []byte) {
		if newID, gen, sticky, ok := decodeSplit(&Command{Op: OpSplit, Value: b}); ok {
			d := Descriptor{ID: newID + 1, Generation: gen, Replicas: []uint64{1}}
			c, err := SplitCommand(&d, []byte("k"), newID, sticky)
			if err != nil {
				t.Fatal(err)
			}
			if id2, gen2, sticky2, ok := decodeSplit(&c); !ok || id2 != newID || gen2 != gen || sticky2 != sticky {
				t.Fatalf("split (%d, %d, %v) comes back as (%d, %d, %v, %v)", newID, gen, sticky, id2, gen2, sticky2, ok)
			}
		}
		if gen, into, ok := decodeFreeze(b); ok {
			c := FreezeCommand(&Descriptor{Generation: gen}, into)
			if gen2, into2, ok := decodeFreeze(c.Value); !ok || gen2 != gen || into2 != into {
				t.Fatalf("freeze (%d, %d) comes back as (%d, %d, %v)", gen, into, gen2, into2, ok)
			}
		}
		var ok bool
		var lgen, freeze uint64
		var rhs Descriptor
		testutil.CheckAlloc(t, "decodeMerge", testutil.DecodeAllocLimit(len(b)), func() { lgen, freeze, rhs, ok = decodeMerge(b) })
		if ok {
			c := MergeCommand(&Descriptor{Generation: lgen}, &rhs, freeze)
			if lgen2, freeze2, rhs2, ok := decodeMerge(c.Value); !ok || lgen2 != lgen || freeze2 != freeze || !testutil.Same(rhs2, rhs) {
				t.Fatalf("merge (%d, %d, %v) comes back as (%d, %d, %v, %v)", lgen, freeze, &rhs, lgen2, freeze2, &rhs2, ok)
			}
		}
		// Built from the input.
		in := testutil.NewFuzzInput(b)
		d := descriptorFrom(in)
		d.ID, d.Start, d.End, d.Replicas = 1, nil, nil, []uint64{1}
		newID, sticky := in.Uint64()|2, in.Bool()
		if c, err := SplitCommand(&d, []byte("k"), newID, sticky); err != nil {
			t.Fatal(err)
		} else if id2, gen2, sticky2, ok := decodeSplit(&c); !ok || id2 != newID || gen2 != d.Generation || sticky2 != sticky {
			t.Fatalf("split (%d, %d, %v) comes back as (%d, %d, %v, %v)", newID, d.Generation, sticky, id2, gen2, sticky2, ok)
		}
		rhs = descriptorFrom(in)
		if rhs.check() == nil {
			c := MergeCommand(&d, &rhs, newID)
			if lgen2, freeze2, rhs2, ok := decodeMerge(c.Value); !ok || lgen2 != d.Generation || freeze2 != newID || !testutil.Same(rhs2, rhs) {
				t.Fatalf("merge of %v comes back as (%d, %d, %v, %v)", &rhs, lgen2, freeze2, &rhs2, ok)
			}
		}
	})
}

// quietLogger keeps Pebble's notes ("Found 0 WALs", at every open) out of
// the fuzzers' output; errors still come back as errors.
type quietLogger struct{}

func (quietLogger) Infof(string, ...any)  {}
func (quietLogger) Errorf(string, ...any) {}
func (quietLogger) Fatalf(format string, args ...any) {
	panic(fmt.Sprintf("pebble: "+format, args...))
}

// openFuzzDB opens a fresh Pebble in memory.
func openFuzzDB(t testing.TB) *pebble.DB {
	t.Helper()
	db, err := pebble.Open("db", &pebble.Options{FS: vfs.NewMem(), Logger: quietLogger{}})
	if err != nil {
		t.Fatal(err)
	}
	return db
}

// filledRange returns a range holding one of everything a snapshot
// carries: data, a lease with an attached key, an election, a session, a
// pending revocation; the meta range auth records too.
func filledRange(t testing.TB, id uint64, start, end string) *StateMachine {
	db := openFuzzDB(t)
	t.Cleanup(func() { db.Close() })
	sm := openRange(t, db, id, start, end)
	lease := apply(t, sm, 1, Command{Op: OpLeaseGrant, TTL: time.Second}).Lease
	apply(t, sm, 2, Command{Op: OpPut, Key: []byte(start + "a"), Value: []byte("1")})
	apply(t, sm, 3, Command{Op: OpPut, Key: []byte(start + "b"), Value: []byte("2"), Lease: lease})
	apply(t, sm, 4, Command{Op: OpCampaign, Key: []byte(start + "e"), Value: []byte("me"), Lease: lease})
	apply(t, sm, 5, sessionWrite(Command{Op: OpPut, Key: []byte(start + "c"), Value: []byte("3")}, 42, 1, 1, true, 1_700_000_000_000))
	other := apply(t, sm, 6, Command{Op: OpLeaseGrant, TTL: time.Minute}).Lease
	apply(t, sm, 7, Command{Op: OpLeaseRevoke, Lease: other})
	if id == MetaRangeID {
		apply(t, sm, 8, AuthPut([]byte("u/alice"), []byte("record"), nil, true))
		apply(t, sm, 9, AuthPut([]byte("r/admin"), []byte("role"), nil, true))
	}
	return sm
}

func snapshotOf(t testing.TB, sm *StateMachine) []byte {
	var buf bytes.Buffer
	if err := sm.Snapshot(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// restoreAllocLimit is the heap one Restore of n bytes may allocate: its
// read buffer and Pebble batch, then in proportion to the input.
func restoreAllocLimit(n int) uint64 { return 4<<20 + 64*uint64(n) }

// FuzzRestore: Restore, which reads a snapshot another node sent, into a
// fresh range on an in-memory Pebble. A snapshot either restores or fails
// with ErrCorrupt; never allocates for a length it does not hold; and what
// restored is a state: SnapshotDescriptor reads its descriptor, its own
// snapshot restores to the same snapshot, and queries of it answer or
// fail cleanly.
func FuzzRestore(f *testing.F) {
	testutil.AddSeeds(f, snapshotOf(f, filledRange(f, 3, "", "")), snapshotOf(f, filledRange(f, 3, "b", "m")))
	f.Add(snapshotOf(f, filledRange(f, MetaRangeID, "", "")))
	// A record that claims far more bytes than the snapshot holds.
	empty := snapshotOf(f, openRange(f, filledRange(f, 3, "", "").db, 4, "", ""))
	f.Add(append(empty, kindElection, 1, 'e', 0x80, 0x80, 0x80, 0x1f))
	f.Fuzz(func(t *testing.T, b []byte) {
		id := uint64(3)
		if _, file := transport.SnapshotFile(b); !file {
			if d, err := SnapshotDescriptor(b); err == nil {
				id = d.ID
			}
		}
		db := openFuzzDB(t)
		defer db.Close()
		sm := openRange(t, db, id, "", "")
		var err error
		testutil.CheckAlloc(t, "Restore", restoreAllocLimit(len(b)), func() { err = sm.Restore(bytes.NewReader(b), 20) })
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Restore: %v, want ErrCorrupt", err)
			}
			return
		}
		desc, ok := sm.Descriptor()
		if !ok || sm.AppliedIndex() != 20 {
			t.Fatalf("restored range: descriptor %v (%v), applied %d", desc, ok, sm.AppliedIndex())
		}
		if d, err := SnapshotDescriptor(b); err != nil || !d.Equal(desc) {
			t.Fatalf("SnapshotDescriptor: %v, %v; restored %v", &d, err, desc)
		}
		queryAll(t, sm)
		snap := snapshotOf(t, sm)
		db2 := openFuzzDB(t)
		defer db2.Close()
		sm2 := openRange(t, db2, id, "", "")
		if err := sm2.Restore(bytes.NewReader(snap), 20); err != nil {
			t.Fatalf("the snapshot of a restored range does not restore: %v", err)
		}
		if again := snapshotOf(t, sm2); !bytes.Equal(again, snap) {
			t.Fatalf("the snapshot of a restored range restores to another snapshot:\n%x\n%x", snap, again)
		}
	})
}

// queryAll reads all of sm that queries reach: every key (scanned, then
// each read), its elections, attachments and leases, its auth table. Each answer must
// decode; a failure must be a clean one.
func queryAll(t *testing.T, sm *StateMachine) {
	t.Helper()
	desc, _ := sm.Descriptor()
	q, err := EncodeScan(desc.Start, desc.End, MaxScanLimit)
	if err != nil {
		t.Fatal(err)
	}
	out, err := sm.Query(q)
	if err != nil {
		// A frozen range serves nothing (merge.go).
		if _, _, frozen := sm.Frozen(); !errors.Is(err, ErrCorrupt) && !(frozen && errors.Is(err, ErrKeyMismatch)) {
			t.Fatalf("scan: %v", err)
		}
		return
	}
	kvs, _, err := DecodeScan(out)
	if err != nil {
		t.Fatalf("scan answer: %v", err)
	}
	for _, kv := range kvs {
		for _, q := range [][]byte{append([]byte{byte(QueryGet)}, kv.Key...), append([]byte{byte(QueryElection)}, kv.Key...), append([]byte{byte(QueryAttached)}, kv.Key...)} {
			checkAnswer(t, sm, q)
		}
	}
	leases, _ := sm.Leases(0)
	for id := range leases {
		checkAnswer(t, sm, EncodeLeaseQuery(id))
	}
	if _, err := sm.Revocations(); err != nil && !errors.Is(err, ErrCorrupt) {
		t.Fatalf("revocations: %v", err)
	}
	checkAnswer(t, sm, EncodeAuthQuery())
}

// checkAnswer runs query q on sm: it fails as a query may (a malformed
// query, a key elsewhere, corrupt data) or its answer decodes with the
// decoder of its kind, and says what the query asked.
func checkAnswer(t *testing.T, sm *StateMachine, q []byte) {
	t.Helper()
	out, err := sm.Query(q)
	if err != nil {
		if !errors.Is(err, ErrBadCommand) && !errors.Is(err, ErrKeyMismatch) && !errors.Is(err, ErrCorrupt) &&
			!errors.Is(err, ErrCompacted) && !errors.Is(err, ErrFutureRevision) {
			t.Fatalf("query %x: %v", q, err)
		}
		return
	}
	desc, _ := sm.Descriptor()
	switch QueryKind(q[0]) {
	case QueryGet, QueryGetAt:
		_, _, err = DecodeGet(out)
	case QueryScan, QueryScanAt:
		var kvs []KeyValue
		if kvs, _, err = DecodeScan(out); err == nil {
			r := reader{b: q[1:]}
			limit, start, end := r.uvarint(), r.bytes(), r.bytes()
			for i, kv := range kvs {
				if uint64(len(kvs)) > limit || !desc.Contains(kv.Key) || bytes.Compare(kv.Key, start) < 0 ||
					(len(end) > 0 && bytes.Compare(kv.Key, end) >= 0) || (i > 0 && bytes.Compare(kvs[i-1].Key, kv.Key) >= 0) {
					t.Fatalf("scan %x answers %v", q, kvs)
				}
			}
		}
	case QueryLease:
		_, _, err = DecodeLeaseQuery(out)
	case QueryElection:
		_, err = DecodeElection(out)
	case QueryAttached:
		_, err = DecodeAttachedQuery(out)
	case QueryDescriptor:
		var d Descriptor
		if d, err = DecodeDescriptor(out); err == nil && !d.Equal(desc) {
			t.Fatalf("descriptor query answers %v, the range has %v", &d, desc)
		}
	case QueryMeta:
		var ds []Descriptor
		if ds, err = DecodeDescriptors(out); err == nil && (len(ds) == 0 || uint64(len(ds)) > MaxMetaUpdate) {
			t.Fatalf("meta query %x answers %d descriptors", q, len(ds))
		}
	case QueryAuth:
		var kvs []KeyValue
		if kvs, err = DecodeAuthRecords(out); err == nil && sm.RangeID() != MetaRangeID {
			t.Fatalf("range %d answers an auth query with %d records", sm.RangeID(), len(kvs))
		}
	default:
		t.Fatalf("query %x of unknown kind answered", q)
	}
	if err != nil {
		t.Fatalf("query %x: answer %x does not decode: %v", q, out, err)
	}
}

// FuzzQuery: Query, which decodes the queries clients send (through any
// node), on the meta range holding one of everything. A query answers
// with what its kind's decoder reads, or fails as a query may.
func FuzzQuery(f *testing.F) {
	sm := filledRange(f, MetaRangeID, "", "")
	get, _ := EncodeGet([]byte("a"))
	scan, _ := EncodeScan([]byte("a"), []byte("z"), 2)
	scanAll, _ := EncodeScan(nil, nil, 0)
	election, _ := EncodeElectionQuery([]byte("e"))
	attached, _ := EncodeAttachedQuery([]byte("b"))
	getAt, _ := EncodeGetAt([]byte("a"), 2)
	scanAt, _ := EncodeScanAt([]byte("a"), []byte("z"), 2, 3)
	testutil.AddSeeds(f, get, scan, scanAll, election, attached, EncodeLeaseQuery(LeaseID(MetaRangeID, 1)),
		EncodeDescriptorQuery(), EncodeMetaQuery(nil, 10), EncodeMetaQuery([]byte("q"), 1), EncodeAuthQuery(), getAt, scanAt)
	f.Fuzz(func(t *testing.T, q []byte) {
		if len(q) == 0 {
			if _, err := sm.Query(q); !errors.Is(err, ErrBadCommand) {
				t.Fatalf("empty query: %v", err)
			}
			return
		}
		checkAnswer(t, sm, q)
	})
}

// FuzzApply: Apply of arbitrary commands, one log entry each. A committed
// command that does not decode, or that the range cannot apply, gets an
// error result: it must never make Apply fail (that stops the node) nor
// panic. The one exception is a merge whose right-hand replica is not
// here, which stops the node on purpose (merge.go); none is here, so any
// merge that gets that far fails.
func FuzzApply(f *testing.F) {
	for _, c := range seedCommands(f) {
		b, err := c.Encode()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(append([]byte{byte(len(b))}, b...))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		db := openFuzzDB(t)
		defer db.Close()
		sm := openRange(t, db, MetaRangeID, "", "")
		in := testutil.NewFuzzInput(b)
		for index := uint64(1); ; index++ {
			data := in.Bytes(255)
			if data == nil {
				break
			}
			cmds := []multiraft.Command{{Index: index, Data: data}}
			if err := sm.Apply(cmds); err != nil {
				if c, derr := decodeCommand(data); derr == nil && c.Op == OpMerge && errors.Is(err, ErrCorrupt) {
					return
				}
				t.Fatalf("apply %x: %v", data, err)
			}
			if _, err := DecodeResult(cmds[0].Result); err != nil && !errors.Is(err, ErrBadCommand) {
				t.Fatalf("apply %x: result %x: %v", data, cmds[0].Result, err)
			}
		}
		queryAll(t, sm)
	})
}

// FuzzWatchToken: a resume token from a client decodes into pieces that
// tile a span, or fails as invalid; never panics. What decodes encodes
// back to a token that decodes the same.
func FuzzWatchToken(f *testing.F) {
	f.Add(encodeToken([]piece{{start: []byte("a"), end: []byte("m"), rev: 3}, {start: []byte("m"), end: nil, rev: 9}}))
	f.Add(encodeToken([]piece{{start: nil, end: nil, rev: 0}}))
	f.Add([]byte{tokenVersion, 2, 0, 1, 'a', 5, 1, 'a', 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		ps, err := decodeToken(b)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("token %x: %v, want ErrInvalid", b, err)
			}
			return
		}
		for i, p := range ps {
			if (i > 0 && !bytes.Equal(ps[i-1].end, p.start)) || (len(p.end) > 0 && bytes.Compare(p.start, p.end) >= 0) {
				t.Fatalf("token %x decodes to pieces that do not tile a span: %+v", b, ps)
			}
		}
		again, err := decodeToken(encodeToken(ps))
		if err != nil || len(again) != len(ps) {
			t.Fatalf("token %x: re-encoded, decodes to %+v, %v", b, again, err)
		}
		for i := range ps {
			if !bytes.Equal(again[i].start, ps[i].start) || !bytes.Equal(again[i].end, ps[i].end) || again[i].rev != ps[i].rev {
				t.Fatalf("token %x: piece %d re-encoded as %+v, was %+v", b, i, again[i], ps[i])
			}
		}
	})
}
