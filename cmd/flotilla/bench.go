package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"runtime/pprof"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"github.com/flotilla/flotilla/client"
)

// benchResult is the JSON of `bench -w json`; its field names are a
// contract (DESIGN.md).
type benchResult struct {
	Op        string  `json:"op"`
	Ops       uint64  `json:"ops"`
	Errors    uint64  `json:"errors"`
	Seconds   float64 `json:"seconds"`
	OpsPerSec float64 `json:"ops_per_sec"`
	P50Ms     float64 `json:"p50_ms"`
	P99Ms     float64 `json:"p99_ms"`
	Clients   int     `json:"clients"`
	ValueSize int     `json:"value_size"`
	Keys      int     `json:"keys"`
}

type benchFlags struct {
	cf        clientFlags
	clients   int
	duration  time.Duration
	valueSize int
	keys      int
	conns     int
	noBatch   bool
	out       string
	cpuprof   string
}

func newBenchCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure throughput and latency (put, get)",
	}
	cmd.AddCommand(newBenchOpCmd("put"), newBenchOpCmd("get"))
	return cmd
}

func newBenchOpCmd(op string) *cobra.Command {
	var bf benchFlags
	cmd := &cobra.Command{
		Use:   op,
		Short: fmt.Sprintf("Run concurrent %ss for a while and report ops/s and latency", op),
		Args:  cobra.NoArgs,
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
	f.IntVar(&bf.conns, "conns", 1, "client connections per node the clients share (1..clients); more connections mean smaller batches")
	f.BoolVar(&bf.noBatch, "no-batch", false, "send each request as its own RPC instead of over the nodes' Batch streams")
	f.StringVarP(&bf.out, "write-out", "w", "table", "output format: table or json")
	f.StringVar(&bf.cpuprof, "cpuprofile", "", "write a CPU profile of this load generator to `file` (for go tool pprof)")
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
	case bf.conns < 1 || bf.conns > 10000:
		return fmt.Errorf("--conns %d outside 1..10000", bf.conns)
	}
	if err := checkOutput(bf.out, "table", "json"); err != nil {
		return err
	}
	eps, err := bf.cf.list()
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
	res, err := bench(cmd.Context(), eps, op, bf, os.Stderr)
	if err != nil {
		return err
	}
	w := cmd.OutOrStdout()
	if bf.out == "json" {
		return json.NewEncoder(w).Encode(res)
	}
	fmt.Fprintf(w, "bench %s: %d ops, %d errors in %.1fs: %.0f ops/s, p50 %.2f ms, p99 %.2f ms\n",
		op, res.Ops, res.Errors, res.Seconds, res.OpsPerSec, res.P50Ms, res.P99Ms)
	return nil
}

// bench runs the workload and returns its figures, writing a progress
// line to progress once a second.
func bench(ctx context.Context, eps []string, op string, bf *benchFlags, progress io.Writer) (benchResult, error) {
	// A few clients share the load: each has its own connections.
	nconn := min(bf.clients, bf.conns)
	clients := make([]*client.Client, 0, nconn)
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	for range nconn {
		c, err := client.New(ctx, client.Config{Endpoints: eps, DisableBatch: bf.noBatch}, client.WithMaxAttempts(3))
		if err != nil {
			return benchResult{}, err
		}
		clients = append(clients, c)
	}
	value := make([]byte, bf.valueSize)
	for i := range value {
		value[i] = 'a' + byte(i%26)
	}
	var ops, errs atomic.Uint64
	lats := make([][]time.Duration, bf.clients)
	start := time.Now()
	deadline := start.Add(bf.duration)
	rctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	var wg sync.WaitGroup
	for i := range bf.clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := clients[i%len(clients)]
			rng := rand.New(rand.NewPCG(uint64(i), uint64(start.UnixNano())))
			for rctx.Err() == nil {
				key := fmt.Appendf(nil, "bench-%08d", rng.IntN(bf.keys))
				t0 := time.Now()
				var err error
				if op == "put" {
					_, err = c.Put(rctx, key, value)
				} else {
					_, err = c.Get(rctx, key)
					if errors.Is(err, client.ErrKeyNotFound) {
						err = nil
					}
				}
				if rctx.Err() != nil {
					return // cut by the deadline: neither an op nor an error
				}
				if err != nil {
					errs.Add(1)
					continue
				}
				lats[i] = append(lats[i], time.Since(t0))
				ops.Add(1)
			}
		}()
	}
	done := make(chan struct{})
	var pwg sync.WaitGroup
	pwg.Add(1)
	go func() { // progressLoop
		defer pwg.Done()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				fmt.Fprintln(progress)
				return
			case <-t.C:
				el := time.Since(start).Seconds()
				fmt.Fprintf(progress, "\rbench %s: %4.0fs  %d ops  %.0f ops/s  %d errors ", op, el, ops.Load(), float64(ops.Load())/el, errs.Load())
			}
		}
	}()
	wg.Wait()
	close(done)
	pwg.Wait()
	elapsed := time.Since(start).Seconds()
	var all []time.Duration
	for _, l := range lats {
		all = append(all, l...)
	}
	slices.Sort(all)
	pct := func(p float64) float64 {
		if len(all) == 0 {
			return 0
		}
		return float64(all[min(len(all)-1, int(p*float64(len(all))))]) / float64(time.Millisecond)
	}
	return benchResult{
		Op: op, Ops: ops.Load(), Errors: errs.Load(), Seconds: elapsed,
		OpsPerSec: float64(ops.Load()) / elapsed, P50Ms: pct(0.50), P99Ms: pct(0.99),
		Clients: bf.clients, ValueSize: bf.valueSize, Keys: bf.keys,
	}, nil
}
