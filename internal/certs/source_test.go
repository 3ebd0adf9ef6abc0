package certs

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSourceLoad: a node's or client's set is refused if a file is
// missing or broken, the key is not the certificate's, the CA did not sign
// it, it has expired, or it names another node or user.
func TestSourceLoad(t *testing.T) {
	dir := cluster(t)
	other := cluster(t) // another CA

	s, err := NewNodeSource(dir, 2)
	mustOK(t, err)
	if id, ok := NodeID(s.Leaf()); !ok || id != 2 {
		t.Fatalf("node source leaf is node %d, %v", id, ok)
	}
	if _, err := s.Leaf().Verify(x509.VerifyOptions{Roots: s.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Fatalf("leaf does not verify against the pool: %v", err)
	}
	c, err := NewClientSource(dir, "")
	mustOK(t, err)
	if c.Leaf() != nil || c.Pool() == nil {
		t.Fatalf("CA-only client: leaf %v, pool %v", c.Leaf(), c.Pool())
	}
	c, err = NewClientSource(dir, "root")
	mustOK(t, err)
	if name, ok := ClientName(c.Leaf()); !ok || name != "root" {
		t.Fatalf("client source leaf is %q, %v", name, ok)
	}

	_, err = NewNodeSource(dir, 4)
	wantErr(t, err, NodeCert(4))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("error %q does not wrap fs.ErrNotExist", err)
	}
	_, err = NewNodeSource(dir, 0)
	wantErr(t, err, "node ID 0")
	_, err = NewNodeSource(t.TempDir(), 1)
	wantErr(t, err, CACert)
	_, err = NewClientSource(dir, "node.2")
	wantErr(t, err, "user name")
	_, err = NewClientSource(dir, "bob")
	wantErr(t, err, ClientCert("bob"))

	// Each case builds a directory from files of dir and other.
	type src struct{ dir, name string }
	for _, tc := range []struct {
		name   string
		files  map[string]src // file → where it comes from
		client string         // load a client source of this user, else node 2's
		want   []string
	}{
		{"node 3's files as node 2's", map[string]src{CACert: {dir, CACert}, NodeCert(2): {dir, NodeCert(3)}, NodeKey(2): {dir, NodeKey(3)}},
			"", []string{"is not node 2's certificate", `"node.3"`}},
		{"key of another node", map[string]src{CACert: {dir, CACert}, NodeCert(2): {dir, NodeCert(2)}, NodeKey(2): {dir, NodeKey(3)}},
			"", []string{NodeCert(2) + " and ", NodeKey(2), "does not match"}},
		{"a cert of another CA", map[string]src{CACert: {dir, CACert}, NodeCert(2): {other, NodeCert(2)}, NodeKey(2): {other, NodeKey(2)}},
			"", []string{NodeCert(2) + " does not verify against", "unknown authority"}},
		{"a leaf as ca.crt", map[string]src{CACert: {dir, NodeCert(1)}, NodeCert(2): {dir, NodeCert(2)}, NodeKey(2): {dir, NodeKey(2)}},
			"", []string{`"node.1" is not a CA`}},
		{"a key as ca.crt", map[string]src{CACert: {dir, CAKey}, NodeCert(2): {dir, NodeCert(2)}, NodeKey(2): {dir, NodeKey(2)}},
			"", []string{"holds a PRIVATE KEY"}},
		{"a node cert as a client's", map[string]src{CACert: {dir, CACert}, ClientCert("bob"): {dir, NodeCert(2)}, ClientKey("bob"): {dir, NodeKey(2)}},
			"bob", []string{`is not user "bob"'s client certificate`}},
		{"root's cert as bob's", map[string]src{CACert: {dir, CACert}, ClientCert("bob"): {dir, ClientCert("root")}, ClientKey("bob"): {dir, ClientKey("root")}},
			"bob", []string{`is not user "bob"'s client certificate`, `"root"`}},
		{"a client cert as a node's", map[string]src{CACert: {dir, CACert}, NodeCert(2): {dir, ClientCert("root")}, NodeKey(2): {dir, ClientKey("root")}},
			"", []string{"does not verify", "incompatible key usage"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := t.TempDir()
			for to, from := range tc.files {
				copyFile(t, from.dir, from.name, d, to)
			}
			var err error
			if tc.client != "" {
				_, err = NewClientSource(d, tc.client)
			} else {
				_, err = NewNodeSource(d, 2)
			}
			wantErr(t, err, tc.want...)
		})
	}

	// An expired certificate.
	o := Options{Dir: dir, Now: func() time.Time { return time.Now().Add(-3 * 8760 * time.Hour) }}
	mustOK(t, CreateNode(o, 9, []string{"localhost"}))
	_, err = NewNodeSource(dir, 9)
	wantErr(t, err, "expired")
}

