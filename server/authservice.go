package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/internal/auth"
	"github.com/flotilla/flotilla/internal/phase"
	"github.com/flotilla/flotilla/kv"
)

// The user and role tables live in the meta range (kv's auth records,
// keyed by auth.UserKey and auth.RoleKey). Every node keeps the tables it
// last read in s.authTab and rereads them every Config.AuthRefresh
// (authLoop), and at once after a change it made; so a change reaches
// every node within AuthRefresh. Changes are compare-and-set on the record
// as read, so two admins changing one user at once both take effect.

// emptyTables authorise nothing but root and nodes: what a node knows
// before it first reads the tables.
var emptyTables = auth.NewTables(nil, nil)

// authTables returns the tables this node last loaded.
func (s *Server) authTables() *auth.Tables {
	if t := s.authTab.Load(); t != nil {
		return t
	}
	return emptyTables
}

// authRecords reads the auth records of the meta range: from this node's
// replica if it has one (readLocal: a linearizable read waits for a usable
// leader and is tried again if the leader changed, so that an admin call
// made while the balancer moves the meta range's leader does not fail; CI
// of 7b1e984: UserAdd got "no leader" 1.17 s into a fresh cluster), else
// from a node that has.
func (s *Server) authRecords(ctx context.Context, linearizable bool) ([]kv.KeyValue, error) {
	q := kv.EncodeAuthQuery()
	if s.local(kv.MetaRangeID) {
		out, err := s.readLocal(ctx, kv.MetaRangeID, q, !linearizable)
		if err == nil {
			return kv.DecodeAuthRecords(out)
		}
		if !errors.Is(err, kv.ErrUninitialized) {
			return nil, s.readError(ctx, kv.MetaRangeID, err)
		}
	}
	var last error = fmt.Errorf("server: no replica of the meta range to read the auth tables from")
	for _, r := range s.replicasOf(kv.MetaRangeID) {
		conn := s.peerConn(r)
		if conn == nil || s.host.PeerDown(r) {
			continue
		}
		resp, err := api.NewPeerClient(conn).AuthRecords(ctx, &api.AuthRecordsRequest{ClusterId: s.clusterID, Linearizable: linearizable})
		if err != nil {
			last = err
			continue
		}
		return kv.DecodeAuthRecords(resp.Answer)
	}
	return nil, last
}

// AuthRecords serves Peer.AuthRecords.
func (p *peerService) AuthRecords(ctx context.Context, req *api.AuthRecordsRequest) (*api.AuthRecordsResponse, error) {
	s := p.s
	if req.ClusterId != s.clusterID {
		return nil, status.Errorf(codes.FailedPrecondition, "server: node %d belongs to cluster %x, not %x", s.cfg.NodeID, s.clusterID, req.ClusterId)
	}
	if !s.local(kv.MetaRangeID) {
		return nil, status.Errorf(codes.NotFound, "%v", errNotHosted(kv.MetaRangeID))
	}
	out, err := s.query(ctx, kv.MetaRangeID, kv.EncodeAuthQuery(), !req.Linearizable)
	if err != nil {
		return nil, err
	}
	return &api.AuthRecordsResponse{Answer: out}, nil
}

// loadAuth reads the tables and makes them this node's. A plain read
// (authLoop's) that a linearizable reread overtook is dropped: it may
// predate what the reread saw.
func (s *Server) loadAuth(ctx context.Context, linearizable bool) (*auth.Tables, error) {
	s.authLoad.Lock()
	before := s.authLoad.linGen
	s.authLoad.Unlock()
	recs, err := s.authRecords(ctx, linearizable)
	if err != nil {
		return nil, err
	}
	_, states, _ := s.membershipOf(recs)
	s.mergeMembership(states) // they only move forward: no older read undoes a newer
	_, incs, _ := s.incarnationsOf(recs)
	s.noteIncarnations(incs) // written once each: no older read undoes a newer
	_, joined, _ := s.joinedOf(recs)
	added, err := s.addNodes(joinedAddrs(joined)) // nodes only join: no older read undoes a newer
	for _, id := range added {
		s.log.Info("node joined the cluster", "member", id, "peer_addr", joined[id].addr)
	}
	if err != nil {
		s.log.Warn("a joined node could not be dialled", "err", err)
	}
	t, err := tablesOf(recs)
	if err != nil {
		return nil, err
	}
	s.authLoad.Lock()
	if linearizable {
		s.authLoad.linGen++
	}
	take := linearizable || s.authLoad.linGen == before
	if take {
		s.authTab.Store(t)
		s.authAt.Store(time.Now().UnixNano())
	}
	s.authLoad.Unlock()
	if take {
		// The drain marks come and go: taken, like the tables, only
		// from a read no linearizable one overtook.
		_, drained, _ := s.drainedOf(recs)
		s.setDrainedNodes(drained)
	}
	return t, nil
}

