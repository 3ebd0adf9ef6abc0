package certs

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultReloadInterval is how often Run reloads when given no interval.
const DefaultReloadInterval = time.Minute

// Source is the certificate set of a node or a client, read from a certs
// directory: the trusted CAs (ca.crt) and its own certificate and key, if
// it has any. Every handshake of the tls.Configs it returns uses the set
// in use at that moment, and Reload replaces that set when the files
// change. Its methods are safe for concurrent use.
type Source struct {
	dir    string
	nodeID uint64 // of a node's Source; 0 for a client's
	name   string // a client's user name; "" for a node or a CA-only client
	logger atomic.Pointer[slog.Logger]

	mu      sync.Mutex // serializes Reload
	current atomic.Pointer[certSet]
}

// certSet is one consistent set of certificates, never modified once made.
type certSet struct {
	pool *x509.CertPool
	own  *tls.Certificate // nil: no certificate of our own; own.Leaf is set
	sum  [32]byte         // of the files it was read from
}

// NewNodeSource loads node id's certificate set from dir: ca.crt and
// node-<id>.crt and .key. It fails (ErrCerts) if a file is missing or does
// not parse, if the key does not match the certificate, if the certificate
// does not verify against ca.crt for both TLS servers and clients now
// (wrong CA, expired), or if it is not node id's (NodeID).
func NewNodeSource(dir string, id uint64) (*Source, error) {
	if id == 0 {
		return nil, errorf("node ID 0: want a positive node ID")
	}
	return newSource(&Source{dir: dir, nodeID: id})
}

// NewClientSource loads a client's certificate set from dir: ca.crt and,
// if name is not "", client-<name>.crt and .key (the user name is only a
// name: "root" is not special here). With name "" the client has no
// certificate of its own (it authenticates otherwise, by a token) and only
// verifies the nodes. It fails (ErrCerts) like NewNodeSource, if ValidName
// refuses name, or if the certificate is not a client certificate of user
// name (ClientName).
func NewClientSource(dir, name string) (*Source, error) {
	if name != "" {
		if err := ValidName(name); err != nil {
			return nil, err
		}
	}
	return newSource(&Source{dir: dir, name: name})
}

func newSource(s *Source) (*Source, error) {
	set, err := s.load()
	if err != nil {
		return nil, err
	}
	s.current.Store(set)
	return s, nil
}

// SetLogger sets the logger Run reports to. Default (or nil):
// slog.Default().
func (s *Source) SetLogger(l *slog.Logger) { s.logger.Store(l) }

func (s *Source) log() *slog.Logger {
	if l := s.logger.Load(); l != nil {
		return l
	}
	return slog.Default()
}

// paths returns the files of s: ca.crt, then the certificate and key of
// its own, if any.
func (s *Source) paths() []string {
	p := []string{joinDir(s.dir, CACert)}
	switch {
	case s.nodeID != 0:
		p = append(p, joinDir(s.dir, NodeCert(s.nodeID)), joinDir(s.dir, NodeKey(s.nodeID)))
	case s.name != "":
		p = append(p, joinDir(s.dir, ClientCert(s.name)), joinDir(s.dir, ClientKey(s.name)))
	}
	return p
}

// read returns the contents of s's files and their hash.
func (s *Source) read() ([][]byte, [32]byte, error) {
	h := sha256.New()
	var out [][]byte
	for _, p := range s.paths() {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, [32]byte{}, errorf("%w", err)
		}
		out = append(out, b)
		h.Write(binary.AppendUvarint(nil, uint64(len(b))))
		h.Write(b)
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return out, sum, nil
}

// load reads and checks s's files.
func (s *Source) load() (*certSet, error) {
	files, sum, err := s.read()
	if err != nil {
		return nil, err
	}
	return s.parse(files, sum)
}