// handshake connects a TLS client with cli to a TLS server with srv over
// loopback TCP, sends a byte and reads it back; it returns each side's
// error and the client's connection state.
func handshake(t *testing.T, srv, cli *tls.Config) (serverErr, clientErr error, state tls.ConnectionState) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	mustOK(t, err)
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		done <- func() error {
			c, err := ln.Accept()
			if err != nil {
				return err
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(time.Minute)) // only against a hang
			tc := tls.Server(c, srv)
			if err := tc.Handshake(); err != nil {
				return err
			}
			var b [1]byte
			if _, err := io.ReadFull(tc, b[:]); err != nil {
				return err
			}
			_, err = tc.Write(b[:])
			return err
		}()
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	mustOK(t, err)
	_ = c.SetDeadline(time.Now().Add(time.Minute))
	tc := tls.Client(c, cli)
	clientErr = func() error {
		if err := tc.Handshake(); err != nil {
			return err
		}
		if _, err := tc.Write([]byte{7}); err != nil {
			return err
		}
		var b [1]byte
		if _, err := io.ReadFull(tc, b[:]); err != nil {
			return err
		}
		if b[0] != 7 {
			return errors.New("echo mismatch")
		}
		return nil
	}()
	state = tc.ConnectionState()
	_ = tc.Close()
	return <-done, clientErr, state
}

// wantHandshakeErr fails the test unless err is an error mentioning want.
func wantHandshakeErr(t *testing.T, side string, err error, want string) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: handshake succeeded, want an error mentioning %q", side, want)
	} else if !strings.Contains(err.Error(), want) {
		t.Errorf("%s: error %q does not mention %q", side, err, want)
	}
}

