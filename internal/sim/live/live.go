// Package live runs the register workload of package sim against real
// `flotilla start` processes on 127.0.0.1..N (through chaos.ProcCluster and
// the Go client), injects faults on a seeded schedule, heals, and checks
// the recorded history for linearizability with the same porcupine model
// as the simulation, and counts lost acknowledged writes.
//
// Independent keys, as in Jepsen: the workload keeps Config.Keys keys in
// use at once, but each key takes at most Config.KeyOps operations; then it
// is retired and a fresh key (a new name, never used before) takes its
// slot. Every key's history is checked on its own (sim.CheckKeys) with its
// own time bound, so a long run makes many small checks instead of a few
// huge ones that porcupine cannot finish, and a check that does run out
// names its key.
//
// Unlike the simulation it is not deterministic: the seed fixes the fault
// schedule and the workload's choices, not the timing.
//
// Goroutines: one per client and one nemesis, joined before the final
// reads; then up to Clients final readers, joined before the check.
// Locks: Run's history mutex and key mutex are leaves, never held across
// a request or a fault, nor together.
package live

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/client"
	"github.com/flotilla/flotilla/internal/chaos"
	"github.com/flotilla/flotilla/internal/sim"
	"github.com/flotilla/flotilla/kv"
)

// Sentinel errors.
var (
	// ErrConfig: a Config field is outside its limits.
	ErrConfig = errors.New("live: invalid config")
	// ErrNotReady: the cluster did not elect leaders in time, before or
	// after the faults.
	ErrNotReady = errors.New("live: cluster not ready")
)

// Config configures a live run. Zero values take the defaults.
type Config struct {
	// Binary is the flotilla binary to start nodes with. Required.
	Binary string
	// Dir receives the nodes' data and logs, the history and its
	// visualization. Default: a new temporary directory (kept).
	Dir string
	// Nodes, Groups: the cluster. Defaults 3 and 16.
	Nodes, Groups int
	// Keys is the number of keys in use at once, Clients the number of
	// concurrent clients. Defaults 8 and 16.
	Keys, Clients int
	// KeyOps is how many operations one key takes before it is retired
	// and a fresh key replaces it, so that each key's history stays small
	// enough for porcupine to check within CheckTimeout. Default 300; 1
	// to 10000. (Porcupine's search grows exponentially with the number
	// of operations of one key that overlap in time; 16 clients over 8
	// keys of 300 operations each check in milliseconds per key.)
	KeyOps int
	// Duration is the length of the faulty phase. Default 30s.
	Duration time.Duration
	// Nemesis lists the faults: blackhole, partition (both need root and
	// iptables; skipped with a note otherwise), kill, pause, transfer,
	// lose. Default the first five. lose kills one node (SIGKILL) for
	// good a quarter into the faulty phase; the nodes run with
	// --replicas 3, --dead-after DeadAfter and no merges, so its ranges are
	// up-replicated onto the others, and the run waits for that after
	// healing (Result.UpReplicatedAfter). It needs 4 or 5 nodes.
	Nemesis string
	// DeadAfter is the nodes' --dead-after with the lose nemesis. Default
	// 3s.
	DeadAfter time.Duration
	// Seed fixes the fault schedule and the workload's random choices.
	Seed uint64
	// CheckTimeout bounds the linearizability check of each key; a key
	// whose check runs out is "unknown". Default 10s.
	CheckTimeout time.Duration
	// RequestTimeout bounds one client request. Default 2s.
	RequestTimeout time.Duration
	// Progress, if set, receives progress lines.
	Progress io.Writer
	// Watchers is the number of watchers of every key from revision 1
	// (watch.go). Default 2; negative: none.
	Watchers int
}

