package phase

import (
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestDelay(t *testing.T) {
	const p = 100 * time.Millisecond
	base := time.Unix(1_800_000_000, 0) // a multiple of every period below 1 s
	for _, c := range []struct {
		at   time.Duration
		want time.Duration
	}{
		{0, p}, // on a multiple: the next one, never now
		{time.Nanosecond, p - time.Nanosecond},
		{40 * time.Millisecond, 60 * time.Millisecond},
		{p - time.Nanosecond, time.Nanosecond},
		{3*p + 25*time.Millisecond, 75 * time.Millisecond},
	} {
		if got := delayFrom(base.Add(c.at), p, 0); got != c.want {
			t.Errorf("delayFrom(base+%v, %v, 0) = %v, want %v", c.at, p, got, c.want)
		}
		// The same from an origin 30 ms later.
		if got, want := delayFrom(base.Add(c.at+30*time.Millisecond), p, 30*time.Millisecond), c.want; got != want {
			t.Errorf("delayFrom(base+%v, %v, 30ms) = %v, want %v", c.at+30*time.Millisecond, p, got, want)
		}
	}
	if got := Delay(base, 0); got != 0 {
		t.Errorf("Delay with period 0 = %v, want 0", got)
	}
	// Before the origin (a clock set before 1970): still in (0, p].
	if got := delayFrom(time.Unix(0, 0), p, 40*time.Millisecond); got != 40*time.Millisecond {
		t.Errorf("delayFrom(epoch, %v, 40ms) = %v, want 40ms", p, got)
	}
}

// TestTickersInStep: two tickers of periods 20 and 40 ms, made at
// different moments, tick on the multiples of their periods since the
// process's origin, so every tick of the slower one falls on a tick of the
// faster.
func TestTickersInStep(t *testing.T) {
	const fast, slow = 20 * time.Millisecond, 40 * time.Millisecond
	a := NewTicker(fast)
	defer a.Stop()
	time.Sleep(7 * time.Millisecond)
	b := NewTicker(slow)
	defer b.Stop()
	// The time a ticker sends is the moment it was due, as a
	// time.Ticker's is; allow for the clock's reading of it.
	const slack = 2 * time.Millisecond
	off := func(v time.Time, p time.Duration) time.Duration {
		d := p - delayFrom(v, p, origin) // since the last multiple
		return min(d, p-d)
	}
	for i := 0; i < 4; i++ {
		select {
		case v := <-a.C:
			a.Next()
			if d := off(v, fast); d > slack {
				t.Fatalf("tick %v is %v off a multiple of %v", v, d, fast)
			}
		case v := <-b.C:
			b.Next()
			if d := off(v, slow); d > slack {
				t.Fatalf("tick %v is %v off a multiple of %v", v, d, slow)
			}
		case <-time.After(time.Second):
			t.Fatal("no tick in a second")
		}
	}
}
