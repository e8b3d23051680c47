package tlsutil

import "testing"

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
