package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/client"
)

// authRun wraps a user or role subcommand: it connects with the client
// flags and checks -w.
func authRun(cf *clientFlags, out *string, run func(ctx context.Context, cl *client.Client, w io.Writer) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, _ []string) error {
		if err := checkOutput(*out, "table", "json"); err != nil {
			return err
		}
		cl, ctx, cancel, err := cf.connect(cmd)
		if err != nil {
			return err
		}
		defer cancel()
		defer cl.Close()
		return run(ctx, cl, cmd.OutOrStdout())
	}
}

// authCmd builds one subcommand with the client flags and -w.
func authCmd(use, short string, nargs int, run func(args []string, ctx context.Context, cl *client.Client, w io.Writer, json bool) error) *cobra.Command {
	var cf clientFlags
	var out string
	cmd := &cobra.Command{Use: use, Short: short, Args: cobra.ExactArgs(nargs)}
	cmd.RunE = func(c *cobra.Command, args []string) error {
		return authRun(&cf, &out, func(ctx context.Context, cl *client.Client, w io.Writer) error {
			return run(args, ctx, cl, w, out == "json")
		})(c, args)
	}
	cf.register(cmd)
	cmd.Flags().StringVarP(&out, "write-out", "w", "table", "output format: table or json")
	return cmd
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// userJSON is one user of `flotilla user list -w json`.
type userJSON struct {
	Name     string   `json:"name"`
	Roles    []string `json:"roles"`
	HasToken bool     `json:"has_token"`
	Token    string   `json:"token,omitempty"`
}

func userOf(u *api.User) userJSON {
	return userJSON{Name: u.GetName(), Roles: append([]string{}, u.GetRoles()...), HasToken: u.GetHasToken()}
}

func printUser(w io.Writer, u *api.User, asJSON bool) error {
	if asJSON {
		return printJSON(w, userOf(u))
	}
	_, err := fmt.Fprintf(w, "user %s: roles [%s]\n", u.GetName(), strings.Join(u.GetRoles(), ", "))
	return err
}

func newUserCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "user", Short: "Manage the users that clients authenticate as (admin only)"}
	var noToken bool
	add := authCmd("add NAME", "Create a user and print its token (shown once)", 1,
		func(args []string, ctx context.Context, cl *client.Client, w io.Writer, asJSON bool) error {
			u, tok, err := cl.UserAdd(ctx, args[0], noToken)
			if err != nil {
				return err
			}
			if asJSON {
				j := userOf(u)
				j.Token = tok
				return printJSON(w, j)
			}
			fmt.Fprintf(w, "user %s created\n", u.GetName())
			if tok != "" {
				fmt.Fprintf(w, "token: %s\n(shown once: the cluster keeps only its hash; pass it with --token)\n", tok)
			}
			return nil
		})
	add.Flags().BoolVar(&noToken, "no-token", false, "issue no token: the user authenticates by client certificate only")
	del := authCmd("delete NAME", "Delete a user", 1,
		func(args []string, ctx context.Context, cl *client.Client, w io.Writer, _ bool) error {
			if err := cl.UserDelete(ctx, args[0]); err != nil {
				return err
			}
			_, err := fmt.Fprintf(w, "user %s deleted\n", args[0])
			return err
		})
	grant := authCmd("grant USER ROLE", "Give a user a role", 2,
		func(args []string, ctx context.Context, cl *client.Client, w io.Writer, asJSON bool) error {
			u, err := cl.UserGrant(ctx, args[0], args[1])
			if err != nil {
				return err
			}
			return printUser(w, u, asJSON)
		})
	revoke := authCmd("revoke USER ROLE", "Take a role away from a user", 2,
		func(args []string, ctx context.Context, cl *client.Client, w io.Writer, asJSON bool) error {
			u, err := cl.UserRevoke(ctx, args[0], args[1])
			if err != nil {
				return err
			}
			return printUser(w, u, asJSON)
		})
	list := authCmd("list", "List the users", 0,
		func(_ []string, ctx context.Context, cl *client.Client, w io.Writer, asJSON bool) error {
			us, err := cl.UserList(ctx)
			if err != nil {
				return err
			}
			if asJSON {
				out := struct {
					Users []userJSON `json:"users"`
				}{Users: []userJSON{}}
				for _, u := range us {
					out.Users = append(out.Users, userOf(u))
				}
				return printJSON(w, out)
			}
			for _, u := range us {
				if err := printUser(w, u, false); err != nil {
					return err
				}
			}
			return nil
		})
	whoami := authCmd("whoami", "Print who the cluster takes this client for", 0,
		func(_ []string, ctx context.Context, cl *client.Client, w io.Writer, asJSON bool) error {
			r, err := cl.WhoAmI(ctx)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(w, map[string]any{"user": r.User, "how": r.How, "roles": append([]string{}, r.Roles...)})
			}
			_, err = fmt.Fprintf(w, "%s (by %s), roles [%s]\n", r.User, r.How, strings.Join(r.Roles, ", "))
			return err
		})
	cmd.AddCommand(add, del, grant, revoke, list, whoami)
	return cmd
}

