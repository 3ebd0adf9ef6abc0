package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/flotilla/flotilla/client"
	"github.com/flotilla/flotilla/internal/certs"
	"github.com/flotilla/flotilla/server"
)

const (
	demoNodes  = 3
	demoGroups = 8
)

func newDemoCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "demo",
		Short: "Run a local 3-node cluster in this process and open a shell on it",
		Long: `Start three nodes on 127.0.0.1 (real gRPC, free ports, data in a temporary
directory removed on exit), run a short workload, show the status, then read
commands from stdin (type help). End of input stops the cluster.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runDemo(cmd.Context(), cmd.InOrStdin(), cmd.OutOrStdout())
		},
	}
}

type demo struct {
	out     io.Writer // safe for concurrent use: watches print from their goroutines
	nodes   map[uint64]*server.Server
	cl      *client.Client
	paused  map[uint64]bool
	baseDir string
	// watches are the shell's watches by prefix, each printed by a
	// demoWatch goroutine that wg tracks.
	watches map[string]*client.Watcher
	wg      sync.WaitGroup
}

// lockedWriter serialises writes to w.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func runDemo(ctx context.Context, in io.Reader, out io.Writer) (err error) {
	dir, err := os.MkdirTemp("", "flotilla-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	d := &demo{out: &lockedWriter{w: out}, nodes: map[uint64]*server.Server{}, paused: map[uint64]bool{}, baseDir: dir,
		watches: map[string]*client.Watcher{}}
	defer d.stop()
	defer d.unwatchAll()
	if err := d.start(); err != nil {
		return err
	}
	fmt.Fprintf(out, "Started %d nodes with %d groups over mutual TLS; data and certificates in %s\n", demoNodes, demoGroups, dir)
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := d.waitLeaders(wctx); err != nil {
		return err
	}
	eps := make([]string, 0, demoNodes)
	for id := uint64(1); id <= demoNodes; id++ {
		eps = append(eps, d.nodes[id].ClientAddr())
	}
	tlsCfg, err := client.LoadTLS(d.certsDir(), "root")
	if err != nil {
		return err
	}
	d.cl, err = client.New(wctx, client.Config{Endpoints: eps, TLS: tlsCfg}, client.WithAttemptTimeout(2*time.Second))
	if err != nil {
		return err
	}
	defer d.cl.Close()
	if err := d.workload(wctx); err != nil {
		return err
	}
	d.status(ctx)
	fmt.Fprintln(out, "\nType help for commands; end of input (Ctrl-D) stops the cluster.")
	d.shell(ctx, in)
	fmt.Fprintln(out, "stopping the cluster")
	return nil
}

// certsDir is where the demo's own CA and certificates are.
func (d *demo) certsDir() string { return filepath.Join(d.baseDir, "certs") }

// makeCerts makes the demo's CA, a certificate for each node (on
// 127.0.0.1) and one for the root client: the demo runs secure, like a
// real cluster.
func (d *demo) makeCerts() error {
	o := certs.Options{Dir: d.certsDir()}
	if err := certs.CreateCA(o); err != nil {
		return err
	}
	for id := uint64(1); id <= demoNodes; id++ {
		if err := certs.CreateNode(o, id, []string{"127.0.0.1", "localhost"}); err != nil {
			return err
		}
	}
	return certs.CreateClient(o, "root")
}

func (d *demo) start() error {
	if err := d.makeCerts(); err != nil {
		return err
	}
	lis := make([][3]net.Listener, demoNodes+1)
	initial := map[uint64]string{}
	closeAll := func() {
		for _, ls := range lis {
			for _, l := range ls {
				if l != nil {
					l.Close()
				}
			}
		}
	}
	for id := 1; id <= demoNodes; id++ {
		for k := range 3 {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				closeAll()
				return err
			}
			lis[id][k] = l
		}
		initial[uint64(id)] = lis[id][0].Addr().String()
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	for id := uint64(1); id <= demoNodes; id++ {
		s, err := server.New(server.Config{
			NodeID:            id,
			DataDir:           filepath.Join(d.baseDir, fmt.Sprintf("node%d", id)),
			PeerAddr:          initial[id],
			InitialCluster:    initial,
			Groups:            demoGroups,
			TickInterval:      50 * time.Millisecond,
			DiscoveryInterval: 250 * time.Millisecond,
			BalanceInterval:   time.Second,
			// Fresh directories every run: no node can be known under
			// another incarnation, and the nodes not started yet listen
			// here without serving, which kept each bootstrap's check
			// waiting its default 3 s.
			BootstrapCheckWait: 10 * time.Millisecond,
			PeerListener:       lis[id][0],
			ClientListener:     lis[id][1],
			HTTPListener:       lis[id][2],
			DisableSync:        true,
			CertsDir:           d.certsDir(),
			Logger:             log,
		})
		if err != nil {
			for j := id + 1; j <= demoNodes; j++ {
				for _, l := range lis[j] {
					l.Close()
				}
			}
			return err
		}
		d.nodes[id] = s
		s.Start()
	}
	return nil
}

func (d *demo) stop() {
	var wg sync.WaitGroup
	for _, s := range d.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = s.Stop()
		}()
	}
	wg.Wait()
}

// leaders returns each group's leader as the group's replicas see it.
func (d *demo) leaders() map[uint64]uint64 {
	out := map[uint64]uint64{}
	for _, s := range d.nodes {
		for _, st := range s.Host().Status() {
			if st.Leader == s.NodeID() {
				out[st.ID] = st.Leader
			} else if _, ok := out[st.ID]; !ok && !d.paused[s.NodeID()] {
				out[st.ID] = st.Leader
			}
		}
	}
	return out
}

func (d *demo) waitLeaders(ctx context.Context) error {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		ls := d.leaders()
		n := 0
		for _, l := range ls {
			if l != 0 {
				n++
			}
		}
		if n == demoGroups {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("demo: only %d of %d groups elected a leader: %w", n, demoGroups, ctx.Err())
		case <-t.C:
		}
	}
}

func (d *demo) workload(ctx context.Context) error {
	const n, workers = 200, 8
	fmt.Fprintf(d.out, "Workload: %d puts and %d linearizable gets over %d goroutines...\n", n, n, workers)
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += workers {
				k, v := fmt.Appendf(nil, "demo/%03d", i), fmt.Appendf(nil, "value-%d", i)
				if _, err := d.cl.Put(ctx, k, v); err != nil {
					errs <- err
					return
				}
				got, err := d.cl.Get(ctx, k)
				if err != nil {
					errs <- err
					return
				}
				if string(got.Value) != string(v) {
					errs <- fmt.Errorf("demo: read %q for %s, wrote %q", got.Value, k, v)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	el := time.Since(start)
	fmt.Fprintf(d.out, "  done in %v (%.0f ops/s)\n\n", el.Round(time.Millisecond), float64(2*n)/el.Seconds())
	return nil
}

func (d *demo) status(ctx context.Context) {
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := d.cl.Status(sctx)
	if err != nil {
		fmt.Fprintf(d.out, "status: %v\n", err)
		return
	}
	printStatus(d.out, st)
}

const demoHelp = `commands:
  put KEY VALUE     write a key
  get KEY           read a key (linearizable)
  del KEY           delete a key
  get KEY REV       read a key as of revision REV of its range
  watch PREFIX      print the writes of keys under PREFIX as they happen (* for all)
  unwatch PREFIX    stop that watch
  txn               a transaction: compares, then-ops, else-ops, each ended by a
                    blank line (see flotilla txn --help), e.g.
                      value("a") = "1"   ⏎ ⏎   put a 2   ⏎ ⏎   get a   ⏎ ⏎
  status            nodes, groups, links
  leaders           which node leads each group
  cut A B           drop all traffic between nodes A and B (both ways)
  pause N           freeze node N: it neither sends nor answers, connections stay open
  resume N          undo pause N
  heal              remove every fault
  quit              stop the cluster and exit`

func (d *demo) shell(ctx context.Context, in io.Reader) {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 64<<10), 2<<20)
	for {
		fmt.Fprint(d.out, "flotilla> ")
		if !sc.Scan() {
			fmt.Fprintln(d.out)
			return
		}
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		if f[0] == "quit" || f[0] == "exit" {
			return
		}
		if f[0] == "txn" {
			if err := d.txn(ctx, sc); err != nil {
				fmt.Fprintf(d.out, "error: %v\n", err)
			}
			continue
		}
		if err := d.exec(ctx, f); err != nil {
			fmt.Fprintf(d.out, "error: %v\n", err)
		}
	}
}

// txn reads a transaction's three sections from sc, prompting for each,
// and applies it.
func (d *demo) txn(ctx context.Context, sc *bufio.Scanner) error {
	var sections [3][]string
	for i, prompt := range []string{"compares", "then", "else"} {
		fmt.Fprintf(d.out, "%s (a blank line ends them):\n", prompt)
		for sc.Scan() {
			line := strings.TrimSpace(sc.Text())
			if line == "" {
				break
			}
			sections[i] = append(sections[i], line)
		}
	}
	t, err := txnOf(sections)
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	res, err := d.cl.Txn(rctx, t)
	if err != nil {
		return err
	}
	return printTxn(d.out, res, false)
}

func (d *demo) node(s string) (uint64, error) {
	id, err := strconv.ParseUint(s, 10, 64)
	if err != nil || d.nodes[id] == nil {
		return 0, fmt.Errorf("no node %q (nodes are 1..%d)", s, demoNodes)
	}
	return id, nil
}

func (d *demo) exec(ctx context.Context, f []string) error {
	want := func(n int, usage string) error {
		if len(f) != n+1 {
			return fmt.Errorf("usage: %s", usage)
		}
		return nil
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	switch f[0] {
	case "help", "?":
		fmt.Fprintln(d.out, demoHelp)
	case "put":
		if err := want(2, "put KEY VALUE"); err != nil {
			return err
		}
		rev, err := d.cl.Put(rctx, []byte(f[1]), []byte(f[2]))
		if err != nil {
			return err
		}
		fmt.Fprintf(d.out, "OK (group %d, revision %d)\n", d.cl.GroupOf([]byte(f[1])), rev)
	case "get":
		if len(f) != 2 && len(f) != 3 {
			return fmt.Errorf("usage: get KEY [REVISION]")
		}
		var opts []client.ReadOption
		if len(f) == 3 {
			rev, err := strconv.ParseUint(f[2], 10, 64)
			if err != nil || rev == 0 {
				return fmt.Errorf("revision %q: want a positive integer", f[2])
			}
			opts = append(opts, client.AtRevision(rev))
		}
		kv, err := d.cl.Get(rctx, []byte(f[1]), opts...)
		if errors.Is(err, client.ErrKeyNotFound) {
			fmt.Fprintln(d.out, "(not found)")
			return nil
		}
		if err != nil {
			return err
		}
		fmt.Fprintf(d.out, "%s (group %d, revision %d)\n", kv.Value, kv.Group, kv.Revision)
	case "del":
		if err := want(1, "del KEY"); err != nil {
			return err
		}
		ok, err := d.cl.Delete(rctx, []byte(f[1]))
		if err != nil {
			return err
		}
		fmt.Fprintf(d.out, "deleted: %v\n", ok)
	case "watch":
		if err := want(1, "watch PREFIX (* for every key)"); err != nil {
			return err
		}
		return d.watch(ctx, f[1])
	case "unwatch":
		if err := want(1, "unwatch PREFIX"); err != nil {
			return err
		}
		w, ok := d.watches[f[1]]
		if !ok {
			return fmt.Errorf("no watch on %q", f[1])
		}
		delete(d.watches, f[1])
		w.Close()
	case "status":
		d.status(ctx)
	case "leaders":
		ls := d.leaders()
		ids := make([]uint64, 0, len(ls))
		for g := range ls {
			ids = append(ids, g)
		}
		sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
		for _, g := range ids {
			fmt.Fprintf(d.out, "group %d: leader %d\n", g, ls[g])
		}
	case "cut":
		if err := want(2, "cut A B"); err != nil {
			return err
		}
		a, err := d.node(f[1])
		if err != nil {
			return err
		}
		b, err := d.node(f[2])
		if err != nil {
			return err
		}
		if a == b {
			return fmt.Errorf("cut needs two different nodes")
		}
		d.nodes[a].Faults().SetEgressDropped(b, true)
		d.nodes[b].Faults().SetEgressDropped(a, true)
		fmt.Fprintf(d.out, "link %d<->%d cut; groups led by the other node keep their leader\n", a, b)
	case "pause", "resume":
		if err := want(1, f[0]+" N"); err != nil {
			return err
		}
		n, err := d.node(f[1])
		if err != nil {
			return err
		}
		if f[0] == "pause" {
			d.nodes[n].Freeze()
			d.paused[n] = true
			fmt.Fprintf(d.out, "node %d frozen (as by SIGSTOP: connections open, nothing answers); its groups fail over, the others stay put, clients go around it (try: leaders, put)\n", n)
		} else {
			d.nodes[n].Thaw()
			delete(d.paused, n)
			fmt.Fprintf(d.out, "node %d back\n", n)
		}
	case "heal":
		for id, s := range d.nodes {
			s.Thaw()
			s.Faults().Heal()
			delete(d.paused, id)
		}
		fmt.Fprintln(d.out, "all faults removed")
	default:
		return fmt.Errorf("unknown command %q; type help", f[0])
	}
	return nil
}

// watch starts a watch of the keys under prefix ("*": every key) that
// prints their writes.
func (d *demo) watch(ctx context.Context, prefix string) error {
	if _, ok := d.watches[prefix]; ok {
		return fmt.Errorf("already watching %q", prefix)
	}
	spec := client.WatchSpec{Prefix: []byte(prefix), PrevKV: true}
	if prefix == "*" {
		spec.Prefix = nil
	}
	w, err := d.cl.Watch(ctx, spec)
	if err != nil {
		return err
	}
	d.watches[prefix] = w
	d.wg.Add(1)
	go d.demoWatch(ctx, prefix, w)
	fmt.Fprintf(d.out, "watching %q: its writes print as they happen (unwatch %s to stop)\n", prefix, prefix)
	return nil
}

// demoWatch prints a watch's events until it is closed.
func (d *demo) demoWatch(ctx context.Context, prefix string, w *client.Watcher) {
	defer d.wg.Done()
	for {
		r, err := w.Next(ctx)
		if err != nil {
			if !errors.Is(err, context.Canceled) {
				fmt.Fprintf(d.out, "[watch %s] ended: %v\n", prefix, err)
			}
			return
		}
		for _, ev := range r.Events {
			var b strings.Builder
			_ = printWatchEvent(&b, ev, nil, false)
			fmt.Fprintf(d.out, "[watch %s] %s", prefix, b.String())
		}
	}
}

// unwatchAll stops every watch of the shell.
func (d *demo) unwatchAll() {
	for p, w := range d.watches {
		w.Close()
		delete(d.watches, p)
	}
	d.wg.Wait()
}
