package certs

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestCreate: a CA, a node and a client certificate of each key type have
// the fields, identities and file modes promised.
func TestCreate(t *testing.T) {
	for _, kt := range []KeyType{"", ECDSA, Ed25519} {
		t.Run(string(kt), func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "certs")
			o := Options{Dir: dir, KeyType: kt}
			mustOK(t, CreateCA(o))
			mustOK(t, CreateNode(o, 2, []string{"127.0.0.1", "localhost", "::1", "[::2]", "LOCALHOST", "127.0.0.1"}))
			mustOK(t, CreateClient(o, "root"))

			fi, err := os.Stat(dir)
			mustOK(t, err)
			if fi.Mode().Perm() != 0o700 {
				t.Errorf("dir mode %v, want 0700", fi.Mode().Perm())
			}
			ents, err := os.ReadDir(dir)
			mustOK(t, err)
			var names []string
			for _, e := range ents {
				names = append(names, e.Name())
				fi, err := e.Info()
				mustOK(t, err)
				if fi.Mode().Perm() != 0o600 {
					t.Errorf("%s: mode %v, want 0600", e.Name(), fi.Mode().Perm())
				}
			}
			want := []string{CACert, CAKey, ClientCert("root"), ClientKey("root"), NodeCert(2), NodeKey(2)}
			slices.Sort(want)
			if !slices.Equal(names, want) {
				t.Errorf("files %q, want %q (no temporary files left)", names, want)
			}

			ca := readCert(t, dir, CACert)
			node := readCert(t, dir, NodeCert(2))
			client := readCert(t, dir, ClientCert("root"))
			for _, c := range []*x509.Certificate{ca, node, client} {
				if c.SerialNumber.Sign() <= 0 || c.SerialNumber.BitLen() > 128 {
					t.Errorf("%s: serial %v, want a positive 128-bit number", c.Subject.CommonName, c.SerialNumber)
				}
				if len(c.SubjectKeyId) != 20 {
					t.Errorf("%s: subject key ID %x", c.Subject.CommonName, c.SubjectKeyId)
				}
				if err := c.CheckSignatureFrom(ca); err != nil {
					t.Errorf("%s: not signed by the CA: %v", c.Subject.CommonName, err)
				}
				wantType := kt
				if wantType == "" {
					wantType = ECDSA
				}
				if got := publicKeyType(c.PublicKey); got != wantType {
					t.Errorf("%s: key type %s, want %s", c.Subject.CommonName, got, wantType)
				}
				if pk, ok := c.PublicKey.(*ecdsa.PublicKey); ok && pk.Curve != elliptic.P256() {
					t.Errorf("%s: curve %v, want P-256", c.Subject.CommonName, pk.Curve.Params().Name)
				}
			}
			if !ca.IsCA || !ca.BasicConstraintsValid || ca.MaxPathLen != 0 || !ca.MaxPathLenZero {
				t.Errorf("CA constraints: IsCA %v, valid %v, MaxPathLen %d, zero %v", ca.IsCA, ca.BasicConstraintsValid, ca.MaxPathLen, ca.MaxPathLenZero)
			}
			if ca.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
				t.Errorf("CA key usage %b", ca.KeyUsage)
			}
			for _, c := range []*x509.Certificate{node, client} {
				if !bytes.Equal(c.AuthorityKeyId, ca.SubjectKeyId) {
					t.Errorf("%s: authority key ID %x, want the CA's %x", c.Subject.CommonName, c.AuthorityKeyId, ca.SubjectKeyId)
				}
				if c.IsCA {
					t.Errorf("%s is a CA", c.Subject.CommonName)
				}
			}

			if node.Subject.CommonName != "node.2" || len(node.URIs) != 1 || node.URIs[0].String() != "flotilla://node/2" {
				t.Errorf("node identity: CN %q, URIs %v", node.Subject.CommonName, node.URIs)
			}
			if !slices.Equal(node.DNSNames, []string{"localhost"}) {
				t.Errorf("node DNS names %q, want [localhost] (deduplicated)", node.DNSNames)
			}
			var ips []string
			for _, ip := range node.IPAddresses {
				ips = append(ips, ip.String())
			}
			if !slices.Equal(ips, []string{"127.0.0.1", "::1", "::2"}) {
				t.Errorf("node IPs %q", ips)
			}
			if !slices.Equal(node.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) {
				t.Errorf("node ext key usage %v", node.ExtKeyUsage)
			}
			if id, ok := NodeID(node); !ok || id != 2 {
				t.Errorf("NodeID(node) = %d, %v", id, ok)
			}
			if _, ok := ClientName(node); ok {
				t.Errorf("ClientName(node) ok")
			}

			if client.Subject.CommonName != "root" || !slices.Equal(client.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) {
				t.Errorf("client: CN %q, ext key usage %v", client.Subject.CommonName, client.ExtKeyUsage)
			}
			if name, ok := ClientName(client); !ok || name != "root" {
				t.Errorf("ClientName(client) = %q, %v", name, ok)
			}
			if _, ok := NodeID(client); ok {
				t.Errorf("NodeID(client) ok")
			}
			if _, ok := NodeID(ca); ok {
				t.Errorf("NodeID(ca) ok")
			}
			if _, ok := ClientName(ca); ok {
				t.Errorf("ClientName(ca) ok")
			}

			for _, pair := range [][2]string{{CACert, CAKey}, {NodeCert(2), NodeKey(2)}, {ClientCert("root"), ClientKey("root")}} {
				b, err := os.ReadFile(filepath.Join(dir, pair[1]))
				mustOK(t, err)
				key, err := parseKey(b)
				mustOK(t, err)
				if !samePublicKey(readCert(t, dir, pair[0]).PublicKey, key.Public()) {
					t.Errorf("%s does not hold the key of %s", pair[1], pair[0])
				}
			}
		})
	}
}

