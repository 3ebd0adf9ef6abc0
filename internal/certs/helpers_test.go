package certs

import (
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// mustOK fails the test on err.
func mustOK(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// wantErr fails the test unless err wraps ErrCerts and mentions every
// string of want.
func wantErr(t *testing.T, err error, want ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one mentioning %q", want)
	}
	if !errors.Is(err, ErrCerts) {
		t.Errorf("error %q does not wrap ErrCerts", err)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not mention %q", err, w)
		}
	}
}

// readCert parses the one certificate of dir/name.
func readCert(t *testing.T, dir, name string) *x509.Certificate {
	t.Helper()
	cs, err := readCerts(filepath.Join(dir, name))
	mustOK(t, err)
	if len(cs) != 1 {
		t.Fatalf("%s holds %d certificates, want 1", name, len(cs))
	}
	return cs[0]
}

// copyFile copies dir/from to dir2/to.
func copyFile(t *testing.T, dir, from, dir2, to string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, from))
	mustOK(t, err)
	mustOK(t, os.WriteFile(filepath.Join(dir2, to), b, 0o600))
}

// cluster makes a certs directory with a CA, nodes 1 to 3 (on 127.0.0.1)
// and client user "root".
func cluster(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	o := Options{Dir: dir}
	mustOK(t, CreateCA(o))
	for id := uint64(1); id <= 3; id++ {
		mustOK(t, CreateNode(o, id, []string{"127.0.0.1"}))
	}
	mustOK(t, CreateClient(o, "root"))
	return dir
}
