package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/api"
)

// `flotilla start --join`: a fourth process joins a running 3-node cluster
// through one node's peer address, with no other node restarted and no
// --id; it gets ID 4, the others list it, and the rebalancer (on by
// default) gives it replicas. A joining node whose flags are not the
// cluster's exits 1 saying why, and so does one given both --join and
// --initial-cluster.
func TestJoinCLI(t *testing.T) {
	c := newProcCluster(t, 8)
	c.waitLed(t, 8)
	dir := t.TempDir()
	start := func(dataDir string, extra ...string) (*exec.Cmd, *bytes.Buffer, chan error) {
		args := append([]string{"start", "--data-dir", dataDir, "--join", c.nodes[2].peer,
			"--peer-addr", freeAddr(t, "127.0.0.4"), "--client-addr", freeAddr(t, "127.0.0.4"), "--http-addr", freeAddr(t, "127.0.0.4"),
			"--tick", "20ms", "--election-ticks", "10", "--balance-interval", "500ms", "--balance-settle", "1s", "--insecure"}, extra...)
		cmd := exec.Command(bin, args...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		return cmd, &stderr, exited
	}

	// Refused: --replicas that is not the cluster's.
	_, stderr, exited := start(filepath.Join(dir, "bad"), "--replicas", "5")
	select {
	case err := <-exited:
		var ee *exec.ExitError
		if !(err != nil && errors.As(err, &ee) && ee.ExitCode() == 1) || !strings.Contains(stderr.String(), "--replicas") {
			t.Fatalf("a node joining with --replicas 5: %v\n%s", err, stderr)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("a node joining with --replicas 5 did not exit")
	}
	if r := run(t, nil, "start", "--data-dir", filepath.Join(dir, "x"), "--join", c.nodes[1].peer, "--initial-cluster", c.initial,
		"--peer-addr", "127.0.0.4:1", "--client-addr", "127.0.0.4:2", "--http-addr", "127.0.0.4:3", "--insecure"); r.code != 1 ||
		!strings.Contains(r.stderr, "exclude each other") {
		t.Fatalf("--join with --initial-cluster: exit %d: %s", r.code, r.stderr)
	}

	cmd, stderr, exited := start(filepath.Join(dir, "4"))
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	eps := strings.Join(c.endpoints(0), ",")
	var nl api.NodeList
	waitFor(t, 90*time.Second, "node 4 listed live, holding replicas", func() error {
		select {
		case err := <-exited:
			t.Fatalf("the joining node exited: %v\n%s", err, stderr)
		default:
		}
		r := run(t, nil, "node", "list", "-w", "json", "--endpoints", eps)
		if r.code != 0 {
			return fmt.Errorf("node list exited %d: %s", r.code, r.stderr)
		}
		if err := json.Unmarshal([]byte(r.stdout), &nl); err != nil {
			return err
		}
		if len(nl.Nodes) != 4 || nl.Nodes[3].ID != 4 || nl.Nodes[3].State != api.NodeLive || nl.Nodes[3].Replicas < 5 {
			return fmt.Errorf("node list: %+v", nl)
		}
		return nil
	})
	meta, err := os.ReadFile(filepath.Join(dir, "4", "flotilla.meta"))
	if err != nil || !strings.Contains(string(meta), `"joined": true`) || !strings.Contains(string(meta), `"node_id": 4`) {
		t.Fatalf("the joined node's meta file: %s, %v", meta, err)
	}
}