// TestHandshake: who may talk to whom.
func TestHandshake(t *testing.T) {
	dir := cluster(t)
	other := cluster(t)
	node := func(dir string, id uint64) *Source {
		s, err := NewNodeSource(dir, id)
		mustOK(t, err)
		return s
	}
	client := func(dir, name string) *Source {
		s, err := NewClientSource(dir, name)
		mustOK(t, err)
		return s
	}
	// mixed trusts both CAs and holds other's node 2 certificate.
	mixedDir := t.TempDir()
	copyFile(t, other, NodeCert(2), mixedDir, NodeCert(2))
	copyFile(t, other, NodeKey(2), mixedDir, NodeKey(2))
	a, err := os.ReadFile(filepath.Join(dir, CACert))
	mustOK(t, err)
	b, err := os.ReadFile(filepath.Join(other, CACert))
	mustOK(t, err)
	mustOK(t, os.WriteFile(filepath.Join(mixedDir, CACert), append(a, b...), 0o600))
	mixed := node(mixedDir, 2)

	n2 := node(dir, 2)
	nodeOnly := n2.ServerConfig(tls.RequireAndVerifyClientCert, RequireNode(2))

	t.Run("node 2 to node 2", func(t *testing.T) {
		var seen *x509.Certificate
		serr, cerr, state := handshake(t, nodeOnly, node(dir, 2).ClientConfig(func(c *x509.Certificate) error {
			seen = c
			return RequireNode(2)(c)
		}))
		if serr != nil || cerr != nil {
			t.Fatalf("server: %v; client: %v", serr, cerr)
		}
		if state.Version != tls.VersionTLS13 {
			t.Errorf("version %x, want TLS 1.3", state.Version)
		}
		if seen == nil || seen.SerialNumber.Cmp(n2.Leaf().SerialNumber) != 0 {
			t.Errorf("client verified %v, want the server's certificate", seen)
		}
	})
	t.Run("node 3 to a server for node 2 only", func(t *testing.T) {
		serr, cerr, _ := handshake(t, nodeOnly, node(dir, 3).ClientConfig(RequireNode(2)))
		wantHandshakeErr(t, "server", serr, "peer is node 3, want node 2")
		wantHandshakeErr(t, "client", cerr, "bad certificate")
	})
	t.Run("a client of another CA", func(t *testing.T) {
		serr, cerr, _ := handshake(t, nodeOnly, mixed.ClientConfig(RequireNode(2)))
		wantHandshakeErr(t, "server", serr, "unknown authority")
		wantHandshakeErr(t, "client", cerr, "bad certificate")
	})
	t.Run("a server of another CA", func(t *testing.T) {
		serr, cerr, _ := handshake(t, mixed.ServerConfig(tls.RequireAndVerifyClientCert, nil), node(dir, 2).ClientConfig(RequireNode(2)))
		wantHandshakeErr(t, "client", cerr, "unknown authority")
		wantHandshakeErr(t, "server", serr, "bad certificate")
	})
	t.Run("a client cert on a node-only server", func(t *testing.T) {
		serr, cerr, _ := handshake(t, nodeOnly, client(dir, "root").ClientConfig(RequireNode(2)))
		wantHandshakeErr(t, "server", serr, `"root" is not a node's`)
		wantHandshakeErr(t, "client", cerr, "bad certificate")
	})
	t.Run("no client cert where one is required", func(t *testing.T) {
		serr, cerr, _ := handshake(t, nodeOnly, client(dir, "").ClientConfig(RequireNode(2)))
		wantHandshakeErr(t, "server", serr, "didn't provide a certificate")
		if cerr == nil {
			t.Error("client: no error")
		}
	})
	t.Run("a client cert as a server's", func(t *testing.T) {
		serr, cerr, _ := handshake(t, client(dir, "root").ServerConfig(tls.NoClientCert, nil), client(dir, "").ClientConfig(nil))
		wantHandshakeErr(t, "client", cerr, "incompatible key usage")
		if serr == nil {
			t.Error("server: no error")
		}
	})
	t.Run("a source without a certificate as a server", func(t *testing.T) {
		serr, cerr, _ := handshake(t, client(dir, "").ServerConfig(tls.NoClientCert, nil), client(dir, "").ClientConfig(nil))
		wantHandshakeErr(t, "server", serr, "no server certificate")
		if cerr == nil {
			t.Error("client: no error")
		}
	})

	// A server that takes clients with or without certificates.
	var users []string
	optional := n2.ServerConfig(tls.VerifyClientCertIfGiven, func(c *x509.Certificate) error {
		if name, ok := ClientName(c); ok {
			users = append(users, name)
			return nil
		}
		return RequireNode(0)(c)
	})
	t.Run("optional: no certificate", func(t *testing.T) {
		serr, cerr, _ := handshake(t, optional, client(dir, "").ClientConfig(RequireNode(2)))
		if serr != nil || cerr != nil {
			t.Fatalf("server: %v; client: %v", serr, cerr)
		}
	})
	t.Run("optional: user root", func(t *testing.T) {
		serr, cerr, _ := handshake(t, optional, client(dir, "root").ClientConfig(RequireNode(0)))
		if serr != nil || cerr != nil {
			t.Fatalf("server: %v; client: %v", serr, cerr)
		}
	})
	t.Run("optional: a client of another CA", func(t *testing.T) {
		serr, _, _ := handshake(t, optional, mixed.ClientConfig(RequireNode(0)))
		wantHandshakeErr(t, "server", serr, "unknown authority")
	})
	t.Run("optional: the wrong node for the client", func(t *testing.T) {
		_, cerr, _ := handshake(t, optional, client(dir, "root").ClientConfig(RequireNode(3)))
		wantHandshakeErr(t, "client", cerr, "peer is node 2, want node 3")
	})
	if len(users) != 1 || users[0] != "root" {
		t.Errorf("server saw users %q, want [root]", users)
	}

	t.Run("Ed25519", func(t *testing.T) {
		// An Ed25519 CA; node 1 has an Ed25519 key, node 2 an ECDSA one.
		d := t.TempDir()
		o := Options{Dir: d, KeyType: Ed25519}
		mustOK(t, CreateCA(o))
		mustOK(t, CreateNode(o, 1, []string{"localhost"}))
		o.KeyType = ECDSA
		mustOK(t, CreateNode(o, 2, []string{"localhost"}))
		for _, ids := range [][2]uint64{{1, 2}, {2, 1}} {
			srv, cli := node(d, ids[0]), node(d, ids[1])
			serr, cerr, _ := handshake(t, srv.ServerConfig(tls.RequireAndVerifyClientCert, RequireNode(ids[1])), cli.ClientConfig(RequireNode(ids[0])))
			if serr != nil || cerr != nil {
				t.Fatalf("node %d serving node %d: server: %v; client: %v", ids[0], ids[1], serr, cerr)
			}
		}
	})

	t.Run("ALPN survives cloning", func(t *testing.T) {
		// What gRPC and net/http do with a configuration.
		srv, cli := nodeOnly.Clone(), node(dir, 2).ClientConfig(nil).Clone()
		srv.NextProtos = []string{"h2"}
		cli.NextProtos = []string{"h2"}
		serr, cerr, state := handshake(t, srv, cli)
		if serr != nil || cerr != nil {
			t.Fatalf("server: %v; client: %v", serr, cerr)
		}
		if state.NegotiatedProtocol != "h2" {
			t.Errorf("negotiated %q, want h2", state.NegotiatedProtocol)
		}
	})
}

