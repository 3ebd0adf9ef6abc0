package multiraft

import (
	"fmt"
	"log/slog"
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flotilla/flotilla/storage"
	"github.com/flotilla/flotilla/transport"
)

// Config configures a Host. Zero values take the documented defaults;
// NewHost rejects values outside the documented limits with
// ErrConfig.
type Config struct {
	// NodeID is this node's ID, also the raft replica ID of every group
	// replica it holds. Required; must be > 0.
	NodeID uint64
	// DataDir is the directory of the Pebble store holding the raft logs.
	// Required unless Store is set.
	DataDir string
	// Store overrides DataDir with a store the caller owns (tests use
	// storage.NewMem()). The Host does not close a Store it was given.
	Store storage.Store
	// Transport carries messages to the other nodes. Required. The Host
	// calls its Start; the caller closes it after Host.Stop.
	Transport transport.Transport

	// TickInterval is the wall-clock length of one raft tick. Default
	// 100ms; limits 1ms to 10s. Ignored in Manual mode.
	TickInterval time.Duration
	// ElectionTicks is the election timeout in ticks. Default 10; must be
	// greater than HeartbeatTicks and at most 1000.
	ElectionTicks int
	// HeartbeatTicks is the heartbeat interval in ticks. Default 1; at
	// least 1.
	HeartbeatTicks int
	// DisableCheckQuorum turns CheckQuorum off (on by default: a leader
	// that has not heard from a quorum for an election timeout steps down).
	DisableCheckQuorum bool
	// DisablePreVote turns PreVote off (on by default).
	DisablePreVote bool
	// DisableProposalForwarding makes a follower fail a proposal at once
	// with ErrDropped (its outcome known: not applied) instead of
	// forwarding it to the leader through raft. A leader drops a forwarded
	// proposal silently (during a leadership transfer, or once deposed), and
	// the proposer learns nothing until RequestTimeoutTicks, then only
	// ErrAmbiguous. A caller that routes writes to the leader itself wants
	// this. Default false: followers forward.
	DisableProposalForwarding bool

	// Workers is the number of scheduler workers. Default GOMAXPROCS; limits
	// 1 to 256. Ignored in Manual mode.
	Workers int
	// MaxGroupsPerCycle bounds how many ready groups one worker takes into
	// one cycle (one storage batch, one sync). Default 256; limits 1 to
	// 65536.
	MaxGroupsPerCycle int
	// MaxSizePerMsg is the largest append message in bytes. Default 1 MiB;
	// limits 1 KiB to 64 MiB.
	MaxSizePerMsg uint64
	// MaxInflightMsgs is how many append messages may be unacknowledged per
	// follower. Default 256; limits 1 to 65536.
	MaxInflightMsgs int
	// MaxUncommittedBytes bounds the uncommitted log of a leader, in bytes;
	// proposals past it fail with ErrDropped. Default 64 MiB; 1 KiB to 4 GiB.
	MaxUncommittedBytes uint64
	// MaxInboxMsgs bounds the messages waiting for one group; past it,
	// incoming messages are dropped (raft retransmits). Default 4096;
	// limits 16 to 1<<20.
	MaxInboxMsgs int

	// SnapshotEntries is how many applied entries trigger a snapshot of the
	// state machine and the truncation of the log behind it. Default 10000;
	// limits 10 to 1<<30.
	SnapshotEntries uint64
	// TruncateEntries is, for a state machine that implements Syncer, how
	// many applied entries trigger a truncation of the log (without a
	// snapshot). Default 500; limits 10 to SnapshotEntries.
	TruncateEntries uint64
	// CompactionOverhead is how many entries behind a snapshot stay in the
	// log (on disk, and in the entry cache while they fit) so that slightly
	// lagging followers need no snapshot. Default 2000; at most
	// SnapshotEntries.
	CompactionOverhead uint64
	// EntryCacheBytes is the budget, in bytes, of the Host's cache of raft
	// log entries, shared by all its groups (entrycache.go): each entry
	// counts its data's capacity plus 48 bytes. A group keeps only its
	// log's terms in memory; raft reads entries the cache lacks back from
	// the store. Default 16 MiB: the entries raft reads are the recent
	// ones, between their append and their application or their
	// acknowledgement by the followers, and 16 MiB holds about a second of
	// the fastest writes measured (BENCHMARKS.md, Engine: 68k proposals/s
	// of 256 bytes on 3 nodes), four times what one Ready may apply
	// (4 MiB), at half the store's block cache. Limits 1 KiB to 1 TiB; -1
	// turns the cache off (every read goes to the store; for tests and
	// measurements).
	EntryCacheBytes int64
	// RequestTimeoutTicks is how long, in ticks, a proposal, read or
	// leadership transfer may wait before it fails (ErrAmbiguous for
	// proposals, ErrTimeout otherwise). Default 10 election timeouts;
	// at least ElectionTicks.
	RequestTimeoutTicks int
	// DisableSync turns off the fsync of raft writes. Only for tests and
	// benchmarks that measure something else; never in production.
	DisableSync bool

	// LivenessTicks is how long, in ticks, this node may go without
	// hearing anything from a peer before it counts the peer as down
	// (PeerDown; liveness.go). A follower whose leader is down forgets it
	// and one chosen survivor campaigns at once, instead of every group
	// waiting out its election timeout. A leader sends each follower a
	// heartbeat every HeartbeatTicks, so a live leader is never silent that
	// long. Default: the larger of ElectionTicks/2, 3*HeartbeatTicks and
	// 300ms worth of ticks (a floor that keeps very short ticks from
	// mistaking a scheduling hiccup for a death; Manual mode has no wall
	// clock and uses the others). Limits 2*HeartbeatTicks to 1000.
	LivenessTicks int
	// PingTicks is how often, in ticks, this node pings each peer it has
	// no heartbeat for (Transport.FlushHeartbeats): what keeps it live to
	// its peers while no group between them is active. Default
	// LivenessTicks/2 (at least 1): two pings per liveness timeout, so one
	// late ping does not count this node down. Limits 1..LivenessTicks/2.
	// Why not every tick: the pings and their acks were a fifth of an idle
	// node's CPU (BENCHMARKS.md, "Quiescence: the idle floor").
	PingTicks int
	// LivenessStretch is the most the liveness timeout grows to while this
	// node is behind, as a multiple of LivenessTicks: each tick that fires
	// a whole TickInterval late (its goroutines wait for a CPU) stretches
	// it by one LivenessTicks, and each LivenessTicks of ticks on time
	// shrinks it by one (liveness.go, "An overloaded node"). An overloaded
	// node reads its peers' pings late and would count live peers down.
	// Default 4; 1 turns the stretch off; limits 1..16.
	LivenessStretch int
	// DisableFailover turns off the liveness failover above: groups then
	// wait for raft's own election timeout. PeerDown still reports. The
	// failover is also off when DisablePreVote or DisableCheckQuorum is
	// set: without them a follower that merely cannot hear a live leader
	// would depose it.
	DisableFailover bool
	// Quiesce lets an idle group stop ticking (quiesce.go): a leader with
	// nothing in flight, whose live followers all hold its last entry and
	// a quorum of whose voters are live, tells its followers so and stops
	// ticking the group; they stop too. Anything for the group wakes it;
	// liveness wakes the groups of a node that goes down, and those led
	// here, paced, when a node comes back (MaxCatchUps).
	// Needs the failover (PreVote, CheckQuorum, not DisableFailover): a
	// quiesced follower learns that its leader died from liveness only.
	// Off by default.
	Quiesce bool
	// QuiesceIgnoringLiveness, QuiesceWithLaggards and
	// QuiesceOnlyMatchedFollower are planted bugs, for the tests and the
	// simulation to show that their checks catch them; never set
	// otherwise. The first leaves a quiesced group asleep when liveness
	// finds its leader's node down; the second lets a leader quiesce, and
	// stay quiesced, while a live follower lacks its last entry; the third
	// lets a follower hold still behind its quiesced leader only on a
	// quiesce heartbeat that commits exactly its log (one whose
	// acknowledgements the leader did not hear times out).
	QuiesceIgnoringLiveness, QuiesceWithLaggards, QuiesceOnlyMatchedFollower bool
	// MaxStartCampaigns bounds how many new groups this node campaigns
	// for at once when it starts them as their expected leader
	// (GroupStart.Leader): the next waits its turn until an earlier one has
	// a leader, or gave up after two election timeouts (startcampaign.go).
	// Only with Quiesce (the groups waiting their turn are quiesced).
	// Default 128; limits 1 to 1<<20. With 512, 3 nodes starting 100,000
	// ranges together on 2 vCPUs lost leaders as fast as they elected
	// them in 5 of 6 tries (a starved follower answers late, its leader
	// steps down, and the woken groups load the machine further); with
	// 128 every range was led in 45–49 s in 5 of 7 (BENCHMARKS.md,
	// "Quiescence").
	MaxStartCampaigns int
	// MaxCatchUps bounds how many quiesced groups this node leads it wakes
	// at once when a node comes back, those that node lacks entries of
	// first; the next waits its turn until an earlier one quiesced again,
	// or for two election timeouts (catchup.go). Only with Quiesce.
	// Default 128; limits 1 to 1<<20.
	MaxCatchUps int

	// Unannounced keeps the node quiet toward its peers until Announce:
	// the Host sends them no ping and flushes no coalesced heartbeat on
	// its ticks (the coalesced ones wait in the transport, up to its
	// per-peer bound, and go out with the first flush), so their liveness
	// (liveness.go) does not count it live while it is still starting its
	// groups and serves nothing. Other messages of its groups (a
	// campaign's, an append's) go out at once, and do count. Why: a node restarting with
	// 10,000 ranges pinged its peers 1 to 2 s before it could answer for
	// any range; their leaders, counting it live and behind, could not
	// quiesce what the clients wrote, and clients got 3 to 12 % of the
	// healthy rate (BENCHMARKS.md, "At the client, with 10,000 ranges").
	// Default false: announced from the start.
	Unannounced bool

	// Manual runs no goroutine: the caller drives the Host with Tick and
	// Process. For deterministic tests and simulation.
	Manual bool
	// FailPoint, if set, is called by the worker at each persistence
	// boundary of a cycle with the boundary's name (FailBeforePersist,
	// FailAfterPersist, FailBeforeSend, FailBeforeApply, FailAfterApply).
	// A non-nil error stops the Host on the spot, as if the process died
	// there: the rest of the cycle does not run and Err returns the error.
	// For fault-injection tests and simulation; nil in production. It runs
	// on a worker goroutine and must not block or call into the Host.
	FailPoint func(name string) error
	// UnknownGroup, if set, is called with a group ID and the sending node
	// when raft messages arrive for a group this Host does not run (they
	// are dropped): the caller may decide to start a replica (a range made
	// by a split the node has not applied, or a replica added to it). It
	// runs on the transport's receiving goroutine, at most once per group
	// per second, and must not block or call into the Host.
	UnknownGroup func(group, from uint64)
	// Logger receives the Host's logs. Default slog.Default().
	Logger *slog.Logger
	// Registerer receives the Host's metrics; nil registers none.
	Registerer prometheus.Registerer
}

