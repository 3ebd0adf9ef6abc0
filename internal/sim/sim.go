package sim

import (
	"container/heap"
	cryptorand "crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/fnv"
	"io"
	"log/slog"
	"math/rand/v2"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/flotilla/flotilla/kv"
)

// Sentinel errors.
var (
	// ErrConfig: a Config field is outside its limits.
	ErrConfig = errors.New("sim: invalid config")
	// ErrCrashPoint is what an armed failure point returns to the engine:
	// the node dies at that boundary.
	ErrCrashPoint = errors.New("sim: crash at failure point")
)

// Faults is a set of fault kinds the nemesis may inject.
type Faults uint32

// Fault kinds.
const (
	// FaultDrop drops messages at a seeded rate.
	FaultDrop Faults = 1 << iota
	// FaultDelay gives messages seeded delays, which reorders them, and
	// makes links slow for a while.
	FaultDelay
	// FaultDuplicate delivers some messages twice.
	FaultDuplicate
	// FaultPartition splits the nodes in two for a while.
	FaultPartition
	// FaultBlackHole drops everything on one directed link, silently.
	FaultBlackHole
	// FaultCrash kills a node (losing its unsynced writes) and restarts it
	// later.
	FaultCrash
	// FaultFailPoint kills a node at a named persistence boundary of the
	// engine, then restarts it.
	FaultFailPoint
	// FaultCampaign makes a random replica start an election.
	FaultCampaign
	// FaultPause freezes a node for a while, as SIGSTOP does: it neither
	// ticks nor processes, messages to it wait (they arrive when it
	// resumes), and requests sent to it hang.
	FaultPause
	// FaultTransfer makes a group's leader hand leadership to another
	// replica (Host.TransferLeadershipAsync): proposals that arrive
	// meanwhile are held, then proposed again or refused unappended.
	FaultTransfer
	// FaultRequestDup delivers client writes twice: a copy of a write is
	// proposed again, later (up to 800ms), at a random node, as a
	// retried, duplicated or delayed request would be. Sessions make the
	// copy apply nothing (kv/session.go).
	FaultRequestDup
	// FaultSplit splits a range at a random key of the workload (from the
	// node that leads it, as an operator's split would), and makes ranges
	// that serve more than a few requests per second split by load. The
	// clients learn of splits only when a range answers that it does not
	// hold a key: their range caches go stale.
	FaultSplit
	// FaultMerge merges a range with the next one now and then (from the
	// node that leads it, as an operator's merge would), racing with
	// leader changes, transfers, crashes and the splits.
	FaultMerge
	// FaultMembership changes a range's membership now and then: its
	// leader adds a learner on a node that does not exist (ghostNode), or
	// removes it again. Membership changes race with leader changes,
	// crashes, pauses, partitions, splits and merges, and the proposals
	// behind each wait for it (the engine holds them); the learner,
	// never reached, keeps its range's leader sending and snapshotting.
	FaultMembership
	// FaultMove moves a range's replicas (ranges.Store.Move, from the
	// node that leads it): it removes one node's replica (the leader's
	// too: it hands the leadership over first), or adds one back on a
	// node that lacks it (a learner, its catch-up by snapshot, its
	// promotion). Moves race with every other fault; a node that lost a
	// replica while away learns it from the mover or from the range's
	// other replicas once it finds no leader. After healing, every range
	// gets a replica on every node again (replicate).
	FaultMove
	// FaultJoin starts a new node (the run's Nodes+1) once in the faulty
	// phase, empty, as `flotilla start --join` does: it holds no range
	// until moves give it replicas (FaultMove, and after healing
	// replicate, which gives it every range), under every other fault.
	FaultJoin
	// FaultDecommission decommissions one node once in the faulty phase
	// (with 3 nodes or more): nothing moves onto it any more, and the
	// leader of each range with a replica there moves it off
	// (decommissionLoop), under every other fault and after healing,
	// until no range lists it; then the node stops for good. No range
	// may list it at the end (checkDecommissioned).
	FaultDecommission

	// AllFaults is every fault kind.
	AllFaults = FaultDrop | FaultDelay | FaultDuplicate | FaultPartition |
		FaultBlackHole | FaultCrash | FaultFailPoint | FaultCampaign |
		FaultPause | FaultTransfer | FaultRequestDup | FaultSplit | FaultMerge |
		FaultMembership | FaultMove | FaultJoin | FaultDecommission
)

