package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
)

// Sentinel errors of the gRPC transport. Check them with errors.Is.
var (
	// ErrConfig wraps every validation failure of a GRPCConfig. (Every
	// package names its config error ErrConfig.)
	ErrConfig = errors.New("transport: invalid config")
	// ErrBadConfig is ErrConfig, under the name it had first.
	//
	// Deprecated: use ErrConfig.
	ErrBadConfig = ErrConfig
	// ErrTooLarge is returned by SendMust for a payload over
	// GRPCConfig.MaxMessageSize.
	ErrTooLarge = errors.New("transport: message too large")
	// ErrNotStarted is returned by SendMust before Start.
	ErrNotStarted = errors.New("transport: not started")
	// ErrRejected is the error a peer's transport returns when it refuses a
	// frame (wrong cluster, wrong node, too large, malformed).
	ErrRejected = errors.New("transport: rejected")
)

// Further drop reasons of the gRPC transport (see the Drop* constants in
// transport.go for the others).
const (
	// DropTooLarge: a message over GRPCConfig.MaxMessageSize.
	DropTooLarge = "too_large"
	// DropRejected: the peer refused the frame that carried the message.
	DropRejected = "rejected"
)

// Reject reasons, used as the reason label of
// flotilla_transport_messages_rejected_total.
const (
	RejectClusterID = "cluster_id"
	RejectWrongNode = "wrong_node"
	RejectOversize  = "oversize"
	RejectMalformed = "malformed"
	RejectNoMust    = "no_must_handler"
	// RejectIdentity: the sender's certificate does not name the node its
	// frames claim to come from (GRPCConfig.CheckPeer).
	RejectIdentity = "identity"
	// RejectRemoved: the sender was removed from the cluster
	// (GRPCTransport.Refuse).
	RejectRemoved = "removed"
)

// Defaults and limits of GRPCConfig. A zero field takes its default.
const (
	DefaultQueueCap             = 4096
	DefaultMaxPendingHeartbeats = 16384
	DefaultSnapshotQueueCap     = 4
	DefaultMaxSnapshotsInFlight = 2
	DefaultMustQueueCap         = 256
	DefaultMaxFrameSize         = 8 << 20
	DefaultMaxMessageSize       = 4 << 20
	DefaultSnapshotChunkSize    = 1 << 20
	DefaultMaxSnapshotSize      = 1 << 30
	DefaultWriteTimeout         = 2 * time.Second
	DefaultDialTimeout          = 5 * time.Second
	DefaultBackoffBase          = 100 * time.Millisecond
	DefaultBackoffMax           = 5 * time.Second
	DefaultProbeInterval        = 250 * time.Millisecond
	DefaultKeepaliveTime        = 10 * time.Second
	DefaultKeepaliveTimeout     = 5 * time.Second
	DefaultDropLogInterval      = 10 * time.Second

	// MinKeepaliveTime is the smallest client keepalive interval gRPC
	// accepts; it silently raises smaller values.
	MinKeepaliveTime = 10 * time.Second
	// frameSlack is the room a frame needs beyond its largest message for
	// the frame header and per-message prefixes.
	frameSlack = 1 << 10

	// streamWindow and connWindow are the HTTP/2 flow-control windows of
	// the peer connections, per stream and per connection, in bytes. They
	// are fixed on purpose: a window gRPC sizes itself (its BDP estimator,
	// on when no window is set) sends a PING on the first data frame after
	// each estimate, and the peer answers it. With every node pinging every
	// peer each tick (then; every multiraft PingTicks since), that tripled the writes of an idle node: strace
	// counted 100 writes/s on node 1 of 3 with every range quiesced, of
	// which 20 were the pings themselves (BENCHMARKS.md, "The idle
	// floor"). The connection's window is the estimator's ceiling (16
	// MiB), and bounds what one peer may have buffered here. A stream gets
	// a quarter of it, so that one lane (a snapshot, a burst of appends)
	// cannot take the whole window from the heartbeat lane. The price: a
	// lane moves at most 4 MiB per round trip, 80 MiB/s at 50 ms (plenty
	// on a LAN; a limit across a WAN).
	streamWindow = 4 << 20
	connWindow   = 16 << 20
)

