package kv

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/cockroachdb/pebble/v2"
)

// Transactions, in the style of etcd's Txn: if every compare holds, the
// ops of Then apply, else those of Else; all of it at once, in one raft
// entry of one range, so it is atomic and linearizable. Every key a
// transaction names (compares and ops) must lie in one range: a
// transaction the range does not wholly hold applies nothing and answers
// KeyMismatch (the server then names the ranges it spans).
//
// What a transaction writes gets one revision, the range revision after
// it: every put of it has that mod revision. Its reads (Get, Scan) see the
// writes of the ops before them. Two writes of one branch may not touch
// one key (a put or delete of a key in a DeleteRange span of the same
// branch counts), so their order never matters.

// Limits of a transaction.
const (
	// MaxTxnOps bounds the compares, and the ops of each branch.
	MaxTxnOps = 128
	// MaxTxnSize bounds a transaction's encoded size, in bytes: its keys
	// and values together.
	MaxTxnSize = MaxValueSize
	// MaxTxnScanLimit bounds the keys of one Scan op; 0 asks for this
	// many.
	MaxTxnScanLimit = 1000
	// MaxTxnReadBytes bounds what all the reads of one transaction return:
	// their keys and values, and txnKVOverhead per key. A Scan that would
	// pass it stops early, with More set; a Get answers More and the key's
	// revisions without its value (read it on its own). The answer is kept
	// in the client's session for exactly-once replies (session.go), so it
	// must stay small; a value of MaxValueSize fits.
	MaxTxnReadBytes = 2 << 20
	// txnKVOverhead is what MaxTxnReadBytes counts for each key read
	// besides its key and value: at least what its revisions and lengths
	// take in the answer (appendTxnOps).
	txnKVOverhead = 40
	// maxTxnResultBytes bounds the encoded result of a transaction: its
	// reads, and the framing of MaxTxnOps results and of Result.
	maxTxnResultBytes = MaxTxnReadBytes + 64<<10
)

// CompareTarget is what a Compare looks at.
type CompareTarget byte

// Compare targets. For a key that does not exist, Version, CreateRevision
// and ModRevision are 0, and a CompareValue compare fails whatever its
// operator (as in etcd).
const (
	CompareValue CompareTarget = iota + 1
	CompareVersion
	CompareCreateRevision
	CompareModRevision
)

var compareTargets = [...]string{CompareValue: "value", CompareVersion: "version", CompareCreateRevision: "create", CompareModRevision: "mod"}

func (t CompareTarget) String() string { return enumString(compareTargets[:], byte(t), "target") }

// enumString returns names[v], or what(v) if v has no name.
func enumString(names []string, v byte, what string) string {
	if int(v) < len(names) && names[v] != "" {
		return names[v]
	}
	return fmt.Sprintf("%s(%d)", what, v)
}

// CompareOp is how a Compare's key is compared with its operand.
type CompareOp byte

// Compare operators. Values compare byte-wise (bytes.Compare).
const (
	CompareEqual CompareOp = iota + 1
	CompareNotEqual
	CompareLess
	CompareGreater
)

var compareOps = [...]string{CompareEqual: "=", CompareNotEqual: "!=", CompareLess: "<", CompareGreater: ">"}

func (o CompareOp) String() string { return enumString(compareOps[:], byte(o), "op") }

// Compare is one condition of a transaction: Key's Target, Op, the operand
// (Value for CompareValue, Number for the others).
type Compare struct {
	Key    []byte
	Target CompareTarget
	Op     CompareOp
	Value  []byte
	Number uint64
}

// TxnOpKind is the kind of a transaction's op.
type TxnOpKind byte

// Transaction ops.
const (
	// TxnPut sets Key to Value, attached to Lease if not 0 (as OpPut).
	TxnPut TxnOpKind = iota + 1
	// TxnDelete deletes Key; its result's Count is 1 if it existed.
	TxnDelete
	// TxnDeleteRange deletes [Key, End) (End empty: to the end of the
	// keyspace); Count says how many keys.
	TxnDeleteRange
	// TxnGet reads Key.
	TxnGet
	// TxnScan reads up to Limit keys of [Key, End) (0: MaxTxnScanLimit).
	TxnScan
)

