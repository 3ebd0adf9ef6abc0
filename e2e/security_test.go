package e2e

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/client"
	"github.com/flotilla/flotilla/internal/certs"
	"github.com/flotilla/flotilla/transport"
)

// The security tests (docs/security.md) on real processes: three nodes
// started with --certs-dir, whose certificates the binary's own `flotilla
// cert` commands made, and the CLI as client.

// certCLI runs `flotilla cert ARGS --certs-dir dir` and fails the test if
// it fails.
func certCLI(t *testing.T, dir string, args ...string) {
	t.Helper()
	if r := run(t, nil, append(append([]string{"cert"}, args...), "--certs-dir", dir)...); r.code != 0 {
		t.Fatalf("cert %v: %+v", args, r)
	}
}

// makeCertsCLI makes, with the CLI, a CA in dir, the certificates of
// nodes 1..nodes on 127.0.0.ID and root's client certificate.
func makeCertsCLI(t *testing.T, dir string, nodes int) {
	t.Helper()
	certCLI(t, dir, "create-ca")
	for id := 1; id <= nodes; id++ {
		certCLI(t, dir, "create-node", fmt.Sprint(id), fmt.Sprintf("127.0.0.%d", id))
	}
	certCLI(t, dir, "create-client", "root")
}

// secureGroups is the number of ranges of the secure cluster.
const secureGroups = 2

// newSecureCluster starts a secure cluster (certificates and the auth
// tables reread every 100ms) and waits until every range has a leader.
func newSecureCluster(t *testing.T) *procCluster {
	dir := filepath.Join(t.TempDir(), "certs")
	makeCertsCLI(t, dir, 3)
	c := launch(t, &procCluster{groups: secureGroups, certsDir: dir,
		startArgs: []string{"--cert-reload-interval", "100ms", "--auth-refresh", "100ms"}})
	c.waitLed(t, secureGroups)
	return c
}

// as runs a client command against every node of c with the given
// authentication flags (--certs-dir, --user, --token, --insecure).
func (c *procCluster) as(t *testing.T, auth []string, args ...string) result {
	t.Helper()
	args = append(append(args, "--endpoints", strings.Join(c.endpoints(0), ",")), auth...)
	return run(t, nil, args...)
}

// root runs a client command as root, by certificate.
func (c *procCluster) root(t *testing.T, args ...string) result {
	t.Helper()
	return c.as(t, []string{"--certs-dir", c.certsDir}, args...)
}

// mustNotFind fails the test unless root's get of key says "not found".
func (c *procCluster) mustNotFind(t *testing.T, key string) {
	t.Helper()
	if r := c.root(t, "get", key); r.code == 0 || !strings.Contains(r.stderr, "not found") {
		t.Fatalf("root's get %s: %+v; want not found", key, r)
	}
}

