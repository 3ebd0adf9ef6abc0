package main

import (
	"reflect"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/flotilla/flotilla/internal/testutil"
	"github.com/flotilla/flotilla/kv"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, testutil.LeakOptions()...) }

// TestParseTxn: the etcdctl-style form `flotilla txn` reads, and the
// errors it gives for bad input.
func TestParseTxn(t *testing.T) {
	in := `value("a") = "1"
mod(b) < 42
c("new key") == 0

put a 2
put "b c" "two words"
delrange x/ x0

get a
scan a z 5
del d
`
	got, err := parseTxn(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := kv.Txn{
		Compares: []kv.Compare{
			{Key: []byte("a"), Target: kv.CompareValue, Op: kv.CompareEqual, Value: []byte("1")},
			{Key: []byte("b"), Target: kv.CompareModRevision, Op: kv.CompareLess, Number: 42},
			{Key: []byte("new key"), Target: kv.CompareCreateRevision, Op: kv.CompareEqual},
		},
		Then: []kv.TxnOp{
			{Kind: kv.TxnPut, Key: []byte("a"), Value: []byte("2")},
			{Kind: kv.TxnPut, Key: []byte("b c"), Value: []byte("two words")},
			{Kind: kv.TxnDeleteRange, Key: []byte("x/"), End: []byte("x0")},
		},
		Else: []kv.TxnOp{
			{Kind: kv.TxnGet, Key: []byte("a")},
			{Kind: kv.TxnScan, Key: []byte("a"), End: []byte("z"), Limit: 5},
			{Kind: kv.TxnDelete, Key: []byte("d")},
		},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("parsed\n%+v\nwant\n%+v", got, want)
	}
	for bad, msg := range map[string]string{
		`size("a") = 1`:      "unknown target",
		`value("a") ~ 1`:     "want TARGET",
		`version("a") = x`:   "compares with a number",
		"\nput a":            "usage: put KEY VALUE",
		"\nfrob a":           "unknown op",
		"\nput a 1\nput a 2": "written twice",
		"\nscan a z 0":       "scan limit",
		`value("a) = 1`:      "bad quoting",
		"\n\nget a b":        "usage: get KEY",
		"\ndelrange b a":     "is empty",
		`value("") = 1`:      "empty",
		"\nscan a z 1001":    "scan limit",
	} {
		if _, err := parseTxn(strings.NewReader(bad)); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("%q: %v, want an error saying %q", bad, err, msg)
		}
	}
}
