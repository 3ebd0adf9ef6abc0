package election_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// The porcupine model of one election, as clients see it.
//
//	acquire(lease) → token   a Campaign that returned elected: it takes
//	                         effect when the lease became the holder, which
//	                         needs no holder, and its token must exceed
//	                         every earlier holder's
//	release(lease)           a confirmed Resign (or Revoke): the holder, if
//	                         it is lease, is gone; otherwise nothing
//	expire(lease)            a lease that stopped being renewed (its client
//	                         killed or cut off), from the cut to when the
//	                         test saw the next holder or the lease gone
//	leader() → (lease, token) a linearizable Leader read
type opKind int

const (
	opAcquire opKind = iota
	opRelease
	opExpire
	opLeader
)

type elInput struct {
	kind  opKind
	lease uint64
}

type elOutput struct {
	lease, token uint64
}

type elState struct {
	holder, token uint64 // token: the holder's, or the last holder's
}

var electionModel = porcupine.Model{
	Init: func() any { return elState{} },
	Step: func(state, input, output any) (bool, any) {
		st, in, out := state.(elState), input.(elInput), output.(elOutput)
		switch in.kind {
		case opAcquire:
			if st.holder == in.lease && out.token == st.token {
				return true, st // campaigned again while holding
			}
			if st.holder != 0 || out.token <= st.token {
				return false, st
			}
			return true, elState{holder: in.lease, token: out.token}
		case opRelease, opExpire:
			if st.holder == in.lease {
				st.holder = 0
			}
			return true, st
		case opLeader:
			if out.lease != st.holder {
				return false, st
			}
			return st.holder == 0 || out.token == st.token, st
		}
		return false, st
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(elInput), output.(elOutput)
		switch in.kind {
		case opAcquire:
			return fmt.Sprintf("acquire(%d) → token %d", in.lease, out.token)
		case opRelease:
			return fmt.Sprintf("release(%d)", in.lease)
		case opExpire:
			return fmt.Sprintf("expire(%d)", in.lease)
		}
		return fmt.Sprintf("leader() → %d token %d", out.lease, out.token)
	},
	DescribeState: func(state any) string {
		st := state.(elState)
		return fmt.Sprintf("holder %d token %d", st.holder, st.token)
	},
}

// history records operations for the model. Safe for concurrent use.
type history struct {
	start time.Time
	mu    sync.Mutex
	ops   []porcupine.Operation
}

func newHistory() *history { return &history{start: time.Now()} }

func (h *history) now() int64 { return int64(time.Since(h.start)) }

// add records one completed operation; call and ret come from h.now.
func (h *history) add(client int, call, ret int64, in elInput, out elOutput) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ops = append(h.ops, porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret})
}

// check fails t unless the history is linearizable.
func (h *history) check(t *testing.T) {
	t.Helper()
	h.mu.Lock()
	ops := append([]porcupine.Operation(nil), h.ops...)
	h.mu.Unlock()
	res, _ := porcupine.CheckOperationsVerbose(electionModel, ops, 30*time.Second)
	switch res {
	case porcupine.Ok:
		t.Logf("porcupine: %d operations linearizable", len(ops))
	case porcupine.Unknown:
		t.Logf("porcupine: %d operations: check timed out", len(ops))
	default:
		for _, op := range ops {
			t.Logf("client %d [%v, %v] %s", op.ClientId, time.Duration(op.Call), time.Duration(op.Return),
				electionModel.DescribeOperation(op.Input, op.Output))
		}
		t.Fatalf("porcupine: history of %d operations is not linearizable", len(ops))
	}
}

// TestModelRejectsTwoHolders makes sure the model can fail: two
// overlapping acquisitions without a release between them, and a token
// that goes back, are refused.
func TestModelRejectsTwoHolders(t *testing.T) {
	bad := [][]porcupine.Operation{
		{
			{ClientId: 1, Input: elInput{opAcquire, 1}, Call: 0, Output: elOutput{token: 5}, Return: 10},
			{ClientId: 2, Input: elInput{opAcquire, 2}, Call: 20, Output: elOutput{token: 7}, Return: 30},
		},
		{
			{ClientId: 1, Input: elInput{opAcquire, 1}, Call: 0, Output: elOutput{token: 5}, Return: 10},
			{ClientId: 1, Input: elInput{opRelease, 1}, Call: 11, Output: elOutput{}, Return: 12},
			{ClientId: 2, Input: elInput{opAcquire, 2}, Call: 20, Output: elOutput{token: 4}, Return: 30},
		},
		{
			{ClientId: 1, Input: elInput{opAcquire, 1}, Call: 0, Output: elOutput{token: 5}, Return: 10},
			{ClientId: 3, Input: elInput{opLeader, 0}, Call: 11, Output: elOutput{}, Return: 12},
		},
	}
	for i, h := range bad {
		if porcupine.CheckOperations(electionModel, h) {
			t.Errorf("bad history %d accepted", i)
		}
	}
	good := []porcupine.Operation{
		{ClientId: 1, Input: elInput{opAcquire, 1}, Call: 0, Output: elOutput{token: 5}, Return: 10},
		{ClientId: 2, Input: elInput{opAcquire, 2}, Call: 1, Output: elOutput{token: 9}, Return: 30},
		{ClientId: 1, Input: elInput{opExpire, 1}, Call: 15, Output: elOutput{}, Return: 30},
		{ClientId: 3, Input: elInput{opLeader, 0}, Call: 31, Output: elOutput{lease: 2, token: 9}, Return: 32},
	}
	if !porcupine.CheckOperations(electionModel, good) {
		t.Error("good history refused")
	}
}
