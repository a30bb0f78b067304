package reapi

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/credentials"

	"github.com/strata-oci/strata/blob"
)

// testPKI is a CA with a server and a client certificate, written as PEM
// files.
type testPKI struct {
	caFile, certFile, keyFile string
	serverTLS                 *tls.Config
}

func newTestPKI(t *testing.T) testPKI {
	t.Helper()
	dir := t.TempDir()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "strata test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	issue := func(serial int64, cn string, usage x509.ExtKeyUsage) (tls.Certificate, []byte, []byte) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			DNSNames: []string{cn}, ExtKeyUsage: []x509.ExtKeyUsage{usage}, KeyUsage: x509.KeyUsageDigitalSignature}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kder, _ := x509.MarshalECPrivateKey(key)
		certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
		keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
		pair, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		return pair, certPEM, keyPEM
	}
	serverPair, _, _ := issue(2, "reapi.test", x509.ExtKeyUsageServerAuth)
	_, clientCert, clientKey := issue(3, "executor", x509.ExtKeyUsageClientAuth)
	p := testPKI{caFile: filepath.Join(dir, "ca.pem"), certFile: filepath.Join(dir, "client.pem"), keyFile: filepath.Join(dir, "client-key.pem")}
	for name, data := range map[string][]byte{
		p.caFile:   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		p.certFile: clientCert,
		p.keyFile:  clientKey,
	} {
		if err := os.WriteFile(name, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	p.serverTLS = &tls.Config{Certificates: []tls.Certificate{serverPair}, ClientAuth: tls.RequireAndVerifyClientCert,
		ClientCAs: pool, MinVersion: tls.VersionTLS12}
	return p
}

// TestTLS: grpcs:// with a private CA, server name override and a client
// certificate; every missing piece makes the server unavailable, not a miss.
func TestTLS(t *testing.T) {
	pki := newTestPKI(t)
	f := startFake(t, fakeOptions{creds: credentials.NewTLS(pki.serverTLS)})
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(f.endpoint(), "grpc://"))
	endpoint := "grpcs://127.0.0.1:" + port
	good := TLSConfig{CAFile: pki.caFile, CertFile: pki.certFile, KeyFile: pki.keyFile, ServerName: "reapi.test"}
	tests := []struct {
		desc string
		tls  TLSConfig
		ok   bool
	}{
		{"private CA, server name, client certificate", good, true},
		{"insecure skip verify with client certificate", TLSConfig{CertFile: pki.certFile, KeyFile: pki.keyFile, InsecureSkipVerify: true}, true},
		{"no client certificate", TLSConfig{CAFile: pki.caFile, ServerName: "reapi.test"}, false},
		{"system roots", TLSConfig{CertFile: pki.certFile, KeyFile: pki.keyFile, ServerName: "reapi.test"}, false},
		{"wrong server name", TLSConfig{CAFile: pki.caFile, CertFile: pki.certFile, KeyFile: pki.keyFile, ServerName: "other.test"}, false},
	}
	for i, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			tier, err := New(context.Background(), Config{Endpoint: endpoint, Instance: "instance", TLS: tt.tls,
				CallTimeout: 2 * time.Second, Retries: RetryConfig{MaxAttempts: 1}})
			if err != nil {
				t.Fatalf("New = %v", err)
			}
			defer tier.Close()
			data := []byte("over tls " + tt.desc)
			d := blob.FromBytes(data)
			err = tier.Put(context.Background(), d, int64(len(data)), bytes.NewReader(data))
			if !tt.ok {
				if !errors.Is(err, blob.ErrUnavailable) {
					t.Fatalf("Put = %v, want ErrUnavailable", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Put = %v", err)
			}
			if got := readAll(t, tier, d); !bytes.Equal(got, data) {
				t.Fatalf("case %d: read back %q", i, got)
			}
		})
	}
}
