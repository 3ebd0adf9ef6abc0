// Package kv is Flotilla's key-value state machine: one StateMachine per
// range (a raft group serving a span of the ordered keyspace), all of them
// keeping their data in the node's Pebble database, next to the raft logs.
//
// Layout (kinds registered in internal/keys, next to storage's). User data
// is keyed by the user key alone, so that a split or merge moves no data;
// what belongs to a range itself is keyed by its ID:
//
//	'k' key            → mod revision(8) create revision, version (uvarints) value: stored.go
//	'A' key            → lease(8): the lease the key is attached to
//	'E' name           → election record (see lease.go)
//	'a' range(8)       → applied index(8) revision(8) leases granted(8)
//	'D' range(8)       → the range's descriptor (descriptor.go)
//	'L' range(8) id(8) → lease: TTL in ms(8), then the election names
//	                     it campaigns in (see lease.go)
//	'K' range(8) lease(8) key → nothing: the keys attached to a lease
//	                     (see attach.go)
//	'S' range(8) session(8) → a client session's record (see session.go)
//	'M' range(8) end   → a range's descriptor, in the meta range (meta.go)
//	'I' range(8)       → the next range ID, in the meta range
//	'U' range(8) key   → an auth record, in the meta range (auth.go)
//
// Every Apply writes its data and the new applied index in one Pebble batch,
// so after a crash the range replays only the entries past what is durable.
// Apply commits without sync: the raft log is synced before anything is
// applied, so a write lost here is replayed from the log.
package kv

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Limits on keys and values. Larger ones are refused before they are
// proposed.
const (
	// MaxKeySize is the largest key, in bytes.
	MaxKeySize = 4 << 10
	// MaxValueSize is the largest value, in bytes.
	MaxValueSize = 1 << 20
	// MaxScanLimit is the most keys one scan returns.
	MaxScanLimit = 10000
	// DefaultScanLimit is the scan limit when none is given.
	DefaultScanLimit = 1000
)

// Sentinel errors. Check them with errors.Is.
var (
	// ErrInvalid wraps every refusal of a malformed request: empty or
	// oversized key, oversized value, bad limit.
	ErrInvalid = errors.New("kv: invalid request")
	// ErrCorrupt: stored data or a snapshot could not be decoded.
	ErrCorrupt = errors.New("kv: corrupt data")
	// ErrBadCommand: a command or query could not be decoded. A committed
	// command that cannot be decoded is answered with an error result, not
	// a failure of Apply, so one bad proposal cannot stop a node.
	ErrBadCommand = errors.New("kv: malformed command")
	// ErrLeaseNotFound: a put or CAS named a lease its range does not
	// have (never granted there, expired or revoked). Nothing was
	// written. Servers start the message of such a refusal with this
	// error's text, so that clients can tell it from other NotFounds.
	ErrLeaseNotFound = errors.New("kv: lease not found")
	// ErrKeyMismatch: a query named a key (or a span) the range does not
	// hold (any more): it split or merged since the caller looked it up.
	// Nothing was read; look the key up again.
	ErrKeyMismatch = errors.New("kv: key not in range")
	// ErrUninitialized: the replica has no state yet (it waits for a
	// snapshot).
	ErrUninitialized = errors.New("kv: range replica not initialized")
	// ErrAuthFull: an OpAuthPut would take the auth table past
	// MaxAuthRecords or MaxAuthBytes; nothing was written. Its result
	// carries an error (Result.Err starts with this error's text), which
	// DecodeResult returns wrapping both ErrBadCommand, as for every error
	// result, and ErrAuthFull.
	ErrAuthFull = errors.New("kv: auth table full")
)

// CheckKey returns an error wrapping ErrInvalid if key is empty or longer
// than MaxKeySize.
func CheckKey(key []byte) error {
	switch {
	case len(key) == 0:
		return fmt.Errorf("%w: empty key", ErrInvalid)
	case len(key) > MaxKeySize:
		return fmt.Errorf("%w: key of %d bytes exceeds the limit of %d", ErrInvalid, len(key), MaxKeySize)
	}
	return nil
}