// Result is the outcome of a live run.
type Result struct {
	Ops       int `json:"ops"`
	Ambiguous int `json:"ambiguous"`
	// Failed counts requests that failed without effect (dropped reads).
	Failed int `json:"failed"`
	Faults int `json:"faults"`
	// FaultLog lists the injected faults with their start time.
	FaultLog []string `json:"fault_log"`
	// Linearizable is the verdict on the whole history: in JSON true,
	// false (some key's history is not linearizable), or "unknown" (no
	// key is illegal but some key's check ran out of CheckTimeout).
	Linearizable sim.Verdict `json:"linearizable"`
	// KeysChecked is the number of keys whose histories were checked
	// (each separately); MaxKeyOps the most operations any one of them
	// had, final read included.
	KeysChecked int `json:"keys_checked"`
	MaxKeyOps   int `json:"max_key_ops"`
	// KeysIllegal counts the keys whose history is not linearizable and
	// IllegalKeys names them; KeysUnknown and UnknownKeys the same for
	// keys whose check ran out of its bound.
	KeysIllegal int      `json:"keys_illegal"`
	IllegalKeys []string `json:"illegal_keys"`
	KeysUnknown int      `json:"keys_unknown"`
	UnknownKeys []string `json:"unknown_keys"`
	// CheckSeconds is the wall time of the linearizability checks.
	CheckSeconds float64 `json:"check_seconds"`
	// LostAcks counts acknowledged writes that the final reads show were
	// lost: a key whose final value was written before an acknowledged
	// write to it began.
	LostAcks int `json:"lost_acks"`
	// History is the path of the recorded history (JSON). Visualization
	// is that of porcupine's HTML rendering: of the first illegal key,
	// else of the first unknown key, else of the whole history. Each
	// illegal or unknown key (up to 20) also gets its own rendering,
	// listed in KeyVisualizations.
	History           string   `json:"history"`
	Visualization     string   `json:"visualization"`
	KeyVisualizations []string `json:"key_visualizations,omitempty"`
	Dir               string   `json:"dir"`
	Seconds           float64  `json:"seconds"`
	// WatchEvents counts the events the watchers got; WatchResumes the
	// times one went on from its token on another node; WatchViolations
	// what the watch check found (watch.go).
	WatchEvents     int      `json:"watch_events"`
	WatchResumes    int      `json:"watch_resumes"`
	WatchViolations []string `json:"watch_violations,omitempty"`
	// LostNode is the node the lose nemesis killed for good (0: none);
	// UpReplicatedAfter the seconds from its kill until every range had 3
	// replicas again, none on it and no learner, as the meta index says
	// (polled every 200 ms from the kill, through the other faults).
	LostNode          uint64  `json:"lost_node,omitempty"`
	UpReplicatedAfter float64 `json:"up_replicated_after_s,omitempty"`
}

// Exit statuses of `flotilla chaos`, from Result.Status.
const (
	// StatusOK: every key linearizable, no lost acknowledged write.
	StatusOK = 0
	// StatusViolation: some key's history is not linearizable, or an
	// acknowledged write was lost.
	StatusViolation = 1
	// StatusUnknown: no violation found, but some key's check ran out of
	// its bound, so the run proves nothing about that key.
	StatusUnknown = 3
)

// Status is the exit status the result calls for: StatusViolation,
// StatusUnknown or StatusOK.
func (r *Result) Status() int {
	switch {
	case r.Linearizable == sim.VerdictIllegal || r.LostAcks > 0 || len(r.WatchViolations) > 0:
		return StatusViolation
	case r.Linearizable != sim.VerdictOK:
		return StatusUnknown
	}
	return StatusOK
}

