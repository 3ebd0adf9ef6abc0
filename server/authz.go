package server

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/internal/auth"
	"github.com/flotilla/flotilla/internal/certs"
	"github.com/flotilla/flotilla/kv"
)

// Authentication and authorisation of client requests (docs/security.md).
//
// Every request on the client listener passes authUnary or authStream,
// which name the caller (authenticate) and check the permission the
// request needs (needOf) against the user and role tables the node last
// loaded (authCache). A node's own requests (forwarded from another node,
// which checked them) carry a node certificate and are allowed everything.

// MDAuthorization is the gRPC metadata key of a client's token:
// "authorization: Bearer TOKEN".
const MDAuthorization = "authorization"

// Ways a caller was authenticated (WhoAmI's how).
const (
	howCertificate = "certificate"
	howToken       = "token"
	howNode        = "node"
	howInsecure    = "insecure"
)

// identity is an authenticated caller.
type identity struct {
	user string // the user name; for a node, "node.<ID>"
	how  string // how* above
	node uint64 // the node, for howNode
}

// all reports whether the caller may do anything without a check: a node,
// or anyone on an insecure node.
func (id identity) all() bool { return id.how == howNode || id.how == howInsecure }

type identityKey struct{}

// identityOf returns the identity authUnary or authStream put in ctx.
func identityOf(ctx context.Context) (identity, bool) {
	id, ok := ctx.Value(identityKey{}).(identity)
	return id, ok
}

// authenticate names the caller of a request on the client listener: a
// verified certificate (a node's or a client user's), else a token in the
// request's metadata. Unauthenticated if neither.
func (s *Server) authenticate(ctx context.Context) (identity, error) {
	if s.sec.insecure {
		return identity{user: auth.RootUser, how: howInsecure}, nil
	}
	if p, ok := peer.FromContext(ctx); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok {
			if leaf := verifiedLeaf(&ti.State); leaf != nil {
				if id, ok := certs.NodeID(leaf); ok {
					// Only a member: a node certificate of the same CA for
					// another cluster's or a retired node names no one here.
					if !s.isNode(id) {
						return identity{}, status.Errorf(codes.Unauthenticated, "server: node %d is not a member of this cluster", id)
					}
					return identity{user: leaf.Subject.CommonName, how: howNode, node: id}, nil
				}
				if name, ok := certs.ClientName(leaf); ok {
					return s.knownUser(ctx, identity{user: name, how: howCertificate})
				}
				return identity{}, status.Error(codes.Unauthenticated, "server: the client certificate is neither a node's nor a client user's")
			}
		}
	}
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		for _, v := range md.Get(MDAuthorization) {
			tok, ok := strings.CutPrefix(v, "Bearer ")
			if !ok {
				continue
			}
			if s.authTab.Load() == nil {
				return identity{}, errAuthNotLoaded
			}
			tok = strings.TrimSpace(tok)
			t := s.authTables()
			if user, ok := t.UserByToken(tok); ok {
				return s.fresh(ctx, identity{user: user, how: howToken})
			}
			if !s.knownBadToken(tok, t) {
				t = s.recheckAuth(ctx)
				if user, ok := t.UserByToken(tok); ok {
					return s.fresh(ctx, identity{user: user, how: howToken})
				}
				s.noteBadToken(tok, t)
			}
			return identity{}, status.Error(codes.Unauthenticated, "server: unknown or revoked token")
		}
	}
	return identity{}, status.Error(codes.Unauthenticated, "server: no client certificate and no token: present a certificate of the cluster's CA (flotilla cert create-client) or a user's token")
}

// errAuthNotLoaded: the node has not read the user tables since it
// started; the client retries (elsewhere, or here a moment later).
var errAuthNotLoaded = status.Error(codes.Unavailable, "server: this node has not loaded the user tables yet; retry")

