// Package e2e runs the flotilla binary: a 3-node cluster of real
// processes on 127.0.0.1, 127.0.0.2 and 127.0.0.3, and the CLI's handling
// of bad input.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/client"
	"github.com/flotilla/flotilla/internal/loadgen"
	"github.com/flotilla/flotilla/internal/testutil"
)

var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "flotilla-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = filepath.Join(dir, "flotilla")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/flotilla/flotilla/cmd/flotilla").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build flotilla: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		os.RemoveAll(dir)
		os.Exit(code)
	}))
}

// freeAddr returns host:port with a port that was free a moment ago.
func freeAddr(t *testing.T, host string) string {
	t.Helper()
	l, err := net.Listen("tcp", host+":0")
	if err != nil {
		t.Fatalf("listen on %s (loopback aliases needed): %v", host, err)
	}
	defer l.Close()
	return l.Addr().String()
}

type node struct {
	id                         uint64
	peer, clientAddr, httpAddr string
	dataDir                    string
	cmd                        *exec.Cmd
	stderr                     *bytes.Buffer
	exited                     chan error
}

type procCluster struct {
	t       *testing.T
	nodes   map[uint64]*node
	initial string
	groups  int
	// certsDir, if set, starts the nodes with --certs-dir (mutual TLS and
	// roles); empty: --insecure.
	certsDir string
	// startArgs are added to every node's start command.
	startArgs []string
	// size is the number of nodes; 0 means 3.
	size int
}

// newProcCluster starts an --insecure 3-node cluster of groups ranges.
func newProcCluster(t *testing.T, groups int) *procCluster {
	return launch(t, &procCluster{groups: groups})
}

// launch picks the addresses of c's nodes (size, 3 by default) and starts
// them, as c's groups, certsDir and startArgs say; it stops them at
// cleanup.
func launch(t *testing.T, c *procCluster) *procCluster {
	c.t, c.nodes = t, map[uint64]*node{}
	dir := t.TempDir()
	var parts []string
	if c.size == 0 {
		c.size = 3
	}
	for id := uint64(1); id <= uint64(c.size); id++ {
		host := fmt.Sprintf("127.0.0.%d", id)
		n := &node{id: id, peer: freeAddr(t, host), clientAddr: freeAddr(t, host), httpAddr: freeAddr(t, host),
			dataDir: filepath.Join(dir, fmt.Sprint(id))}
		c.nodes[id] = n
		parts = append(parts, fmt.Sprintf("%d=%s", id, n.peer))
	}
	c.initial = strings.Join(parts, ",")
	for id := range c.nodes {
		c.start(id)
	}
	t.Cleanup(func() {
		for _, n := range c.nodes {
			if n.cmd != nil {
				n.cmd.Process.Kill()
				<-n.exited
			}
		}
	})
	return c
}

func (c *procCluster) start(id uint64) {
	n := c.nodes[id]
	n.stderr = &bytes.Buffer{}
	n.cmd = exec.Command(bin, "start", "--id", fmt.Sprint(id), "--data-dir", n.dataDir,
		"--peer-addr", n.peer, "--client-addr", n.clientAddr, "--http-addr", n.httpAddr,
		"--initial-cluster", c.initial, "--groups", fmt.Sprint(c.groups),
		"--tick", "20ms", "--election-ticks", "10", "--balance-interval", "500ms")
	if c.certsDir != "" {
		n.cmd.Args = append(n.cmd.Args, "--certs-dir", c.certsDir)
	} else {
		n.cmd.Args = append(n.cmd.Args, "--insecure")
	}
	n.cmd.Args = append(n.cmd.Args, c.startArgs...)
	n.cmd.Stderr = n.stderr
	if err := n.cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	n.exited = make(chan error, 1)
	go func() { n.exited <- n.cmd.Wait() }()
}

// kill kills node id with SIGKILL and waits for it.
func (c *procCluster) kill(id uint64) {
	n := c.nodes[id]
	n.cmd.Process.Kill()
	<-n.exited
	n.cmd = nil
}

// term stops node id with SIGTERM and returns its exit error.
func (c *procCluster) term(id uint64) error {
	n := c.nodes[id]
	n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-n.exited:
		n.cmd = nil
		return err
	case <-time.After(30 * time.Second):
		return errors.New("did not exit within 30s of SIGTERM")
	}
}

func (c *procCluster) endpoints(except uint64) []string {
	var eps []string
	for id := uint64(1); id <= uint64(len(c.nodes)); id++ {
		if id != except {
			eps = append(eps, c.nodes[id].clientAddr)
		}
	}
	return eps
}