// GRPCConfig configures a GRPCTransport. A zero numeric or duration field
// takes the default named next to it; a value outside its limits makes
// NewGRPC fail with ErrConfig. Every node of a cluster should use the same
// sizes and keepalive settings: the receiver enforces its own limits.
type GRPCConfig struct {
	// NodeID is this node's ID. Required, non-zero.
	NodeID uint64
	// ClusterID identifies the cluster. Every frame carries it and a frame
	// with another cluster ID is rejected. Required, non-zero.
	ClusterID uint64

	// PeerAddr is this node's peer address, host:port, as the other nodes
	// know it. Its host is the source address of outbound connections, so a
	// firewall rule can single out one directed link. An empty host or an
	// unspecified one (0.0.0.0, ::) lets the kernel choose. Default: the
	// host of ListenAddr. A hostname is resolved once, by NewGRPC.
	PeerAddr string
	// ListenAddr, if set, makes the transport listen on this host:port
	// itself and serve the peer service there (port 0 picks a free port;
	// see Addr). Exactly one of ListenAddr and Server must be set.
	ListenAddr string
	// Server, if set, gets the peer service registered on it by NewGRPC.
	// The caller serves and stops it; it should be created with
	// ServerOptions(cfg) so that keepalive enforcement and the frame size
	// limit match. Exactly one of ListenAddr and Server must be set.
	Server *grpc.Server

	// TLS, if set, returns the TLS configuration for dialling peer id (its
	// own certificate, and the check that the peer's certificate names
	// node id); it is called once per peer, when the peer is added. Nil:
	// plaintext. The peer service's listener is the caller's: serve it
	// with matching server credentials (grpc.Creds on Server).
	TLS func(id uint64) *tls.Config
	// ServerTLS, if set with ListenAddr, makes the transport's own server
	// serve TLS with it (it should require and verify client certificates:
	// CheckPeer then reads them). Ignored with Server, whose credentials
	// are the caller's. Nil: plaintext.
	ServerTLS *tls.Config
	// CheckPeer, if set, is called with the context of every inbound
	// stream once its first frame names the sending node; an error ends
	// the stream with PermissionDenied and counts a rejection (reason
	// "identity"). The server uses it to check that the sender's
	// certificate names that node. Called on the stream's handler
	// goroutine; it must not block.
	CheckPeer func(ctx context.Context, from uint64) error

	// Registerer receives the transport's metrics. Nil: not registered.
	// Registering twice in one registry reuses the existing collectors.
	Registerer prometheus.Registerer
	// Logger receives the rate-limited drop reports and connection events.
	// Nil: slog.Default().
	Logger *slog.Logger

	// QueueCap is the capacity of each peer's raft lane, in messages.
	// Default 4096; limits [1, 1<<20].
	QueueCap int
	// MaxPendingHeartbeats bounds the heartbeats coalesced per peer between
	// two FlushHeartbeats calls, in messages. Default 16384; [1, 1<<22].
	MaxPendingHeartbeats int
	// SnapshotQueueCap is the capacity of each peer's snapshot lane, in
	// snapshots. Default 4; limits [1, 1024].
	SnapshotQueueCap int
	// MustQueueCap is the capacity of each peer's must-deliver lane, in
	// messages; SendMust waits for room. Default 256; limits [1, 1<<20].
	MustQueueCap int
	// MaxFrameSize bounds one frame (one batch) on the wire, in bytes; the
	// server refuses bigger frames. Default 8 MiB; limits [64 KiB, 256 MiB].
	MaxFrameSize int
	// MaxMessageSize bounds one raft message (snapshots excepted) and one
	// must-deliver payload, in bytes, encoded. Bigger ones are dropped by the
	// sender and rejected by the receiver. Default 4 MiB; limits
	// [1 KiB, MaxFrameSize-1 KiB].
	MaxMessageSize int
	// SnapshotChunkSize is the size of one snapshot chunk, in bytes.
	// Default 1 MiB; limits [4 KiB, MaxFrameSize-1 KiB].
	SnapshotChunkSize int
	// MaxSnapshotSize bounds an encoded MsgSnap, in bytes. Default 1 GiB;
	// limits [SnapshotChunkSize, 1<<40]. (A streamed snapshot's message is
	// small; its state may reach 1 TiB: snapshot.go.)
	MaxSnapshotSize int64
	// MaxSnapshotsInFlight bounds the snapshots this node sends at once,
	// over all its peers (snappace.go). Default 2; limits [1, 64].
	MaxSnapshotsInFlight int
	// SnapshotRate bounds the snapshot data this node sends, in bytes per
	// second over all its peers (snappace.go); one chunk beyond the rate
	// may go at once. Default 0: no bound; else at least SnapshotChunkSize
	// (a lone stream then waits at most a second between chunks; k
	// streams share the rate). A snapshot queued behind others waits for
	// them: at a low rate, a large range's snapshot holds its peers' for
	// its size over the rate.
	SnapshotRate int64
	// SnapshotDir is where the state of streamed snapshots being received
	// is written: one file per snapshot, handed to the engine with the
	// message (FileMarker), which removes it once restored. Must exist.
	// Empty: the state is received in memory and delivered whole.
	SnapshotDir string

	// WriteTimeout bounds every write to a stream, and how long a stream
	// with unacked frames may go without an ack (raft and heartbeat lanes),
	// and the wait for a snapshot or must-deliver ack; a stream that exceeds
	// it is cancelled and the peer reported unreachable. It must exceed the
	// time one MaxFrameSize frame takes on the slowest link. Default 2s;
	// limits [10ms, 5m].
	WriteTimeout time.Duration
	// DialTimeout bounds opening a connection or a stream. Default 5s;
	// limits [10ms, 5m].
	DialTimeout time.Duration
	// BackoffBase is the first wait before reopening a failed lane; each
	// failure doubles it up to BackoffMax, each wait is jittered by ±20%.
	// gRPC's connect backoff uses the same base and cap. Both waits end at
	// once when the peer shows it is up (see ProbeInterval). Default 100ms;
	// limits [1ms, BackoffMax].
	BackoffBase time.Duration
	// BackoffMax caps the reconnect backoff. Default 5s; limits
	// [BackoffBase, 10m].
	BackoffMax time.Duration
	// ProbeInterval is the interval between probes of a peer toward which a
	// lane backs off while the connection to it is down; there are no probes
	// otherwise. A probe is a dial that waits, for at most
	// min(ProbeInterval, DialTimeout), for the peer's gRPC server to greet
	// it. A peer that answers, like one that opens a stream to this node,
	// ends the backoff toward it at once. Default 250ms; limits [10ms, 1m].
	ProbeInterval time.Duration
	// KeepaliveTime is the interval of gRPC keepalive pings on an idle
	// connection; the server accepts pings as often as KeepaliveTime/2.
	// Default 10s; limits [10s, 1h] (gRPC raises anything below 10s).
	KeepaliveTime time.Duration
	// KeepaliveTimeout is how long a keepalive ping waits for its ack before
	// the connection is closed. Default 5s; limits [10ms, 10m].
	KeepaliveTimeout time.Duration
	// DropLogInterval is how often per-peer drop counts are logged (only
	// peers with new drops, so a healthy cluster logs nothing). Default 10s;
	// limits [10ms, 1h].
	DropLogInterval time.Duration
}

