package multiraft

import (
	"context"
	"sort"
	"sync"
	"sync/atomic"
)

// LeaderEvent says who leads a group. Leader 0 means the group has no known
// leader (an election is under way, or this replica lost contact).
type LeaderEvent struct {
	Group  uint64
	Leader uint64
	Term   uint64
}

// LeaderBatch is what one Subscription.Next returns.
type LeaderBatch struct {
	// Events are in the order the engine saw them.
	Events []LeaderEvent
	// Skipped is true when the subscriber fell behind and intermediate
	// events were collapsed: Events then holds the latest state of each
	// group that changed, and nothing older.
	Skipped bool
}

// eventHub fans leader events out to subscribers without ever waiting for
// one: each subscriber has a bounded mailbox; a full mailbox collapses to
// the latest state per group and marks the skip.
//
// Lock order: eventHub.mu < Subscription.mu.
type eventHub struct {
	mailboxCap int
	// collapsed counts events a slow subscriber never saw individually
	// (law 4: what is dropped is counted).
	collapsed atomic.Uint64
	mu        struct {
		sync.Mutex
		latest map[uint64]LeaderEvent
		subs   map[*Subscription]struct{}
	}
}

func newEventHub(cap int) *eventHub {
	h := &eventHub{mailboxCap: cap}
	h.mu.latest = make(map[uint64]LeaderEvent)
	h.mu.subs = make(map[*Subscription]struct{})
	return h
}

// Subscription receives leader events. Create it with Host.Subscribe; any
// number may exist. Safe for concurrent use, though one consumer is usual.
type Subscription struct {
	hub    *eventHub
	notify chan struct{}
	mu     struct {
		sync.Mutex
		events  []LeaderEvent
		skipped bool
		closed  bool
	}
}

func (h *eventHub) subscribe() *Subscription {
	s := &Subscription{hub: h, notify: make(chan struct{}, 1)}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, e := range h.mu.latest {
		s.mu.events = append(s.mu.events, e)
	}
	sortEvents(s.mu.events)
	h.mu.subs[s] = struct{}{}
	if len(s.mu.events) > 0 {
		s.notify <- struct{}{}
	}
	return s
}

// publish hands events to every subscriber. Never blocks.
func (h *eventHub) publish(evs []LeaderEvent) {
	if len(evs) == 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, e := range evs {
		h.mu.latest[e.Group] = e
	}
	for s := range h.mu.subs {
		h.collapsed.Add(uint64(s.deliver(evs, h.mailboxCap)))
	}
}

func (h *eventHub) forget(group uint64) {
	h.mu.Lock()
	delete(h.mu.latest, group)
	h.mu.Unlock()
}

func (h *eventHub) closeAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.mu.subs {
		s.mu.Lock()
		s.closeLocked()
		s.mu.Unlock()
		delete(h.mu.subs, s)
	}
}

// deliver appends evs to the mailbox and returns how many events it
// collapsed away to stay within cap.
func (s *Subscription) deliver(evs []LeaderEvent, cap int) int {
	s.mu.Lock()
	s.mu.events = append(s.mu.events, evs...)
	dropped := 0
	if n := len(s.mu.events); n > cap {
		s.mu.events = collapse(s.mu.events)
		s.mu.skipped = true
		dropped = n - len(s.mu.events)
	}
	s.mu.Unlock()
	s.Wake()
	return dropped
}

// collapse keeps the last event of each group, in the order of those last
// events.
func collapse(evs []LeaderEvent) []LeaderEvent {
	last := make(map[uint64]int, len(evs))
	for i, e := range evs {
		last[e.Group] = i
	}
	out := make([]LeaderEvent, 0, len(last))
	for i, e := range evs {
		if last[e.Group] == i {
			out = append(out, e)
		}
	}
	return out
}

// Next returns the events that arrived since the last call, waiting for at
// least one. It returns ctx's error when ctx ends first, and ErrStopped once
// the subscription is closed and drained.
func (s *Subscription) Next(ctx context.Context) (LeaderBatch, error) {
	for {
		if b, ok, err := s.TryNext(); ok || err != nil {
			return b, err
		}
		select {
		case <-s.notify:
		case <-ctx.Done():
			return LeaderBatch{}, ctx.Err()
		}
	}
}

// Ready returns a channel that receives when events may be waiting, for a
// loop that waits on other channels too: after a receive, TryNext takes
// the events (there may be none: a receive can be spurious). Next and
// Ready share the channel; one goroutine uses a Subscription.
func (s *Subscription) Ready() <-chan struct{} { return s.notify }

// Wake makes Ready receive once more (at most one wake is pending): what
// a delivery or the close does, and what a loop that took events and must
// look again (TryNext) before it waits does. Never blocks.
func (s *Subscription) Wake() {
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// TryNext returns the events that arrived since the last call, without
// waiting: ok is false when there are none. It returns ErrStopped once the
// subscription is closed and drained. The caller owns the batch.
func (s *Subscription) TryNext() (b LeaderBatch, ok bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.mu.events) > 0 {
		b = LeaderBatch{Events: s.mu.events, Skipped: s.mu.skipped}
		s.mu.events, s.mu.skipped = nil, false
		return b, true, nil
	}
	if s.mu.closed {
		return LeaderBatch{}, false, ErrStopped
	}
	return LeaderBatch{}, false, nil
}

// Close ends the subscription. Next returns ErrStopped afterwards.
func (s *Subscription) Close() {
	s.hub.mu.Lock()
	delete(s.hub.mu.subs, s)
	s.hub.mu.Unlock()
	s.mu.Lock()
	s.closeLocked()
	s.mu.Unlock()
}

// closeLocked marks the subscription closed. s.mu must be held.
func (s *Subscription) closeLocked() {
	if s.mu.closed {
		return
	}
	s.mu.closed = true
	s.Wake()
}

func sortEvents(evs []LeaderEvent) {
	sort.Slice(evs, func(i, j int) bool { return evs[i].Group < evs[j].Group })
}
