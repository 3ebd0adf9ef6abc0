package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/internal/certs"
	"github.com/flotilla/flotilla/transport"
)

// security is the node's TLS material: nil fields and insecure set when the
// node runs with --insecure. Read-only after newSecurity; the Source
// reloads its files by itself (certReloadLoop).
type security struct {
	insecure bool
	src      *certs.Source // this node's certificate and the cluster's CA
}

// newSecurity loads the node's certificates, or returns the insecure
// settings. A missing or invalid certificate is an ErrConfig.
func newSecurity(cfg *Config) (*security, error) {
	if cfg.Insecure {
		return &security{insecure: true}, nil
	}
	src, err := certs.NewNodeSource(cfg.CertsDir, cfg.NodeID)
	if err != nil {
		return nil, fmt.Errorf("%w: --certs-dir: %v", ErrConfig, err)
	}
	src.SetLogger(cfg.Logger.With("node", cfg.NodeID))
	return &security{src: src}, nil
}

// peerServerOption returns the credentials of the peer listener: only
// nodes of the cluster (a node certificate of its CA) may connect. Which
// node a peer is, is checked per stream (checkPeer).
func (sec *security) peerServerOption() grpc.ServerOption {
	if sec.insecure {
		return grpc.Creds(insecure.NewCredentials())
	}
	return grpc.Creds(credentials.NewTLS(sec.src.ServerConfig(tls.RequireAndVerifyClientCert, certs.RequireNode(0))))
}

// clientServerOption returns the credentials of the client listener: a
// client certificate is verified if given; a client without one must
// present a token (authenticate).
func (sec *security) clientServerOption() grpc.ServerOption {
	if sec.insecure {
		return grpc.Creds(insecure.NewCredentials())
	}
	return grpc.Creds(credentials.NewTLS(sec.src.ServerConfig(tls.VerifyClientCertIfGiven, nil)))
}

// peerDial returns the credentials for dialling node id's peer address: the
// node's own certificate, and a check that the answering server holds node
// id's certificate.
func (sec *security) peerDial(id uint64) grpc.DialOption {
	if sec.insecure {
		return grpc.WithTransportCredentials(insecure.NewCredentials())
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(sec.src.ClientConfig(certs.RequireNode(id))))
}

// checkPeer is the transport's CheckPeer (nil: any claim is taken, with
// --insecure): a stream's certificate must be the node's its frames claim,
// and that node a member of the cluster (a node certificate of the same CA
// for another node ID, a retired or a foreign node, is refused).
func (sec *security) checkPeer(member func(uint64) bool) func(context.Context, uint64) error {
	if sec.insecure {
		return nil
	}
	same := transport.TLSPeerCheck(certs.NodeID)
	return func(ctx context.Context, from uint64) error {
		if !member(from) {
			return fmt.Errorf("node %d is not a member of this cluster", from)
		}
		return same(ctx, from)
	}
}

// peerTLS is the transport's per-peer TLS configuration (nil: plaintext).
func (sec *security) peerTLS() func(uint64) *tls.Config {
	if sec.insecure {
		return nil
	}
	return func(id uint64) *tls.Config { return sec.src.ClientConfig(certs.RequireNode(id)) }
}

// nodeDial returns the credentials for dialling another node's client
// address (forwarded requests): any node certificate of the cluster.
func (sec *security) nodeDial() grpc.DialOption {
	if sec.insecure {
		return grpc.WithTransportCredentials(insecure.NewCredentials())
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(sec.src.ClientConfig(certs.RequireNode(0))))
}

// httpListener wraps the HTTP listener in TLS (client certificates
// verified if given; httpGuard decides which paths need one).
func (sec *security) httpListener(l net.Listener) net.Listener {
	if sec.insecure {
		return l
	}
	return tls.NewListener(l, sec.src.ServerConfig(tls.VerifyClientCertIfGiven, nil))
}

// openPaths are the HTTP paths served without a client certificate: the
// health checks a load balancer or orchestrator probes.
var openPaths = map[string]bool{"/healthz": true, "/readyz": true}

// httpGuard refuses, with 401, a request for anything but the health
// checks from a client that presented no verified certificate. With
// --insecure it lets everything through.
func (sec *security) httpGuard(h http.Handler) http.Handler {
	if sec.insecure {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !openPaths[r.URL.Path] && verifiedLeaf(r.TLS) == nil {
			http.Error(w, "a client certificate of the cluster's CA is required for "+r.URL.Path, http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// run is certReloadLoop: it reloads the certificate files every interval
// until stop closes.
func (sec *security) run(stop <-chan struct{}, interval time.Duration) {
	if sec.insecure {
		return
	}
	sec.src.Run(stop, interval)
}

// verifiedLeaf returns the leaf certificate a TLS connection's peer
// presented, nil if none. It is verified: certs.Source's configurations
// check the chain in the handshake themselves (in VerifyConnection, so
// VerifiedChains stays empty) and fail it for a bad one.
func verifiedLeaf(st *tls.ConnectionState) *x509.Certificate {
	if st == nil || len(st.PeerCertificates) == 0 {
		return nil
	}
	return st.PeerCertificates[0]
}

// peerMember returns the unary interceptor of the peer listener's own
// services (discovery, internal proposals, replica state, auth records):
// the caller's certificate must be a member node's (the handshake already
// required a node certificate of the CA). The raft transport's streams
// are checked by checkPeer. Peer.Join is let through for any node
// certificate of the CA: the node is not a member yet, and the handler
// checks that the certificate names the ID it asks for. Nothing is checked
// with --insecure.
func (sec *security) peerMember(member func(uint64) bool) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if !sec.insecure {
			id, isNode := callerNode(ctx)
			if !isNode || (!member(id) && info.FullMethod != api.Peer_Join_FullMethodName) {
				return nil, status.Errorf(codes.PermissionDenied, "server: %s is for the cluster's nodes only", info.FullMethod)
			}
		}
		return handler(ctx, req)
	}
}