// CheckValue returns an error wrapping ErrInvalid if value is longer than
// MaxValueSize.
func CheckValue(value []byte) error {
	if len(value) > MaxValueSize {
		return fmt.Errorf("%w: value of %d bytes exceeds the limit of %d", ErrInvalid, len(value), MaxValueSize)
	}
	return nil
}

// Op is the kind of a command.
type Op byte

// Commands.
const (
	// OpPut sets Key to Value. With a Lease, the key is attached to that
	// lease of the group (which must exist) and deleted with it; without,
	// it is detached from any lease.
	OpPut Op = iota + 1
	// OpDelete deletes Key (and its attachment to a lease).
	OpDelete
	// OpCAS is OpPut if Key holds Expected (or nothing, with
	// ExpectAbsent); its Lease is checked and attached like OpPut's.
	OpCAS
	// OpLeaseGrant creates a lease of TTL; its ID is the new revision.
	OpLeaseGrant
	// OpLeaseRevoke deletes Lease, withdraws it from every election and
	// deletes every key attached to it (at the revoke's revision).
	OpLeaseRevoke
	// OpLeaseExpire is OpLeaseRevoke proposed by the group's leader when
	// the lease's deadline passed by its clock (see package election).
	OpLeaseExpire
	// OpCampaign enters Lease as a candidate with Value in election Key;
	// repeating it keeps the candidate's place and updates its value.
	OpCampaign
	// OpResign withdraws Lease from election Key; a no-op if absent.
	OpResign
	// OpDeleteRange deletes every key in [Key, End) (End empty: to the end
	// of the keyspace), which must lie in the range, at one revision;
	// Result.Count says how many.
	OpDeleteRange
	// OpMetaUpdate, in the meta range only, records the descriptors
	// encoded in Value (EncodeDescriptors) in the meta index (meta.go).
	OpMetaUpdate
	// OpAllocRangeID, in the meta range only, allocates a range ID:
	// Result.Count.
	OpAllocRangeID
	// OpSplit splits the range at Key (SplitCommand, split.go).
	OpSplit
	// OpFreeze freezes the range for a merge (FreezeCommand, merge.go).
	OpFreeze
	// OpMerge merges a frozen range into this one (MergeCommand).
	OpMerge
	// OpRevoked forgets the revocation record of Lease: its stubs are
	// revoked (lease.go).
	OpRevoked
	// OpAuthPut, in the meta range only, sets the auth record Key to
	// Value, if Key has no record (ExpectAbsent), if its record is
	// Expected (Expected not empty), or unconditionally (neither); see
	// AuthPut and auth.go.
	OpAuthPut
	// OpAuthDelete, in the meta range only, deletes the auth record Key,
	// if it is Expected (Expected not empty) or unconditionally; see
	// AuthDelete.
	OpAuthDelete
	// OpTxn applies the transaction Txn (txn.go), encoded in Value;
	// Result.OK says whether its compares held, Result.TxnOps holds the
	// results of the branch that applied.
	OpTxn

	opLast = OpTxn
)

// hasLease reports whether an op carries the lease and TTL fields.
func (o Op) hasLease() bool { return (o >= OpLeaseGrant && o <= OpResign) || o == OpRevoked }

// canAttach reports whether an op may attach its key to a lease.
func (o Op) canAttach() bool { return o == OpPut || o == OpCAS }

// needsKey reports whether an op names a key (or an election), which its
// range must hold.
func (o Op) needsKey() bool { return o <= OpCAS || o == OpCampaign || o == OpResign }

// NeedsKey reports whether an op names a key (or an election name), which
// its range must hold.
func (o Op) NeedsKey() bool { return o.needsKey() }

