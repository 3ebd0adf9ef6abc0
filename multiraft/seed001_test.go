package multiraft_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/mrtest"
	"github.com/flotilla/flotilla/multiraft"
	"github.com/flotilla/flotilla/storage"
	"github.com/flotilla/flotilla/transport"
)

// Seed 001: CockroachDB's multiraft loop blocked sending on its Events
// channel while the consumer, handling the previous event, blocked sending
// a callback into that same loop. The scenario: a consumer that calls back
// into the engine, synchronously, for every leader event it receives, while
// the engine keeps producing events. The engine must never wait for it.

// deadlockWait bounds every wait of the scenario: far above what a healthy
// run needs (milliseconds), so that exceeding it means a deadlock.
const deadlockWait = 2 * time.Second

var errDeadlock = errors.New("deadlock: the consumer's call into the engine never returned")

// errAllSeen: the driver is done and no more events come.
var errAllSeen = errors.New("every event seen")

// consumeWithCallbacks handles want events, calling back into the engine
// for each before it asks for the next.
func consumeWithCallbacks(ctx context.Context, want int,
	next func(context.Context) ([]multiraft.LeaderEvent, error),
	callIn func(context.Context, multiraft.LeaderEvent) error) error {
	seen := 0
	for seen < want {
		evs, err := next(ctx)
		if err != nil {
			return fmt.Errorf("after %d events: %w", seen, err)
		}
		for _, ev := range evs {
			cctx, cancel := context.WithTimeout(ctx, deadlockWait)
			err := callIn(cctx, ev)
			cancel()
			if errors.Is(err, context.DeadlineExceeded) {
				return fmt.Errorf("after %d events: %w", seen, errDeadlock)
			}
			seen++
		}
	}
	return nil
}

func TestSeed001ConsumerCallbacksNeverDeadlock(t *testing.T) {
	t.Run("flotilla", func(t *testing.T) {
		if err := runSeed001Flotilla(t); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("naive", func(t *testing.T) {
		err := runSeed001Naive()
		if !errors.Is(err, errDeadlock) {
			t.Fatalf("the naive engine passed the scenario (err %v): the test cannot tell a deadlock", err)
		}
		t.Logf("naive engine, as expected: %v", err)
	})
}

func runSeed001Flotilla(t *testing.T) error {
	const groups, rounds = 4, 6
	net := transport.NewMemNetwork(transport.MemOptions{})
	hosts := map[uint64]*multiraft.Host{}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	members := []uint64{1, 2, 3}
	for _, id := range members {
		tr := net.Transport(id)
		h, err := multiraft.NewHost(multiraft.Config{
			NodeID: id, Store: storage.NewMem(), Transport: tr,
			TickInterval: 5 * time.Millisecond, Logger: quiet,
		})
		if err != nil {
			return err
		}
		hosts[id] = h
		defer tr.Close()
		defer h.Stop()
		for g := uint64(1); g <= groups; g++ {
			if err := h.StartGroup(g, members, mrtest.NewKV()); err != nil {
				return err
			}
		}
	}
	sub := hosts[1].Subscribe()
	defer sub.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 4*deadlockWait)
	defer cancel()

	// The driver moves every group's leadership around, producing a stream
	// of leader events on every node.
	var wg sync.WaitGroup
	driverErr := make(chan error, 1)
	driverDone := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(driverDone)
		for g := uint64(1); g <= groups; g++ {
			if err := hosts[1].Campaign(g); err != nil {
				driverErr <- err
				return
			}
		}
		for r := 0; r < rounds; r++ {
			for g := uint64(1); g <= groups; g++ {
				lead := waitLeader(ctx, hosts[1], g)
				if lead == 0 {
					driverErr <- fmt.Errorf("group %d has no leader", g)
					return
				}
				to := lead%3 + 1
				if err := hosts[lead].TransferLeadership(ctx, g, to); err != nil && ctx.Err() != nil {
					driverErr <- err
					return
				}
			}
		}
		driverErr <- nil
	}()

	// The consumer calls into the engine (a proposal) for every event, up
	// to one per transfer; it stops earlier once the driver is done and no
	// event came for a while: events may be fewer than transfers (a
	// transfer asked of a node whose view of the leader is stale does
	// nothing; a subscriber that falls behind gets the latest leader per
	// group). Under -race, one CI run saw 16 of 24 and waited for the rest
	// until its deadline.
	var calls, answered int
	err := consumeWithCallbacks(ctx, groups*rounds,
		func(ctx context.Context) ([]multiraft.LeaderEvent, error) {
			for {
				wctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
				b, err := sub.Next(wctx)
				quiet := wctx.Err() != nil && ctx.Err() == nil
				cancel()
				if !quiet {
					return b.Events, err // an event, or an error that is one
				}
				select {
				case <-driverDone:
					return nil, errAllSeen
				default:
				}
			}
		},
		func(ctx context.Context, ev multiraft.LeaderEvent) error {
			_, err := hosts[1].Propose(ctx, ev.Group, []byte("set seen yes"))
			calls++
			if err == nil {
				answered++
			}
			return err // ErrNoLeader or ErrDropped during a transfer is an answer
		})
	if errors.Is(err, errAllSeen) {
		err = nil
	}
	if err != nil {
		cancel()
		wg.Wait()
		return err
	}
	wg.Wait()
	t.Logf("consumer made %d calls into the engine, %d applied", calls, answered)
	if answered == 0 {
		return errors.New("no callback was applied: the scenario did not exercise the engine")
	}
	return <-driverErr
}

