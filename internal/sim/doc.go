// Package sim runs a whole Flotilla cluster — multiraft Hosts in Manual
// mode, the kv state machine on Pebble, a simulated network and simulated
// clients — in one goroutine under a simulated clock, driven by one seeded
// random source, and checks what it did.
//
// One run (Run) is one seed. Everything that happens is an event on a
// priority queue ordered by simulated time, then by the order it was
// scheduled: node ticks, message deliveries, client requests, faults. So a
// seed replays exactly: two runs of one seed produce the same event trace,
// whose hash Result.TraceHash carries.
//
// The parts:
//
//   - Network. Each node's transport.Transport hands its messages to the
//     simulated network, which drops, delays (and so reorders) and
//     duplicates them at seeded rates, and honours partitions, one-way
//     black holes and slow links set by the nemesis. Heartbeats wait for
//     FlushHeartbeats and travel as one batch per peer, as on the real
//     transports.
//   - Storage. Raft state lives in storage.Mem, whose Crash drops every
//     write not followed by a synced commit. The kv state machine lives in
//     Pebble on a crashable vfs.MemFS; a crash reopens Pebble on
//     vfs.MemFS.CrashClone, which keeps exactly what was synced.
//   - Nemesis. Partitions, one-way black holes, slow links, crashes and
//     restarts, crashes at a named persistence boundary of the engine
//     (multiraft.Config.FailPoint), and forced elections.
//   - Clients. A register workload (put, get, compare-and-swap over a few
//     keys, each with a partner key, and transactions that swap a key and
//     its partner together if the key holds what the client expects, else
//     read both) through Host.ProposeAsync and Host.ReadAsync, recorded as
//     a history with invoke and return order. In a run that splits by
//     load (about a quarter of the seeds), the clients pause for a while
//     within the faulty phase (sim.lullAt), half the nemesis's splits
//     leave a boundary the merge queue may undo
//     (ranges.Store.SplitUnsticky), and the merge queue runs
//     (ranges.Config.MinBytes), with a short load half-life so that
//     ranges cool in the pause: its merges (Result.AutoMerges) happen
//     under the run's faults, and the clients write again after them.
//
// Checks, per seed: the history is linearizable per key pair (porcupine, with a
// timeout: Result.Linearizable is "unknown" when it runs out); at most one
// leader per term per group; no log index is applied with two different
// commands on any replicas; every acknowledged write is in the applied log
// at the end; and after healing, every replica of a group has applied the
// same index and holds the same state.
//
// Determinism. etcd raft draws election timeouts from crypto/rand.Reader;
// Run replaces that variable with a seeded reader for its duration and
// restores it afterwards. Runs are therefore serialized by a package lock,
// and nothing else in the process may use crypto/rand.Reader meanwhile
// (tests of this package run no other goroutines that do).
package sim
