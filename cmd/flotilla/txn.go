package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/flotilla/flotilla/client"
	"github.com/flotilla/flotilla/kv"
)

const txnUsage = `Reads a transaction from stdin, etcdctl-style: the compares, a blank line,
the ops to apply if they all hold, a blank line, the ops to apply if not.
One compare or op per line; quote keys and values with spaces Go-style.

  compares:  value("KEY") = "V"     (= != < >, byte order)
             version("KEY") > 0     (puts since the key was created; 0: absent)
             create("KEY") = 0      (revision of the put that created it; 0: absent)
             mod("KEY") < 42        (revision of its last write)
  ops:       put KEY VALUE | get KEY | del KEY
             delrange START END     (END "": to the end of the keyspace)
             scan START END [LIMIT] (LIMIT at most 1000)

Every key must lie in one range. Example (a two-key swap):

  value("a") = "1"
  value("b") = "1"

  put a 2
  put b 2

  get a
  get b`

func newTxnCmd() *cobra.Command {
	var cf clientFlags
	var output string
	cmd := &cobra.Command{
		Use:   "txn < FILE",
		Short: "Apply a transaction read from stdin: compares, then-ops, else-ops (etcdctl-style)",
		Long:  txnUsage,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output, "table", "json"); err != nil {
				return err
			}
			t, err := parseTxn(cmd.InOrStdin())
			if err != nil {
				return err
			}
			cl, ctx, cancel, err := cf.connect(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			defer cl.Close()
			res, err := cl.Txn(ctx, t)
			if err != nil {
				return err
			}
			return printTxn(cmd.OutOrStdout(), res, output == "json")
		},
	}
	cf.register(cmd)
	cmd.Flags().StringVarP(&output, "write-out", "w", "table", "output format: table or json")
	return cmd
}

// parseTxn reads a transaction in the form txnUsage gives: three sections
// separated by blank lines (later ones may be missing).
func parseTxn(r io.Reader) (kv.Txn, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 2*kv.MaxTxnSize)
	var sections [3][]string
	i := 0
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			if i++; i == len(sections) {
				break
			}
			continue
		}
		sections[i] = append(sections[i], line)
	}
	if err := sc.Err(); err != nil {
		return kv.Txn{}, fmt.Errorf("reading the transaction: %w", err)
	}
	return txnOf(sections)
}

// txnOf parses the three sections of a transaction.
func txnOf(sections [3][]string) (kv.Txn, error) {
	var t kv.Txn
	for n, line := range sections[0] {
		c, err := parseCompare(line)
		if err != nil {
			return kv.Txn{}, fmt.Errorf("compare %d (%s): %w", n+1, line, err)
		}
		t.Compares = append(t.Compares, c)
	}
	for b, ops := range []*[]kv.TxnOp{&t.Then, &t.Else} {
		for n, line := range sections[1+b] {
			op, err := parseTxnOp(line)
			if err != nil {
				return kv.Txn{}, fmt.Errorf("%s op %d (%s): %w", [2]string{"then", "else"}[b], n+1, line, err)
			}
			*ops = append(*ops, op)
		}
	}
	if _, err := kv.TxnCommand(t).Encode(); err != nil {
		return kv.Txn{}, err
	}
	return t, nil
}

var compareLine = regexp.MustCompile(`^(\w+)\((.*)\)\s*(==|!=|=|<|>)\s*(.*)$`)

var compareTargets = map[string]kv.CompareTarget{
	"value": kv.CompareValue, "version": kv.CompareVersion, "create": kv.CompareCreateRevision, "mod": kv.CompareModRevision,
	// etcdctl's short names
	"val": kv.CompareValue, "ver": kv.CompareVersion, "c": kv.CompareCreateRevision, "m": kv.CompareModRevision,
}

var compareOps = map[string]kv.CompareOp{"=": kv.CompareEqual, "==": kv.CompareEqual, "!=": kv.CompareNotEqual, "<": kv.CompareLess, ">": kv.CompareGreater}

func parseCompare(line string) (kv.Compare, error) {
	m := compareLine.FindStringSubmatch(line)
	if m == nil {
		return kv.Compare{}, fmt.Errorf(`want TARGET("KEY") OP OPERAND, as value("k") = "v"`)
	}
	target, ok := compareTargets[m[1]]
	if !ok {
		return kv.Compare{}, fmt.Errorf("unknown target %q (value, version, create, mod)", m[1])
	}
	key, err := word(strings.TrimSpace(m[2]))
	if err != nil {
		return kv.Compare{}, err
	}
	operand, err := word(strings.TrimSpace(m[4]))
	if err != nil {
		return kv.Compare{}, err
	}
	c := kv.Compare{Key: []byte(key), Target: target, Op: compareOps[m[3]]}
	if target == kv.CompareValue {
		c.Value = []byte(operand)
		return c, nil
	}
	if c.Number, err = strconv.ParseUint(operand, 10, 64); err != nil {
		return kv.Compare{}, fmt.Errorf("%s compares with a number, not %q", m[1], operand)
	}
	return c, nil
}

