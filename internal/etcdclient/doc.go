// Package etcdclient connects to etcd the way etcdctl does: endpoints, TLS
// (--etcd-cacert, --etcd-cert, --etcd-key) and a user (--etcd-user
// user:password, or --etcd-password), with a reconnection backoff short
// enough for lease-kept registrations, and errors that name the flag to fix.
//
//	cfg := etcdclient.Config{
//		Endpoints: []string{"https://10.0.0.5:2379"},
//		CACert:    "ca.pem", Cert: "client.pem", Key: "client-key.pem",
//		User:      "butterfly:s3cret",
//	}
//	if err := cfg.Validate(); err != nil {
//		return err // names the wrong --etcd-* flag
//	}
//	cli, err := etcdclient.New(cfg, logger)
//	if err != nil {
//		return err
//	}
//	defer cli.Close()
//
// # A least-privilege etcd user for the mesh
//
// Everything Butterfly keeps in etcd lives under its key prefix (default
// "butterfly", so the keys start with "butterfly/"): registrations, their
// leases and the control keys. Leases need no permission of their own. With
// authentication enabled, a role that may read and write that prefix, and
// nothing else, is all a mesh process needs:
//
//	# once per cluster: a root user, then authentication on
//	etcdctl user add root                  # prompts for the root password
//	etcdctl user grant-role root root
//	etcdctl auth enable
//
//	# the mesh's role and user
//	etcdctl --user root role add butterfly
//	etcdctl --user root role grant-permission butterfly --prefix=true readwrite butterfly/
//	etcdctl --user root user add butterfly # prompts for the user's password
//	etcdctl --user root user grant-role butterfly butterfly
//
// Mesh processes then run with --etcd-user butterfly:PASSWORD (or
// --etcd-user butterfly --etcd-password PASSWORD). For another --prefix P,
// grant readwrite on "P/" instead. Without a user such a cluster refuses
// every request with ErrAuthRequired; a user whose role lacks the prefix
// gets ErrPermissionDenied naming the key.
package etcdclient
