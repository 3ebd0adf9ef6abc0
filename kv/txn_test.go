package kv

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/flotilla/flotilla/multiraft"
)

// txnRange opens range 7 over [, m) with the holding of plain writes on
// (the path that must keep versions as Pebble's writes do).
func txnRange(t *testing.T) *StateMachine {
	t.Helper()
	db := openDB(t, vfs.NewMem())
	t.Cleanup(func() { db.Close() })
	return openRange(t, db, 7, "", "m", WithHoldBudget(NewHoldBudget(1<<20)))
}

func put(k, v string) TxnOp { return TxnOp{Kind: TxnPut, Key: []byte(k), Value: []byte(v)} }
func getOp(k string) TxnOp  { return TxnOp{Kind: TxnGet, Key: []byte(k)} }

// TestVersionsAndCreateRevisions: a key's create revision stays from the
// put that created it until it is deleted; its version counts its puts;
// held and Pebble writes agree.
func TestVersionsAndCreateRevisions(t *testing.T) {
	sm := txnRange(t)
	apply(t, sm, 1, Command{Op: OpPut, Key: []byte("a"), Value: []byte("1")}) // rev 1, held
	apply(t, sm, 2, Command{Op: OpPut, Key: []byte("b"), Value: []byte("x")}) // rev 2
	apply(t, sm, 3, Command{Op: OpPut, Key: []byte("a"), Value: []byte("2")}) // rev 3, held
	if err := sm.flush(); err != nil {
		t.Fatal(err)
	}
	apply(t, sm, 4, Command{Op: OpCAS, Key: []byte("a"), Expected: []byte("2"), Value: []byte("3")}) // rev 4, Pebble
	want := KeyValue{Value: []byte("3"), Revision: 4, CreateRevision: 1, Version: 3}
	if found, kv := get(t, sm, "a"); !found || !reflect.DeepEqual(kv, want) {
		t.Fatalf("get a: %v %+v, want %+v", found, kv, want)
	}
	apply(t, sm, 5, Command{Op: OpDelete, Key: []byte("a")})                  // rev 5
	apply(t, sm, 6, Command{Op: OpPut, Key: []byte("a"), Value: []byte("4")}) // rev 6, held
	want = KeyValue{Value: []byte("4"), Revision: 6, CreateRevision: 6, Version: 1}
	if found, kv := get(t, sm, "a"); !found || !reflect.DeepEqual(kv, want) {
		t.Fatalf("get a after delete and put: %v %+v, want %+v", found, kv, want)
	}
	q, err := EncodeScan(nil, []byte("k6"), 0)
	if err != nil {
		t.Fatal(err)
	}
	out, err := sm.Query(q)
	if err != nil {
		t.Fatal(err)
	}
	kvs, _, err := DecodeScan(out)
	if err != nil {
		t.Fatal(err)
	}
	wantScan := []KeyValue{
		{Key: []byte("a"), Value: []byte("4"), Revision: 6, CreateRevision: 6, Version: 1},
		{Key: []byte("b"), Value: []byte("x"), Revision: 2, CreateRevision: 2, Version: 1},
	}
	if !reflect.DeepEqual(kvs, wantScan) {
		t.Fatalf("scan: %+v, want %+v", kvs, wantScan)
	}
}

// TestStoredBeforeVersions: a value stored before values carried their
// create revision and version reads with its mod revision as both, and
// version 1; a put over it counts on from there.
func TestStoredBeforeVersions(t *testing.T) {
	old := append(make([]byte, 8), "v"...)
	old[7] = 5
	m, v, err := decodeStored(old)
	if err != nil || string(v) != "v" || m != (storedMeta{Mod: 5, Create: 5, Version: 1}) {
		t.Fatalf("old form: %+v %q %v", m, v, err)
	}
	next := stored(9, []byte("w"), true, m)
	if m, v, err = decodeStored(next); err != nil || string(v) != "w" || m != (storedMeta{Mod: 9, Create: 5, Version: 2}) {
		t.Fatalf("put over the old form: %+v %q %v", m, v, err)
	}
	for _, bad := range [][]byte{old[:7], {0x80, 0, 0, 0, 0, 0, 0, 5}, {0x80, 0, 0, 0, 0, 0, 0, 5, 1, 0}, {0x80, 0, 0, 0, 0, 0, 0, 5, 6, 1}} {
		if _, _, err := decodeStored(bad); !errors.Is(err, ErrCorrupt) {
			t.Errorf("decodeStored(%x): %v, want ErrCorrupt", bad, err)
		}
	}
}

