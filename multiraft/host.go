package multiraft

// The Host: its state, construction and lifecycle (NewHost, Stop, failure).

import (
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"

	"github.com/flotilla/flotilla/storage"
	"github.com/flotilla/flotilla/transport"
)

// Host runs the raft groups of one node. Create it with NewHost; all its
// methods are safe for concurrent use.
type Host struct {
	cfg      Config
	log      *slog.Logger
	store    storage.Store
	ownStore bool
	tr       transport.Transport
	sched    *scheduler
	hub      *eventHub
	metrics  *metrics
	// entries is the node-wide cache of log entries; logSrc points the
	// groups' memLogs at it and at the store (memlog.go).
	entries *entryCache
	logSrc  logSource
	// confSets interns the groups' published voters and learners.
	confSets confSets

	// keyBase and nextKey make the keys of proposals and ReadIndex rounds
	// (newKey): random high bits per Host incarnation, so that a restarted
	// node never reuses a key its previous life left in a log or in a
	// leader's pending reads.
	keyBase uint64
	nextKey atomic.Uint64
	// statusVersion: see StatusVersion.
	statusVersion atomic.Uint64
	// announced: the node pings its peers (Config.Unannounced, Announce).
	announced atomic.Bool
	// lastPing is the tick (live.ticks) of the last ping, 0 before the
	// first; owned by the tick (Host.tick).
	lastPing int64

	stopc    chan struct{}
	stopOnce sync.Once
	stopped  chan struct{}
	wg       sync.WaitGroup
	err      atomic.Pointer[error]
	manualW  *worker // the worker of Manual mode, used by Process
	live     liveness

	mu struct {
		sync.RWMutex
		groups  map[uint64]*group
		ids     []uint64 // sorted group IDs, for deterministic ticking
		closing bool
	}
	// act: the groups that tick; quiet: the quiesced ones by leader
	// (quiesce.go).
	act   activeSet
	quiet quietIndex
	// tickScratch is tick's copy of the active set (one tick at a time:
	// the tick loop, or Tick in Manual mode).
	tickScratch []*group
	feedback    struct {
		sync.Mutex
		unreachable map[uint64]struct{}
	}
	// streams: snapshot streams opened for the transport (snapstream.go).
	streams snapStreams
	// unknown: when each unknown group was last reported (tick), to rate
	// limit Config.UnknownGroup. A leaf lock.
	unknown struct {
		sync.Mutex
		seen map[uint64]int64
	}
}

// NewHost validates cfg, opens the store and starts the Host's goroutines
// (none in Manual mode). Groups are started with StartGroup.
func NewHost(cfg Config) (*Host, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	h := &Host{
		cfg:     cfg,
		log:     cfg.Logger.With("node", cfg.NodeID),
		tr:      cfg.Transport,
		sched:   newScheduler(),
		hub:     newEventHub(1024),
		keyBase: rand.Uint64() &^ 0xffffffff,
		stopc:   make(chan struct{}),
		stopped: make(chan struct{}),
	}
	h.metrics = newMetrics(cfg.Registerer)
	h.metrics.registerHubMetrics(cfg.Registerer, h.hub, h)
	h.live.init()
	h.announced.Store(!cfg.Unannounced)
	h.mu.groups = make(map[uint64]*group)
	h.feedback.unreachable = make(map[uint64]struct{})
	h.store = cfg.Store
	if h.store == nil {
		st, err := storage.OpenPebble(cfg.DataDir, storage.PebbleOptions{})
		if err != nil {
			return nil, err
		}
		h.store, h.ownStore = st, true
	}
	h.entries = newEntryCache(cfg.EntryCacheBytes)
	h.logSrc = logSource{cache: h.entries, store: h.store, fatal: h.fatal}
	h.metrics.registerEntryCache(cfg.Registerer, h.entries)
	if err := h.tr.Start(h); err != nil {
		if h.ownStore {
			h.store.Close()
		}
		return nil, fmt.Errorf("multiraft: start transport: %w", err)
	}
	if cfg.Manual {
		h.manualW = h.newWorker()
		return h, nil
	}
	for i := 0; i < cfg.Workers; i++ {
		w := h.newWorker()
		h.wg.Add(1)
		go h.workerLoop(w)
	}
	h.wg.Add(1)
	go h.tickLoop()
	return h, nil
}

// newKey returns a key unique to this Host incarnation, never 0 (0 marks a
// packed entry).
func (h *Host) newKey() uint64 {
	for {
		if k := h.keyBase + h.nextKey.Add(1); k != 0 {
			return k
		}
	}
}

// NodeID returns the Host's node ID.
func (h *Host) NodeID() uint64 { return h.cfg.NodeID }

// Store returns the store holding the raft logs.
func (h *Host) Store() storage.Store { return h.store }

func (h *Host) isStopped() bool {
	select {
	case <-h.stopc:
		return true
	default:
		return false
	}
}

func (h *Host) stoppedErr() error {
	if e := h.err.Load(); e != nil {
		return fmt.Errorf("%w: %w", ErrStopped, *e)
	}
	return ErrStopped
}

// Err returns the error that stopped the Host, if it failed.
func (h *Host) Err() error {
	if e := h.err.Load(); e != nil {
		return *e
	}
	return nil
}

// Done is closed once the Host has stopped, whether by Stop or a failure.
func (h *Host) Done() <-chan struct{} { return h.stopped }

// failAt calls Config.FailPoint at boundary name; on an error it stops the
// Host like fatal and reports true: the caller abandons the cycle.
func (h *Host) failAt(name string) bool {
	if h.cfg.FailPoint == nil {
		return false
	}
	if err := h.cfg.FailPoint(name); err != nil {
		h.fatal(fmt.Errorf("failpoint %s: %w", name, err))
		return true
	}
	return false
}

// fatal stops the Host loudly: a storage or state machine error on the raft
// path leaves a replica that can no longer be trusted.
func (h *Host) fatal(err error) {
	if h.err.CompareAndSwap(nil, &err) {
		h.log.Error("multiraft: fatal error, stopping host", "err", err)
	}
	h.halt()
	if !h.cfg.Manual {
		go h.Stop()
	}
}

func (h *Host) halt() {
	h.stopOnce.Do(func() {
		close(h.stopc)
		h.sched.stop()
	})
}

// Stop stops the Host: workers finish their cycle, pending requests fail
// with ErrStopped, subscriptions close, and the store is closed if the Host
// opened it. Safe to call more than once and from any goroutine but a
// StateMachine method.
func (h *Host) Stop() {
	h.halt()
	h.mu.Lock()
	if h.mu.closing {
		h.mu.Unlock()
		<-h.stopped
		return
	}
	h.mu.closing = true
	h.mu.Unlock()
	h.wg.Wait()
	if h.manualW != nil {
		h.manualW.batch.Close()
	}
	// No worker runs any more: this goroutine owns every group now.
	h.mu.RLock()
	gs := make([]*group, 0, len(h.mu.groups))
	for _, g := range h.mu.groups {
		gs = append(gs, g)
	}
	h.mu.RUnlock()
	for _, g := range gs {
		g.shutdown(h.stoppedErr(), keepState)
	}
	h.closeStreams()
	h.hub.closeAll()
	if h.ownStore {
		if err := h.store.Close(); err != nil {
			h.log.Error("close store", "err", err)
		}
	}
	close(h.stopped)
}
