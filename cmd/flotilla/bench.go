package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/client"
	"github.com/flotilla/flotilla/internal/loadgen"
	"github.com/flotilla/flotilla/kv"
)

type benchFlags struct {
	cf        clientFlags
	clients   int
	duration  time.Duration
	valueSize int
	keys      int
	keyPrefix string
	conns     int
	rate      float64
	noBatch   bool
	out       string
	cpuprof   string
	watchers  int
}

func newBenchCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure throughput and latency (put, get, txn, watch)",
	}
	cmd.AddCommand(newBenchOpCmd("put"), newBenchOpCmd("get"), newBenchOpCmd("txn"), newBenchOpCmd("watch"))
	return cmd
}

func newBenchOpCmd(op string) *cobra.Command {
	var bf benchFlags
	cmd := &cobra.Command{
		Use:   op,
		Short: fmt.Sprintf("Run concurrent %ss for a while and report ops/s and latency", op),
		Long: fmt.Sprintf(`Run concurrent %[1]ss for a while and report ops/s and latency.

A txn is a two-key compare-and-swap: if key K holds the bench's value, put it
in K and in K+"/2", else the same (so it writes either way); tools/etcdbench
--op txn sends etcd the same transaction.

watch starts --watchers watchers of the prefix "w/" (spread over the nodes),
then --clients clients put keys under it, together --rate puts per second
(default 10000), each value carrying its send time. The report counts
deliveries: ops is the events the watchers got, ops_per_sec those per second,
p50_ms and p99_ms the delivery latency (put sent to event received), errors
the failed puts; a summary line on stderr gives the puts and the deliveries
missing. tools/etcdbench --op watch does the same against etcd.

--clients closed-loop clients each keep one %[1]s in flight for --duration,
through the Go client with its default retry policy. Once a second a progress
line on stderr shows that second's ops/s and errors, then the running totals.

-w json prints one object: op, ops, errors, seconds, ops_per_sec, p50_ms,
p99_ms (of successful ops), clients, value_size, keys, then
errors_by_kind ({kind: count}: ambiguous, unavailable, timeout, ...; {} when
there were none) and per_second ([{"t":1,"ops":N,"errors":E}, ...]: the ops
and errors completed in each second of the run, t=1 being the first; a
second with no ops is a stall).

An interrupt (SIGINT, SIGTERM) ends the run early; the report then covers
the time it ran (seconds), and ops still in flight are not counted. One
before the run started (while the clients connect) is an error; a second
one ends the bench at once (unless the bench started with that signal
ignored, as a background job of a non-interactive shell does SIGINT).`, op),
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runBench(cmd, op, &bf)
		},
	}
	bf.cf.register(cmd)
	f := cmd.Flags()
	f.IntVar(&bf.clients, "clients", 16, "concurrent clients (1..10000)")
	f.DurationVar(&bf.duration, "duration", 10*time.Second, "how long to run")
	f.IntVar(&bf.valueSize, "value-size", 128, "value size in bytes (put; 0..1048576)")
	f.IntVar(&bf.keys, "keys", 1000, "number of distinct keys (1..100000000)")
	if op != "watch" {
		f.StringVar(&bf.keyPrefix, "key-prefix", "", "put before every key (at most 256 bytes): the keys, 16 hex digits each, then fill only the ranges under it, as a skewed workload would")
	}
	f.Float64Var(&bf.rate, "rate", 0, "ops per second over all clients, spread evenly (0: as fast as the clients go)")
	f.IntVar(&bf.conns, "conns", 1, "client connections per node the clients share (1..clients); more connections mean smaller batches")
	f.BoolVar(&bf.noBatch, "no-batch", false, "send each request as its own RPC instead of over the nodes' Batch streams")
	f.StringVarP(&bf.out, "write-out", "w", "table", "output format: table or json")
	f.StringVar(&bf.cpuprof, "cpuprofile", "", "write a CPU profile of this load generator to `file` (for go tool pprof)")
	if op == "watch" {
		f.IntVar(&bf.watchers, "watchers", 1000, "watchers of the prefix (1..100000)")
		f.Lookup("rate").DefValue, bf.rate = "10000", 10000
	}
	return cmd
}