func (c *Config) setDefaults() error {
	if c.Nodes == 0 {
		c.Nodes = 3
	}
	if c.Groups == 0 {
		c.Groups = 16
	}
	if c.Keys == 0 {
		c.Keys = 8
	}
	if c.Watchers == 0 {
		c.Watchers = 2
	}
	if c.Clients == 0 {
		c.Clients = 16
	}
	if c.KeyOps == 0 {
		c.KeyOps = 300
	}
	if c.Duration == 0 {
		c.Duration = 30 * time.Second
	}
	if c.Nemesis == "" {
		c.Nemesis = "blackhole,partition,kill,pause,transfer"
	}
	if c.CheckTimeout == 0 {
		c.CheckTimeout = 10 * time.Second
	}
	if c.DeadAfter == 0 {
		c.DeadAfter = 3 * time.Second
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = 2 * time.Second
	}
	if c.Progress == nil {
		c.Progress = io.Discard
	}
	switch {
	case c.Binary == "":
		return fmt.Errorf("%w: Binary is required", ErrConfig)
	case c.Nodes < 1 || c.Nodes > 9:
		return fmt.Errorf("%w: Nodes %d outside 1..9", ErrConfig, c.Nodes)
	case c.Keys < 1 || c.Clients < 1 || c.Clients > 1024:
		return fmt.Errorf("%w: Keys %d and Clients %d must be positive (Clients at most 1024)", ErrConfig, c.Keys, c.Clients)
	case c.KeyOps < 1 || c.KeyOps > 10000:
		return fmt.Errorf("%w: KeyOps %d outside 1..10000", ErrConfig, c.KeyOps)
	case c.Duration < 0 || c.CheckTimeout < 0:
		return fmt.Errorf("%w: negative Duration or CheckTimeout", ErrConfig)
	}
	for _, n := range strings.Split(c.Nemesis, ",") {
		switch strings.TrimSpace(n) {
		case "blackhole", "partition", "kill", "pause", "transfer", "", "none":
		case "lose":
			if c.Nodes < 4 || c.Nodes > 5 {
				// 4: 3 replicas on the nodes left. At most 5: the run's
				// readiness check wants a majority of all the nodes to
				// report each range, and a range has 3 replicas.
				return fmt.Errorf("%w: the lose nemesis needs 4 or 5 nodes, not %d", ErrConfig, c.Nodes)
			}
			if c.DeadAfter < time.Second {
				return fmt.Errorf("%w: DeadAfter %v under 1s", ErrConfig, c.DeadAfter)
			}
		default:
			return fmt.Errorf("%w: unknown nemesis %q (want blackhole, partition, kill, pause, transfer, lose)", ErrConfig, n)
		}
	}
	return nil
}

// run is the state of one live run.
type run struct {
	cfg   Config
	pc    *chaos.ProcCluster
	fw    *chaos.Firewall
	start time.Time
	// lost is the node the lose nemesis killed for good, lostAt when
	// (written by the nemesis before the faulty phase ends, read after).
	// upDone is closed once every range is back at 3 replicas without
	// it, upAfter then set to how long after lostAt that was (the
	// up-replication watcher, started by lose).
	lost    uint64
	lostAt  time.Time
	upDone  chan struct{}
	upAfter time.Duration
	// cl and ctx: the run's client and context, for the watcher.
	cl  *client.Client
	ctx context.Context

	mu struct {
		sync.Mutex
		ops    []sim.Op
		failed int
	}

	// keys hands out key names: slot i of cfg.Keys is in generation
	// gen[i] and has issued issued[i] operations on it.
	keys struct {
		sync.Mutex
		gen, issued []int
		// used lists every key handed out, in order.
		used []string
	}
}

func keyName(slot, gen int) string { return fmt.Sprintf("k%d.%d", slot, gen) }

// takeKey returns the key of slot for one more operation, retiring the
// slot's key for a fresh one once it has taken cfg.KeyOps operations.
func (r *run) takeKey(slot int) string {
	r.keys.Lock()
	defer r.keys.Unlock()
	if r.keys.gen == nil {
		r.keys.gen = make([]int, r.cfg.Keys)
		r.keys.issued = make([]int, r.cfg.Keys)
	}
	if r.keys.issued[slot] >= r.cfg.KeyOps {
		r.keys.gen[slot]++
		r.keys.issued[slot] = 0
	}
	if r.keys.issued[slot] == 0 {
		k := keyName(slot, r.keys.gen[slot])
		r.keys.used = append(r.keys.used, k, k+sim.PartnerSuffix)
	}
	r.keys.issued[slot]++
	return keyName(slot, r.keys.gen[slot])
}

// usedKeys returns every key handed out so far.
func (r *run) usedKeys() []string {
	r.keys.Lock()
	defer r.keys.Unlock()
	return append([]string(nil), r.keys.used...)
}

func (r *run) now() int64 { return int64(time.Since(r.start)) }

func (r *run) logf(format string, args ...any) {
	fmt.Fprintf(r.cfg.Progress, "chaos: %6.1fs "+format+"\n", append([]any{time.Since(r.start).Seconds()}, args...)...)
}

