package server

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"io/fs"
	"os"
	"path/filepath"

	"google.golang.org/grpc"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/kv"
)

// Incarnations: a node whose data directory was lost does not come back
// under its old ID.
//
// A node's raft state (its votes, its log) is what its peers count on: an
// entry it acknowledged counts toward a commit. Started again on an empty
// data directory with its old flags, a node of --initial-cluster would
// bootstrap again: a voter of every range it held with an empty log, which
// votes for any candidate, one that lacks committed entries too, and so
// can elect a leader that loses them. (A joined node cannot: an empty data
// directory with --join joins under a new ID, join.go.)
//
// So each data directory is an incarnation of its node: a random number in
// its own file (incarnationFile, written once, with the bootstrap's meta
// file, or at the first start of a directory from before; a file of its
// own, so that an older binary, which rewrites the meta file, keeps it).
// Each node records its incarnation in the meta range, in the server
// record incarnationsKey (a line "ID INCARNATION" per node, INCARNATION in
// hex, written compare-and-set by the node itself, once, from authLoop),
// and every node rereads the record with the membership (loadAuth). Then:
//   - a node that bootstraps (an empty data directory and --initial-cluster)
//     first asks the other nodes of --initial-cluster (Peer.Info, with its
//     new incarnation), before it opens its storage or listens, whether
//     they know it under another incarnation, or as removed; if one does,
//     it does not start: ErrSuperseded (or ErrRemoved; `flotilla start`
//     exits 1). The operator decommissions the old node and starts the
//     machine with --join (a new ID);
//   - a node whose asked peers do not know it (down, an older version, or
//     restarted and not yet rereading the record) starts; once a peer
//     answers that it knows another incarnation of it (every discovery
//     answer says so, Peer.Info), or once it reads the record and finds
//     another incarnation there, it stops with ErrSuperseded, and leaves a
//     mark in its data directory (supersededFile) that refuses every later
//     start: a supervisor restarting it must not let its raft run again;
//   - a node that restarts on its own data directory has its own
//     incarnation: nothing changes.
//
// What is not caught: a node whose directory was lost before it recorded
// its incarnation (that takes a read and a write of the meta range, after
// its first start), one whose --initial-cluster peers are all gone (only
// they are asked; the others hear of it through discovery), and a data
// directory restored from a copy (the same incarnation, an older raft
// state).

// incarnationFile holds the data directory's incarnation, in hex;
// supersededFile, once the node learned it was superseded, why.
const (
	incarnationFile = "flotilla.incarnation"
	supersededFile  = "flotilla.superseded"
)

// incarnationsKey is the key of the incarnations record, among the nodes'
// records (isNodeRecord).
const incarnationsKey = "n/incarnations"

// ErrSuperseded: this node's data directory is not the one the cluster
// knows for its ID (it was lost or replaced), so the node may not take part
// under that ID.
var ErrSuperseded = errors.New("server: this node's data directory is not the one the cluster knows")

// loadIncarnation reads the data directory's incarnation (identify), or
// makes one: for a fresh directory, kept in memory until the bootstrap
// writes it (New: a bootstrap cut short, or refused, leaves none); for a
// directory from before incarnations, written now. A directory marked
// superseded is refused.
func (s *Server) loadIncarnation(fresh bool) error {
	dir := s.cfg.DataDir
	if b, err := os.ReadFile(filepath.Join(dir, supersededFile)); err == nil {
		return fmt.Errorf("%w: %s: %s", ErrSuperseded, filepath.Join(dir, supersededFile), strings.TrimSpace(string(b)))
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("server: %w", err)
	}
	v, ok, err := readHexFile(dir, incarnationFile, "an incarnation")
	if err != nil || ok {
		s.incarnation = v
		return err
	}
	if s.incarnation, err = randomNonZero(); err != nil {
		return fmt.Errorf("server: incarnation: %w", err)
	}
	if fresh {
		return nil
	}
	return writeHexFile(dir, incarnationFile, s.incarnation)
}

// incarnationsOf returns the incarnations record among recs (nil if none),
// the incarnations it lists, and the lines it cannot read (from a newer
// version; logged), which a rewrite keeps.
func (s *Server) incarnationsOf(recs []kv.KeyValue) (raw []byte, incs map[uint64]uint64, unread []string) {
	return nodeLinesOf(s, recs, incarnationsKey, func(inc string) (uint64, bool) {
		v, err := strconv.ParseUint(inc, 16, 64)
		return v, err == nil && v != 0
	})
}

// encodeIncarnations returns the incarnations record listing incs, and then
// the lines unread as they were.
func encodeIncarnations(incs map[uint64]uint64, unread []string) []byte {
	return encodeNodeLines(incs, "%d %x\n", unread)
}

// incarnations is what this node last read of the incarnations record.
// A node's incarnation is written once and never changes, so a read
// merges into what is known (noteIncarnations).
type incarnations struct {
	mu sync.Mutex
	m  map[uint64]uint64 // guarded by mu
}