// knownUser returns id if its user exists (root always does): a
// certificate of a deleted user still verifies, but names nobody.
func (s *Server) knownUser(ctx context.Context, id identity) (identity, error) {
	if id.user == auth.RootUser {
		return id, nil
	}
	t := s.authTab.Load()
	if t == nil {
		return identity{}, errAuthNotLoaded
	}
	if t.HasUser(id.user) {
		return s.fresh(ctx, id)
	}
	if !s.recheckAuth(ctx).HasUser(id.user) {
		return identity{}, status.Errorf(codes.Unauthenticated, "server: user %q of the client certificate does not exist", id.user)
	}
	return id, nil
}

// fresh returns id unless this node's tables are too old to trust
// (authFresh).
func (s *Server) fresh(ctx context.Context, id identity) (identity, error) {
	if err := s.authFresh(ctx); err != nil {
		return identity{}, err
	}
	return id, nil
}

// maxBadTokens bounds the unknown tokens remembered; past it the memory
// starts over.
const maxBadTokens = 4096

// knownBadToken reports whether tok was already found unknown in tables
// t: a client that repeats a bad token (or a stranger who sends random
// ones) then costs no reread of the meta range.
func (s *Server) knownBadToken(tok string, t *auth.Tables) bool {
	h := auth.HashToken(tok)
	s.badTokens.Lock()
	defer s.badTokens.Unlock()
	return s.badTokens.m[h] == t
}

func (s *Server) noteBadToken(tok string, t *auth.Tables) {
	h := auth.HashToken(tok)
	s.badTokens.Lock()
	defer s.badTokens.Unlock()
	if s.badTokens.m == nil || len(s.badTokens.m) >= maxBadTokens {
		s.badTokens.m = make(map[[32]byte]*auth.Tables)
	}
	s.badTokens.m[h] = t
}

// authorize checks that the caller in ctx may do what need describes; a
// denial is PermissionDenied naming the missing permission.
func (s *Server) authorize(ctx context.Context, need auth.Need) error {
	id, ok := identityOf(ctx)
	if !ok {
		return status.Error(codes.Unauthenticated, "server: request not authenticated")
	}
	if id.all() {
		return nil
	}
	if s.authTables().Check(id.user, need) == nil {
		return nil
	}
	if err := s.recheckAuth(ctx).Check(id.user, need); err != nil {
		return status.Error(codes.PermissionDenied, err.Error())
	}
	return nil
}

// requireAdmin checks that the caller is an admin: root, or a user with
// the root role.
func (s *Server) requireAdmin(ctx context.Context, what string) error {
	id, ok := identityOf(ctx)
	if !ok {
		return status.Error(codes.Unauthenticated, "server: request not authenticated")
	}
	if id.all() || s.authTables().IsAdmin(id.user) || s.recheckAuth(ctx).IsAdmin(id.user) {
		return nil
	}
	return status.Errorf(codes.PermissionDenied, "server: %s needs an admin (user root, or a user with role root); %q is not one", what, id.user)
}

// boundsVisible reports whether the caller in ctx may learn a range's
// bounds: they are keys of the data (a split picks one), so a user sees
// only those it may read (an empty bound, an end of the keyspace, is no
// key). Nodes and admins see all.
func (s *Server) boundsVisible(ctx context.Context, start, end []byte) bool {
	id, ok := identityOf(ctx)
	if !ok {
		return false
	}
	if id.all() {
		return true
	}
	t := s.authTables()
	if t.IsAdmin(id.user) {
		return true
	}
	for _, k := range [][]byte{start, end} {
		if len(k) > 0 && t.Check(id.user, auth.Need{Kind: auth.KindKey, Access: auth.Read, Key: k}) != nil {
			return false
		}
	}
	return true
}

// need is what a request needs: a permission, admin rights, or only an
// authenticated caller (open).
type need struct {
	perms []auth.Need // every one is needed
	admin string      // non-empty: admin rights, for this operation
	open  bool        // an authenticated caller is enough
	deny  string      // non-empty: a request type nothing here knows
}