// Command is one write. Encode it with Encode and propose the bytes.
type Command struct {
	Op    Op
	Key   []byte
	Value []byte
	// Expected is the value a CAS requires; ExpectAbsent requires no value.
	Expected     []byte
	ExpectAbsent bool
	// End is the end of OpDeleteRange's span (empty: the end of the
	// keyspace).
	End []byte
	// Lease is the lease of a lease or election op, or the lease a put or
	// CAS attaches its key to (0: none).
	Lease uint64
	// TTL is the time to live of OpLeaseGrant, in whole milliseconds
	// (MinLeaseTTL..MaxLeaseTTL).
	TTL time.Duration
	// Session, Seq and Acked place the command in a client session, for
	// exactly-once apply (session.go): the session's ID (0: none), the
	// write's sequence number, and the lowest number of the session the
	// client has not had answered in this group. Register creates the
	// session in the group if it has none.
	Session, Seq, Acked uint64
	Register            bool
	// Time is the proposer's clock in unix milliseconds (0: none): the
	// group's clock, which expires sessions, is the latest of them.
	Time int64
	// Txn is OpTxn's transaction, decoded from Value (TxnCommand sets
	// both).
	Txn *Txn
}

// Command flag bits, after the value.
const (
	flagExpectAbsent = 1 << iota
	flagSession      // a session block follows Expected
	flagRegister
	flagTime   // a time follows the session block (or Expected)
	flagEnd    // an end key follows the time (or what precedes it)
	flagsKnown = flagExpectAbsent | flagSession | flagRegister | flagTime | flagEnd
)

// check returns an error wrapping ErrInvalid for a command no proposer
// may send: Encode refuses it, and decodeCommand too, so that a committed
// entry the proposer's own checks would have refused (written by a buggy
// or hostile leader, or torn on disk) is answered with an error instead of
// applied: an empty span to delete, a TTL out of bounds.
func (c *Command) check() error {
	if c.Op.needsKey() {
		if err := CheckKey(c.Key); err != nil {
			return err
		}
	} else if len(c.Key) > MaxKeySize {
		return fmt.Errorf("%w: key of %d bytes exceeds the limit of %d", ErrInvalid, len(c.Key), MaxKeySize)
	}
	if c.Op == OpTxn {
		if len(c.Value) > MaxTxnSize {
			return fmt.Errorf("%w: transaction of %d bytes exceeds the limit of %d", ErrInvalid, len(c.Value), MaxTxnSize)
		}
	} else if err := CheckValue(c.Value); err != nil {
		return err
	}
	if err := CheckValue(c.Expected); err != nil {
		return err
	}
	if len(c.End) > MaxKeySize {
		return fmt.Errorf("%w: end key of %d bytes exceeds the limit of %d", ErrInvalid, len(c.End), MaxKeySize)
	}
	if c.Time < 0 {
		return fmt.Errorf("%w: negative time %d", ErrInvalid, c.Time)
	}
	if c.TTL < 0 || c.TTL > MaxLeaseTTL {
		return fmt.Errorf("%w: TTL %v outside 0..%v", ErrInvalid, c.TTL, MaxLeaseTTL)
	}
	if c.Session == 0 && (c.Seq != 0 || c.Acked != 0 || c.Register) {
		return fmt.Errorf("%w: a sequence number without a session", ErrInvalid)
	}
	switch c.Op {
	case OpPut, OpDelete, OpCAS:
	case OpLeaseGrant:
		if err := CheckTTL(c.TTL); err != nil {
			return err
		}
	case OpLeaseRevoke, OpLeaseExpire, OpCampaign, OpResign:
		if c.Lease == 0 {
			return fmt.Errorf("%w: lease 0", ErrInvalid)
		}
	case OpDeleteRange:
		if len(c.End) > 0 && bytes.Compare(c.Key, c.End) >= 0 {
			return fmt.Errorf("%w: delete range %s is empty", ErrInvalid, SpanString(c.Key, c.End))
		}
	case OpMetaUpdate:
		if _, err := DecodeDescriptors(c.Value); err != nil {
			return fmt.Errorf("%w: meta update: %v", ErrInvalid, err)
		}
	case OpAllocRangeID:
	case OpSplit:
		if err := CheckKey(c.Key); err != nil {
			return err
		}
	case OpFreeze, OpMerge:
	case OpRevoked:
		if c.Lease == 0 {
			return fmt.Errorf("%w: lease 0", ErrInvalid)
		}
	case OpAuthPut, OpAuthDelete:
		return c.checkAuth()
	case OpTxn:
		if c.Txn == nil {
			return fmt.Errorf("%w: a transaction command without its transaction", ErrInvalid)
		}
		if len(c.Key) > 0 || len(c.Expected) > 0 || len(c.End) > 0 || c.ExpectAbsent {
			return fmt.Errorf("%w: a transaction takes no key, expected value or end of its own", ErrInvalid)
		}
		return c.Txn.check()
	default:
		return fmt.Errorf("%w: unknown op %d", ErrInvalid, c.Op)
	}
	return nil
}