func (c *Config) setDefaults() {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def64 := func(v *uint64, d uint64) {
		if *v == 0 {
			*v = d
		}
	}
	if c.TickInterval == 0 {
		c.TickInterval = 100 * time.Millisecond
	}
	def(&c.ElectionTicks, 10)
	def(&c.HeartbeatTicks, 1)
	def(&c.Workers, runtime.GOMAXPROCS(0))
	def(&c.MaxGroupsPerCycle, 256)
	def64(&c.MaxSizePerMsg, 1<<20)
	def(&c.MaxInflightMsgs, 256)
	def64(&c.MaxUncommittedBytes, 64<<20)
	def(&c.MaxInboxMsgs, 4096)
	def64(&c.SnapshotEntries, 10000)
	if c.TruncateEntries == 0 {
		c.TruncateEntries = min(500, c.SnapshotEntries)
	}
	if c.CompactionOverhead == 0 {
		c.CompactionOverhead = min(2000, c.SnapshotEntries)
	}
	def(&c.RequestTimeoutTicks, 10*c.ElectionTicks)
	def(&c.MaxStartCampaigns, 128)
	def(&c.MaxCatchUps, 128)
	def(&c.LivenessStretch, 4)
	if c.EntryCacheBytes == 0 {
		c.EntryCacheBytes = 16 << 20
	}
	if c.LivenessTicks == 0 {
		c.LivenessTicks = max(c.ElectionTicks/2, 3*c.HeartbeatTicks)
		if !c.Manual {
			c.LivenessTicks = max(c.LivenessTicks, int((livenessFloor+c.TickInterval-1)/c.TickInterval))
		}
	}
	if c.PingTicks == 0 {
		c.PingTicks = max(1, c.LivenessTicks/2)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

func (c *Config) validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrConfig}, args...)...)
	}
	switch {
	case c.NodeID == 0:
		return bad("NodeID must be > 0")
	case c.DataDir == "" && c.Store == nil:
		return bad("DataDir or Store is required")
	case c.Transport == nil:
		return bad("Transport is required")
	case c.TickInterval < time.Millisecond || c.TickInterval > 10*time.Second:
		return bad("TickInterval %v outside 1ms..10s", c.TickInterval)
	case c.HeartbeatTicks < 1:
		return bad("HeartbeatTicks %d < 1", c.HeartbeatTicks)
	case c.ElectionTicks <= c.HeartbeatTicks || c.ElectionTicks > 1000:
		return bad("ElectionTicks %d must be > HeartbeatTicks (%d) and <= 1000", c.ElectionTicks, c.HeartbeatTicks)
	case c.Workers < 1 || c.Workers > 256:
		return bad("Workers %d outside 1..256", c.Workers)
	case c.MaxGroupsPerCycle < 1 || c.MaxGroupsPerCycle > 65536:
		return bad("MaxGroupsPerCycle %d outside 1..65536", c.MaxGroupsPerCycle)
	case c.MaxSizePerMsg < 1<<10 || c.MaxSizePerMsg > 64<<20:
		return bad("MaxSizePerMsg %d outside 1KiB..64MiB", c.MaxSizePerMsg)
	case c.MaxInflightMsgs < 1 || c.MaxInflightMsgs > 65536:
		return bad("MaxInflightMsgs %d outside 1..65536", c.MaxInflightMsgs)
	case c.MaxUncommittedBytes < 1<<10 || c.MaxUncommittedBytes > 4<<30:
		return bad("MaxUncommittedBytes %d outside 1KiB..4GiB", c.MaxUncommittedBytes)
	case c.MaxInboxMsgs < 16 || c.MaxInboxMsgs > 1<<20:
		return bad("MaxInboxMsgs %d outside 16..1<<20", c.MaxInboxMsgs)
	case c.SnapshotEntries < 10 || c.SnapshotEntries > 1<<30:
		return bad("SnapshotEntries %d outside 10..1<<30", c.SnapshotEntries)
	case c.TruncateEntries < 10 || c.TruncateEntries > c.SnapshotEntries:
		return bad("TruncateEntries %d outside 10..SnapshotEntries (%d)", c.TruncateEntries, c.SnapshotEntries)
	case c.CompactionOverhead > c.SnapshotEntries:
		return bad("CompactionOverhead %d > SnapshotEntries %d", c.CompactionOverhead, c.SnapshotEntries)
	case c.EntryCacheBytes != -1 && (c.EntryCacheBytes < 1<<10 || c.EntryCacheBytes > 1<<40):
		return bad("EntryCacheBytes %d outside 1KiB..1TiB (or -1: off)", c.EntryCacheBytes)
	case c.RequestTimeoutTicks < c.ElectionTicks:
		return bad("RequestTimeoutTicks %d < ElectionTicks %d", c.RequestTimeoutTicks, c.ElectionTicks)
	case c.Quiesce && (c.DisableFailover || c.DisablePreVote || c.DisableCheckQuorum):
		return bad("Quiesce needs the liveness failover (PreVote, CheckQuorum, no DisableFailover)")
	case c.MaxStartCampaigns < 1 || c.MaxStartCampaigns > 1<<20:
		return bad("MaxStartCampaigns %d outside 1..1<<20", c.MaxStartCampaigns)
	case c.MaxCatchUps < 1 || c.MaxCatchUps > 1<<20:
		return bad("MaxCatchUps %d outside 1..1<<20", c.MaxCatchUps)
	case c.LivenessTicks < 2*c.HeartbeatTicks || c.LivenessTicks > 1000:
		return bad("LivenessTicks %d outside 2*HeartbeatTicks (%d)..1000", c.LivenessTicks, 2*c.HeartbeatTicks)
	case c.PingTicks < 1 || c.PingTicks > max(1, c.LivenessTicks/2):
		return bad("PingTicks %d outside 1..LivenessTicks/2 (%d)", c.PingTicks, max(1, c.LivenessTicks/2))
	case c.LivenessStretch < 1 || c.LivenessStretch > 16:
		return bad("LivenessStretch %d outside 1..16", c.LivenessStretch)
	}
	return nil
}
