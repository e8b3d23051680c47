package tlsutil

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unicode/utf8"
)

// The files GenerateDev writes into its directory.
const (
	CAFile        = "ca.pem"
	CAKeyFile     = "ca-key.pem"
	ServerFile    = "server.pem"
	ServerKeyFile = "server-key.pem"
	ClientFile    = "client.pem"
	ClientKeyFile = "client-key.pem"
)

// ClientCommonName is the subject CommonName of the client certificate
// GenerateDev writes.
const ClientCommonName = "butterfly-client"

const (
	caValidity   = 365 * 24 * time.Hour
	clockSkew    = 5 * time.Minute
	caCommonName = "butterfly development CA"
)

// GenerateOption configures GenerateDev.
type GenerateOption func(*generateOptions)

type generateOptions struct {
	clientID   string
	identities []Identity
	validity   time.Duration
	now        func() time.Time
}

// WithClientID binds the client certificate to a producer id with the URI
// SAN butterfly://producer/<id>, which PeerIdentity returns.
func WithClientID(id string) GenerateOption {
	return func(o *generateOptions) { o.clientID = id }
}

// WithIdentity also writes a client certificate bound to role and id by
// the URI SAN butterfly://<role>/<id>, into the file pair IdentityFiles
// names. It may be given more than once.
func WithIdentity(role Role, id string) GenerateOption {
	return func(o *generateOptions) {
		o.identities = append(o.identities, Identity{Role: role, ID: id})
	}
}

// IdentityFiles returns the certificate and key file names GenerateDev
// writes for WithIdentity(role, id): <role>-<id>.pem and <role>-<id>-key.pem.
func IdentityFiles(role Role, id string) (cert, key string) {
	base := string(role) + "-" + id
	return base + ".pem", base + "-key.pem"
}

// WithValidity sets how long the server and client certificates are valid
// (default, and at most, until the CA expires: one year from its creation).
func WithValidity(d time.Duration) GenerateOption {
	return func(o *generateOptions) { o.validity = d }
}

// GenerateDev writes a development PKI into dir (created 0700 if missing),
// all ECDSA P-256:
//
//   - ca.pem, ca-key.pem: a CA valid for one year. A CA already in dir is
//     kept, so certificates issued earlier stay valid and more can be issued.
//   - server.pem, server-key.pem: a server certificate for hosts (IP
//     addresses become IP SANs, names DNS SANs), usable for client auth too.
//   - client.pem, client-key.pem: a client certificate with CommonName
//     "butterfly-client", the hosts as SANs, and with WithClientID the URI
//     SAN butterfly://producer/<id>.
//   - <role>-<id>.pem, <role>-<id>-key.pem for every WithIdentity: a client
//     certificate with CommonName <role>-<id>, the hosts as SANs, and the
//     URI SAN butterfly://<role>/<id>.
//
// Keys are written 0600 and certificates 0644, each file atomically.
func GenerateDev(dir string, hosts []string, opts ...GenerateOption) error {
	o := generateOptions{validity: caValidity, now: time.Now}
	for _, opt := range opts {
		opt(&o)
	}
	if len(hosts) == 0 {
		return errors.New("tlsutil: no hosts for the server certificate")
	}
	for _, h := range hosts {
		if h == "" || strings.ContainsAny(h, " \t\n/") {
			return fmt.Errorf("tlsutil: host %q is not an IP address or DNS name", h)
		}
	}
	if o.clientID != "" {
		if err := validateClientID(o.clientID); err != nil {
			return err
		}
	}
	for _, id := range o.identities {
		if !id.Role.Valid() {
			return fmt.Errorf("tlsutil: role %q is not one of %v", id.Role, Roles)
		}
		if err := validateID(id.ID); err != nil {
			return err
		}
	}
	if o.validity <= 0 {
		return fmt.Errorf("tlsutil: validity %v is not positive", o.validity)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("tlsutil: %w", err)
	}
	now := o.now()
	ca, caKey, err := loadOrCreateCA(dir, now)
	if err != nil {
		return err
	}
	notAfter := now.Add(o.validity)
	if notAfter.After(ca.NotAfter) {
		notAfter = ca.NotAfter
	}
	server := leafTemplate("butterfly-server", hosts, now, notAfter)
	server.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	if err := issue(dir, ServerFile, ServerKeyFile, server, ca, caKey); err != nil {
		return err
	}
	client := leafTemplate(ClientCommonName, hosts, now, notAfter)
	client.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	if o.clientID != "" {
		client.URIs = append(client.URIs, roleURI(RoleProducer, o.clientID))
	}
	if err := issue(dir, ClientFile, ClientKeyFile, client, ca, caKey); err != nil {
		return err
	}
	for _, id := range o.identities {
		certFile, keyFile := IdentityFiles(id.Role, id.ID)
		tmpl := leafTemplate(string(id.Role)+"-"+id.ID, hosts, now, notAfter)
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		tmpl.URIs = []*url.URL{roleURI(id.Role, id.ID)}
		if err := issue(dir, certFile, keyFile, tmpl, ca, caKey); err != nil {
			return err
		}
	}
	return nil
}