// Encode returns the command's wire form after checking its limits.
func (c Command) Encode() ([]byte, error) {
	if c.Op == OpTxn {
		// The transaction is what counts; Value is its encoding.
		if c.Txn == nil {
			t, err := decodeTxn(c.Value)
			if err != nil {
				return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
			}
			c.Txn = t
		}
		c.Value = c.Txn.encode()
	}
	if err := c.check(); err != nil {
		return nil, err
	}
	return c.encode(), nil
}

// encode returns the command's wire form, unchecked.
func (c Command) encode() []byte {
	b := make([]byte, 0, 1+4*binary.MaxVarintLen32+1+len(c.Key)+len(c.Value)+len(c.Expected)+len(c.End)+8+3*binary.MaxVarintLen64)
	b = append(b, byte(c.Op))
	b = appendBytes(b, c.Key)
	b = appendBytes(b, c.Value)
	flag := byte(0)
	if c.ExpectAbsent {
		flag |= flagExpectAbsent
	}
	if c.Session != 0 {
		flag |= flagSession
	}
	if c.Register {
		flag |= flagRegister
	}
	if c.Time != 0 {
		flag |= flagTime
	}
	if len(c.End) > 0 {
		flag |= flagEnd
	}
	b = append(b, flag)
	b = appendBytes(b, c.Expected)
	if c.Session != 0 {
		b = binary.BigEndian.AppendUint64(b, c.Session)
		b = binary.AppendUvarint(b, c.Seq)
		b = binary.AppendUvarint(b, c.Acked)
	}
	if c.Time != 0 {
		b = binary.AppendUvarint(b, uint64(c.Time))
	}
	if len(c.End) > 0 {
		b = appendBytes(b, c.End)
	}
	switch {
	case c.Op.hasLease():
		b = binary.BigEndian.AppendUint64(b, c.Lease)
		b = binary.AppendUvarint(b, uint64(c.TTL/time.Millisecond))
	case c.Op.canAttach() && c.Lease != 0:
		// Optional, so that entries written before leases on keys
		// existed still decode (as lease 0).
		b = binary.BigEndian.AppendUint64(b, c.Lease)
	}
	return b
}

// CommandSession returns the session and sequence number of an encoded
// command, and false if it has none or does not decode. For tools that
// watch applied commands (the simulation).
func CommandSession(b []byte) (session, seq uint64, ok bool) {
	c, err := decodeCommand(b)
	if err != nil || c.Session == 0 {
		return 0, 0, false
	}
	return c.Session, c.Seq, true
}

// Internal reports whether an encoded command is one of the ranges' own
// (a split, a meta index update, an ID allocation), which the Store may
// propose more than once: each is idempotent or guarded, unlike a client
// write without a session. For tools that watch applied commands.
func Internal(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	switch Op(b[0]) {
	case OpSplit, OpMetaUpdate, OpAllocRangeID, OpFreeze, OpMerge, OpRevoked:
		return true
	}
	return false
}