// authStale is how old the tables may grow (every reread failing: the meta
// range unreachable, this node cut off) before this node stops trusting
// them for anyone but root and the nodes: a revoked user must not keep
// its rights on a node that cannot learn of the revocation.
func (s *Server) authStale() time.Duration { return max(10*s.cfg.AuthRefresh, 10*time.Second) }

// authFresh refuses, as Unavailable (the client tries another node), a
// request while this node's tables are older than authStale and a reread
// fails.
func (s *Server) authFresh(ctx context.Context) error {
	age := func() time.Duration { return time.Duration(time.Now().UnixNano() - s.authAt.Load()) }
	if age() < s.authStale() {
		return nil
	}
	s.recheckAuth(ctx)
	if a := age(); a >= s.authStale() {
		return status.Errorf(codes.Unavailable, "server: node %d could not read the user tables for %v; ask another node", s.cfg.NodeID, a.Round(time.Second))
	}
	return nil
}

// authRecheckTimeout bounds one reread recheckAuth runs.
const authRecheckTimeout = 5 * time.Second

// recheckAuth rereads the tables, linearizably, before a request is
// refused for a user, token or permission this node does not know: a
// change made through another node is in force here as soon as it is
// committed, not only after the next AuthRefresh. The reread must start
// after the call (one already running may have read too early); callers
// share rereads, and one runs at a time, so a flood of refused requests
// costs one reread of the meta range per round trip, not one each. It
// returns the tables to decide with (the old ones if the reread fails).
func (s *Server) recheckAuth(ctx context.Context) *auth.Tables {
	s.authLoad.Lock()
	target := s.authLoad.started + 1
	for s.authLoad.finished < target {
		if ch := s.authLoad.running; ch != nil {
			s.authLoad.Unlock()
			select {
			case <-ch:
			case <-ctx.Done():
				return s.authTables()
			}
			s.authLoad.Lock()
			continue
		}
		ch := make(chan struct{})
		s.authLoad.running = ch
		s.authLoad.started++
		seq := s.authLoad.started
		s.authLoad.Unlock()
		// The node's context, not the caller's: the waiters share this
		// reread, and one caller giving up must not cut it short.
		lctx, cancel := context.WithTimeout(s.ctx, authRecheckTimeout)
		_, _ = s.loadAuth(lctx, true)
		cancel()
		s.authLoad.Lock()
		s.authLoad.running = nil
		s.authLoad.finished = seq
		close(ch)
	}
	s.authLoad.Unlock()
	return s.authTables()
}

// authLoop rereads the user and role tables, and the nodes' membership
// records (decommission.go), every AuthRefresh, and records this node's
// incarnation once (incarnation.go); with --insecure only the
// membership records matter. A failed read keeps what the node has
// (logged once per failure streak).
func (s *Server) authLoop() {
	t := phase.NewTicker(s.cfg.AuthRefresh)
	defer t.Stop()
	failing := false
	for {
		ctx, cancel := context.WithTimeout(s.ctx, max(s.cfg.AuthRefresh, time.Second))
		_, err := s.loadAuth(ctx, false)
		cancel()
		if err == nil {
			ctx, cancel := context.WithTimeout(s.ctx, max(s.cfg.AuthRefresh, time.Second))
			if err := s.recordIncarnation(ctx); err != nil && !s.isStopping() {
				s.log.Warn("recording this node's incarnation failed; will retry", "err", err)
			}
			cancel()
		}
		// Nodes learned from discovery answers too, read or not.
		s.persistNodes()
		if err != nil && !failing && !s.isStopping() {
			s.log.Warn("reading the user and role tables and the membership records failed; keeping the last ones", "err", err)
		}
		failing = err != nil
		select {
		case <-s.stopc:
			return
		case <-t.C:
			t.Next()
		}
	}
}

