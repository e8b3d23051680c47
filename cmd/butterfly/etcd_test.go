package main

import (
	"strings"
	"testing"

	"github.com/butterfly-mesh/butterfly/internal/embedetcd"
	"github.com/butterfly-mesh/butterfly/internal/logtest"
)

// TestWarnPlaintext checks which listeners of `butterfly etcd` are warned
// of: off loopback in plaintext, or over TLS without a CA of the
// certificates the other side must present; never on loopback.
func TestWarnPlaintext(t *testing.T) {
	const (
		plaintext = "etcd serves in plaintext off loopback"
		noCA      = "etcd takes TLS connections off loopback without asking for a certificate"
	)
	files := embedetcd.TLSFiles{Cert: "s.pem", Key: "k.pem"}
	withCA := embedetcd.TLSFiles{Cert: "s.pem", Key: "k.pem", TrustedCA: "ca.pem"}
	for _, tc := range []struct {
		name string
		cfg  embedetcd.Config
		want []string // messages, each naming its flag
	}{
		{"loopback", embedetcd.Config{ListenClient: "http://127.0.0.1:2379", ListenPeer: "http://[::1]:2380"}, nil},
		{"localhost", embedetcd.Config{ListenClient: "http://localhost:2379", ListenPeer: "http://127.0.0.5:2380"}, nil},
		{"every address", embedetcd.Config{ListenClient: "http://0.0.0.0:2379", ListenPeer: "http://127.0.0.1:2380"}, []string{plaintext + ": whoever reaches --listen-client"}},
		{"peers off loopback", embedetcd.Config{ListenClient: "http://127.0.0.1:2379", ListenPeer: "http://198.18.0.1:2380"}, []string{plaintext + ": whoever reaches --listen-peer"}},
		{"TLS without a CA", embedetcd.Config{ListenClient: "https://198.18.0.1:2379", ListenPeer: "http://127.0.0.1:2380", ClientTLS: files}, []string{noCA + ": whoever reaches --listen-client"}},
		{"mutual TLS", embedetcd.Config{ListenClient: "https://198.18.0.1:2379", ListenPeer: "https://198.18.0.1:2380", ClientTLS: withCA, PeerTLS: withCA}, nil},
		{"no scheme", embedetcd.Config{ListenClient: "198.18.0.1:2379", ListenPeer: "198.18.0.1:2380"}, []string{plaintext + ": whoever reaches --listen-client", plaintext + ": whoever reaches --listen-peer"}},
		{"schemes in upper case", embedetcd.Config{ListenClient: "HTTPS://198.18.0.1:2379", ListenPeer: "HTTP://198.18.0.1:2380", ClientTLS: withCA}, []string{plaintext + ": whoever reaches --listen-peer"}},
	} {
		rec := &logtest.Recorder{}
		warnPlaintext(rec.Logger(), tc.cfg)
		var got []string
		for _, msg := range []string{plaintext, noCA} {
			for _, m := range rec.Messages() {
				if strings.HasPrefix(m, msg) {
					got = append(got, m)
				}
			}
		}
		if len(got) != len(tc.want) {
			t.Errorf("%s: warned %q, want %d warnings starting %q", tc.name, got, len(tc.want), tc.want)
			continue
		}
		for i, w := range tc.want {
			if !strings.HasPrefix(got[i], w) {
				t.Errorf("%s: warned %q, want it to start %q", tc.name, got[i], w)
			}
		}
	}
}