// TestPlaintextRefused: a client that does not speak TLS gets nothing from
// a TLS server.
func TestPlaintextRefused(t *testing.T) {
	dir := cluster(t)
	s, err := NewNodeSource(dir, 1)
	mustOK(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	mustOK(t, err)
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		tc := tls.Server(c, s.ServerConfig(tls.RequireAndVerifyClientCert, nil))
		if err := tc.Handshake(); err != nil {
			done <- err
			return
		}
		_, err = tc.Write([]byte("data"))
		done <- err
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	mustOK(t, err)
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Minute))
	_, err = c.Write([]byte("PUT /key HTTP/1.1\r\nHost: x\r\n\r\n"))
	mustOK(t, err)
	serr := <-done
	var rh tls.RecordHeaderError
	if !errors.As(serr, &rh) {
		t.Fatalf("server: %v, want a tls.RecordHeaderError", serr)
	}
	got, _ := io.ReadAll(c)
	if bytes.Contains(got, []byte("data")) {
		t.Fatalf("plaintext client got %q", got)
	}
}

// TestRotation: a replaced certificate is used from the next handshake
// after Reload; a broken replacement is refused and the old one stays.
func TestRotation(t *testing.T) {
	dir := cluster(t)
	srv, err := NewNodeSource(dir, 2)
	mustOK(t, err)
	cli, err := NewNodeSource(dir, 1)
	mustOK(t, err)
	sc := srv.ServerConfig(tls.RequireAndVerifyClientCert, RequireNode(0))
	var seen *big.Int
	cc := cli.ClientConfig(func(c *x509.Certificate) error {
		seen = c.SerialNumber
		return RequireNode(2)(c)
	})
	presents := func(want *big.Int) {
		t.Helper()
		seen = nil
		serr, cerr, _ := handshake(t, sc, cc)
		if serr != nil || cerr != nil {
			t.Fatalf("server: %v; client: %v", serr, cerr)
		}
		if seen == nil || seen.Cmp(want) != 0 {
			t.Fatalf("server presented serial %v, want %v", seen, want)
		}
	}
	reload := func(wantChanged bool, wantErrs ...string) {
		t.Helper()
		changed, err := srv.Reload()
		if changed != wantChanged {
			t.Errorf("Reload changed = %v, want %v", changed, wantChanged)
		}
		if len(wantErrs) == 0 {
			mustOK(t, err)
		} else {
			wantErr(t, err, wantErrs...)
		}
	}
	first := readCert(t, dir, NodeCert(2)).SerialNumber
	presents(first)
	reload(false)

	mustOK(t, CreateNode(Options{Dir: dir, Overwrite: true}, 2, []string{"127.0.0.1"}))
	second := readCert(t, dir, NodeCert(2)).SerialNumber
	if second.Cmp(first) == 0 {
		t.Fatal("the new certificate has the old serial")
	}
	presents(first) // not reloaded yet
	reload(true)
	if srv.Leaf().SerialNumber.Cmp(second) != 0 {
		t.Fatalf("Leaf serial %v after reload, want %v", srv.Leaf().SerialNumber, second)
	}
	presents(second)
	reload(false)

	certPath, keyPath := filepath.Join(dir, NodeCert(2)), filepath.Join(dir, NodeKey(2))
	good, err := os.ReadFile(certPath)
	mustOK(t, err)
	goodKey, err := os.ReadFile(keyPath)
	mustOK(t, err)
	mustOK(t, os.WriteFile(certPath, good[:len(good)/2], 0o600))
	reload(false, certPath)
	reload(false, certPath) // still refused, the same way
	presents(second)

	// A replacement written file by file: the key first.
	mustOK(t, os.WriteFile(certPath, good, 0o600))
	copyFile(t, dir, NodeKey(3), dir, NodeKey(2))
	reload(false, "private key does not match")
	presents(second)
	mustOK(t, os.Remove(keyPath))
	reload(false, keyPath)
	mustOK(t, os.WriteFile(keyPath, goodKey, 0o600))
	reload(false) // the same set as in use
	presents(second)

	// A client picks up a new CA for servers it refused.
	other := cluster(t)
	cd := t.TempDir()
	copyFile(t, other, CACert, cd, CACert)
	c2, err := NewClientSource(cd, "")
	mustOK(t, err)
	cc2 := c2.ClientConfig(RequireNode(2))
	optional := srv.ServerConfig(tls.VerifyClientCertIfGiven, nil)
	_, cerr, _ := handshake(t, optional, cc2)
	wantHandshakeErr(t, "client", cerr, "unknown authority")
	a, err := os.ReadFile(filepath.Join(other, CACert))
	mustOK(t, err)
	b, err := os.ReadFile(filepath.Join(dir, CACert))
	mustOK(t, err)
	mustOK(t, os.WriteFile(filepath.Join(cd, CACert), append(a, b...), 0o600))
	if changed, err := c2.Reload(); !changed || err != nil {
		t.Fatalf("client Reload = %v, %v", changed, err)
	}
	if serr, cerr, _ := handshake(t, optional, cc2); serr != nil || cerr != nil {
		t.Fatalf("after the client's reload: server: %v; client: %v", serr, cerr)
	}
}

