package multiraft_test

import (
	"errors"
	"fmt"
	"sync/atomic"
	"testing"

	"go.etcd.io/raft/v3/raftpb"

	"github.com/flotilla/flotilla/internal/mrtest"
	"github.com/flotilla/flotilla/multiraft"
	"github.com/flotilla/flotilla/storage"
	"github.com/flotilla/flotilla/transport"
)

// failingReads is a store whose Entries fails once fail is set.
type failingReads struct {
	storage.Store
	fail atomic.Bool
}

func (s *failingReads) Entries(group, lo, hi, maxBytes uint64) ([]raftpb.Entry, error) {
	if s.fail.Load() {
		return nil, errors.New("injected read error")
	}
	return s.Store.Entries(group, lo, hi, maxBytes)
}

// TestEntriesReadErrorStopsHostWithoutPanic: a store that fails a read
// stops the Host (fatal), and memLog.Entries then returns no entry and no
// error, which raft takes for a size limit. raft's scan of the unapplied
// committed entries (hasUnappliedConfChanges, on every campaign of a
// replica with applied < committed) does not: "got 0 entries" is an error
// there, and raft panics. A restarted replica that must apply its log
// again, whose entries the cache lacks (here it is off; in production,
// evicted), and a read error, crashed the process instead of stopping the
// Host; the cycle now ends that panic (processCycle) since the Host is
// stopping.
func TestEntriesReadErrorStopsHostWithoutPanic(t *testing.T) {
	mem := storage.NewMem()
	net := transport.NewMemNetwork(transport.MemOptions{Manual: true})
	drain := func(h *multiraft.Host) {
		for i := 0; i < 100 && h.Process()+net.Deliver() > 0; i++ {
		}
	}
	h1, err := multiraft.NewHost(multiraft.Config{NodeID: 1, Store: mem, Transport: net.Transport(1), Manual: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := h1.StartGroup(1, []uint64{1}, mrtest.NewKV()); err != nil {
		t.Fatal(err)
	}
	if err := h1.Campaign(1); err != nil {
		t.Fatal(err)
	}
	drain(h1)
	for i := 0; i < 5; i++ {
		f := h1.ProposeAsync(1, []byte(fmt.Sprintf("set k%d v", i)))
		drain(h1)
		if _, err := f.Result(); err != nil {
			t.Fatal(err)
		}
	}
	h1.Stop()
	net.Forget(1)

	st := &failingReads{Store: mem}
	h2, err := multiraft.NewHost(multiraft.Config{NodeID: 1, Store: st, Transport: net.Transport(1), Manual: true,
		EntryCacheBytes: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer h2.Stop()
	// KV applies nothing durably: the restart applies the log again.
	if err := h2.StartGroup(1, []uint64{1}, mrtest.NewKV()); err != nil {
		t.Fatal(err)
	}
	st.fail.Store(true)
	if err := h2.Campaign(1); err != nil {
		t.Fatal(err)
	}
	func() {
		defer func() {
			if r := recover(); r != nil {
				t.Fatalf("a store read error during a campaign panicked (the process would crash) instead of stopping the Host: %v", r)
			}
		}()
		h2.Process()
	}()
	if h2.Err() == nil {
		t.Fatal("the read error did not stop the Host")
	}
}