// Run starts the cluster, runs the workload under faults for
// cfg.Duration, heals, reads every key, and checks.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if cfg.Dir == "" {
		d, err := os.MkdirTemp("", "flotilla-chaos-")
		if err != nil {
			return nil, err
		}
		cfg.Dir = d
	} else if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, err
	}
	r := &run{cfg: cfg, start: time.Now()}
	nem := map[string]bool{}
	for _, n := range strings.Split(cfg.Nemesis, ",") {
		nem[strings.TrimSpace(n)] = true
	}
	balance := -time.Second
	if nem["transfer"] {
		balance = time.Second
	}
	if nem["blackhole"] || nem["partition"] {
		fw, err := chaos.NewFirewall("")
		if err != nil {
			r.logf("no firewall, skipping blackhole and partition: %v", err)
			nem["blackhole"], nem["partition"] = false, false
		} else {
			r.fw = fw
			defer fw.Close()
		}
	}
	var args []string
	if nem["lose"] {
		// Merges off: a range frozen for a merge with a replica on the
		// lost node could neither merge nor move until that node came
		// back, which it never does. With merges on, one run of eleven
		// never up-replicated; its logs were not kept, and a freeze
		// caught by the kill is the one cause known. Such a range now
		// merges on its live replicas (a subset merge, docs/design.md,
		// "Merges"), but the merged range is repaired only once it has
		// been short of a replica for twice the server's MoveCatchUp (2
		// minutes; no flag sets it), longer than this harness waits.
		args = []string{"--replicas", "3", "--dead-after", cfg.DeadAfter.String(), "--range-min-bytes", "0"}
		r.logf("lose: the nodes run with --replicas 3 --dead-after %v and merges off", cfg.DeadAfter)
	}
	pc, err := chaos.StartProcCluster(chaos.ProcConfig{
		Binary: cfg.Binary, Dir: cfg.Dir, Nodes: cfg.Nodes, Groups: cfg.Groups, Balance: balance, Args: args,
		// Moves as soon as a fault has passed, so that leadership transfers
		// happen while the workload runs.
		BalanceSettle: time.Second,
		// Every revision of the run: the watch check reads a fresh watch
		// from revision 1 at the end (a range takes some 600 writes a
		// second here; the default keeps 10,000).
		HistoryRetention: "100000000",
	})
	if err != nil {
		return nil, err
	}
	defer pc.Close()
	r.pc = pc
	r.logf("started %d nodes, %d groups in %s", cfg.Nodes, cfg.Groups, cfg.Dir)
	if _, err := pc.WaitLed(ctx, 60*time.Second); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNotReady, err)
	}
	var eps []string
	for _, id := range pc.IDs() {
		eps = append(eps, pc.Proc(id).ClientAddr)
	}
	cl, err := client.New(ctx, client.Config{Endpoints: eps, AttemptTimeout: cfg.RequestTimeout / 2})
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	upCtx, stopUp := context.WithCancel(ctx)
	defer stopUp()
	r.cl, r.ctx = cl, upCtx

	res := &Result{Dir: cfg.Dir}
	watchCtx, stopWatches := context.WithCancel(ctx)
	var watchers []*liveWatcher
	var watchClients []*client.Client
	defer func() {
		stopWatches()
		for _, w := range watchers {
			<-w.done
		}
		for _, c := range watchClients {
			c.Close()
		}
	}()
	for i := 0; i < cfg.Watchers; i++ {
		// Each watcher starts on another node (its client's first
		// endpoint), so that the faults hit the nodes serving some.
		rot := append(append([]string(nil), eps[(i+1)%len(eps):]...), eps[:(i+1)%len(eps)]...)
		wcl, err := client.New(ctx, client.Config{Endpoints: rot, AttemptTimeout: cfg.RequestTimeout / 2})
		if err != nil {
			return nil, err
		}
		watchClients = append(watchClients, wcl)
		w, err := startWatcher(watchCtx, wcl)
		if err != nil {
			return nil, err
		}
		watchers = append(watchers, w)
	}
	wctx, stop := context.WithTimeout(ctx, cfg.Duration)
	defer stop()
	var wg sync.WaitGroup
	for i := 0; i < cfg.Clients; i++ {
		wg.Add(1)
		go func(id int) {
			defer wg.Done()
			r.client(wctx, cl, id)
		}(i)
	}
	nemDone := make(chan struct{})
	go func() {
		defer close(nemDone)
		r.nemesis(wctx, nem, res)
	}()
	wg.Wait()
	<-nemDone
	r.logf("faulty phase over: healing")
	r.heal()
	if _, err := pc.WaitLed(ctx, 60*time.Second, r.survivors()...); err != nil {
		return nil, fmt.Errorf("%w after healing: %v", ErrNotReady, err)
	}
	if r.lost != 0 {
		if r.pc.Running(r.lost) {
			return nil, fmt.Errorf("live: node %d, lost for good, runs again", r.lost)
		}
		select {
		case <-r.upDone:
			res.UpReplicatedAfter = r.upAfter.Seconds()
		case <-time.After(2 * time.Minute):
			return nil, fmt.Errorf("%w: ranges not back at 3 replicas without lost node %d within 2m of healing", ErrNotReady, r.lost)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	r.finalReads(ctx, cl)
	if len(watchers) > 0 {
		r.checkWatches(ctx, cl, watchers, res)
	}
	r.check(res)
	res.Seconds = time.Since(r.start).Seconds()
	return res, nil
}

// client runs one client's requests until ctx ends.
func (r *run) client(ctx context.Context, cl *client.Client, id int) {
	rng := rand.New(rand.NewPCG(r.cfg.Seed, uint64(id)+1))
	n := 0
	var seen *sim.Output
	lastKey := ""
	for ctx.Err() == nil {
		key := r.takeKey(rng.IntN(r.cfg.Keys))
		if key != lastKey {
			seen = nil
		}
		lastKey = key
		in := sim.Input{Key: key}
		switch x := rng.IntN(20); {
		case x < 8:
			in.Kind = sim.OpGet
		case x < 14:
			in.Kind = sim.OpPut
		case x < 18:
			in.Kind = sim.OpCAS
		default:
			in.Kind = sim.OpTxn // on key and its partner (sim.Register)
		}
		if in.Kind != sim.OpTxn && rng.IntN(2) == 0 {
			in.Key += sim.PartnerSuffix // seen is the key's only
			seen = nil
			lastKey = ""
		}
		if in.Kind != sim.OpGet {
			n++
			in.Value = fmt.Sprintf("c%d.%d", id, n)
		}
		if in.Kind == sim.OpCAS || in.Kind == sim.OpTxn {
			if seen == nil || !seen.Found {
				in.ExpectAbsent = true
			} else {
				in.Expected = seen.Value
			}
		}
		out, ok := r.do(ctx, cl, id, in)
		if ok && !out.Unknown && in.Key == key {
			if in.Kind == sim.OpGet || ((in.Kind == sim.OpCAS || in.Kind == sim.OpTxn) && !out.OK) {
				seen = &out
			} else {
				seen = &sim.Output{Found: true, Value: in.Value}
			}
		}
	}
}

// do runs one request and records it; ok false: dropped from the history.
func (r *run) do(ctx context.Context, cl *client.Client, id int, in sim.Input) (sim.Output, bool) {
	op := sim.Op{Client: id, In: in, Call: r.now()}
	// The request gets its own deadline, not the phase's: a write cut
	// short by the end of the phase would only add an ambiguous op.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.RequestTimeout)
	defer cancel()
	var out sim.Output
	var err error
	switch in.Kind {
	case sim.OpGet:
		var kv client.KeyValue
		kv, err = cl.Get(rctx, []byte(in.Key))
		switch {
		case err == nil:
			out = sim.Output{Found: true, Value: string(kv.Value)}
		case errors.Is(err, client.ErrKeyNotFound):
			out, err = sim.Output{}, nil
		}
	case sim.OpPut:
		_, err = cl.Put(rctx, []byte(in.Key), []byte(in.Value))
	case sim.OpCAS:
		var expected []byte
		if !in.ExpectAbsent {
			expected = []byte(in.Expected)
		}
		var cur client.KeyValue
		var found bool
		out.OK, cur, found, err = cl.CompareAndSwap(rctx, []byte(in.Key), expected, []byte(in.Value))
		if err == nil && !out.OK {
			out.Found, out.Value = found, string(cur.Value)
		}
	case sim.OpTxn:
		out, err = r.txn(rctx, cl, in)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case err == nil:
		op.Return = r.now()
	case in.Kind == sim.OpGet || errors.Is(err, client.ErrInvalidArgument):
		r.mu.failed++
		return out, false
	default:
		// A write that failed may still apply: its outcome is unknown.
		out = sim.Output{Unknown: true}
		op.Return = sim.NeverReturned
	}
	op.Out = out
	r.mu.ops = append(r.mu.ops, op)
	return out, true
}

// txn runs in's transaction, as the simulation's workload does: if Key
// holds Expected (or nothing: create revision 0), put Value in Key and its
// partner, else read both.
func (r *run) txn(ctx context.Context, cl *client.Client, in sim.Input) (sim.Output, error) {
	key, partner := []byte(in.Key), []byte(in.Key+sim.PartnerSuffix)
	cmp := kv.Compare{Key: key, Target: kv.CompareValue, Op: kv.CompareEqual, Value: []byte(in.Expected)}
	if in.ExpectAbsent {
		cmp = kv.Compare{Key: key, Target: kv.CompareCreateRevision, Op: kv.CompareEqual}
	}
	res, err := cl.Txn(ctx, kv.Txn{
		Compares: []kv.Compare{cmp},
		Then:     []kv.TxnOp{{Kind: kv.TxnPut, Key: key, Value: []byte(in.Value)}, {Kind: kv.TxnPut, Key: partner, Value: []byte(in.Value)}},
		Else:     []kv.TxnOp{{Kind: kv.TxnGet, Key: key}, {Kind: kv.TxnGet, Key: partner}},
	})
	if err != nil {
		return sim.Output{}, err
	}
	out := sim.Output{OK: res.Succeeded}
	if !res.Succeeded {
		if len(res.Ops) != 2 {
			return sim.Output{}, fmt.Errorf("live: the else-branch gave %d results, want 2", len(res.Ops))
		}
		if a := res.Ops[0]; a.Found {
			out.Found, out.Value = true, string(a.KVs[0].Value)
		}
		if b := res.Ops[1]; b.Found {
			out.Found2, out.Value2 = true, string(b.KVs[0].Value)
		}
	}
	return out, nil
}

// nemesis injects faults on a seeded schedule until ctx ends, healing each
// before the next.
func (r *run) nemesis(ctx context.Context, nem map[string]bool, res *Result) {
	rng := rand.New(rand.NewPCG(r.cfg.Seed, 0xfa017))
	var kinds []string
	for _, k := range []string{"blackhole", "partition", "kill", "pause"} {
		if nem[k] {
			kinds = append(kinds, k)
		}
	}
	if nem["transfer"] {
		r.logf("transfer: the nodes' leader balancer runs every second")
	}
	pick := func() uint64 {
		ids := r.survivors()
		return ids[rng.IntN(len(ids))]
	}
	wait := func(d time.Duration) bool {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		}
	}
	loseAt := time.Now().Add(r.cfg.Duration / 4)
	for len(kinds) > 0 || (nem["lose"] && r.lost == 0) {
		if !wait(time.Duration(500+rng.IntN(1500)) * time.Millisecond) {
			return
		}
		if nem["lose"] && r.lost == 0 && !time.Now().Before(loseAt) {
			r.lose(pick(), res)
			continue
		}
		if len(kinds) == 0 {
			continue
		}
		kind := kinds[rng.IntN(len(kinds))]
		dur := time.Duration(1000+rng.IntN(3000)) * time.Millisecond
		var desc string
		var err error
		switch kind {
		case "blackhole":
			a, b := pick(), pick()
			for len(r.survivors()) > 1 && b == a {
				b = pick()
			}
			pa, pb := r.pc.Proc(a), r.pc.Proc(b)
			desc = fmt.Sprintf("blackhole %d→%d for %v", a, b, dur)
			err = r.fw.DropLink(pa.IP, pb.IP, pb.PeerPort)
		case "partition":
			a := pick()
			desc = fmt.Sprintf("partition {%d} from the rest for %v", a, dur)
			for _, b := range r.survivors() {
				if b != a && err == nil {
					pa, pb := r.pc.Proc(a), r.pc.Proc(b)
					err = errors.Join(r.fw.DropLink(pa.IP, pb.IP, pb.PeerPort), r.fw.DropLink(pb.IP, pa.IP, pa.PeerPort))
				}
			}
		case "kill":
			a := pick()
			desc = fmt.Sprintf("kill -9 node %d, restart after %v", a, dur)
			err = r.pc.Kill(a)
		case "pause":
			a := pick()
			desc = fmt.Sprintf("SIGSTOP node %d for %v", a, dur)
			err = r.pc.Pause(a)
		}
		if err != nil {
			r.logf("fault %q failed: %v", desc, err)
			r.heal()
			continue
		}
		res.Faults++
		res.FaultLog = append(res.FaultLog, fmt.Sprintf("%.1fs %s", time.Since(r.start).Seconds(), desc))
		r.logf("%s", desc)
		wait(dur)
		r.heal()
	}
}

