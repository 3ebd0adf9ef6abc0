package sim

import (
	"log/slog"
	"os"
	"strconv"
	"testing"
)

// TestReplaySeed replays one seed with the engine's and the ranges' logs
// on stderr and the event trace in $SIM_TRACE (default
// /tmp/simtrace.txt), to debug a failing seed:
//
//	SIM_SEED=1620 [SIM_FAULTS=split,merge] [SIM_GROUPS=8 SIM_KEYS=2] go test -run TestReplaySeed -v ./internal/sim
//
// Skipped unless SIM_SEED is set.
func TestReplaySeed(t *testing.T) {
	seed, err := strconv.ParseUint(os.Getenv("SIM_SEED"), 10, 64)
	if err != nil {
		t.Skip("SIM_SEED not set")
	}
	f, err := ParseFaults(os.Getenv("SIM_FAULTS"))
	if err != nil {
		t.Fatal(err)
	}
	path := os.Getenv("SIM_TRACE")
	if path == "" {
		path = "/tmp/simtrace.txt"
	}
	tr, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	debugLogger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	debugHook = func(s *sim) { t.Log(s.describeMeta()) }
	defer func() { debugLogger, debugHook = slog.New(slog.DiscardHandler), nil }()
	cfg := Config{Seed: seed, Faults: f, Trace: tr}
	cfg.Groups, _ = strconv.Atoi(os.Getenv("SIM_GROUPS"))
	cfg.Keys, _ = strconv.Atoi(os.Getenv("SIM_KEYS"))
	r := run(t, cfg)
	for _, v := range r.Violations {
		t.Log(v)
	}
	t.Logf("linearizable=%s, %d ops, trace in %s", r.Linearizable, r.Ops, path)
}