// TestTxnCompares: every target and operator, against a key put twice
// and a key that does not exist.
func TestTxnCompares(t *testing.T) {
	sm := txnRange(t)
	apply(t, sm, 1, Command{Op: OpPut, Key: []byte("k"), Value: []byte("b")}) // rev 1
	apply(t, sm, 2, Command{Op: OpPut, Key: []byte("e"), Value: []byte("y")}) // rev 2
	apply(t, sm, 3, Command{Op: OpPut, Key: []byte("k"), Value: []byte("c")}) // rev 3: k create 1, mod 3, version 2
	idx := uint64(3)
	for _, tc := range []struct {
		c    Compare
		want bool
	}{
		{Compare{Key: []byte("k"), Target: CompareValue, Op: CompareEqual, Value: []byte("c")}, true},
		{Compare{Key: []byte("k"), Target: CompareValue, Op: CompareEqual, Value: []byte("b")}, false},
		{Compare{Key: []byte("k"), Target: CompareValue, Op: CompareNotEqual, Value: []byte("b")}, true},
		{Compare{Key: []byte("k"), Target: CompareValue, Op: CompareLess, Value: []byte("d")}, true},
		{Compare{Key: []byte("k"), Target: CompareValue, Op: CompareGreater, Value: []byte("d")}, false},
		{Compare{Key: []byte("k"), Target: CompareVersion, Op: CompareEqual, Number: 2}, true},
		{Compare{Key: []byte("k"), Target: CompareVersion, Op: CompareGreater, Number: 1}, true},
		{Compare{Key: []byte("k"), Target: CompareCreateRevision, Op: CompareEqual, Number: 1}, true},
		{Compare{Key: []byte("k"), Target: CompareCreateRevision, Op: CompareEqual, Number: 3}, false},
		{Compare{Key: []byte("k"), Target: CompareModRevision, Op: CompareEqual, Number: 3}, true},
		{Compare{Key: []byte("k"), Target: CompareModRevision, Op: CompareLess, Number: 3}, false},
		{Compare{Key: []byte("k"), Target: CompareModRevision, Op: CompareNotEqual, Number: 1}, true},
		// A missing key: revisions and version 0; a value compare fails.
		{Compare{Key: []byte("f"), Target: CompareCreateRevision, Op: CompareEqual, Number: 0}, true},
		{Compare{Key: []byte("f"), Target: CompareVersion, Op: CompareGreater, Number: 0}, false},
		{Compare{Key: []byte("f"), Target: CompareValue, Op: CompareNotEqual, Value: []byte("z")}, false},
		{Compare{Key: []byte("f"), Target: CompareValue, Op: CompareEqual}, false},
	} {
		idx++
		res := apply(t, sm, idx, TxnCommand(Txn{Compares: []Compare{tc.c}, Then: []TxnOp{getOp("e")}, Else: []TxnOp{getOp("k")}}))
		if res.OK != tc.want {
			t.Errorf("%s(%s) %s %q/%d: %v, want %v", tc.c.Target, tc.c.Key, tc.c.Op, tc.c.Value, tc.c.Number, res.OK, tc.want)
		}
		wantKey := map[bool]string{true: "e", false: "k"}[tc.want]
		if len(res.TxnOps) != 1 || !res.TxnOps[0].Found || string(res.TxnOps[0].KVs[0].Key) != wantKey {
			t.Errorf("%s(%s): results %+v, want the get of %s", tc.c.Target, tc.c.Key, res.TxnOps, wantKey)
		}
		if res.Revision != 3 {
			t.Errorf("a transaction that only reads moved the revision to %d", res.Revision)
		}
	}
}

