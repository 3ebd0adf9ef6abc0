package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

// watchLine is one line of `flotilla watch -w json`.
type watchLine struct {
	Type        string  `json:"type"`
	Key         string  `json:"key"`
	Value       string  `json:"value"`
	Revision    uint64  `json:"revision"`
	Version     uint64  `json:"version"`
	ResumeToken string  `json:"resume_token"`
	PrevValue   *string `json:"prev_value"`
}

// `flotilla watch` prints one JSON object per write: from a revision, over
// a prefix that spans ranges, with previous values; `--resume` with the
// token of a printed line prints exactly the writes after it; `get --rev`
// reads a past value; bad input is refused.
func TestWatchCLI(t *testing.T) {
	c := newProcCluster(t, 4) // ranges cut at "40", "80", "c0"
	eps := strings.Join(c.endpoints(0), ",")
	c.waitLed(t, 4)
	var want []string
	for i := 0; i < 6; i++ {
		k := []string{"3/a", "7/b", "3/a"}[i%3] // ranges 1 and 2
		if r := run(t, nil, "put", k, fmt.Sprint(i), "--endpoints", eps); r.code != 0 {
			t.Fatalf("put: %s", r.stderr)
		}
		want = append(want, fmt.Sprintf("put %s=%d", k, i))
	}
	if r := run(t, nil, "del", "7/b", "--endpoints", eps); r.code != 0 {
		t.Fatalf("del: %s", r.stderr)
	}
	want = append(want, "delete 7/b=")
	watch := func(args ...string) []watchLine {
		t.Helper()
		r := runFor(t, 60*time.Second, nil, append([]string{"watch", "-w", "json", "--endpoints", eps}, args...)...)
		if r.code != 0 {
			t.Fatalf("watch %v exited %d: %s", args, r.code, r.stderr)
		}
		var out []watchLine
		for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
			var w watchLine
			if err := json.Unmarshal([]byte(l), &w); err != nil {
				t.Fatalf("watch printed %q: %v", l, err)
			}
			out = append(out, w)
		}
		return out
	}
	lines := watch("--prefix", "", "--rev", "1", "--count", "7", "--prev-kv")
	got := map[string][]string{}
	for _, l := range lines {
		got[l.Key] = append(got[l.Key], fmt.Sprintf("%s %s=%s", l.Type, l.Key, l.Value))
	}
	wantBy := map[string][]string{}
	for _, w := range want {
		k := strings.Fields(w)[1]
		k = k[:strings.Index(k, "=")]
		wantBy[k] = append(wantBy[k], w)
	}
	for k := range wantBy {
		if strings.Join(got[k], ",") != strings.Join(wantBy[k], ",") {
			t.Fatalf("key %s: watch printed %v, want %v", k, got[k], wantBy[k])
		}
	}
	var token string
	for i, l := range lines {
		if l.Key == "3/a" && l.Value == "3" {
			if l.PrevValue == nil || *l.PrevValue != "2" {
				t.Fatalf("3/a=3 printed previous value %v, want 2", l.PrevValue)
			}
		}
		if l.ResumeToken != "" && i < len(lines)-1 && token == "" {
			token = l.ResumeToken
		}
	}
	if token == "" {
		// One batch held every event: resume from the last one, after a
		// new write.
		token = lines[len(lines)-1].ResumeToken
	}
	if token == "" {
		t.Fatalf("no line carried a resume token: %+v", lines)
	}
	if r := run(t, nil, "put", "7/b", "again", "--endpoints", eps); r.code != 0 {
		t.Fatalf("put: %s", r.stderr)
	}
	rest := watch("--resume", token, "--count", "1")
	if len(rest) != 1 || rest[0].Key == "" {
		t.Fatalf("resumed watch printed %+v", rest)
	}
	// get --rev: 3/a as of its first write.
	first := lines[0]
	for _, l := range lines {
		if l.Key == "3/a" && l.Value == "0" {
			first = l
		}
	}
	r := run(t, nil, "get", "3/a", "--rev", fmt.Sprint(first.Revision), "--endpoints", eps)
	if r.code != 0 || strings.TrimSpace(r.stdout) != "0" {
		t.Fatalf("get --rev %d: exit %d, %q %s", first.Revision, r.code, r.stdout, r.stderr)
	}
	for _, bad := range [][]string{{"watch", "k", "--prefix", "p"}, {"watch", "--resume", "!!"}, {"get", "k", "--rev", "999999"}} {
		r := run(t, nil, append(bad, "--endpoints", eps)...)
		if r.code == 0 || r.stderr == "" {
			t.Fatalf("%v: exit %d, stderr %q; want a refusal", bad, r.code, r.stderr)
		}
	}
}
