package server

import (
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/status"
)

type serverMetrics struct {
	requests  *prometheus.CounterVec
	transfers *prometheus.CounterVec
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
	}
	reg.MustRegister(m.requests, m.transfers)
	return m
}

// count records a request's outcome and returns err unchanged.
func (s *Server) count(method string, err error) error {
	s.metrics.requests.WithLabelValues(method, status.Code(err).String()).Inc()
	return err
}