// waitFor is testutil.WaitFor.
var waitFor = testutil.WaitFor

type result struct {
	stdout, stderr string
	code           int
}

func run(t *testing.T, env []string, args ...string) result {
	t.Helper()
	return runFor(t, 60*time.Second, env, args...)
}

// runFor is run with the command killed after d (exit code -1).
func runFor(t *testing.T, d time.Duration, env []string, args ...string) result {
	t.Helper()
	return runIn(t, d, "", env, args...)
}

// runIn is runFor with stdin read from in.
func runIn(t *testing.T, d time.Duration, in string, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdin = strings.NewReader(in)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run %v: %v", args, err)
	}
	r := result{out.String(), errb.String(), code}
	if strings.Contains(r.stderr, "panic") || strings.Contains(r.stderr, "goroutine ") {
		t.Fatalf("%v panicked:\n%s", args, r.stderr)
	}
	return r
}

// waitLed waits until each of the cluster's first groups ranges has a
// leader, as the running nodes see it.
func (c *procCluster) waitLed(t *testing.T, groups int) {
	t.Helper()
	waitFor(t, 30*time.Second, "every range led", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		st, err := c.status(ctx, c.endpoints(0))
		if err != nil {
			return err
		}
		return allLed(st, groups, 0)
	})
}

// config returns the configuration of a client of c through eps: root's
// certificate if c is secure.
func (c *procCluster) config(eps []string) (client.Config, error) {
	cfg := client.Config{Endpoints: eps}
	if c.certsDir != "" {
		var err error
		if cfg.TLS, err = client.LoadTLS(c.certsDir, "root"); err != nil {
			return cfg, err
		}
	}
	return cfg, nil
}

// status gathers the cluster status through the given endpoints.
func (c *procCluster) status(ctx context.Context, eps []string) (api.Status, error) {
	cfg, err := c.config(eps)
	if err != nil {
		return api.Status{}, err
	}
	cl, err := client.New(ctx, cfg, client.WithMaxAttempts(2))
	if err != nil {
		return api.Status{}, err
	}
	defer cl.Close()
	return cl.Status(ctx)
}

// allLed checks that every group has a leader among the live nodes.
func allLed(st api.Status, groups int, dead uint64) error {
	if len(st.Groups) != groups {
		return fmt.Errorf("%d groups in status, want %d", len(st.Groups), groups)
	}
	for _, g := range st.Groups {
		if g.Leader == 0 || g.Leader == dead {
			return fmt.Errorf("group %d led by %d", g.ID, g.Leader)
		}
	}
	return nil
}

