package mrtest

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/flotilla/flotilla/multiraft"
)

// KV is a small in-memory state machine for tests. Commands are
// "set KEY VALUE" (result: the previous value) and "del KEY"; queries are a
// key (result: its value). It keeps everything in memory, so AppliedIndex
// is 0 and a restart restores from the last snapshot and replays the log.
type KV struct {
	mu struct {
		sync.RWMutex
		data    map[string]string
		applied uint64
		// log lists every applied command index, to check that nothing is
		// applied twice or skipped.
		log []uint64
		// changes lists the membership changes applied (ApplyMembership).
		changes []AppliedChange
	}
}

// AppliedChange is a membership change as KV applied it.
type AppliedChange struct {
	Index  uint64
	Change multiraft.Change
	Data   string
	Taken  bool
}

var _ multiraft.MembershipApplier = (*KV)(nil)

// RefuseChange is the change data for which KV refuses a membership
// change (ApplyMembership).
const RefuseChange = "refuse"

// ApplyMembership implements multiraft.MembershipApplier: it records the
// change (Changes) and refuses it if its data is RefuseChange.
func (k *KV) ApplyMembership(index uint64, ch multiraft.Change, data []byte) (bool, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	take := string(data) != RefuseChange
	k.mu.changes = append(k.mu.changes, AppliedChange{Index: index, Change: ch, Data: string(data), Taken: take})
	return take, nil
}

// Changes returns the membership changes applied so far, in order.
func (k *KV) Changes() []AppliedChange {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return append([]AppliedChange(nil), k.mu.changes...)
}

var _ multiraft.StateMachine = (*KV)(nil)

// NewKV returns an empty KV.
func NewKV() *KV {
	k := &KV{}
	k.mu.data = make(map[string]string)
	return k
}

// Apply implements multiraft.StateMachine.
func (k *KV) Apply(cmds []multiraft.Command) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	for i := range cmds {
		c := &cmds[i]
		// Commands packed into one entry share its index.
		if c.Index < k.mu.applied || (c.Index == k.mu.applied && i == 0) {
			return fmt.Errorf("mrtest: index %d applied after %d", c.Index, k.mu.applied)
		}
		f := strings.SplitN(string(c.Data), " ", 3)
		switch {
		case len(f) == 3 && f[0] == "set":
			c.Result = []byte(k.mu.data[f[1]])
			k.mu.data[f[1]] = f[2]
		case len(f) == 2 && f[0] == "del":
			c.Result = []byte(k.mu.data[f[1]])
			delete(k.mu.data, f[1])
		default:
			c.Result = []byte("bad command")
		}
		k.mu.applied = c.Index
		k.mu.log = append(k.mu.log, c.Index)
	}
	return nil
}

// Query implements multiraft.StateMachine.
func (k *KV) Query(q []byte) ([]byte, error) {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return []byte(k.mu.data[string(q)]), nil
}

type kvSnap struct {
	Data    map[string]string
	Applied uint64
}

// Snapshot implements multiraft.StateMachine.
func (k *KV) Snapshot(w io.Writer) error {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return json.NewEncoder(w).Encode(kvSnap{Data: k.mu.data, Applied: k.mu.applied})
}

// Restore implements multiraft.StateMachine.
func (k *KV) Restore(r io.Reader, index uint64) error {
	var s kvSnap
	if err := json.NewDecoder(r).Decode(&s); err != nil {
		return err
	}
	if s.Data == nil {
		s.Data = make(map[string]string)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.mu.data, k.mu.applied = s.Data, index
	return nil
}

// AppliedIndex implements multiraft.StateMachine.
func (k *KV) AppliedIndex() uint64 { return 0 }

// Get returns key's local value.
func (k *KV) Get(key string) string {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.mu.data[key]
}

// Len returns the number of keys.
func (k *KV) Len() int {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return len(k.mu.data)
}

// Applied returns the last applied command index.
func (k *KV) Applied() uint64 {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.mu.applied
}
