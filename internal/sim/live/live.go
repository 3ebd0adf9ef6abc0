// Package live runs the register workload of package sim against real
// `flotilla start` processes on 127.0.0.1..N (through chaos.ProcCluster and
// the Go client), injects faults on a seeded schedule, heals, and checks
// the recorded history for linearizability with the same porcupine model
// as the simulation, and counts lost acknowledged writes.
//
// Unlike the simulation it is not deterministic: the seed fixes the fault
// schedule and the workload's choices, not the timing.
//
// Goroutines: one per client and one nemesis, all joined before Run
// returns. Locks: Run's history mutex is a leaf, never held across a
// request or a fault.
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
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/flotilla/flotilla/client"
	"github.com/flotilla/flotilla/internal/chaos"
	"github.com/flotilla/flotilla/internal/sim"
)

// Sentinel errors.
var (
	// ErrInvalidConfig: a Config field is outside its limits.
	ErrInvalidConfig = errors.New("live: invalid config")
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
	// Keys, Clients: the workload. Defaults 8 and 16.
	Keys, Clients int
	// Duration is the length of the faulty phase. Default 30s.
	Duration time.Duration
	// Nemesis lists the faults: blackhole, partition (both need root and
	// iptables; skipped with a note otherwise), kill, pause, transfer.
	// Default all five.
	Nemesis string
	// Seed fixes the fault schedule and the workload's random choices.
	Seed uint64
	// CheckTimeout bounds the linearizability check. Default 1 minute.
	CheckTimeout time.Duration
	// RequestTimeout bounds one client request. Default 2s.
	RequestTimeout time.Duration
	// Progress, if set, receives progress lines.
	Progress io.Writer
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
	// Linearizable is "ok", "illegal" or "unknown" (the check timed out).
	Linearizable string `json:"linearizable"`
	// LostAcks counts acknowledged writes that the final reads show were
	// lost: a key whose final value was written before an acknowledged
	// write to it began.
	LostAcks int `json:"lost_acks"`
	// History is the path of the recorded history (JSON), Visualization
	// that of porcupine's HTML rendering of it.
	History       string  `json:"history"`
	Visualization string  `json:"visualization"`
	Dir           string  `json:"dir"`
	Seconds       float64 `json:"seconds"`
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
	if c.Clients == 0 {
		c.Clients = 16
	}
	if c.Duration == 0 {
		c.Duration = 30 * time.Second
	}
	if c.Nemesis == "" {
		c.Nemesis = "blackhole,partition,kill,pause,transfer"
	}
	if c.CheckTimeout == 0 {
		c.CheckTimeout = time.Minute
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = 2 * time.Second
	}
	if c.Progress == nil {
		c.Progress = io.Discard
	}
	switch {
	case c.Binary == "":
		return fmt.Errorf("%w: Binary is required", ErrInvalidConfig)
	case c.Nodes < 1 || c.Nodes > 9:
		return fmt.Errorf("%w: Nodes %d outside 1..9", ErrInvalidConfig, c.Nodes)
	case c.Keys < 1 || c.Clients < 1 || c.Clients > 1024:
		return fmt.Errorf("%w: Keys %d and Clients %d must be positive (Clients at most 1024)", ErrInvalidConfig, c.Keys, c.Clients)
	case c.Duration < 0:
		return fmt.Errorf("%w: negative Duration", ErrInvalidConfig)
	}
	for _, n := range strings.Split(c.Nemesis, ",") {
		switch strings.TrimSpace(n) {
		case "blackhole", "partition", "kill", "pause", "transfer", "", "none":
		default:
			return fmt.Errorf("%w: unknown nemesis %q (want blackhole, partition, kill, pause, transfer)", ErrInvalidConfig, n)
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

	mu struct {
		sync.Mutex
		ops    []sim.Op
		failed int
	}
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
	pc, err := chaos.StartProcCluster(chaos.ProcConfig{
		Binary: cfg.Binary, Dir: cfg.Dir, Nodes: cfg.Nodes, Groups: cfg.Groups, Balance: balance,
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

	res := &Result{Dir: cfg.Dir}
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
	if _, err := pc.WaitLed(ctx, 60*time.Second); err != nil {
		return nil, fmt.Errorf("%w after healing: %v", ErrNotReady, err)
	}
	r.finalReads(ctx, cl)
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
		key := fmt.Sprintf("k%d", rng.IntN(r.cfg.Keys))
		if key != lastKey {
			seen = nil
		}
		lastKey = key
		in := sim.Input{Key: key}
		switch x := rng.IntN(10); {
		case x < 4:
			in.Kind = sim.OpGet
		case x < 7:
			in.Kind = sim.OpPut
		default:
			in.Kind = sim.OpCAS
		}
		if in.Kind != sim.OpGet {
			n++
			in.Value = fmt.Sprintf("c%d.%d", id, n)
		}
		if in.Kind == sim.OpCAS {
			if seen == nil || !seen.Found {
				in.ExpectAbsent = true
			} else {
				in.Expected = seen.Value
			}
		}
		out, ok := r.do(ctx, cl, id, in)
		if ok && !out.Unknown {
			if in.Kind == sim.OpGet || (in.Kind == sim.OpCAS && !out.OK) {
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
	ids := r.pc.IDs()
	pick := func() uint64 { return ids[rng.IntN(len(ids))] }
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
	for len(kinds) > 0 {
		if !wait(time.Duration(500+rng.IntN(1500)) * time.Millisecond) {
			return
		}
		kind := kinds[rng.IntN(len(kinds))]
		dur := time.Duration(1000+rng.IntN(3000)) * time.Millisecond
		var desc string
		var err error
		switch kind {
		case "blackhole":
			a, b := pick(), pick()
			for len(ids) > 1 && b == a {
				b = pick()
			}
			pa, pb := r.pc.Proc(a), r.pc.Proc(b)
			desc = fmt.Sprintf("blackhole %d→%d for %v", a, b, dur)
			err = r.fw.DropLink(pa.IP, pb.IP, pb.PeerPort)
		case "partition":
			a := pick()
			desc = fmt.Sprintf("partition {%d} from the rest for %v", a, dur)
			for _, b := range ids {
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

// heal removes every firewall rule and brings every node back.
func (r *run) heal() {
	if r.fw != nil {
		if err := r.fw.Flush(); err != nil {
			r.logf("heal: %v", err)
		}
	}
	for _, id := range r.pc.IDs() {
		// Resume fails for a node that is not running; Start for one that
		// is. Between the two, every node ends up running and unpaused.
		_ = r.pc.Resume(id)
		_ = r.pc.Start(id)
	}
}

// finalReads reads every key until one linearizable read of each
// succeeds (bounded), so the history ends with the cluster's final state.
func (r *run) finalReads(ctx context.Context, cl *client.Client) {
	for k := 0; k < r.cfg.Keys; k++ {
		in := sim.Input{Kind: sim.OpGet, Key: fmt.Sprintf("k%d", k)}
		for attempt := 0; attempt < 20 && ctx.Err() == nil; attempt++ {
			if _, ok := r.do(ctx, cl, r.cfg.Clients+k, in); ok {
				break
			}
		}
	}
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
	var info porcupine.LinearizationInfo
	res.Linearizable, info = sim.CheckHistory(ops, r.cfg.CheckTimeout)
	res.History = filepath.Join(r.cfg.Dir, "history.json")
	if b, err := json.Marshal(ops); err == nil {
		if err := os.WriteFile(res.History, b, 0o644); err != nil {
			r.logf("write history: %v", err)
		}
	}
	res.Visualization = filepath.Join(r.cfg.Dir, "history.html")
	if err := porcupine.VisualizePath(sim.RegisterModel, info, res.Visualization); err != nil {
		r.logf("write visualization: %v", err)
		res.Visualization = ""
	}
	r.logf("%d ops (%d ambiguous), %d faults: linearizable=%s lost_acks=%d", res.Ops, res.Ambiguous, res.Faults, res.Linearizable, res.LostAcks)
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
				if o.In.Kind != sim.OpGet && o.In.Key == k && o.In.Value == f.Value {
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
