package certs

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"io/fs"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// caCommonName is the subject common name of a CA made by CreateCA.
const caCommonName = "Flotilla CA"

// CreateCA makes a new CA: a key and a self-signed certificate valid for
// o.Lifetime (default 10 years), written to Dir/ca.crt and to Dir/ca.key
// (or o.CAKeyPath). The CA signs node and client certificates only, not
// other CAs (path length 0). Without o.Overwrite, an existing ca.crt or
// ca.key makes it fail before writing anything. Errors wrap ErrCerts.
//
// Replacing a CA invalidates every certificate it signed; to rotate
// without an outage, append the new ca.crt to the old one first (both are
// trusted), reissue the nodes' and clients' certificates, then drop the old.
func CreateCA(o Options) error {
	lt, err := o.check(DefaultCALifetime)
	if err != nil {
		return err
	}
	key, err := newKey(o.KeyType)
	if err != nil {
		return err
	}
	now := o.now()
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: caCommonName},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(lt),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	certPEM, err := sign(tmpl, key.Public(), nil, key)
	if err != nil {
		return err
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return err
	}
	return writeFiles(o, []file{{joinDir(o.Dir, CACert), certPEM}, {o.caKeyPath(), keyPEM}})
}

// CreateNode makes node id's key and certificate, signed by the CA of o
// (Dir/ca.crt and Dir/ca.key or o.CAKeyPath), and writes them to
// Dir/node-<id>.crt and .key. The certificate's identity is the subject
// common name "node.<id>" and the URI SAN "flotilla://node/<id>"; hosts
// (at least one: DNS names, or IP addresses, without ports) become its DNS
// and IP SANs. It is good for TLS servers and clients. Errors wrap ErrCerts:
// id 0, a bad host, a missing, mismatched or expired CA, or an existing
// file without o.Overwrite (then nothing is written).
func CreateNode(o Options, id uint64, hosts []string) error {
	lt, err := o.check(DefaultLeafLifetime)
	if err != nil {
		return err
	}
	if id == 0 {
		return errorf("node ID 0: want a positive node ID")
	}
	if len(hosts) == 0 {
		return errorf("node %d: no host names or addresses given", id)
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: nodeCommonName(id)},
		URIs:        []*url.URL{nodeURI(id)},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	seen := map[string]bool{}
	for _, h := range hosts {
		ip, dns, err := parseHost(h)
		if err != nil {
			return err
		}
		switch {
		case ip != nil && !seen[ip.String()]:
			seen[ip.String()] = true
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		case ip == nil && !seen[strings.ToLower(dns)]:
			seen[strings.ToLower(dns)] = true
			tmpl.DNSNames = append(tmpl.DNSNames, dns)
		}
	}
	return createLeaf(o, lt, tmpl, NodeCert(id), NodeKey(id))
}

// CreateClient makes client user name's key and certificate, signed by the
// CA of o, and writes them to Dir/client-<name>.crt and .key. The
// certificate's subject common name is name; it is good for TLS clients
// only. Errors wrap ErrCerts: a name ValidName refuses, a missing,
// mismatched or expired CA, or an existing file without o.Overwrite (then
// nothing is written).
func CreateClient(o Options, name string) error {
	lt, err := o.check(DefaultLeafLifetime)
	if err != nil {
		return err
	}
	if err := ValidName(name); err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: name},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	return createLeaf(o, lt, tmpl, ClientCert(name), ClientKey(name))
}

// createLeaf signs tmpl with the CA of o for a new key and writes the pair.
func createLeaf(o Options, lt time.Duration, tmpl *x509.Certificate, certName, keyName string) error {
	files := []file{{path: joinDir(o.Dir, certName)}, {path: joinDir(o.Dir, keyName)}}
	if err := checkAbsent(o, files); err != nil {
		return err
	}
	ca, caKey, err := loadCA(o)
	if err != nil {
		return err
	}
	now := o.now()
	if !now.Before(ca.NotAfter) {
		return errorf("%s: the CA expired at %s", joinDir(o.Dir, CACert), ca.NotAfter.UTC().Format(time.RFC3339))
	}
	tmpl.NotBefore = now.Add(-clockSkew)
	tmpl.NotAfter = now.Add(lt)
	if tmpl.NotAfter.After(ca.NotAfter) {
		tmpl.NotAfter = ca.NotAfter
	}
	key, err := newKey(o.KeyType)
	if err != nil {
		return err
	}
	if files[0].data, err = sign(tmpl, key.Public(), ca, caKey); err != nil {
		return err
	}
	if files[1].data, err = encodeKey(key); err != nil {
		return err
	}
	return writeFiles(o, files)
}

