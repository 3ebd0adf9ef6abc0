package transport

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// probeGreeting reports whether the peer's server answers on c, a fresh
// connection: with TLS, whether the TLS handshake completes (a paused
// process does not answer the client's hello); in plaintext, whether the
// first frame the server sends unasked is its HTTP/2 SETTINGS. ctx bounds
// the wait; the caller closes c.
func (p *grpcPeer) probeGreeting(ctx context.Context, c net.Conn) bool {
	if p.tlsCfg != nil {
		tc := tls.Client(c, p.tlsCfg)
		return tc.HandshakeContext(ctx) == nil
	}
	return readSettings(c)
}

// TLSPeerCheck returns a GRPCConfig.CheckPeer that requires the verified
// TLS certificate of the stream's connection to name node from, as nodeID
// reads it. A stream without TLS, or without a verified certificate, is
// refused.
func TLSPeerCheck(nodeID func(*x509.Certificate) (uint64, bool)) func(ctx context.Context, from uint64) error {
	return func(ctx context.Context, from uint64) error {
		p, ok := peer.FromContext(ctx)
		if !ok {
			return errors.New("no peer information")
		}
		ti, ok := p.AuthInfo.(credentials.TLSInfo)
		if !ok {
			return errors.New("not a TLS connection")
		}
		// The server's TLS configuration verified the chain in the
		// handshake (certs.Source checks it itself, in VerifyConnection,
		// so VerifiedChains stays empty): a connection that exists
		// presented a verified certificate, if any.
		if len(ti.State.PeerCertificates) == 0 {
			return errors.New("no client certificate")
		}
		leaf := ti.State.PeerCertificates[0]
		if id, ok := nodeID(leaf); !ok || id != from {
			return fmt.Errorf("frames claim node %d but the certificate is %q's", from, leaf.Subject.CommonName)
		}
		return nil
	}
}