// parse checks a set of files read by read.
func (s *Source) parse(files [][]byte, sum [32]byte) (*certSet, error) {
	paths := s.paths()
	cas, err := parseCerts(files[0])
	if err != nil {
		return nil, errorf("%s: %w", paths[0], err)
	}
	set := &certSet{pool: x509.NewCertPool(), sum: sum}
	for _, c := range cas {
		if !c.IsCA || !c.BasicConstraintsValid {
			return nil, errorf("%s: certificate %q is not a CA", paths[0], c.Subject.CommonName)
		}
		set.pool.AddCert(c)
	}
	if len(files) == 1 {
		return set, nil
	}
	own, err := tls.X509KeyPair(files[1], files[2])
	if err != nil {
		return nil, errorf("%s and %s: %w", paths[1], paths[2], err)
	}
	if own.Leaf == nil {
		if own.Leaf, err = x509.ParseCertificate(own.Certificate[0]); err != nil {
			return nil, errorf("%s: %w", paths[1], err)
		}
	}
	var inter []*x509.Certificate
	for _, der := range own.Certificate[1:] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, errorf("%s: %w", paths[1], err)
		}
		inter = append(inter, c)
	}
	usages := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	if s.nodeID != 0 {
		usages = append(usages, x509.ExtKeyUsageServerAuth)
	}
	for _, u := range usages {
		if err := verifyChain(own.Leaf, inter, set.pool, u, time.Now()); err != nil {
			return nil, errorf("%s does not verify against %s: %w", paths[1], paths[0], err)
		}
	}
	if s.nodeID != 0 {
		if id, ok := NodeID(own.Leaf); !ok || id != s.nodeID {
			return nil, errorf("%s is not node %d's certificate (subject %q)", paths[1], s.nodeID, own.Leaf.Subject.CommonName)
		}
	} else if name, ok := ClientName(own.Leaf); !ok || name != s.name {
		return nil, errorf("%s is not user %q's client certificate (subject %q)", paths[1], s.name, own.Leaf.Subject.CommonName)
	}
	set.own = &own
	return set, nil
}

// verifyChain verifies leaf, with the intermediates sent with it, against
// roots for usage at time now.
func verifyChain(leaf *x509.Certificate, intermediates []*x509.Certificate, roots *x509.CertPool, usage x509.ExtKeyUsage, now time.Time) error {
	inter := x509.NewCertPool()
	for _, c := range intermediates {
		inter.AddCert(c)
	}
	_, err := leaf.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{usage},
	})
	return err
}

// Reload reads s's files again. If their contents differ from the set in
// use and form a valid set (as NewNodeSource and NewClientSource check
// it), that set is used from the next handshake on and changed is true. If
// they are missing or invalid, the set in use stays, changed is false and
// the error (ErrCerts) says why. Connections already established are not
// affected. The files are a few KiB: Reload reads them all each time and
// compares their contents, which, unlike modification times, cannot miss a
// change.
func (s *Source) Reload() (changed bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	files, sum, err := s.read()
	if err != nil {
		return false, err
	}
	if sum == s.current.Load().sum {
		return false, nil
	}
	set, err := s.parse(files, sum)
	if err != nil {
		return false, err
	}
	s.current.Store(set)
	return true, nil
}

// Run reloads s every interval (DefaultReloadInterval if every <= 0) until
// stop is closed, and logs each change of the set in use (Info) and each
// new reason a changed set was refused (Warn) to the logger of SetLogger.
// The owner of s calls it, in a goroutine of its own, once it wants
// replaced files picked up; it returns when stop is closed.
func (s *Source) Run(stop <-chan struct{}, every time.Duration) {
	if every <= 0 {
		every = DefaultReloadInterval
	}
	t := time.NewTicker(every)
	defer t.Stop()
	s.reloadLoop(stop, t.C)
}

// reloadLoop reloads on each tick until stop is closed.
func (s *Source) reloadLoop(stop <-chan struct{}, tick <-chan time.Time) {
	var lastErr string
	for {
		select {
		case <-stop:
			return
		case <-tick:
		}
		changed, err := s.Reload()
		switch {
		case err != nil:
			if err.Error() != lastErr {
				lastErr = err.Error()
				s.log().Warn("certificates not reloaded, keeping those in use", "dir", s.dir, "err", err)
			}
		case changed:
			lastErr = ""
			attrs := []any{"dir", s.dir}
			if l := s.Leaf(); l != nil {
				attrs = append(attrs, "subject", l.Subject.CommonName, "serial", l.SerialNumber.Text(16),
					"not_after", l.NotAfter.UTC().Format(time.RFC3339))
			}
			s.log().Info("certificates reloaded", attrs...)
		default:
			lastErr = ""
		}
	}
}

// Leaf returns the certificate of s's own in use, or nil if s has none. The
// caller must not modify it.
func (s *Source) Leaf() *x509.Certificate {
	if own := s.current.Load().own; own != nil {
		return own.Leaf
	}
	return nil
}

