package server

import (
	crand "crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

const metaFile = "flotilla.meta"

// meta is what a data directory remembers about the cluster it belongs to.
type meta struct {
	ClusterID      uint64 `json:"cluster_id"`
	NodeID         uint64 `json:"node_id"`
	InitialCluster string `json:"initial_cluster"`
	Groups         int    `json:"groups"`
	// Replicas is --replicas; absent (0) means the default, 3, as in
	// directories written before the flag.
	Replicas int `json:"replicas,omitempty"`
	// Layout is the version of the database's layout (layoutRanges);
	// absent in directories of the hashed groups that came before ranges.
	Layout int `json:"layout,omitempty"`
	// Joined: the node joined a running cluster (--join) rather than
	// being one of InitialCluster.
	Joined bool `json:"joined,omitempty"`
	// Nodes are the peer addresses of the nodes that joined after the
	// bootstrap, as this node last knew them (directory.go): not part of
	// the identity compared on start.
	Nodes map[uint64]string `json:"nodes,omitempty"`
}

// layoutRanges is the database layout of ranges (internal/keys): user data
// keyed by user key. Directories written before it hold data under group
// prefixes, which this version cannot read.
const layoutRanges = 2

// checkMeta reads the meta file of dir. If there is none, it reports fresh:
// the caller bootstraps the node, then writes the file (writeMeta), so that
// a crash in between bootstraps again. If there is one that differs from
// want, it returns ErrOtherCluster; else what it holds.
func checkMeta(dir string, want meta) (got meta, fresh bool, err error) {
	got, fresh, err = readMeta(dir)
	if err != nil || fresh {
		return got, fresh, err
	}
	return got, false, sameNode(dir, got, want)
}

// readMeta reads the meta file of dir; fresh if there is none.
// ErrOtherCluster if it is not a meta file.
func readMeta(dir string) (m meta, fresh bool, err error) {
	path := filepath.Join(dir, metaFile)
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return m, true, nil
	case err != nil:
		return m, false, fmt.Errorf("server: read %s: %w", path, err)
	}
	m, err = parseMeta(path, b)
	return m, false, err
}

// parseMeta parses b, the contents of the meta file at path;
// ErrOtherCluster if it is not a meta file.
func parseMeta(path string, b []byte) (m meta, err error) {
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("%w: %s is not a Flotilla meta file: %v", ErrOtherCluster, path, err)
	}
	return m, nil
}

// compareMeta checks b, the contents of dir's meta file at path, against
// want; ErrOtherCluster if it is not a meta file or another node's.
func compareMeta(dir, path string, b []byte, want meta) error {
	got, err := parseMeta(path, b)
	if err != nil {
		return err
	}
	return sameNode(dir, got, want)
}

// sameNode checks got, read from dir's meta file, against want: the same
// layout, cluster and node (ErrOtherCluster if not).
func sameNode(dir string, got, want meta) error {
	if got.Layout != want.Layout {
		return fmt.Errorf("%w: %s holds data in layout %d (hashed groups, before ranges); this version reads layout %d only: "+
			"start the node with a new --data-dir (the old data is not converted)", ErrOtherCluster, dir, got.Layout, want.Layout)
	}
	if got.ClusterID != want.ClusterID {
		return fmt.Errorf("%w: %s was created for cluster %x (--initial-cluster %s, --groups %d, --replicas %d), "+
			"not cluster %x (--initial-cluster %s, --groups %d, --replicas %d); use another --data-dir or the original flags",
			ErrOtherCluster, dir, got.ClusterID, got.InitialCluster, got.Groups, replicasOrDefault(got.Replicas),
			want.ClusterID, want.InitialCluster, want.Groups, replicasOrDefault(want.Replicas))
	}
	if got.NodeID != want.NodeID {
		return fmt.Errorf("%w: %s belongs to node %d, not node %d", ErrOtherCluster, dir, got.NodeID, want.NodeID)
	}
	return nil
}

// replicasOrDefault is a meta file's replicas, the default when absent.
func replicasOrDefault(n int) int {
	if n == 0 {
		return DefaultReplicas
	}
	return n
}

// writeMeta writes m as dir's meta file, durably (writeFileDurably).
func writeMeta(dir string, m meta) error {
	b, err := encodeMeta(m)
	if err != nil {
		return err
	}
	if err := writeFileDurably(dir, metaFile, b); err != nil {
		return fmt.Errorf("server: write meta: %w", err)
	}
	return nil
}

// readHexFile reads dir's file name, one non-zero number in hex (a join
// nonce, an incarnation): ok false if there is no such file;
// ErrOtherCluster, naming what it should hold, if it holds something else.
func readHexFile(dir, name, what string) (v uint64, ok bool, err error) {
	path := filepath.Join(dir, name)
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return 0, false, nil
	case err != nil:
		return 0, false, fmt.Errorf("server: read %s: %w", path, err)
	}
	v, perr := strconv.ParseUint(strings.TrimSpace(string(b)), 16, 64)
	if perr != nil || v == 0 {
		return 0, false, fmt.Errorf("%w: %s holds %q, not %s", ErrOtherCluster, path, b, what)
	}
	return v, true, nil
}

// writeHexFile writes v in hex as dir's file name, durably.
func writeHexFile(dir, name string, v uint64) error {
	if err := writeFileDurably(dir, name, []byte(strconv.FormatUint(v, 16)+"\n")); err != nil {
		return fmt.Errorf("server: write %s: %w", name, err)
	}
	return nil
}

// randomNonZero returns a random, non-zero number from crypto/rand.
func randomNonZero() (uint64, error) {
	var b [8]byte
	for {
		if _, err := crand.Read(b[:]); err != nil {
			return 0, err
		}
		if n := binary.LittleEndian.Uint64(b[:]); n != 0 {
			return n, nil
		}
	}
}

// writeFileDurably writes b as dir's file name: temp file, fsync, rename,
// fsync of dir.
func writeFileDurably(dir, name string, b []byte) error {
	tmp, err := os.CreateTemp(dir, name+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, name)); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// encodeMeta returns the contents of a meta file holding m.
func encodeMeta(m meta) ([]byte, error) {
	b, err := json.MarshalIndent(m, "", "  ")
	return append(b, '\n'), err
}
