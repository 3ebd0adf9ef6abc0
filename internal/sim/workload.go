package sim

import (
	"errors"
	"fmt"
	"time"

	"github.com/flotilla/flotilla/kv"
	"github.com/flotilla/flotilla/multiraft"
)

// OpKind is the kind of a register operation.
type OpKind uint8

// Register operations.
const (
	OpGet OpKind = iota
	OpPut
	OpCAS
	// OpTxn is a transaction (kv.Txn) on Key and its partner (Register):
	// if Key holds Expected (or nothing, with ExpectAbsent), put Value in
	// both, else read both.
	OpTxn
)

func (k OpKind) String() string {
	switch k {
	case OpGet:
		return "get"
	case OpPut:
		return "put"
	case OpCAS:
		return "cas"
	case OpTxn:
		return "txn"
	}
	return fmt.Sprintf("op%d", uint8(k))
}

// Input is the input of one register operation, as the checker sees it.
type Input struct {
	Kind  OpKind `json:"kind"`
	Key   string `json:"key"`
	Value string `json:"value,omitempty"`
	// Expected is the value a CAS requires; ExpectAbsent requires no
	// value.
	Expected     string `json:"expected,omitempty"`
	ExpectAbsent bool   `json:"expect_absent,omitempty"`
}

// Output is the outcome of one register operation.
type Output struct {
	// Unknown: a write whose outcome the client never learned.
	Unknown bool `json:"unknown,omitempty"`
	// OK: a CAS swapped.
	OK bool `json:"ok,omitempty"`
	// Found, Value: what a get read, or the value a failed CAS or
	// transaction saw; Found2, Value2: what a failed transaction read of
	// the partner.
	Found  bool   `json:"found,omitempty"`
	Value  string `json:"value,omitempty"`
	Found2 bool   `json:"found2,omitempty"`
	Value2 string `json:"value2,omitempty"`
}

// Op is one operation of a history. Call and Return order invocations and
// replies (a logical clock); an operation whose outcome is unknown has
// Return = NeverReturned.
type Op struct {
	Client int    `json:"client"`
	In     Input  `json:"in"`
	Out    Output `json:"out"`
	Call   int64  `json:"call"`
	Return int64  `json:"return"`
	// Node is the node the request went to.
	Node uint64 `json:"node"`
}

// NeverReturned is the Return of an operation whose outcome is unknown: it
// may take effect at any time after its call.
const NeverReturned = int64(1) << 62

type history struct{ ops []Op }

// maxWriteAttempts bounds the attempts of one write: its first, and its
// retries after a timeout or a refusal.
const maxWriteAttempts = 4

// pendingOp is a client's request in flight.
type pendingOp struct {
	op      Op
	group   uint64
	cmd     kv.Command // a write's command; its session fields fixed
	fut     multiraft.Future
	rfut    multiraft.ReadFuture
	read    bool
	final   bool
	seq     uint64 // a write's sequence number in the client's session
	attempt int    // attempts made so far
	out     bool   // a write's attempt is waiting for its future
	// maybeApplied: an earlier attempt's outcome is unknown.
	maybeApplied bool
	// mismatches: attempts refused because the range did not hold the key.
	mismatches int
	// partnerLater: under BugTxnNonAtomic, the partner's put is still to
	// be sent once the transaction is acknowledged.
	partnerLater bool
}

// client is one simulated client: one request at a time, with a think time
// between them. Owned by the simulation goroutine.
//
// Writes belong to the client's session, like the Go client's: each has a
// sequence number, and is resent with it after a timeout or a refusal, up
// to maxWriteAttempts, to a random node each time (the state machine
// applies it once). With one request at a time, the floor it reports is
// the write's own number.
type client struct {
	s         *sim
	id        int
	n         int
	pending   *pendingOp
	finalDone bool
	// seen is the last value this client saw per key ("" with absent).
	seen map[string]*Output
	// seq numbers the session's writes; registered: the groups that have
	// answered a write of the session.
	seq        uint64
	registered map[uint64]bool
	// cache is the client's range cache: it learns descriptors from a
	// node's meta index, and forgets one when its range refuses a key. So
	// after splits it sends requests to ranges that gave the key away.
	cache kv.RangeCache
}

// maxMismatches bounds how often one request is routed again because its
// range did not hold its key.
const maxMismatches = 8