// decodeCommand parses a command; the slices alias b.
func decodeCommand(b []byte) (Command, error) {
	var c Command
	if len(b) < 1 {
		return c, ErrBadCommand
	}
	c.Op = Op(b[0])
	r := reader{b: b[1:]}
	c.Key = r.bytes()
	c.Value = r.bytes()
	flag := r.byte()
	c.Expected = r.bytes()
	if flag&flagSession != 0 {
		if c.Session = r.uint64(); c.Session == 0 {
			r.err = true
		}
		c.Seq = r.uvarint()
		c.Acked = r.uvarint()
	}
	c.Register = flag&flagRegister != 0
	if flag&flagTime != 0 {
		t := r.uvarint()
		if c.Time = int64(t); c.Time <= 0 {
			r.err = true
		}
	}
	if flag&flagEnd != 0 {
		if c.End = r.bytes(); len(c.End) == 0 {
			r.err = true
		}
	}
	switch {
	case c.Op.hasLease():
		c.Lease = r.uint64()
		// Bounded before it is multiplied: a larger count of ms would
		// wrap around to a TTL that encodes to another count.
		if ms := r.uvarint(); ms <= uint64(MaxLeaseTTL/time.Millisecond) {
			c.TTL = time.Duration(ms) * time.Millisecond
		} else {
			r.err = true
		}
	case c.Op.canAttach() && len(r.b) > 0:
		if c.Lease = r.uint64(); c.Lease == 0 {
			r.err = true
		}
	}
	if r.err || len(r.b) != 0 || flag&^flagsKnown != 0 || (c.Register && c.Session == 0) || c.Op < OpPut || c.Op > opLast {
		return Command{}, ErrBadCommand
	}
	c.ExpectAbsent = flag&flagExpectAbsent != 0
	if c.Op == OpTxn {
		// Read strictly, so that Value is exactly what Encode writes for
		// the transaction.
		t, err := decodeTxn(c.Value)
		if err != nil {
			return Command{}, err
		}
		c.Txn = t
	}
	if err := c.check(); err != nil {
		return Command{}, fmt.Errorf("%w: %v", ErrBadCommand, err)
	}
	return c, nil
}

// Result is the outcome of an applied command.
type Result struct {
	// Revision is the group's revision after the command (unchanged if the
	// command wrote nothing).
	Revision uint64
	// OK: a CAS swapped, a delete removed something, an OpAuthPut or
	// OpAuthDelete applied. Always true for a put.
	OK bool
	// Found, Current: the key's value after the command (CAS only). For
	// an OpAuthPut or OpAuthDelete whose condition failed: whether the
	// record exists, and the record.
	Found   bool
	Current []byte
	// CurrentRevision is the revision of Current.
	CurrentRevision uint64
	// Err is set for a command that could not be decoded.
	Err string
	// Lease: the new lease of OpLeaseGrant; the leading candidate's lease
	// of OpCampaign and OpResign (0: none).
	Lease uint64
	// Token is the fencing token of the election's leader after
	// OpCampaign or OpResign: the group revision at which it was elected.
	Token uint64
	// LeaseMissing: a put or CAS named a lease the group does not have;
	// nothing was written (see ErrLeaseNotFound).
	LeaseMissing bool
	// SessionUnknown: the command's session does not exist in the group
	// (never registered there, or expired) and the command did not
	// register it; nothing was written. Resend it with Register.
	SessionUnknown bool
	// SessionStale: the command's sequence number is below its session's
	// floor: the client had already had it answered or given it up. Nothing
	// was written.
	SessionStale bool
	// KeyMismatch: the command's key (or span) is not in the range any
	// more (it split or merged since the proposer looked it up), or the
	// range is frozen for a merge. Nothing was written: look the key up
	// again and send the command to the range that holds it.
	KeyMismatch bool
	// Count: the keys OpDeleteRange deleted; the range ID OpAllocRangeID
	// allocated.
	Count uint64
	// TxnOps: the results of the ops of the branch an OpTxn applied (OK
	// says which: Then if true).
	TxnOps []TxnOpResult
}

func (r Result) encode() []byte {
	return r.appendTo(make([]byte, 0, r.size()))
}