var txnOpKinds = [...]string{TxnPut: "put", TxnDelete: "del", TxnDeleteRange: "delrange", TxnGet: "get", TxnScan: "scan"}

func (k TxnOpKind) String() string { return enumString(txnOpKinds[:], byte(k), "txnop") }

// writes reports whether an op of kind k writes.
func (k TxnOpKind) writes() bool { return k == TxnPut || k == TxnDelete || k == TxnDeleteRange }

// spans reports whether an op of kind k names a span [Key, End).
func (k TxnOpKind) spans() bool { return k == TxnDeleteRange || k == TxnScan }

// TxnOp is one op of a transaction's branch.
type TxnOp struct {
	Kind  TxnOpKind
	Key   []byte
	End   []byte
	Value []byte
	Lease uint64
	Limit int
}

// Txn is a transaction: if every one of Compares holds, Then applies, else
// Else.
type Txn struct {
	Compares   []Compare
	Then, Else []TxnOp
}

// TxnOpResult is the outcome of one op of the branch that applied.
type TxnOpResult struct {
	Kind TxnOpKind
	// Get: whether the key exists, and KVs holds it if so (with More: its
	// revisions, not its value, which would have passed MaxTxnReadBytes).
	// Scan: KVs, and More if the limit (or MaxTxnReadBytes) cut it short.
	Found bool
	KVs   []KeyValue
	More  bool
	// Delete, DeleteRange: the keys deleted.
	Count uint64
}

// Spans returns every key and span the transaction names, as [start,
// end) pairs (a key k is [k, k+"\x00")): all must lie in one range.
func (t *Txn) Spans() [][2][]byte {
	var out [][2][]byte
	key := func(k []byte) [2][]byte { return [2][]byte{k, append(bytes.Clone(k), 0)} }
	for _, c := range t.Compares {
		out = append(out, key(c.Key))
	}
	for _, ops := range [][]TxnOp{t.Then, t.Else} {
		for _, op := range ops {
			if op.Kind.spans() {
				out = append(out, [2][]byte{op.Key, op.End})
			} else {
				out = append(out, key(op.Key))
			}
		}
	}
	return out
}

// check returns an error wrapping ErrInvalid for a transaction no proposer
// may send.
func (t *Txn) check() error {
	if len(t.Compares) > MaxTxnOps || len(t.Then) > MaxTxnOps || len(t.Else) > MaxTxnOps {
		return fmt.Errorf("%w: a transaction has at most %d compares and %d ops per branch (has %d, %d, %d)",
			ErrInvalid, MaxTxnOps, MaxTxnOps, len(t.Compares), len(t.Then), len(t.Else))
	}
	for i, c := range t.Compares {
		if err := CheckKey(c.Key); err != nil {
			return fmt.Errorf("compare %d: %w", i, err)
		}
		if c.Op < CompareEqual || c.Op > CompareGreater {
			return fmt.Errorf("%w: compare %d: unknown operator %d", ErrInvalid, i, c.Op)
		}
		switch {
		case c.Target == CompareValue:
			if c.Number != 0 {
				return fmt.Errorf("%w: compare %d: a value compare takes a value, not a number", ErrInvalid, i)
			}
			if err := CheckValue(c.Value); err != nil {
				return fmt.Errorf("compare %d: %w", i, err)
			}
		case c.Target >= CompareVersion && c.Target <= CompareModRevision:
			if len(c.Value) != 0 {
				return fmt.Errorf("%w: compare %d: a %s compare takes a number, not a value", ErrInvalid, i, c.Target)
			}
		default:
			return fmt.Errorf("%w: compare %d: unknown target %d", ErrInvalid, i, c.Target)
		}
	}
	for _, br := range []struct {
		name string
		ops  []TxnOp
	}{{"then", t.Then}, {"else", t.Else}} {
		for i := range br.ops {
			if err := br.ops[i].check(); err != nil {
				return fmt.Errorf("%s op %d: %w", br.name, i, err)
			}
		}
		if err := checkDisjointWrites(br.ops); err != nil {
			return fmt.Errorf("%s: %w", br.name, err)
		}
	}
	return nil
}

