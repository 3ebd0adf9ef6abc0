package server

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/client"
	"github.com/flotilla/flotilla/kv"
)

// watched collects a watcher's events, by key, until it holds want
// events in all.
func watched(t *testing.T, w *client.Watcher, byKey map[string][]string, want int) (n int, nodes []uint64) {
	t.Helper()
	ctx := ctxT(t)
	for total(byKey) < want {
		r, err := w.Next(ctx)
		if err != nil {
			t.Fatalf("after %d of %d events: %v", total(byKey), want, err)
		}
		for _, e := range r.Events {
			s := fmt.Sprintf("put %s@%d", e.KV.Value, e.KV.Revision)
			if e.Delete {
				s = fmt.Sprintf("delete@%d", e.KV.Revision)
			}
			byKey[string(e.KV.Key)] = append(byKey[string(e.KV.Key)], s)
		}
		if !slices.Contains(nodes, r.Node) {
			nodes = append(nodes, r.Node)
		}
	}
	return total(byKey), nodes
}

func total(m map[string][]string) int {
	n := 0
	for _, v := range m {
		n += len(v)
	}
	return n
}

// TestWatchAcrossRangesNodesAndSplits: a watch of the whole keyspace from
// a client delivers every acknowledged write once, in order for each key,
// from writes to every range, through a split of a range under it and the
// loss of the node that served it (it goes on from its token elsewhere).
// A watch from a token on another node gets the same events; reads at
// past revisions see the values of then, and one past the range's
// revision is refused.
func TestWatchAcrossRangesNodesAndSplits(t *testing.T) {
	c := startCluster(t, 3, 4) // ranges cut at "40", "80", "c0"
	ctx := ctxT(t)
	cl := c.client()
	// Served by node 3 first: its client names node 3 first, then 2.
	only3, err := client.New(ctx, client.Config{Endpoints: []string{c.nodes[3].ClientAddr(), c.nodes[2].ClientAddr()}})
	if err != nil {
		t.Fatal(err)
	}
	defer only3.Close()
	w, err := only3.Watch(ctx, client.WatchSpec{Progress: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	// The first response says the watch is set up, on node 3.
	if r, err := w.Next(ctx); err != nil || !r.Created || r.Node != 3 {
		t.Fatalf("first response %+v %v, want the set-up answer of node 3", r, err)
	}
	want := map[string][]string{}
	put := func(key, val string) uint64 {
		t.Helper()
		rev, err := cl.Put(ctx, []byte(key), []byte(val))
		if err != nil {
			t.Fatal(err)
		}
		want[key] = append(want[key], fmt.Sprintf("put %s@%d", val, rev))
		return rev
	}
	keys := []string{"1a", "5b", "9c", "dd", "1e"}
	var revs []uint64
	for i := 0; i < 20; i++ {
		revs = append(revs, put(keys[i%len(keys)], fmt.Sprintf("v%d", i)))
	}
	if ok, err := cl.Delete(ctx, []byte("9c")); err != nil || !ok {
		t.Fatal(err)
	}
	got := map[string][]string{}
	watched(t, w, got, 21)
	// The delete's revision: read it from the event.
	want["9c"] = append(want["9c"], got["9c"][len(got["9c"])-1])
	if !strings.HasPrefix(got["9c"][len(got["9c"])-1], "delete@") {
		t.Fatalf("9c's last event %q, want a delete", got["9c"][len(got["9c"])-1])
	}
	for k := range want {
		if !slices.Equal(got[k], want[k]) {
			t.Fatalf("key %s: events %v, want %v", k, got[k], want[k])
		}
	}

	// Reads at past revisions: 1a as of its first write is v0.
	kv0, err := cl.Get(ctx, []byte("1a"), client.AtRevision(revs[0]))
	if err != nil || string(kv0.Value) != "v0" {
		t.Fatalf("1a at revision %d: %v %v, want v0", revs[0], kv0, err)
	}
	kvs, _, err := cl.ScanRange(ctx, []byte("1"), []byte("2"), 0, client.AtRevision(revs[0]))
	if err != nil || len(kvs) != 1 || string(kvs[0].Value) != "v0" {
		t.Fatalf("scan of 1.. at revision %d: %v %v, want 1a=v0 only", revs[0], kvs, err)
	}
	if _, err := cl.Get(ctx, []byte("1a"), client.AtRevision(1<<40)); !errors.Is(err, client.ErrFutureRevision) {
		t.Fatalf("read past the range's revision: %v, want ErrFutureRevision", err)
	}

	// A split of a watched range, then writes to both halves.
	admin := c.client()
	if _, _, err := admin.Split(ctx, []byte("5")); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		put([]string{"4x", "5y", "6z"}[i%3], fmt.Sprintf("s%d", i))
	}
	watched(t, w, got, total(want))
	r, err := w.Next(ctx) // a progress notification: its token is past every event
	if err != nil {
		t.Fatal(err)
	}
	token := r.Token
	for k := range want {
		if !slices.Equal(got[k], want[k]) {
			t.Fatalf("after the split, key %s: events %v, want %v", k, got[k], want[k])
		}
	}

	// Node 3 goes: the watch goes on from node 2, without a gap or a
	// repeat.
	c.shutdown(3)
	mark := total(want)
	after := map[string][]string{}
	for i := 0; i < 10; i++ {
		k := keys[i%len(keys)]
		before := len(want[k])
		put(k, fmt.Sprintf("f%d", i))
		after[k] = append(after[k], want[k][before:]...)
	}
	_, nodes := watched(t, w, got, total(want))
	if !slices.Contains(nodes, 2) {
		t.Fatalf("events after node 3 went came from nodes %v, want node 2", nodes)
	}
	for k := range want {
		if !slices.Equal(got[k], want[k]) {
			t.Fatalf("after node 3 went, key %s: events %v, want %v", k, got[k], want[k])
		}
	}

	// A watch from the token taken before node 3 went, on node 1, gets
	// exactly the events after it.
	kvc := rawKV(t, c.nodes[1].ClientAddr())
	stream, err := kvc.Watch(ctx, &api.WatchRequest{ResumeToken: token})
	if err != nil {
		t.Fatal(err)
	}
	resumed := map[string][]string{}
	for total(resumed) < total(want)-mark {
		r, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range r.Events {
			resumed[string(e.Kv.Key)] = append(resumed[string(e.Kv.Key)], fmt.Sprintf("put %s@%d", e.Kv.Value, e.Kv.Revision))
		}
	}
	for k := range after {
		if !slices.Equal(resumed[k], after[k]) {
			t.Fatalf("resumed watch, key %s: events %v, want %v", k, resumed[k], after[k])
		}
	}

	// Bad requests: two things to watch, a bad token.
	for _, req := range []*api.WatchRequest{{Key: []byte("a"), Prefix: []byte("b")}, {ResumeToken: []byte("junk")}} {
		s, err := kvc.Watch(ctx, req)
		if err == nil {
			_, err = s.Recv()
		}
		if status.Code(err) != codes.InvalidArgument {
			t.Fatalf("watch %v: %v, want InvalidArgument", req, err)
		}
	}
}

// TestWatchCompactedAndReadBelowFloor: with a retention of 20 revisions, a
// read and a watch from before the floor fail with ErrCompacted, naming
// the floor.
func TestWatchCompactedAndReadBelowFloor(t *testing.T) {
	c := startClusterWith(t, 3, 1, func(cfg *Config) { cfg.HistoryRetention = kv.Retention{Revisions: 20} })
	ctx := ctxT(t)
	cl := c.client()
	// The one range is the meta range too: the nodes' records (their
	// incarnations) take revisions of their own, so each put's is kept.
	revs := make([]uint64, 60)
	for i := range revs {
		rev, err := cl.Put(ctx, []byte("k"), []byte(fmt.Sprint(i)))
		if err != nil {
			t.Fatal(err)
		}
		revs[i] = rev
	}
	_, err := cl.Get(ctx, []byte("k"), client.AtRevision(2))
	if !errors.Is(err, client.ErrCompacted) || !strings.Contains(err.Error(), "kept from revision") {
		t.Fatalf("read at 2 with 60 revisions and a retention of 20: %v, want ErrCompacted naming the floor", err)
	}
	got, err := cl.Get(ctx, []byte("k"), client.AtRevision(revs[49]))
	if err != nil || string(got.Value) != "49" {
		t.Fatalf("read at %d (put 49's): %v %v, want 49", revs[49], got, err)
	}
	w, err := cl.Watch(ctx, client.WatchSpec{Key: []byte("k"), Revision: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	// The first response says the watch is set up; then it fails.
	if r, err := w.Next(ctx); err != nil || !r.Created {
		t.Fatalf("watch from 2: first response %+v %v, want the set-up answer", r, err)
	}
	if _, err := w.Next(ctx); !errors.Is(err, client.ErrCompacted) {
		t.Fatalf("watch from 2: %v, want ErrCompacted", err)
	}
	w2, err := cl.Watch(ctx, client.WatchSpec{Key: []byte("k"), Revision: revs[54], PrevKV: true})
	if err != nil {
		t.Fatal(err)
	}
	defer w2.Close()
	if _, err := w2.Next(ctx); err != nil {
		t.Fatal(err)
	}
	r, err := w2.Next(ctx)
	if err != nil || len(r.Events) == 0 || r.Events[0].KV.Revision != revs[54] || r.Events[0].Prev == nil || string(r.Events[0].Prev.Value) != "53" {
		t.Fatalf("watch from %d (put 54's) with prev_kv: %+v %v, want put 54 after 53", revs[54], r, err)
	}
}

// TestWatchLeavesCutOffNode: a watch served by a node cut off from the
// others (its links dropped both ways, its process alive and answering)
// moves: the node ends it once its range has had no leader there for three
// election timeouts, and the client goes on from its token on another
// node, getting every write. The negative control, in the same run: a
// node that keeps serving the watch regardless (the naive server) leaves
// its watcher stalled with healthy-looking progress for as long as the cut
// lasts.
func TestWatchLeavesCutOffNode(t *testing.T) {
	for _, naive := range []bool{false, true} {
		t.Run(map[bool]string{false: "leader check", true: "naive"}[naive], func(t *testing.T) {
			c := startCluster(t, 3, 1)
			ctx := ctxT(t)
			c.nodes[3].watchIgnoreLeaders = naive
			writer := c.client()
			// The watcher's client tries node 3 first.
			wcl, err := client.New(ctx, client.Config{Endpoints: []string{c.nodes[3].ClientAddr(), c.nodes[1].ClientAddr(), c.nodes[2].ClientAddr()}})
			if err != nil {
				t.Fatal(err)
			}
			defer wcl.Close()
			w, err := wcl.Watch(ctx, client.WatchSpec{Prefix: []byte("c/"), Progress: 100 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			if r, err := w.Next(ctx); err != nil || r.Node != 3 {
				t.Fatalf("first response %+v %v, want one from node 3", r, err)
			}
			for _, other := range []uint64{1, 2} {
				c.nodes[3].Faults().SetEgressDropped(other, true)
				c.nodes[other].Faults().SetEgressDropped(3, true)
			}
			defer func() {
				for _, other := range []uint64{1, 2} {
					c.nodes[3].Faults().SetEgressDropped(other, false)
					c.nodes[other].Faults().SetEgressDropped(3, false)
				}
			}()
			for i := 0; i < 5; i++ {
				if _, err := writer.Put(ctx, []byte(fmt.Sprintf("c/%d", i)), []byte("v")); err != nil {
					t.Fatal(err)
				}
			}
			// Every put is acknowledged: the watcher has 5 s to get them,
			// eight times the leaderless bound (3 election timeouts of
			// 200 ms here).
			wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			got, from := 0, uint64(0)
			for got < 5 {
				r, err := w.Next(wctx)
				if err != nil {
					break
				}
				got += len(r.Events)
				if len(r.Events) > 0 {
					from = r.Node
				}
			}
			switch {
			case !naive && got != 5:
				t.Fatalf("the watcher got %d of 5 writes made while its node was cut off", got)
			case !naive && from == 3:
				t.Fatalf("the writes came from node 3, which was cut off")
			case naive && got != 0:
				t.Fatalf("negative control: the naive node's watcher got %d writes; the test would not tell", got)
			}
		})
	}
}
