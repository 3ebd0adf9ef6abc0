package main

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/flotilla/flotilla/kv"
	"github.com/flotilla/flotilla/server"
	"github.com/flotilla/flotilla/storage"
)

func newStartCmd() *cobra.Command {
	var (
		id                                                                       uint64
		dataDir, peerAddr, clientAddr                                            string
		httpAddr, initialCluster, join                                           string
		groups, replicas                                                         int
		tick                                                                     time.Duration
		electionTicks, heartbeatTicks                                            int
		logLevel                                                                 string
		balanceInterval, balanceSettle, shutdownGrace, deadAfter, gossipInterval time.Duration
		rebalance                                                                time.Duration
		snapshotRate                                                             string
		snapshotsInFlight                                                        int
		compactionDuty                                                           float64
		noSync, noQuiesce                                                        bool
		workers                                                                  int
		rangeMax, rangeMin                                                       string
		splitLoad                                                                float64
		historyRetention                                                         string
		certsDir                                                                 string
		insecure                                                                 bool
		maxConnStreams                                                           int
		certReload, authRefresh                                                  time.Duration
	)
	cmd := &cobra.Command{
		Use:   "start",
		Short: "Run a node",
		Long: `Run a node. A fresh --data-dir bootstraps the node's replicas of --groups
groups from --initial-cluster; a restart with the same --data-dir resumes, and a
data directory of another cluster is refused. With --join instead, a fresh node
enters a running cluster through any of its nodes: its ID is --id, or the next
free one without it, and the rebalancer (--rebalance-interval) gives it replicas. It needs --certs-dir (mutual TLS,
authorised clients) or, on a trusted network, --insecure. SIGTERM or SIGINT hands this node's
leaderships away, flushes storage and exits 0.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			level, err := parseLevel(logLevel)
			if err != nil {
				return err
			}
			var ic map[uint64]string
			var joins []string
			if join != "" {
				if initialCluster != "" {
					return fmt.Errorf("--join and --initial-cluster exclude each other: --initial-cluster bootstraps a new cluster, --join enters a running one")
				}
				for _, a := range strings.Split(join, ",") {
					joins = append(joins, strings.TrimSpace(a))
				}
				// The cluster's own, unless given (then they must match).
				if !cmd.Flags().Changed("groups") {
					groups = 0
				}
				if !cmd.Flags().Changed("replicas") {
					replicas = 0
				}
			} else {
				if id == 0 {
					return fmt.Errorf("--id is required (a positive node ID listed in --initial-cluster)")
				}
				if ic, err = server.ParseInitialCluster(initialCluster); err != nil {
					return err
				}
			}
			maxBytes, err := parseSize("--range-max-bytes", rangeMax)
			if err != nil {
				return err
			}
			minBytes := int64(0)
			if rangeMin != "" {
				if minBytes, err = parseSize("--range-min-bytes", rangeMin); err != nil {
					return err
				}
			}
			snapRate, err := parseSize("--snapshot-rate", snapshotRate)
			if err != nil {
				return err
			}
			if !(compactionDuty >= storage.MinCompactionDuty && compactionDuty <= 1) { // 0 too: the flag has no "default" value
				return fmt.Errorf("--compaction-duty %v: want %v..1", compactionDuty, storage.MinCompactionDuty)
			}
			if snapshotsInFlight < 1 {
				return fmt.Errorf("--snapshots-in-flight %d: want 1..64", snapshotsInFlight)
			}
			retention, err := kv.ParseRetention(historyRetention)
			if err != nil {
				return fmt.Errorf("--history-retention: %w", err)
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
			if workers == 0 {
				var cpus float64
				if workers, cpus = quotaWorkers(os.ReadFile); workers > 0 {
					log.Info("raft workers set by the CPU quota", "workers", workers,
						"cpus", math.Round(cpus*100)/100, "gomaxprocs", runtime.GOMAXPROCS(0))
				}
			}
			s, err := server.New(server.Config{
				NodeID:               id,
				DataDir:              dataDir,
				PeerAddr:             peerAddr,
				ClientAddr:           clientAddr,
				HTTPAddr:             httpAddr,
				InitialCluster:       ic,
				Join:                 joins,
				Groups:               groups,
				Replicas:             replicas,
				TickInterval:         tick,
				ElectionTicks:        electionTicks,
				HeartbeatTicks:       heartbeatTicks,
				BalanceInterval:      balanceInterval,
				BalanceSettle:        balanceSettle,
				DeadAfter:            deadAfter,
				GossipInterval:       gossipInterval,
				RebalanceInterval:    offFlag(rebalance),
				SnapshotRate:         snapRate,
				MaxSnapshotsInFlight: snapshotsInFlight,
				CompactionDuty:       compactionDuty,
				DisableSync:          noSync,
				DisableQuiesce:       noQuiesce,
				Workers:              workers,
				RangeMaxBytes:        maxBytes,
				RangeMinBytes:        minBytes,
				RangeSplitLoad:       loadFlag(splitLoad),
				HistoryRetention:     retention,
				CertsDir:             certsDir,
				Insecure:             insecure,
				MaxConnStreams:       maxConnStreams,
				CertReloadInterval:   certReload,
				AuthRefresh:          authRefresh,
				Logger:               log,
			})
			if err != nil {
				return err
			}
			sigs := make(chan os.Signal, 1)
			signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
			defer signal.Stop(sigs)
			s.Start()
			select {
			case sig := <-sigs:
				log.Info("signal received, shutting down", "signal", sig.String())
				ctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
				defer cancel()
				if err := s.Shutdown(ctx); err != nil {
					return err
				}
				log.Info("stopped")
				return nil
			case <-s.Stopping():
				stopErr := s.Stop()
				if err := s.Err(); err != nil {
					return err
				}
				return stopErr
			}
		},
	}
	f := cmd.Flags()
	f.Uint64Var(&id, "id", 0, "this node's ID, as listed in --initial-cluster (required); with --join, the ID asked for (required with --certs-dir; default: the next free one)")
	f.StringVar(&dataDir, "data-dir", "", "directory of this node's data (required)")
	f.StringVar(&peerAddr, "peer-addr", "", "HOST:PORT for raft traffic; its host is also the source address of outbound peer connections (required)")
	f.StringVar(&clientAddr, "client-addr", "", "HOST:PORT of the gRPC client API (required)")
	f.StringVar(&httpAddr, "http-addr", "", "HOST:PORT of /metrics, /healthz, /readyz, /debug/raft, /debug/pprof (required)")
	f.StringVar(&initialCluster, "initial-cluster", "", "every node's peer address, to bootstrap a new cluster: 1=HOST:PORT,2=HOST:PORT,... (this or --join)")
	f.StringVar(&join, "join", "", "peer addresses of nodes of a running cluster to join through: HOST:PORT,... (this or --initial-cluster; a restart uses its --data-dir)")
	f.IntVar(&groups, "groups", 16, "number of ranges a new cluster starts with, cutting the hex keyspace evenly (they split and merge from there)")
	f.IntVar(&replicas, "replicas", server.DefaultReplicas, "voters of each range of a new cluster, on as many nodes (1, 3, 5 or 7; every node of a smaller cluster); every node must be started with the same")
	f.StringVar(&rangeMax, "range-max-bytes", "64MiB", "a range whose data passes this size splits (B, KiB, MiB, GiB; 0: never by size)")
	f.StringVar(&rangeMin, "range-min-bytes", "", "neighbouring cold ranges both below this size merge (default: a quarter of --range-max-bytes; 0: never)")
	f.StringVar(&historyRetention, "history-retention", "10000", "how much history each range keeps for reads at past revisions and watches: a count of revisions (10000), an age (1h), or 0 for none")
	f.Float64Var(&splitLoad, "range-split-load", 2500, "a range serving more requests per second than this splits where its load halves (0: never by load)")
	f.DurationVar(&tick, "tick", 100*time.Millisecond, "raft tick interval")
	f.IntVar(&electionTicks, "election-ticks", 10, "election timeout, in ticks")
	f.IntVar(&heartbeatTicks, "heartbeat-ticks", 1, "heartbeat interval, in ticks")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	f.DurationVar(&balanceInterval, "balance-interval", 2*time.Second, "how often to hand away leaderships beyond this node's share; negative disables")
	f.DurationVar(&balanceSettle, "balance-settle", 10*time.Second, "how long the set of live nodes must stay the same before leaderships are handed away (a node that dies or returns moves no other group's leader for this long)")
	f.StringVar(&snapshotRate, "snapshot-rate", "64MiB", "snapshot data this node sends per second, over all its peers (B, KiB, MiB, GiB; at least 1MiB; 0: no bound)")
	f.IntVar(&snapshotsInFlight, "snapshots-in-flight", 2, "snapshots this node sends at once, over all its peers (1..64)")
	f.Float64Var(&compactionDuty, "compaction-duty", storage.DefaultCompactionDuty, "the share of the time a storage compaction runs while no other waits, pausing the rest so that the ranges keep the CPU (0.05..1; 1: unpaced)")
	f.DurationVar(&rebalance, "rebalance-interval", server.DefaultRebalanceInterval, "how often the meta range's leader evens out the replica counts, then the bytes, of the live nodes, one move at a time, so that a node that joins takes its share; nodes marked drained are left out (100ms..1h; 0: off)")
	f.DurationVar(&gossipInterval, "gossip-interval", time.Second, "the gossip membership's probe interval (SWIM): a node that stops answering is counted down once its suspicion times out: 4 intervals with 3 nodes, up to 24 with more until others confirm it (10ms..1m)")
	f.DurationVar(&deadAfter, "dead-after", server.DefaultDeadAfter, "how long the gossip membership must count a node down before its ranges' replicas move to live nodes (1s..24h; negative: never); one back sooner keeps them")
	f.DurationVar(&shutdownGrace, "shutdown-grace", 10*time.Second, "how long SIGTERM may spend moving leadership away and draining requests")
	f.IntVar(&workers, "workers", 0, "raft scheduler workers, each doing one storage batch and one fsync per cycle (0: the process's cgroup CPU quota rounded up, at most GOMAXPROCS, if it has one; else GOMAXPROCS; 1..256)")
	f.StringVar(&certsDir, "certs-dir", "", "directory of the cluster's CA and this node's certificate (flotilla cert); every listener then serves mutual TLS and clients are authorised by role")
	f.BoolVar(&insecure, "insecure", false, "serve plaintext and authorise every request (no --certs-dir): for a trusted network only")
	f.DurationVar(&certReload, "cert-reload-interval", 10*time.Second, "how often the certificate files are checked for change (10ms..1h); a changed, valid set serves the next handshakes")
	f.DurationVar(&authRefresh, "auth-refresh", time.Second, "how often the user and role tables are reread (10ms..1m)")
	f.IntVar(&maxConnStreams, "max-conn-streams", 1024, "requests one client connection may have in flight; more wait at the client")
	f.BoolVar(&noQuiesce, "no-quiesce", false, "keep idle ranges ticking and heartbeating (by default an idle range quiesces: it costs nothing until something happens)")
	f.BoolVar(&noSync, "unsafe-no-fsync", false, "do not fsync raft writes (demos and tests only: a crash may lose acknowledged writes)")
	return cmd
}

// offFlag maps a duration flag whose 0 means off to the server's setting,
// where 0 means the default and a negative value off.
func offFlag(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

// loadFlag maps --range-split-load to the server's setting: 0 (off) is
// negative there, where 0 means the default.
func loadFlag(v float64) float64 {
	if v <= 0 {
		return -1
	}
	return v
}

// parseSize parses a size with an optional unit: B, KiB, MiB or GiB (KB,
// MB and GB are taken as the same). "0" means 0, which the caller turns
// into "off".
func parseSize(flag, s string) (int64, error) {
	t := strings.TrimSpace(s)
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1 << 10}, {"MB", 1 << 20}, {"GB", 1 << 30}, {"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"B", 1}}
	mult := int64(1)
	for _, u := range units {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("%s %q: want a size such as 64MiB, 512KiB or 1048576", flag, s)
	}
	if n == 0 {
		return -1, nil // off
	}
	return n * mult, nil
}

func parseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug, nil
	case "info", "":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("--log-level %q: want debug, info, warn or error", s)
}