// authService serves the Auth API.
type authService struct {
	api.UnimplementedAuthServer
	s *Server
}

// errAuthConflict: a record changed between its read and its write.
var errAuthConflict = errors.New("server: auth record changed concurrently")

// authWriteAttempts bounds the read-modify-write rounds of one change.
const authWriteAttempts = 20

// admin checks the caller of an Auth call.
func (a *authService) admin(ctx context.Context, what string) error {
	if a.s.sec.insecure {
		return status.Error(codes.FailedPrecondition, "server: this node runs with --insecure: it has no users or roles (start it with --certs-dir)")
	}
	return a.s.requireAdmin(ctx, what)
}

// change applies fn to the current tables and writes the one record it
// returns (nil value: delete), compare-and-set on what was read; it
// retries when another change came first. The tables are reloaded after.
func (a *authService) change(ctx context.Context, fn func(t *auth.Tables) (key, value []byte, err error)) (*auth.Tables, error) {
	s := a.s
	for attempt := 0; attempt < authWriteAttempts; attempt++ {
		recs, err := s.authRecords(ctx, true)
		if err != nil {
			return nil, err
		}
		t, err := tablesOf(recs)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "server: auth tables: %v", err)
		}
		key, value, err := fn(t)
		if err != nil {
			return nil, err
		}
		var old []byte
		for _, r := range recs {
			if bytes.Equal(r.Key, key) {
				old = r.Value
			}
		}
		cmd := kv.AuthPut(key, value, old, old == nil)
		if value == nil {
			cmd = kv.AuthDelete(key, old)
		}
		enc, err := cmd.Encode()
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "%v", err)
		}
		out, err := s.proposeRemote(ctx, kv.MetaRangeID, enc)
		if err != nil {
			return nil, err
		}
		res, err := kv.DecodeResult(out)
		if errors.Is(err, kv.ErrAuthFull) {
			return nil, status.Errorf(codes.ResourceExhausted, "server: %v", err)
		}
		if err != nil {
			return nil, status.Errorf(codes.Internal, "server: auth change: %v", err)
		}
		if res.Err != "" {
			return nil, status.Errorf(codes.FailedPrecondition, "server: %s", res.Err)
		}
		if res.OK {
			t, err := s.loadAuth(ctx, true)
			if err != nil {
				return nil, err
			}
			return t, nil
		}
		if err := wait(ctx, s.cfg.TickInterval); err != nil {
			return nil, err
		}
	}
	return nil, status.Errorf(codes.Aborted, "%v; gave up after %d attempts", errAuthConflict, authWriteAttempts)
}

// tablesOf builds tables from records (the user and role records: the
// nodes' membership records share the table).
func tablesOf(recs []kv.KeyValue) (*auth.Tables, error) {
	return auth.Load(func(yield func(key, value []byte) bool) {
		for _, r := range recs {
			if isNodeRecord(r.Key) {
				continue
			}
			if !yield(r.Key, r.Value) {
				return
			}
		}
	})
}

func badName(what, name string) error {
	if err := auth.ValidName(name); err != nil {
		return status.Errorf(codes.InvalidArgument, "server: %s name %q: %v", what, name, err)
	}
	return nil
}

func userOut(u auth.User) *api.User {
	return &api.User{Name: u.Name, Roles: slices.Clone(u.Roles), HasToken: u.TokenHash != [32]byte{}}
}

func roleOut(r auth.Role) *api.Role {
	out := &api.Role{Name: r.Name}
	for _, p := range r.Perms {
		kind := api.Permission_KEY
		if p.Kind == auth.KindElection {
			kind = api.Permission_ELECTION
		}
		out.Permissions = append(out.Permissions, &api.Permission{Kind: kind, Prefix: slices.Clone(p.Prefix),
			Read: p.Access&auth.Read != 0, Write: p.Access&auth.Write != 0})
	}
	return out
}