func (op *TxnOp) check() error {
	if op.Kind < TxnPut || op.Kind > TxnScan {
		return fmt.Errorf("%w: unknown op kind %d", ErrInvalid, op.Kind)
	}
	if op.Kind.spans() {
		if len(op.Key) > MaxKeySize || len(op.End) > MaxKeySize {
			return fmt.Errorf("%w: a span bound exceeds %d bytes", ErrInvalid, MaxKeySize)
		}
		if len(op.End) > 0 && bytes.Compare(op.Key, op.End) >= 0 {
			return fmt.Errorf("%w: %s %s is empty", ErrInvalid, op.Kind, SpanString(op.Key, op.End))
		}
	} else {
		if err := CheckKey(op.Key); err != nil {
			return err
		}
		if len(op.End) > 0 {
			return fmt.Errorf("%w: a %s takes no end key", ErrInvalid, op.Kind)
		}
	}
	if op.Kind != TxnPut && (len(op.Value) > 0 || op.Lease != 0) {
		return fmt.Errorf("%w: only a put takes a value or a lease", ErrInvalid)
	}
	if err := CheckValue(op.Value); err != nil {
		return err
	}
	if op.Kind != TxnScan && op.Limit != 0 {
		return fmt.Errorf("%w: only a scan takes a limit", ErrInvalid)
	}
	if op.Limit < 0 || op.Limit > MaxTxnScanLimit {
		return fmt.Errorf("%w: scan limit %d outside 0..%d", ErrInvalid, op.Limit, MaxTxnScanLimit)
	}
	return nil
}

// checkDisjointWrites refuses a branch two of whose writes touch one key.
func checkDisjointWrites(ops []TxnOp) error {
	var keys []string
	var spans [][2][]byte
	for _, op := range ops {
		switch op.Kind {
		case TxnPut, TxnDelete:
			if slices.Contains(keys, string(op.Key)) {
				return fmt.Errorf("%w: key %q written twice in one branch", ErrInvalid, op.Key)
			}
			keys = append(keys, string(op.Key))
		case TxnDeleteRange:
			spans = append(spans, [2][]byte{op.Key, op.End})
		}
	}
	for _, sp := range spans {
		for _, k := range keys {
			if bytes.Compare([]byte(k), sp[0]) >= 0 && (len(sp[1]) == 0 || bytes.Compare([]byte(k), sp[1]) < 0) {
				return fmt.Errorf("%w: key %q written twice in one branch (it is in delete range %s)", ErrInvalid, k, SpanString(sp[0], sp[1]))
			}
		}
	}
	return nil
}

// TxnCommand returns the command that applies t (add a session with the
// Session fields). Encode checks it and writes t into Value (once: a
// proposer encodes each command one time).
func TxnCommand(t Txn) Command {
	return Command{Op: OpTxn, Txn: &t}
}

// encode returns t's wire form: the compares, then each branch.
func (t *Txn) encode() []byte {
	var b []byte
	b = binary.AppendUvarint(b, uint64(len(t.Compares)))
	for _, c := range t.Compares {
		b = appendBytes(b, c.Key)
		b = append(b, byte(c.Target), byte(c.Op))
		if c.Target == CompareValue {
			b = appendBytes(b, c.Value)
		} else {
			b = binary.AppendUvarint(b, c.Number)
		}
	}
	for _, ops := range [][]TxnOp{t.Then, t.Else} {
		b = binary.AppendUvarint(b, uint64(len(ops)))
		for _, op := range ops {
			b = append(b, byte(op.Kind))
			b = appendBytes(b, op.Key)
			switch op.Kind {
			case TxnPut:
				b = appendBytes(b, op.Value)
				b = binary.AppendUvarint(b, op.Lease)
			case TxnDeleteRange:
				b = appendBytes(b, op.End)
			case TxnScan:
				b = appendBytes(b, op.End)
				b = binary.AppendUvarint(b, uint64(op.Limit))
			}
		}
	}
	return b
}

