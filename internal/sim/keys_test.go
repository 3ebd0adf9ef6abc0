package sim

import (
	"encoding/json"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

func opPut(c int, key, v string, call, ret int64) Op {
	return Op{Client: c, In: Input{Kind: OpPut, Key: key, Value: v}, Call: call, Return: ret}
}

func opGet(c int, key string, found bool, v string, call, ret int64) Op {
	return Op{Client: c, In: Input{Kind: OpGet, Key: key}, Out: Output{Found: found, Value: v}, Call: call, Return: ret}
}

func opCAS(c int, key, expected, v string, ok bool, call, ret int64) Op {
	in := Input{Kind: OpCAS, Key: key, Value: v, Expected: expected, ExpectAbsent: expected == ""}
	return Op{Client: c, In: in, Out: Output{OK: ok}, Call: call, Return: ret}
}

// verdicts is the per-key verdicts of r as key=verdict.
func verdicts(r KeysCheck) []string {
	var s []string
	for _, k := range r.Keys {
		s = append(s, fmt.Sprintf("%s=%v/%d", k.Key, k.Linearizable, k.Ops))
	}
	return s
}

func wantCheck(t *testing.T, r KeysCheck, overall Verdict, keys, illegal, unknown []string) {
	t.Helper()
	if r.Linearizable != overall || !reflect.DeepEqual(verdicts(r), keys) ||
		!reflect.DeepEqual(r.Illegal, illegal) || !reflect.DeepEqual(r.Unknown, unknown) {
		t.Fatalf("got %v %v illegal=%q unknown=%q; want %v %v illegal=%q unknown=%q",
			r.Linearizable, verdicts(r), r.Illegal, r.Unknown, overall, keys, illegal, unknown)
	}
}

// TestCheckKeysLinearizable: two interleaved keys with concurrent writes,
// a compare-and-swap and a write of unknown outcome.
func TestCheckKeysLinearizable(t *testing.T) {
	ops := []Op{
		opGet(0, "a", false, "", 1, 2),
		opPut(1, "b", "b1", 3, 4),
		opPut(0, "a", "a1", 5, 10),
		opPut(1, "a", "a2", 6, 9), // concurrent with a1: either order
		opGet(2, "a", true, "a1", 11, 12),
		opCAS(2, "a", "a1", "a3", true, 13, 14),
		{Client: 3, In: Input{Kind: OpPut, Key: "b", Value: "b2"}, Out: Output{Unknown: true}, Call: 15, Return: NeverReturned},
		opGet(0, "b", true, "b1", 16, 17), // b2 not applied yet
		opGet(0, "a", true, "a3", 18, 19),
		opGet(1, "b", true, "b2", 20, 21), // now it is
	}
	r := CheckKeys(ops, 10*time.Second)
	wantCheck(t, r, VerdictOK, []string{"a=true/6", "b=true/4"}, []string{}, []string{})
}

// TestCheckKeysIllegal: a stale read after an acknowledged write (b) and a
// read of a value never written (c) are found, each on its own key, and a
// linearizable key beside them stays linearizable.
func TestCheckKeysIllegal(t *testing.T) {
	ops := []Op{
		opPut(0, "a", "a1", 1, 2),
		opPut(0, "b", "b1", 3, 4),
		opPut(1, "b", "b2", 5, 6),
		opGet(2, "b", true, "b1", 7, 8), // b2 was acknowledged before this read began
		opGet(0, "a", true, "a1", 9, 10),
		opPut(1, "c", "c1", 11, 14),
		opGet(2, "c", true, "c9", 12, 13), // never written
	}
	r := CheckKeys(ops, 10*time.Second)
	wantCheck(t, r, VerdictIllegal, []string{"a=true/2", "b=false/3", "c=false/2"}, []string{"b", "c"}, []string{})

	// A failed CAS must report what it saw.
	ops = []Op{
		opPut(0, "d", "d1", 1, 2),
		{Client: 1, In: Input{Kind: OpCAS, Key: "d", Expected: "zz", Value: "d2"}, Out: Output{Found: true, Value: "d0"}, Call: 3, Return: 4},
	}
	wantCheck(t, CheckKeys(ops, 10*time.Second), VerdictIllegal, []string{"d=false/2"}, []string{"d"}, []string{})
}

// hardKey is a history whose check takes porcupine an exponential search:
// n mutually concurrent puts and, concurrent with all of them, a read of a
// value never written. It is illegal, but proving so means trying every
// order of the puts (about n·2^n states).
func hardKey(key string, n int) []Op {
	var ops []Op
	for i := 0; i < n; i++ {
		ops = append(ops, opPut(i, key, fmt.Sprintf("v%d", i), int64(i+1), int64(1000+i)))
	}
	return append(ops, opGet(n, key, true, "never", 500, 501))
}

// TestCheckKeysBound: a key whose check runs out of its bound is unknown,
// and named; the other keys keep their verdicts.
func TestCheckKeysBound(t *testing.T) {
	const timeout = 250 * time.Millisecond
	ops := append([]Op{opPut(0, "easy", "e1", 1, 2)}, hardKey("hard", 22)...)
	ops = append(ops, opGet(1, "easy", true, "e1", 3, 4))
	start := time.Now()
	r := CheckKeys(ops, timeout)
	took := time.Since(start)
	wantCheck(t, r, VerdictUnknown, []string{"easy=true/2", "hard=unknown/23"}, []string{}, []string{"hard"})
	if e := r.Keys[1].Elapsed; e < timeout {
		t.Fatalf("hard key: unknown after %v, before its bound %v", e, timeout)
	}
	if took > 20*timeout {
		t.Fatalf("check took %v with a bound of %v per key", took, timeout)
	}
}

// TestCheckKeysCombine: with the per-key checker stubbed, illegal beats
// unknown, unknown beats ok, and each list names its keys in history
// order; the timeout reaches the checker.
func TestCheckKeysCombine(t *testing.T) {
	stub := func(verdict map[string]porcupine.CheckResult) checkFunc {
		return func(ops []porcupine.Operation, timeout time.Duration) (porcupine.CheckResult, porcupine.LinearizationInfo) {
			if timeout != 7*time.Second {
				t.Errorf("timeout %v reached the checker, want 7s", timeout)
			}
			return verdict[ops[0].Input.(Input).Key], porcupine.LinearizationInfo{}
		}
	}
	var ops []Op
	for i, k := range []string{"a", "b", "c", "d", "b", "a"} {
		ops = append(ops, opPut(0, k, "x", int64(2*i), int64(2*i+1)))
	}
	r := checkKeys(ops, 7*time.Second, stub(map[string]porcupine.CheckResult{
		"a": porcupine.Ok, "b": porcupine.Unknown, "c": porcupine.Illegal, "d": porcupine.Unknown,
	}))
	wantCheck(t, r, VerdictIllegal, []string{"a=true/2", "b=unknown/2", "c=false/1", "d=unknown/1"}, []string{"c"}, []string{"b", "d"})

	r = checkKeys(ops, 7*time.Second, stub(map[string]porcupine.CheckResult{
		"a": porcupine.Ok, "b": porcupine.Ok, "c": porcupine.Unknown, "d": porcupine.Ok,
	}))
	wantCheck(t, r, VerdictUnknown, []string{"a=true/2", "b=true/2", "c=unknown/1", "d=true/1"}, []string{}, []string{"c"})

	r = checkKeys(nil, 7*time.Second, stub(nil))
	wantCheck(t, r, VerdictOK, nil, []string{}, []string{})
}

func TestVerdictJSON(t *testing.T) {
	var zero Verdict
	if zero != VerdictUnknown {
		t.Fatal("the zero Verdict must be unknown")
	}
	for v, want := range map[Verdict]string{VerdictOK: "true", VerdictIllegal: "false", VerdictUnknown: `"unknown"`} {
		b, err := json.Marshal(struct {
			L Verdict `json:"l"`
		}{v})
		if err != nil || string(b) != `{"l":`+want+`}` {
			t.Fatalf("%d: %s, %v; want %s", v, b, err, want)
		}
		var back struct {
			L Verdict `json:"l"`
		}
		back.L = 99
		if err := json.Unmarshal(b, &back); err != nil || back.L != v {
			t.Fatalf("%s decoded as %d, %v", b, back.L, err)
		}
	}
	if VerdictOK.String() != "true" || VerdictIllegal.String() != "false" || VerdictUnknown.String() != "unknown" {
		t.Fatal("String differs from JSON")
	}
	var v Verdict
	if err := json.Unmarshal([]byte(`"ok"`), &v); err == nil {
		t.Fatal(`"ok" accepted`)
	}
}