var faultNames = []struct {
	f    Faults
	name string
}{
	{FaultDrop, "drop"}, {FaultDelay, "delay"}, {FaultDuplicate, "duplicate"},
	{FaultPartition, "partition"}, {FaultBlackHole, "blackhole"}, {FaultCrash, "crash"},
	{FaultFailPoint, "failpoint"}, {FaultCampaign, "campaign"},
	{FaultPause, "pause"}, {FaultTransfer, "transfer"}, {FaultRequestDup, "reqdup"},
	{FaultSplit, "split"}, {FaultMerge, "merge"}, {FaultMembership, "membership"},
	{FaultMove, "move"}, {FaultJoin, "join"}, {FaultDecommission, "decommission"},
}

// ParseFaults parses a comma-separated list of fault names (drop, delay,
// duplicate, partition, blackhole, crash, failpoint, campaign, pause,
// transfer, reqdup, split, merge, membership, move, join, decommission, or
// all).
func ParseFaults(s string) (Faults, error) {
	var f Faults
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		if part == "all" {
			f |= AllFaults
			continue
		}
		found := false
		for _, fn := range faultNames {
			if fn.name == part {
				f |= fn.f
				found = true
			}
		}
		if !found {
			return 0, fmt.Errorf("%w: unknown fault %q", ErrConfig, part)
		}
	}
	return f, nil
}

// String lists the fault names, comma-separated.
func (f Faults) String() string {
	var out []string
	for _, fn := range faultNames {
		if f&fn.f != 0 {
			out = append(out, fn.name)
		}
	}
	return strings.Join(out, ",")
}

// Bug is a deliberately planted bug, to show that the checks catch what
// they guard against.
type Bug int

const (
	// BugNone runs Flotilla as it is.
	BugNone Bug = iota
	// BugStaleReads serves gets from the local replica's state with
	// Host.QueryLocal, skipping ReadIndex.
	BugStaleReads
	// BugAckBeforeSync turns off the fsync of raft writes
	// (multiraft.Config.DisableSync): votes and acknowledgements promise
	// durability the store does not have.
	BugAckBeforeSync
	// BugTruncateUnsynced truncates the log without syncing the state
	// machine first (its Sync does nothing): after a crash the state
	// machine lacks commands the log no longer holds.
	BugTruncateUnsynced
	// BugNoDedup turns the state machines' session dedup off
	// (kv.WithoutDedup): a write delivered twice applies twice.
	BugNoDedup
	// BugSplitBothServe lets a range serve keys outside its span
	// (kv.WithoutSpanChecks): after a split, both halves serve the keys
	// the left one gave away, to clients whose caches are stale.
	BugSplitBothServe
	// BugLoseMetaUpdate loses every meta index update after a split, and
	// its repair (ranges.Config.LoseMetaUpdates).
	BugLoseMetaUpdate
	// BugMergeNoWait merges a frozen range without waiting for its
	// replicas to apply the freeze (ranges.Config.SkipMergeWait).
	BugMergeNoWait
	// BugQuiesceIgnoreLiveness leaves quiesced followers asleep when
	// liveness finds their leader down
	// (multiraft.Config.QuiesceIgnoringLiveness).
	BugQuiesceIgnoreLiveness
	// BugTxnNonAtomic applies a transaction's then-branch in two writes:
	// the first key by the transaction, the second by a put the client
	// sends once the first is acknowledged, as a client-side "transaction"
	// over a plain KV store would.
	BugTxnNonAtomic
	// BugWatchDropAtLeaderChange makes a watch resumed from a token lose
	// the first event it reads (kv.WatchOptions.PlantedSkipOnResume); the
	// simulation's watchers resume at every leader change.
	BugWatchDropAtLeaderChange
	// BugMoveUncoupled changes a range's raft configuration without its
	// descriptor (kv.WithoutMembershipRecord): a replica moved off a node
	// is never known there to be out, and a node that lacks one is never
	// known to.
	BugMoveUncoupled
	// BugDecommissionEarly stops a decommissioned node for good as soon as
	// its decommission starts, before any of its replicas moved off, as
	// if the mark alone made it safe to go.
	BugDecommissionEarly

	bugLast = BugDecommissionEarly
)

