package kv

import (
	"bytes"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
)

// Size and load of a range, for the decisions to split and merge (package
// ranges) and for operators (flotilla ranges).

// Ops returns how many commands this replica applied and queries it
// answered since it started: the range's load, sampled by package ranges.
func (s *StateMachine) Ops() uint64 { return s.ops.Load() }

// WrittenBytes returns the bytes of keys and values this replica's applied
// puts wrote since it started (overwrites counted again): a cheap signal
// that the range may have grown, before SpanBytes measures it.
func (s *StateMachine) WrittenBytes() uint64 { return s.written.Load() }

// SpanBytes measures the range's user data: the bytes of its keys and
// values, held writes included. Safe to call from any goroutine; it reads
// the whole span.
func (s *StateMachine) SpanBytes() (uint64, error) {
	var n uint64
	err := s.walk(func(key []byte, size int) bool {
		n += uint64(size)
		return true
	})
	return n, err
}

// SplitKey returns the key that halves the range's data by bytes; false if
// the range has fewer than two keys.
func (s *StateMachine) SplitKey() ([]byte, bool, error) {
	total, err := s.SpanBytes()
	if err != nil || total == 0 {
		return nil, false, err
	}
	var n uint64
	var split []byte
	first := true
	err = s.walk(func(key []byte, size int) bool {
		if !first && n >= total/2 {
			split = append([]byte(nil), key...)
			return false
		}
		first = false
		n += uint64(size)
		return true
	})
	return split, split != nil, err
}

// walk calls fn with every key of the range and the size of its key and
// value, in key order, as of one instant (held writes over Pebble), until
// fn returns false.
func (s *StateMachine) walk(fn func(key []byte, size int) bool) error {
	desc := s.desc.Load()
	if desc == nil {
		return nil
	}
	lower, upper := globalBounds(kindData, desc.Start, desc.End)
	held, it, err := s.dirty.view(desc.Start, desc.End, func() (*pebble.Iterator, error) {
		return s.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	})
	if err != nil {
		return err
	}
	defer it.Close()
	for valid := it.First(); ; {
		var key []byte
		size := 0
		switch {
		case len(held) > 0 && (!valid || held[0].key <= string(it.Key()[1:])):
			if valid && held[0].key == string(it.Key()[1:]) {
				valid = it.Next()
			}
			h := held[0]
			held = held[1:]
			if h.stored == nil {
				continue // deleted
			}
			key, size = []byte(h.key), len(h.key)+valueLen(h.stored)
		case valid:
			key, size = it.Key()[1:], len(it.Key())-1+valueLen(it.Value())
			if !fn(key, size) {
				return nil
			}
			valid = it.Next()
			continue
		default:
			return it.Error()
		}
		if !fn(key, size) {
			return nil
		}
	}
}

// loadSampleSize is how many keys of recent requests a range keeps to pick
// a load-based split key.
const loadSampleSize = 128

// loadSampler keeps a uniform sample (reservoir) of the keys of the
// commands and queries a replica served since the last reset, so that a
// range hot with requests can be split where its load halves. mu is a
// leaf. The random source is seeded by the range ID, so that the
// simulation replays.
type loadSampler struct {
	seen atomic.Uint64 // requests offered; every eighth is looked at
	mu   sync.Mutex
	keys [][]byte // guarded by mu
	rng  uint64   // guarded by mu
	took uint64   // keys looked at since the reset; guarded by mu
}

// sample offers key. Every eighth request only is looked at: a sample of
// the sample, cheap on the apply path (one atomic add for the others).
func (l *loadSampler) sample(key []byte) {
	if len(key) == 0 || l.seen.Add(1)%8 != 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.took++
	n := l.took
	if len(l.keys) < loadSampleSize {
		l.keys = append(l.keys, append([]byte(nil), key...))
		return
	}
	// xorshift64*
	l.rng ^= l.rng >> 12
	l.rng ^= l.rng << 25
	l.rng ^= l.rng >> 27
	if i := (l.rng * 2685821657736338717) % n; i < loadSampleSize {
		l.keys[i] = append(l.keys[i][:0], key...)
	}
}

// LoadSplitKey returns the key that halves the requests the replica served
// since the last call (the median of its sample), and resets the sample;
// false if there is no such key inside the span.
func (s *StateMachine) LoadSplitKey() ([]byte, bool) {
	l := &s.sampler
	l.mu.Lock()
	keys := l.keys
	l.keys, l.took = nil, 0
	l.mu.Unlock()
	desc := s.desc.Load()
	if desc == nil || len(keys) < 8 {
		return nil, false
	}
	slices.SortFunc(keys, bytes.Compare)
	k := keys[len(keys)/2]
	if !desc.Contains(k) || bytes.Equal(k, desc.Start) {
		return nil, false
	}
	return k, true
}
