package multiraft

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/raft/v3"
)

// metrics are the Host's Prometheus figures. Counters are updated by
// workers; role counts by the worker that sees a role change.
type metrics struct {
	leaderChanges prometheus.Counter
	inboxDropped  prometheus.Counter
	syncs         atomic.Uint64
	// unreachableApplied counts peer-unreachable reports handed to raft by
	// group owners (one per group per report).
	unreachableApplied atomic.Uint64
	// failovers counts leaders forgotten because liveness found them down.
	failovers atomic.Uint64
	// snapshotsRefused counts snapshots a state machine refused for now
	// (SnapshotGate).
	snapshotsRefused atomic.Uint64
	// snapshotsRestored counts snapshots restored into a state machine
	// (received from a leader, or left to restore at a start).
	snapshotsRestored atomic.Uint64
	// quiesces and wakes count local replicas quiescing and waking
	// (quiesce.go).
	quiesces, wakes atomic.Uint64
	// leaderQuiet counts followers whose leader quiesced while they
	// waited for something of their own (leaderQuiesced).
	leaderQuiet atomic.Uint64
	// startWaiting is how many new groups wait for their turn to
	// campaign (startcampaign.go), as of the last tick.
	startWaiting atomic.Int64
	// startRequeues counts start campaigns that found no leader in time
	// and went back to the queue.
	startRequeues atomic.Uint64
	// catchUpWaiting is how many quiesced groups led here wait for their
	// turn to wake and catch up a node that came back (catchup.go), as of
	// the last tick.
	catchUpWaiting atomic.Int64
	// ticksCoalesced counts ticks a group did not get because its owner
	// had not run its last one yet (tick).
	ticksCoalesced atomic.Uint64
	roles          [4]atomic.Int64 // by raft.StateType
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		leaderChanges: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flotilla_raft_leader_changes_total",
			Help: "Leader changes observed by the local replicas (each new leader, once it has committed in its term, or loss of leader).",
		}),
		inboxDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flotilla_raft_inbox_dropped_total",
			Help: "Incoming raft messages dropped because a group's inbox was full or the group unknown.",
		}),
	}
	if reg != nil {
		roles := prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "flotilla_raft_groups",
			Help: "Local replicas by raft role.",
		}, []string{"role"})
		reg.MustRegister(m.leaderChanges, m.inboxDropped,
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "flotilla_raft_storage_syncs_total",
				Help: "Synced storage batches written by the scheduler (one per cycle with raft writes).",
			}, func() float64 { return float64(m.syncs.Load()) }),
			&roleCollector{m: m, desc: roles},
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "flotilla_raft_snapshots_refused_total",
				Help: "Snapshots a local replica refused for now, because another local replica still holds part of their span (the leader sends them again).",
			}, func() float64 { return float64(m.snapshotsRefused.Load()) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "flotilla_raft_snapshots_restored_total",
				Help: "Snapshots restored into a local replica's state machine.",
			}, func() float64 { return float64(m.snapshotsRestored.Load()) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "flotilla_raft_quiesces_total",
				Help: "Times a local replica quiesced: an idle group that stopped ticking.",
			}, func() float64 { return float64(m.quiesces.Load()) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "flotilla_raft_wakes_total",
				Help: "Times a quiesced local replica woke (a message, a request, or liveness).",
			}, func() float64 { return float64(m.wakes.Load()) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "flotilla_raft_start_campaigns_waiting",
				Help: "New local replicas this node is to lead that wait for their turn to campaign (Config.MaxStartCampaigns campaign at once).",
			}, func() float64 { return float64(m.startWaiting.Load()) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "flotilla_raft_start_campaign_requeues_total",
				Help: "Start campaigns that found no leader within two election timeouts and went back to the queue (their followers' node was not serving yet).",
			}, func() float64 { return float64(m.startRequeues.Load()) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "flotilla_raft_catch_ups_waiting",
				Help: "Quiesced groups led here that a node which came back lacks entries of, waiting for their turn to wake and catch it up (Config.MaxCatchUps at once).",
			}, func() float64 { return float64(m.catchUpWaiting.Load()) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "flotilla_raft_ticks_coalesced_total",
				Help: "Ticks a local replica did not get because it had not run its previous one yet: the node is behind, and its groups' clocks run slow.",
			}, func() float64 { return float64(m.ticksCoalesced.Load()) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "flotilla_raft_failovers_total",
				Help: "Times a local follower forgot its leader because nothing was heard from the leader's node for the liveness timeout (then the chosen survivor campaigns).",
			}, func() float64 { return float64(m.failovers.Load()) }),
		)
	}
	return m
}