func (a *authService) UserAdd(ctx context.Context, req *api.UserAddRequest) (*api.UserAddResponse, error) {
	if err := a.admin(ctx, "user add"); err != nil {
		return nil, err
	}
	if err := badName("user", req.Name); err != nil {
		return nil, err
	}
	u := auth.User{Name: req.Name}
	var token string
	if !req.NoToken {
		var err error
		if token, err = auth.NewToken(); err != nil {
			return nil, status.Errorf(codes.Internal, "server: token: %v", err)
		}
		u.TokenHash = auth.HashToken(token)
	}
	_, err := a.change(ctx, func(t *auth.Tables) ([]byte, []byte, error) {
		if _, ok := t.User(req.Name); ok {
			return nil, nil, status.Errorf(codes.AlreadyExists, "server: user %q exists", req.Name)
		}
		rec, err := auth.EncodeUser(u)
		return auth.UserKey(u.Name), rec, err
	})
	if err != nil {
		return nil, err
	}
	return &api.UserAddResponse{User: userOut(u), Token: token}, nil
}

func (a *authService) UserDelete(ctx context.Context, req *api.UserDeleteRequest) (*api.UserDeleteResponse, error) {
	if err := a.admin(ctx, "user delete"); err != nil {
		return nil, err
	}
	_, err := a.change(ctx, func(t *auth.Tables) ([]byte, []byte, error) {
		if _, ok := t.User(req.Name); !ok {
			return nil, nil, status.Errorf(codes.NotFound, "server: no user %q", req.Name)
		}
		return auth.UserKey(req.Name), nil, nil
	})
	if err != nil {
		return nil, err
	}
	return &api.UserDeleteResponse{}, nil
}

// userRoles changes the roles of a user.
func (a *authService) userRoles(ctx context.Context, what string, req *api.UserRoleRequest, grant bool) (*api.UserResponse, error) {
	if err := a.admin(ctx, what); err != nil {
		return nil, err
	}
	var out auth.User
	_, err := a.change(ctx, func(t *auth.Tables) ([]byte, []byte, error) {
		u, ok := t.User(req.User)
		if !ok {
			return nil, nil, status.Errorf(codes.NotFound, "server: no user %q", req.User)
		}
		if _, ok := t.Role(req.Role); grant && !ok && req.Role != auth.RootRole {
			return nil, nil, status.Errorf(codes.NotFound, "server: no role %q", req.Role)
		}
		roles := slices.DeleteFunc(slices.Clone(u.Roles), func(r string) bool { return r == req.Role })
		if grant {
			roles = append(roles, req.Role)
			slices.Sort(roles)
		}
		u.Roles = roles
		out = u
		rec, err := auth.EncodeUser(u)
		return auth.UserKey(u.Name), rec, err
	})
	if err != nil {
		return nil, err
	}
	return &api.UserResponse{User: userOut(out)}, nil
}

func (a *authService) UserGrant(ctx context.Context, req *api.UserRoleRequest) (*api.UserResponse, error) {
	return a.userRoles(ctx, "user grant", req, true)
}

func (a *authService) UserRevoke(ctx context.Context, req *api.UserRoleRequest) (*api.UserResponse, error) {
	return a.userRoles(ctx, "user revoke", req, false)
}

func (a *authService) UserList(ctx context.Context, _ *api.UserListRequest) (*api.UserListResponse, error) {
	if err := a.admin(ctx, "user list"); err != nil {
		return nil, err
	}
	t, err := a.s.loadAuth(ctx, true)
	if err != nil {
		return nil, err
	}
	resp := &api.UserListResponse{}
	for _, u := range t.Users() {
		resp.Users = append(resp.Users, userOut(u))
	}
	return resp, nil
}

func (a *authService) RoleAdd(ctx context.Context, req *api.RoleAddRequest) (*api.RoleResponse, error) {
	if err := a.admin(ctx, "role add"); err != nil {
		return nil, err
	}
	if err := badName("role", req.Name); err != nil {
		return nil, err
	}
	r := auth.Role{Name: req.Name}
	_, err := a.change(ctx, func(t *auth.Tables) ([]byte, []byte, error) {
		if _, ok := t.Role(req.Name); ok || req.Name == auth.RootRole {
			return nil, nil, status.Errorf(codes.AlreadyExists, "server: role %q exists", req.Name)
		}
		rec, err := auth.EncodeRole(r)
		return auth.RoleKey(r.Name), rec, err
	})
	if err != nil {
		return nil, err
	}
	return &api.RoleResponse{Role: roleOut(r)}, nil
}