// size is the length of r encoded.
func (r Result) size() int {
	n := 8 + 1 + 8 + uvarintLen(uint64(len(r.Current))) + len(r.Current) +
		uvarintLen(uint64(len(r.Err))) + len(r.Err) + 8 + 8 + uvarintLen(r.Count)
	if len(r.TxnOps) > 0 {
		n += txnOpsSize(r.TxnOps)
	}
	return n
}

func uvarintLen(x uint64) int {
	n := 1
	for ; x >= 0x80; x >>= 7 {
		n++
	}
	return n
}

// appendTo appends r encoded to b.
func (r Result) appendTo(b []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, r.Revision)
	flags := byte(0)
	if r.OK {
		flags |= 1
	}
	if r.Found {
		flags |= 2
	}
	if r.LeaseMissing {
		flags |= 4
	}
	if r.SessionUnknown {
		flags |= 8
	}
	if r.SessionStale {
		flags |= 16
	}
	if r.KeyMismatch {
		flags |= 32
	}
	if len(r.TxnOps) > 0 {
		flags |= 64
	}
	b = append(b, flags)
	b = binary.BigEndian.AppendUint64(b, r.CurrentRevision)
	b = appendBytes(b, r.Current)
	b = appendBytes(b, []byte(r.Err))
	b = binary.BigEndian.AppendUint64(b, r.Lease)
	b = binary.BigEndian.AppendUint64(b, r.Token)
	b = binary.AppendUvarint(b, r.Count)
	if len(r.TxnOps) > 0 {
		b = appendTxnOps(b, r.TxnOps)
	}
	return b
}

// DecodeResult parses the result bytes of an applied command. A result
// that carries a command error is returned as an error wrapping
// ErrBadCommand.
func DecodeResult(b []byte) (Result, error) {
	var res Result
	r := reader{b: b}
	res.Revision = r.uint64()
	flags := r.byte()
	res.CurrentRevision = r.uint64()
	res.Current = r.bytes()
	msg := r.bytes()
	res.Lease = r.uint64()
	res.Token = r.uint64()
	res.Count = r.uvarint()
	if flags&64 != 0 {
		if res.TxnOps = r.readTxnOps(); len(res.TxnOps) == 0 {
			r.err = true
		}
	}
	if r.err || len(r.b) != 0 {
		return Result{}, fmt.Errorf("%w: result", ErrCorrupt)
	}
	if flags&^127 != 0 {
		return Result{}, fmt.Errorf("%w: result flags %#x", ErrCorrupt, flags)
	}
	res.OK, res.Found, res.LeaseMissing = flags&1 != 0, flags&2 != 0, flags&4 != 0
	res.SessionUnknown, res.SessionStale, res.KeyMismatch = flags&8 != 0, flags&16 != 0, flags&32 != 0
	if len(msg) > 0 {
		res.Err = string(msg)
		if rest, full := strings.CutPrefix(res.Err, ErrAuthFull.Error()); full {
			return res, fmt.Errorf("%w: %w%s", ErrBadCommand, ErrAuthFull, rest)
		}
		return res, fmt.Errorf("%w: %s", ErrBadCommand, msg)
	}
	return res, nil
}

func appendBytes(b, v []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

// reader decodes the little formats of this package; err latches. A
// strict reader also refuses a uvarint longer than it needs to be, so that
// a format read strictly has one encoding of each value (decodeTxn).
type reader struct {
	b      []byte
	err    bool
	strict bool
}

func (r *reader) uvarint() uint64 {
	v, n := binary.Uvarint(r.b)
	if n <= 0 || (r.strict && n != uvarintLen(v)) {
		r.err = true
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) varint() int64 {
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.err = true
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) bytes() []byte {
	n := r.uvarint()
	if r.err || n > uint64(len(r.b)) {
		r.err = true
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) byte() byte {
	if len(r.b) < 1 {
		r.err = true
		return 0
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v
}

func (r *reader) uint64() uint64 {
	if len(r.b) < 8 {
		r.err = true
		return 0
	}
	v := binary.BigEndian.Uint64(r.b)
	r.b = r.b[8:]
	return v
}
