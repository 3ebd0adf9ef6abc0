package server

import (
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/status"
)

type serverMetrics struct {
	requests    *prometheus.CounterVec
	transfers   *prometheus.CounterVec
	leaderWaits prometheus.Counter
	reroutes    prometheus.Counter
	// discovery: the Peer.Info answers this node gave, by whether they
	// carried its groups ("all") or said they were unchanged.
	discovery                        *prometheus.CounterVec
	discoveryAll, discoveryUnchanged prometheus.Counter
	// watchers: the Watch streams open on this node; watchEvents: the
	// events they sent.
	watchers    prometheus.Gauge
	watchEvents prometheus.Counter
}

func newServerMetrics(reg prometheus.Registerer) *serverMetrics {
	m := &serverMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flotilla_kv_requests_total",
			Help: "Client API requests by method and gRPC status code.",
		}, []string{"method", "code"}),
		transfers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flotilla_server_leadership_transfers_total",
			Help: "Leadership transfers started by this node, by reason (balance, shutdown) and outcome.",
		}, []string{"reason", "outcome"}),
		leaderWaits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flotilla_server_leader_waits_total",
			Help: "Requests that waited at this node for their group to have a live leader (none known, or its node silent).",
		}),
		reroutes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flotilla_server_reroutes_total",
			Help: "Requests routed again because raft refused their proposal unappended or their read's leader changed (leadership moved).",
		}),
		discovery: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flotilla_server_discovery_answers_total",
			Help: "Discovery (Peer.Info) answers this node gave, by groups: all (every local replica described) or unchanged (the asker holds them as they are).",
		}, []string{"groups"}),
		watchers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flotilla_watchers",
			Help: "Watch streams open on this node.",
		}),
		watchEvents: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flotilla_watch_events_total",
			Help: "Events this node's Watch streams sent.",
		}),
	}
	m.discoveryAll, m.discoveryUnchanged = m.discovery.WithLabelValues("all"), m.discovery.WithLabelValues("unchanged")
	reg.MustRegister(m.requests, m.transfers, m.leaderWaits, m.reroutes, m.discovery, m.watchers, m.watchEvents)
	return m
}

// count records a request's outcome and returns err unchanged.
func (s *Server) count(method string, err error) error {
	s.metrics.requests.WithLabelValues(method, status.Code(err).String()).Inc()
	return err
}