// validateClientID applies the rules of producer ids: valid UTF-8 without
// '/', spaces or control characters.
func validateClientID(id string) error {
	if !utf8.ValidString(id) {
		return fmt.Errorf("tlsutil: client id %q is not valid UTF-8", id)
	}
	for _, r := range id {
		if r == '/' || r <= ' ' || r == 0x7f {
			return fmt.Errorf("tlsutil: client id %q contains %q", id, r)
		}
	}
	return nil
}

// loadOrCreateCA returns the CA in dir, or creates one when dir has none.
func loadOrCreateCA(dir string, now time.Time) (*x509.Certificate, crypto.Signer, error) {
	cert, key, err := loadCA(dir, now)
	if errors.Is(err, errNoCA) {
		return createCA(dir, now)
	}
	return cert, key, err
}

// errNoCA: a directory holds neither CA file.
var errNoCA = errors.New("tlsutil: no CA")

// loadCA returns the CA in dir, valid at now, or errNoCA when dir has
// neither of its files.
func loadCA(dir string, now time.Time) (*x509.Certificate, crypto.Signer, error) {
	certPath, keyPath := filepath.Join(dir, CAFile), filepath.Join(dir, CAKeyFile)
	certPEM, certErr := os.ReadFile(certPath)
	keyPEM, keyErr := os.ReadFile(keyPath)
	switch {
	case errors.Is(certErr, os.ErrNotExist) && errors.Is(keyErr, os.ErrNotExist):
		return nil, nil, fmt.Errorf("%w in %s (%s, %s)", errNoCA, dir, CAFile, CAKeyFile)
	case certErr != nil:
		return nil, nil, fmt.Errorf("tlsutil: CA: %w", certErr)
	case keyErr != nil:
		return nil, nil, fmt.Errorf("tlsutil: CA: %w", keyErr)
	}
	cert, err := parseCertPEM(certPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("tlsutil: %s: %w", certPath, err)
	}
	key, err := parseKeyPEM(keyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("tlsutil: %s: %w", keyPath, err)
	}
	if !cert.IsCA {
		return nil, nil, fmt.Errorf("tlsutil: %s is not a CA certificate", certPath)
	}
	if now.After(cert.NotAfter) {
		return nil, nil, fmt.Errorf("tlsutil: the CA in %s expired on %s; remove %s and %s to create a new one",
			dir, cert.NotAfter.Format(time.DateOnly), CAFile, CAKeyFile)
	}
	return cert, key, nil
}

func createCA(dir string, now time.Time) (*x509.Certificate, crypto.Signer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("tlsutil: CA key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: caCommonName, Organization: []string{"Butterfly"}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		SubjectKeyId:          keyID(&key.PublicKey),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("tlsutil: CA certificate: %w", err)
	}
	if err := writePEM(dir, CAKeyFile, key, 0o600); err != nil {
		return nil, nil, err
	}
	if err := writeCertPEM(dir, CAFile, der); err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("tlsutil: CA certificate: %w", err)
	}
	return cert, key, nil
}

