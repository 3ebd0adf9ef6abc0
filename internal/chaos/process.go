package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/flotilla/flotilla/api"
)

// ProcConfig configures a ProcCluster. Zero fields take the defaults.
type ProcConfig struct {
	// Binary is the path of a built flotilla binary. Required.
	Binary string
	// Dir holds the nodes' data directories and logs (Dir/node-N,
	// Dir/node-N.log). Required.
	Dir string
	// Nodes is the number of nodes; node N runs on 127.0.0.N. Default 3;
	// limits 1..9.
	Nodes int
	// Groups is --groups. Default 16; limits 1..100000.
	Groups int
	// Tick is --tick. Default 50ms; limits 1ms..10s.
	Tick time.Duration
	// ElectionTicks is --election-ticks. Default 10.
	ElectionTicks int
	// Balance is --balance-interval. Default -1s: no balancing, so
	// leadership moves only when a test makes it (the nodes still spread
	// leaders at bootstrap).
	Balance time.Duration
	// BalanceSettle is --balance-settle. Default 0: the node's default.
	BalanceSettle time.Duration
	// NoSync passes --unsafe-no-fsync. Not with SIGKILL: a killed node may
	// then come back without raft state it had acknowledged. Default off
	// (fsync on).
	NoSync bool
	// HistoryRetention is --history-retention ("": the node's default).
	HistoryRetention string
	// Args are more `flotilla start` flags, added to every node's.
	Args []string
}

func (c *ProcConfig) setDefaults() error {
	if c.Nodes == 0 {
		c.Nodes = 3
	}
	if c.Groups == 0 {
		c.Groups = 16
	}
	if c.Tick == 0 {
		c.Tick = 50 * time.Millisecond
	}
	if c.ElectionTicks == 0 {
		c.ElectionTicks = 10
	}
	if c.Balance == 0 {
		c.Balance = -time.Second
	}
	switch {
	case c.Binary == "":
		return fmt.Errorf("%w: ProcConfig.Binary is required", ErrConfig)
	case c.Dir == "":
		return fmt.Errorf("%w: ProcConfig.Dir is required", ErrConfig)
	case c.Nodes < 1 || c.Nodes > MaxNodes:
		return fmt.Errorf("%w: ProcConfig.Nodes %d outside 1..%d", ErrConfig, c.Nodes, MaxNodes)
	case c.Groups < 1 || c.Groups > 100000:
		return fmt.Errorf("%w: ProcConfig.Groups %d outside 1..100000", ErrConfig, c.Groups)
	case c.Tick < time.Millisecond || c.Tick > 10*time.Second:
		return fmt.Errorf("%w: ProcConfig.Tick %v outside 1ms..10s", ErrConfig, c.Tick)
	}
	return nil
}

// Proc is one `flotilla start` process of a ProcCluster. Its address fields
// are fixed at creation.
type Proc struct {
	ID                             uint64
	IP                             string // 127.0.0.ID
	PeerAddr, ClientAddr, HTTPAddr string
	PeerPort                       int
	DataDir, LogFile               string

	// Owned by ProcCluster.mu.
	cmd      *exec.Cmd
	exited   chan struct{}
	paused   bool
	starting bool // Start is opening the log and forking, without the lock
}

// ProcCluster runs real flotilla processes on 127.0.0.1..N. Create it with
// StartProcCluster and Close it. Methods are safe for concurrent use.
type ProcCluster struct {
	cfg     ProcConfig
	procs   []*Proc // index ID-1
	initial string
	hc      *http.Client

	mu struct {
		sync.Mutex
		closed bool
	}
}