func keyNeed(a auth.Access, key []byte) need {
	return need{perms: []auth.Need{keyPerm(a, key)}}
}

func keyPerm(a auth.Access, key []byte) auth.Need {
	return auth.Need{Kind: auth.KindKey, Access: a, Key: key}
}

func spanNeed(a auth.Access, start, end []byte) need {
	return need{perms: []auth.Need{spanPerm(a, start, end)}}
}

func spanPerm(a auth.Access, start, end []byte) auth.Need {
	return auth.Need{Kind: auth.KindKey, Access: a, Key: start, End: end, Span: true}
}

// txnNeed is what a transaction needs: to read the keys it compares and
// reads, to write those it writes.
func txnNeed(r *api.TxnRequest) need {
	var n need
	for _, c := range r.GetCompares() {
		n.perms = append(n.perms, keyPerm(auth.Read, c.GetKey()))
	}
	for _, op := range append(slices.Clip(r.GetSuccess()), r.GetFailure()...) {
		switch op.GetKind() {
		case api.TxnOp_PUT, api.TxnOp_DELETE:
			n.perms = append(n.perms, keyPerm(auth.Write, op.GetKey()))
		case api.TxnOp_DELETE_RANGE:
			n.perms = append(n.perms, spanPerm(auth.Write, op.GetKey(), op.GetEnd()))
		case api.TxnOp_SCAN:
			n.perms = append(n.perms, spanPerm(auth.Read, op.GetKey(), op.GetEnd()))
		default:
			n.perms = append(n.perms, keyPerm(auth.Read, op.GetKey()))
		}
	}
	if len(n.perms) == 0 {
		n.open = true // names no key: nothing to check
	}
	return n
}

func electionNeed(a auth.Access, name []byte) need {
	return need{perms: []auth.Need{{Kind: auth.KindElection, Access: a, Key: name}}}
}

// needOf returns what a request message needs. The cluster map, the range
// list (filtered: boundsVisible), leases and WhoAmI need only an
// authenticated caller; the Auth service checks admin rights itself, and
// Batch checks each of its ops (batch.go). A request type it does not list
// is refused: a new RPC is closed until it is given its permission here.
func needOf(req any) need {
	switch r := req.(type) {
	case *api.ClusterMapRequest, *api.RangesRequest, *api.WhoAmIRequest, *api.BatchRequest,
		*api.LeaseGrantRequest, *api.LeaseRevokeRequest, *api.LeaseKeepAliveRequest, *api.LeaseTimeToLiveRequest,
		*api.UserAddRequest, *api.UserDeleteRequest, *api.UserRoleRequest, *api.UserListRequest,
		*api.RoleAddRequest, *api.RoleDeleteRequest, *api.RolePermissionRequest, *api.RoleListRequest:
		return need{open: true}
	case *api.NodeStatusRequest:
		return need{admin: "node status"}
	case *api.PutRequest:
		return keyNeed(auth.Write, r.GetKey())
	case *api.DeleteRequest:
		return keyNeed(auth.Write, r.GetKey())
	case *api.CompareAndSwapRequest:
		return keyNeed(auth.ReadWrite, r.GetKey())
	case *api.GetRequest:
		return keyNeed(auth.Read, r.GetKey())
	case *api.ScanRequest:
		if len(r.GetPrefix()) > 0 {
			return spanNeed(auth.Read, r.GetPrefix(), kv.PrefixEnd(r.GetPrefix()))
		}
		return spanNeed(auth.Read, r.GetStart(), r.GetEnd())
	case *api.DeleteRangeRequest:
		return spanNeed(auth.Write, r.GetStart(), r.GetEnd())
	case *api.WatchRequest:
		start, end, err := watchSpan(r)
		if err != nil {
			return need{} // refused by the handler, which says why
		}
		return spanNeed(auth.Read, start, end)
	case *api.TxnRequest:
		return txnNeed(r)
	case *api.CampaignRequest:
		return electionNeed(auth.Write, r.GetName())
	case *api.ResignRequest:
		return electionNeed(auth.Write, r.GetName())
	case *api.LeaderRequest:
		return electionNeed(auth.Read, r.GetName())
	case *api.ObserveRequest:
		return electionNeed(auth.Read, r.GetName())
	case *api.SplitRequest:
		return need{admin: "split"}
	case *api.MergeRequest:
		return need{admin: "merge"}
	case *api.DecommissionRequest:
		return need{admin: "decommission"}
	case *api.SetDrainedRequest:
		return need{admin: "drain"}
	}
	return need{deny: fmt.Sprintf("%T", req)}
}