// TestRefuseOverwrite: an existing file is never replaced without
// Overwrite, and then nothing at all is written; with it, it is replaced.
func TestRefuseOverwrite(t *testing.T) {
	dir := t.TempDir()
	o := Options{Dir: dir}
	mustOK(t, CreateCA(o))
	caBytes, err := os.ReadFile(filepath.Join(dir, CACert))
	mustOK(t, err)

	err = CreateCA(o)
	wantErr(t, err, filepath.Join(dir, CACert), "refusing to overwrite")
	if !errors.Is(err, fs.ErrExist) {
		t.Errorf("error %q does not wrap fs.ErrExist", err)
	}
	after, err := os.ReadFile(filepath.Join(dir, CACert))
	mustOK(t, err)
	if !bytes.Equal(caBytes, after) {
		t.Fatal("ca.crt changed by a refused CreateCA")
	}

	// Only the key is in the way: ca.crt must not be written either.
	mustOK(t, os.Remove(filepath.Join(dir, CACert)))
	wantErr(t, CreateCA(o), filepath.Join(dir, CAKey))
	if _, err := os.Stat(filepath.Join(dir, CACert)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("ca.crt written by a refused CreateCA: %v", err)
	}

	o.Overwrite = true
	mustOK(t, CreateCA(o))
	o.Overwrite = false
	mustOK(t, CreateNode(o, 2, []string{"localhost"}))
	mustOK(t, CreateClient(o, "alice"))
	old := readCert(t, dir, NodeCert(2))
	wantErr(t, CreateNode(o, 2, []string{"localhost"}), NodeCert(2))
	wantErr(t, CreateClient(o, "alice"), ClientCert("alice"))
	if readCert(t, dir, NodeCert(2)).SerialNumber.Cmp(old.SerialNumber) != 0 {
		t.Fatal("node-2.crt changed by a refused CreateNode")
	}
	o.Overwrite = true
	mustOK(t, CreateNode(o, 2, []string{"localhost"}))
	if readCert(t, dir, NodeCert(2)).SerialNumber.Cmp(old.SerialNumber) == 0 {
		t.Fatal("node-2.crt not replaced with Overwrite")
	}
}