// waitLeader polls until node sees a leader of group, or ctx ends.
func waitLeader(ctx context.Context, h *multiraft.Host, group uint64) uint64 {
	for {
		if l, _, err := h.Leader(group); err == nil && l != 0 {
			return l
		}
		select {
		case <-ctx.Done():
			return 0
		case <-time.After(time.Millisecond):
		}
	}
}

// naiveEngine is the loop of the seed: it hands each event to the
// consumer on an unbuffered channel, and runs the consumer's callbacks,
// which arrive on a channel into the same loop.
type naiveEngine struct {
	produced  chan multiraft.LeaderEvent
	events    chan multiraft.LeaderEvent
	callbacks chan func()
	stop      chan struct{}
}

func (e *naiveEngine) loop() {
	for {
		select {
		case ev := <-e.produced:
			select {
			case e.events <- ev: // blocks until the consumer takes it
			case <-e.stop:
				return
			}
		case cb := <-e.callbacks:
			cb()
		case <-e.stop:
			return
		}
	}
}

func runSeed001Naive() error {
	const n = 64
	e := &naiveEngine{
		produced:  make(chan multiraft.LeaderEvent, n),
		events:    make(chan multiraft.LeaderEvent),
		callbacks: make(chan func()),
		stop:      make(chan struct{}),
	}
	for i := 0; i < n; i++ {
		e.produced <- multiraft.LeaderEvent{Group: uint64(i%4 + 1), Leader: uint64(i%3 + 1), Term: uint64(i + 1)}
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); e.loop() }()
	defer func() { close(e.stop); wg.Wait() }()
	ctx, cancel := context.WithTimeout(context.Background(), 4*deadlockWait)
	defer cancel()
	return consumeWithCallbacks(ctx, n,
		func(ctx context.Context) ([]multiraft.LeaderEvent, error) {
			select {
			case ev := <-e.events:
				return []multiraft.LeaderEvent{ev}, nil
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		},
		func(ctx context.Context, _ multiraft.LeaderEvent) error {
			done := make(chan struct{})
			select {
			case e.callbacks <- func() { close(done) }:
			case <-ctx.Done():
				return ctx.Err()
			}
			select {
			case <-done:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
}
