package reapi

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/strata-oci/strata/blob"
)

func TestConfigValidation(t *testing.T) {
	tests := []struct {
		desc    string
		cfg     Config
		wantErr string // substring; "" means valid
	}{
		{"plaintext", Config{Endpoint: "grpc://127.0.0.1:8980"}, ""},
		{"tls default port", Config{Endpoint: "grpcs://cache.example.com"}, ""},
		{"tls with options", Config{Endpoint: "grpcs://cache.example.com:443", TLS: TLSConfig{ServerName: "x"}}, ""},
		{"ipv6", Config{Endpoint: "grpc://[::1]:8980"}, ""},
		{"nested instance", Config{Endpoint: "grpc://h:1", Instance: "main/default"}, ""},
		{"empty endpoint", Config{}, "Endpoint is empty"},
		{"http scheme", Config{Endpoint: "http://h:1"}, "scheme"},
		{"no scheme", Config{Endpoint: "h:1"}, "scheme"},
		{"plaintext without port", Config{Endpoint: "grpc://h"}, "needs a port"},
		{"no host", Config{Endpoint: "grpc://:1"}, "no host"},
		{"path", Config{Endpoint: "grpc://h:1/instance"}, "only scheme://host:port"},
		{"credentials in URL", Config{Endpoint: "grpcs://user:pw@h:1"}, "must not carry credentials"},
		{"TLS options on plaintext", Config{Endpoint: "grpc://h:1", TLS: TLSConfig{InsecureSkipVerify: true}}, "plaintext"},
		{"cert without key", Config{Endpoint: "grpcs://h:1", TLS: TLSConfig{CertFile: "c"}}, "together"},
		{"instance with leading slash", Config{Endpoint: "grpc://h:1", Instance: "/x"}, "must not start"},
		{"instance with reserved segment", Config{Endpoint: "grpc://h:1", Instance: "a/blobs"}, "reserved"},
		{"bad compression", Config{Endpoint: "grpc://h:1", Compression: "gzip"}, "Compression"},
		{"negative timeout", Config{Endpoint: "grpc://h:1", CallTimeout: -time.Second}, "negative"},
		{"negative stall timeout", Config{Endpoint: "grpc://h:1", StallTimeout: -time.Second}, "negative"},
		{"tiny batch limit", Config{Endpoint: "grpc://h:1", BatchLimit: 100}, "minimum"},
		{"tiny part size", Config{Endpoint: "grpc://h:1", Parallel: ParallelConfig{PartSize: 1000}}, "PartSize"},
		{"negative parallel streams", Config{Endpoint: "grpc://h:1", Parallel: ParallelConfig{Streams: -1}}, "Streams"},
		{"read-ahead memory below one part", Config{Endpoint: "grpc://h:1", Parallel: ParallelConfig{PartSize: 1 << 20, Memory: 1 << 19}}, "Memory"},
		{"header with space", Config{Endpoint: "grpc://h:1", Headers: map[string]string{"x key": "SECRET1"}}, "header name"},
		{"reserved header", Config{Endpoint: "grpc://h:1", Headers: map[string]string{"grpc-timeout": "SECRET2"}}, "reserved"},
		{"header value with newline", Config{Endpoint: "grpc://h:1", Headers: map[string]string{"x-key": "SECRET3\nb"}}, "printable"},
		{"duplicate header by case", Config{Endpoint: "grpc://h:1", Headers: map[string]string{"X-Key": "SECRET4", "x-key": "SECRET5"}}, "twice"},
		{"missing CA file", Config{Endpoint: "grpcs://h:1", TLS: TLSConfig{CAFile: "/nonexistent/ca.pem"}}, "CAFile"},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			tier, err := New(context.Background(), withFastFail(tt.cfg))
			if tier != nil {
				defer tier.Close()
			}
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("New = %v, want ok", err)
			case tt.wantErr != "" && err == nil:
				t.Fatalf("New succeeded, want error containing %q", tt.wantErr)
			case tt.wantErr != "" && !strings.Contains(err.Error(), tt.wantErr):
				t.Fatalf("New = %v, want error containing %q", err, tt.wantErr)
			}
			if err != nil {
				if strings.Contains(err.Error(), "SECRET") {
					t.Fatalf("error %q shows a header value", err)
				}
			}
		})
	}
}

// withFastFail keeps New from waiting on servers that are not there.
func withFastFail(c Config) Config {
	if c.CallTimeout == 0 {
		c.CallTimeout = 50 * time.Millisecond
	}
	c.Retries.MaxAttempts = 1
	return c
}

// TestNewWithoutServer: New succeeds when the server is down; calls then
// report unavailable.
func TestNewWithoutServer(t *testing.T) {
	f := startFake(t, fakeOptions{})
	ep := f.endpoint()
	f.stop()
	tier, err := New(context.Background(), withFastFail(Config{Endpoint: ep, Instance: "instance"}))
	if err != nil {
		t.Fatalf("New with the server down = %v", err)
	}
	defer tier.Close()
	k := blob.RefKey{Namespace: "tag", Name: "x"}
	if err := tier.PutRef(context.Background(), k, blob.Ref{Digest: blob.EmptyDigest}); !errors.Is(err, blob.ErrUnavailable) {
		t.Fatalf("PutRef with the server down = %v", err)
	}
	if _, err := tier.GetRef(context.Background(), k); !errors.Is(err, blob.ErrUnavailable) {
		t.Fatalf("GetRef with the server down = %v", err)
	}
}

