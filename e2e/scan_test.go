package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flotilla/flotilla/client"
)

// `flotilla scan` lists a span page by page: each page's "after" (the last
// key it listed) continues the listing with --after, across ranges and a
// split made with `flotilla split`, every key once and in order.
func TestScanCLIPages(t *testing.T) {
	c := newProcCluster(t, 4)
	eps := strings.Join(c.endpoints(0), ",")
	c.waitLed(t, 4)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cl, err := client.New(ctx, client.Config{Endpoints: c.endpoints(0)})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	const n = 2500
	var want []string
	for i := range n {
		want = append(want, fmt.Sprintf("%x/item/%05d", i%16, i))
	}
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 16 {
				if _, err := cl.Put(ctx, []byte(want[i]), []byte("v")); err != nil {
					errs <- fmt.Errorf("put %s: %w", want[i], err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	slices.Sort(want)
	if r := run(t, nil, "split", "8/item/01000", "--endpoints", eps); r.code != 0 {
		t.Fatalf("split: exit %d: %s", r.code, r.stderr)
	}

	type page struct {
		KVs []struct {
			Key string `json:"key"`
		} `json:"kvs"`
		More  bool   `json:"more"`
		After string `json:"after"`
	}
	scan := func(args ...string) []string {
		t.Helper()
		var got []string
		var next []string
		for pages := 0; ; pages++ {
			if pages > n/700+2 {
				t.Fatalf("scan %v did not end after %d pages", args, pages)
			}
			r := run(t, nil, append(append([]string{"scan", "--limit", "700", "-w", "json", "--endpoints", eps}, args...), next...)...)
			if r.code != 0 {
				t.Fatalf("scan %v: exit %d: %s", args, r.code, r.stderr)
			}
			var p page
			if err := json.Unmarshal([]byte(r.stdout), &p); err != nil {
				t.Fatalf("scan output %q: %v", r.stdout, err)
			}
			for _, kv := range p.KVs {
				got = append(got, kv.Key)
			}
			if !p.More {
				return got
			}
			if p.After == "" {
				t.Fatalf("a page with more after it has no \"after\": %s", r.stdout)
			}
			next = []string{"--after", p.After}
		}
	}
	if got := scan(); !slices.Equal(got, want) {
		t.Fatalf("whole keyspace: %d keys, want %d in order (first %q)", len(got), len(want), got[:min(3, len(got))])
	}
	var wantPrefix []string
	for _, k := range want {
		if strings.HasPrefix(k, "8/") {
			wantPrefix = append(wantPrefix, k)
		}
	}
	if got := scan("--prefix", "8/"); !slices.Equal(got, wantPrefix) {
		t.Fatalf("--prefix 8/: %d keys, want %d", len(got), len(wantPrefix))
	}
	if r := run(t, nil, "scan", "--from", "a", "--to", "b", "--after", "c", "--endpoints", eps); r.code == 0 || !strings.Contains(r.stderr, "--after") {
		t.Fatalf("--after past the span: exit %d, %q", r.code, r.stderr)
	}
}