// Config configures one simulation run. Zero values take the defaults.
type Config struct {
	// Seed selects the run; every random choice derives from it.
	Seed uint64
	// MaxCatchUps as in multiraft.Config. 0: by seed, 128 (the default),
	// 1 or 2 for seeds 0, 1 and 2 mod 3, so that the pace binds with the
	// simulation's few ranges on two seeds in three.
	MaxCatchUps int
	// Nodes is the number of nodes. Default 3; 1 to 9.
	Nodes int
	// Groups is the number of raft groups, each on every node. Default 2;
	// 1 to 64.
	Groups int
	// Keys is the number of keys of the workload. Default 3; 1 to 64.
	Keys int
	// Clients is the number of concurrent clients. Default 4; 1 to 64.
	Clients int
	// Duration is the simulated length of the faulty phase. Default 2s.
	Duration time.Duration
	// HealTimeout bounds, in simulated time, the phase after healing in
	// which pending requests finish and replicas must converge. Default
	// 5s.
	HealTimeout time.Duration
	// TickInterval is the simulated length of a raft tick. Default 10ms.
	TickInterval time.Duration
	// ElectionTicks and HeartbeatTicks as in multiraft.Config. Defaults
	// 10 and 2.
	ElectionTicks, HeartbeatTicks int
	// SnapshotEntries as in multiraft.Config. Default 24, so that short
	// runs exercise snapshots.
	SnapshotEntries uint64
	// RequestTimeout is how long, in simulated time, a client waits for a
	// reply before it gives up (a write's outcome is then unknown).
	// Default 1s.
	RequestTimeout time.Duration
	// Faults is the set of faults to inject. Zero means AllFaults; use
	// NoFaults for a clean run.
	Faults Faults
	// NoFaults turns every fault off.
	NoFaults bool
	// Bug plants a known bug (see Bug).
	Bug Bug
	// CheckTimeout bounds the linearizability check. Default 10s of wall
	// time.
	CheckTimeout time.Duration
	// Trace, if set, receives one line per trace event.
	Trace io.Writer
	// VisualizeDir, if set, receives porcupine's HTML visualization of the
	// history of a run whose check did not come out ok.
	VisualizeDir string
}

func (c *Config) setDefaults() {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	defd := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.Nodes, 3)
	def(&c.Groups, 2)
	def(&c.Keys, 3)
	def(&c.Clients, 4)
	defd(&c.Duration, 2*time.Second)
	defd(&c.HealTimeout, 5*time.Second)
	defd(&c.TickInterval, 10*time.Millisecond)
	def(&c.ElectionTicks, 10)
	def(&c.HeartbeatTicks, 2)
	if c.SnapshotEntries == 0 {
		c.SnapshotEntries = 24
	}
	defd(&c.RequestTimeout, time.Second)
	defd(&c.CheckTimeout, 10*time.Second)
	if c.Faults == 0 {
		c.Faults = AllFaults
	}
	if c.NoFaults {
		c.Faults = 0
	}
}

func (c *Config) validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrConfig}, args...)...)
	}
	switch {
	case c.Nodes < 1 || c.Nodes > 9:
		return bad("Nodes %d outside 1..9", c.Nodes)
	case c.Groups < 1 || c.Groups > 64:
		return bad("Groups %d outside 1..64", c.Groups)
	case c.Keys < 1 || c.Keys > 64:
		return bad("Keys %d outside 1..64", c.Keys)
	case c.Clients < 1 || c.Clients > 64:
		return bad("Clients %d outside 1..64", c.Clients)
	case c.Duration < 0 || c.HealTimeout < time.Second:
		return bad("Duration %v must be >= 0 and HealTimeout %v >= 1s", c.Duration, c.HealTimeout)
	case c.TickInterval < time.Millisecond:
		return bad("TickInterval %v < 1ms", c.TickInterval)
	case c.RequestTimeout < c.TickInterval:
		return bad("RequestTimeout %v < TickInterval", c.RequestTimeout)
	case c.Bug < BugNone || c.Bug > bugLast:
		return bad("unknown Bug %d", c.Bug)
	}
	return nil
}

