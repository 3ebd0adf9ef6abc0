package live

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/flotilla/flotilla/internal/sim"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestLive runs a short real-process chaos run with the defaults of
// `flotilla chaos` (16 clients, 8 keys at a time, 300 operations per key,
// 16 groups) but a shorter faulty phase: three `flotilla start`
// processes, kills and pauses (and, as root with iptables, black holes and
// partitions), then the checks. The check must reach a verdict (true),
// and keys must have been retired along the way.
func TestLive(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes")
	}
	dir, bin := buildBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cfg := Config{Binary: bin, Dir: filepath.Join(dir, "run"), Duration: 10 * time.Second, Seed: 1, Progress: testWriter{t}}
	res, err := Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	const keys, keyOps = 8, 300 // the defaults
	b, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s", b)
	if res.Linearizable != sim.VerdictOK || res.LostAcks != 0 || res.Status() != StatusOK {
		t.Fatalf("linearizable=%v (illegal %q, unknown %q) lost_acks=%d status=%d; see %s",
			res.Linearizable, res.IllegalKeys, res.UnknownKeys, res.LostAcks, res.Status(), res.Visualization)
	}
	if !strings.Contains(string(b), `"linearizable":true,`) {
		t.Fatalf("verdict is not the JSON boolean true: %s", b)
	}
	if res.Ops < 100 || res.Faults == 0 {
		t.Fatalf("run too small: %d ops, %d faults", res.Ops, res.Faults)
	}
	for _, p := range []string{res.History, res.Visualization} {
		if fi, err := os.Stat(p); err != nil || fi.Size() == 0 {
			t.Fatalf("%s: %v", p, err)
		}
	}
	// The history itself: more distinct keys than are in use at once,
	// none with more than its bound of operations (plus the final reads of
	// the key and its partner). Keys count in pairs (sim.Register), as the
	// checker takes them.
	hb, err := os.ReadFile(res.History)
	if err != nil {
		t.Fatal(err)
	}
	var ops []sim.Op
	if err := json.Unmarshal(hb, &ops); err != nil {
		t.Fatal(err)
	}
	perKey := map[string]int{}
	for _, o := range ops {
		perKey[sim.Register(o.In.Key)]++
	}
	if len(ops) != res.Ops || len(perKey) != res.KeysChecked || res.KeysIllegal != 0 || res.KeysUnknown != 0 {
		t.Fatalf("history has %d ops over %d keys; result says %d ops, %d keys checked, %d illegal, %d unknown",
			len(ops), len(perKey), res.Ops, res.KeysChecked, res.KeysIllegal, res.KeysUnknown)
	}
	if len(perKey) <= keys {
		t.Fatalf("%d ops over only %d keys: no key was retired after %d ops", len(ops), len(perKey), keyOps)
	}
	most := 0
	for k, n := range perKey {
		if n > keyOps+2 {
			t.Fatalf("key %s has %d ops, bound %d", k, n, keyOps)
		}
		most = max(most, n)
	}
	if most != res.MaxKeyOps {
		t.Fatalf("max_key_ops %d, history's largest key has %d", res.MaxKeyOps, most)
	}
}

