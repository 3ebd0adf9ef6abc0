package multiraft

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"testing"
)

func testProposal(key uint64, size int) *proposal {
	data := make([]byte, 8+size)
	binary.BigEndian.PutUint64(data, key)
	for i := range size {
		data[8+i] = byte(key + uint64(i))
	}
	return &proposal{key: key, data: data}
}

// TestPackRoundTrip: packing keeps every proposal, in order, bounds packed
// entries, gives large proposals (and runs of one) an entry of their own,
// and unpack returns exactly what was packed.
func TestPackRoundTrip(t *testing.T) {
	sizes := []int{0, 10, 100, packAloneBytes, 5, 7000, 7000, 7000, 7000, 7000, 7000, 7000, 7000, 7000, 7000, 3, 1 << 20, 1}
	var props []*proposal
	for i, n := range sizes {
		props = append(props, testProposal(uint64(i+1), n))
	}
	datas := packEntries(props, nil)
	var keys []uint64
	var cmds [][]byte
	for _, d := range datas {
		if len(d) > packMaxBytes && isPacked(d) {
			t.Fatalf("packed entry of %d bytes, limit %d", len(d), packMaxBytes)
		}
		if !isPacked(d) {
			keys = append(keys, binary.BigEndian.Uint64(d))
			cmds = append(cmds, d[8:])
			continue
		}
		n := 0
		if err := unpack(d, func(k uint64, c []byte) { keys, cmds, n = append(keys, k), append(cmds, c), n+1 }); err != nil {
			t.Fatal(err)
		}
		if n < 2 {
			t.Fatalf("packed entry of %d proposal(s)", n)
		}
	}
	if len(keys) != len(props) {
		t.Fatalf("%d proposals came back, want %d", len(keys), len(props))
	}
	for i, p := range props {
		if keys[i] != p.key || !bytes.Equal(cmds[i], p.data[8:]) {
			t.Fatalf("proposal %d came back as key %d, %d bytes", i, keys[i], len(cmds[i]))
		}
	}
	// 0,10,100 | 8K alone | 5 and nine of 7000 (the tenth would pass
	// 64 KiB) | 7000, 3 | 1M alone | 1 (a run of one).
	if got := fmt.Sprint(len(datas)); got != "6" {
		t.Fatalf("%d entries, want 6", len(datas))
	}
}

// TestUnpackRejectsCorruption: a truncated or overlong packed entry is an
// error, never a panic or a short read taken as valid.
func TestUnpackRejectsCorruption(t *testing.T) {
	d := packEntries([]*proposal{testProposal(1, 20), testProposal(2, 20)}, nil)[0]
	for _, bad := range [][]byte{d[:len(d)-1], append(bytes.Clone(d), 0x05), append(bytes.Clone(d[:8]), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01), append(bytes.Clone(d[:8]), 3, 1, 2, 3)} {
		if err := unpack(bad, func(uint64, []byte) {}); !errors.Is(err, errBadPack) {
			t.Fatalf("unpack(%x) = %v, want errBadPack", bad, err)
		}
	}
}