// StartProcCluster picks free ports and starts every node. It does not wait
// for leaders: use WaitLed.
func StartProcCluster(cfg ProcConfig) (*ProcCluster, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	c := &ProcCluster{cfg: cfg, hc: &http.Client{Timeout: 2 * time.Second}}
	var parts []string
	for i := 1; i <= cfg.Nodes; i++ {
		ip := fmt.Sprintf("127.0.0.%d", i)
		p := &Proc{ID: uint64(i), IP: ip,
			DataDir: filepath.Join(cfg.Dir, fmt.Sprintf("node-%d", i)),
			LogFile: filepath.Join(cfg.Dir, fmt.Sprintf("node-%d.log", i))}
		addrs, err := deadAddrs(ip, 3)
		if err != nil {
			return nil, err
		}
		p.PeerAddr, p.ClientAddr, p.HTTPAddr = addrs[0], addrs[1], addrs[2]
		_, port, _ := net.SplitHostPort(p.PeerAddr)
		p.PeerPort, _ = strconv.Atoi(port)
		c.procs = append(c.procs, p)
		parts = append(parts, fmt.Sprintf("%d=%s", i, p.PeerAddr))
	}
	c.initial = strings.Join(parts, ",")
	for _, p := range c.procs {
		if err := c.Start(p.ID); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// Proc returns node id (1-based); it panics on an unknown ID.
func (c *ProcCluster) Proc(id uint64) *Proc { return c.procs[id-1] }

// IDs returns the node IDs, ascending.
func (c *ProcCluster) IDs() []uint64 {
	ids := make([]uint64, len(c.procs))
	for i, p := range c.procs {
		ids[i] = p.ID
	}
	return ids
}

// Config returns the configuration, defaults filled in.
func (c *ProcCluster) Config() ProcConfig { return c.cfg }

// ElectionTimeout is Tick * ElectionTicks; MaxElectionTimeout twice that.
func (c *ProcCluster) ElectionTimeout() time.Duration {
	return c.cfg.Tick * time.Duration(c.cfg.ElectionTicks)
}

// MaxElectionTimeout is the longest randomized election timeout.
func (c *ProcCluster) MaxElectionTimeout() time.Duration { return 2 * c.ElectionTimeout() }

// Start starts node id's process (again, after Kill: same data directory).
func (c *ProcCluster) Start(id uint64) error {
	p := c.Proc(id)
	c.mu.Lock()
	switch {
	case c.mu.closed:
		c.mu.Unlock()
		return fmt.Errorf("chaos: cluster closed")
	case p.cmd != nil || p.starting:
		c.mu.Unlock()
		return fmt.Errorf("chaos: node %d already running", id)
	}
	// Opening the log and forking are I/O: done without the lock, with the
	// slot reserved so that no other Start races in.
	p.starting = true
	c.mu.Unlock()
	cmd, exited, err := c.spawn(p)
	c.mu.Lock()
	p.starting = false
	if err != nil {
		c.mu.Unlock()
		return err
	}
	if c.mu.closed {
		// Close ran while we forked and did not see this process.
		c.mu.Unlock()
		_ = cmd.Process.Kill()
		<-exited
		return fmt.Errorf("chaos: cluster closed")
	}
	p.cmd, p.exited, p.paused = cmd, exited, false
	c.mu.Unlock()
	return nil
}

// spawn starts p's process; its exit closes the returned channel.
func (c *ProcCluster) spawn(p *Proc) (*exec.Cmd, chan struct{}, error) {
	id := p.ID
	logf, err := os.OpenFile(p.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, nil, fmt.Errorf("chaos: node %d log: %w", id, err)
	}
	args := []string{"start", "--id", fmt.Sprint(id), "--data-dir", p.DataDir,
		"--peer-addr", p.PeerAddr, "--client-addr", p.ClientAddr, "--http-addr", p.HTTPAddr,
		"--initial-cluster", c.initial, "--groups", fmt.Sprint(c.cfg.Groups),
		"--tick", c.cfg.Tick.String(), "--election-ticks", fmt.Sprint(c.cfg.ElectionTicks),
		"--balance-interval=" + c.cfg.Balance.String(),
		// The chaos harness tests faults, not security: it says so.
		"--insecure"}
	if c.cfg.BalanceSettle > 0 {
		args = append(args, "--balance-settle="+c.cfg.BalanceSettle.String())
	}
	if c.cfg.NoSync {
		args = append(args, "--unsafe-no-fsync")
	}
	if c.cfg.HistoryRetention != "" {
		args = append(args, "--history-retention="+c.cfg.HistoryRetention)
	}
	args = append(args, c.cfg.Args...)
	cmd := exec.Command(c.cfg.Binary, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, nil, fmt.Errorf("chaos: start node %d: %w", id, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(exited)
	}()
	return cmd, exited, nil
}

// signal sends sig to node id's process.
func (c *ProcCluster) signal(id uint64, sig syscall.Signal, paused bool) error {
	p := c.Proc(id)
	c.mu.Lock()
	defer c.mu.Unlock()
	if p.cmd == nil {
		return fmt.Errorf("chaos: node %d not running", id)
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("chaos: signal node %d: %w", id, err)
	}
	p.paused = paused
	return nil
}

// Pause stops node id with SIGSTOP: its sockets stay open and silent.
func (c *ProcCluster) Pause(id uint64) error { return c.signal(id, syscall.SIGSTOP, true) }

// Resume continues node id with SIGCONT.
func (c *ProcCluster) Resume(id uint64) error { return c.signal(id, syscall.SIGCONT, false) }

// Kill kills node id with SIGKILL and waits until it is gone.
func (c *ProcCluster) Kill(id uint64) error {
	p := c.Proc(id)
	c.mu.Lock()
	cmd, exited := p.cmd, p.exited
	if cmd == nil {
		c.mu.Unlock()
		return fmt.Errorf("chaos: node %d not running", id)
	}
	err := cmd.Process.Kill()
	p.cmd, p.paused = nil, false
	c.mu.Unlock()
	<-exited // the process was killed: this wait is bounded by the kernel
	return err
}

// Terminate stops node id with SIGTERM (a graceful stop: it hands its
// leaderships away, drains and exits) and waits until it is gone, at most
// bound; then it kills it.
func (c *ProcCluster) Terminate(id uint64, bound time.Duration) error {
	p := c.Proc(id)
	c.mu.Lock()
	cmd, exited := p.cmd, p.exited
	if cmd == nil {
		c.mu.Unlock()
		return fmt.Errorf("chaos: node %d not running", id)
	}
	err := cmd.Process.Signal(syscall.SIGTERM)
	p.cmd, p.paused = nil, false
	c.mu.Unlock()
	t := time.NewTimer(bound)
	defer t.Stop()
	select {
	case <-exited:
	case <-t.C:
		_ = cmd.Process.Kill()
		<-exited
		return fmt.Errorf("chaos: node %d did not exit within %v of SIGTERM", id, bound)
	}
	return err
}

// Running reports whether node id's process runs (paused or not).
func (c *ProcCluster) Running(id uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.procs[id-1].cmd != nil
}

// running returns the nodes that run and are not paused.
func (c *ProcCluster) running() []*Proc {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*Proc
	for _, p := range c.procs {
		if p.cmd != nil && !p.paused {
			out = append(out, p)
		}
	}
	return out
}

// Endpoints returns the client addresses of the running, unpaused nodes,
// comma separated (the CLI's --endpoints).
func (c *ProcCluster) Endpoints() string {
	var eps []string
	for _, p := range c.running() {
		eps = append(eps, p.ClientAddr)
	}
	return strings.Join(eps, ",")
}

// CLI runs the flotilla binary with args and returns its standard output.
// ctx bounds it.
func (c *ProcCluster) CLI(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, c.cfg.Binary, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("chaos: flotilla %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// timeoutArg turns ctx's deadline into a --timeout value: what is left of
// ctx less a margin, so that the CLI gives up (and reports) before ctx
// kills it, and at most limit.
func timeoutArg(ctx context.Context, limit time.Duration) string {
	d := limit
	if dl, ok := ctx.Deadline(); ok {
		d = min(d, time.Until(dl)*4/5)
	}
	return max(d, 10*time.Millisecond).String()
}

// statusTimeout bounds one `flotilla status`: a paused node never answers,
// and the CLI waits for every node until its --timeout.
const statusTimeout = 2 * time.Second

// Status runs `flotilla status -w json` against the running nodes.
func (c *ProcCluster) Status(ctx context.Context) (api.Status, error) {
	var st api.Status
	out, err := c.CLI(ctx, "status", "--endpoints", c.Endpoints(), "-w", "json", "--timeout", timeoutArg(ctx, statusTimeout))
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(out, &st); err != nil {
		return st, fmt.Errorf("chaos: status JSON: %w", err)
	}
	return st, nil
}

// NodeStatus reads node id's own view from its /debug/raft.
func (c *ProcCluster) NodeStatus(ctx context.Context, id uint64) (api.Status, error) {
	var st api.Status
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+c.Proc(id).HTTPAddr+"/debug/raft", nil)
	if err != nil {
		return st, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return st, err
	}
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("chaos: node %d /debug/raft: %s", id, resp.Status)
	}
	return st, json.Unmarshal(b, &st)
}

// View reads the groups' leaders and terms: the summary from `flotilla
// status -w json`, and each running node's own view from its /debug/raft.
func (c *ProcCluster) View(ctx context.Context) (View, error) {
	st, err := c.Status(ctx)
	if err != nil {
		return View{}, err
	}
	v := View{Groups: make(map[uint64]GroupView), PerNode: make(map[uint64]map[uint64]Replica)}
	for _, p := range c.running() {
		ns, err := c.NodeStatus(ctx, p.ID)
		if err != nil {
			return View{}, err
		}
		m := make(map[uint64]Replica)
		for _, g := range ns.Groups {
			m[g.ID] = Replica{Leader: g.Leader, Term: g.Term, IsLeader: g.Leader == p.ID, Commit: g.Commit}
		}
		v.PerNode[p.ID] = m
	}
	v.summarize()
	// The CLI's merged view is the contract: it must agree with the nodes.
	for _, g := range st.Groups {
		gv := v.Groups[g.ID]
		if g.Term > gv.Term {
			gv = GroupView{Leader: g.Leader, Term: g.Term}
		}
		v.Groups[g.ID] = gv
	}
	return v, nil
}

// WaitLed polls until every group has a leader that a majority of the
// nodes in among (default: every node) sees at its term; ErrNotLed after
// bound.
func (c *ProcCluster) WaitLed(ctx context.Context, bound time.Duration, among ...uint64) (View, error) {
	if len(among) == 0 {
		among = c.IDs()
	}
	return pollLed(ctx, bound, c.cfg.Tick*2, func(ctx context.Context) (View, error) {
		vctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		return c.View(vctx)
	}, func(v View) []uint64 {
		u := v.Unled(among)
		if len(v.Groups) < c.cfg.Groups {
			u = append(u, 0) // not every group reported yet
		}
		return u
	})
}

// Put writes key=value with `flotilla put`. The key's group is the
// cluster's choice (the key's hash); group is ignored. It implements
// Writer.
func (c *ProcCluster) Put(ctx context.Context, group uint64, key, value string) error {
	_, err := c.CLI(ctx, "put", key, value, "--endpoints", c.Endpoints(), "--timeout", timeoutArg(ctx, time.Minute))
	return err
}

// Get reads key linearizably with `flotilla get`.
func (c *ProcCluster) Get(ctx context.Context, key string) (string, error) {
	out, err := c.CLI(ctx, "get", key, "--endpoints", c.Endpoints(), "--timeout", timeoutArg(ctx, time.Minute))
	return strings.TrimRight(string(out), "\n"), err
}

// CheckAcked reads every write back with `flotilla get` (linearizable),
// eight at a time, and fails with ErrLostWrite naming the first writes that
// are missing or differ.
func (c *ProcCluster) CheckAcked(ctx context.Context, ws []Write) error {
	var (
		mu   sync.Mutex
		lost []string
		wg   sync.WaitGroup
	)
	next := make(chan Write)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for w := range next {
				got, err := c.Get(ctx, w.Key)
				if got != w.Value {
					mu.Lock()
					lost = append(lost, fmt.Sprintf("%s=%q (want %q, err %v)", w.Key, got, w.Value, err))
					mu.Unlock()
				}
			}
		}()
	}
	for _, w := range ws {
		next <- w
	}
	close(next)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(lost) > 0 {
		return fmt.Errorf("%w: %d of %d, first %v", ErrLostWrite, len(lost), len(ws), head(lost, 5))
	}
	return nil
}

// Bench runs `flotilla bench put -w json` for d against the running nodes
// and returns its figures.
func (c *ProcCluster) Bench(ctx context.Context, d time.Duration, clients int) (BenchResult, error) {
	var r BenchResult
	out, err := c.CLI(ctx, "bench", "put", "--endpoints", c.Endpoints(), "--clients", fmt.Sprint(clients),
		"--duration", d.String(), "--value-size", "64", "--keys", "100000", "-w", "json",
		"--timeout", (d + 30*time.Second).String())
	if err != nil {
		return r, err
	}
	return r, json.Unmarshal(out, &r)
}

// BenchResult is the contract part of `flotilla bench put -w json`.
type BenchResult struct {
	Ops       int64   `json:"ops"`
	Errors    int64   `json:"errors"`
	Seconds   float64 `json:"seconds"`
	OpsPerSec float64 `json:"ops_per_sec"`
	P50Ms     float64 `json:"p50_ms"`
	P99Ms     float64 `json:"p99_ms"`
}

// LogTail returns the last n bytes of node id's log, for failure reports.
func (c *ProcCluster) LogTail(id uint64, n int64) string {
	f, err := os.Open(c.Proc(id).LogFile)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > n {
		_, _ = f.Seek(-n, io.SeekEnd)
	}
	b, _ := io.ReadAll(f)
	return string(b)
}

// Close continues paused nodes, kills every process and waits for them.
// Safe to call more than once.
func (c *ProcCluster) Close() {
	c.mu.Lock()
	if c.mu.closed {
		c.mu.Unlock()
		return
	}
	c.mu.closed = true
	var waits []chan struct{}
	for _, p := range c.procs {
		if p.cmd == nil {
			continue
		}
		_ = p.cmd.Process.Signal(syscall.SIGCONT)
		_ = p.cmd.Process.Kill()
		waits = append(waits, p.exited)
		p.cmd = nil
	}
	c.mu.Unlock()
	for _, w := range waits {
		<-w
	}
}
