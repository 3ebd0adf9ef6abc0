package certs

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"time"
)

// NodeID returns the node ID a node certificate names, and true; false for
// any other certificate (a CA, a client). A node certificate has exactly
// one URI SAN of scheme "flotilla", "flotilla://node/<ID>" with ID a
// positive decimal number, and the subject common name "node.<ID>" of the
// same ID. NodeID looks at c only: the caller verifies c's chain first.
func NodeID(c *x509.Certificate) (uint64, bool) {
	if c == nil || c.IsCA {
		return 0, false
	}
	var id uint64
	found := 0
	for _, u := range c.URIs {
		if u.Scheme != uriScheme {
			continue
		}
		found++
		if u.Host != "node" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || len(u.Path) < 2 || u.Path[0] != '/' {
			return 0, false
		}
		n, err := strconv.ParseUint(u.Path[1:], 10, 64)
		if err != nil || n == 0 || strconv.FormatUint(n, 10) != u.Path[1:] {
			return 0, false
		}
		id = n
	}
	if found != 1 || c.Subject.CommonName != nodeCommonName(id) {
		return 0, false
	}
	return id, true
}

// ClientName returns the user name a client certificate names (its subject
// common name), and true; false for any other certificate: a CA, a
// certificate without ExtKeyUsage ClientAuth, one with a "flotilla" URI
// SAN (a node's, even a malformed one), or one whose common name ValidName
// refuses. ClientName looks at c only: the caller verifies c's chain
// first.
func ClientName(c *x509.Certificate) (string, bool) {
	if c == nil || c.IsCA {
		return "", false
	}
	if !slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
		return "", false
	}
	for _, u := range c.URIs {
		if u.Scheme == uriScheme {
			return "", false
		}
	}
	if ValidName(c.Subject.CommonName) != nil {
		return "", false
	}
	return c.Subject.CommonName, true
}

// RequireNode returns a verify function for ServerConfig and ClientConfig
// that accepts only a node certificate: of any node if id is 0, else of
// node id. Its errors wrap ErrCerts.
func RequireNode(id uint64) func(*x509.Certificate) error {
	return func(c *x509.Certificate) error {
		got, ok := NodeID(c)
		if !ok {
			return errorf("peer certificate %q is not a node's", c.Subject.CommonName)
		}
		if id != 0 && got != id {
			return errorf("peer is node %d, want node %d", got, id)
		}
		return nil
	}
}

// Kinds of certificate in Info.Kind.
const (
	KindCA      = "ca"
	KindNode    = "node"
	KindClient  = "client"
	KindUnknown = "unknown"
)

// Info describes one certificate of a certs directory (List).
type Info struct {
	// File is the certificate's file name in the directory.
	File string
	// Kind is KindCA, KindNode, KindClient or KindUnknown (a certificate
	// that is none of those, or a file that does not parse).
	Kind string
	// Identity is the CA's subject common name, the node ID in decimal or
	// the client's user name; for KindUnknown, the subject common name.
	Identity string
	// NotAfter is the end of the certificate's validity.
	NotAfter time.Time
	// KeyType is the type of the certificate's public key: ECDSA, Ed25519,
	// "rsa" or "unknown".
	KeyType KeyType
	// Err says why the file could not be read or parsed (then only File
	// and Kind are set).
	Err error
}

// List describes the certificates of the files named *.crt in dir, sorted
// by file name; a file holding several certificates (ca.crt during a CA
// change) gives one Info each. A file that cannot be parsed gives one Info
// with Err set. List fails (ErrCerts) only if dir cannot be read. It does
// not verify any chain.
func List(dir string) ([]Info, error) {
	names, err := filepath.Glob(filepath.Join(dir, "*.crt"))
	if err != nil {
		return nil, errorf("%w", err)
	}
	if _, err := os.Stat(dir); err != nil {
		return nil, errorf("%w", err)
	}
	sort.Strings(names)
	out := []Info{}
	for _, path := range names {
		base := filepath.Base(path)
		cs, err := readCerts(path)
		if err != nil {
			out = append(out, Info{File: base, Kind: KindUnknown, Err: err})
			continue
		}
		for _, c := range cs {
			out = append(out, describe(base, c))
		}
	}
	return out, nil
}

func describe(file string, c *x509.Certificate) Info {
	in := Info{File: file, NotAfter: c.NotAfter, KeyType: publicKeyType(c.PublicKey)}
	if id, ok := NodeID(c); ok {
		in.Kind, in.Identity = KindNode, strconv.FormatUint(id, 10)
	} else if name, ok := ClientName(c); ok {
		in.Kind, in.Identity = KindClient, name
	} else if c.IsCA {
		in.Kind, in.Identity = KindCA, c.Subject.CommonName
	} else {
		in.Kind, in.Identity = KindUnknown, c.Subject.CommonName
	}
	return in
}

func publicKeyType(k any) KeyType {
	switch k.(type) {
	case *ecdsa.PublicKey:
		return ECDSA
	case ed25519.PublicKey:
		return Ed25519
	case *rsa.PublicKey:
		return "rsa"
	default:
		return "unknown"
	}
}