// Result is the outcome of one run.
type Result struct {
	Seed uint64 `json:"seed"`
	// Ops is the number of operations in the checked history; Ambiguous
	// of them are writes whose outcome the client never learned.
	Ops       int `json:"ops"`
	Ambiguous int `json:"ambiguous"`
	// Faults counts injected faults; Crashes the node crashes among them.
	Faults  int `json:"faults"`
	Crashes int `json:"crashes"`
	// Events is the number of simulation events, Delivered the number of
	// message batches delivered.
	Events    int `json:"events"`
	Delivered int `json:"delivered"`
	// SimTime is the simulated time the run covered; Wall the wall time it
	// took, checks included.
	SimTime time.Duration `json:"sim_time_ns"`
	Wall    time.Duration `json:"wall_ns"`
	// Linearizable is "ok", "illegal" or "unknown" (the check timed out).
	Linearizable string `json:"linearizable"`
	// LostAcks counts acknowledged writes missing from the applied log.
	LostAcks int `json:"lost_acks"`
	// FailPoints counts crashes at an engine failure point.
	FailPoints int `json:"fail_points"`
	// Pauses, Transfers and RequestDups count those faults; Failovers the
	// leaders that replicas forgot because liveness found them down;
	// Deduped the copies of session writes that applied nothing (answered
	// with the first result, or refused as stale).
	Pauses      int `json:"pauses"`
	Transfers   int `json:"transfers"`
	RequestDups int `json:"request_dups"`
	Failovers   int `json:"failovers"`
	Deduped     int `json:"deduped"`
	// Quiesces and Wakes count replicas that quiesced (stopped ticking,
	// idle) and woke again.
	Quiesces int `json:"quiesces"`
	Wakes    int `json:"wakes"`
	// MembershipChanges counts the changes FaultMembership asked for
	// (each may have been refused or dropped), MembershipApplied those
	// applied within a second.
	MembershipChanges int `json:"membership_changes"`
	MembershipApplied int `json:"membership_applied"`
	// Moves counts the replica moves FaultMove and the post-heal
	// replication asked for; MovesDone those that finished.
	Moves     int `json:"moves"`
	MovesDone int `json:"moves_done"`
	// Joins and Decommissions count the nodes FaultJoin started and
	// FaultDecommission removed (stopped for good).
	Joins         int `json:"joins"`
	Decommissions int `json:"decommissions"`
	// MovedAway counts the replicas nodes removed, with their span's
	// data, because their range left the node.
	MovedAway int `json:"moved_away"`
	// Leftovers counts the learners left by moves cut short that a
	// range's leader took up (ranges.Store.finishLearners).
	Leftovers int `json:"leftovers"`
	// MergeAligns counts the replica moves merges made to put neighbours
	// on different nodes on the same ones (ranges.Store.MergeAligns).
	MergeAligns int `json:"merge_aligns"`
	// AutoMerges counts the merges the nodes' merge queues made (split
	// ranges that cooled in a lull of the workload), and MergeHandOns the
	// leaderships they handed on for one (ranges.Store.AutoMerges,
	// MergeHandOns).
	AutoMerges   int `json:"auto_merges"`
	MergeHandOns int `json:"merge_hand_ons"`
	// SubsetMerges counts the merges made on the left range's replicas
	// alone, which left out a replica of the frozen right range on a node
	// that took none (ranges.Store.SubsetMerges).
	SubsetMerges int `json:"subset_merges"`
	// Splits counts completed splits; SnapshotsRefused the snapshots a
	// replica refused because another local replica still held part of
	// their span (a snapshot that crossed a split); Mismatches the
	// requests a range refused because it no longer held their key (a
	// client with stale descriptors).
	Splits           int `json:"splits"`
	Merges           int `json:"merges"`
	SnapshotsRefused int `json:"snapshots_refused"`
	Mismatches       int `json:"mismatches"`
	// WatchEvents counts the events the watchers got; WatchMoves the times
	// they resumed from a token on another node (watch.go).
	WatchEvents int `json:"watch_events"`
	WatchMoves  int `json:"watch_moves"`
	// EmptyReplicas counts replicas a node started empty, to receive a
	// snapshot, for a range made by a split it had not applied (it got a
	// snapshot of the left half from after the split).
	EmptyReplicas int `json:"empty_replicas"`
	// History is the checked history.
	History []Op `json:"-"`
	// Violations lists the safety violations found, if any.
	Violations []string `json:"violations,omitempty"`
	// TraceHash is the FNV-1a hash of the event trace.
	TraceHash uint64 `json:"trace_hash"`
	// Visualization is the path of porcupine's HTML rendering, when one was
	// written.
	Visualization string `json:"visualization,omitempty"`
}

// Failed reports whether the run found a violation or a non-linearizable
// history. An "unknown" check alone is not a failure.
func (r *Result) Failed() bool {
	return len(r.Violations) > 0 || r.Linearizable == "illegal" || r.LostAcks > 0
}

// runMu serializes runs: each one swaps crypto/rand.Reader.
var runMu sync.Mutex

