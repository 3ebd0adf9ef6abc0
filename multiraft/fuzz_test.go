package multiraft

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/flotilla/flotilla/internal/testutil"
)

// entryCommand is one proposal as the apply path reads it from an entry.
type entryCommand struct {
	key uint64
	cmd []byte
}

// readEntry returns the proposals of normal entry data as the apply path
// reads them (apply.go): none for fewer than 8 bytes, a packed entry's,
// or the one of an entry of its own.
func readEntry(data []byte) ([]entryCommand, error) {
	switch {
	case len(data) < 8:
		return nil, nil
	case !isPacked(data):
		return []entryCommand{{binary.BigEndian.Uint64(data), data[8:]}}, nil
	}
	var out []entryCommand
	err := unpack(data, func(key uint64, cmd []byte) { out = append(out, entryCommand{key, cmd}) })
	return out, err
}

// FuzzUnpack: the reading of every committed normal entry (a packed
// entry, or one proposal) against packEntries, which writes them. Entry
// data comes from the leader that appended it, over the network, and from
// the log on disk.
func FuzzUnpack(f *testing.F) {
	var props []*proposal
	for i, n := range []int{0, 10, 100, 3, 40} {
		props = append(props, testProposal(uint64(i+1), n))
	}
	testutil.AddSeeds(f, packEntries(props, nil)...)
	testutil.AddSeeds(f, packEntries(props[:1], nil)...)
	f.Add(make([]byte, 8))
	f.Add(append(make([]byte, 8), 0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2, 3, 4, 5, 6, 7, 8))
	// Inputs the fuzzer found to reach new code, kept here rather than in
	// testdata/fuzz: multiraft/testdata belongs to the interaction tests.
	for _, b := range []string{
		"X000",
		"100000000",
		"7\x00000000000\x00000000000\x0500000000000000\x0300000",
		"9000000000000",
		"\x00\x00\x00\x00\x00\x00\x00\x00\x8a\xf1",
		"",
		"2\x05000001000000000000000000000",
	} {
		f.Add([]byte(b))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var cmds []entryCommand
		var err error
		testutil.CheckAlloc(t, "unpack", testutil.DecodeAllocLimit(len(data)), func() { cmds, err = readEntry(data) })
		if err != nil {
			if !errors.Is(err, errBadPack) {
				t.Fatalf("unpack error %v, want errBadPack", err)
			}
		} else {
			var n int
			if err := EntryCommands(data, func([]byte) { n++ }); err != nil || n != len(cmds) {
				t.Fatalf("EntryCommands sees %d commands (%v), the apply path %d", n, err, len(cmds))
			}
			checkPacked(t, cmds)
		}
		// Proposals built from the input (keys are never 0).
		in := testutil.NewFuzzInput(data)
		cmds = cmds[:0]
		for range in.Small(12) {
			cmd := in.Bytes(255)
			if in.Bool() {
				cmd = bytes.Repeat([]byte{1}, packAloneBytes) // one that gets an entry of its own
			}
			cmds = append(cmds, entryCommand{in.Uint64() | 1, cmd})
		}
		checkPacked(t, cmds)
	})
}

// checkPacked fails t unless proposals of cmds, packed, come back in
// order from the entries. Proposals of key 0 are left out: the engine
// never makes one (a packed entry starts with key 0).
func checkPacked(t *testing.T, cmds []entryCommand) {
	t.Helper()
	var props []*proposal
	var want []entryCommand
	for _, c := range cmds {
		if c.key != 0 {
			props = append(props, &proposal{key: c.key, data: binary.BigEndian.AppendUint64(nil, c.key)})
			props[len(props)-1].data = append(props[len(props)-1].data, c.cmd...)
			want = append(want, c)
		}
	}
	var got []entryCommand
	for _, data := range packEntries(props, nil) {
		if len(data) > packMaxBytes && isPacked(data) {
			t.Fatalf("packed entry of %d bytes, limit %d", len(data), packMaxBytes)
		}
		cmds, err := readEntry(data)
		if err != nil {
			t.Fatalf("packed entry %x: %v", data, err)
		}
		got = append(got, cmds...)
	}
	if !testutil.Same(got, want) {
		t.Fatalf("%d proposals come back as %d: %v, want %v", len(want), len(got), got, want)
	}
}
