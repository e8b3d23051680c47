package etcdclient

import (
	"strings"
	"testing"
	"time"
)

// TestConfig_Validate checks that each inconsistent configuration is refused
// with the name of the flag to fix.
func TestConfig_Validate(t *testing.T) {
	ep := []string{"127.0.0.1:2379"}
	for _, tc := range []struct {
		name    string
		cfg     Config
		wantErr string // "" for valid
	}{
		{"plain", Config{Endpoints: ep}, ""},
		{"user:password", Config{Endpoints: ep, User: "butterfly:s3cr:et"}, ""},
		{"user and --etcd-password", Config{Endpoints: ep, User: "butterfly", Password: "pw"}, ""},
		{"mTLS", Config{Endpoints: ep, CACert: "ca", Cert: "c", Key: "k"}, ""},
		{"no endpoints", Config{}, "--etcd-endpoints is empty"},
		{"empty endpoint", Config{Endpoints: []string{"a:1", " "}}, "--etcd-endpoints"},
		{"negative timeout", Config{Endpoints: ep, DialTimeout: -time.Second}, "--etcd-dial-timeout -1s is negative"},
		{"cert without key", Config{Endpoints: ep, Cert: "c"}, "--etcd-cert is set but --etcd-key is not"},
		{"key without cert", Config{Endpoints: ep, Key: "k"}, "--etcd-key is set but --etcd-cert is not"},
		{"password without user", Config{Endpoints: ep, Password: "pw"}, "--etcd-password is set but --etcd-user is not"},
		{"user without password", Config{Endpoints: ep, User: "butterfly"}, `--etcd-user "butterfly" has no password`},
		{"two passwords", Config{Endpoints: ep, User: "butterfly:a", Password: "b"}, "--etcd-password is set too"},
		{"empty user name", Config{Endpoints: ep, User: ":pw"}, "no user name"},
		{"empty password", Config{Endpoints: ep, User: "butterfly:"}, "empty password"},
	} {
		err := tc.cfg.Validate()
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("Validate(%s) = %v, want nil", tc.name, err)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("Validate(%s) = %v, want an error containing %q", tc.name, err, tc.wantErr)
		}
	}
}

// TestConfig_Credentials checks how --etcd-user and --etcd-password combine.
func TestConfig_Credentials(t *testing.T) {
	for _, tc := range []struct {
		cfg            Config
		user, password string
	}{
		{Config{}, "", ""},
		{Config{User: "butterfly:s3cr:et"}, "butterfly", "s3cr:et"},
		{Config{User: "butterfly", Password: "pw"}, "butterfly", "pw"},
	} {
		user, password := tc.cfg.credentials()
		if user != tc.user || password != tc.password {
			t.Errorf("credentials(%q, %q) = %q, %q; want %q, %q", tc.cfg.User, tc.cfg.Password, user, password, tc.user, tc.password)
		}
	}
}

// TestNew_InvalidConfig checks that New refuses what Validate refuses, and
// TLS files it cannot load, before connecting.
func TestNew_InvalidConfig(t *testing.T) {
	ep := []string{"127.0.0.1:1"}
	for _, tc := range []struct {
		cfg     Config
		wantErr string
	}{
		{Config{Endpoints: ep, User: "butterfly"}, "has no password"},
		{Config{Endpoints: ep, CACert: "/nonexistent/ca.pem"}, "--etcd-cacert: open /nonexistent/ca.pem"},
		{Config{Endpoints: ep, Cert: "/nonexistent/c.pem", Key: "/nonexistent/k.pem"}, "--etcd-cert, --etcd-key: open /nonexistent/c.pem"},
	} {
		cli, err := New(tc.cfg, nil)
		if err == nil {
			cli.Close()
		}
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("New(%+v) = %v, want an error containing %q", tc.cfg, err, tc.wantErr)
		}
	}
}