// loadCA reads the CA certificate and key of o: the certificate of ca.crt
// whose public key is the key's.
func loadCA(o Options) (*x509.Certificate, crypto.Signer, error) {
	certPath, keyPath := joinDir(o.Dir, CACert), o.caKeyPath()
	cas, err := readCerts(certPath)
	if err != nil {
		return nil, nil, err
	}
	b, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, nil, errorf("reading the CA key: %w", err)
	}
	key, err := parseKey(b)
	if err != nil {
		return nil, nil, errorf("%s: %w", keyPath, err)
	}
	for _, c := range cas {
		if c.IsCA && samePublicKey(c.PublicKey, key.Public()) {
			return c, key, nil
		}
	}
	return nil, nil, errorf("%s: no CA certificate in %s matches this key", keyPath, certPath)
}

// newKey generates a key of type t.
func newKey(t KeyType) (crypto.Signer, error) {
	var (
		key crypto.Signer
		err error
	)
	switch t {
	case "", ECDSA:
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case Ed25519:
		_, key, err = ed25519.GenerateKey(rand.Reader)
	default:
		return nil, errorf("key type %q: want %q or %q", t, ECDSA, Ed25519)
	}
	if err != nil {
		return nil, errorf("generating a key: %w", err)
	}
	return key, nil
}

// encodeKey returns key as a PKCS #8 PEM block.
func encodeKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, errorf("encoding a key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// parseKey parses the first PEM private key in b: PKCS #8, or SEC 1 EC.
func parseKey(b []byte) (crypto.Signer, error) {
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil, errors.New("no PEM private key found")
		}
		var (
			k   any
			err error
		)
		switch blk.Type {
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(blk.Bytes)
		default:
			continue
		}
		if err != nil {
			return nil, err
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, errors.New("the key cannot sign")
		}
		return s, nil
	}
}

func samePublicKey(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

// sign makes a certificate of tmpl for pub, signed by parent's key
// (self-signed when parent is nil), and returns it as PEM. It fills in the
// serial number and subject key ID.
func sign(tmpl *x509.Certificate, pub crypto.PublicKey, parent *x509.Certificate, key crypto.Signer) ([]byte, error) {
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	if tmpl.SubjectKeyId, err = keyID(pub); err != nil {
		return nil, err
	}
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		return nil, errorf("signing a certificate: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

// newSerial returns a random positive 128-bit serial number.
func newSerial() (*big.Int, error) {
	var b [16]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			return nil, errorf("generating a serial number: %w", err)
		}
		if n := new(big.Int).SetBytes(b[:]); n.Sign() > 0 {
			return n, nil
		}
	}
}

// keyID is a subject key identifier: the first 160 bits of the SHA-256 of
// the public key's bits (RFC 7093, method 1).
func keyID(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, errorf("encoding a public key: %w", err)
	}
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(der, &spki); err != nil {
		return nil, errorf("encoding a public key: %w", err)
	}
	sum := sha256.Sum256(spki.PublicKey.Bytes)
	return sum[:20], nil
}

// parseHost parses a node's host: an IP address (IPv6 optionally in
// brackets) or a DNS name.
func parseHost(h string) (net.IP, string, error) {
	s := h
	if strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]") {
		s = s[1 : len(s)-1]
	}
	if ip := net.ParseIP(s); ip != nil {
		if ip4 := ip.To4(); ip4 != nil {
			ip = ip4
		}
		return ip, "", nil
	}
	if _, _, err := net.SplitHostPort(h); err == nil {
		return nil, "", errorf("host %q: want a DNS name or an IP address, without a port", h)
	}
	if !validDNSName(h) {
		return nil, "", errorf("host %q: not a DNS name (labels of A-Z, a-z, 0-9 and '-', joined by dots) or an IP address", h)
	}
	return nil, h, nil
}