func parseTxnOp(line string) (kv.TxnOp, error) {
	f, err := words(line)
	if err != nil {
		return kv.TxnOp{}, err
	}
	want := func(n int, usage string) error {
		if len(f) < n || len(f) > n+boolInt(f[0] == "scan") {
			return fmt.Errorf("usage: %s", usage)
		}
		return nil
	}
	switch f[0] {
	case "put":
		if err := want(3, "put KEY VALUE"); err != nil {
			return kv.TxnOp{}, err
		}
		return kv.TxnOp{Kind: kv.TxnPut, Key: []byte(f[1]), Value: []byte(f[2])}, nil
	case "get":
		if err := want(2, "get KEY"); err != nil {
			return kv.TxnOp{}, err
		}
		return kv.TxnOp{Kind: kv.TxnGet, Key: []byte(f[1])}, nil
	case "del", "delete":
		if err := want(2, "del KEY"); err != nil {
			return kv.TxnOp{}, err
		}
		return kv.TxnOp{Kind: kv.TxnDelete, Key: []byte(f[1])}, nil
	case "delrange":
		if err := want(3, "delrange START END"); err != nil {
			return kv.TxnOp{}, err
		}
		return kv.TxnOp{Kind: kv.TxnDeleteRange, Key: []byte(f[1]), End: []byte(f[2])}, nil
	case "scan":
		if err := want(3, "scan START END [LIMIT]"); err != nil {
			return kv.TxnOp{}, err
		}
		op := kv.TxnOp{Kind: kv.TxnScan, Key: []byte(f[1]), End: []byte(f[2])}
		if len(f) == 4 {
			if op.Limit, err = strconv.Atoi(f[3]); err != nil || op.Limit < 1 {
				return kv.TxnOp{}, fmt.Errorf("scan limit %q: want 1..%d", f[3], kv.MaxTxnScanLimit)
			}
		}
		return op, nil
	}
	return kv.TxnOp{}, fmt.Errorf("unknown op %q (put, get, del, delrange, scan)", f[0])
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// words splits line into words: bare, or Go-quoted (which may hold
// spaces).
func words(line string) ([]string, error) {
	var out []string
	for line = strings.TrimSpace(line); line != ""; line = strings.TrimSpace(line) {
		var w string
		if line[0] == '"' || line[0] == '`' {
			q, err := strconv.QuotedPrefix(line)
			if err != nil {
				return nil, fmt.Errorf("bad quoting: %s", line)
			}
			if w, err = strconv.Unquote(q); err != nil {
				return nil, fmt.Errorf("bad quoting: %s", q)
			}
			line = line[len(q):]
		} else {
			end := strings.IndexAny(line, " \t")
			if end < 0 {
				end = len(line)
			}
			w, line = line[:end], line[end:]
		}
		out = append(out, w)
	}
	return out, nil
}

// word reads s as one word: bare, or Go-quoted.
func word(s string) (string, error) {
	w, err := words(s)
	if err != nil {
		return "", err
	}
	if len(w) != 1 {
		return "", fmt.Errorf("want one word or quoted string, have %q", s)
	}
	return w[0], nil
}

// txnJSON is `flotilla txn -w json`'s answer.
type txnJSON struct {
	Succeeded bool        `json:"succeeded"`
	Revision  uint64      `json:"revision"`
	Range     uint64      `json:"range"`
	Responses []txnOpJSON `json:"responses"`
}

type txnOpJSON struct {
	Op      string      `json:"op"`
	Found   bool        `json:"found,omitempty"`
	KVs     []txnKVJSON `json:"kvs,omitempty"`
	More    bool        `json:"more,omitempty"`
	Deleted uint64      `json:"deleted,omitempty"`
}

type txnKVJSON struct {
	Key            string `json:"key"`
	Value          string `json:"value"`
	Revision       uint64 `json:"revision"`
	CreateRevision uint64 `json:"create_revision"`
	Version        uint64 `json:"version"`
}

// printTxn prints a transaction's outcome: SUCCESS or FAILURE, then each
// op's result (table), or txnJSON.
func printTxn(w io.Writer, res client.TxnResult, asJSON bool) error {
	out := txnJSON{Succeeded: res.Succeeded, Revision: res.Revision, Range: res.Group, Responses: []txnOpJSON{}}
	for _, op := range res.Ops {
		o := txnOpJSON{Op: op.Kind.String(), Found: op.Found, More: op.More, Deleted: op.Deleted}
		for _, k := range op.KVs {
			o.KVs = append(o.KVs, txnKVJSON{Key: string(k.Key), Value: string(k.Value), Revision: k.Revision, CreateRevision: k.CreateRevision, Version: k.Version})
		}
		out.Responses = append(out.Responses, o)
	}
	if asJSON {
		b, err := json.Marshal(out)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	}
	if res.Succeeded {
		fmt.Fprintf(w, "SUCCESS (range %d, revision %d)\n", res.Group, res.Revision)
	} else {
		fmt.Fprintf(w, "FAILURE (range %d, revision %d)\n", res.Group, res.Revision)
	}
	for _, op := range out.Responses {
		switch op.Op {
		case "put":
			fmt.Fprintln(w, "OK")
		case "del", "delrange":
			fmt.Fprintf(w, "deleted %d\n", op.Deleted)
		case "get":
			if !op.Found {
				fmt.Fprintln(w, "(not found)")
			}
		}
		for _, k := range op.KVs {
			fmt.Fprintf(w, "%s\t%s\n", k.Key, k.Value)
		}
		if op.More {
			fmt.Fprintln(w, "(more)")
		}
	}
	return nil
}
