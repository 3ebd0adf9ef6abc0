package multiraft

import "errors"

// Sentinel errors. Check them with errors.Is: returned errors may wrap them
// with detail.
var (
	// ErrConfig: a Config field is outside its limits. (Every package of
	// this repository names its config error ErrConfig.)
	ErrConfig = errors.New("multiraft: invalid config")
	// ErrInvalidConfig is ErrConfig, under the name it had first.
	//
	// Deprecated: use ErrConfig.
	ErrInvalidConfig = ErrConfig
	// ErrStopped: the Host is stopped (or stopping, or failed).
	ErrStopped = errors.New("multiraft: host stopped")
	// ErrGroupNotFound: no group with that ID runs on this Host.
	ErrGroupNotFound = errors.New("multiraft: group not found")
	// ErrGroupExists: StartGroup for a group that already runs.
	ErrGroupExists = errors.New("multiraft: group already running")
	// ErrGroupRemoved: the group was stopped or removed while the request
	// waited.
	ErrGroupRemoved = errors.New("multiraft: group removed")
	// ErrNoLeader: the group has no known leader right now. Safe to retry.
	ErrNoLeader = errors.New("multiraft: no leader")
	// ErrDropped: raft refused the proposal (too many uncommitted bytes).
	// It was not appended; safe to retry.
	ErrDropped = errors.New("multiraft: proposal dropped")
	// ErrNotLeader: this replica is not the group's leader, and proposals
	// are not forwarded (Config.DisableProposalForwarding; membership
	// changes never are), or leadership moved away while the proposal was
	// held for a transfer. It was not appended; send it to the leader
	// (Leader names it, if known).
	ErrNotLeader = errors.New("multiraft: not the leader")
	// ErrAmbiguous: the proposal was appended but its outcome is unknown
	// (leader changed or the request timed out); it may or may not apply.
	ErrAmbiguous = errors.New("multiraft: proposal outcome unknown")
	// ErrLeaderChanged: a read could not be confirmed because the leader
	// changed. Reads are safe to retry.
	ErrLeaderChanged = errors.New("multiraft: leader changed")
	// ErrTimeout: a read or leadership transfer did not finish within
	// Config.RequestTimeoutTicks.
	ErrTimeout = errors.New("multiraft: request timed out")
	// ErrInvalidRequest: the request itself is malformed (say, a membership
	// change for node 0), or makes no sense for the group as it is (a
	// membership change checkChange refuses: removing the last voter).
	ErrInvalidRequest = errors.New("multiraft: invalid request")
	// ErrChangeRefused: the group's state machine refused a membership
	// change as every replica applied it (MembershipApplier); the
	// membership is unchanged.
	ErrChangeRefused = errors.New("multiraft: membership change refused by the state machine")
)

// Failure points: the names Config.FailPoint is called with, one per
// persistence boundary of a processing cycle.
const (
	// FailBeforePersist: the cycle's raft writes (entries, hard states,
	// snapshots) are about to be committed and synced. A leader's appends
	// have already been sent.
	FailBeforePersist = "raft/before-persist"
	// FailAfterPersist: the raft writes are durable; nothing that depends
	// on them (votes, acknowledgements, applies) has happened yet.
	FailAfterPersist = "raft/after-persist"
	// FailBeforeSend: the messages that promise durability (votes,
	// append acknowledgements, heartbeats) are about to be sent.
	FailBeforeSend = "raft/before-send"
	// FailBeforeApply: committed entries are about to be applied.
	FailBeforeApply = "raft/before-apply"
	// FailAfterApply: committed entries were applied (and the apply batch
	// committed without sync); raft has not been advanced yet.
	FailAfterApply = "raft/after-apply"
)
