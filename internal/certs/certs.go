// Package certs creates and loads the certificates that secure a Flotilla
// cluster: its own certificate authority, one certificate per node and one
// per client user, all in one directory (docs/design.md, "cert").
//
// # Files
//
// A certs directory holds, by name (CACert, CAKey, NodeCert, NodeKey,
// ClientCert, ClientKey):
//
//	ca.crt, ca.key                  the cluster's CA (ca.key may live elsewhere: Options.CAKeyPath)
//	node-<ID>.crt, node-<ID>.key    node ID's certificate and key
//	client-<NAME>.crt, .key         client user NAME's certificate and key
//
// Several nodes may share one directory (a local cluster, tests); each uses
// ca.crt and its own pair. Certificates and keys are PEM; keys are PKCS #8
// (ECDSA P-256 by default, or Ed25519). Every file is written with mode
// 0600 through a temporary file and a rename, so a reader sees the old file
// or the new one, never a part. ca.crt may hold several CA certificates (the
// old and the new one while the CA is being replaced): all are trusted.
//
// # Identities
//
// A node's certificate names it twice, and both must agree: its subject
// common name is "node.<ID>" and it has the URI SAN "flotilla://node/<ID>"
// (NodeID). It is good for both ends of a TLS connection (ExtKeyUsage
// ServerAuth and ClientAuth), because nodes dial each other. A client's
// certificate has the user name as its common name and is good only for
// the client end (ClientName); ValidName keeps user names apart from node
// names.
//
// # Why node IDs, not host names
//
// Clients of a node (other nodes, the CLI) do not check the host name in
// the node's certificate. Nodes move between addresses, share machines
// (127.0.0.1, 127.0.0.2, ...) and are reached by the address a cluster
// member advertised, so the name a dialer used proves little. What a
// dialer needs to know is that the peer holds a certificate of this
// cluster's CA that belongs to a node, and often to which node: the
// verify functions of ServerConfig and ClientConfig (RequireNode) check
// exactly that. The DNS names and IP addresses of a node's certificate are
// still there for other tools (curl, grpcurl) that do check host names.
//
// # Reloading
//
// A Source holds the certificates in use and hands them to every new TLS
// handshake: a running node or client picks up replaced files without a
// restart and without dropping connections. Reload reads the files again
// and swaps in the new set only if it is complete and valid (parses, the
// key matches the certificate, the CA signed it, it names the same node or
// user); otherwise the old set stays in use and Reload reports why. A
// replacement written file by file is therefore refused until its last
// file is in place. Run calls Reload periodically; the owner of the
// Source starts it.
package certs

import (
	"errors"
	"fmt"
	"strconv"
	"time"
)

// ErrCerts is wrapped by every error of this package: a certificate or key
// that is missing, unparsable, mismatched, not signed by the CA, of the
// wrong identity or expired; bad options or names; a file that would be
// overwritten. Errors about a file name the file, and also wrap the
// underlying cause where there is one (fs.ErrNotExist, fs.ErrExist, ...).
var ErrCerts = errors.New("certs: unusable certificates")

// File names of the CA in a certs directory.
const (
	CACert = "ca.crt"
	CAKey  = "ca.key"
)

// NodeCert is the file name of node id's certificate: "node-<id>.crt" (a
// contract: docs/design.md).
func NodeCert(id uint64) string { return "node-" + strconv.FormatUint(id, 10) + ".crt" }

// NodeKey is the file name of node id's key: "node-<id>.key".
func NodeKey(id uint64) string { return "node-" + strconv.FormatUint(id, 10) + ".key" }

// ClientCert is the file name of client user name's certificate:
// "client-<name>.crt". It does not check the name (ValidName).
func ClientCert(name string) string { return "client-" + name + ".crt" }

// ClientKey is the file name of client user name's key: "client-<name>.key".
// It does not check the name (ValidName).
func ClientKey(name string) string { return "client-" + name + ".key" }

// KeyType is the kind of key pair a certificate is made with.
type KeyType string

// Key types.
const (
	// ECDSA is an ECDSA key on curve P-256, the default.
	ECDSA KeyType = "ecdsa"
	// Ed25519 is an Ed25519 key.
	Ed25519 KeyType = "ed25519"
)

