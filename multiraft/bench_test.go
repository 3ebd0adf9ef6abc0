package multiraft_test

// Engine benchmarks and measurements. Results and the commands that produced
// them are in BENCHMARKS.md ("## Engine"). Nothing here asserts a speed.
//
//	go test -run '^$' -bench BenchmarkPropose -benchtime 100000x -count 5 -timeout 30m ./multiraft/
//	FLOTILLA_IDLE=1 go test -run TestIdleCost -v -count 1 ./multiraft/
//	go test -run '^$' -bench BenchmarkIdleGroupHeap -benchtime 1x -count 3 ./multiraft/
//
// Knobs for diagnosis (never needed for the figures in BENCHMARKS.md):
// FLOTILLA_BENCH_PROPOSERS (default 1024), FLOTILLA_BENCH_NOSYNC=1 (fsync
// off), and the FLOTILLA_IDLE_* variables documented on TestIdleCost.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla/flotilla/multiraft"
	"github.com/flotilla/flotilla/transport"
)

// countSM is a state machine that only counts the commands it applies.
type countSM struct{ n atomic.Uint64 }

func (s *countSM) Apply(cmds []multiraft.Command) error {
	s.n.Add(uint64(len(cmds)))
	return nil
}

func (s *countSM) Query([]byte) ([]byte, error) {
	return binary.BigEndian.AppendUint64(nil, s.n.Load()), nil
}

func (s *countSM) Snapshot(w io.Writer) error {
	_, err := w.Write(binary.BigEndian.AppendUint64(nil, s.n.Load()))
	return err
}

func (s *countSM) Restore(r io.Reader, _ uint64) error {
	var b [8]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return err
	}
	s.n.Store(binary.BigEndian.Uint64(b[:]))
	return nil
}

func (s *countSM) AppliedIndex() uint64 { return 0 }

// benchCluster is three Hosts in automatic mode on one in-memory network,
// each with its own Pebble store (sync on) under dir.
type benchCluster struct {
	net     *transport.MemNetwork
	trs     []*transport.MemTransport
	hosts   []*multiraft.Host
	groups  int
	leaders []atomic.Int32 // by group-1: index into hosts of the last known leader
}

func newBenchCluster(tb testing.TB, dir string, groups int) *benchCluster {
	tb.Helper()
	return newBenchClusterWith(tb, dir, groups, nil)
}

// newBenchClusterWith is newBenchCluster with the hosts' configs changed
// by config, if not nil.
func newBenchClusterWith(tb testing.TB, dir string, groups int, config func(*multiraft.Config)) *benchCluster {
	tb.Helper()
	const nodes = 3
	c := &benchCluster{
		net:     transport.NewMemNetwork(transport.MemOptions{}),
		groups:  groups,
		leaders: make([]atomic.Int32, groups),
	}
	members := []uint64{1, 2, 3}
	for id := uint64(1); id <= nodes; id++ {
		tr := c.net.Transport(id)
		for _, p := range members {
			if p != id {
				tr.AddPeer(p, "")
			}
		}
		c.trs = append(c.trs, tr)
		cfg := multiraft.Config{
			NodeID:    id,
			DataDir:   filepath.Join(dir, fmt.Sprintf("n%d", id)),
			Transport: tr,
			Logger:    slog.New(slog.DiscardHandler),
			// Diagnostics only: what the engine does when fsync is free.
			DisableSync: os.Getenv("FLOTILLA_BENCH_NOSYNC") != "",
		}
		if config != nil {
			config(&cfg)
		}
		h, err := multiraft.NewHost(cfg)
		if err != nil {
			c.close()
			tb.Fatal(err)
		}
		c.hosts = append(c.hosts, h)
	}
	if err := c.startGroups(members); err != nil {
		c.close()
		tb.Fatal(err)
	}
	return c
}