// TestTxnBranchAppliesWhole: the two-key compare-and-swap. Every write
// of the branch gets one revision; reads see the writes before them; the
// other branch does nothing.
func TestTxnBranchAppliesWhole(t *testing.T) {
	sm := txnRange(t)
	apply(t, sm, 1, Command{Op: OpPut, Key: []byte("a"), Value: []byte("1")})
	apply(t, sm, 2, Command{Op: OpPut, Key: []byte("b"), Value: []byte("1")})
	apply(t, sm, 3, Command{Op: OpPut, Key: []byte("c1"), Value: []byte("x")})
	apply(t, sm, 4, Command{Op: OpPut, Key: []byte("c2"), Value: []byte("x")})
	swap := func(idx uint64, from, to string) Result {
		return apply(t, sm, idx, TxnCommand(Txn{
			Compares: []Compare{
				{Key: []byte("a"), Target: CompareValue, Op: CompareEqual, Value: []byte(from)},
				{Key: []byte("b"), Target: CompareValue, Op: CompareEqual, Value: []byte(from)},
			},
			Then: []TxnOp{put("a", to), put("b", to), {Kind: TxnDeleteRange, Key: []byte("c"), End: []byte("d")}, {Kind: TxnScan, Key: []byte("a"), End: []byte("m")}},
			Else: []TxnOp{getOp("a"), getOp("b")},
		}))
	}
	res := swap(5, "1", "2")
	if !res.OK || res.Revision != 5 || len(res.TxnOps) != 4 {
		t.Fatalf("swap 1→2: %+v", res)
	}
	if res.TxnOps[2].Count != 2 {
		t.Errorf("delete range deleted %d, want 2", res.TxnOps[2].Count)
	}
	scan := res.TxnOps[3].KVs
	want := []KeyValue{
		{Key: []byte("a"), Value: []byte("2"), Revision: 5, CreateRevision: 1, Version: 2},
		{Key: []byte("b"), Value: []byte("2"), Revision: 5, CreateRevision: 2, Version: 2},
	}
	if !reflect.DeepEqual(scan, want) || res.TxnOps[3].More {
		t.Errorf("scan in the transaction: %+v (more %v), want %+v", scan, res.TxnOps[3].More, want)
	}
	res = swap(6, "1", "3")
	if res.OK || res.Revision != 5 || len(res.TxnOps) != 2 || string(res.TxnOps[0].KVs[0].Value) != "2" || string(res.TxnOps[1].KVs[0].Value) != "2" {
		t.Fatalf("failed swap: %+v", res)
	}
	// Reads after a delete range of the same branch see it.
	apply(t, sm, 7, Command{Op: OpPut, Key: []byte("c3"), Value: []byte("x")})
	res = apply(t, sm, 8, TxnCommand(Txn{Then: []TxnOp{{Kind: TxnDeleteRange, Key: []byte("c"), End: []byte("d")}, getOp("c3"), {Kind: TxnScan, Key: []byte("c"), End: []byte("d")}}}))
	if len(res.TxnOps) != 3 || res.TxnOps[0].Count != 1 || res.TxnOps[1].Found || len(res.TxnOps[2].KVs) != 0 {
		t.Fatalf("reads after a delete range: %+v", res.TxnOps)
	}
	// The answer survives its encoding (it is kept in client sessions).
	cmd := TxnCommand(Txn{Then: []TxnOp{{Kind: TxnScan, Key: []byte("a"), End: []byte("m"), Limit: 1}}})
	res = apply(t, sm, 9, cmd)
	if len(res.TxnOps) != 1 || len(res.TxnOps[0].KVs) != 1 || !res.TxnOps[0].More {
		t.Fatalf("scan with limit 1: %+v", res.TxnOps)
	}
}

