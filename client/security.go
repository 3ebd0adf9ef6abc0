package client

import (
	"context"
	"crypto/tls"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/flotilla/flotilla/internal/certs"
)

// LoadTLS returns the TLS configuration of a client of a cluster whose
// certificates are in certsDir (flotilla cert): it trusts the cluster's CA
// (ca.crt), accepts only servers that hold a node certificate of it, and
// presents user's client certificate (client-USER.crt and .key). With user
// "" it presents none: the client then authenticates with Config.Token.
// The files are read once; a long-lived client that must follow rotated
// certificates creates a new Client. Errors wrap ErrInvalidArgument.
func LoadTLS(certsDir, user string) (*tls.Config, error) {
	src, err := certs.NewClientSource(certsDir, user)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	return src.ClientConfig(certs.RequireNode(0)), nil
}

// transportCredentials returns the dial options that secure and
// authenticate a connection as cfg says.
func (cfg *Config) transportCredentials() []grpc.DialOption {
	if cfg.TLS == nil {
		return []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(cfg.TLS))}
	if cfg.Token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(bearer(cfg.Token)))
	}
	return opts
}

// bearer sends a token with every request, as "authorization: Bearer
// TOKEN" metadata, over TLS only.
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearer) RequireTransportSecurity() bool { return true }
