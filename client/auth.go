package client

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
)

// User and role management (the Auth service; docs/security.md). Every
// node serves it: the tables live in the meta range, and a node proposes
// a change there wherever its leader is. Only an admin (root, or a user
// with role root) may call these but WhoAmI. Errors: ErrPermissionDenied,
// ErrUnauthenticated, ErrUnavailable, and ErrInvalidArgument for bad
// names or permissions; a gRPC status error (NotFound, AlreadyExists,
// FailedPrecondition on an --insecure cluster) otherwise.

// authCall runs call against the Auth service of one node after another
// until one answers (an Unavailable answer tries the next).
func authCall[R any](ctx context.Context, c *Client, call func(api.AuthClient) (R, error)) (R, error) {
	var zero R
	var last error = ErrNoEndpoints
	for _, addr := range c.candidates() {
		cc, err := c.conn(addr)
		if err != nil {
			return zero, err
		}
		r, err := call(api.NewAuthClient(cc))
		if err == nil {
			return r, nil
		}
		last = err
		if status.Code(err) != codes.Unavailable || ctx.Err() != nil {
			break
		}
	}
	switch status.Code(last) {
	case codes.PermissionDenied, codes.Unauthenticated, codes.InvalidArgument, codes.Unavailable:
		_, err := classify(last)
		return zero, err
	}
	return zero, last
}

// UserAdd creates a user and returns it with its token (empty with
// noToken: the user then authenticates by certificate only). The token is
// shown once: the cluster keeps only its hash.
func (c *Client) UserAdd(ctx context.Context, name string, noToken bool) (*api.User, string, error) {
	r, err := authCall(ctx, c, func(a api.AuthClient) (*api.UserAddResponse, error) {
		return a.UserAdd(ctx, &api.UserAddRequest{Name: name, NoToken: noToken})
	})
	if err != nil {
		return nil, "", err
	}
	return r.User, r.Token, nil
}

// UserDelete deletes a user.
func (c *Client) UserDelete(ctx context.Context, name string) error {
	_, err := authCall(ctx, c, func(a api.AuthClient) (*api.UserDeleteResponse, error) {
		return a.UserDelete(ctx, &api.UserDeleteRequest{Name: name})
	})
	return err
}

// UserGrant gives user the role; UserRevoke takes it away.
func (c *Client) UserGrant(ctx context.Context, user, role string) (*api.User, error) {
	r, err := authCall(ctx, c, func(a api.AuthClient) (*api.UserResponse, error) {
		return a.UserGrant(ctx, &api.UserRoleRequest{User: user, Role: role})
	})
	return r.GetUser(), err
}

// UserRevoke takes a role away from a user.
func (c *Client) UserRevoke(ctx context.Context, user, role string) (*api.User, error) {
	r, err := authCall(ctx, c, func(a api.AuthClient) (*api.UserResponse, error) {
		return a.UserRevoke(ctx, &api.UserRoleRequest{User: user, Role: role})
	})
	return r.GetUser(), err
}

// UserList lists the users in name order.
func (c *Client) UserList(ctx context.Context) ([]*api.User, error) {
	r, err := authCall(ctx, c, func(a api.AuthClient) (*api.UserListResponse, error) {
		return a.UserList(ctx, &api.UserListRequest{})
	})
	return r.GetUsers(), err
}

// RoleAdd creates a role without permissions.
func (c *Client) RoleAdd(ctx context.Context, name string) (*api.Role, error) {
	r, err := authCall(ctx, c, func(a api.AuthClient) (*api.RoleResponse, error) {
		return a.RoleAdd(ctx, &api.RoleAddRequest{Name: name})
	})
	return r.GetRole(), err
}

// RoleDelete deletes a role.
func (c *Client) RoleDelete(ctx context.Context, name string) error {
	_, err := authCall(ctx, c, func(a api.AuthClient) (*api.RoleDeleteResponse, error) {
		return a.RoleDelete(ctx, &api.RoleDeleteRequest{Name: name})
	})
	return err
}

// RoleGrant adds p to a role (replacing its permission of the same kind
// and prefix).
func (c *Client) RoleGrant(ctx context.Context, role string, p *api.Permission) (*api.Role, error) {
	r, err := authCall(ctx, c, func(a api.AuthClient) (*api.RoleResponse, error) {
		return a.RoleGrant(ctx, &api.RolePermissionRequest{Role: role, Permission: p})
	})
	return r.GetRole(), err
}

// RoleRevoke removes a role's permission of p's kind and prefix.
func (c *Client) RoleRevoke(ctx context.Context, role string, p *api.Permission) (*api.Role, error) {
	r, err := authCall(ctx, c, func(a api.AuthClient) (*api.RoleResponse, error) {
		return a.RoleRevoke(ctx, &api.RolePermissionRequest{Role: role, Permission: p})
	})
	return r.GetRole(), err
}

// RoleList lists the roles in name order.
func (c *Client) RoleList(ctx context.Context) ([]*api.Role, error) {
	r, err := authCall(ctx, c, func(a api.AuthClient) (*api.RoleListResponse, error) {
		return a.RoleList(ctx, &api.RoleListRequest{})
	})
	return r.GetRoles(), err
}

// WhoAmI returns the user the cluster takes this client for, how it
// authenticated it, and its roles.
func (c *Client) WhoAmI(ctx context.Context) (*api.WhoAmIResponse, error) {
	return authCall(ctx, c, func(a api.AuthClient) (*api.WhoAmIResponse, error) {
		return a.WhoAmI(ctx, &api.WhoAmIRequest{})
	})
}