// startGroups starts every group on every host. StartGroup syncs a
// bootstrap record, so many run at once to share fsyncs.
func (c *benchCluster) startGroups(members []uint64) error {
	const par = 64
	var (
		wg   sync.WaitGroup
		next atomic.Int64
		mu   sync.Mutex
		errs []error
	)
	total := int64(c.groups * len(c.hosts))
	for range par {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= total {
					return
				}
				h := c.hosts[i%int64(len(c.hosts))]
				g := uint64(i/int64(len(c.hosts))) + 1
				if err := h.StartGroup(g, members, &countSM{}); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// elect campaigns each group on a node chosen round-robin and waits, up to
// timeout, until all three replicas of every group agree on a leader.
func (c *benchCluster) elect(timeout time.Duration) error {
	for g := 1; g <= c.groups; g++ {
		if err := c.hosts[g%len(c.hosts)].Campaign(uint64(g)); err != nil {
			return err
		}
	}
	deadline := time.Now().Add(timeout)
	pending := make([]int, 0, c.groups)
	for g := 1; g <= c.groups; g++ {
		pending = append(pending, g)
	}
	for {
		keep := pending[:0]
		for _, g := range pending {
			if !c.refreshLeader(uint64(g)) {
				keep = append(keep, g)
			}
		}
		pending = keep
		if len(pending) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d groups have no agreed leader after %v (e.g. group %d)",
				len(pending), c.groups, timeout, pending[0])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// refreshLeader records the leader of group g if every replica agrees on
// one, and reports whether they do.
func (c *benchCluster) refreshLeader(g uint64) bool {
	var lead uint64
	for i, h := range c.hosts {
		l, _, err := h.Leader(g)
		if err != nil || l == 0 || (i > 0 && l != lead) {
			return false
		}
		lead = l
	}
	c.leaders[g-1].Store(int32(lead - 1))
	return true
}

func (c *benchCluster) leader(g uint64) *multiraft.Host {
	return c.hosts[c.leaders[g-1].Load()]
}

func (c *benchCluster) syncs() uint64 {
	var n uint64
	for _, h := range c.hosts {
		n += h.Syncs()
	}
	return n
}

func (c *benchCluster) close() {
	for _, h := range c.hosts {
		h.Stop()
	}
	for _, tr := range c.trs {
		tr.Close()
	}
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// BenchmarkPropose measures committed proposals per second on a 3-replica
// cluster in one process (automatic mode, in-memory network, Pebble with
// fsync). One op is one proposal, proposed on its group's leader and
// applied there. Allocations count all three hosts. fsyncs/s counts the
// synced batches the hosts' schedulers commit (Host.Syncs, summed).
//
// Proposers: FLOTILLA_BENCH_PROPOSERS goroutines (default 1024), spread
// round-robin over the groups, each with one proposal in flight.
func BenchmarkPropose(b *testing.B) {
	proposers := envInt("FLOTILLA_BENCH_PROPOSERS", 1024)
	benchMatrix(b, func(b *testing.B, c *benchCluster, size int) { runProposers(b, c, proposers, size) })
}

// BenchmarkProposePipelined is BenchmarkPropose with a lighter driver: one
// goroutine per group keeps FLOTILLA_BENCH_WINDOW (default 128) proposals
// in flight with ProposeAsync and waits for the oldest, so the driver's own
// goroutine wake-ups do not dominate what is measured.
func BenchmarkProposePipelined(b *testing.B) {
	window := envInt("FLOTILLA_BENCH_WINDOW", 128)
	benchMatrix(b, func(b *testing.B, c *benchCluster, size int) { runPipelined(b, c, window, size) })
}

// benchMatrix runs drive for 1, 48 and 1000 groups and 16 and 256-byte
// payloads, on one cluster per sub-benchmark: built and led on its first
// run, shared by its runs of growing b.N, stopped when it ends.
func benchMatrix(b *testing.B, drive func(*testing.B, *benchCluster, int)) {
	for _, groups := range []int{1, 48, 1000} {
		for _, size := range []int{16, 256} {
			var c *benchCluster
			dir := b.TempDir()
			b.Run(fmt.Sprintf("groups=%d/bytes=%d", groups, size), func(b *testing.B) {
				if c == nil {
					b.StopTimer()
					c = newBenchCluster(b, dir, groups)
					if err := c.elect(time.Minute); err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
				}
				b.ReportAllocs()
				b.ResetTimer()
				drive(b, c, size)
			})
			if c != nil {
				c.close()
			}
		}
	}
}

func runPipelined(b *testing.B, c *benchCluster, window, size int) {
	syncs0, cpu0 := c.syncs(), cpuTime()
	var (
		next   atomic.Int64
		failed atomic.Int64
		wg     sync.WaitGroup
	)
	for g := uint64(1); g <= uint64(c.groups); g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			payload := make([]byte, size)
			inflight := make([]multiraft.Future, 0, window)
			for {
				for len(inflight) < window && next.Add(1) <= int64(b.N) {
					inflight = append(inflight, c.leader(g).ProposeAsync(g, payload))
				}
				if len(inflight) == 0 {
					return
				}
				f := inflight[0]
				<-f.Done()
				if _, err := f.Result(); err != nil {
					// Counted, not retried: a failure here means the leader
					// moved, which a benchmark run should not see.
					failed.Add(1)
					c.refreshLeader(g)
				}
				inflight = inflight[1:]
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	sec := b.Elapsed().Seconds()
	b.ReportMetric(float64(b.N)/sec, "proposals/s")
	b.ReportMetric(float64(c.syncs()-syncs0)/sec, "fsyncs/s")
	b.ReportMetric(float64(failed.Load())/float64(b.N), "failed/op")
	b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
}

func runProposers(b *testing.B, c *benchCluster, proposers, size int) {
	syncs0, cpu0 := c.syncs(), cpuTime()
	var (
		next    atomic.Int64
		retries atomic.Int64
		wg      sync.WaitGroup
	)
	ctx := context.Background()
	for p := range proposers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			g := uint64(p%c.groups) + 1
			payload := make([]byte, size)
			for next.Add(1) <= int64(b.N) {
				for try := 0; ; try++ {
					_, err := c.leader(g).Propose(ctx, g, payload)
					if err == nil {
						break
					}
					if errors.Is(err, multiraft.ErrStopped) || try == 1000 {
						b.Errorf("group %d: %v (after %d tries)", g, err, try+1)
						return
					}
					// Leadership moved or the proposal was dropped: find the
					// leader again and retry.
					retries.Add(1)
					c.refreshLeader(g)
					time.Sleep(time.Millisecond)
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	sec := b.Elapsed().Seconds()
	b.ReportMetric(float64(b.N)/sec, "proposals/s")
	b.ReportMetric(float64(c.syncs()-syncs0)/sec, "fsyncs/s")
	b.ReportMetric(float64(retries.Load())/float64(b.N), "retries/op")
	// Process CPU (user+system, all threads) per proposal: steadier than
	// throughput on a shared machine.
	b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		panic(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func heapInuse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// TestIdleCost measures what idle groups cost: a 3-replica cluster in one
// process (automatic mode, 100ms ticks, Pebble) with FLOTILLA_IDLE_GROUPS
// groups (default 10,000), leaders elected and spread, no proposals. It
// reports process CPU per group per second over FLOTILLA_IDLE_SECONDS
// (default 10) and heap per replica. Skipped unless FLOTILLA_IDLE=1.
// FLOTILLA_IDLE_CPUPROFILE and FLOTILLA_IDLE_HEAPPROFILE name files for
// profiles of the measured window.
func TestIdleCost(t *testing.T) {
	if os.Getenv("FLOTILLA_IDLE") == "" {
		t.Skip("set FLOTILLA_IDLE=1 to measure the idle cost")
	}
	groups := envInt("FLOTILLA_IDLE_GROUPS", 10000)
	secs := envInt("FLOTILLA_IDLE_SECONDS", 10)
	settle := time.Duration(envInt("FLOTILLA_IDLE_SETTLE_SECONDS", 5)) * time.Second

	// The baseline includes the hosts and their open Pebble stores (memtable
	// and cache), so that the delta is what the groups add.
	dir := t.TempDir()
	c := newBenchCluster(t, dir, 0)
	defer c.close()
	base := heapInuse()
	c.groups = groups
	c.leaders = make([]atomic.Int32, groups)
	start := time.Now()
	if err := c.startGroups([]uint64{1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	t.Logf("started %d groups x 3 replicas in %v", groups, time.Since(start).Round(time.Millisecond))
	start = time.Now()
	if err := c.elect(5 * time.Minute); err != nil {
		t.Fatal(err)
	}
	t.Logf("elected leaders in %v", time.Since(start).Round(time.Millisecond))
	time.Sleep(settle)
	perNode := make([]int, len(c.hosts))
	for g := 1; g <= groups; g++ {
		if c.refreshLeader(uint64(g)) {
			perNode[c.leaders[g-1].Load()]++
		}
	}

	// Optional profiles of the measured window only (not of the set-up).
	if path := os.Getenv("FLOTILLA_IDLE_CPUPROFILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			t.Fatal(err)
		}
	}
	syncs0 := c.syncs()
	cpu0, wall0 := cpuTime(), time.Now()
	time.Sleep(time.Duration(secs) * time.Second)
	cpu, wall := cpuTime()-cpu0, time.Since(wall0)
	syncs := c.syncs() - syncs0
	pprof.StopCPUProfile()
	inuse := heapInuse()
	if path := os.Getenv("FLOTILLA_IDLE_HEAPPROFILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := pprof.WriteHeapProfile(f); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}

	cores := cpu.Seconds() / wall.Seconds()
	usPerGroup := cpu.Seconds() * 1e6 / wall.Seconds() / float64(groups)
	var delta float64
	if inuse > base {
		delta = float64(inuse - base)
	}
	t.Logf("groups=%d leaders per node=%v settle=%v window=%v", groups, perNode, settle, wall.Round(time.Millisecond))
	t.Logf("CPU: %.3f cores; %.2f µs CPU per group per second (%.2f per replica)",
		cores, usPerGroup, usPerGroup/3)
	t.Logf("heap in use: base %.1f MiB, with groups %.1f MiB; %.0f bytes per replica (%.0f per group)",
		float64(base)/(1<<20), float64(inuse)/(1<<20), delta/float64(3*groups), delta/float64(groups))
	t.Logf("synced batches: %.1f/s (all hosts)", float64(syncs)/wall.Seconds())
}

// BenchmarkIdleGroupHeap measures the live heap of an idle replica that
// has written: a 3-replica cluster in one process (automatic mode,
// Pebble, fsync off, quiescence on) with FLOTILLA_HEAP_GROUPS groups
// (default 2,000), leaders spread, FLOTILLA_HEAP_ENTRIES proposals of 64
// bytes (default 1) made to each group one after the other, applied by
// every replica, and every replica quiesced. It reports HeapInuse after
// two GCs, minus a baseline taken with the three Hosts and their stores
// open, per replica; and the bytes the entry caches hold, per replica
// (part of the former). FLOTILLA_HEAP_CACHE_BYTES sets
// Config.EntryCacheBytes (default its default). One op is one whole run:
// use -benchtime 1x.
func BenchmarkIdleGroupHeap(b *testing.B) {
	groups := envInt("FLOTILLA_HEAP_GROUPS", 2000)
	entries := envInt("FLOTILLA_HEAP_ENTRIES", 1)
	cacheBytes := int64(envInt("FLOTILLA_HEAP_CACHE_BYTES", 0))
	for range b.N {
		perReplica, cache := idleGroupHeap(b, groups, entries, cacheBytes)
		b.ReportMetric(perReplica, "heap-B/replica")
		b.ReportMetric(cache, "cache-B/replica")
	}
}

func idleGroupHeap(b *testing.B, groups, entries int, cacheBytes int64) (perReplica, cache float64) {
	b.StopTimer()
	defer b.StartTimer()
	c := newBenchClusterWith(b, b.TempDir(), 0, func(cfg *multiraft.Config) {
		cfg.Quiesce = true
		cfg.DisableSync = true
		cfg.EntryCacheBytes = cacheBytes
	})
	defer c.close()
	base := heapInuse()
	c.groups = groups
	c.leaders = make([]atomic.Int32, groups)
	if err := c.startGroups([]uint64{1, 2, 3}); err != nil {
		b.Fatal(err)
	}
	if err := c.elect(5 * time.Minute); err != nil {
		b.Fatal(err)
	}
	var (
		next atomic.Int64
		wg   sync.WaitGroup
	)
	payload := make([]byte, 64)
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				g := uint64(next.Add(1))
				if g > uint64(groups) {
					return
				}
				for range entries {
					if _, err := c.leader(g).Propose(context.Background(), g, payload); err != nil {
						b.Errorf("group %d: %v", g, err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	// Every replica applied what its leader did, and quiesced.
	deadline := time.Now().Add(time.Minute)
	for !idleEverywhere(c) {
		if time.Now().After(deadline) {
			b.Fatal("replicas did not apply and quiesce within a minute")
		}
		time.Sleep(50 * time.Millisecond)
	}
	inuse := heapInuse()
	var cached int64
	for _, h := range c.hosts {
		cached += h.EntryCache().Bytes
	}
	replicas := float64(3 * groups)
	return (float64(inuse) - float64(base)) / replicas, float64(cached) / replicas
}

// idleEverywhere reports whether every replica of every group has applied
// its leader's applied index and quiesced.
func idleEverywhere(c *benchCluster) bool {
	for _, h := range c.hosts {
		if h.Quiesced() != c.groups {
			return false
		}
	}
	for g := uint64(1); g <= uint64(c.groups); g++ {
		want, err := c.leader(g).GroupStatus(g)
		if err != nil {
			return false
		}
		for _, h := range c.hosts {
			if s, err := h.GroupStatus(g); err != nil || s.Applied != want.Applied {
				return false
			}
		}
	}
	return true
}
