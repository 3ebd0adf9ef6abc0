// Package chaos runs Flotilla clusters under faults and checks that they
// keep their promises: the seed failures of docs/failures.md at cluster level, in
// one process over real gRPC sockets and across real processes with real
// packets dropped by iptables.
//
// Parts:
//
//   - Cluster: an in-process cluster of N multiraft Hosts, each with a gRPC
//     transport on its own loopback address (127.0.0.1, 127.0.0.2, ...) and
//     a Pebble store, running G groups of a small KV state machine. Faults go
//     through the transport's hooks (Node.Faults) or by pointing a peer at a
//     dead address (Cluster.BreakLink: connection refused, the peer is
//     reported unreachable). Config.Naive swaps in NaiveTransport, the serial
//     blocking sender that the seed tests must see fail.
//   - ProcCluster: N `flotilla start` processes on 127.0.0.N, with SIGSTOP,
//     SIGCONT, SIGKILL and restart, and their status read with
//     `flotilla status -w json`.
//   - Firewall: iptables rules in a dedicated chain (FLOTILLA-CHAOS-<pid>) that
//     silently drop one directed link or partition nodes; Close removes them
//     all.
//   - Checks: View snapshots every group's leader and term as each node sees
//     them; CheckUnchanged, WaitLed and the Load writer's CheckAcked give the
//     assertions "terms unchanged", "leaders unchanged", "every group led
//     within a bound" and "no acknowledged write lost".
//
// Waits are bounded polls on a condition; a fault's duration ("three
// election timeouts") is timed with a timer because it is the scenario, not
// an outcome.
//
// Lock order: every lock in this package is a leaf (Load.mu, ProcCluster.mu,
// Firewall.mu) and none is held across a blocking step.
package chaos
