package registry

import (
	"errors"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestNetPolicy(t *testing.T) {
	tests := []struct {
		desc  string
		ip    string
		allow []string
		deny  bool
	}{
		{"public v4", "93.184.216.34", nil, false},
		{"public v6", "2606:4700::1111", nil, false},
		{"loopback", "127.0.0.1", nil, true},
		{"loopback high", "127.255.0.9", nil, true},
		{"loopback v6", "::1", nil, true},
		{"rfc1918 10", "10.1.2.3", nil, true},
		{"rfc1918 172.16", "172.31.255.255", nil, true},
		{"172.32 is public", "172.32.0.1", nil, false},
		{"rfc1918 192.168", "192.168.0.1", nil, true},
		{"unique local v6", "fd12::1", nil, true},
		{"link-local", "169.254.1.1", nil, true},
		{"metadata service", "169.254.169.254", nil, true},
		{"link-local v6", "fe80::1", nil, true},
		{"cgnat", "100.64.0.1", nil, true},
		{"cgnat top", "100.127.255.254", nil, true},
		{"just outside cgnat", "100.128.0.1", nil, false},
		{"unspecified", "0.0.0.0", nil, true},
		{"unspecified v6", "::", nil, true},
		{"multicast", "224.0.0.1", nil, true},
		{"multicast v6", "ff02::1", nil, true},
		{"broadcast", "255.255.255.255", nil, true},
		{"ipv4-mapped loopback", "::ffff:127.0.0.1", nil, true},
		{"ipv4-mapped metadata", "::ffff:169.254.169.254", nil, true},
		{"ipv4-mapped private", "::ffff:10.0.0.1", nil, true},
		{"nat64 of private", "64:ff9b::10.0.0.1", nil, true},
		{"nat64 of public", "64:ff9b::93.184.216.34", nil, false},
		{"loopback allowed", "127.0.0.1", []string{"127.0.0.0/8"}, false},
		{"mapped loopback allowed by v4 cidr", "::ffff:127.0.0.1", []string{"127.0.0.0/8"}, false},
		{"allow does not open others", "10.0.0.1", []string{"127.0.0.0/8"}, true},
		{"private range allowed", "10.9.8.7", []string{"10.9.0.0/16"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			p, err := newNetPolicy(tt.allow)
			if err != nil {
				t.Fatal(err)
			}
			err = p.check(netip.MustParseAddr(tt.ip))
			if tt.deny != (err != nil) {
				t.Fatalf("check(%s) = %v, want denied %v", tt.ip, err, tt.deny)
			}
			if err != nil && (!errors.Is(err, ErrDeniedAddress) || !strings.Contains(err.Error(), netip.MustParseAddr(tt.ip).Unmap().String())) {
				t.Fatalf("error %q must wrap ErrDeniedAddress and name the IP", err)
			}
			// The dialer hook sees "ip:port".
			cerr := p.control("tcp", netip.AddrPortFrom(netip.MustParseAddr(tt.ip), 443).String(), nil)
			if (cerr != nil) != tt.deny {
				t.Fatalf("control = %v", cerr)
			}
		})
	}
	if _, err := newNetPolicy([]string{"not-a-cidr"}); err == nil {
		t.Fatal("bad CIDR accepted")
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		desc string
		in   string
		want time.Duration
		ok   bool
	}{
		{"seconds", "120", 2 * time.Minute, true},
		{"zero", "0", 0, true},
		{"padded", " 3 ", 3 * time.Second, true},
		{"http date", now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second, true},
		{"past date", now.Add(-time.Hour).Format(http.TimeFormat), 0, true},
		{"negative", "-1", 0, false},
		{"garbage", "soon", 0, false},
		{"empty", "", 0, false},
		{"huge is clamped", "99999999999", 24 * time.Hour, true},
	}
	for _, tt := range tests {
		got, ok := parseRetryAfter(tt.in, now)
		if got != tt.want || ok != tt.ok {
			t.Errorf("%s: parseRetryAfter(%q) = %v %v, want %v %v", tt.desc, tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

func TestBackoff(t *testing.T) {
	for attempt, want := range []time.Duration{100, 200, 400, 800, 1000, 1000} {
		want *= time.Millisecond
		for i := 0; i < 50; i++ {
			d := backoff(100*time.Millisecond, time.Second, attempt+1)
			if d < want/2 || d > want {
				t.Fatalf("attempt %d: backoff %v outside [%v, %v]", attempt+1, d, want/2, want)
			}
		}
	}
}

func TestParseContentRange(t *testing.T) {
	tests := []struct {
		desc             string
		in               string
		start, end, size int64
		ok               bool
	}{
		{"full", "bytes 10-99/100", 10, 99, 100, true},
		{"unknown size", "bytes 0-4/*", 0, 4, -1, true},
		{"end before start", "bytes 9-1/100", 0, 0, 0, false},
		{"size too small", "bytes 0-99/99", 0, 0, 0, false},
		{"wrong unit", "items 0-1/2", 0, 0, 0, false},
		{"missing size", "bytes 0-1", 0, 0, 0, false},
		{"negative", "bytes -1-2/5", 0, 0, 0, false},
	}
	for _, tt := range tests {
		s, e, z, err := parseContentRange(tt.in)
		if (err == nil) != tt.ok || tt.ok && (s != tt.start || e != tt.end || z != tt.size) {
			t.Errorf("%s: parseContentRange(%q) = %d %d %d %v", tt.desc, tt.in, s, e, z, err)
		}
	}
}

func FuzzParseContentRange(f *testing.F) {
	for _, s := range []string{"bytes 0-1/2", "bytes 5-9/*", "bytes 1-0/3", "bytes -/", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		start, end, size, err := parseContentRange(s)
		if err != nil {
			return
		}
		if start < 0 || end < start || (size != -1 && size <= end) {
			t.Fatalf("parseContentRange(%q) = %d %d %d", s, start, end, size)
		}
	})
}

func FuzzParseRetryAfter(f *testing.F) {
	for _, s := range []string{"5", "Fri, 02 Jan 2026 03:05:35 GMT", "-1", "x", "99999999999999999999"} {
		f.Add(s)
	}
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	f.Fuzz(func(t *testing.T, s string) {
		d, ok := parseRetryAfter(s, now)
		if d < 0 || (!ok && d != 0) {
			t.Fatalf("parseRetryAfter(%q) = %v %v", s, d, ok)
		}
	})
}