// decodeTxn parses a transaction's wire form, unchecked; slices alias b.
// It reads strictly (minimal uvarints): a transaction has one encoding,
// the one encode writes.
func decodeTxn(b []byte) (*Txn, error) {
	r := reader{b: b, strict: true}
	t := &Txn{}
	n := r.uvarint()
	// Each compare and op takes at least 3 bytes: a count b cannot hold
	// is refused before anything is allocated for it.
	if n > MaxTxnOps || n > uint64(len(r.b)/3) {
		return nil, fmt.Errorf("%w: transaction compares", ErrBadCommand)
	}
	for i := uint64(0); i < n && !r.err; i++ {
		c := Compare{Key: r.bytes(), Target: CompareTarget(r.byte()), Op: CompareOp(r.byte())}
		if c.Target == CompareValue {
			c.Value = r.bytes()
		} else {
			c.Number = r.uvarint()
		}
		t.Compares = append(t.Compares, c)
	}
	for _, ops := range []*[]TxnOp{&t.Then, &t.Else} {
		n := r.uvarint()
		if n > MaxTxnOps || n > uint64(len(r.b)/2) {
			return nil, fmt.Errorf("%w: transaction ops", ErrBadCommand)
		}
		for i := uint64(0); i < n && !r.err; i++ {
			op := TxnOp{Kind: TxnOpKind(r.byte()), Key: r.bytes()}
			switch op.Kind {
			case TxnPut:
				op.Value = r.bytes()
				op.Lease = r.uvarint()
			case TxnDeleteRange:
				op.End = r.bytes()
			case TxnScan:
				op.End = r.bytes()
				if l := r.uvarint(); l <= MaxTxnScanLimit {
					op.Limit = int(l)
				} else {
					r.err = true
				}
			}
			*ops = append(*ops, op)
		}
	}
	if r.err || len(r.b) != 0 {
		return nil, fmt.Errorf("%w: transaction", ErrBadCommand)
	}
	return t, nil
}

// holdsTxn reports whether the range holds every key and span of t.
func holdsTxn(desc *Descriptor, t *Txn) bool {
	for _, c := range t.Compares {
		if !desc.Contains(c.Key) {
			return false
		}
	}
	for _, ops := range [][]TxnOp{t.Then, t.Else} {
		for i := range ops {
			op := &ops[i]
			if (op.Kind.spans() && !desc.ContainsSpan(op.Key, op.End)) || (!op.Kind.spans() && !desc.Contains(op.Key)) {
				return false
			}
		}
	}
	return true
}

// firstKey returns the first key t names (nil: none), without
// allocating: what load sampling sees of it.
func (t *Txn) firstKey() []byte {
	switch {
	case len(t.Compares) > 0:
		return t.Compares[0].Key
	case len(t.Then) > 0:
		return t.Then[0].Key
	case len(t.Else) > 0:
		return t.Else[0].Key
	}
	return nil
}