func TestThreeProcessesKillAndRestart(t *testing.T) {
	const groups = 6
	c := newProcCluster(t, groups)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	waitFor(t, 30*time.Second, "cluster up", func() error {
		for _, ep := range c.endpoints(0) {
			st, err := c.status(ctx, []string{ep})
			if err != nil {
				return err
			}
			for _, n := range st.Nodes {
				if !n.Alive || n.ClientAddr == "" {
					return fmt.Errorf("%s does not know node %d yet", ep, n.ID)
				}
			}
			if err := allLed(st, groups, 0); err != nil {
				return err
			}
		}
		return nil
	})

	// Write through node 1, read back through node 2 with the CLI.
	if r := run(t, nil, "put", "greeting", "hello", "--endpoints", c.nodes[1].clientAddr); r.code != 0 {
		t.Fatalf("put: %+v", r)
	}
	if r := run(t, nil, "get", "greeting", "--endpoints", c.nodes[2].clientAddr); r.code != 0 || r.stdout != "hello\n" {
		t.Fatalf("get from node 2: %+v", r)
	}
	r := run(t, nil, "status", "-w", "json", "--endpoints", c.nodes[3].clientAddr)
	var st api.Status
	if err := json.Unmarshal([]byte(r.stdout), &st); r.code != 0 || err != nil || len(st.Nodes) != 3 || len(st.Groups) != groups || len(st.Peers) != 6 {
		t.Fatalf("status -w json: %v %+v", err, r)
	}
	var raw map[string][]map[string]any
	json.Unmarshal([]byte(r.stdout), &raw)
	for list, fields := range map[string][]string{
		"nodes":  {"id", "peer_addr", "client_addr", "http_addr", "alive"},
		"groups": {"id", "leader", "term", "replicas", "commit", "applied"},
		"peers":  {"from", "to", "queue_len", "sent", "dropped"},
	} {
		for _, f := range fields {
			if _, ok := raw[list][0][f]; !ok {
				t.Errorf("status json: %s[] lacks %q", list, f)
			}
		}
	}

	// Kill -9 the node leading most groups.
	count := map[uint64]int{}
	for _, g := range st.Groups {
		count[g.Leader]++
	}
	victim := uint64(1)
	for id, n := range count {
		if n > count[victim] {
			victim = id
		}
	}
	c.kill(victim)
	survivors := c.endpoints(victim)
	waitFor(t, 30*time.Second, "every group led by a survivor", func() error {
		st, err := c.status(ctx, survivors)
		if err != nil {
			return err
		}
		return allLed(st, groups, victim)
	})
	cl, err := client.New(ctx, client.Config{Endpoints: survivors})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for i := range 30 {
		if _, err := cl.Put(ctx, fmt.Appendf(nil, "while-down/%d", i), []byte("x")); err != nil {
			t.Fatalf("write with node %d down: %v", victim, err)
		}
	}

	// Restart it: it catches up and serves reads, also from its own state.
	c.start(victim)
	vcl, err := client.New(ctx, client.Config{Endpoints: []string{c.nodes[victim].clientAddr}})
	if err == nil {
		defer vcl.Close()
	}
	waitFor(t, 30*time.Second, "restarted node caught up", func() error {
		r := run(t, nil, "get", "while-down/29", "--serializable", "--endpoints", c.nodes[victim].clientAddr, "--timeout", "2s")
		if r.code != 0 || r.stdout != "x\n" {
			return fmt.Errorf("%+v", r)
		}
		return nil
	})
	if r := run(t, nil, "get", "greeting", "--endpoints", c.nodes[victim].clientAddr); r.code != 0 || r.stdout != "hello\n" {
		t.Fatalf("get from restarted node: %+v", r)
	}

	// A short benchmark prints the contract's JSON.
	r = run(t, nil, "bench", "put", "--endpoints", strings.Join(c.endpoints(0), ","), "--clients", "4",
		"--duration", "1s", "--value-size", "64", "--keys", "100", "-w", "json")
	var bench map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &bench); r.code != 0 || err != nil {
		t.Fatalf("bench: %v %+v", err, r)
	}
	for _, f := range []string{"ops", "errors", "seconds", "ops_per_sec", "p50_ms", "p99_ms"} {
		if _, ok := bench[f]; !ok {
			t.Errorf("bench json lacks %q: %s", f, r.stdout)
		}
	}
	if bench["ops"].(float64) == 0 {
		t.Errorf("bench did nothing: %s", r.stdout)
	}
	// An interrupt ends a long bench early, with the report of what ran.
	long := startBG(t, "bench", "put", "--endpoints", strings.Join(c.endpoints(0), ","), "--clients", "2",
		"--duration", "1h", "--value-size", "8", "--keys", "100", "-w", "json")
	waitFor(t, 30*time.Second, "the long bench's first progress line", func() error {
		if !strings.Contains(long.stderr.String(), "ops/s") {
			return fmt.Errorf("stderr %q", long.stderr.String())
		}
		return nil
	})
	if err := long.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	if code := long.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("bench after SIGINT: exit %d, stderr %s", code, long.stderr.String())
	}
	var cut struct {
		Ops       float64 `json:"ops"`
		Seconds   float64 `json:"seconds"`
		PerSecond []struct {
			Ops float64 `json:"ops"`
		} `json:"per_second"`
	}
	if err := json.Unmarshal([]byte(long.stdout.String()), &cut); err != nil || cut.Ops == 0 || cut.Seconds < 1 || cut.Seconds > 600 || len(cut.PerSecond) < int(cut.Seconds) {
		t.Fatalf("bench cut short by SIGINT reported %+v (%v): %s", cut, err, long.stdout.String())
	}
	// --key-prefix: with one key, the bench writes prefix + key 0's 16
	// hex digits, and only that.
	r = run(t, nil, "bench", "put", "--endpoints", strings.Join(c.endpoints(0), ","), "--clients", "2",
		"--duration", "300ms", "--value-size", "5", "--keys", "1", "--key-prefix", "skew/", "-w", "json")
	if r.code != 0 {
		t.Fatalf("bench with --key-prefix: %+v", r)
	}
	key := string(loadgen.AppendKey([]byte("skew/"), 0))
	if r := run(t, nil, "get", key, "--endpoints", c.nodes[victim].clientAddr); r.code != 0 || r.stdout != "abcde\n" {
		t.Fatalf("get %s after the bench: %+v", key, r)
	}

	// SIGTERM: every node exits 0.
	for id := uint64(1); id <= 3; id++ {
		if err := c.term(id); err != nil {
			t.Errorf("node %d after SIGTERM: %v\n%s", id, err, c.nodes[id].stderr)
		}
	}
}