// Run simulates one seed and checks it. The error is for a bad Config or a
// failure of the simulator itself; what the simulation finds is in the
// Result.
func Run(cfg Config) (*Result, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	runMu.Lock()
	defer runMu.Unlock()
	start := time.Now()

	// etcd raft draws its randomized election timeouts from
	// crypto/rand.Reader: give it a stream derived from the seed.
	var rs [32]byte
	binary.LittleEndian.PutUint64(rs[:], cfg.Seed)
	binary.LittleEndian.PutUint64(rs[8:], 0x5eed_f1071_11a)
	oldReader := cryptorand.Reader
	cryptorand.Reader = rand.NewChaCha8(rs)
	defer func() { cryptorand.Reader = oldReader }()

	s := newSim(cfg)
	defer s.closeAll()
	if err := s.run(); err != nil {
		return nil, err
	}
	s.check()
	s.res.Wall = time.Since(start)
	return s.res, nil
}

// event is one scheduled action.
type event struct {
	at  time.Duration
	seq uint64
	fn  func()
}

type eventQueue []*event

func (q eventQueue) Len() int { return len(q) }
func (q eventQueue) Less(i, j int) bool {
	if q[i].at != q[j].at {
		return q[i].at < q[j].at
	}
	return q[i].seq < q[j].seq
}
func (q eventQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *eventQueue) Push(x any)   { *q = append(*q, x.(*event)) }
func (q *eventQueue) Pop() any {
	old := *q
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*q = old[:len(old)-1]
	return e
}

// sim is the state of one run. Owned by the goroutine of Run.
type sim struct {
	cfg    Config
	rng    *rand.Rand
	now    time.Duration
	seq    uint64
	q      eventQueue
	nodes  []*node // by node ID; nodes[0] is nil
	ids    []uint64
	net    *network
	res    *Result
	logger *slog.Logger

	trace    hash.Hash64
	traceBuf []byte

	clients []*client
	hist    history
	// clock orders invocations and returns for the checker.
	clock int64
	// finalClock is the clock when the final reads began.
	finalClock int64
	// stopClients: the workload issues no new requests.
	stopClients bool
	healed      bool

	// applied maps group → position (index<<16 | place in the entry) →
	// hash of the command applied there, over every replica and
	// incarnation.
	applied map[uint64]map[uint64]uint64
	// cmdIndex maps group → command hash → the position it was applied at,
	// for commands without a session.
	cmdIndex    map[uint64]map[uint64]uint64
	dupReported map[uint64]bool
	// effects maps (session, seq) → the first applied copy of a session
	// write that took effect, in whichever range (a write retried after a
	// split may reach the other half, whose copy of the session knows it).
	effects map[[2]uint64]effect
	// leaders maps (group, term) → the leader seen in that term.
	leaders map[[2]uint64]uint64
	// acked lists acknowledged writes; ackedPuts the values they wrote.
	acked     []ackedWrite
	ackedPuts []ackedPut
	// watchers follow the keyspace (watch.go); leaderEpoch counts the
	// leaders seen first in a term, the last of them on node lastLeader.
	watchers    []*watcher
	leaderEpoch int
	lastLeader  uint64
	// splitLoad is the run's load threshold for splits (requests per
	// second, 0: none), drawn from the seed.
	splitLoad float64
	// lullAt, lullEnd: in a run with load splits, the clients issue
	// nothing in [lullAt, lullEnd), so that ranges cool and the merge
	// queue (ranges.Config.MinBytes, set in such runs) merges them back
	// under the run's faults. Both 0 in other runs.
	lullAt, lullEnd time.Duration
	// joined: FaultJoin started its node. leaving: the node being
	// decommissioned (0: none); gone: the nodes decommissioned, stopped
	// for good and out of ids.
	joined  bool
	leaving uint64
	gone    []uint64
}

// effect is where a session write took effect (range, position), and its
// result's hash.
type effect struct {
	group, pos, result uint64
	res                []byte // the result, for the report
}

// ackedWrite is an acknowledged write: its group and session identity.
type ackedWrite struct{ group, session, seq uint64 }