func validDNSName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, l := range strings.Split(s, ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for _, c := range []byte(l) {
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// nodePrefix starts a node's common name.
const nodePrefix = "node."

func nodeCommonName(id uint64) string { return nodePrefix + strconv.FormatUint(id, 10) }

func nodeURI(id uint64) *url.URL {
	return &url.URL{Scheme: uriScheme, Host: "node", Path: "/" + strconv.FormatUint(id, 10)}
}

// uriScheme is the scheme of the URI SANs of Flotilla identities.
const uriScheme = "flotilla"

func joinDir(dir, name string) string { return filepath.Join(dir, name) }

// file is one file to write.
type file struct {
	path string
	data []byte
}

// checkAbsent fails if o does not allow overwriting and one of files exists.
func checkAbsent(o Options, files []file) error {
	if o.Overwrite {
		return nil
	}
	for _, f := range files {
		if _, err := os.Lstat(f.path); err == nil {
			return existsError(f.path)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return errorf("%w", err)
		}
	}
	return nil
}

// writeFiles writes files, each with mode 0600 through a temporary file
// in its directory and a rename, creating missing directories (0700). All
// temporary files are written and synced before the first rename, so a
// failure leaves either nothing or few renames behind. Without o.Overwrite
// an existing file is never replaced, not even one created concurrently.
func writeFiles(o Options, files []file) (err error) {
	if err := checkAbsent(o, files); err != nil {
		return err
	}
	for _, f := range files {
		if err := os.MkdirAll(filepath.Dir(f.path), 0o700); err != nil {
			return errorf("creating a directory for %s: %w", f.path, err)
		}
	}
	tmps := make([]string, len(files))
	defer func() {
		for _, t := range tmps {
			if t != "" {
				_ = os.Remove(t)
			}
		}
	}()
	for i, f := range files {
		if tmps[i], err = writeTemp(f); err != nil {
			return err
		}
	}
	dirs := map[string]bool{}
	for i, f := range files {
		if err := place(tmps[i], f.path, o.Overwrite); err != nil {
			return err
		}
		tmps[i] = ""
		dirs[filepath.Dir(f.path)] = true
	}
	for d := range dirs {
		syncDir(d)
	}
	return nil
}

// writeTemp writes f's data to a new temporary file (mode 0600) next to
// f.path, synced, and returns its path.
func writeTemp(f file) (string, error) {
	t, err := os.CreateTemp(filepath.Dir(f.path), "."+filepath.Base(f.path)+".tmp*")
	if err != nil {
		return "", errorf("writing %s: %w", f.path, err)
	}
	name := t.Name()
	err = t.Chmod(0o600)
	if err == nil {
		_, err = t.Write(f.data)
	}
	if err == nil {
		err = t.Sync()
	}
	if cerr := t.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(name)
		return "", errorf("writing %s: %w", f.path, err)
	}
	return name, nil
}

func existsError(path string) error {
	return errorf("refusing to overwrite %s: %w", path, fs.ErrExist)
}

// place moves tmp to path: a rename if overwrite, else a hard link that
// fails if path exists (falling back to a check and a rename on file
// systems without hard links).
func place(tmp, path string, overwrite bool) error {
	if !overwrite {
		err := os.Link(tmp, path)
		if err == nil {
			_ = os.Remove(tmp)
			return nil
		}
		if errors.Is(err, fs.ErrExist) {
			return existsError(path)
		}
		if _, serr := os.Lstat(path); serr == nil {
			return existsError(path)
		}
	}
	if err := os.Rename(tmp, path); err != nil {
		return errorf("writing %s: %w", path, err)
	}
	return nil
}

// syncDir makes the renames in dir durable where the platform allows it.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
}

// readCerts reads the PEM certificates of path (at least one; blocks of
// other types are an error).
func readCerts(path string) ([]*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, errorf("%w", err)
	}
	cs, err := parseCerts(b)
	if err != nil {
		return nil, errorf("%s: %w", path, err)
	}
	return cs, nil
}

// parseCerts parses PEM certificates: at least one, and nothing else.
func parseCerts(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			return nil, errors.New("holds a " + blk.Type + ", want only certificates")
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(bytes.TrimSpace(b)) != 0 {
		return nil, errors.New("holds data that is not PEM")
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM certificate found")
	}
	return out, nil
}
