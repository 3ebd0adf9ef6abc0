package server

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/flotilla/flotilla/client"
)

// bgWriter puts keys through a client in the background, one at a time,
// until halted, and keeps what was acknowledged and what failed.
type bgWriter struct {
	stop chan struct{}
	wg   sync.WaitGroup
	mu   struct {
		sync.Mutex
		acked map[string]string // key → value acknowledged
		errs  []error
	}
}

// startWriter starts writing: put i is key(i) = fmt.Sprint(i).
func startWriter(cl *client.Client, key func(i int) string) *bgWriter {
	w := &bgWriter{stop: make(chan struct{})}
	w.mu.acked = map[string]string{}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		for i := 0; ; i++ {
			select {
			case <-w.stop:
				return
			default:
			}
			k, v := key(i), fmt.Sprint(i)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_, err := cl.Put(ctx, []byte(k), []byte(v))
			cancel()
			w.mu.Lock()
			if err != nil {
				w.mu.errs = append(w.mu.errs, err)
			} else {
				w.mu.acked[k] = v
			}
			w.mu.Unlock()
		}
	}()
	return w
}

// acked returns how many writes were acknowledged so far.
func (w *bgWriter) acked() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.mu.acked)
}

// waitMore waits until n more writes than now are acknowledged.
func (w *bgWriter) waitMore(t *testing.T, n int, what string) {
	t.Helper()
	target := w.acked() + n
	waitFor(t, 20*time.Second, what, func() error {
		if got := w.acked(); got < target {
			return fmt.Errorf("%d of %d writes acknowledged", got, target)
		}
		return nil
	})
}

// halt stops the writer, fails t if any write failed, and returns the
// acknowledged writes.
func (w *bgWriter) halt(t *testing.T) map[string]string {
	t.Helper()
	close(w.stop)
	w.wg.Wait()
	if len(w.mu.errs) > 0 {
		t.Fatalf("%d writes failed, the first: %v", len(w.mu.errs), w.mu.errs[0])
	}
	if len(w.mu.acked) == 0 {
		t.Fatal("no write acknowledged")
	}
	return w.mu.acked
}
