package multiraft_test

import (
	"errors"
	"log/slog"
	"sync/atomic"
	"testing"

	"go.etcd.io/raft/v3/raftpb"

	"github.com/flotilla/flotilla/multiraft"
	"github.com/flotilla/flotilla/storage"
	"github.com/flotilla/flotilla/transport"
)

// cacheCluster is a Manual cluster of nodes with one group each, with
// entry caches of budget bytes, on stores that count their reads.
type cacheCluster struct {
	net    *transport.MemNetwork
	hosts  []*multiraft.Host
	sms    []*countSM
	stores []*countingStore
}

// countingStore counts Entries reads, and fails them once fail is set.
type countingStore struct {
	*storage.Mem
	reads atomic.Uint64
	fail  atomic.Pointer[error]
}

func (s *countingStore) Entries(group, lo, hi, maxBytes uint64) ([]raftpb.Entry, error) {
	s.reads.Add(1)
	if err := s.fail.Load(); err != nil {
		return nil, *err
	}
	return s.Mem.Entries(group, lo, hi, maxBytes)
}

func newCacheCluster(t *testing.T, nodes int, budget int64) *cacheCluster {
	t.Helper()
	c := &cacheCluster{net: transport.NewMemNetwork(transport.MemOptions{Manual: true})}
	var members []uint64
	for id := uint64(1); id <= uint64(nodes); id++ {
		members = append(members, id)
	}
	for _, id := range members {
		tr := c.net.Transport(id)
		for _, p := range members {
			if p != id {
				tr.AddPeer(p, "")
			}
		}
		st := &countingStore{Mem: storage.NewMem()}
		h, err := multiraft.NewHost(multiraft.Config{
			NodeID: id, Store: st, Transport: tr, Manual: true,
			EntryCacheBytes: budget, Logger: slog.New(slog.DiscardHandler),
		})
		if err != nil {
			t.Fatal(err)
		}
		sm := &countSM{}
		if err := h.StartGroup(1, members, sm); err != nil {
			t.Fatal(err)
		}
		c.hosts, c.sms, c.stores = append(c.hosts, h), append(c.sms, sm), append(c.stores, st)
		t.Cleanup(func() { h.Stop(); tr.Close() })
	}
	return c
}

// process runs cycles and delivers until quiet, checking after each round
// that no entry cache is over budget.
func (c *cacheCluster) process(t *testing.T, budget int64) {
	t.Helper()
	for range 10000 {
		n := 0
		for _, h := range c.hosts {
			n += h.Process()
			if b := h.EntryCache().Bytes; budget > 0 && b > budget {
				t.Fatalf("node %d: entry cache holds %d bytes, over its budget of %d", h.NodeID(), b, budget)
			}
		}
		if n+c.net.Deliver() == 0 {
			return
		}
	}
	t.Fatal("the cluster did not quiet down")
}

// A group's entries leave memory: with an entry cache of 1 KiB, a leader
// appends 300 entries of 100 bytes (about 50 KiB of cached entries) while
// a follower is cut off; no cache ever holds more than its budget, and the
// follower then catches up from the log, which the leader reads back from
// its store (misses), not from a snapshot.
func TestEntryCacheBoundsGroupLog(t *testing.T) {
	const budget, n = 1 << 10, 300
	c := newCacheCluster(t, 3, budget)
	if err := c.hosts[0].Campaign(1); err != nil {
		t.Fatal(err)
	}
	c.process(t, budget)
	c.net.Isolate(3, transport.LinkBlackHole)
	payload := make([]byte, 100)
	held := int64(0) // the most the leader's cache held between proposals
	for range n {
		// One at a time: proposals made together share an entry, larger
		// than the budget.
		f := c.hosts[0].ProposeAsync(1, payload)
		c.process(t, budget)
		if _, err := f.Result(); err != nil {
			t.Fatal(err)
		}
		held = max(held, c.hosts[0].EntryCache().Bytes)
	}
	if held == 0 {
		t.Fatal("the leader's cache held nothing")
	}
	if got := c.sms[2].n.Load(); got != 0 {
		t.Fatalf("the cut-off follower applied %d commands", got)
	}
	misses0, reads0 := c.hosts[0].EntryCache().Misses, c.stores[0].reads.Load()
	c.net.HealAll()
	for tick := 0; c.sms[2].n.Load() < n; tick++ {
		if tick == 100 {
			t.Fatalf("the follower applied %d of %d commands after 100 ticks", c.sms[2].n.Load(), n)
		}
		for _, h := range c.hosts {
			h.Tick()
		}
		c.process(t, budget)
	}
	st := c.hosts[0].EntryCache()
	if st.Misses == misses0 || c.stores[0].reads.Load() == reads0 {
		t.Fatalf("the leader caught the follower up without reading its store: %+v", st)
	}
	if r := c.hosts[2].SnapshotsRestored(); r != 0 {
		t.Fatalf("the follower restored %d snapshots", r)
	}
	for _, h := range c.hosts {
		if s := h.EntryCache(); s.Bytes > budget || s.Entries > budget/100 {
			t.Fatalf("node %d: entry cache %+v over its budget of %d bytes", h.NodeID(), s, budget)
		}
	}
	t.Logf("leader's entry cache: %+v; store reads %d", st, c.stores[0].reads.Load())
}

// A store that fails a read on the raft path stops the Host with the
// store's error, and nothing panics.
func TestEntryReadFailureStopsHost(t *testing.T) {
	c := newCacheCluster(t, 1, -1) // no cache: every read goes to the store
	h := c.hosts[0]
	if err := h.Campaign(1); err != nil {
		t.Fatal(err)
	}
	c.process(t, 0)
	boom := errors.New("disk on fire")
	c.stores[0].fail.Store(&boom)
	f := h.ProposeAsync(1, []byte("x"))
	c.process(t, 0)
	if err := h.Err(); !errors.Is(err, boom) {
		t.Fatalf("Host error %v, want the store's", err)
	}
	h.Stop()
	if _, err := f.Result(); !errors.Is(err, multiraft.ErrStopped) {
		t.Fatalf("proposal: %v, want ErrStopped", err)
	}
	if got := c.sms[0].n.Load(); got != 0 {
		t.Fatalf("applied %d commands it could not read", got)
	}
}
