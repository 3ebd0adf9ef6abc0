package storage

import (
	"encoding/binary"

	"github.com/flotilla/flotilla/internal/keys"
)

// Key layout (kinds registered in internal/keys). The kind byte comes first so that the log entries of all
// groups sit together, apart from the small per-group records, and so that
// listing groups scans only the conf-state records.
//
//	'l' group(8) index(8)  → raftpb.Entry
//	'h' group(8)           → raftpb.HardState
//	'c' group(8)           → confIndex(8) raftpb.ConfState
//	's' group(8)           → raftpb.Snapshot
const (
	kindLog       = byte(keys.RaftLog)
	kindHardState = byte(keys.RaftHardState)
	kindConfState = byte(keys.RaftConfState)
	kindSnapshot  = byte(keys.RaftSnapshot)

	groupKeyLen = 9
	logKeyLen   = 17
)

func putGroupKey(dst []byte, kind byte, group uint64) {
	dst[0] = kind
	binary.BigEndian.PutUint64(dst[1:], group)
}

func groupKey(kind byte, group uint64) []byte {
	k := make([]byte, groupKeyLen)
	putGroupKey(k, kind, group)
	return k
}

func putLogKey(dst []byte, group, index uint64) {
	putGroupKey(dst, kindLog, group)
	binary.BigEndian.PutUint64(dst[9:], index)
}

func logKey(group, index uint64) []byte {
	k := make([]byte, logKeyLen)
	putLogKey(k, group, index)
	return k
}