// TestTxnRefusedWhole: a transaction the range does not wholly hold, or
// one of whose puts names a missing lease, writes nothing.
func TestTxnRefusedWhole(t *testing.T) {
	sm := txnRange(t)
	apply(t, sm, 1, Command{Op: OpPut, Key: []byte("a"), Value: []byte("1")})
	res := apply(t, sm, 2, TxnCommand(Txn{Then: []TxnOp{put("a", "2"), put("z", "2")}}))
	if !res.KeyMismatch || len(res.TxnOps) != 0 {
		t.Fatalf("transaction over [, m) and z: %+v, want KeyMismatch", res)
	}
	res = apply(t, sm, 3, TxnCommand(Txn{Then: []TxnOp{put("a", "3"), {Kind: TxnPut, Key: []byte("b"), Value: []byte("3"), Lease: 99}}}))
	if !res.LeaseMissing {
		t.Fatalf("transaction with a missing lease: %+v, want LeaseMissing", res)
	}
	res = apply(t, sm, 4, TxnCommand(Txn{Then: []TxnOp{{Kind: TxnScan, Key: []byte("a")}}}))
	if !res.KeyMismatch {
		t.Fatalf("scan to the end of the keyspace in range [, m): %+v, want KeyMismatch", res)
	}
	if found, kv := get(t, sm, "a"); !found || string(kv.Value) != "1" || kv.Revision != 1 {
		t.Fatalf("a after refused transactions: %+v", kv)
	}
	if found, _ := get(t, sm, "b"); found {
		t.Fatal("b written by a refused transaction")
	}
}

// TestTxnInvalid: what Encode refuses.
func TestTxnInvalid(t *testing.T) {
	many := make([]TxnOp, MaxTxnOps+1)
	for i := range many {
		many[i] = getOp(fmt.Sprint(i))
	}
	for name, txn := range map[string]Txn{
		"put twice":                    {Then: []TxnOp{put("a", "1"), put("a", "2")}},
		"put and delete":               {Else: []TxnOp{put("a", "1"), {Kind: TxnDelete, Key: []byte("a")}}},
		"put in a deleted span":        {Then: []TxnOp{{Kind: TxnDeleteRange, Key: []byte("a"), End: []byte("c")}, put("b", "1")}},
		"too many ops":                 {Then: many},
		"empty span":                   {Then: []TxnOp{{Kind: TxnScan, Key: []byte("b"), End: []byte("a")}}},
		"get with a value":             {Then: []TxnOp{{Kind: TxnGet, Key: []byte("a"), Value: []byte("v")}}},
		"no key":                       {Then: []TxnOp{{Kind: TxnGet}}},
		"unknown op":                   {Then: []TxnOp{{Kind: 9, Key: []byte("a")}}},
		"value compare with a number":  {Compares: []Compare{{Key: []byte("a"), Target: CompareValue, Op: CompareEqual, Number: 1}}},
		"version compare with a value": {Compares: []Compare{{Key: []byte("a"), Target: CompareVersion, Op: CompareEqual, Value: []byte("1")}}},
		"unknown operator":             {Compares: []Compare{{Key: []byte("a"), Target: CompareVersion, Op: 7}}},
		"scan limit":                   {Then: []TxnOp{{Kind: TxnScan, Key: []byte("a"), Limit: MaxTxnScanLimit + 1}}},
	} {
		if _, err := TxnCommand(txn).Encode(); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Encode gave %v, want ErrInvalid", name, err)
		}
	}
	// Put and delete of one key in different branches is fine.
	if _, err := TxnCommand(Txn{Then: []TxnOp{put("a", "1")}, Else: []TxnOp{{Kind: TxnDelete, Key: []byte("a")}}}).Encode(); err != nil {
		t.Errorf("put and delete in two branches: %v", err)
	}
}