// route returns the range the client believes holds key, learning from
// node's meta index what it does not know (0: none yet). After a few
// refusals it asks the node's own replicas, as a server routing by key
// does: the meta index may lag a split.
func (c *client) route(node uint64, key string, refusals int) uint64 {
	n := c.s.nodes[node]
	if refusals > 2 {
		if r := n.ranges.Lookup([]byte(key)); r != nil {
			d, _ := r.Descriptor()
			c.cache.Insert(d.Clone())
			return r.ID
		}
	}
	if d, ok := c.cache.Lookup([]byte(key)); ok {
		return d.ID
	}
	if ds, err := n.meta([]byte(key), 4); err == nil {
		c.cache.Insert(ds...)
	}
	if d, ok := c.cache.Lookup([]byte(key)); ok {
		return d.ID
	}
	return 0
}

// session is the client's session ID: never 0.
func (c *client) session() uint64 { return uint64(c.id) + 1 }

// keyName is the workload's key i: two hex digits spread over the
// keyspace (as kv.InitialSplits cuts it), so that every range has keys,
// then i.
func (s *sim) keyName(i int) string { return fmt.Sprintf("%02x.%d", i*256/s.cfg.Keys, i) }

// next issues the client's next request, unless the workload stopped.
func (c *client) next() {
	s := c.s
	if s.stopClients || c.pending != nil {
		return
	}
	if s.now >= s.lullAt && s.now < s.lullEnd {
		s.at(s.lullEnd+s.between(0, 50*time.Millisecond), c.next)
		return
	}
	up := s.upNodes()
	if len(up) == 0 {
		s.after(s.between(10*time.Millisecond, 50*time.Millisecond), c.next)
		return
	}
	if c.seen == nil {
		c.seen = make(map[string]*Output)
	}
	node := up[s.rng.IntN(len(up))]
	key := s.keyName(s.rng.IntN(s.cfg.Keys))
	in := Input{Key: key}
	switch r := s.rng.IntN(20); {
	case r < 8:
		in.Kind = OpGet
	case r < 14:
		in.Kind = OpPut
	case r < 18:
		in.Kind = OpCAS
	default:
		in.Kind = OpTxn
	}
	if in.Kind != OpTxn && s.rng.IntN(2) == 0 {
		in.Key += PartnerSuffix
		key = in.Key
	}
	if in.Kind != OpGet {
		c.n++
		in.Value = fmt.Sprintf("c%d.%d", c.id, c.n)
	}
	if in.Kind == OpCAS || in.Kind == OpTxn {
		seen := c.seen[key]
		switch {
		case seen == nil || s.rng.IntN(5) == 0:
			// A guess: some other client's value, or absent.
			if s.rng.IntN(3) == 0 {
				in.ExpectAbsent = true
			} else {
				in.Expected = fmt.Sprintf("c%d.%d", s.rng.IntN(s.cfg.Clients), 1+s.rng.IntN(c.n+1))
			}
		case !seen.Found:
			in.ExpectAbsent = true
		default:
			in.Expected = seen.Value
		}
	}
	c.invoke(node, in, false)
}

// invoke sends in to node and records the invocation.
func (c *client) invoke(node uint64, in Input, final bool) {
	s := c.s
	n := s.nodes[node]
	group := c.route(node, in.Key, 0)
	s.clock++
	p := &pendingOp{
		op:    Op{Client: c.id, In: in, Call: s.clock, Node: node},
		group: group,
		final: final,
	}
	s.record("invoke", uint64(c.id), uint64(in.Kind), node, group)
	c.pending = p
	if in.Kind != OpGet {
		cmd := kv.Command{Key: []byte(in.Key), Value: []byte(in.Value)}
		switch in.Kind {
		case OpPut:
			cmd.Op = kv.OpPut
		case OpCAS:
			cmd.Op = kv.OpCAS
			cmd.Expected = []byte(in.Expected)
			cmd.ExpectAbsent = in.ExpectAbsent
		case OpTxn:
			cmd = c.txnCommand(in, p)
		}
		c.seq++
		p.seq = c.seq
		p.cmd = cmd
		c.propose(p, node)
		return
	}
	{
		q, err := kv.EncodeGet([]byte(in.Key))
		if err != nil {
			panic(err) // keys are generated valid
		}
		p.read = true
		if s.cfg.Bug == BugStaleReads && !final {
			// The planted bug: answer from local state, no ReadIndex.
			out, err := n.host.QueryLocal(group, q)
			c.finishRead(out, err)
			return
		}
		p.rfut = n.host.ReadAsync(group, q)
	}
	// Half the time the node runs at its next event instead (a delivery or
	// a tick), so that requests pile up and proposals share an entry.
	if s.rng.IntN(2) == 0 {
		n.drain()
	}
	s.after(s.cfg.RequestTimeout, func() { c.timeout(p, 0) })
}