// Pool returns the pool of CAs in use. The caller must not modify it.
func (s *Source) Pool() *x509.CertPool { return s.current.Load().pool }

// ServerConfig returns a TLS server configuration that presents s's own
// certificate in use at each handshake (GetCertificate; a Source without
// one fails every handshake) and checks the client's certificate against
// the CAs in use at that handshake, for ExtKeyUsage ClientAuth:
//
//   - tls.RequireAndVerifyClientCert (and RequireAnyClientCert): a client
//     must present a certificate that verifies;
//   - tls.VerifyClientCertIfGiven (and RequestClientCert): a client may
//     present none, and one it presents must verify;
//   - tls.NoClientCert: no certificate is asked for.
//
// If verify is not nil it is called with each verified client leaf, and
// its error fails the handshake (RequireNode, or a check of ClientName).
// Host names are not involved (package comment).
//
// The chain is checked in VerifyConnection rather than by crypto/tls
// through ClientCAs, and the certificate taken from GetCertificate rather
// than a whole configuration from GetConfigForClient: a configuration
// fixes ClientCAs when made, and one returned by GetConfigForClient would
// drop what a user of the returned configuration adds to its clone (gRPC
// and net/http add their ALPN protocols to NextProtos). The minimum
// version is TLS 1.3: both ends are Flotilla, 1.3 has no weak cipher
// suites to configure away and sends the client's certificate encrypted.
// Session tickets are off, so every connection is checked in full against
// the set in use. Note that under TLS 1.3 a client's Handshake may return
// before the server has refused its certificate; the refusal shows on the
// client's first read.
func (s *Source) ServerConfig(clientAuth tls.ClientAuthType, verify func(leaf *x509.Certificate) error) *tls.Config {
	mode := tls.RequireAnyClientCert
	switch clientAuth {
	case tls.NoClientCert:
		mode = tls.NoClientCert
	case tls.RequestClientCert, tls.VerifyClientCertIfGiven:
		mode = tls.RequestClientCert
	}
	return &tls.Config{
		MinVersion:             tls.VersionTLS13,
		ClientAuth:             mode,
		SessionTicketsDisabled: true,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			if own := s.current.Load().own; own != nil {
				return own, nil
			}
			return nil, errorf("no server certificate: the source has none of its own")
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return nil // crypto/tls refused an absent certificate if required
			}
			return s.verifyPeer(cs.PeerCertificates, x509.ExtKeyUsageClientAuth, verify)
		},
	}
}

// ClientConfig returns a TLS client configuration for dialing a node. At
// each handshake it presents s's own certificate in use, if any
// (GetClientCertificate), and checks the node's certificate chain against
// the CAs in use at that handshake, for ExtKeyUsage ServerAuth; then it
// calls verify, if not nil, with the verified leaf, and its error fails
// the handshake. Use RequireNode for verify: the identity that matters is
// the node's, not the host name dialed (package comment).
//
// The configuration sets InsecureSkipVerify and checks the chain itself in
// VerifyConnection. This is not insecure: crypto/tls would check the chain
// against RootCAs, which is fixed when the configuration is made (and
// would also check the host name against ServerName, which is not the
// identity here). The chain check in VerifyConnection is as strict, with
// the current CAs. The minimum version is TLS 1.3 (ServerConfig).
func (s *Source) ClientConfig(verify func(leaf *x509.Certificate) error) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if own := s.current.Load().own; own != nil {
				return own, nil
			}
			return &tls.Certificate{}, nil // none: the server decides
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			return s.verifyPeer(cs.PeerCertificates, x509.ExtKeyUsageServerAuth, verify)
		},
	}
}

// verifyPeer verifies a peer's chain against the CAs in use for usage,
// then calls verify with the leaf if verify is not nil.
func (s *Source) verifyPeer(chain []*x509.Certificate, usage x509.ExtKeyUsage, verify func(*x509.Certificate) error) error {
	if len(chain) == 0 {
		return errorf("the peer presented no certificate")
	}
	leaf := chain[0]
	if err := verifyChain(leaf, chain[1:], s.Pool(), usage, time.Now()); err != nil {
		return errorf("peer certificate %q: %w", leaf.Subject.CommonName, err)
	}
	if verify != nil {
		return verify(leaf)
	}
	return nil
}
