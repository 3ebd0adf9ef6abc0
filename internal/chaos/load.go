package chaos

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Writer writes one key to one group and returns once the write is
// acknowledged (nil) or failed. Cluster and ProcCluster implement it.
type Writer interface {
	Put(ctx context.Context, group uint64, key, value string) error
}

// Write is one acknowledged write.
type Write struct {
	Group      uint64
	Key, Value string
	// At is when the acknowledgement arrived.
	At time.Time
}

// LoadConfig configures a Load. Zero fields take the defaults.
type LoadConfig struct {
	// Groups are the groups written to, round robin. Required.
	Groups []uint64
	// Workers is the number of concurrent writers. Default 8; limits
	// 1..1024.
	Workers int
	// OpTimeout bounds one write. Default 2s.
	OpTimeout time.Duration
	// Backoff is the pause after a failed write. Default 10ms.
	Backoff time.Duration
	// Prefix starts every key, so that several loads do not collide.
	// Default "k".
	Prefix string
}

// Load runs concurrent writers against a Writer until Stop, and keeps every
// acknowledged write for CheckAcked. Every key is written once, so an
// acknowledged write must stay readable with its value. Safe for
// concurrent use.
type Load struct {
	cfg    LoadConfig
	cancel context.CancelFunc
	wg     sync.WaitGroup
	seq    atomic.Uint64
	errs   atomic.Int64

	mu struct {
		sync.Mutex
		acked []Write
	}
}

// StartLoad starts cfg.Workers writers on w. Call Stop to end them.
func StartLoad(w Writer, cfg LoadConfig) (*Load, error) {
	if len(cfg.Groups) == 0 {
		return nil, fmt.Errorf("%w: LoadConfig.Groups is empty", ErrConfig)
	}
	if cfg.Workers == 0 {
		cfg.Workers = 8
	}
	if cfg.Workers < 1 || cfg.Workers > 1024 {
		return nil, fmt.Errorf("%w: LoadConfig.Workers %d outside 1..1024", ErrConfig, cfg.Workers)
	}
	if cfg.OpTimeout == 0 {
		cfg.OpTimeout = 2 * time.Second
	}
	if cfg.Backoff == 0 {
		cfg.Backoff = 10 * time.Millisecond
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "k"
	}
	ctx, cancel := context.WithCancel(context.Background())
	l := &Load{cfg: cfg, cancel: cancel}
	for range cfg.Workers {
		l.wg.Add(1)
		go l.run(ctx, w)
	}
	return l, nil
}

func (l *Load) run(ctx context.Context, w Writer) {
	defer l.wg.Done()
	for ctx.Err() == nil {
		n := l.seq.Add(1)
		g := l.cfg.Groups[int(n)%len(l.cfg.Groups)]
		key := fmt.Sprintf("%s%d", l.cfg.Prefix, n)
		val := fmt.Sprintf("v%d", n)
		octx, cancel := context.WithTimeout(ctx, l.cfg.OpTimeout)
		err := w.Put(octx, g, key, val)
		cancel()
		if err == nil {
			l.mu.Lock()
			l.mu.acked = append(l.mu.acked, Write{Group: g, Key: key, Value: val, At: time.Now()})
			l.mu.Unlock()
			continue
		}
		if ctx.Err() != nil {
			return
		}
		l.errs.Add(1)
		t := time.NewTimer(l.cfg.Backoff)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
}

// Stop ends the writers and waits for them. Writes in flight are abandoned
// (not acknowledged, so not checked).
func (l *Load) Stop() {
	l.cancel()
	l.wg.Wait()
}

// Acked returns a copy of the acknowledged writes so far.
func (l *Load) Acked() []Write {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Write(nil), l.mu.acked...)
}

// Count returns how many writes were acknowledged so far.
func (l *Load) Count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.mu.acked)
}

// Errors returns how many writes failed so far.
func (l *Load) Errors() int64 { return l.errs.Load() }

// CountBetween returns how many writes were acknowledged in [from, to).
func (l *Load) CountBetween(from, to time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, w := range l.mu.acked {
		if !w.At.Before(from) && w.At.Before(to) {
			n++
		}
	}
	return n
}