// compare reports whether c holds for a key found (or not) with meta m
// and value val.
func (c *Compare) holds(found bool, m storedMeta, val []byte) bool {
	var x int
	switch c.Target {
	case CompareValue:
		if !found {
			return false
		}
		x = bytes.Compare(val, c.Value)
	case CompareVersion:
		x = cmpUint(m.Version, c.Number)
	case CompareCreateRevision:
		x = cmpUint(m.Create, c.Number)
	case CompareModRevision:
		x = cmpUint(m.Mod, c.Number)
	}
	switch c.Op {
	case CompareEqual:
		return x == 0
	case CompareNotEqual:
		return x != 0
	case CompareLess:
		return x < 0
	}
	return x > 0
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// txnView is where a transaction reads and writes: a Pebble batch
// (batchView), or the held writes (heldView, for a transaction of puts,
// deletes and gets only: holdableTxn). Values returned are the caller's.
type txnView interface {
	get(key []byte) (found bool, m storedMeta, val []byte, err error)
	// leaseMissing reports whether lease (not 0) is missing.
	leaseMissing(lease uint64) (bool, error)
	put(key, value []byte, lease, rev uint64) error
	del(key []byte, rev uint64) (bool, error)
	deleteRange(start, end []byte, rev uint64) (uint64, error)
	scan(op TxnOp, readBytes *int) ([]KeyValue, bool, error)
}

// applyTxn applies transaction t through v: the compares, then the branch
// they choose. Nothing of it is written if a put names a lease the range
// does not have (Result.LeaseMissing). Called by Apply (through a batch)
// and applyHeld.
func applyTxn(v txnView, t *Txn, rev *uint64) (Result, error) {
	ok := true
	for i := range t.Compares {
		c := &t.Compares[i]
		found, m, val, err := v.get(c.Key)
		if err != nil {
			return Result{}, err
		}
		if !c.holds(found, m, val) {
			ok = false
			break
		}
	}
	ops := t.Then
	if !ok {
		ops = t.Else
	}
	for _, op := range ops {
		if op.Kind == TxnPut && op.Lease != 0 {
			if missing, err := v.leaseMissing(op.Lease); err != nil || missing {
				return Result{LeaseMissing: missing}, err
			}
		}
	}
	next := *rev + 1 // the revision of every write of the transaction
	wrote := false
	readBytes := 0
	res := Result{OK: ok, TxnOps: make([]TxnOpResult, 0, len(ops))}
	for _, op := range ops {
		out := TxnOpResult{Kind: op.Kind}
		switch op.Kind {
		case TxnPut:
			if err := v.put(op.Key, op.Value, op.Lease, next); err != nil {
				return Result{}, err
			}
			wrote = true
		case TxnDelete:
			found, err := v.del(op.Key, next)
			if err != nil {
				return Result{}, err
			}
			if found {
				out.Count, wrote = 1, true
			}
		case TxnDeleteRange:
			n, err := v.deleteRange(op.Key, op.End, next)
			if err != nil {
				return Result{}, err
			}
			out.Count, wrote = n, wrote || n > 0
		case TxnGet:
			found, m, val, err := v.get(op.Key)
			if err != nil {
				return Result{}, err
			}
			if found {
				out.Found = true
				kv := KeyValue{Key: op.Key, Revision: m.Mod, CreateRevision: m.Create, Version: m.Version}
				if n := len(op.Key) + len(val) + txnKVOverhead; readBytes+n <= MaxTxnReadBytes {
					kv.Value, readBytes = val, readBytes+n
				} else {
					out.More = true // the value is withheld
				}
				out.KVs = []KeyValue{kv}
			}
		case TxnScan:
			var err error
			if out.KVs, out.More, err = v.scan(op, &readBytes); err != nil {
				return Result{}, err
			}
		}
		res.TxnOps = append(res.TxnOps, out)
	}
	if wrote {
		*rev = next
	}
	return res, nil
}

// batchView is a transaction's view through an indexed Pebble batch.
type batchView struct {
	s *StateMachine
	b *pebble.Batch
}

func (v batchView) get(key []byte) (bool, storedMeta, []byte, error) {
	return getFrom(v.b, dataKey(key))
}

func (v batchView) leaseMissing(lease uint64) (bool, error) { return v.s.leaseMissing(v.b, lease) }

func (v batchView) put(key, value []byte, lease, rev uint64) error {
	v.s.written.Add(uint64(len(key) + len(value)))
	if err := v.s.putData(v.b, key, value, rev); err != nil {
		return err
	}
	return v.s.setAttachment(v.b, key, lease)
}

func (v batchView) del(key []byte, rev uint64) (bool, error) {
	found, _, err := metaFrom(v.b, dataKey(key))
	if err != nil || !found {
		return false, err
	}
	if err := v.b.Delete(dataKey(key), nil); err != nil {
		return false, err
	}
	if err := v.s.recordWrite(v.b, key, rev, nil); err != nil {
		return false, err
	}
	return true, v.s.setAttachment(v.b, key, 0)
}

func (v batchView) deleteRange(start, end []byte, rev uint64) (uint64, error) {
	return v.s.deleteRange(v.b, start, end, rev)
}

func (v batchView) scan(op TxnOp, readBytes *int) ([]KeyValue, bool, error) {
	return scanBatch(v.b, op, readBytes)
}

// holdableTxn reports whether transaction t may apply to the held writes
// (applyHeld): its ops are puts without a lease, deletes and gets. A scan
// or a delete-range reads or writes a span, which the held writes do not
// index for the apply path; a lease attaches keys in Pebble.
func holdableTxn(t *Txn) bool {
	for _, ops := range [][]TxnOp{t.Then, t.Else} {
		for i := range ops {
			switch op := &ops[i]; op.Kind {
			case TxnPut:
				if op.Lease != 0 {
					return false
				}
			case TxnDelete, TxnGet:
			default:
				return false
			}
		}
	}
	return true
}

// heldView is a transaction's view of the held writes (applyHeld): the
// writes staged in this round of commands, then the held ones, then
// Pebble. It stages its writes in *staged.
type heldView struct {
	s      *StateMachine
	staged *[]dirtyWrite
}

func (v heldView) get(key []byte) (bool, storedMeta, []byte, error) {
	st := *v.staged
	for i := len(st) - 1; i >= 0; i-- {
		if st[i].key == string(key) {
			return decodeHeld(st[i].stored, key)
		}
	}
	if sv, ok := v.s.dirty.lookupLocked(key); ok {
		return decodeHeld(sv, key)
	}
	return getFrom(v.s.db, dataKey(key))
}

// decodeHeld decodes a held write (nil: a delete); the value is a copy.
func decodeHeld(sv, key []byte) (bool, storedMeta, []byte, error) {
	if sv == nil {
		return false, storedMeta{}, nil, nil
	}
	m, val, err := decodeStored(sv)
	if err != nil {
		return false, storedMeta{}, nil, fmt.Errorf("%w (key %x)", err, key)
	}
	return true, m, bytes.Clone(val), nil
}

func (v heldView) leaseMissing(uint64) (bool, error) {
	return false, fmt.Errorf("%w: a held transaction with a lease", ErrCorrupt) // holdableTxn refuses it
}

func (v heldView) put(key, value []byte, _, rev uint64) error {
	found, prev, err := v.s.heldMeta(*v.staged, key)
	if err != nil {
		return err
	}
	sv := stored(rev, value, found, prev)
	*v.staged = append(*v.staged, dirtyWrite{key: string(key), stored: sv})
	_ = v.s.recordWrite(nil, key, rev, sv) // without a batch: cannot fail
	v.s.written.Add(uint64(len(key) + len(value)))
	return nil
}

func (v heldView) del(key []byte, rev uint64) (bool, error) {
	found, _, err := v.s.heldMeta(*v.staged, key)
	if err != nil || !found {
		return false, err
	}
	*v.staged = append(*v.staged, dirtyWrite{key: string(key)})
	_ = v.s.recordWrite(nil, key, rev, nil)
	return true, nil
}

func (v heldView) deleteRange([]byte, []byte, uint64) (uint64, error) {
	return 0, fmt.Errorf("%w: a held transaction with a delete-range", ErrCorrupt) // holdableTxn refuses it
}

func (v heldView) scan(TxnOp, *int) ([]KeyValue, bool, error) {
	return nil, false, fmt.Errorf("%w: a held transaction with a scan", ErrCorrupt) // holdableTxn refuses it
}

// scanBatch reads the keys of scan op through b, adding their bytes to
// *readBytes, and stops at op's limit or at MaxTxnReadBytes.
func scanBatch(b *pebble.Batch, op TxnOp, readBytes *int) ([]KeyValue, bool, error) {
	limit := op.Limit
	if limit == 0 {
		limit = MaxTxnScanLimit
	}
	lo, hi := globalBounds(kindData, op.Key, op.End)
	it, err := b.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return nil, false, err
	}
	var kvs []KeyValue
	more := false
	for valid := it.First(); valid; valid = it.Next() {
		key := it.Key()[1:]
		m, val, err := decodeStored(it.Value())
		if err != nil {
			_ = it.Close()
			return nil, false, fmt.Errorf("%w (key %x)", err, key)
		}
		n := len(key) + len(val) + txnKVOverhead
		if len(kvs) == limit || *readBytes+n > MaxTxnReadBytes {
			more = true
			break
		}
		*readBytes += n
		kvs = append(kvs, KeyValue{Key: bytes.Clone(key), Value: bytes.Clone(val), Revision: m.Mod, CreateRevision: m.Create, Version: m.Version})
	}
	err = it.Error()
	if cerr := it.Close(); err == nil {
		err = cerr
	}
	return kvs, more, err
}