// check checks what req needs against the caller in ctx.
func (s *Server) check(ctx context.Context, req any) error {
	n := needOf(req)
	switch {
	case n.deny != "":
		if id, ok := identityOf(ctx); ok && id.all() {
			return nil
		}
		return status.Errorf(codes.PermissionDenied, "server: %s is not open to clients", n.deny)
	case n.admin != "":
		return s.requireAdmin(ctx, n.admin)
	case len(n.perms) > 0:
		for _, p := range n.perms {
			if err := s.authorize(ctx, p); err != nil {
				return err
			}
		}
	}
	return nil
}

// authUnary authenticates and authorises a unary request of the client
// listener.
func (s *Server) authUnary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	id, err := s.authenticate(ctx)
	if err != nil {
		return nil, err
	}
	ctx = context.WithValue(ctx, identityKey{}, id)
	if err := s.check(ctx, req); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

// authStream authenticates a stream of the client listener and checks
// every message it receives (Batch checks each of its ops instead).
func (s *Server) authStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	id, err := s.authenticate(ss.Context())
	if err != nil {
		return err
	}
	return handler(srv, &authedStream{ServerStream: ss, s: s, ctx: context.WithValue(ss.Context(), identityKey{}, id)})
}

// authedStream carries the caller's identity in its context, checks each
// received message, and checks the caller again before each message it
// sends: a stream that outlives its user's permission (an Observe, a
// lease's keep-alives) ends when the permission or the user goes.
type authedStream struct {
	grpc.ServerStream
	s   *Server
	ctx context.Context
	// last is the last request received whose permission each send needs
	// (nil while none does). RecvMsg and SendMsg may run on two goroutines
	// (a Batch stream's receive and send loops).
	last atomic.Pointer[sentReq]
}

// sentReq holds a request for authedStream.last.
type sentReq struct{ req any }

func (a *authedStream) Context() context.Context { return a.ctx }

func (a *authedStream) RecvMsg(m any) error {
	if err := a.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if err := a.s.check(a.ctx, m); err != nil {
		return err
	}
	if n := needOf(m); len(n.perms) > 0 || n.admin != "" {
		a.last.Store(&sentReq{req: m})
	}
	return nil
}

func (a *authedStream) SendMsg(m any) error {
	var req any
	if p := a.last.Load(); p != nil {
		req = p.req
	}
	if err := a.s.stillAuthorized(a.ctx, req); err != nil {
		return err
	}
	return a.ServerStream.SendMsg(m)
}

// stillAuthorized checks, for a long-lived stream, that its caller still
// exists and may still do what req (its last request that needs a
// permission; nil: none) asked. A Batch stream's ops are checked one by
// one instead.
func (s *Server) stillAuthorized(ctx context.Context, req any) error {
	id, ok := identityOf(ctx)
	if !ok || id.all() || id.user == auth.RootUser {
		return nil
	}
	if !s.authTables().HasUser(id.user) {
		if !s.recheckAuth(ctx).HasUser(id.user) {
			return status.Errorf(codes.Unauthenticated, "server: user %q no longer exists", id.user)
		}
	}
	if req == nil {
		return nil
	}
	return s.check(ctx, req)
}
