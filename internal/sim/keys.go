package sim

import (
	"encoding/json"
	"fmt"
	"runtime"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"
)

// Verdict is the outcome of a linearizability check. Its zero value is
// VerdictUnknown: a check that did not run, or did not finish, proves
// nothing.
//
// In JSON a Verdict is true (linearizable), false (not linearizable) or
// the string "unknown" (the check ran out of its time bound); String gives
// the same three words.
type Verdict int8

// Verdicts.
const (
	VerdictUnknown Verdict = iota
	VerdictOK
	VerdictIllegal
)

func (v Verdict) String() string {
	switch v {
	case VerdictOK:
		return "true"
	case VerdictIllegal:
		return "false"
	}
	return "unknown"
}

// MarshalJSON encodes v as true, false or "unknown".
func (v Verdict) MarshalJSON() ([]byte, error) {
	switch v {
	case VerdictOK:
		return []byte("true"), nil
	case VerdictIllegal:
		return []byte("false"), nil
	}
	return []byte(`"unknown"`), nil
}

// UnmarshalJSON decodes true, false or "unknown".
func (v *Verdict) UnmarshalJSON(b []byte) error {
	var x any
	if err := json.Unmarshal(b, &x); err != nil {
		return err
	}
	switch x {
	case true:
		*v = VerdictOK
	case false:
		*v = VerdictIllegal
	case "unknown":
		*v = VerdictUnknown
	default:
		return fmt.Errorf("sim: verdict %s: want true, false or \"unknown\"", b)
	}
	return nil
}

// verdictOf maps porcupine's result to a Verdict.
func verdictOf(r porcupine.CheckResult) Verdict {
	switch r {
	case porcupine.Ok:
		return VerdictOK
	case porcupine.Illegal:
		return VerdictIllegal
	}
	return VerdictUnknown
}

// KeyVerdict is the verdict on one key's history.
type KeyVerdict struct {
	Key string `json:"key"`
	// Ops is the number of operations on the key.
	Ops          int     `json:"ops"`
	Linearizable Verdict `json:"linearizable"`
	// Elapsed is how long the key's check took.
	Elapsed time.Duration `json:"elapsed_ns"`
	// Info is what porcupine.Visualize needs to draw the key's history.
	Info porcupine.LinearizationInfo `json:"-"`
}

// KeysCheck is the outcome of CheckKeys.
type KeysCheck struct {
	// Linearizable is the overall verdict: VerdictIllegal if any key's
	// history is not linearizable, else VerdictUnknown if any key's check
	// ran out of its bound, else VerdictOK (an empty history included).
	Linearizable Verdict
	// Keys holds one verdict per key, in the order of each key's first
	// operation in the history.
	Keys []KeyVerdict
	// Illegal and Unknown name the keys with those verdicts, in the order
	// of Keys; never nil.
	Illegal, Unknown []string
}

// checkFunc checks one key's history; porcupine.CheckOperationsVerbose
// with RegisterModel, or a stand-in in tests.
type checkFunc func(ops []porcupine.Operation, timeout time.Duration) (porcupine.CheckResult, porcupine.LinearizationInfo)

func porcupineCheck(ops []porcupine.Operation, timeout time.Duration) (porcupine.CheckResult, porcupine.LinearizationInfo) {
	return porcupine.CheckOperationsVerbose(RegisterModel, ops, timeout)
}

// CheckKeys checks ops for linearizability key by key under RegisterModel
// (each key a register of its own, as in Jepsen's independent keys): each
// key's history is a separate porcupine check bounded by timeout (0: no
// bound), so one key whose search explodes turns only that key's verdict
// unknown, and the caller learns which. Keys are checked concurrently, at
// most min(GOMAXPROCS, NumCPU) at a time, so the wall time is at most
// about len(keys)*timeout/that.
func CheckKeys(ops []Op, timeout time.Duration) KeysCheck {
	return checkKeys(ops, timeout, porcupineCheck)
}

func checkKeys(ops []Op, timeout time.Duration, check checkFunc) KeysCheck {
	var order []string
	byKey := map[string][]porcupine.Operation{}
	for _, o := range ops {
		k := Register(o.In.Key)
		if _, ok := byKey[k]; !ok {
			order = append(order, k)
		}
		byKey[k] = append(byKey[k], porcupine.Operation{
			ClientId: o.Client, Input: o.In, Output: o.Out, Call: o.Call, Return: o.Return,
		})
	}
	res := KeysCheck{Keys: make([]KeyVerdict, len(order)), Illegal: []string{}, Unknown: []string{}}
	workers := min(runtime.GOMAXPROCS(0), runtime.NumCPU(), len(order))
	next := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				k := order[i]
				start := time.Now()
				r, info := check(byKey[k], timeout)
				res.Keys[i] = KeyVerdict{Key: k, Ops: len(byKey[k]), Linearizable: verdictOf(r), Elapsed: time.Since(start), Info: info}
			}
		}()
	}
	for i := range order {
		next <- i
	}
	close(next)
	wg.Wait()
	res.Linearizable = VerdictOK
	for _, kv := range res.Keys {
		switch kv.Linearizable {
		case VerdictIllegal:
			res.Illegal = append(res.Illegal, kv.Key)
		case VerdictUnknown:
			res.Unknown = append(res.Unknown, kv.Key)
		}
	}
	switch {
	case len(res.Illegal) > 0:
		res.Linearizable = VerdictIllegal
	case len(res.Unknown) > 0:
		res.Linearizable = VerdictUnknown
	}
	return res
}