// appendTxnOps appends the results of a transaction's ops to b.
func appendTxnOps(b []byte, ops []TxnOpResult) []byte {
	b = binary.AppendUvarint(b, uint64(len(ops)))
	for _, op := range ops {
		b = append(b, byte(op.Kind))
		flags := byte(0)
		if op.Found {
			flags |= 1
		}
		if op.More {
			flags |= 2
		}
		b = append(b, flags)
		b = binary.AppendUvarint(b, op.Count)
		b = binary.AppendUvarint(b, uint64(len(op.KVs)))
		for _, kv := range op.KVs {
			b = appendBytes(b, kv.Key)
			b = appendMeta(b, storedMeta{Mod: kv.Revision, Create: kv.CreateRevision, Version: kv.Version})
			b = appendBytes(b, kv.Value)
		}
	}
	return b
}

// txnOpsSize is the length appendTxnOps appends.
func txnOpsSize(ops []TxnOpResult) int {
	n := uvarintLen(uint64(len(ops)))
	for _, op := range ops {
		n += 2 + uvarintLen(op.Count) + uvarintLen(uint64(len(op.KVs)))
		for _, kv := range op.KVs {
			n += uvarintLen(uint64(len(kv.Key))) + len(kv.Key) + 8 + uvarintLen(kv.CreateRevision) +
				uvarintLen(kv.Version) + uvarintLen(uint64(len(kv.Value))) + len(kv.Value)
		}
	}
	return n
}

// readTxnOps reads what appendTxnOps appended; slices alias r's bytes.
func (r *reader) readTxnOps() []TxnOpResult {
	n := r.uvarint()
	if r.err || n > MaxTxnOps || n > uint64(len(r.b)/4) {
		r.err = true
		return nil
	}
	ops := make([]TxnOpResult, 0, n)
	for i := uint64(0); i < n && !r.err; i++ {
		op := TxnOpResult{Kind: TxnOpKind(r.byte())}
		flags := r.byte()
		op.Found, op.More = flags&1 != 0, flags&2 != 0
		op.Count = r.uvarint()
		m := r.uvarint()
		if flags&^3 != 0 || op.Kind < TxnPut || op.Kind > TxnScan || m > MaxTxnScanLimit || m > uint64(len(r.b)/minScanEntry) {
			r.err = true
			return nil
		}
		for j := uint64(0); j < m && !r.err; j++ {
			kv := KeyValue{Key: r.bytes()}
			r.readMeta(&kv)
			kv.Value = r.bytes()
			op.KVs = append(op.KVs, kv)
		}
		ops = append(ops, op)
	}
	return ops
}
