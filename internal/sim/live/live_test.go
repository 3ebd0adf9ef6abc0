package live

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/flotilla/flotilla/internal/sim"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestLive runs a short real-process chaos run: three `flotilla start`
// processes, kills and pauses (and, as root with iptables, black holes and
// partitions), then the checks.
func TestLive(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "flotilla")
	build := exec.Command("go", "build", "-o", bin, "github.com/flotilla/flotilla/cmd/flotilla")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := Run(ctx, Config{
		Binary: bin, Dir: filepath.Join(dir, "run"), Groups: 4, Clients: 4, Keys: 4,
		Duration: 8 * time.Second, Seed: 1, Progress: testWriter{t},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", res)
	if res.Linearizable != "ok" || res.LostAcks != 0 {
		t.Fatalf("linearizable=%s lost_acks=%d; see %s", res.Linearizable, res.LostAcks, res.Visualization)
	}
	if res.Ops < 100 || res.Faults == 0 {
		t.Fatalf("run too small: %d ops, %d faults", res.Ops, res.Faults)
	}
	for _, p := range []string{res.History, res.Visualization} {
		if fi, err := os.Stat(p); err != nil || fi.Size() == 0 {
			t.Fatalf("%s: %v", p, err)
		}
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(string(b))
	return len(b), nil
}

func TestLostAcks(t *testing.T) {
	put := func(c int, v string, call, ret int64) sim.Op {
		return sim.Op{Client: c, In: sim.Input{Kind: sim.OpPut, Key: "k", Value: v}, Out: sim.Output{OK: true}, Call: call, Return: ret}
	}
	final := func(found bool, v string) sim.Op {
		return sim.Op{Client: 9, In: sim.Input{Kind: sim.OpGet, Key: "k"}, Out: sim.Output{Found: found, Value: v}, Call: 100, Return: 101}
	}
	ops := []sim.Op{put(0, "a", 1, 2), put(1, "b", 3, 4), final(true, "b")}
	if n := LostAcks(ops, 9); n != 0 {
		t.Fatalf("latest value read: %d lost", n)
	}
	ops = []sim.Op{put(0, "a", 1, 2), put(1, "b", 3, 4), final(true, "a")}
	if n := LostAcks(ops, 9); n != 1 {
		t.Fatalf("b lost: got %d", n)
	}
	ops = []sim.Op{put(0, "a", 1, 5), put(1, "b", 3, 4), final(true, "a")}
	if n := LostAcks(ops, 9); n != 0 {
		t.Fatalf("concurrent writes: got %d", n)
	}
	ops = []sim.Op{put(0, "a", 1, 2), final(false, "")}
	if n := LostAcks(ops, 9); n != 1 {
		t.Fatalf("absent: got %d", n)
	}
}

func TestConfig(t *testing.T) {
	if _, err := Run(context.Background(), Config{}); err == nil {
		t.Fatal("missing binary accepted")
	}
	if _, err := Run(context.Background(), Config{Binary: "x", Nemesis: "flood"}); err == nil {
		t.Fatal("unknown nemesis accepted")
	}
}