// permJSON is one permission of `flotilla role list -w json`.
type permJSON struct {
	Kind   string `json:"kind"`
	Prefix string `json:"prefix"`
	Read   bool   `json:"read"`
	Write  bool   `json:"write"`
}

type roleJSON struct {
	Name        string     `json:"name"`
	Permissions []permJSON `json:"permissions"`
}

func roleOf(r *api.Role) roleJSON {
	out := roleJSON{Name: r.GetName(), Permissions: []permJSON{}}
	for _, p := range r.GetPermissions() {
		out.Permissions = append(out.Permissions, permJSON{Kind: strings.ToLower(p.Kind.String()), Prefix: string(p.Prefix), Read: p.Read, Write: p.Write})
	}
	return out
}

func printRole(w io.Writer, r *api.Role, asJSON bool) error {
	if asJSON {
		return printJSON(w, roleOf(r))
	}
	fmt.Fprintf(w, "role %s\n", r.GetName())
	for _, p := range roleOf(r).Permissions {
		access := map[[2]bool]string{{true, false}: "read", {false, true}: "write", {true, true}: "readwrite"}[[2]bool{p.Read, p.Write}]
		fmt.Fprintf(w, "  %s %s prefix %q\n", p.Kind, access, p.Prefix)
	}
	return nil
}

// permissionArg parses ACCESS (read, write or readwrite) and a prefix.
func permissionArg(access, prefix string, election bool) (*api.Permission, error) {
	p := &api.Permission{Kind: api.Permission_KEY, Prefix: []byte(prefix)}
	if election {
		p.Kind = api.Permission_ELECTION
	}
	switch access {
	case "read":
		p.Read = true
	case "write":
		p.Write = true
	case "readwrite":
		p.Read, p.Write = true, true
	default:
		return nil, fmt.Errorf("access %q: want read, write or readwrite", access)
	}
	return p, nil
}

func newRoleCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "role", Short: "Manage the roles that grant users access to key prefixes and elections (admin only)"}
	add := authCmd("add NAME", "Create a role without permissions", 1,
		func(args []string, ctx context.Context, cl *client.Client, w io.Writer, asJSON bool) error {
			r, err := cl.RoleAdd(ctx, args[0])
			if err != nil {
				return err
			}
			return printRole(w, r, asJSON)
		})
	del := authCmd("delete NAME", "Delete a role", 1,
		func(args []string, ctx context.Context, cl *client.Client, w io.Writer, _ bool) error {
			if err := cl.RoleDelete(ctx, args[0]); err != nil {
				return err
			}
			_, err := fmt.Fprintf(w, "role %s deleted\n", args[0])
			return err
		})
	var grantElection, revokeElection bool
	grant := authCmd("grant ROLE read|write|readwrite PREFIX", `Let a role read and/or write every key (with --election: election) starting with PREFIX ("" for all)`, 3,
		func(args []string, ctx context.Context, cl *client.Client, w io.Writer, asJSON bool) error {
			p, err := permissionArg(args[1], args[2], grantElection)
			if err != nil {
				return err
			}
			r, err := cl.RoleGrant(ctx, args[0], p)
			if err != nil {
				return err
			}
			return printRole(w, r, asJSON)
		})
	grant.Flags().BoolVar(&grantElection, "election", false, "the prefix is of election names, not keys")
	revoke := authCmd("revoke ROLE PREFIX", "Remove a role's permission on PREFIX", 2,
		func(args []string, ctx context.Context, cl *client.Client, w io.Writer, asJSON bool) error {
			p, _ := permissionArg("read", args[1], revokeElection)
			r, err := cl.RoleRevoke(ctx, args[0], p)
			if err != nil {
				return err
			}
			return printRole(w, r, asJSON)
		})
	revoke.Flags().BoolVar(&revokeElection, "election", false, "the prefix is of election names, not keys")
	list := authCmd("list", "List the roles and their permissions", 0,
		func(_ []string, ctx context.Context, cl *client.Client, w io.Writer, asJSON bool) error {
			rs, err := cl.RoleList(ctx)
			if err != nil {
				return err
			}
			if asJSON {
				out := struct {
					Roles []roleJSON `json:"roles"`
				}{Roles: []roleJSON{}}
				for _, r := range rs {
					out.Roles = append(out.Roles, roleOf(r))
				}
				return printJSON(w, out)
			}
			for _, r := range rs {
				if err := printRole(w, r, false); err != nil {
					return err
				}
			}
			return nil
		})
	cmd.AddCommand(add, del, grant, revoke, list)
	return cmd
}