// TestTxnRoundTrip: a transaction decodes to what was encoded.
func TestTxnRoundTrip(t *testing.T) {
	txn := Txn{
		Compares: []Compare{
			{Key: []byte("a"), Target: CompareValue, Op: CompareNotEqual, Value: []byte("v")},
			{Key: []byte("b"), Target: CompareModRevision, Op: CompareLess, Number: 1 << 40},
		},
		Then: []TxnOp{{Kind: TxnPut, Key: []byte("a"), Value: []byte("w"), Lease: 12}, {Kind: TxnScan, Key: []byte("a"), End: []byte("z"), Limit: 5}},
		Else: []TxnOp{{Kind: TxnDeleteRange, Key: []byte("c"), End: []byte("d")}, {Kind: TxnDelete, Key: []byte("d")}},
	}
	b, err := TxnCommand(txn).Encode()
	if err != nil {
		t.Fatal(err)
	}
	c, err := decodeCommand(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(*c.Txn, txn) {
		t.Fatalf("decoded %+v, want %+v", *c.Txn, txn)
	}
	// One encoding per transaction: a count written in two bytes where
	// one does is refused (the empty transaction is 0 0 0).
	if _, err := decodeTxn([]byte{0, 0, 0}); err != nil {
		t.Fatalf("the empty transaction: %v", err)
	}
	if _, err := decodeTxn([]byte{0x80, 0, 0, 0}); !errors.Is(err, ErrBadCommand) {
		t.Fatalf("a count of 0 in two bytes: %v, want ErrBadCommand", err)
	}
}

// TestTxnReadsBounded: the reads of one transaction return at most
// MaxTxnReadBytes; a get past it answers More with the key's revisions
// and no value, and the whole answer stays under maxTxnResultBytes (it is
// kept in the client's session).
func TestTxnReadsBounded(t *testing.T) {
	sm := txnRange(t)
	big := make([]byte, MaxValueSize)
	for i, k := range []string{"a", "b", "c"} {
		apply(t, sm, uint64(i+1), Command{Op: OpPut, Key: []byte(k), Value: big})
	}
	cmd := TxnCommand(Txn{Then: []TxnOp{getOp("a"), getOp("b"), {Kind: TxnScan, Key: []byte("a"), End: []byte("d")}, getOp("c")}})
	b, err := cmd.Encode()
	if err != nil {
		t.Fatal(err)
	}
	cmds := []multiraft.Command{{Index: 4, Data: b}}
	if err := sm.Apply(cmds); err != nil {
		t.Fatal(err)
	}
	if len(cmds[0].Result) > maxTxnResultBytes {
		t.Fatalf("a result of %d bytes, above %d", len(cmds[0].Result), maxTxnResultBytes)
	}
	res, err := DecodeResult(cmds[0].Result)
	if err != nil {
		t.Fatal(err)
	}
	ops := res.TxnOps
	if len(ops) != 4 || len(ops[0].KVs[0].Value) != MaxValueSize || ops[0].More {
		t.Fatalf("the first get: %d ops, more %v", len(ops), len(ops) > 0 && ops[0].More)
	}
	for i, op := range []TxnOpResult{ops[1], ops[3]} {
		if !op.Found || !op.More || len(op.KVs) != 1 || len(op.KVs[0].Value) != 0 || op.KVs[0].Version != 1 {
			t.Errorf("get %d past the bound: found %v, more %v, %d keys", i, op.Found, op.More, len(op.KVs))
		}
	}
	if !ops[2].More || len(ops[2].KVs) != 0 {
		t.Errorf("the scan past the bound: %d keys, more %v", len(ops[2].KVs), ops[2].More)
	}
}

// TestTxnHeldAgrees: the same commands (puts, deletes, transactions held
// in memory and transactions through Pebble, some in a client session and
// some sent twice, some naming keys outside the range), applied in rounds
// of 1 to 4 to a range that holds plain writes and to one that does not,
// give the same results and the same state, revisions and versions
// included, after each round.
func TestTxnHeldAgrees(t *testing.T) {
	var sms [2]*StateMachine
	for i, budget := range []int64{1 << 20, 0} { // held, plain
		db := openDB(t, vfs.NewMem())
		t.Cleanup(func() { db.Close() })
		sms[i] = openRange(t, db, 7, "", "k6", WithHoldBudget(NewHoldBudget(budget)))
	}
	held := sms[0]
	rng := rand.New(rand.NewPCG(7, 11))
	key := func() []byte { return []byte(fmt.Sprintf("k%d", rng.IntN(7))) } // k6 is not the range's
	val := func() []byte { return []byte(fmt.Sprintf("v%d", rng.IntN(4))) }
	next := func(i uint64) Command {
		switch rng.IntN(6) {
		case 0:
			return Command{Op: OpPut, Key: key(), Value: val()}
		case 1:
			return Command{Op: OpDelete, Key: key()}
		}
		var txn Txn
		for range rng.IntN(3) {
			cmp := Compare{Key: key(), Target: CompareTarget(1 + rng.IntN(4)), Op: CompareOp(1 + rng.IntN(4))}
			if cmp.Target == CompareValue {
				cmp.Value = val()
			} else {
				cmp.Number = uint64(rng.IntN(int(i) + 2))
			}
			txn.Compares = append(txn.Compares, cmp)
		}
		for _, ops := range []*[]TxnOp{&txn.Then, &txn.Else} {
			used := map[string]bool{}
			for range rng.IntN(4) {
				op := TxnOp{Kind: []TxnOpKind{TxnPut, TxnDelete, TxnGet, TxnGet}[rng.IntN(4)], Key: key()}
				if op.Kind != TxnGet && used[string(op.Key)] {
					continue // one write per key and branch
				}
				if op.Kind == TxnPut {
					op.Value = val()
				}
				if op.Kind != TxnGet {
					used[string(op.Key)] = true
				}
				*ops = append(*ops, op)
			}
		}
		if rng.IntN(5) == 0 {
			txn.Then = append(txn.Then, TxnOp{Kind: TxnScan, Key: []byte("k"), End: []byte("k6")}) // not holdable
		}
		return TxnCommand(txn)
	}
	var seq uint64
	index := uint64(0)
	for round := 1; round <= 300; round++ {
		var batch [][]byte
		acked := seq + 1
		for range 1 + rng.IntN(4) {
			c := next(index)
			if rng.IntN(3) == 0 {
				seq++
				c = sessionWrite(c, 42, seq, acked, seq == 1, 1000)
			}
			b, err := c.Encode()
			if err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
			batch = append(batch, b)
			if c.Session != 0 && rng.IntN(4) == 0 {
				batch = append(batch, b) // sent twice: the copy gets the first result
			}
		}
		var out [2][][]byte
		for j, sm := range sms {
			cmds := make([]multiraft.Command, len(batch))
			for k, b := range batch {
				cmds[k] = multiraft.Command{Index: index + 1 + uint64(k), Data: b}
			}
			if err := sm.Apply(cmds); err != nil {
				t.Fatal(err)
			}
			for _, c := range cmds {
				out[j] = append(out[j], c.Result)
			}
		}
		index += uint64(len(batch))
		for k := range batch {
			if !bytes.Equal(out[0][k], out[1][k]) {
				r0, _ := DecodeResult(out[0][k])
				r1, _ := DecodeResult(out[1][k])
				t.Fatalf("round %d, command %d: held %+v, through Pebble %+v", round, k, r0, r1)
			}
		}
		if a, b := scanAll(t, sms[0]), scanAll(t, sms[1]); !bytes.Equal(a, b) {
			t.Fatalf("round %d: held state %q, through Pebble %q", round, a, b)
		}
		if sms[0].Revision() != sms[1].Revision() || sms[0].AppliedIndex() != sms[1].AppliedIndex() {
			t.Fatalf("round %d: revision %d and applied %d held, %d and %d through Pebble", round,
				sms[0].Revision(), sms[0].AppliedIndex(), sms[1].Revision(), sms[1].AppliedIndex())
		}
		if round%25 == 0 {
			if err := held.flush(); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// scanAll returns the answer to a scan of [, k6), range 7's whole span in
// TestTxnHeldAgrees.
func scanAll(t *testing.T, sm *StateMachine) []byte {
	t.Helper()
	q, err := EncodeScan(nil, []byte("k6"), 0)
	if err != nil {
		t.Fatal(err)
	}
	out, err := sm.Query(q)
	if err != nil {
		t.Fatal(err)
	}
	return out
}