// TestBadInput: bad options, IDs, hosts and names are refused with an
// error naming what is wrong, and write nothing.
func TestBadInput(t *testing.T) {
	dir := t.TempDir()
	o := Options{Dir: dir}
	mustOK(t, CreateCA(o))
	with := func(f func(*Options)) Options { c := o; f(&c); return c }

	wantErr(t, CreateCA(Options{}), "no certs directory")
	wantErr(t, CreateCA(with(func(o *Options) { o.KeyType = "rsa" })), `key type "rsa"`)
	wantErr(t, CreateClient(with(func(o *Options) { o.KeyType = "rsa" }), "bob"), `key type "rsa"`)
	for _, lt := range []time.Duration{30 * time.Minute, -time.Hour, MaxLifetime + time.Hour} {
		wantErr(t, CreateNode(with(func(o *Options) { o.Lifetime = lt }), 5, []string{"h"}), "lifetime")
	}
	wantErr(t, CreateNode(o, 0, []string{"h"}), "node ID 0")
	wantErr(t, CreateNode(o, 5, nil), "no host")
	for _, h := range []string{"127.0.0.1:2380", "[::1]:80", "host:80"} {
		wantErr(t, CreateNode(o, 5, []string{"localhost", h}), h, "without a port")
	}
	for _, h := range []string{"", "bad_host", "-a.com", "a..b", "a.com.", "*.a.com", strings.Repeat("a", 64) + ".com", "fe80::1%eth0"} {
		wantErr(t, CreateNode(o, 5, []string{h}), "not a DNS name")
	}
	for _, n := range []string{"", "node.1", "node.", strings.Repeat("a", 65), "a/b", "..", ".", "ünï", "a b"} {
		wantErr(t, CreateClient(o, n), "user name")
		wantErr(t, ValidName(n), "user name")
	}
	for _, n := range []string{"root", "a", strings.Repeat("z", 64), "x.y_z-1", "node", "nodes.x", "Node.1"} {
		if err := ValidName(n); err != nil {
			t.Errorf("ValidName(%q) = %v", n, err)
		}
	}

	// No CA, and a CA key that is not the CA's.
	empty := t.TempDir()
	err := CreateNode(Options{Dir: empty}, 5, []string{"h"})
	wantErr(t, err, CACert)
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("error %q does not wrap fs.ErrNotExist", err)
	}
	other := t.TempDir()
	mustOK(t, CreateCA(Options{Dir: other}))
	wantErr(t, CreateNode(with(func(o *Options) { o.CAKeyPath = filepath.Join(other, CAKey) }), 5, []string{"h"}), "matches")

	ents, err := os.ReadDir(dir)
	mustOK(t, err)
	if len(ents) != 2 {
		t.Errorf("%d files in the directory, want only ca.crt and ca.key", len(ents))
	}
}

// TestCAKeyElsewhere: a CA key kept out of the certs directory is written
// and used where Options.CAKeyPath says.
func TestCAKeyElsewhere(t *testing.T) {
	dir, keyDir := t.TempDir(), t.TempDir()
	o := Options{Dir: dir, CAKeyPath: filepath.Join(keyDir, "sub", "secret.key")}
	mustOK(t, CreateCA(o))
	if _, err := os.Stat(filepath.Join(dir, CAKey)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("ca.key written to the certs directory: %v", err)
	}
	mustOK(t, CreateNode(o, 1, []string{"localhost"}))
	wantErr(t, CreateNode(Options{Dir: dir}, 2, []string{"localhost"}), CAKey)
}

