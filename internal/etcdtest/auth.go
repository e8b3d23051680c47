package etcdtest

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"golang.org/x/crypto/bcrypt"
)

// RootUser is the etcd user EnableAuth creates.
const RootUser = "root"

// StartAuth starts a server like Start, with authentication enabled (see
// EnableAuth). Passwords are hashed at bcrypt's minimum cost, also after a
// Restart, so that tests that add users and authenticate stay fast.
func StartAuth(t testing.TB, rootPassword string) *Server {
	t.Helper()
	s := newServer(t)
	s.bcryptCost = uint(bcrypt.MinCost)
	s.startOnFreeAddrs(t)
	t.Cleanup(func() { s.stop() })
	s.EnableAuth(t, rootPassword)
	return s
}

// EnableAuth turns authentication on, with a root user of the given
// password, as an operator would with etcdctl:
//
//	etcdctl user add root --new-user-password=PASSWORD
//	etcdctl user grant-role root root
//	etcdctl auth enable
//
// From then on, requests without a user fail; ClientAs(t, RootUser,
// rootPassword) makes a client that may do anything.
func (s *Server) EnableAuth(t testing.TB, rootPassword string) {
	t.Helper()
	cli := s.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.UserAdd(ctx, RootUser, rootPassword); err != nil {
		t.Fatalf("UserAdd(%s) = %v", RootUser, err)
	}
	if _, err := cli.UserGrantRole(ctx, RootUser, "root"); err != nil {
		t.Fatalf("UserGrantRole(%s, root) = %v", RootUser, err)
	}
	if _, err := cli.AuthEnable(ctx); err != nil {
		t.Fatalf("AuthEnable() = %v", err)
	}
}

// ClientAs returns a client authenticated as user, closed when the test ends.
func (s *Server) ClientAs(t testing.TB, user, password string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   s.Endpoints(),
		DialTimeout: 5 * time.Second,
		Username:    user,
		Password:    password,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatalf("clientv3.New(%v, user %s) = %v", s.Endpoints(), user, err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// AddPrefixUser creates user with password and a role of the same name that
// may read and write the keys starting with prefix and nothing else, as an
// operator would with etcdctl (as root):
//
//	etcdctl role add USER
//	etcdctl role grant-permission USER --prefix=true readwrite PREFIX
//	etcdctl user add USER --new-user-password=PASSWORD
//	etcdctl user grant-role USER USER
//
// root must be a client authenticated as root (see ClientAs).
func AddPrefixUser(t testing.TB, root *clientv3.Client, user, password, prefix string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := root.RoleAdd(ctx, user); err != nil {
		t.Fatalf("RoleAdd(%s) = %v", user, err)
	}
	if _, err := root.RoleGrantPermission(ctx, user, prefix, clientv3.GetPrefixRangeEnd(prefix), clientv3.PermissionType(clientv3.PermReadWrite)); err != nil {
		t.Fatalf("RoleGrantPermission(%s, %s) = %v", user, prefix, err)
	}
	if _, err := root.UserAdd(ctx, user, password); err != nil {
		t.Fatalf("UserAdd(%s) = %v", user, err)
	}
	if _, err := root.UserGrantRole(ctx, user, user); err != nil {
		t.Fatalf("UserGrantRole(%s, %s) = %v", user, user, err)
	}
}