// TestSecureCluster runs the refusals, roles and rotation of
// docs/security.md against one secure cluster of three processes. The
// subtests run in order: CertRotation, last, restarts and kills nodes.
func TestSecureCluster(t *testing.T) {
	c := newSecureCluster(t)
	if r := c.root(t, "put", "probe", "1"); r.code != 0 {
		t.Fatalf("root's put: %+v", r)
	}
	if r := c.root(t, "get", "probe"); r.code != 0 || r.stdout != "1\n" {
		t.Fatalf("root's get: %+v", r)
	}

	// A plaintext client gets nothing through, by the CLI or by a raw
	// gRPC call, and writes nothing.
	t.Run("PlaintextRefused", func(t *testing.T) {
		if r := c.as(t, []string{"--insecure", "--timeout", "3s"}, "put", "plain", "x"); r.code == 0 || !strings.Contains(r.stderr, "unavailable") {
			t.Fatalf("plaintext put: %+v; want unavailable", r)
		}
		cc, err := grpc.NewClient(c.nodes[1].clientAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if _, err := api.NewKVClient(cc).Put(ctx, &api.PutRequest{Key: []byte("plain"), Value: []byte("x")}); err == nil {
			t.Fatal("a raw plaintext Put was served")
		}
		c.mustNotFind(t, "plain")
	})

	// A client of another CA is refused: one that trusts only its own CA
	// refuses the nodes, and one that trusts both CAs but presents the
	// other CA's certificate is refused by the nodes. Neither writes.
	t.Run("OtherCARefused", func(t *testing.T) {
		other := filepath.Join(t.TempDir(), "other")
		makeCertsCLI(t, other, 0)
		if r := c.as(t, []string{"--certs-dir", other, "--timeout", "3s"}, "put", "otherca", "x"); r.code == 0 || !strings.Contains(r.stderr, "unauthenticated") {
			t.Fatalf("a client of another CA: %+v; want unauthenticated", r)
		}
		mixed := filepath.Join(t.TempDir(), "mixed")
		if err := os.Mkdir(mixed, 0o700); err != nil {
			t.Fatal(err)
		}
		var bundle []byte
		for _, d := range []string{c.certsDir, other} {
			b, err := os.ReadFile(filepath.Join(d, certs.CACert))
			if err != nil {
				t.Fatal(err)
			}
			bundle = append(bundle, b...)
		}
		copyFiles(t, other, mixed, certs.ClientCert("root"), certs.ClientKey("root"))
		if err := os.WriteFile(filepath.Join(mixed, certs.CACert), bundle, 0o600); err != nil {
			t.Fatal(err)
		}
		// Mostly "unauthenticated", but not always: the nodes' refusal
		// (a TLS alert after the client's side of the handshake) may
		// reach the client as a broken pipe on its first write.
		if r := c.as(t, []string{"--certs-dir", mixed, "--timeout", "3s"}, "put", "otherca", "x"); r.code == 0 {
			t.Fatalf("the nodes took a client certificate of another CA: %+v", r)
		}
		c.mustNotFind(t, "otherca")
	})

	// A node started with node 2's certificate as its own (node-3.crt a
	// copy of node-2.crt) refuses to start, naming the certificate.
	t.Run("ImpostorNodeRefusedAtStart", func(t *testing.T) {
		bad := filepath.Join(t.TempDir(), "bad")
		if err := os.Mkdir(bad, 0o700); err != nil {
			t.Fatal(err)
		}
		copyFiles(t, c.certsDir, bad, certs.CACert)
		copyFile(t, filepath.Join(c.certsDir, certs.NodeCert(2)), filepath.Join(bad, certs.NodeCert(3)))
		copyFile(t, filepath.Join(c.certsDir, certs.NodeKey(2)), filepath.Join(bad, certs.NodeKey(3)))
		r := runFor(t, 20*time.Second, nil, "start", "--id", "3", "--data-dir", filepath.Join(t.TempDir(), "d"),
			"--peer-addr", c.nodes[3].peer, "--client-addr", freeAddr(t, "127.0.0.3"), "--http-addr", freeAddr(t, "127.0.0.3"),
			"--initial-cluster", c.initial, "--groups", fmt.Sprint(secureGroups), "--certs-dir", bad)
		if r.code == 0 || !strings.Contains(r.stderr, certs.NodeCert(3)) || !strings.Contains(r.stderr, "not node 3's certificate") {
			t.Fatalf("start as node 3 with node 2's certificate: exit %d, stderr %q; want a refusal naming %s", r.code, r.stderr, certs.NodeCert(3))
		}
	})

	// A rogue peer holding node 2's certificate but claiming to be node 3
	// is cut off by node 1 for its identity, and the cluster serves on.
	// /metrics needs a client certificate, /healthz does not.
	t.Run("RoguePeer", func(t *testing.T) {
		r := c.root(t, "status", "-w", "json")
		var st struct {
			ClusterID uint64 `json:"cluster_id"`
		}
		if err := json.Unmarshal([]byte(r.stdout), &st); r.code != 0 || err != nil || st.ClusterID == 0 {
			t.Fatalf("status -w json: %v %+v", err, r)
		}
		src, err := certs.NewNodeSource(c.certsDir, 2)
		if err != nil {
			t.Fatal(err)
		}
		rogue, err := transport.NewGRPC(transport.GRPCConfig{
			NodeID: 3, ClusterID: st.ClusterID, ListenAddr: "127.0.0.1:0",
			TLS:    func(peer uint64) *tls.Config { return src.ClientConfig(certs.RequireNode(peer)) },
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		})
		if err != nil {
			t.Fatal(err)
		}
		defer rogue.Close()
		if err := rogue.Start(nopHandler{}); err != nil {
			t.Fatal(err)
		}
		rogue.AddPeer(1, c.nodes[1].peer)

		rootTLS, err := client.LoadTLS(c.certsDir, "root")
		if err != nil {
			t.Fatal(err)
		}
		anon, err := client.LoadTLS(c.certsDir, "")
		if err != nil {
			t.Fatal(err)
		}
		n1 := c.nodes[1].httpAddr
		before, err := identityRejections(rootTLS, n1)
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "node 1 rejects the rogue for its identity", func() error {
			rogue.Send([]transport.Envelope{
				{Group: 1, Msg: raftpb.Message{Type: raftpb.MsgVote, From: 3, To: 1, Term: 1 << 20, LogTerm: 1 << 20, Index: 1 << 30}},
				{Group: 1, Msg: raftpb.Message{Type: raftpb.MsgHeartbeat, From: 3, To: 1, Term: 1 << 20}},
			})
			rogue.FlushHeartbeats(true)
			n, err := identityRejections(rootTLS, n1)
			if err != nil {
				return err
			}
			if n <= before {
				return fmt.Errorf("%v identity rejections, %v before the rogue", n, before)
			}
			return nil
		})
		if r := c.root(t, "put", "after-rogue", "x", "--timeout", "5s"); r.code != 0 {
			t.Fatalf("put after the rogue: %+v", r)
		}

		for _, tc := range []struct {
			cfg  *tls.Config
			path string
			want int
		}{{anon, "/metrics", http.StatusUnauthorized}, {anon, "/healthz", http.StatusOK}, {rootTLS, "/metrics", http.StatusOK}} {
			code, _, err := httpsGet(tc.cfg, n1, tc.path)
			if err != nil || code != tc.want {
				t.Errorf("GET %s (root's certificate: %v): %d %v; want %d", tc.path, tc.cfg == rootTLS, code, err, tc.want)
			}
		}
	})

	// Roles through the CLI: root makes role app (read and write app/),
	// user alice with it and her certificate; alice, by certificate or by
	// token, uses app/ and is refused secret/ and the user admin.
	t.Run("Roles", func(t *testing.T) {
		for _, args := range [][]string{
			{"put", "secret/x", "hidden"},
			{"role", "add", "app"},
			{"role", "grant", "app", "readwrite", "app/"},
		} {
			if r := c.root(t, args...); r.code != 0 {
				t.Fatalf("root: %v: %+v", args, r)
			}
		}
		r := c.root(t, "user", "add", "alice")
		m := regexp.MustCompile(`(?m)^token: (\S+)$`).FindStringSubmatch(r.stdout)
		if r.code != 0 || m == nil {
			t.Fatalf("user add alice: %+v", r)
		}
		token := m[1]
		r = c.root(t, "user", "add", "bob", "-w", "json")
		var bob struct {
			Name  string `json:"name"`
			Token string `json:"token"`
		}
		if err := json.Unmarshal([]byte(r.stdout), &bob); r.code != 0 || err != nil || bob.Name != "bob" || bob.Token == "" || bob.Token == token {
			t.Fatalf("user add bob -w json: %v %+v", err, r)
		}
		if r := c.root(t, "user", "grant", "alice", "app"); r.code != 0 {
			t.Fatalf("user grant: %+v", r)
		}
		certCLI(t, c.certsDir, "create-client", "alice")

		byCert := []string{"--certs-dir", c.certsDir, "--user", "alice"}
		byToken := []string{"--certs-dir", c.certsDir, "--token", token}
		// Every node has alice with her role once each says so.
		for id := uint64(1); id <= 3; id++ {
			waitFor(t, 10*time.Second, fmt.Sprintf("node %d knows alice", id), func() error {
				r := run(t, nil, append([]string{"user", "whoami", "--endpoints", c.nodes[id].clientAddr, "--timeout", "2s"}, byCert...)...)
				if r.code != 0 || r.stdout != "alice (by certificate), roles [app]\n" {
					return fmt.Errorf("%+v", r)
				}
				return nil
			})
		}
		if r := c.as(t, byToken, "user", "whoami"); r.code != 0 || !strings.HasPrefix(r.stdout, "alice (by token)") {
			t.Fatalf("whoami by token: %+v", r)
		}

		if r := c.as(t, byCert, "put", "app/x", "1"); r.code != 0 {
			t.Fatalf("alice's put app/x: %+v", r)
		}
		denied := func(r result, perm string) {
			t.Helper()
			if r.code == 0 || !strings.Contains(r.stderr, "permission denied") || !strings.Contains(r.stderr, perm) {
				t.Fatalf("exit %d, stderr %q; want permission denied naming %q", r.code, r.stderr, perm)
			}
		}
		denied(c.as(t, byCert, "get", "secret/x"), `user "alice" has no read permission on key "secret/x"`)
		denied(c.as(t, byCert, "put", "secret/y", "1"), `no write permission on key "secret/y"`)
		c.mustNotFind(t, "secret/y")
		if r := c.as(t, byToken, "get", "app/x"); r.code != 0 || r.stdout != "1\n" {
			t.Fatalf("alice's get app/x by token: %+v", r)
		}
		denied(c.as(t, byToken, "get", "secret/x"), `no read permission on key "secret/x"`)
		if r := c.as(t, byCert, "user", "list", "-w", "json"); r.code == 0 || !strings.Contains(r.stderr, "permission denied") {
			t.Fatalf("alice listed the users: %+v", r)
		}

		r = c.root(t, "user", "list", "-w", "json")
		var users struct {
			Users []struct {
				Name     string   `json:"name"`
				Roles    []string `json:"roles"`
				HasToken bool     `json:"has_token"`
				Token    string   `json:"token"`
			} `json:"users"`
		}
		if err := json.Unmarshal([]byte(r.stdout), &users); r.code != 0 || err != nil {
			t.Fatalf("user list -w json: %v %+v", err, r)
		}
		found := false
		for _, u := range users.Users {
			if u.Token != "" {
				t.Errorf("user list shows %s's token", u.Name)
			}
			if u.Name == "alice" {
				found = true
				if !slices.Equal(u.Roles, []string{"app"}) || !u.HasToken {
					t.Errorf("user list: alice is %+v", u)
				}
			}
		}
		if !found {
			t.Errorf("user list lacks alice: %s", r.stdout)
		}
		r = c.root(t, "role", "list", "-w", "json")
		type role struct {
			Name        string `json:"name"`
			Permissions []struct {
				Kind   string `json:"kind"`
				Prefix string `json:"prefix"`
				Read   bool   `json:"read"`
				Write  bool   `json:"write"`
			} `json:"permissions"`
		}
		var roles struct {
			Roles []role `json:"roles"`
		}
		if err := json.Unmarshal([]byte(r.stdout), &roles); r.code != 0 || err != nil {
			t.Fatalf("role list -w json: %v %+v", err, r)
		}
		i := slices.IndexFunc(roles.Roles, func(r role) bool { return r.Name == "app" })
		if i < 0 || len(roles.Roles[i].Permissions) != 1 {
			t.Fatalf("role list lacks app with one permission: %s", r.stdout)
		}
		if p := roles.Roles[i].Permissions[0]; p.Kind != "key" || p.Prefix != "app/" || !p.Read || !p.Write {
			t.Errorf("role app's permission: %+v", p)
		}
	})

	// Node 1's certificate rewritten on disk is what node 1 presents
	// next, and its peers take it: after node 2 restarts (new connections
	// both ways with node 1) and node 3 dies, nodes 1 and 2 together still
	// commit writes.
	t.Run("CertRotation", func(t *testing.T) {
		addr := c.nodes[1].clientAddr
		before, err := servedSerial(c.certsDir, addr)
		if err != nil {
			t.Fatal(err)
		}
		certCLI(t, c.certsDir, "create-node", "1", "127.0.0.1", "--overwrite")
		src, err := certs.NewNodeSource(c.certsDir, 1)
		if err != nil {
			t.Fatal(err)
		}
		fresh := src.Leaf().SerialNumber.String()
		if fresh == before {
			t.Fatal("the new certificate has the old serial")
		}
		waitFor(t, 10*time.Second, "node 1 presents its new certificate", func() error {
			got, err := servedSerial(c.certsDir, addr)
			if err != nil {
				return err
			}
			if got != fresh {
				return fmt.Errorf("serial %s, want %s", got, fresh)
			}
			return nil
		})
		if r := c.root(t, "put", "after-rotation", "x"); r.code != 0 {
			t.Fatalf("put after the rotation: %+v", r)
		}

		c.kill(2)
		c.start(2)
		c.kill(3)
		cfg, err := c.config(c.endpoints(3))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cl, err := client.New(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		for i := range 8 { // keys of both ranges
			key := fmt.Appendf(nil, "%x/rotated", i*32)
			waitFor(t, 20*time.Second, "nodes 1 and 2 commit "+string(key), func() error {
				ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				defer cancel()
				_, err := cl.Put(ctx, key, []byte("x"))
				return err
			})
		}
	})
}

type nopHandler struct{}

func (nopHandler) HandleBatch(uint64, []transport.Envelope) {}
func (nopHandler) ReportUnreachable(uint64)                 {}
func (nopHandler) ReportSnapshot(uint64, uint64, bool)      {}

// identityRejections returns the node's count of peer frames rejected for
// their sender's identity, from its /metrics.
func identityRejections(cfg *tls.Config, httpAddr string) (float64, error) {
	return metricSum(cfg, httpAddr, "flotilla_transport_messages_rejected_total", `reason="identity"`)
}

// servedSerial returns the serial of the certificate a node's client
// listener at addr presents, to root.
func servedSerial(dir, addr string) (string, error) {
	cfg, err := client.LoadTLS(dir, "root")
	if err != nil {
		return "", err
	}
	cfg.NextProtos = []string{"h2"}
	conn, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber.String(), nil
}

// copyFile copies src to dst, mode 0600.
func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// copyFiles copies the named files of dir src into dir dst.
func copyFiles(t *testing.T, src, dst string, names ...string) {
	t.Helper()
	for _, n := range names {
		copyFile(t, filepath.Join(src, n), filepath.Join(dst, n))
	}
}