// txnCommand returns the transaction of in: compare Key (its value, or
// its absence by create revision or version), then put both keys, else
// get both. Under BugTxnNonAtomic it puts Key only, and p sends the
// partner's put once it is acknowledged.
func (c *client) txnCommand(in Input, p *pendingOp) kv.Command {
	key, partner := []byte(in.Key), []byte(in.Key+PartnerSuffix)
	cmp := kv.Compare{Key: key, Target: kv.CompareValue, Op: kv.CompareEqual, Value: []byte(in.Expected)}
	if in.ExpectAbsent {
		cmp = kv.Compare{Key: key, Target: kv.CompareCreateRevision, Op: kv.CompareEqual}
		if c.s.rng.IntN(2) == 0 {
			cmp.Target = kv.CompareVersion
		}
	}
	t := kv.Txn{
		Compares: []kv.Compare{cmp},
		Then:     []kv.TxnOp{{Kind: kv.TxnPut, Key: key, Value: []byte(in.Value)}, {Kind: kv.TxnPut, Key: partner, Value: []byte(in.Value)}},
		Else:     []kv.TxnOp{{Kind: kv.TxnGet, Key: key}, {Kind: kv.TxnGet, Key: partner}},
	}
	if c.s.cfg.Bug == BugTxnNonAtomic {
		t.Then = t.Then[:1]
		p.partnerLater = true
	}
	return kv.TxnCommand(t)
}

// putPartnerLater sends the partner's put of transaction p, acknowledged
// but applied to its key only (BugTxnNonAtomic), as a write of its own,
// after a pause.
func (c *client) putPartnerLater(p *pendingOp) {
	s := c.s
	p.partnerLater = false
	p.cmd = kv.Command{Op: kv.OpPut, Key: []byte(p.op.In.Key + PartnerSuffix), Value: []byte(p.op.In.Value)}
	c.seq++
	p.seq, p.attempt, p.maybeApplied, p.mismatches = c.seq, 0, false, 0
	s.after(s.between(5*time.Millisecond, 50*time.Millisecond), func() {
		if c.pending != p {
			return
		}
		if up := s.upNodes(); len(up) > 0 {
			c.propose(p, up[s.rng.IntN(len(up))])
			return
		}
		c.retry(p)
	})
}

// propose sends attempt p.attempt+1 of write p to node, stamped with the
// simulated clock, registering the session unless the group has it.
func (c *client) propose(p *pendingOp, node uint64) {
	s := c.s
	if c.registered == nil {
		c.registered = make(map[uint64]bool)
	}
	p.attempt++
	p.op.Node = node
	p.group = c.route(node, p.op.In.Key, p.mismatches)
	cmd := p.cmd
	cmd.Session, cmd.Seq, cmd.Acked = c.session(), p.seq, p.seq
	cmd.Register = !c.registered[p.group]
	cmd.Time = int64(s.now/time.Millisecond) + 1
	b, err := cmd.Encode()
	if err != nil {
		panic(err) // the workload makes valid commands
	}
	n := s.nodes[node]
	p.fut, p.out = n.host.ProposeAsync(p.group, b), true
	if s.cfg.Faults&FaultRequestDup != 0 && s.rng.IntN(4) == 0 {
		// A copy the client does not wait for may apply whatever its own
		// attempts say: the write can no longer be dropped as not made.
		p.maybeApplied = true
		s.duplicateRequest(p.group, b)
	}
	if s.rng.IntN(2) == 0 {
		n.drain()
	}
	attempt := p.attempt
	s.after(s.cfg.RequestTimeout, func() { c.timeout(p, attempt) })
}