// registerHubMetrics exports the event hub's counter, the count of
// quiesced replicas and the liveness stretch; called once by NewHost after
// they exist.
func (m *metrics) registerHubMetrics(reg prometheus.Registerer, hub *eventHub, h *Host) {
	if reg != nil {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "flotilla_raft_leader_events_collapsed_total",
			Help: "Leader events a slow subscriber did not see one by one: its mailbox was collapsed to the latest state per group.",
		}, func() float64 { return float64(hub.collapsed.Load()) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "flotilla_raft_quiesced_groups",
				Help: "Local replicas that are quiesced: idle, not ticking.",
			}, func() float64 { return float64(h.Quiesced()) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "flotilla_raft_liveness_stretch",
				Help: "The factor by which the liveness timeout is stretched now: 1 while this node keeps up, more while it is behind (its tick fires a whole interval late), up to Config.LivenessStretch.",
			}, func() float64 { return float64(h.LivenessStretch()) }))
	}
}

// registerEntryCache exports the entry cache's figures; called once by
// NewHost.
func (m *metrics) registerEntryCache(reg prometheus.Registerer, c *entryCache) {
	if reg == nil {
		return
	}
	reg.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "flotilla_raft_entry_cache_hits_total",
			Help: "Reads of raft log entries (by raft, to apply or to send them) that the node's entry cache answered.",
		}, func() float64 { return float64(c.hits.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "flotilla_raft_entry_cache_misses_total",
			Help: "Reads of raft log entries that went, at least in part, to the store.",
		}, func() float64 { return float64(c.misses.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "flotilla_raft_entry_cache_bytes",
			Help: "Bytes the node's entry cache holds (entry data plus a fixed size per entry), within its budget.",
		}, func() float64 { return float64(c.bytes.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "flotilla_raft_entry_cache_entries",
			Help: "Raft log entries the node's entry cache holds.",
		}, func() float64 { return float64(c.entries.Load()) }),
	)
}

func (m *metrics) roleChange(from, to raft.StateType) {
	m.roles[from].Add(-1)
	m.roles[to].Add(1)
}

func (m *metrics) groupAdded(r raft.StateType)   { m.roles[r].Add(1) }
func (m *metrics) groupRemoved(r raft.StateType) { m.roles[r].Add(-1) }

// UnreachableReportsApplied returns how many peer-unreachable reports the
// groups' owners have handed to raft (one per group per report).
func (h *Host) UnreachableReportsApplied() uint64 { return h.metrics.unreachableApplied.Load() }

// Quiesces and Wakes return how many times local replicas quiesced and
// woke.
func (h *Host) Quiesces() uint64 { return h.metrics.quiesces.Load() }

// Wakes: see Quiesces.
func (h *Host) Wakes() uint64 { return h.metrics.wakes.Load() }

// LeaderQuietFollowers counts the times a local follower's leader
// quiesced while the follower waited for something of its own, so that
// its election timer stopped (quiesce.go, leaderQuiesced).
func (h *Host) LeaderQuietFollowers() uint64 { return h.metrics.leaderQuiet.Load() }

// EntryCacheStats are the figures of a Host's entry cache (see
// Config.EntryCacheBytes).
type EntryCacheStats struct {
	// Hits and Misses count raft's reads of log entries that the cache
	// answered, and those that went, at least in part, to the store.
	Hits, Misses uint64
	// Bytes and Entries are what the cache holds now; Bytes counts each
	// entry's data capacity plus 48 bytes.
	Bytes, Entries int64
}

// EntryCache returns the figures of the Host's entry cache. They are read
// one by one, without a lock: taken while workers run, they need not agree
// with each other exactly.
func (h *Host) EntryCache() EntryCacheStats {
	c := h.entries
	return EntryCacheStats{Hits: c.hits.Load(), Misses: c.misses.Load(), Bytes: c.bytes.Load(), Entries: c.entries.Load()}
}

// Syncs returns how many synced storage batches the Host has written.
func (h *Host) Syncs() uint64 { return h.metrics.syncs.Load() }

type roleCollector struct {
	m    *metrics
	desc *prometheus.GaugeVec
}

func (c *roleCollector) Describe(ch chan<- *prometheus.Desc) { c.desc.Describe(ch) }

func (c *roleCollector) Collect(ch chan<- prometheus.Metric) {
	for r := raft.StateFollower; r <= raft.StatePreCandidate; r++ {
		g := c.desc.WithLabelValues(roleName(r))
		g.Set(float64(c.m.roles[r].Load()))
		g.Collect(ch)
	}
}

func roleName(r raft.StateType) string {
	switch r {
	case raft.StateLeader:
		return "leader"
	case raft.StateCandidate:
		return "candidate"
	case raft.StatePreCandidate:
		return "precandidate"
	default:
		return "follower"
	}
}

// SnapshotsRefused returns how many snapshots local state machines refused
// for now (SnapshotGate).
func (h *Host) SnapshotsRefused() uint64 { return h.metrics.snapshotsRefused.Load() }

// SnapshotsRestored returns how many snapshots were restored into local
// state machines.
func (h *Host) SnapshotsRestored() uint64 { return h.metrics.snapshotsRestored.Load() }