// TestLifetimes: defaults, explicit lifetimes, the clock skew allowance and
// the clip of a leaf to its CA's end.
func TestLifetimes(t *testing.T) {
	now := time.Date(2031, 3, 4, 5, 6, 7, 0, time.UTC)
	clock := func() time.Time { return now }
	dir := t.TempDir()
	o := Options{Dir: dir, Now: clock}
	mustOK(t, CreateCA(o))
	mustOK(t, CreateNode(o, 1, []string{"localhost"}))
	o.Lifetime = 48 * time.Hour
	mustOK(t, CreateClient(o, "bob"))
	check := func(dir, name string, notAfter time.Time) {
		t.Helper()
		c := readCert(t, dir, name)
		if !c.NotBefore.Equal(now.Add(-time.Hour)) {
			t.Errorf("%s: NotBefore %v, want %v", name, c.NotBefore, now.Add(-time.Hour))
		}
		if !c.NotAfter.Equal(notAfter) {
			t.Errorf("%s: NotAfter %v, want %v", name, c.NotAfter, notAfter)
		}
	}
	check(dir, CACert, now.Add(87600*time.Hour))
	check(dir, NodeCert(1), now.Add(8760*time.Hour))
	check(dir, ClientCert("bob"), now.Add(48*time.Hour))

	// A CA of 100 hours: a default leaf ends with it.
	short := t.TempDir()
	o = Options{Dir: short, Now: clock, Lifetime: 100 * time.Hour}
	mustOK(t, CreateCA(o))
	o.Lifetime = 0
	mustOK(t, CreateNode(o, 1, []string{"localhost"}))
	check(short, NodeCert(1), now.Add(100*time.Hour))
	// ... and once it has expired, it signs nothing.
	o.Now = func() time.Time { return now.Add(100 * time.Hour) }
	wantErr(t, CreateClient(o, "bob"), "expired")

	// The longest lifetime is accepted.
	o = Options{Dir: t.TempDir(), Now: clock, Lifetime: MaxLifetime}
	mustOK(t, CreateCA(o))
	check(o.Dir, CACert, now.Add(MaxLifetime))
}