// retry sends write p again, to a random running node, after a short
// pause; once its attempts are spent it ends, unknown if an attempt may
// have applied and dropped from the history if none did.
func (c *client) retry(p *pendingOp) {
	s := c.s
	if p.attempt >= maxWriteAttempts {
		if p.maybeApplied {
			c.done(&Output{Unknown: true})
		} else {
			c.done(nil)
		}
		return
	}
	s.record("retry", uint64(c.id), p.seq, uint64(p.attempt))
	s.after(s.between(5*time.Millisecond, 50*time.Millisecond), func() {
		if c.pending != p {
			return
		}
		up := s.upNodes()
		if len(up) == 0 {
			c.retry(p)
			return
		}
		c.propose(p, up[s.rng.IntN(len(up))])
	})
}

// poll completes the pending request if its future is done.
func (c *client) poll() {
	p := c.pending
	if p == nil {
		return
	}
	if p.read {
		select {
		case <-p.rfut.Done():
			out, err := p.rfut.Result()
			c.finishRead(out, err)
		default:
		}
		return
	}
	if !p.out {
		return // between attempts
	}
	select {
	case <-p.fut.Done():
	default:
		return
	}
	res, err := p.fut.Result()
	p.out = false
	switch {
	case err == nil:
		r, derr := kv.DecodeResult(res)
		switch {
		case derr != nil:
			c.s.violation("client %d: bad result: %v", c.id, derr)
			c.done(nil)
			return
		case r.SessionUnknown:
			// Not applied: the group lacks the session. Register it.
			c.registered[p.group] = false
			c.retry(p)
			return
		case r.SessionStale:
			c.s.violation("client %d: write %d refused as stale while the client waited for it", c.id, p.seq)
			c.done(&Output{Unknown: true})
			return
		case r.KeyMismatch:
			// Not applied: the range gave the key away. Look it up again.
			c.s.res.Mismatches++
			c.cache.Evict(p.group, ^uint64(0))
			p.mismatches++
			if p.mismatches <= maxMismatches {
				p.attempt-- // not an attempt that may have applied
			}
			c.retry(p)
			return
		}
		c.registered[p.group] = true
		out := Output{OK: r.OK}
		if p.op.In.Kind == OpCAS && !r.OK {
			out.Found, out.Value = r.Found, string(r.Current)
		}
		if p.op.In.Kind == OpTxn && !r.OK && p.cmd.Op == kv.OpTxn {
			if len(r.TxnOps) != 2 {
				c.s.violation("client %d: transaction's else-branch gave %d results, want 2", c.id, len(r.TxnOps))
				c.done(nil)
				return
			}
			a, b := r.TxnOps[0], r.TxnOps[1]
			if a.Found {
				out.Found, out.Value = true, string(a.KVs[0].Value)
			}
			if b.Found {
				out.Found2, out.Value2 = true, string(b.KVs[0].Value)
			}
		}
		c.s.acked = append(c.s.acked, ackedWrite{group: p.group, session: c.session(), seq: p.seq})
		c.notePuts(p, r)
		if p.partnerLater && r.OK {
			c.putPartnerLater(p)
			return
		}
		c.done(&out)
	case errors.Is(err, multiraft.ErrNoLeader), errors.Is(err, multiraft.ErrDropped), errors.Is(err, multiraft.ErrNotLeader):
		// Never appended: try again elsewhere.
		c.retry(p)
	case errors.Is(err, multiraft.ErrGroupNotFound):
		// No such range here (it merged away): look the key up again.
		c.cache.Evict(p.group, ^uint64(0))
		c.retry(p)
	default:
		// ErrAmbiguous, ErrStopped, ErrGroupRemoved: it may apply; the
		// session makes a resend safe.
		p.maybeApplied = true
		c.retry(p)
	}
}

func (c *client) finishRead(out []byte, err error) {
	if errors.Is(err, kv.ErrKeyMismatch) || errors.Is(err, multiraft.ErrGroupNotFound) || errors.Is(err, kv.ErrUninitialized) {
		// The range gave the key away: the read is dropped, and the
		// client looks the key up again next time.
		c.s.res.Mismatches++
		c.cache.Evict(c.pending.group, ^uint64(0))
	}
	if err != nil {
		c.done(nil)
		return
	}
	found, kvv, err := kv.DecodeGet(out)
	if err != nil {
		c.s.violation("client %d: bad get answer: %v", c.id, err)
		c.done(nil)
		return
	}
	c.done(&Output{Found: found, Value: string(kvv.Value)})
}

// timeout ends attempt of p if it is still the one waiting: a read is
// dropped from the history; a write may have applied, and is sent again
// (retry).
func (c *client) timeout(p *pendingOp, attempt int) {
	if c.pending != p {
		return
	}
	if p.read {
		c.done(nil)
		return
	}
	if attempt != p.attempt || !p.out {
		return // a later attempt is out, or this one ended
	}
	p.maybeApplied = true
	p.out = false
	c.retry(p)
}