func newSim(cfg Config) *sim {
	s := &sim{
		cfg:         cfg,
		rng:         rand.New(rand.NewPCG(cfg.Seed, 0x9e3779b97f4a7c15)),
		res:         &Result{Seed: cfg.Seed},
		logger:      debugLogger,
		trace:       fnv.New64a(),
		applied:     make(map[uint64]map[uint64]uint64),
		leaders:     make(map[[2]uint64]uint64),
		cmdIndex:    make(map[uint64]map[uint64]uint64),
		dupReported: make(map[uint64]bool),
		effects:     make(map[[2]uint64]effect),
	}
	s.net = newNetwork(s)
	if cfg.Faults&FaultSplit != 0 && s.rng.IntN(2) == 0 {
		s.splitLoad = float64(8 + s.rng.IntN(30))
		// Over by 0.85 of the faulty phase: the clients write again
		// after the merges, under faults.
		s.lullAt = s.between(cfg.Duration*3/10, cfg.Duration/2)
		s.lullEnd = s.lullAt + s.between(cfg.Duration/4, cfg.Duration*7/20)
	}
	s.nodes = make([]*node, cfg.Nodes+2) // room for FaultJoin's node
	for id := uint64(1); id <= uint64(cfg.Nodes); id++ {
		s.ids = append(s.ids, id)
		s.nodes[id] = newNode(s, id)
	}
	return s
}

// at schedules fn at simulated time t (never before now).
func (s *sim) at(t time.Duration, fn func()) {
	if t < s.now {
		t = s.now
	}
	s.seq++
	heap.Push(&s.q, &event{at: t, seq: s.seq, fn: fn})
}

// after schedules fn d from now.
func (s *sim) after(d time.Duration, fn func()) { s.at(s.now+d, fn) }

// between returns a duration uniformly in [lo, hi).
func (s *sim) between(lo, hi time.Duration) time.Duration {
	if hi <= lo {
		return lo
	}
	return lo + time.Duration(s.rng.Int64N(int64(hi-lo)))
}

// record hashes one trace event: a kind and some numbers; with
// Config.Trace set it also writes the event as a line.
func (s *sim) record(kind string, vals ...uint64) {
	b := s.traceBuf[:0]
	b = binary.LittleEndian.AppendUint64(b, uint64(s.now))
	b = append(b, kind...)
	for _, v := range vals {
		b = binary.LittleEndian.AppendUint64(b, v)
	}
	s.trace.Write(b)
	s.traceBuf = b
	if s.cfg.Trace != nil {
		fmt.Fprintf(s.cfg.Trace, "%12v %s %v\n", s.now, kind, vals)
	}
}

// run executes the schedule: start, faulty phase, heal, convergence.
func (s *sim) run() (err error) {
	defer func() {
		if r := recover(); r != nil {
			// A panic inside the engine or raft (say, raft finding its log
			// lost) is a finding, not a simulator failure.
			s.violation("panic at %v: %v\n%s", s.now, r, debug.Stack())
		}
	}()
	for _, id := range s.ids {
		if err := s.nodes[id].start(); err != nil {
			return err
		}
	}
	for _, id := range s.ids {
		n := s.nodes[id]
		// Each node's clock runs at its own rate (±5%) and phase.
		n.tickEvery = s.cfg.TickInterval + time.Duration(s.rng.Int64N(int64(s.cfg.TickInterval)/10+1)) - s.cfg.TickInterval/20
		s.at(s.between(0, s.cfg.TickInterval), n.tickLoop)
		s.at(s.between(0, rangeTick), n.rangeTickLoop)
	}
	s.net.configure()
	s.startWatchers()
	for i := 0; i < s.cfg.Clients; i++ {
		c := &client{s: s, id: i}
		s.clients = append(s.clients, c)
		s.after(s.between(0, 50*time.Millisecond), c.next)
	}
	if s.cfg.Faults&^(FaultDrop|FaultDelay|FaultDuplicate) != 0 {
		s.after(s.between(100*time.Millisecond, 500*time.Millisecond), s.nemesis)
	}
	if s.cfg.Faults&(FaultSplit|FaultMerge) != 0 {
		s.after(s.between(50*time.Millisecond, 300*time.Millisecond), s.splitLoop)
	}
	healAt := s.cfg.Duration
	s.at(healAt, s.heal)
	deadline := healAt + s.cfg.HealTimeout
	converged := false
	for s.q.Len() > 0 {
		e := heap.Pop(&s.q).(*event)
		if e.at > deadline {
			break
		}
		s.now = e.at
		s.res.Events++
		e.fn()
		s.afterEvent()
		if s.healed && s.quiet() {
			converged = true
			break
		}
	}
	s.res.SimTime = s.now
	if !converged && debugHook != nil {
		debugHook(s)
	}
	if !converged {
		if s.allUp() && !s.metaConverged() {
			s.violation("the meta index did not come to record the ranges within %v after healing: %s", s.cfg.HealTimeout, s.describeMeta())
		} else {
			s.violation("replicas did not converge within %v after healing: %s", s.cfg.HealTimeout, s.describe())
		}
	}
	return nil
}

