package multiraft

import (
	"encoding/binary"
	"errors"
)

// Packing. Proposals of one group that reach raft in the same step go
// into one log entry, so a busy group pays raft's per-entry costs (log
// write, append message, memory log, commit tracking) once per step
// instead of once per proposal. The state machine still sees one Command
// per proposal, in proposal order; commands of one entry share its index.
//
// A normal entry's data is either one proposal, key(8) + command with a
// key that is never 0, or a packed entry:
//
//	0(8) { uvarint(len) key(8) command }...
//
// packMaxBytes bounds a packed entry; a proposal at least packAloneBytes
// long gets an entry of its own, as does a run of one.
const (
	packMaxBytes   = 64 << 10
	packAloneBytes = 8 << 10
)

// errBadPack: a packed entry that does not decode; the log is corrupt.
var errBadPack = errors.New("multiraft: malformed packed entry")

// packable reports whether p may share an entry.
func packable(p *proposal) bool { return len(p.data) < packAloneBytes }

// packEntries turns proposals (normal ones, all packable or not) into
// entry data, packing runs of packable proposals up to packMaxBytes.
func packEntries(props []*proposal, out [][]byte) [][]byte {
	for i := 0; i < len(props); {
		if !packable(props[i]) {
			out = append(out, props[i].data)
			i++
			continue
		}
		j, size := i, 8
		for j < len(props) && packable(props[j]) {
			n := binary.MaxVarintLen32 + len(props[j].data)
			if j > i && size+n > packMaxBytes {
				break
			}
			size += n
			j++
		}
		if j-i == 1 {
			out = append(out, props[i].data)
		} else {
			buf := make([]byte, 8, size)
			for _, p := range props[i:j] {
				buf = binary.AppendUvarint(buf, uint64(len(p.data)))
				buf = append(buf, p.data...)
			}
			out = append(out, buf)
		}
		i = j
	}
	return out
}

// isPacked reports whether normal entry data (at least 8 bytes) is a
// packed entry.
func isPacked(data []byte) bool { return binary.BigEndian.Uint64(data) == 0 }

// unpack calls fn with the key and command of each proposal of a packed
// entry, in order.
func unpack(data []byte, fn func(key uint64, cmd []byte)) error {
	for rest := data[8:]; len(rest) > 0; {
		n, w := binary.Uvarint(rest)
		if w <= 0 || n < 8 || n > uint64(len(rest)-w) {
			return errBadPack
		}
		p := rest[w : w+int(n)]
		fn(binary.BigEndian.Uint64(p), p[8:])
		rest = rest[w+int(n):]
	}
	return nil
}

// EntryCommands calls fn with each command held by the data of a normal
// log entry, in order; an entry of fewer than 8 bytes (a new leader's
// empty entry) holds none. For tools that inspect logs (the simulation's
// trace): proposal keys, which differ from run to run, are left out. cmd
// aliases data.
func EntryCommands(data []byte, fn func(cmd []byte)) error {
	switch {
	case len(data) < 8:
		return nil
	case !isPacked(data):
		fn(data[8:])
		return nil
	}
	return unpack(data, func(_ uint64, cmd []byte) { fn(cmd) })
}