// TestReloadLoop: the loop reloads on each tick, logs a change once and a
// refusal once however often it repeats, and returns when stopped.
func TestReloadLoop(t *testing.T) {
	dir := cluster(t)
	s, err := NewNodeSource(dir, 2)
	mustOK(t, err)
	var logs bytes.Buffer
	s.SetLogger(slog.New(slog.NewTextHandler(&logs, nil)))
	tick := make(chan time.Time)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.reloadLoop(stop, tick)
	}()
	// The loop takes a tick only once it has finished the reload of the
	// previous one: after two sends, the first reload is done.
	ticks := func(n int) {
		for range n {
			tick <- time.Time{}
		}
	}
	ticks(1)
	mustOK(t, CreateNode(Options{Dir: dir, Overwrite: true}, 2, []string{"127.0.0.1"}))
	ticks(2)
	if got, want := s.Leaf().SerialNumber, readCert(t, dir, NodeCert(2)).SerialNumber; got.Cmp(want) != 0 {
		t.Fatalf("serial %v after the loop's reload, want %v", got, want)
	}
	mustOK(t, os.WriteFile(filepath.Join(dir, NodeCert(2)), []byte("broken"), 0o600))
	ticks(4)
	close(stop)
	<-done

	out := logs.String()
	if n := strings.Count(out, "certificates reloaded"); n != 1 {
		t.Errorf("%d reload messages, want 1:\n%s", n, out)
	}
	if n := strings.Count(out, "certificates not reloaded"); n != 1 {
		t.Errorf("%d refusal messages, want 1:\n%s", n, out)
	}
	if !strings.Contains(out, NodeCert(2)) {
		t.Errorf("the refusal does not name the file:\n%s", out)
	}

	// Run returns once stop is closed.
	s.Run(stop, time.Hour)
}
