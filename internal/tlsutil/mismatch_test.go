package tlsutil

import (
	"context"
	"strings"
	"testing"
)

// TestTLSCause_OneReadableLine checks that the cause of a TLS failure is
// given as the handshake reported it: gRPC's quoting of the connection
// error undone, and a certificate's errors for several names on one line.
func TestTLSCause_OneReadableLine(t *testing.T) {
	for _, tc := range []struct{ msg, want string }{
		{`connection error: desc = "transport: authentication handshake failed: tlsutil: server certificate: x509: certificate signed by unknown authority (possibly because of \"x509: ECDSA verification failure\" while trying to verify candidate authority certificate \"butterfly-ca\")"`,
			`x509: certificate signed by unknown authority (possibly because of "x509: ECDSA verification failure" while trying to verify candidate authority certificate "butterfly-ca")`},
		{`connection error: desc = "transport: authentication handshake failed: tlsutil: server certificate: x509: certificate is valid for butterfly-intermediate, not ub\nx509: cannot validate certificate for 127.0.0.10 because it doesn't contain any IP SANs"`,
			`x509: certificate is valid for butterfly-intermediate, not ub; x509: cannot validate certificate for 127.0.0.10 because it doesn't contain any IP SANs`},
		{`connection error: desc = "error reading server preface: remote error: tls: certificate required"`, `tls: certificate required`},
		{`no quoting here: x509: expired`, `x509: expired`},
	} {
		if got := tlsCause(tc.msg); got != tc.want {
			t.Errorf("tlsCause(%s)\n = %s\nwant %s", tc.msg, got, tc.want)
		}
	}
}

// TestMismatch_SaysWhatMendsTheAlert checks the hint given with a server's
// alert: a client certificate refused as expired is to be renewed, any
// other refusal names the files and the CA that must sign them.
func TestMismatch_SaysWhatMendsTheAlert(t *testing.T) {
	for _, tc := range []struct{ msg, want string }{
		{`connection error: desc = "error reading server preface: remote error: tls: expired certificate"`, "tls: expired certificate (renew --tls-cert and --tls-key"},
		{`connection error: desc = "error reading server preface: remote error: tls: certificate required"`, "tls: certificate required (mutual TLS: --tls-cert and --tls-key, a certificate for client authentication signed by a CA the instance trusts)"},
		{`connection error: desc = "error reading server preface: remote error: tls: unknown certificate authority"`, "tls: unknown certificate authority (mutual TLS: --tls-cert and --tls-key, a certificate for client authentication signed by a CA the instance trusts)"},
	} {
		if got := Mismatch(context.Background(), "", nil, tc.msg); !strings.Contains(got, tc.want) {
			t.Errorf("Mismatch(%q)\n = %q\nwant it to contain %q", tc.msg, got, tc.want)
		}
	}
}

// TestMismatch_SaysWhatMendsTheServerCertificate checks the hint given with
// a server certificate that did not verify: an unknown CA names --tls-ca,
// another name the certificate's hosts and --tls-server-name, an expired
// one the instance's files. They named no flag before.
func TestMismatch_SaysWhatMendsTheServerCertificate(t *testing.T) {
	for _, tc := range []struct{ msg, want string }{
		{`connection error: desc = "transport: authentication handshake failed: tlsutil: server certificate: x509: certificate signed by unknown authority"`,
			"x509: certificate signed by unknown authority (--tls-ca: the CA that signed the instance's certificate)"},
		{`connection error: desc = "transport: authentication handshake failed: tlsutil: server certificate: x509: certificate is valid for 127.0.0.2, 127.0.0.3, not 127.0.0.30"`,
			"not 127.0.0.30 (the instance's certificate does not name the address this client dials: reissue it for that address, butterfly certs --hosts, or pass --tls-server-name with a name it has)"},
		{`connection error: desc = "transport: authentication handshake failed: x509: certificate has expired or is not yet valid: current time 2027-01-01T00:00:00Z is after 2026-12-31T00:00:00Z"`,
			"(renew the instance's --tls-cert and --tls-key)"},
	} {
		if got := Mismatch(context.Background(), "", nil, tc.msg); !strings.Contains(got, tc.want) {
			t.Errorf("Mismatch(%q)\n = %q\nwant it to contain %q", tc.msg, got, tc.want)
		}
	}
}
