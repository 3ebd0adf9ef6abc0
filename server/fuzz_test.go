package server

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/flotilla/flotilla/internal/testutil"
)

// FuzzMeta: the check of a data directory's meta file, which a node reads
// at start: whatever the file holds, the node starts only if it names this
// node of this cluster in this layout, and otherwise fails with
// ErrOtherCluster; what encodeMeta writes reads back as written.
// go test -run '^$' -fuzz '^FuzzMeta$' ./server runs it.
func FuzzMeta(f *testing.F) {
	want := meta{ClusterID: 0xabcdef, NodeID: 2, InitialCluster: "1=127.0.0.1:2380,2=127.0.0.2:2380", Groups: 16, Layout: layoutRanges}
	for _, m := range []meta{want, {ClusterID: 1, NodeID: 1, Groups: 1}, {ClusterID: 0xabcdef, NodeID: 3, Layout: layoutRanges}} {
		b, err := encodeMeta(m)
		if err != nil {
			f.Fatal(err)
		}
		testutil.AddSeeds(f, b)
	}
	f.Add([]byte(`{"cluster_id": 11259375, "node_id": 2, "layout": 2, "cluster_id": 1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		err := compareMeta("dir", "dir/"+metaFile, b, want)
		var got meta
		jerr := json.Unmarshal(b, &got)
		switch {
		case err == nil:
			if jerr != nil || got.ClusterID != want.ClusterID || got.NodeID != want.NodeID || got.Layout != want.Layout {
				t.Fatalf("accepted %q: %+v, %v", b, got, jerr)
			}
		case !errors.Is(err, ErrOtherCluster):
			t.Fatalf("meta file %q: %v, want ErrOtherCluster", b, err)
		}
		if jerr == nil {
			checkMetaRoundTrip(t, got)
		}
		in := testutil.NewFuzzInput(b)
		checkMetaRoundTrip(t, meta{ClusterID: in.Uint64(), NodeID: in.Uint64(), Groups: int(int64(in.Uint64())),
			Layout: in.Small(4), InitialCluster: strings.ToValidUTF8(string(in.Bytes(64)), "?")})
	})
}

// checkMetaRoundTrip fails t unless m, written, reads back as m and is
// accepted as itself.
func checkMetaRoundTrip(t *testing.T, m meta) {
	t.Helper()
	b, err := encodeMeta(m)
	if err != nil {
		t.Fatal(err)
	}
	var got meta
	if err := json.Unmarshal(b, &got); err != nil || !reflect.DeepEqual(got, m) {
		t.Fatalf("%+v writes %q, which reads as %+v, %v", m, b, got, err)
	}
	if err := compareMeta("dir", "dir/"+metaFile, b, m); err != nil {
		t.Fatalf("%+v is not accepted as itself: %v", m, err)
	}
}