// Lifetimes.
const (
	// DefaultCALifetime is a CA's lifetime when Options.Lifetime is 0: ten
	// years.
	DefaultCALifetime = 87600 * time.Hour
	// DefaultLeafLifetime is a node's or client's certificate lifetime when
	// Options.Lifetime is 0: one year.
	DefaultLeafLifetime = 8760 * time.Hour
	// MinLifetime and MaxLifetime bound Options.Lifetime: one hour and 100
	// years.
	MinLifetime = time.Hour
	MaxLifetime = 100 * 8760 * time.Hour
	// clockSkew is how far before its creation a certificate becomes valid,
	// so a peer whose clock is behind accepts it.
	clockSkew = time.Hour
)

// Options says where and how CreateCA, CreateNode and CreateClient make a
// certificate.
type Options struct {
	// Dir is the certs directory (required). It is created, mode 0700, if
	// missing.
	Dir string
	// CAKeyPath is the path of the CA's key, for a CA key kept out of Dir.
	// CreateCA writes the key there (creating its directory, 0700, if
	// missing), CreateNode and CreateClient read it from there. Default:
	// Dir/ca.key.
	CAKeyPath string
	// KeyType is the kind of key pair of the new certificate. Default
	// (""): ECDSA.
	KeyType KeyType
	// Lifetime is how long the new certificate is valid from now, within
	// MinLifetime..MaxLifetime. Default (0): DefaultCALifetime for a CA,
	// DefaultLeafLifetime for a node or client. A node's or client's
	// certificate never outlives the CA: its end is clipped to the CA's.
	Lifetime time.Duration
	// Overwrite replaces existing files. Without it, creating a file that
	// exists fails and writes nothing.
	Overwrite bool
	// Now is the clock (for tests). Default (nil): time.Now.
	Now func() time.Time
}

func (o Options) now() time.Time {
	if o.Now != nil {
		return o.Now()
	}
	return time.Now()
}

func (o Options) caKeyPath() string {
	if o.CAKeyPath != "" {
		return o.CAKeyPath
	}
	return joinDir(o.Dir, CAKey)
}

// check validates o and returns the lifetime to use, given the default.
func (o Options) check(def time.Duration) (time.Duration, error) {
	if o.Dir == "" {
		return 0, errorf("no certs directory given")
	}
	switch o.KeyType {
	case "", ECDSA, Ed25519:
	default:
		return 0, errorf("key type %q: want %q or %q", o.KeyType, ECDSA, Ed25519)
	}
	lt := o.Lifetime
	if lt == 0 {
		lt = def
	}
	if lt < MinLifetime || lt > MaxLifetime {
		return 0, errorf("lifetime %v: want %v to %v", o.Lifetime, MinLifetime, MaxLifetime)
	}
	return lt, nil
}

// maxNameLen is the longest client user name.
const maxNameLen = 64

// ValidName returns nil if name can be a client user's name: 1 to 64
// characters of A-Z, a-z, 0-9, '.', '_' and '-', not starting with "node."
// (the names of nodes) and not "." or "..". The error wraps ErrCerts.
func ValidName(name string) error {
	if name == "" || len(name) > maxNameLen {
		return errorf("user name %q: want 1 to %d characters", name, maxNameLen)
	}
	for _, c := range []byte(name) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return errorf("user name %q: only A-Z, a-z, 0-9, '.', '_' and '-' are allowed", name)
		}
	}
	if name == "." || name == ".." {
		return errorf("user name %q is not a name", name)
	}
	if len(name) >= len(nodePrefix) && name[:len(nodePrefix)] == nodePrefix {
		return errorf("user name %q: names starting with %q belong to nodes", name, nodePrefix)
	}
	return nil
}

// certsError is an error of this package: it reads "certs: ..." and wraps
// ErrCerts and its cause.
type certsError struct {
	err error
}

func (e *certsError) Error() string   { return "certs: " + e.err.Error() }
func (e *certsError) Unwrap() []error { return []error{ErrCerts, e.err} }

// errorf returns a certsError; %w in format wraps a cause.
func errorf(format string, args ...any) error {
	return &certsError{err: fmt.Errorf(format, args...)}
}
