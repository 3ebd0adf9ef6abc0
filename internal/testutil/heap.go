package testutil

import (
	"runtime"
	"runtime/debug"
	"sync/atomic"
	"time"
)

// HeapGrowth runs fn and returns how far the heap in use rose above where
// it was before (after a GC), sampled every 10ms while fn runs. Tests use
// it to show that memory stays flat in the size of what fn moves. fn may
// end the test (t.Fatal): the sampler stops all the same. The collector
// runs at GOGC 25 meanwhile, so that garbage waiting for a collection
// counts little: at the default 100, a restore that holds 15 MiB grew the
// heap by 40 MiB in a CI run whose other packages loaded the machine (the
// collector falls behind an allocating loop it shares two cores with).
func HeapGrowth(fn func()) (grew int64) {
	defer debug.SetGCPercent(debug.SetGCPercent(25))
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse
	var peak atomic.Uint64
	peak.Store(base)
	stop, done := make(chan struct{}), make(chan struct{})
	go func() { // heapSampler: one per call, gone when it returns
		defer close(done)
		for {
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			if m.HeapInuse > peak.Load() {
				peak.Store(m.HeapInuse)
			}
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	defer func() {
		close(stop)
		<-done
		grew = int64(peak.Load()) - int64(base)
	}()
	fn()
	return 0
}