func TestBadInput(t *testing.T) {
	dir := t.TempDir()
	peer, cli, http := freeAddr(t, "127.0.0.1"), freeAddr(t, "127.0.0.1"), freeAddr(t, "127.0.0.1")
	start := func(extra ...string) []string {
		return append([]string{"start", "--id", "1", "--data-dir", filepath.Join(dir, "d"), "--peer-addr", peer,
			"--client-addr", cli, "--http-addr", http, "--initial-cluster", "1=" + peer, "--groups", "2", "--tick", "10ms", "--insecure"}, extra...)
	}
	cases := []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"no command args", nil, []string{"put", "k"}, "accepts 2 arg"},
		{"unknown command", nil, []string{"frobnicate"}, "unknown command"},
		{"malformed flag", nil, []string{"start", "--id", "x"}, "invalid argument"},
		{"unknown flag", nil, []string{"start", "--nope"}, "unknown flag"},
		{"missing id", nil, []string{"start", "--data-dir", dir}, "--id is required"},
		{"wrong initial cluster", nil, start("--initial-cluster", "1=nohostport"), "initial-cluster"},
		{"id not in cluster", nil, start("--id", "4"), "not in --initial-cluster"},
		{"bad groups", nil, start("--groups", "0"), "--groups"},
		{"bad history retention", nil, start("--history-retention", "5ms"), "--history-retention"},
		{"no certs and not insecure", nil, start()[:len(start())-1], "no --certs-dir"},
		{"certs dir without certs", nil, start("--insecure=false", "--certs-dir", dir), "--certs-dir"},
		{"bad env", []string{"FLOTILLA_GROUPS=many"}, []string{"start"}, "FLOTILLA_GROUPS"},
		{"bad output", nil, []string{"status", "-w", "yaml", "--endpoints", cli}, "-w"},
		{"bad bench clients", nil, []string{"bench", "put", "--clients", "0"}, "--clients"},
		{"bad bench key prefix", nil, []string{"bench", "put", "--key-prefix", strings.Repeat("k", 257)}, "--key-prefix"},
		{"no server", nil, []string{"get", "k", "--endpoints", freeAddr(t, "127.0.0.1"), "--timeout", "1s"}, "unavailable"},
	}
	for _, tc := range cases {
		r := run(t, tc.env, tc.args...)
		if r.code == 0 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%s: exit %d, stderr %q; want non-zero and %q", tc.name, r.code, r.stderr, tc.want)
		}
	}

	// A single-node cluster, configured through the environment; a flag
	// beats the environment.
	env := []string{"FLOTILLA_GROUPS=2", "FLOTILLA_ENDPOINTS=127.0.0.1:1"}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, start()...)
	cmd.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
		<-exited
	}()
	waitFor(t, 20*time.Second, "single node serves", func() error {
		if r := run(t, env, "put", "k", "v", "--endpoints", cli, "--timeout", "2s"); r.code != 0 {
			return errors.New(r.stderr)
		}
		return nil
	})
	big := strings.Repeat("k", 4097)
	if r := run(t, env, "put", big, "v", "--endpoints", cli); r.code == 0 || !strings.Contains(r.stderr, "invalid argument") {
		t.Errorf("oversized key: %+v", r)
	}
	if r := run(t, env, "get", "missing", "--endpoints", cli); r.code == 0 || !strings.Contains(r.stderr, "not found") {
		t.Errorf("missing key: %+v", r)
	}
	if r := run(t, env, "get", "k", "--endpoints", cli); r.code != 0 || r.stdout != "v\n" {
		t.Errorf("nothing lost: %+v", r)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := <-exited; err != nil {
		t.Fatalf("SIGTERM: %v\n%s", err, stderr.String())
	}
	exited <- nil // for the deferred wait

	// The data directory now belongs to this one-node cluster.
	other := freeAddr(t, "127.0.0.1")
	r := run(t, nil, start("--initial-cluster", "1="+peer+",2="+other)...)
	if r.code == 0 || !strings.Contains(r.stderr, "another cluster") {
		t.Errorf("data dir of another cluster: %+v", r)
	}
}