// survivors returns the nodes but the one lost for good.
func (r *run) survivors() []uint64 {
	var out []uint64
	for _, id := range r.pc.IDs() {
		if id != r.lost {
			out = append(out, id)
		}
	}
	return out
}

// lose kills node id for good (the lose nemesis): heal never brings it
// back.
func (r *run) lose(id uint64, res *Result) {
	if err := r.pc.Kill(id); err != nil {
		r.logf("lose node %d failed: %v", id, err)
		return
	}
	r.lost, r.lostAt = id, time.Now()
	r.upDone = make(chan struct{})
	go r.watchUpReplication()
	res.LostNode = id
	res.Faults++
	desc := fmt.Sprintf("kill -9 node %d for good (--dead-after %v)", id, r.cfg.DeadAfter)
	res.FaultLog = append(res.FaultLog, fmt.Sprintf("%.1fs %s", time.Since(r.start).Seconds(), desc))
	r.logf("%s", desc)
}

// watchUpReplication polls the meta index (client Ranges) every 200 ms
// from the kill of the lost node until every range has 3 replicas again,
// none on it and no learner, then sets upAfter and closes upDone. It ends
// with r.ctx.
func (r *run) watchUpReplication() {
	defer close(r.upDone)
	for {
		rs, more, err := r.cl.Ranges(r.ctx, nil, 10000, false)
		if err == nil && !more && len(rs) > 0 && !slices.ContainsFunc(rs, func(rg *api.RangeInfo) bool {
			return len(rg.Replicas) != 3 || len(rg.Learners) > 0 || slices.Contains(rg.Replicas, r.lost)
		}) {
			r.upAfter = time.Since(r.lostAt)
			r.logf("every range back at 3 replicas without node %d, %.1fs after its kill", r.lost, r.upAfter.Seconds())
			return
		}
		select {
		case <-r.ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// heal removes every firewall rule and brings every node back but the one
// lost for good.
func (r *run) heal() {
	if r.fw != nil {
		if err := r.fw.Flush(); err != nil {
			r.logf("heal: %v", err)
		}
	}
	for _, id := range r.survivors() {
		// Resume fails for a node that is not running; Start for one that
		// is. Between the two, every node ends up running and unpaused.
		_ = r.pc.Resume(id)
		_ = r.pc.Start(id)
	}
}

// finalReads reads every key ever used, retired ones included, until one
// linearizable read of each succeeds (bounded), so that each key's
// history ends with the cluster's final state of it. Up to cfg.Clients
// readers share the keys; the read of key i is made as client
// cfg.Clients+i.
func (r *run) finalReads(ctx context.Context, cl *client.Client) {
	keys := r.usedKeys()
	next := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < min(r.cfg.Clients, len(keys)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range next {
				in := sim.Input{Kind: sim.OpGet, Key: keys[k]}
				for attempt := 0; attempt < 20 && ctx.Err() == nil; attempt++ {
					if _, ok := r.do(ctx, cl, r.cfg.Clients+k, in); ok {
						break
					}
				}
			}
		}()
	}
	for k := range keys {
		next <- k
	}
	close(next)
	wg.Wait()
}

// check counts lost acknowledgements, runs porcupine and writes the
// history and its visualization.
func (r *run) check(res *Result) {
	r.mu.Lock()
	ops := append([]sim.Op(nil), r.mu.ops...)
	res.Failed = r.mu.failed
	r.mu.Unlock()
	res.Ops = len(ops)
	for _, o := range ops {
		if o.Out.Unknown {
			res.Ambiguous++
		}
	}
	res.LostAcks = LostAcks(ops, r.cfg.Clients)
	res.History = filepath.Join(r.cfg.Dir, "history.json")
	if b, err := json.Marshal(ops); err == nil {
		if err := os.WriteFile(res.History, b, 0o644); err != nil {
			r.logf("write history: %v", err)
		}
	}
	start := time.Now()
	kc := sim.CheckKeys(ops, r.cfg.CheckTimeout)
	res.CheckSeconds = time.Since(start).Seconds()
	res.Linearizable = kc.Linearizable
	res.KeysChecked = len(kc.Keys)
	res.KeysIllegal, res.IllegalKeys = len(kc.Illegal), kc.Illegal
	res.KeysUnknown, res.UnknownKeys = len(kc.Unknown), kc.Unknown
	// Draw each illegal key, then each unknown one (up to 20 in all).
	verdicts := map[string]sim.KeyVerdict{}
	for _, kv := range kc.Keys {
		res.MaxKeyOps = max(res.MaxKeyOps, kv.Ops)
		verdicts[kv.Key] = kv
	}
	for _, k := range append(append([]string(nil), kc.Illegal...), kc.Unknown...) {
		if len(res.KeyVisualizations) >= 20 {
			break
		}
		kv := verdicts[k]
		path := filepath.Join(r.cfg.Dir, "key-"+k+".html")
		if err := porcupine.VisualizePath(sim.RegisterModel, kv.Info, path); err != nil {
			r.logf("write visualization of key %s: %v", k, err)
			continue
		}
		r.logf("key %s: linearizable=%v after %v, %d ops; see %s", k, kv.Linearizable, kv.Elapsed.Round(time.Millisecond), kv.Ops, path)
		res.KeyVisualizations = append(res.KeyVisualizations, path)
	}
	switch {
	case len(res.KeyVisualizations) > 0:
		res.Visualization = res.KeyVisualizations[0]
	case res.Linearizable == sim.VerdictOK:
		// Every key checked out: draw the whole history, all keys side by
		// side. Each key's check is known to finish quickly, so checking
		// them again together for the drawing is cheap; the bound is only
		// a guard (a drawing cut short is still a valid drawing).
		pops := make([]porcupine.Operation, len(ops))
		for i, o := range ops {
			pops[i] = porcupine.Operation{ClientId: o.Client, Input: o.In, Output: o.Out, Call: o.Call, Return: o.Return}
		}
		_, info := porcupine.CheckOperationsVerbose(sim.RegisterModel, pops, r.cfg.CheckTimeout)
		res.Visualization = filepath.Join(r.cfg.Dir, "history.html")
		if err := porcupine.VisualizePath(sim.RegisterModel, info, res.Visualization); err != nil {
			r.logf("write visualization: %v", err)
			res.Visualization = ""
		}
	}
	r.logf("%d ops (%d ambiguous), %d faults, %d keys (at most %d ops each) checked in %.1fs: linearizable=%v (%d keys illegal, %d unknown), lost_acks=%d",
		res.Ops, res.Ambiguous, res.Faults, res.KeysChecked, res.MaxKeyOps, res.CheckSeconds, res.Linearizable, res.KeysIllegal, res.KeysUnknown, res.LostAcks)
}

// LostAcks counts acknowledged writes that the final reads prove lost.
// The final reads are the ops of clients numbered finalFrom and up. For
// each key, an acknowledged write that began after the write of the final
// value had returned should have replaced it (values are unique, so each
// is written by one op); every such write is lost, and every acknowledged
// write is lost if the key reads absent.
func LostAcks(ops []sim.Op, finalFrom int) int {
	final := map[string]sim.Output{}
	writes := map[string][]sim.Op{}
	for _, o := range ops {
		switch {
		case o.Client >= finalFrom:
			final[o.In.Key] = o.Out
		case o.In.Kind == sim.OpPut && !o.Out.Unknown, o.In.Kind == sim.OpCAS && !o.Out.Unknown && o.Out.OK:
			writes[o.In.Key] = append(writes[o.In.Key], o)
		case o.In.Kind == sim.OpTxn && !o.Out.Unknown && o.Out.OK:
			writes[o.In.Key] = append(writes[o.In.Key], o)
			writes[o.In.Key+sim.PartnerSuffix] = append(writes[o.In.Key+sim.PartnerSuffix], o)
		}
	}
	keys := make([]string, 0, len(final))
	for k := range final {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	lost := 0
	for _, k := range keys {
		f := final[k]
		var wroteAt int64 = -1
		if f.Found {
			for _, o := range ops {
				wrote := o.In.Key == k || (o.In.Kind == sim.OpTxn && o.In.Key+sim.PartnerSuffix == k)
				if o.In.Kind != sim.OpGet && wrote && o.In.Value == f.Value {
					wroteAt = o.Return
				}
			}
		}
		for _, w := range writes[k] {
			if !f.Found || (wroteAt >= 0 && w.Call > wroteAt) {
				lost++
			}
		}
	}
	return lost
}