func runBench(cmd *cobra.Command, op string, bf *benchFlags) error {
	switch {
	case bf.clients < 1 || bf.clients > 10000:
		return fmt.Errorf("--clients %d outside 1..10000", bf.clients)
	case bf.duration <= 0:
		return fmt.Errorf("--duration must be positive")
	case bf.valueSize < 0 || bf.valueSize > 1<<20:
		return fmt.Errorf("--value-size %d outside 0..1048576", bf.valueSize)
	case bf.keys < 1 || bf.keys > 100000000:
		return fmt.Errorf("--keys %d outside 1..100000000", bf.keys)
	case len(bf.keyPrefix) > 256:
		return fmt.Errorf("--key-prefix of %d bytes: at most 256", len(bf.keyPrefix))
	case bf.conns < 1 || bf.conns > 10000:
		return fmt.Errorf("--conns %d outside 1..10000", bf.conns)
	case bf.rate < 0 || bf.rate > 1e6:
		return fmt.Errorf("--rate %v outside 0..1000000", bf.rate)
	case op == "watch" && (bf.watchers < 1 || bf.watchers > 100000):
		return fmt.Errorf("--watchers %d outside 1..100000", bf.watchers)
	case op == "watch" && bf.valueSize < 8:
		return fmt.Errorf("--value-size %d: a watch benchmark's value holds its send time, at least 8 bytes", bf.valueSize)
	}
	if err := checkOutput(bf.out, "table", "json"); err != nil {
		return err
	}
	ccfg, err := bf.cf.config()
	if err != nil {
		return err
	}
	if bf.cpuprof != "" {
		f, err := os.Create(bf.cpuprof)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	// An interrupt (SIGINT, SIGTERM) ends the run early, and the report
	// covers what ran: a run with a long --duration can be stopped when
	// the thing it measures through is over (tools/drainbench.sh).
	// The first signal only: a second one kills the bench as before (a
	// shutdown that hangs can still be ended).
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	context.AfterFunc(ctx, stop)
	res, err := bench(ctx, ccfg, op, bf, os.Stderr)
	if err != nil {
		return err
	}
	w := cmd.OutOrStdout()
	if bf.out == "json" {
		return json.NewEncoder(w).Encode(res)
	}
	_, err = fmt.Fprintln(w, res)
	return err
}

// bench runs the workload with loadgen (the loop tools/etcdbench runs
// too) and returns its figures, writing a progress line to progress once a
// second.
func bench(ctx context.Context, ccfg client.Config, op string, bf *benchFlags, progress io.Writer) (loadgen.Report, error) {
	// A few clients share the load: each has its own connections.
	nconn := min(bf.clients, bf.conns)
	if op == "watch" {
		nconn = max(bf.conns, len(ccfg.Endpoints)) // a client per node at least: the watchers spread
	}
	clients := make([]*client.Client, 0, nconn)
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	for range nconn {
		// The client's default retry policy: bench measures what an
		// application using the client would see.
		cfg := ccfg
		cfg.DisableBatch = bf.noBatch
		if op == "watch" {
			// Client i's first endpoint is node i's: a watch goes there.
			n := len(clients) % len(ccfg.Endpoints)
			cfg.Endpoints = append(append([]string(nil), ccfg.Endpoints[n:]...), ccfg.Endpoints[:n]...)
		}
		c, err := client.New(ctx, cfg)
		if err != nil {
			return loadgen.Report{}, err
		}
		clients = append(clients, c)
	}
	if op == "watch" {
		return benchWatch(ctx, clients, bf, progress)
	}
	value := make([]byte, bf.valueSize)
	for i := range value {
		value[i] = 'a' + byte(i%26)
	}
	// One key buffer per load client: Put and Get do not keep the key.
	keys := make([][]byte, bf.clients)
	var pairs [][]byte // txn: each client's second key
	if op == "txn" {
		pairs = make([][]byte, bf.clients)
	}
	o := loadgen.Options{Clients: bf.clients, Duration: bf.duration, Label: "bench " + op, Progress: progress, Classify: benchErrorKind, Rate: bf.rate}
	r := loadgen.Run(ctx, o, func(ctx context.Context, i int, rng *rand.Rand) error {
		c := clients[i%len(clients)]
		key := loadgen.AppendKey(append(keys[i][:0], bf.keyPrefix...), rng.IntN(bf.keys))
		keys[i] = key
		switch op {
		case "put":
			_, err := c.Put(ctx, key, value)
			return err
		case "txn":
			pairs[i] = append(append(pairs[i][:0], key...), "/2"...)
			puts := []kv.TxnOp{{Kind: kv.TxnPut, Key: key, Value: value}, {Kind: kv.TxnPut, Key: pairs[i], Value: value}}
			_, err := c.Txn(ctx, kv.Txn{
				Compares: []kv.Compare{{Key: key, Target: kv.CompareValue, Op: kv.CompareEqual, Value: value}},
				Then:     puts, Else: puts,
			})
			return err
		}
		if _, err := c.Get(ctx, key); err != nil && !errors.Is(err, client.ErrKeyNotFound) {
			return err
		}
		return nil
	})
	return loadgen.Report{Op: op, Result: r, Clients: bf.clients, ValueSize: bf.valueSize, Keys: bf.keys}, nil
}

// benchErrorKind names the kind of a failed op's error in the report's
// errors_by_kind. The client's sentinel errors come first, in this order
// (the first that errors.Is finds wins: an ErrUnavailable that wraps the
// last attempt's ErrNotLeader is "unavailable", an ErrAmbiguous that wraps
// the context's end is "ambiguous"); add new sentinels to the switch.
// Then the context's end, then a gRPC status code ("internal",
// "resource_exhausted"). A sentinel the switch does not know yet still
// gets its own words: "client: session expired: ..." is
// "session_expired". Anything else is "other".
func benchErrorKind(err error) string {
	switch {
	case errors.Is(err, client.ErrAmbiguous):
		return "ambiguous"
	case errors.Is(err, client.ErrUnavailable):
		return "unavailable"
	case errors.Is(err, client.ErrNotLeader):
		return "not_leader"
	case errors.Is(err, client.ErrTxnSpansRanges): // before ErrInvalidArgument, which it wraps
		return "txn_spans_ranges"
	case errors.Is(err, client.ErrInvalidArgument):
		return "invalid_argument"
	case errors.Is(err, client.ErrClosed):
		return "closed"
	case errors.Is(err, client.ErrKeyNotFound):
		return "key_not_found"
	case errors.Is(err, client.ErrGroupNotFound):
		return "group_not_found"
	case errors.Is(err, client.ErrLeaseNotFound):
		return "lease_not_found"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	}
	if st, ok := status.FromError(err); ok {
		switch st.Code() {
		case codes.DeadlineExceeded:
			return "timeout"
		case codes.Canceled:
			return "canceled"
		}
		return loadgen.SnakeCase(st.Code().String())
	}
	// The client's errors read "client: <what>: <detail>" (a sentinel
	// wrapped with detail, or a status the client did not map, as
	// "client: Internal: ..."). Take <what> if it is a few plain words,
	// so that the kinds stay few.
	if rest, ok := strings.CutPrefix(err.Error(), "client: "); ok {
		what, _, _ := strings.Cut(rest, ":")
		if len(what) <= 32 && strings.Count(what, " ") < 4 && strings.TrimLeft(what, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ ") == "" {
			if kind := loadgen.SnakeCase(what); kind != "" {
				return kind
			}
		}
	}
	return "other"
}

// benchWatch runs the watch benchmark (loadgen.RunWatch) with the Go
// client: watcher i watches through clients[i%len(clients)], whose first
// endpoints differ, so that the watchers spread over the nodes.
func benchWatch(ctx context.Context, clients []*client.Client, bf *benchFlags, progress io.Writer) (loadgen.Report, error) {
	o := loadgen.WatchOptions{Watchers: bf.watchers, Clients: bf.clients, Rate: bf.rate, Duration: bf.duration,
		Keys: bf.keys, ValueSize: bf.valueSize, Label: "bench watch", Progress: progress, Classify: benchErrorKind}
	start := func(ctx context.Context, i int, observe func([]byte)) error {
		w, err := clients[i%len(clients)].Watch(ctx, client.WatchSpec{Prefix: []byte(loadgen.WatchPrefix), Progress: 100 * time.Millisecond})
		if err != nil {
			return err
		}
		// Live once the first response (a progress notification) came:
		// the server has set the watch up.
		if _, err := w.Next(ctx); err != nil {
			w.Close()
			return err
		}
		go func() { // benchWatcher: one per watcher, until ctx ends
			defer w.Close()
			for {
				r, err := w.Next(ctx)
				if err != nil {
					return
				}
				for _, e := range r.Events {
					observe(e.KV.Value)
				}
			}
		}()
		return nil
	}
	put := func(ctx context.Context, i int, key, value []byte) error {
		_, err := clients[i%len(clients)].Put(ctx, key, value)
		return err
	}
	rep, _, err := loadgen.RunWatch(ctx, o, start, put)
	return rep, err
}
