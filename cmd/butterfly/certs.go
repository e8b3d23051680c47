package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/butterfly-mesh/butterfly/internal/tlsutil"
	"github.com/butterfly-mesh/butterfly/registry"
)

func newCertsCommand(r *rootCommand) *cobra.Command {
	var dir, clientID string
	var hosts []string
	var replaceHosts bool
	roleIDs := map[tlsutil.Role]*[]string{}
	var validity time.Duration
	c := &cobra.Command{
		Use:   "certs",
		Short: "Write a development CA and TLS certificates",
		Long: `Write a development PKI into --dir, all ECDSA P-256:

  ca.pem, ca-key.pem          a CA valid for one year
  server.pem, server-key.pem  a server certificate for --hosts
  client.pem, client-key.pem  a client certificate, CommonName butterfly-client
  <role>-<id>.pem, <role>-<id>-key.pem
                              a client certificate per --producer-id,
                              --consumer-id, --stage-id and --admin-id, bound
                              to its role and id by the URI SAN
                              butterfly://<role>/<id>

IP addresses in --hosts become IP SANs and names DNS SANs, in the server and
every client certificate. With --client-id, client.pem is bound to that
producer id (butterfly://producer/<id>, as producer-<id>.pem would be).

An intermediate that requires client certificates holds each holder to its
role: a producer publishes only under its own id; a consumer subscribes only
as its own consumer id; a stage does both under its own id and forwards
messages under the ids they came with; only an admin drains an instance and
sees every producer in status. client.pem without --client-id has no role:
it is refused unless the intermediate runs with --tls-allow-unbound.

A CA already in --dir is kept, so running the command again issues new
certificates that running processes still trust; servers and clients read
rewritten files for their new connections within a second, without a
restart. So a server.pem already there that names a host --hosts leaves out
is not replaced: servers reading it would take the new one and clients
would no longer verify them at that host. Give --hosts every server's
address, old and new, or --replace-hosts to drop hosts on purpose. Keys are written with mode 0600. The CA key lies beside the
certificates: this is for development and tests, not for production.`,
		Example: `  butterfly certs --dir ./certs --hosts localhost,127.0.0.1
  butterfly certs --dir ./certs --hosts 127.0.0.1,127.0.0.2,127.0.0.3 --client-id p1
  butterfly certs --dir ./certs --hosts 127.0.0.4 --replace-hosts
  butterfly certs --dir ./certs --hosts 127.0.0.1 --producer-id p1 --consumer-id c1 --stage-id s1 --admin-id ops
  butterfly certs --dir ./certs --hosts mesh.internal --validity 24h`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := requireFlag("dir", dir); err != nil {
				return err
			}
			if len(hosts) == 0 {
				return usagef("--hosts is required")
			}
			for _, h := range hosts {
				if h == "" || strings.ContainsAny(h, " \t\n/") {
					return usagef("--hosts: %q is not an IP address or DNS name", h)
				}
			}
			var opts []tlsutil.GenerateOption
			if clientID != "" {
				if err := registry.CheckName("--client-id", clientID); err != nil {
					return &usageError{err}
				}
				opts = append(opts, tlsutil.WithClientID(clientID))
			}
			var issued []string
			for _, role := range tlsutil.Roles {
				for _, id := range *roleIDs[role] {
					flag := "--" + string(role) + "-id"
					if err := registry.CheckName(flag, id); err != nil {
						return &usageError{err}
					}
					opts = append(opts, tlsutil.WithIdentity(role, id))
					issued = append(issued, string(role)+"/"+id)
				}
			}
			if validity <= 0 {
				return usagef("--validity %v is not positive", validity)
			}
			opts = append(opts, tlsutil.WithValidity(validity))
			_, err := os.Stat(filepath.Join(dir, tlsutil.CAFile))
			keptCA := err == nil
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("certs: %w", err)
			}
			serverFile := filepath.Join(dir, tlsutil.ServerFile)
			dropped, err := tlsutil.DroppedHosts(serverFile, hosts)
			var pathErr *fs.PathError
			switch {
			case errors.As(err, &pathErr) && !errors.Is(err, fs.ErrNotExist):
				return fmt.Errorf("certs: %w", err)
			case err != nil:
				dropped = nil // none, or not a certificate: nothing to keep
			case len(dropped) > 0 && !replaceHosts:
				return usagef("--hosts %s leaves out %s, which %s names: servers that read it would take the new one at their next reload, "+
					"and clients would no longer verify them there; give --hosts every server's address (--hosts %s), or --replace-hosts to drop them",
					strings.Join(hosts, ","), strings.Join(dropped, ", "), serverFile, strings.Join(append(slices.Clone(hosts), dropped...), ","))
			}
			asked := time.Now().Add(validity)
			if err := tlsutil.GenerateDev(dir, hosts, opts...); err != nil {
				return err
			}
			notAfter, err := tlsutil.NotAfter(serverFile)
			if err != nil {
				return err
			}
			r.logger.Debug("certificates written", "dir", dir, "hosts", hosts, "client_id", clientID, "identities", issued, "kept_ca", keptCA)
			printCerts(cmd, dir, hosts, clientID, issued, keptCA)
			if len(dropped) > 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "%s no longer names %s (it names only %s now); servers that read it take it at their next reload, "+
					"and one still reached at a dropped host presents its previous certificate there until it restarts\n",
					serverFile, strings.Join(dropped, ", "), strings.Join(hosts, ", "))
			}
			until := "the certificates are valid until " + notAfter.UTC().Format(time.RFC3339)
			if notAfter.Before(asked.Add(-time.Minute)) {
				// The CA (one year from when it was made) bounds what it
				// signs.
				until += fmt.Sprintf(", when %s expires: --validity %v reaches past it (a CA made here is valid for a year)",
					filepath.Join(dir, tlsutil.CAFile), validity)
			}
			fmt.Fprintln(cmd.OutOrStdout(), until)
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&dir, "dir", "", "directory to write the files into (required; created 0700)")
	f.StringSliceVar(&hosts, "hosts", nil, "IP addresses and DNS names of the servers, comma-separated (required)")
	f.BoolVar(&replaceHosts, "replace-hosts", false, "replace a server.pem in --dir that names hosts --hosts leaves out (servers reading it no longer verify there)")
	f.StringVar(&clientID, "client-id", "", "producer id to bind client.pem to")
	for _, role := range tlsutil.Roles {
		ids := new([]string)
		roleIDs[role] = ids
		f.StringSliceVar(ids, string(role)+"-id", nil, fmt.Sprintf("write %s-<id>.pem and %s-<id>-key.pem, one certificate of role %s for each id (comma-separated, repeatable)", role, role, role))
	}
	f.DurationVar(&validity, "validity", 365*24*time.Hour, "how long the server and client certificates are valid (at most as long as the CA)")
	return c
}