// noteIncarnations merges incs, read from the record, into what this node
// knows, and stops the node if the record knows it under another
// incarnation.
func (s *Server) noteIncarnations(incs map[uint64]uint64) {
	s.incs.mu.Lock()
	if s.incs.m == nil {
		s.incs.m = map[uint64]uint64{}
	}
	for id, v := range incs {
		if _, ok := s.incs.m[id]; !ok {
			s.incs.m[id] = v
		}
	}
	s.incs.mu.Unlock()
	if v, ok := incs[s.cfg.NodeID]; ok && v != s.incarnation {
		s.superseded(fmt.Sprintf("the meta range records incarnation %x", v))
	}
}

// knownIncarnation returns the incarnation the record gives node id; 0 if
// this node has not read one.
func (s *Server) knownIncarnation(id uint64) uint64 {
	s.incs.mu.Lock()
	defer s.incs.mu.Unlock()
	return s.incs.m[id]
}

// supersededErr is the error of a node whose incarnation the cluster
// knows as another (how: who told it).
func (s *Server) supersededErr(how string) error {
	id := s.cfg.NodeID
	return fmt.Errorf("%w (%s; this data directory is incarnation %x): node %d ran before on a data directory that is lost. "+
		"Its raft votes and log are gone while its peers count on them, so it may not come back under ID %d: "+
		"decommission it (flotilla node decommission %d), empty --data-dir, and start this machine with --join "+
		"(with TLS, under a new --id and its certificate: ID %d is not given out again)",
		ErrSuperseded, how, s.incarnation, id, id, id, id)
}

// superseded stops the node: its incarnation is not the cluster's. It
// marks its data directory so (supersededFile), so that no later start
// runs its raft again.
func (s *Server) superseded(how string) {
	err := s.supersededErr(how)
	if s.serveErr.CompareAndSwap(nil, &err) {
		s.log.Error("this node's data directory is not the one the cluster knows, stopping", "err", err)
		if werr := writeFileDurably(s.cfg.DataDir, supersededFile, []byte(err.Error()+"\n")); werr != nil {
			s.log.Error("could not mark the data directory superseded", "err", werr)
		}
	}
	s.halt()
}

// recordIncarnation writes this node's incarnation into the record if it
// is not there (authLoop, after each reread), compare-and-set; a node
// already recorded under another stops (noteIncarnations).
func (s *Server) recordIncarnation(ctx context.Context) error {
	if s.knownIncarnation(s.cfg.NodeID) != 0 {
		return nil
	}
	for attempt := 0; attempt < authWriteAttempts; attempt++ {
		recs, err := s.authRecords(ctx, true)
		if err != nil {
			return err
		}
		raw, incs, unread := s.incarnationsOf(recs)
		if _, ok := incs[s.cfg.NodeID]; ok {
			s.noteIncarnations(incs)
			return nil
		}
		incs[s.cfg.NodeID] = s.incarnation
		ok, err := s.writeServerRecord(ctx, incarnationsKey, encodeIncarnations(incs, unread), raw)
		if err != nil {
			return err
		}
		if ok {
			s.noteIncarnations(incs)
			s.log.Info("recorded this node's incarnation", "incarnation", fmt.Sprintf("%x", s.incarnation))
			return nil
		}
	}
	return errAuthConflict
}

// checkIncarnation asks the other nodes of --initial-cluster, at once,
// whether they know this node under another incarnation, or as removed (a
// bootstrap's check, before it opens its storage or listens, on
// connections of its own): ErrSuperseded or ErrRemoved if one does. A node
// that does not answer within Config.BootstrapCheckWait counts as knowing
// nothing.
func (s *Server) checkIncarnation() error {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.BootstrapCheckWait)
	defer cancel()
	type answer struct {
		from uint64
		resp *api.InfoResponse
	}
	answers := make(chan answer)
	asked := 0
	for id, addr := range s.cfg.InitialCluster {
		if id == s.cfg.NodeID {
			continue
		}
		conn, err := grpc.NewClient(addr, append(peerDialOptions(s.cfg.PeerAddr), s.sec.peerDial(id))...)
		if err != nil {
			continue // a bad address: it knows nothing
		}
		asked++
		go func() {
			defer conn.Close()
			req := &api.InfoRequest{ClusterId: s.clusterID, From: s.cfg.NodeID, Incarnation: s.incarnation}
			resp, err := api.NewPeerClient(conn).Info(ctx, req, grpc.MaxCallRecvMsgSize(maxInfoBytes))
			if err != nil {
				resp = nil
			}
			answers <- answer{from: id, resp: resp}
		}()
	}
	var err error
	for range asked {
		a := <-answers
		switch {
		case err != nil || a.resp == nil:
		case a.resp.Superseded:
			err = s.supersededErr(fmt.Sprintf("node %d knows it under another incarnation", a.from))
		case a.resp.Removed:
			err = fmt.Errorf("%w (decommissioned; told by node %d): node %d may not come back, even on an empty data directory: "+
				"start this machine with --join", ErrRemoved, a.from, s.cfg.NodeID)
		}
	}
	return err
}