func (a *authService) RoleDelete(ctx context.Context, req *api.RoleDeleteRequest) (*api.RoleDeleteResponse, error) {
	if err := a.admin(ctx, "role delete"); err != nil {
		return nil, err
	}
	_, err := a.change(ctx, func(t *auth.Tables) ([]byte, []byte, error) {
		if _, ok := t.Role(req.Name); !ok {
			return nil, nil, status.Errorf(codes.NotFound, "server: no role %q", req.Name)
		}
		return auth.RoleKey(req.Name), nil, nil
	})
	if err != nil {
		return nil, err
	}
	return &api.RoleDeleteResponse{}, nil
}

// permissionOf converts an API permission; InvalidArgument if it grants
// nothing or is malformed.
func permissionOf(p *api.Permission) (auth.Permission, error) {
	if p == nil {
		return auth.Permission{}, status.Error(codes.InvalidArgument, "server: no permission given")
	}
	out := auth.Permission{Kind: auth.KindKey, Prefix: slices.Clone(p.Prefix)}
	switch p.Kind {
	case api.Permission_KEY:
	case api.Permission_ELECTION:
		out.Kind = auth.KindElection
	default:
		return out, status.Errorf(codes.InvalidArgument, "server: unknown permission kind %v", p.Kind)
	}
	if p.Read {
		out.Access |= auth.Read
	}
	if p.Write {
		out.Access |= auth.Write
	}
	if err := out.Validate(); err != nil {
		return out, status.Errorf(codes.InvalidArgument, "server: permission: %v", err)
	}
	return out, nil
}

// rolePerms changes the permissions of a role: a grant adds p (replacing
// the role's permission of the same kind and prefix), a revoke removes it.
func (a *authService) rolePerms(ctx context.Context, what string, req *api.RolePermissionRequest, grant bool) (*api.RoleResponse, error) {
	if err := a.admin(ctx, what); err != nil {
		return nil, err
	}
	if !grant && req.Permission != nil && !req.Permission.Read && !req.Permission.Write {
		// A revoke names the permission by kind and prefix only.
		req.Permission.Read = true
	}
	p, err := permissionOf(req.Permission)
	if err != nil {
		return nil, err
	}
	var out auth.Role
	_, err = a.change(ctx, func(t *auth.Tables) ([]byte, []byte, error) {
		r, ok := t.Role(req.Role)
		if !ok {
			return nil, nil, status.Errorf(codes.NotFound, "server: no role %q", req.Role)
		}
		perms := slices.DeleteFunc(slices.Clone(r.Perms), func(q auth.Permission) bool {
			return q.Kind == p.Kind && bytes.Equal(q.Prefix, p.Prefix)
		})
		if grant {
			perms = append(perms, p)
		} else if len(perms) == len(r.Perms) {
			return nil, nil, status.Errorf(codes.NotFound, "server: role %q has no %v permission on prefix %q", req.Role, p.Kind, p.Prefix)
		}
		r.Perms = perms
		out = r
		rec, err := auth.EncodeRole(r)
		return auth.RoleKey(r.Name), rec, err
	})
	if err != nil {
		return nil, err
	}
	return &api.RoleResponse{Role: roleOut(out)}, nil
}

func (a *authService) RoleGrant(ctx context.Context, req *api.RolePermissionRequest) (*api.RoleResponse, error) {
	return a.rolePerms(ctx, "role grant", req, true)
}

func (a *authService) RoleRevoke(ctx context.Context, req *api.RolePermissionRequest) (*api.RoleResponse, error) {
	return a.rolePerms(ctx, "role revoke", req, false)
}

func (a *authService) RoleList(ctx context.Context, _ *api.RoleListRequest) (*api.RoleListResponse, error) {
	if err := a.admin(ctx, "role list"); err != nil {
		return nil, err
	}
	t, err := a.s.loadAuth(ctx, true)
	if err != nil {
		return nil, err
	}
	resp := &api.RoleListResponse{}
	for _, r := range t.Roles() {
		resp.Roles = append(resp.Roles, roleOut(r))
	}
	return resp, nil
}

func (a *authService) WhoAmI(ctx context.Context, _ *api.WhoAmIRequest) (*api.WhoAmIResponse, error) {
	id, ok := identityOf(ctx)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "server: request not authenticated")
	}
	resp := &api.WhoAmIResponse{User: id.user, How: id.how}
	if u, ok := a.s.authTables().User(id.user); ok {
		resp.Roles = slices.Clone(u.Roles)
	}
	return resp, nil
}