// TestNewIncompatibleServer: a server that answers with an instance the
// fake does not serve is a configuration error at New.
func TestNewIncompatibleServer(t *testing.T) {
	f := startFake(t, fakeOptions{})
	_, err := New(context.Background(), Config{Endpoint: f.endpoint(), Instance: "other"})
	if err == nil || !strings.Contains(err.Error(), "InvalidArgument") {
		t.Fatalf("New with a wrong instance = %v, want the server's InvalidArgument", err)
	}
}

func TestBreaker(t *testing.T) {
	now := time.Unix(0, 0)
	b := newBreaker(BreakerConfig{Failures: 2, CoolDown: time.Minute}, func() time.Time { return now }, slog.New(slog.DiscardHandler), "reapi")
	step := func(desc string, o outcome, wantState BreakerState) {
		t.Helper()
		ok, probe := b.allow()
		if !ok {
			t.Fatalf("%s: call refused", desc)
		}
		b.record(probe, o)
		if s := b.stats().State; s != wantState {
			t.Fatalf("%s: state %v, want %v", desc, s, wantState)
		}
	}
	refused := func(desc string) {
		t.Helper()
		if ok, _ := b.allow(); ok {
			t.Fatalf("%s: call allowed, want refused", desc)
		}
	}
	step("first failure", outcomeFailure, BreakerClosed)
	step("success resets", outcomeSuccess, BreakerClosed)
	step("failure 1", outcomeFailure, BreakerClosed)
	step("neutral says nothing", outcomeNeutral, BreakerClosed)
	step("failure 2 opens", outcomeFailure, BreakerOpen)
	refused("open")
	now = now.Add(59 * time.Second)
	refused("still cooling down")
	now = now.Add(time.Second)
	ok, probe := b.allow()
	if !ok || !probe {
		t.Fatalf("after cool-down: allow = %v, probe = %v", ok, probe)
	}
	refused("while the probe is in flight")
	b.record(true, outcomeNeutral)
	if s := b.stats().State; s != BreakerOpen {
		t.Fatalf("after a neutral probe: %v", s)
	}
	step("probe fails", outcomeFailure, BreakerOpen)
	refused("reopened")
	now = now.Add(time.Minute)
	step("probe succeeds", outcomeSuccess, BreakerClosed)
	if s := b.stats(); s.Opens != 2 || s.Rejected != 4 {
		t.Fatalf("stats %+v, want 2 opens and 4 rejected", s)
	}
	disabled := newBreaker(BreakerConfig{Failures: -1}, time.Now, slog.New(slog.DiscardHandler), "reapi")
	for i := 0; i < 10; i++ {
		disabled.record(false, outcomeFailure)
	}
	if ok, _ := disabled.allow(); !ok {
		t.Fatal("a disabled breaker refused a call")
	}
}

func FuzzParseEndpoint(f *testing.F) {
	for _, s := range []string{"grpc://127.0.0.1:8980", "grpcs://h", "grpc://[::1]:1", "grpcs://u:p@h:1/x?y#z", "http://h:1", "grpc://h:99999999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ep, err := parseEndpoint(s)
		if err != nil {
			return
		}
		if ep.hostport == "" || strings.ContainsAny(ep.hostport, "/?#@") {
			t.Fatalf("parseEndpoint(%q) accepted host:port %q", s, ep.hostport)
		}
	})
}

// TestBreakerLogs: the breaker tells the operator when it opens (Warn) and
// when the server answers again (Info), once per transition.
func TestBreakerLogs(t *testing.T) {
	now := time.Unix(0, 0)
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	b := newBreaker(BreakerConfig{Failures: 2, CoolDown: time.Minute}, func() time.Time { return now }, log, "shared")
	for _, o := range []outcome{outcomeFailure, outcomeFailure} {
		_, probe := b.allow()
		b.record(probe, o)
	}
	if got := strings.Count(buf.String(), "level=WARN"); got != 1 || !strings.Contains(buf.String(), "tier=shared") {
		t.Fatalf("after opening: %d Warn lines, want 1 naming the tier:\n%s", got, buf.String())
	}
	now = now.Add(time.Minute)
	ok, probe := b.allow()
	if !ok || !probe {
		t.Fatalf("after the cool-down: allow = %v, %v; want the probe", ok, probe)
	}
	b.record(probe, outcomeSuccess)
	if got := strings.Count(buf.String(), "level=INFO"); got != 1 {
		t.Fatalf("after recovering: %d Info lines, want 1:\n%s", got, buf.String())
	}
	_, probe = b.allow()
	b.record(probe, outcomeSuccess)
	if n := strings.Count(buf.String(), "\n"); n != 2 {
		t.Fatalf("%d log lines, want 2 (one per transition):\n%s", n, buf.String())
	}
}
