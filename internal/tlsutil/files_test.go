package tlsutil

import (
	"crypto/tls"
	"strings"
	"testing"
)

// TestFiles_Validate checks that each inconsistent configuration is refused
// with the name of the flag to fix.
func TestFiles_Validate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		files   Files
		wantErr string // "" for valid
	}{
		{"empty", Files{}, ""},
		{"server", Files{Cert: "c", Key: "k"}, ""},
		{"mTLS server", Files{Cert: "c", Key: "k", CA: "ca", ClientAuth: "require"}, ""},
		{"request", Files{Cert: "c", Key: "k", CA: "ca", ClientAuth: "request"}, ""},
		{"none with CA", Files{Cert: "c", Key: "k", CA: "ca", ClientAuth: "none"}, ""},
		{"client trusting a CA", Files{CA: "ca"}, ""},
		{"cert without key", Files{Cert: "c"}, "--tls-cert is set but --tls-key is not"},
		{"key without cert", Files{Key: "k"}, "--tls-key is set but --tls-cert is not"},
		{"unknown client auth", Files{Cert: "c", Key: "k", CA: "ca", ClientAuth: "always"}, `--tls-client-auth "always" is not none, request or require`},
		{"require without CA", Files{Cert: "c", Key: "k", ClientAuth: "require"}, "--tls-client-auth=require needs --tls-ca"},
		{"request without CA", Files{Cert: "c", Key: "k", ClientAuth: "request"}, "--tls-client-auth=request needs --tls-ca"},
	} {
		err := tc.files.Validate()
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("Validate(%s) = %v, want nil", tc.name, err)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("Validate(%s) = %v, want an error containing %q", tc.name, err, tc.wantErr)
		}
	}
}

// TestFiles_ClientAuthType checks the TLS policy of each ClientAuth value,
// including the default that depends on the CA.
func TestFiles_ClientAuthType(t *testing.T) {
	for _, tc := range []struct {
		files Files
		want  tls.ClientAuthType
	}{
		{Files{}, tls.NoClientCert},
		{Files{CA: "ca"}, tls.RequireAndVerifyClientCert},
		{Files{CA: "ca", ClientAuth: "none"}, tls.NoClientCert},
		{Files{CA: "ca", ClientAuth: "request"}, tls.VerifyClientCertIfGiven},
		{Files{CA: "ca", ClientAuth: "require"}, tls.RequireAndVerifyClientCert},
	} {
		if got := tc.files.clientAuthType(); got != tc.want {
			t.Errorf("clientAuthType(%+v) = %v, want %v", tc.files, got, tc.want)
		}
	}
}
