// Package tlsutil builds the TLS configurations of Butterfly's servers and
// clients from PEM files, reloading certificates, keys and CA bundles when the
// files change, and writes a development PKI.
//
// A server requiring client certificates, and a client of it:
//
//	files := tlsutil.Files{Cert: "server.pem", Key: "server-key.pem", CA: "ca.pem", ClientAuth: "require"}
//	if err := files.Validate(); err != nil {
//		return err // names the wrong --tls-* flag
//	}
//	cfg, err := tlsutil.ServerConfig(ctx, files, logger)
//	if err != nil {
//		return err
//	}
//	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(cfg)))
//
//	creds, err := tlsutil.ClientCredentials(ctx,
//		tlsutil.Files{Cert: "client.pem", Key: "client-key.pem", CA: "ca.pem"}, "", logger)
//	if err != nil {
//		return err
//	}
//	conn, err := grpc.NewClient("butterfly:///intermediate", grpc.WithTransportCredentials(creds))
//
// In a handler, Peer returns the verified client's Identity: the role and id
// of its URI SAN butterfly://<role>/<id> (role producer, consumer, stage or
// admin), and its CommonName. PeerIdentity names it: the <id>, else the
// CommonName.
//
// Mismatch tells, from the message of a failed gRPC connection, when its two
// ends disagree on TLS (plaintext against TLS either way, a client
// certificate refused, a server certificate that does not verify), and
// says which flags mend it.
//
// Files are read again during handshakes, at most once per second (see
// WithReloadInterval), as long as the ctx given at construction lives; no
// goroutine is started. Rotating a certificate is writing the new files: new
// connections use them, open ones keep theirs.
//
// A development PKI for two hosts, with a client certificate bound to the
// producer id "p1" (what `butterfly certs` does):
//
//	err := tlsutil.GenerateDev("certs", []string{"localhost", "127.0.0.1"}, tlsutil.WithClientID("p1"))
package tlsutil