// afterEvent polls the clients and turns failed hosts (a failure point
// fired) into crashed nodes.
func (s *sim) afterEvent() {
	s.pollClients()
	for _, id := range s.ids {
		n := s.nodes[id]
		if n.up && n.host.Err() != nil {
			if err := n.host.Err(); !errors.Is(err, ErrCrashPoint) {
				// The engine stopped on an error of its own (a state
				// machine that could not apply a command): a finding.
				s.violation("node %d stopped at %v: %v", id, s.now, err)
			}
			n.crash("failpoint")
			s.pollClients()
			n.scheduleRestart()
		}
	}
}

// heal ends the faulty phase: links heal, crashed nodes restart, clients
// stop issuing new requests once the final reads are in.
func (s *sim) heal() {
	s.record("heal")
	s.net.healAll()
	for _, id := range s.ids {
		n := s.nodes[id]
		n.armed = ""
		n.resume()
		if !n.up {
			n.restart()
		}
	}
	s.stopClients = true
	s.healed = true
	if s.cfg.Faults&FaultMove != 0 {
		s.after(s.cfg.TickInterval*time.Duration(3*s.cfg.ElectionTicks), s.replicate)
	}
	// Final reads: once the cluster has a leader again, read every key.
	s.after(s.cfg.TickInterval*time.Duration(3*s.cfg.ElectionTicks), s.finalReads)
}

// quiet reports whether the run can end: healed, final reads done, no
// client waiting, every group converged on every node, and the meta index
// records every range.
func (s *sim) quiet() bool {
	for _, c := range s.clients {
		if c.pending != nil || !c.finalDone {
			return false
		}
	}
	for _, id := range s.ids {
		if !s.nodes[id].up {
			return false
		}
	}
	if s.leaving != 0 {
		return false // decommissionLoop goes on
	}
	if !s.metaConverged() {
		return false
	}
	for _, g := range s.rangeIDs() {
		var applied, commit, lead uint64
		for i, id := range s.ids {
			n := s.nodes[id]
			if !n.up {
				return false
			}
			st, err := n.host.GroupStatus(g)
			if err != nil {
				return false
			}
			if i == 0 {
				applied, commit, lead = st.Applied, st.Commit, st.Leader
			}
			if st.Applied != applied || st.Commit != commit || st.Leader != lead || lead == 0 || st.Applied != st.Commit {
				return false
			}
		}
	}
	return true
}

func (s *sim) describe() string {
	var b strings.Builder
	for _, g := range s.rangeIDs() {
		fmt.Fprintf(&b, "g%d:", g)
		for _, id := range s.ids {
			n := s.nodes[id]
			if !n.up {
				fmt.Fprintf(&b, " n%d=down", id)
				continue
			}
			st, err := n.host.GroupStatus(g)
			if err != nil {
				fmt.Fprintf(&b, " n%d=%v", id, err)
				continue
			}
			fmt.Fprintf(&b, " n%d[lead=%d term=%d commit=%d applied=%d", id, st.Leader, st.Term, st.Commit, st.Applied)
			if st.Quiesced {
				b.WriteString(" quiesced")
			}
			if r, ok := n.ranges.Get(g); ok {
				if d, ok := r.Descriptor(); ok {
					fmt.Fprintf(&b, " %v", d)
				} else {
					b.WriteString(" empty")
				}
				if into, at, frozen := r.SM.Frozen(); frozen {
					fmt.Fprintf(&b, " frozen into %d at %d", into, at)
				}
			}
			b.WriteString("]")
		}
		b.WriteString("; ")
	}
	return b.String()
}

func (s *sim) violation(format string, args ...any) {
	if len(s.res.Violations) < 20 {
		s.res.Violations = append(s.res.Violations, fmt.Sprintf(format, args...))
	}
}

// upNodes returns the IDs of running nodes.
func (s *sim) upNodes() []uint64 {
	var out []uint64
	for _, id := range s.ids {
		if s.nodes[id].up {
			out = append(out, id)
		}
	}
	return out
}