func leafTemplate(cn string, hosts []string, now, notAfter time.Time) *x509.Certificate {
	t := &x509.Certificate{
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"Butterfly"}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			t.IPAddresses = append(t.IPAddresses, ip)
		} else {
			t.DNSNames = append(t.DNSNames, h)
		}
	}
	return t
}

// issue signs tmpl with a new key and writes the certificate and the key.
func issue(dir, certFile, keyFile string, tmpl, ca *x509.Certificate, caKey crypto.Signer) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("tlsutil: %s key: %w", certFile, err)
	}
	if tmpl.SerialNumber, err = randomSerial(); err != nil {
		return err
	}
	tmpl.SubjectKeyId = keyID(&key.PublicKey)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("tlsutil: %s: %w", certFile, err)
	}
	// Key first: a reloading reader that sees the new key with the old
	// certificate rejects the pair and keeps the old one until both match.
	if err := writePEM(dir, keyFile, key, 0o600); err != nil {
		return err
	}
	return writeCertPEM(dir, certFile, der)
}

func randomSerial() (*big.Int, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("tlsutil: serial number: %w", err)
	}
	return serial.Add(serial, big.NewInt(1)), nil
}

// keyID is the SHA-1 of the public key, as RFC 5280 section 4.2.1.2 suggests.
func keyID(pub *ecdsa.PublicKey) []byte {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil
	}
	sum := sha1.Sum(der)
	return sum[:]
}

func writePEM(dir, name string, key *ecdsa.PrivateKey, mode os.FileMode) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("tlsutil: %s: %w", name, err)
	}
	return writeFile(dir, name, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), mode)
}

func writeCertPEM(dir, name string, der []byte) error {
	return writeFile(dir, name, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

// writeFile replaces dir/name atomically with data, with mode.
func writeFile(dir, name string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(dir, "."+name+".*")
	if err != nil {
		return fmt.Errorf("tlsutil: %w", err)
	}
	defer os.Remove(tmp.Name()) // fails harmlessly once renamed
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("tlsutil: %w", err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("tlsutil: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("tlsutil: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, name)); err != nil {
		return fmt.Errorf("tlsutil: %w", err)
	}
	return nil
}

// NotAfter returns when the PEM certificate in file expires.
func NotAfter(file string) (time.Time, error) {
	cert, err := readCertFile(file)
	if err != nil {
		return time.Time{}, err
	}
	return cert.NotAfter, nil
}

// readCertFile reads the PEM certificate in file. An error reading the file
// wraps its *fs.PathError.
func readCertFile(file string) (*x509.Certificate, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("tlsutil: %w", err)
	}
	cert, err := parseCertPEM(data)
	if err != nil {
		return nil, fmt.Errorf("tlsutil: %s: %w", file, err)
	}
	return cert, nil
}

func parseCertPEM(data []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM certificate found")
	}
	return x509.ParseCertificate(block.Bytes)
}

func parseKeyPEM(data []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM private key found")
	}
	var key any
	var err error
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("PEM block %q is not a private key", block.Type)
	}
	if err != nil {
		return nil, err
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("private key of type %T cannot sign", key)
	}
	return signer, nil
}

// IssueClient signs tmpl, the template of a client certificate (its subject,
// URIs and validity), with the development CA in pki (the directory
// GenerateDev writes), and writes it with a new key to dir as
// client-cert.pem and client-key.pem. It sets the client usage and the
// serial number. It serves certificates GenerateDev does not write, such as
// an expired one or one with unusual URIs.
func IssueClient(pki, dir string, tmpl *x509.Certificate) (Files, error) {
	ca, caKey, err := loadCA(pki, time.Now())
	if err != nil {
		return Files{}, err
	}
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	const certFile, keyFile = "client-cert.pem", "client-key.pem"
	if err := issue(dir, certFile, keyFile, tmpl, ca, caKey); err != nil {
		return Files{}, err
	}
	return Files{Cert: filepath.Join(dir, certFile), Key: filepath.Join(dir, keyFile), CA: filepath.Join(pki, CAFile)}, nil
}