func printCerts(cmd *cobra.Command, dir string, hosts []string, clientID string, issued []string, keptCA bool) {
	ca := "a new CA"
	if keptCA {
		ca = "the CA already there (kept)"
	}
	client := "CommonName " + tlsutil.ClientCommonName
	if clientID != "" {
		client += ", producer id " + clientID
	}
	out := cmd.OutOrStdout()
	fmt.Fprintf(out, "wrote %s with %s:\n", dir, ca)
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	for _, row := range [][2]string{
		{tlsutil.CAFile, "CA certificate: the --tls-ca of servers and clients"},
		{tlsutil.CAKeyFile, "CA key (0600): keep it to issue more certificates"},
		{tlsutil.ServerFile, "server certificate for " + strings.Join(hosts, ", ")},
		{tlsutil.ServerKeyFile, "server key (0600)"},
		{tlsutil.ClientFile, "client certificate, " + client},
		{tlsutil.ClientKeyFile, "client key (0600)"},
	} {
		fmt.Fprintf(tw, "  %s\t%s\n", filepath.Join(dir, row[0]), row[1])
	}
	for _, name := range issued {
		role, id, _ := strings.Cut(name, "/")
		certFile, keyFile := tlsutil.IdentityFiles(tlsutil.Role(role), id)
		fmt.Fprintf(tw, "  %s\t%s certificate, %s id %s\n", filepath.Join(dir, certFile), role, role, id)
		fmt.Fprintf(tw, "  %s\t%s key (0600)\n", filepath.Join(dir, keyFile), role)
	}
	tw.Flush()
}