// TestLiveLose: 4 real nodes with 3 replicas per range; a quarter into the
// faulty phase one node is killed for good while others are killed and
// paused and come back; the nodes up-replicate its ranges onto the three
// left (--dead-after 2s), the run waits until every range has 3 replicas
// without it, and the history is linearizable with no acknowledged write
// lost (the final reads read every key back).
func TestLiveLose(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes")
	}
	dir, bin := buildBinary(t)
	if _, err := Run(context.Background(), Config{Binary: bin, Nodes: 3, Nemesis: "lose"}); !errors.Is(err, ErrConfig) {
		t.Fatalf("lose on 3 nodes: %v, want ErrConfig", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cfg := Config{Binary: bin, Dir: filepath.Join(dir, "run"), Nodes: 4, Groups: 8, Duration: 12 * time.Second, Seed: 2,
		Nemesis: "lose,kill,pause", DeadAfter: 2 * time.Second, Watchers: -1, Progress: testWriter{t}}
	res, err := Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(res)
	t.Logf("%s", b)
	if res.Linearizable != sim.VerdictOK || res.LostAcks != 0 || res.Status() != StatusOK {
		t.Fatalf("linearizable=%v (illegal %q, unknown %q) lost_acks=%d status=%d; see %s",
			res.Linearizable, res.IllegalKeys, res.UnknownKeys, res.LostAcks, res.Status(), res.Visualization)
	}
	if res.LostNode == 0 || res.UpReplicatedAfter <= 0 || res.Ops < 100 {
		t.Fatalf("lost node %d, up-replicated after %.1fs, %d ops", res.LostNode, res.UpReplicatedAfter, res.Ops)
	}
}

// buildBinary builds the flotilla binary into a new temporary directory,
// and returns the directory and the binary's path.
func buildBinary(t *testing.T) (dir, bin string) {
	t.Helper()
	dir = t.TempDir()
	bin = filepath.Join(dir, "flotilla")
	build := exec.Command("go", "build", "-o", bin, "github.com/flotilla/flotilla/cmd/flotilla")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return dir, bin
}

// TestTakeKey: each slot's key takes KeyOps operations, then a fresh key
// replaces it; every key handed out is listed once, in order, with its
// partner (sim.PartnerSuffix: transactions write both).
func TestTakeKey(t *testing.T) {
	r := &run{cfg: Config{Keys: 2, KeyOps: 3}}
	var got []string
	for _, slot := range []int{0, 1, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0} {
		got = append(got, r.takeKey(slot))
	}
	want := []string{"k0.0", "k1.0", "k0.0", "k0.0", "k0.1", "k1.0", "k1.0", "k1.1", "k0.1", "k0.1", "k0.2", "k0.2"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("keys %q, want %q", got, want)
	}
	if used := r.usedKeys(); !reflect.DeepEqual(used, []string{"k0.0", "k0.0'", "k1.0", "k1.0'", "k0.1", "k0.1'", "k1.1", "k1.1'", "k0.2", "k0.2'"}) {
		t.Fatalf("used %q", used)
	}
}

// TestStatus: a violation (an illegal key or a lost acknowledged write)
// exits 1, an unknown verdict 3, a verdict of true 0; the JSON verdict is
// a boolean or "unknown".
func TestStatus(t *testing.T) {
	for _, c := range []struct {
		res    Result
		status int
		json   string
	}{
		{Result{Linearizable: sim.VerdictOK}, StatusOK, `true`},
		{Result{Linearizable: sim.VerdictIllegal, KeysIllegal: 1, IllegalKeys: []string{"k1.0"}}, StatusViolation, `false`},
		{Result{Linearizable: sim.VerdictOK, LostAcks: 1}, StatusViolation, `true`},
		{Result{Linearizable: sim.VerdictUnknown, LostAcks: 2}, StatusViolation, `"unknown"`},
		{Result{Linearizable: sim.VerdictUnknown, KeysUnknown: 1, UnknownKeys: []string{"k0.3"}}, StatusUnknown, `"unknown"`},
		{Result{}, StatusUnknown, `"unknown"`},
	} {
		if got := c.res.Status(); got != c.status {
			t.Errorf("%+v: status %d, want %d", c.res, got, c.status)
		}
		b, err := json.Marshal(&c.res)
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf(`"linearizable":%s,`, c.json); !strings.Contains(string(b), want) {
			t.Errorf("%s lacks %s", b, want)
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
	// A transaction writes the key and its partner.
	txn := sim.Op{Client: 2, In: sim.Input{Kind: sim.OpTxn, Key: "k", Value: "t", ExpectAbsent: true}, Out: sim.Output{OK: true}, Call: 5, Return: 6}
	partner := func(found bool, v string) sim.Op {
		return sim.Op{Client: 9, In: sim.Input{Kind: sim.OpGet, Key: "k'"}, Out: sim.Output{Found: found, Value: v}, Call: 100, Return: 101}
	}
	ops = []sim.Op{put(0, "a", 1, 2), txn, final(true, "t"), partner(true, "t")}
	if n := LostAcks(ops, 9); n != 0 {
		t.Fatalf("the transaction's value read in both: %d lost", n)
	}
	ops = []sim.Op{put(0, "a", 1, 2), txn, final(true, "t"), partner(false, "")}
	if n := LostAcks(ops, 9); n != 1 {
		t.Fatalf("the partner lost the transaction's write: got %d", n)
	}
}

func TestConfig(t *testing.T) {
	if _, err := Run(context.Background(), Config{}); err == nil {
		t.Fatal("missing binary accepted")
	}
	if _, err := Run(context.Background(), Config{Binary: "x", Nemesis: "flood"}); err == nil {
		t.Fatal("unknown nemesis accepted")
	}
	for _, n := range []int{-1, 10001} {
		if _, err := Run(context.Background(), Config{Binary: "x", KeyOps: n}); !errors.Is(err, ErrConfig) {
			t.Fatalf("KeyOps %d: %v", n, err)
		}
	}
}
