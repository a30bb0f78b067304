package registry

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/strata-oci/strata/blob"
)

// Red-team regression tests for the registry client.

// Address forms that reach a denied range by another spelling.
func TestRedteamNetPolicyForms(t *testing.T) {
	p, err := newNetPolicy(nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ desc, ip string }{
		{"nat64 of the metadata service", "64:ff9b::169.254.169.254"},
		{"nat64 of loopback", "64:ff9b::127.0.0.1"},
		{"nat64 of CGNAT", "64:ff9b::100.64.0.1"},
		{"mapped unspecified", "::ffff:0.0.0.0"},
		{"mapped broadcast", "::ffff:255.255.255.255"},
		{"zoned link-local", "fe80::1%eth0"},
		{"zoned unique local", "fd00::1%1"},
		{"aws metadata v6", "fd00:ec2::254"},
	} {
		if err := p.check(netip.MustParseAddr(tc.ip)); err == nil {
			t.Errorf("%s (%s) allowed", tc.desc, tc.ip)
		}
	}
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// A blob redirect to a storage URL carrying secrets (userinfo, a signed
// query) that then fails: neither the error nor any metric label holds
// the secrets, nor the caller's password. (A signed query to a host that
// cannot be reached still leaks through the url.Error: see the red-team
// report; add that case here once fixed.)
func TestRedteamRedirectSecretsNotInErrors(t *testing.T) {
	const secret = "TOPSECRET-s1gn4ture"
	const password = "caller-PASSWORD-9"
	dead := closedPort(t)
	var storage *httptest.Server
	storage = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "expired "+r.URL.RawQuery, http.StatusForbidden)
	}))
	t.Cleanup(storage.Close)
	targets := map[string]string{
		"userinfo, dead host": "http://storage:" + secret + "@" + dead + "/blob",
		"signed query, 403":   storage.URL + "/blob?X-Amz-Signature=" + secret,
		"userinfo, 403":       "http://u:" + secret + "@" + strings.TrimPrefix(storage.URL, "http://") + "/blob",
	}
	var target string
	reg := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			w.WriteHeader(http.StatusOK)
			return
		}
		http.Redirect(w, r, target, http.StatusTemporaryRedirect)
	}))
	t.Cleanup(reg.Close)
	host := strings.TrimPrefix(reg.URL, "http://")

	for desc, tgt := range targets {
		t.Run(desc, func(t *testing.T) {
			target = tgt
			m := prometheus.NewRegistry()
			c, err := New(Config{AllowCIDRs: []string{"127.0.0.0/8"}, Proxy: NoProxy, Metrics: m, MaxAttempts: 1,
				Sleep: func(context.Context, time.Duration) error { return nil }})
			if err != nil {
				t.Fatal(err)
			}
			repo, err := ParseRepository(host + "/app")
			if err != nil {
				t.Fatal(err)
			}
			d := blob.FromBytes([]byte("x"))
			rc, err := c.Blob(context.Background(), repo, d, 1, &authn.Basic{Username: "alice", Password: password})
			if err == nil {
				rc.Close()
				t.Fatal("blob through a broken redirect succeeded")
			}
			for _, s := range []string{secret, password} {
				if strings.Contains(err.Error(), s) || strings.Contains(fmt.Sprintf("%+v", err), s) {
					t.Errorf("error leaks %q: %v", s, err)
				}
			}
			mfs, err := m.Gather()
			if err != nil {
				t.Fatal(err)
			}
			for _, mf := range mfs {
				for _, mt := range mf.GetMetric() {
					for _, lp := range mt.GetLabel() {
						if strings.Contains(lp.GetValue(), secret) || strings.Contains(lp.GetValue(), password) {
							t.Errorf("metric %s label %s leaks a secret", mf.GetName(), lp.GetName())
						}
					}
				}
			}
		})
	}
}