// noteApply records that node applied cmd as command sub of the entry at
// index of group, with result res.
//
// A session write may be in the log several times (a client retry, a
// duplicated request), but must take effect once: every copy after the
// first that took effect must answer with the first's result (dedup) or
// be refused as stale or of an unknown session. A command without a
// session is proposed once and must be applied at one position.
func (s *sim) noteApply(node, group, index, sub uint64, cmd, res []byte) {
	h := cmdHash(cmd)
	pos := index<<16 | sub // a packed entry holds far fewer than 1<<16
	m := s.applied[group]
	if m == nil {
		m = make(map[uint64]uint64)
		s.applied[group] = m
	}
	if prev, ok := m[pos]; ok && prev != h {
		s.violation("group %d index %d command %d applied with different commands (node %d differs)", group, index, sub, node)
	}
	m[pos] = h
	if sess, seq, ok := kv.CommandSession(cmd); ok {
		if r, err := kv.DecodeResult(res); err == nil && (r.SessionUnknown || r.SessionStale) {
			if r.SessionStale && node == s.ids[0] {
				s.res.Deduped++
			}
			return // refused: no effect
		}
		if r, err := kv.DecodeResult(res); err == nil && r.KeyMismatch {
			return // refused: the range does not hold the key
		}
		key, rh := [2]uint64{sess, seq}, cmdHash(res)
		e, seen := s.effects[key]
		same := e.group == group && e.pos == pos
		switch {
		case !seen:
			s.effects[key] = effect{group: group, pos: pos, result: rh, res: append([]byte(nil), res...)}
		case !same && e.result == rh && node == s.ids[0]:
			s.res.Deduped++ // counted on one replica
		case !same && e.result != rh && !s.dupReported[h]:
			s.dupReported[h] = true
			first, _ := kv.DecodeResult(e.res)
			second, _ := kv.DecodeResult(res)
			s.violation("write (session %d, seq %d) took effect twice: in group %d at %d.%d (%+v) and in group %d at %d.%d (%+v) (node %d)",
				sess, seq, e.group, e.pos>>16, e.pos&0xffff, first, group, index, sub, second, node)
		}
		return
	}
	if kv.Internal(cmd) {
		// The Store's own commands may be proposed twice (a retried meta
		// update, a repair racing an update): each is idempotent or
		// guarded by the generation it expects.
		return
	}
	at := s.cmdIndex[group]
	if at == nil {
		at = make(map[uint64]uint64)
		s.cmdIndex[group] = at
	}
	if p, ok := at[h]; !ok {
		at[h] = pos
	} else if p != pos && !s.dupReported[h] {
		s.dupReported[h] = true
		s.violation("group %d: one command applied at indexes %d.%d and %d.%d (node %d)", group, p>>16, p&0xffff, index, sub, node)
	}
}

// noteLeaders checks that node's leaders agree with every leader seen
// before in the same term.
func (s *sim) noteLeaders(n *node) {
	for _, st := range n.host.Status() {
		if st.Role != "StateLeader" {
			continue
		}
		k := [2]uint64{st.ID, st.Term}
		prev, ok := s.leaders[k]
		if ok && prev != n.id {
			s.violation("group %d term %d has two leaders: %d and %d", st.ID, st.Term, prev, n.id)
		}
		if !ok {
			s.leaderEpoch++
			s.lastLeader = n.id
		}
		s.leaders[k] = n.id
	}
}

func (s *sim) closeAll() {
	for _, id := range s.ids {
		s.nodes[id].close()
	}
	for _, id := range s.gone {
		s.nodes[id].close()
	}
}

// cmdHash identifies a command by the hash of its bytes.
func cmdHash(b []byte) uint64 {
	h := fnv.New64a()
	h.Write(b)
	return h.Sum64()
}

// sortedKeys returns m's keys ascending.
func sortedKeys[V any](m map[uint64]V) []uint64 {
	out := make([]uint64, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// debugLogger is the runs' logger: discarded, unless TestReplaySeed sets
// it.
var debugLogger = slog.New(slog.DiscardHandler)

// debugHook, if set by TestReplaySeed, sees a run that did not converge.
var debugHook func(*sim)

// maxCatchUps is Config.MaxCatchUps, or the one the seed picks.
func (s *sim) maxCatchUps() int {
	if s.cfg.MaxCatchUps != 0 {
		return s.cfg.MaxCatchUps
	}
	return []int{128, 1, 2}[s.cfg.Seed%3]
}