// done ends the pending request: out nil drops it from the history (it
// had no effect), else it is recorded. Then the client thinks and goes on.
func (c *client) done(out *Output) {
	s := c.s
	p := c.pending
	c.pending = nil
	if out != nil {
		op := p.op
		op.Out = *out
		if out.Unknown {
			op.Return = NeverReturned
			s.res.Ambiguous++
		} else {
			s.clock++
			op.Return = s.clock
			switch {
			case op.In.Kind == OpTxn && out.OK:
				c.seen[op.In.Key] = &Output{Found: true, Value: op.In.Value}
				c.seen[op.In.Key+PartnerSuffix] = &Output{Found: true, Value: op.In.Value}
			case op.In.Kind == OpTxn:
				c.seen[op.In.Key] = &Output{Found: out.Found, Value: out.Value}
				c.seen[op.In.Key+PartnerSuffix] = &Output{Found: out.Found2, Value: out.Value2}
			case op.In.Kind == OpGet || (op.In.Kind == OpCAS && !out.OK):
				o := *out
				c.seen[op.In.Key] = &o
			default:
				c.seen[op.In.Key] = &Output{Found: true, Value: op.In.Value}
			}
		}
		s.hist.ops = append(s.hist.ops, op)
		s.record("return", uint64(c.id), boolU(out.Unknown), boolU(out.OK), boolU(out.Found), cmdHash([]byte(out.Value)))
	} else {
		s.record("return-none", uint64(c.id))
	}
	if p.final {
		c.finalRead()
		return
	}
	s.after(s.between(0, 20*time.Millisecond), c.next)
}

func (s *sim) pollClients() {
	for _, c := range s.clients {
		c.poll()
	}
}

// finalReads starts the last round: each client reads every key (through
// ReadIndex even under BugStaleReads) until one read of each succeeds.
func (s *sim) finalReads() {
	s.finalClock = s.clock
	for _, c := range s.clients {
		if c.pending == nil {
			c.finalRead()
		} else {
			c.pending.final = true
		}
	}
}

// finalRead reads the next key a client has not read successfully since
// the heal; keys are spread over the clients.
func (c *client) finalRead() {
	s := c.s
	if c.seen == nil {
		c.seen = make(map[string]*Output)
	}
	// Every key and its partner.
	for k := c.id; k < 2*s.cfg.Keys; k += s.cfg.Clients {
		key := s.keyName(k / 2)
		if k%2 == 1 {
			key += PartnerSuffix
		}
		if c.finalOK(key) {
			continue
		}
		up := s.upNodes()
		if len(up) == 0 {
			s.after(50*time.Millisecond, c.finalRead)
			return
		}
		node := up[s.rng.IntN(len(up))]
		s.after(s.between(5*time.Millisecond, 30*time.Millisecond), func() {
			if c.pending == nil && s.nodes[node].up {
				c.invoke(node, Input{Kind: OpGet, Key: key}, true)
			} else {
				c.finalRead()
			}
		})
		return
	}
	c.finalDone = true
}

// finalOK reports whether a final read of key succeeded: the last op of
// this client on key in the history is a final get.
func (c *client) finalOK(key string) bool {
	ops := c.s.hist.ops
	for i := len(ops) - 1; i >= 0; i-- {
		o := &ops[i]
		if o.Client == c.id && o.In.Key == key {
			return o.In.Kind == OpGet && o.Call > c.s.finalClock
		}
	}
	return false
}

// notePuts records the values an acknowledged write wrote, for the watch
// check.
func (c *client) notePuts(p *pendingOp, r kv.Result) {
	if !r.OK {
		return
	}
	switch p.cmd.Op {
	case kv.OpPut, kv.OpCAS:
		c.s.ackedPuts = append(c.s.ackedPuts, ackedPut{key: string(p.cmd.Key), value: string(p.cmd.Value), rev: r.Revision})
	case kv.OpTxn:
		for _, op := range p.cmd.Txn.Then {
			if op.Kind == kv.TxnPut {
				c.s.ackedPuts = append(c.s.ackedPuts, ackedPut{key: string(op.Key), value: string(op.Value), rev: r.Revision})
			}
		}
	}
}
