package transport

import (
	"errors"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// grpcMetrics are the Prometheus collectors of one GRPCTransport.
type grpcMetrics struct {
	dropped         *prometheus.CounterVec // {to, reason}
	hbBatches       *prometheus.CounterVec // {to}
	hbCoalesced     *prometheus.CounterVec // {to}
	pings           *prometheus.CounterVec // {to}
	sent            *prometheus.CounterVec // {to}
	sentBytes       *prometheus.CounterVec // {to}
	rejected        *prometheus.CounterVec // {reason}
	unreachable     *prometheus.CounterVec // {to}
	snapshotsSent   *prometheus.CounterVec // {to, outcome}
	mustDelivered   *prometheus.CounterVec // {to}
	receivedBatches *prometheus.CounterVec // {from, lane}
	snapshotWaits   *prometheus.CounterVec // {reason}
}

func newGRPCMetrics(reg prometheus.Registerer) *grpcMetrics {
	m := &grpcMetrics{
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flotilla_transport_messages_dropped_total",
			Help: "Messages dropped by the peer transport, by destination node and reason.",
		}, []string{"to", "reason"}),
		hbBatches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flotilla_transport_heartbeat_batches_sent_total",
			Help: "Coalesced heartbeat batches written to a peer.",
		}, []string{"to"}),
		hbCoalesced: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flotilla_transport_heartbeats_coalesced_total",
			Help: "Heartbeats and heartbeat responses sent inside coalesced batches.",
		}, []string{"to"}),
		pings: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flotilla_transport_pings_sent_total",
			Help: "Empty heartbeat frames written to a peer: a tick with no heartbeat for it still tells it this node is alive.",
		}, []string{"to"}),
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flotilla_transport_messages_sent_total",
			Help: "Messages written to a peer, all lanes.",
		}, []string{"to"}),
		sentBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flotilla_transport_bytes_sent_total",
			Help: "Frame bytes written to a peer, all lanes.",
		}, []string{"to"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flotilla_transport_messages_rejected_total",
			Help: "Incoming frames rejected by this node, by reason.",
		}, []string{"reason"}),
		unreachable: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flotilla_transport_unreachable_total",
			Help: "Times a peer was reported unreachable.",
		}, []string{"to"}),
		snapshotsSent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flotilla_transport_snapshots_sent_total",
			Help: "Snapshots sent to a peer, by outcome (ok, failed).",
		}, []string{"to", "outcome"}),
		mustDelivered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flotilla_transport_must_delivered_total",
			Help: "Must-deliver messages acknowledged by a peer.",
		}, []string{"to"}),
		receivedBatches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flotilla_transport_frames_received_total",
			Help: "Frames received from a peer, by lane.",
		}, []string{"from", "lane"}),
		snapshotWaits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flotilla_transport_snapshot_wait_seconds_total",
			Help: "Seconds snapshots waited before or while sending, by reason: slot (MaxSnapshotsInFlight), rate (SnapshotRate).",
		}, []string{"reason"}),
	}
	if reg != nil {
		m.dropped = registerOrExisting(reg, m.dropped)
		m.hbBatches = registerOrExisting(reg, m.hbBatches)
		m.hbCoalesced = registerOrExisting(reg, m.hbCoalesced)
		m.pings = registerOrExisting(reg, m.pings)
		m.sent = registerOrExisting(reg, m.sent)
		m.sentBytes = registerOrExisting(reg, m.sentBytes)
		m.rejected = registerOrExisting(reg, m.rejected)
		m.unreachable = registerOrExisting(reg, m.unreachable)
		m.snapshotsSent = registerOrExisting(reg, m.snapshotsSent)
		m.mustDelivered = registerOrExisting(reg, m.mustDelivered)
		m.receivedBatches = registerOrExisting(reg, m.receivedBatches)
		m.snapshotWaits = registerOrExisting(reg, m.snapshotWaits)
	}
	return m
}

// registerOrExisting registers c, or returns the collector already registered
// under the same description (a node that recreates its transport).
func registerOrExisting(reg prometheus.Registerer, c *prometheus.CounterVec) *prometheus.CounterVec {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(*prometheus.CounterVec); ok {
				return existing
			}
		}
	}
	return c
}

// peerMetrics are the counters of one peer, resolved once so that the hot
// path does no label lookups.
type peerMetrics struct {
	dropQueueFull   prometheus.Counter
	dropUnreachable prometheus.Counter
	dropClosed      prometheus.Counter
	dropFault       prometheus.Counter
	dropTooLarge    prometheus.Counter
	dropRejected    prometheus.Counter
	hbBatches       prometheus.Counter
	hbCoalesced     prometheus.Counter
	pings           prometheus.Counter
	sent            prometheus.Counter
	sentBytes       prometheus.Counter
	unreachable     prometheus.Counter
	snapOK          prometheus.Counter
	snapFailed      prometheus.Counter
	mustDelivered   prometheus.Counter
}

func (m *grpcMetrics) forPeer(id uint64) peerMetrics {
	to := strconv.FormatUint(id, 10)
	return peerMetrics{
		dropQueueFull:   m.dropped.WithLabelValues(to, DropQueueFull),
		dropUnreachable: m.dropped.WithLabelValues(to, DropUnreachable),
		dropClosed:      m.dropped.WithLabelValues(to, DropClosed),
		dropFault:       m.dropped.WithLabelValues(to, DropFault),
		dropTooLarge:    m.dropped.WithLabelValues(to, DropTooLarge),
		dropRejected:    m.dropped.WithLabelValues(to, DropRejected),
		hbBatches:       m.hbBatches.WithLabelValues(to),
		hbCoalesced:     m.hbCoalesced.WithLabelValues(to),
		pings:           m.pings.WithLabelValues(to),
		sent:            m.sent.WithLabelValues(to),
		sentBytes:       m.sentBytes.WithLabelValues(to),
		unreachable:     m.unreachable.WithLabelValues(to),
		snapOK:          m.snapshotsSent.WithLabelValues(to, "ok"),
		snapFailed:      m.snapshotsSent.WithLabelValues(to, "failed"),
		mustDelivered:   m.mustDelivered.WithLabelValues(to),
	}
}
