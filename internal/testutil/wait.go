// Package testutil holds what the test suites of several packages share.
package testutil

import (
	"testing"
	"time"
)

// WaitFor polls cond every 10ms until it returns nil, and fails the test
// with cond's last error if that has not happened within d. Tests use it
// instead of sleeping: the wait ends as soon as the outcome is there.
func WaitFor(t testing.TB, d time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, d, err)
		}
		<-tick.C
	}
}
