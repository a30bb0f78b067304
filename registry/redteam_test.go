package registry

import (
	"context"
	"errors"
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
		{"local-use nat64 of the metadata service", "64:ff9b:1::a9fe:a9fe"},
		{"local-use nat64 of RFC 1918", "64:ff9b:1::a00:1"},
		{"site-local", "fec0::1"},
	} {
		if err := p.check(netip.MustParseAddr(tc.ip)); err == nil {
			t.Errorf("%s (%s) allowed", tc.desc, tc.ip)
		}
	}
}

// Prefixes that lead into local networks by another route (local-use
// NAT64, site-local, 6to4 of a denied IPv4, IPv4-compatible), and that
// Config.AllowCIDRs still opens them.
func TestNetPolicyLocalRoutes(t *testing.T) {
	for _, tc := range []struct {
		desc  string
		ip    string
		allow []string
		deny  bool
	}{
		{"local-use nat64, /96 form of the metadata service", "64:ff9b:1::a9fe:a9fe", nil, true},
		{"local-use nat64, /96 form of RFC 1918", "64:ff9b:1::a00:1", nil, true},
		{"local-use nat64, /48 form (RFC 6052) of loopback", "64:ff9b:1:7f00:0:100::", nil, true},
		{"local-use nat64 of a public address is still local", "64:ff9b:1::5db8:d822", nil, true},
		{"local-use nat64 opened by its prefix", "64:ff9b:1::a00:1", []string{"64:ff9b:1::/48"}, false},
		{"local-use nat64 not opened by the embedded v4", "64:ff9b:1::a00:1", []string{"10.0.0.0/8"}, true},
		{"just past local-use nat64", "64:ff9b:2::a00:1", nil, false},
		{"well-known nat64 opened by the embedded v4", "64:ff9b::10.0.0.1", []string{"10.0.0.0/8"}, false},
		{"site-local", "fec0::1", nil, true},
		{"site-local top", "feff:ffff::1", nil, true},
		{"site-local zoned", "fec0::1%eth0", nil, true},
		{"site-local opened", "fec0::1", []string{"fec0::/10"}, false},
		{"6to4 of loopback", "2002:7f00:1::1", nil, true},
		{"6to4 of RFC 1918", "2002:a00:1::", nil, true},
		{"6to4 of the metadata service", "2002:a9fe:a9fe::1", nil, true},
		{"6to4 of unspecified", "2002::1", nil, true},
		{"6to4 of a public address", "2002:5db8:d822::1", nil, false},
		{"6to4 opened by the embedded v4", "2002:7f00:1::1", []string{"127.0.0.0/8"}, false},
		{"6to4 opened by its v6 prefix", "2002:a00:1::", []string{"2002:a00::/24"}, false},
		{"unspecified", "::", nil, true},
		{"loopback", "::1", nil, true},
		{"loopback opened", "::1", []string{"::1/128"}, false},
		{"ipv4-compatible loopback", "::127.0.0.1", nil, true},
		{"ipv4-compatible public", "::93.184.216.34", nil, true},
		{"ipv4-compatible opened", "::127.0.0.1", []string{"::/96"}, false},
	} {
		p, err := newNetPolicy(tc.allow)
		if err != nil {
			t.Fatal(err)
		}
		ip := netip.MustParseAddr(tc.ip)
		err = p.check(ip)
		if (err != nil) != tc.deny {
			t.Errorf("%s: check(%s) with allow %v = %v, want denied %v", tc.desc, tc.ip, tc.allow, err, tc.deny)
			continue
		}
		if err != nil && (!errors.Is(err, ErrDeniedAddress) || !strings.Contains(err.Error(), ip.WithZone("").String())) {
			t.Errorf("%s: error %q must wrap ErrDeniedAddress and name the IP", tc.desc, err)
		}
		if cerr := p.control("tcp", netip.AddrPortFrom(ip, 443).String(), nil); (cerr != nil) != tc.deny {
			t.Errorf("%s: control = %v", tc.desc, cerr)
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
// the secrets, nor the caller's password.
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
		"userinfo, dead host":      "http://storage:" + secret + "@" + dead + "/blob",
		"signed query, dead host":  "http://" + dead + "/blob?X-Amz-Signature=" + secret + "&X-Amz-Credential=" + secret,
		"signed query, 403":        storage.URL + "/blob?X-Amz-Signature=" + secret,
		"userinfo, 403":            "http://u:" + secret + "@" + strings.TrimPrefix(storage.URL, "http://") + "/blob",
		"username only, dead host": "http://" + secret + "@" + dead + "/blob",
		"fragment, dead host":      "http://" + dead + "/blob#" + secret,
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