// TestIdentity: NodeID and ClientName accept only well-formed identities,
// and RequireNode only the node asked for.
func TestIdentity(t *testing.T) {
	node := func(cn string, uris ...string) *x509.Certificate {
		c := &x509.Certificate{Subject: pkix.Name{CommonName: cn},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
		for _, u := range uris {
			p, err := url.Parse(u)
			mustOK(t, err)
			c.URIs = append(c.URIs, p)
		}
		return c
	}
	for _, tc := range []struct {
		c  *x509.Certificate
		id uint64
	}{
		{node("node.7", "flotilla://node/7"), 7},
		{node("node.18446744073709551615", "flotilla://node/18446744073709551615"), 1<<64 - 1},
		{node("node.7", "https://example.com/x", "flotilla://node/7"), 7},
		{node("node.8", "flotilla://node/7"), 0},
		{node("node.07", "flotilla://node/07"), 0},
		{node("node.0", "flotilla://node/0"), 0},
		{node("node.7"), 0},
		{node("node.7", "flotilla://node/7", "flotilla://node/7"), 0},
		{node("node.7", "flotilla://client/7"), 0},
		{node("node.7", "flotilla://node/7/x"), 0},
		{node("node.7", "flotilla://node/7?x=1"), 0},
		{node("node.-7", "flotilla://node/-7"), 0},
		{&x509.Certificate{Subject: pkix.Name{CommonName: "node.7"}, URIs: node("", "flotilla://node/7").URIs, IsCA: true}, 0},
		{nil, 0},
	} {
		id, ok := NodeID(tc.c)
		if id != tc.id || ok != (tc.id != 0) {
			t.Errorf("NodeID(%v) = %d, %v; want %d", tc.c, id, ok, tc.id)
		}
	}

	client := func(cn string, eku ...x509.ExtKeyUsage) *x509.Certificate {
		return &x509.Certificate{Subject: pkix.Name{CommonName: cn}, ExtKeyUsage: eku}
	}
	withURI := client("bob", x509.ExtKeyUsageClientAuth)
	withURI.URIs = node("", "flotilla://node/3").URIs
	for _, tc := range []struct {
		c    *x509.Certificate
		name string
	}{
		{client("bob", x509.ExtKeyUsageClientAuth), "bob"},
		{client("bob", x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth), "bob"},
		{client("bob", x509.ExtKeyUsageServerAuth), ""},
		{client("bob"), ""},
		{client("node.3", x509.ExtKeyUsageClientAuth), ""},
		{client("", x509.ExtKeyUsageClientAuth), ""},
		{client("a/b", x509.ExtKeyUsageClientAuth), ""},
		{withURI, ""},
		{nil, ""},
	} {
		name, ok := ClientName(tc.c)
		if name != tc.name || ok != (tc.name != "") {
			t.Errorf("ClientName(%v) = %q, %v; want %q", tc.c, name, ok, tc.name)
		}
	}

	n5 := node("node.5", "flotilla://node/5")
	mustOK(t, RequireNode(0)(n5))
	mustOK(t, RequireNode(5)(n5))
	wantErr(t, RequireNode(6)(n5), "peer is node 5, want node 6")
	wantErr(t, RequireNode(0)(client("bob", x509.ExtKeyUsageClientAuth)), `"bob" is not a node's`)
}

// TestList: every certificate of a directory is described; a broken file
// is reported, not fatal.
func TestList(t *testing.T) {
	dir := t.TempDir()
	o := Options{Dir: dir}
	mustOK(t, CreateCA(o))
	mustOK(t, CreateNode(Options{Dir: dir, KeyType: Ed25519}, 12, []string{"localhost"}))
	mustOK(t, CreateClient(o, "root"))
	mustOK(t, os.WriteFile(filepath.Join(dir, "bad.crt"), []byte("not a certificate"), 0o600))
	infos, err := List(dir)
	mustOK(t, err)
	type row struct {
		file, kind, id string
		kt             KeyType
		err            bool
	}
	var got []row
	for _, in := range infos {
		got = append(got, row{in.File, in.Kind, in.Identity, in.KeyType, in.Err != nil})
		if in.Err == nil && !in.NotAfter.After(time.Now()) {
			t.Errorf("%s: NotAfter %v", in.File, in.NotAfter)
		}
	}
	want := []row{
		{"bad.crt", KindUnknown, "", "", true},
		{CACert, KindCA, caCommonName, ECDSA, false},
		{ClientCert("root"), KindClient, "root", ECDSA, false},
		{NodeCert(12), KindNode, "12", Ed25519, false},
	}
	if !slices.Equal(got, want) {
		t.Errorf("List:\n got %v\nwant %v", got, want)
	}
	_, err = List(filepath.Join(dir, "missing"))
	wantErr(t, err, "missing")
}

// TestParseKeyForms: a SEC 1 EC key (as openssl writes it) is read as a
// CA key, and so is a PKCS #8 Ed25519 key; a file without a key, or a
// certificate file with a broken certificate, is refused.
func TestParseKeyForms(t *testing.T) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	mustOK(t, err)
	der, err := x509.MarshalECPrivateKey(k)
	mustOK(t, err)
	got, err := parseKey(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}))
	mustOK(t, err)
	if !samePublicKey(k.Public(), got.Public()) {
		t.Fatal("SEC 1 key parsed to another key")
	}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	mustOK(t, err)
	b, err := encodeKey(edKey)
	mustOK(t, err)
	if got, err = parseKey(b); err != nil || !samePublicKey(edKey.Public(), got.Public()) {
		t.Fatalf("Ed25519 key: %v", err)
	}
	if _, err := parseKey([]byte("nothing")); err == nil {
		t.Fatal("parseKey accepted a file without a key")
	}
	for _, bad := range [][]byte{
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1}}),
		b, // a key, not a certificate
		append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1}}), 'x'),
		nil,
	} {
		if _, err := parseCerts(bad); err == nil {
			t.Errorf("parseCerts accepted %q", bad)
		}
	}
}
