package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/client"
	"github.com/flotilla/flotilla/kv"
)

// `flotilla txn` reads a transaction from stdin and applies it: a
// create-if-absent of two keys succeeds once, then fails and reads both;
// the keys carry the transaction's revision as their create revision. A
// transaction over two ranges is refused, naming them, with nothing
// written.
func TestTxnCLI(t *testing.T) {
	c := newProcCluster(t, 4) // ranges cut at "40", "80", "c0"
	eps := strings.Join(c.endpoints(0), ",")
	c.waitLed(t, 4)
	// In the range ["40", "80"): the first range holds the meta range's
	// records too, which the nodes write in their first seconds (their
	// incarnations), moving its revision between the two transactions.
	const create = "create(\"5/a\") = 0\ncreate(\"5/b\") = 0\n\nput 5/a one\nput 5/b \"two words\"\n\nget 5/a\nget 5/b\n"
	txn := func(in string) (txnOut struct {
		Succeeded bool   `json:"succeeded"`
		Revision  uint64 `json:"revision"`
		Range     uint64 `json:"range"`
		Responses []struct {
			Op  string `json:"op"`
			KVs []struct {
				Key            string `json:"key"`
				Value          string `json:"value"`
				Revision       uint64 `json:"revision"`
				CreateRevision uint64 `json:"create_revision"`
				Version        uint64 `json:"version"`
			} `json:"kvs"`
		} `json:"responses"`
	}) {
		t.Helper()
		r := runIn(t, 60*time.Second, in, nil, "txn", "-w", "json", "--endpoints", eps)
		if r.code != 0 {
			t.Fatalf("txn exited %d: %s", r.code, r.stderr)
		}
		if err := json.Unmarshal([]byte(r.stdout), &txnOut); err != nil {
			t.Fatalf("txn -w json printed %q: %v", r.stdout, err)
		}
		return txnOut
	}
	first := txn(create)
	if !first.Succeeded || len(first.Responses) != 2 || first.Responses[0].Op != "put" {
		t.Fatalf("first create-if-absent: %+v", first)
	}
	second := txn(create)
	if second.Succeeded || len(second.Responses) != 2 || second.Revision != first.Revision {
		t.Fatalf("second create-if-absent: %+v (first at revision %d)", second, first.Revision)
	}
	for i, want := range []string{"one", "two words"} {
		kvs := second.Responses[i].KVs
		if len(kvs) != 1 || kvs[0].Value != want || kvs[0].CreateRevision != first.Revision || kvs[0].Version != 1 {
			t.Errorf("else get %d: %+v, want %q created at revision %d, version 1", i, kvs, want, first.Revision)
		}
	}
	// Bad input: a clear error, nothing applied.
	if r := runIn(t, 60*time.Second, "size(\"1/a\") = 0\n", nil, "txn", "--endpoints", eps); r.code == 0 || !strings.Contains(r.stderr, "unknown target") {
		t.Errorf("txn with an unknown target: exit %d, stderr %q", r.code, r.stderr)
	}
	if r := runIn(t, 60*time.Second, "\nput 1/a x\nput 1/a y\n", nil, "txn", "--endpoints", eps); r.code == 0 || !strings.Contains(r.stderr, "written twice") {
		t.Errorf("txn writing one key twice: exit %d, stderr %q", r.code, r.stderr)
	}
	// Over two ranges.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl, err := client.New(ctx, client.Config{Endpoints: c.endpoints(0)})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	_, err = cl.Txn(ctx, kv.Txn{Then: []kv.TxnOp{{Kind: kv.TxnPut, Key: []byte("1/c"), Value: []byte("x")}, {Kind: kv.TxnPut, Key: []byte("9/c"), Value: []byte("x")}}})
	if !errors.Is(err, client.ErrTxnSpansRanges) || !errors.Is(err, client.ErrInvalidArgument) || !strings.Contains(err.Error(), `["", "40")`) || !strings.Contains(err.Error(), `["80", "c0")`) {
		t.Fatalf("transaction over two ranges: %v, want ErrTxnSpansRanges naming [\"\", \"40\") and [\"80\", \"c0\")", err)
	}
	if _, err := cl.Get(ctx, []byte("1/c")); !errors.Is(err, client.ErrKeyNotFound) {
		t.Fatalf("1/c after the refused transaction: %v, want not found", err)
	}
}