func checkRange[T int | int64 | time.Duration](name string, v *T, def, lo, hi T) error {
	if *v == 0 {
		*v = def
	}
	if *v < lo || *v > hi {
		return fmt.Errorf("%w: %s = %v, want [%v, %v]", ErrConfig, name, *v, lo, hi)
	}
	return nil
}

// withDefaults returns c with defaults filled in, or an error wrapping
// ErrConfig.
func (c GRPCConfig) withDefaults() (GRPCConfig, error) {
	if c.NodeID == 0 {
		return c, fmt.Errorf("%w: NodeID is required", ErrConfig)
	}
	if c.ClusterID == 0 {
		return c, fmt.Errorf("%w: ClusterID is required", ErrConfig)
	}
	if (c.ListenAddr == "") == (c.Server == nil) {
		return c, fmt.Errorf("%w: exactly one of ListenAddr and Server must be set", ErrConfig)
	}
	if c.ListenAddr != "" {
		if _, _, err := net.SplitHostPort(c.ListenAddr); err != nil {
			return c, fmt.Errorf("%w: ListenAddr %q: %v", ErrConfig, c.ListenAddr, err)
		}
	}
	if c.PeerAddr != "" {
		if _, _, err := net.SplitHostPort(c.PeerAddr); err != nil {
			return c, fmt.Errorf("%w: PeerAddr %q: %v", ErrConfig, c.PeerAddr, err)
		}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	errs := []error{
		checkRange("QueueCap", &c.QueueCap, DefaultQueueCap, 1, 1<<20),
		checkRange("MaxPendingHeartbeats", &c.MaxPendingHeartbeats, DefaultMaxPendingHeartbeats, 1, 1<<22),
		checkRange("SnapshotQueueCap", &c.SnapshotQueueCap, DefaultSnapshotQueueCap, 1, 1024),
		checkRange("MustQueueCap", &c.MustQueueCap, DefaultMustQueueCap, 1, 1<<20),
		checkRange("MaxFrameSize", &c.MaxFrameSize, DefaultMaxFrameSize, 64<<10, 256<<20),
	}
	if err := errors.Join(errs...); err != nil {
		return c, err
	}
	defMsg := min(DefaultMaxMessageSize, c.MaxFrameSize-frameSlack)
	defChunk := min(DefaultSnapshotChunkSize, c.MaxFrameSize-frameSlack)
	errs = []error{
		checkRange("MaxMessageSize", &c.MaxMessageSize, defMsg, 1<<10, c.MaxFrameSize-frameSlack),
		checkRange("SnapshotChunkSize", &c.SnapshotChunkSize, defChunk, 4<<10, c.MaxFrameSize-frameSlack),
	}
	if err := errors.Join(errs...); err != nil {
		return c, err
	}
	errs = []error{
		checkRange("MaxSnapshotSize", &c.MaxSnapshotSize, DefaultMaxSnapshotSize, int64(c.SnapshotChunkSize), 1<<40),
		checkRange("MaxSnapshotsInFlight", &c.MaxSnapshotsInFlight, DefaultMaxSnapshotsInFlight, 1, 64),
		checkRange("WriteTimeout", &c.WriteTimeout, DefaultWriteTimeout, 10*time.Millisecond, 5*time.Minute),
		checkRange("DialTimeout", &c.DialTimeout, DefaultDialTimeout, 10*time.Millisecond, 5*time.Minute),
		checkRange("BackoffMax", &c.BackoffMax, DefaultBackoffMax, time.Millisecond, 10*time.Minute),
		checkRange("ProbeInterval", &c.ProbeInterval, DefaultProbeInterval, 10*time.Millisecond, time.Minute),
		checkRange("KeepaliveTime", &c.KeepaliveTime, DefaultKeepaliveTime, MinKeepaliveTime, time.Hour),
		checkRange("KeepaliveTimeout", &c.KeepaliveTimeout, DefaultKeepaliveTimeout, 10*time.Millisecond, 10*time.Minute),
		checkRange("DropLogInterval", &c.DropLogInterval, DefaultDropLogInterval, 10*time.Millisecond, time.Hour),
	}
	if err := errors.Join(errs...); err != nil {
		return c, err
	}
	if err := checkRange("BackoffBase", &c.BackoffBase, min(DefaultBackoffBase, c.BackoffMax), time.Millisecond, c.BackoffMax); err != nil {
		return c, err
	}
	if c.SnapshotRate != 0 {
		if err := checkRange("SnapshotRate", &c.SnapshotRate, 0, int64(c.SnapshotChunkSize), 1<<40); err != nil {
			return c, err
		}
	}
	return c, nil
}

// maxRecvSize is the largest gRPC message a receiver accepts.
func (c *GRPCConfig) maxRecvSize() int { return c.MaxFrameSize + frameSlack }

// WindowDialOptions returns the dial options that give a connection to a
// peer's server the peer connections' fixed flow-control windows
// (streamWindow), for the node's other clients of its peers' servers
// (discovery): without them gRPC's estimator pings the peer after every
// call.
func WindowDialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithInitialWindowSize(streamWindow),
		grpc.WithInitialConnWindowSize(connWindow),
	}
}

// ServerOptions returns the gRPC server options the peer service needs:
// keepalive parameters and an enforcement policy that match the clients'
// keepalive pings, a receive limit that fits the largest frame, and the
// fixed flow-control windows (streamWindow). Use them
// when creating the *grpc.Server passed as GRPCConfig.Server. cfg gets its
// defaults filled in; an invalid cfg gets the defaults' options.
func ServerOptions(cfg GRPCConfig) []grpc.ServerOption {
	c, err := cfg.withDefaults()
	if err != nil {
		c = GRPCConfig{NodeID: 1, ClusterID: 1, ListenAddr: ":0"}
		c, _ = c.withDefaults()
	}
	return []grpc.ServerOption{
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             c.KeepaliveTime / 2,
			PermitWithoutStream: true,
		}),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time:    c.KeepaliveTime,
			Timeout: c.KeepaliveTimeout,
		}),
		grpc.MaxRecvMsgSize(c.maxRecvSize()),
		grpc.InitialWindowSize(streamWindow),
		grpc.InitialConnWindowSize(connWindow),
		grpc.WaitForHandlers(true),
	}
}
