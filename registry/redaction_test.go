package registry

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/strata-oci/strata/blob"
)

// secretMark stands for a credential or a signature; it must never appear
// in an error text.
const secretMark = "Zq9SECRETq9Z"

func TestRedactURL(t *testing.T) {
	for _, tc := range []struct{ desc, in, want string }{
		{"clean URL unchanged", "https://r.example/v2/app/blobs/sha256:ab", "https://r.example/v2/app/blobs/sha256:ab"},
		{"signed query", "https://s3.example/b/o?X-Amz-Signature=" + secretMark + "&X-Amz-Credential=" + secretMark, "https://s3.example/b/o"},
		{"userinfo", "http://u:" + secretMark + "@h.example:5000/p", "http://h.example:5000/p"},
		{"username only", "http://" + secretMark + "@h.example/p", "http://h.example/p"},
		{"masked password", "http://u:***@h.example/p", "http://h.example/p"},
		{"fragment", "http://h.example/p#" + secretMark, "http://h.example/p"},
		{"everything", "http://u:" + secretMark + "@h.example/p?sig=" + secretMark + "#" + secretMark, "http://h.example/p"},
		{"escaped path kept", "http://h.example/a%2Fb/c%20d?sig=" + secretMark, "http://h.example/a%2Fb/c%20d"},
		{"ipv6 host", "http://u:" + secretMark + "@[::1]:8080/p?s=" + secretMark, "http://[::1]:8080/p"},
		{"no path", "http://h.example?sig=" + secretMark, "http://h.example"},
		{"unparsable, query", "http://h.example/%zz?sig=" + secretMark, "http://h.example/%zz"},
		{"unparsable, userinfo", "http://u:" + secretMark + "@h.example/%zz", "http://h.example/%zz"},
		{"unparsable, no path", "http://u:" + secretMark + "@h.example%zz?sig=" + secretMark, "http://h.example%zz"},
		{"opaque", "mailto:" + secretMark + "@h.example", "mailto:..."},
	} {
		if got := redactURL(tc.in); got != tc.want {
			t.Errorf("%s: redactURL(%q) = %q, want %q", tc.desc, tc.in, got, tc.want)
		}
	}
}

func TestRedactText(t *testing.T) {
	for _, tc := range []struct{ desc, in, want string }{
		{"no URL", "dial tcp 127.0.0.1:1: connect: connection refused", "dial tcp 127.0.0.1:1: connect: connection refused"},
		{"url.Error form", `Get "http://h.example/b?X-Amz-Signature=` + secretMark + `": EOF`, `Get "http://h.example/b": EOF`},
		{"bare", "refusing redirect to http://u:" + secretMark + "@h.example/p now", "refusing redirect to http://h.example/p now"},
		{"quoted, white space in the query", `Get "http://h.example/b?s=a ` + secretMark + `": EOF`, `Get "http://h.example/b": EOF`},
		{"quoted, escaped quote in the query", `Get "http://h.example/b?s=\"` + secretMark + `\"": EOF`, `Get "http://h.example/b": EOF`},
		{"two URLs", `a "http://x.example/?k=` + secretMark + `"; b "https://y.example/p#` + secretMark + `"`, `a "http://x.example/"; b "https://y.example/p"`},
		{"URL inside a quoted sentence", `note "see http://h.example/?k=` + secretMark + ` here"`, `note "see http://h.example/ here"`},
		{"quoted non-URL unchanged", `tag "a://" bad`, `tag "a://" bad`},
	} {
		if got := redactText(tc.in); got != tc.want {
			t.Errorf("%s: redactText(%q)\n got %q\nwant %q", tc.desc, tc.in, got, tc.want)
		}
	}
}

// opaqueMulti is an error list that, like ggcr's ping errors, offers Is
// and As but no Unwrap.
type opaqueMulti []error

func (m opaqueMulti) Error() string {
	var s []string
	for _, e := range m {
		s = append(s, e.Error())
	}
	return strings.Join(s, "; ")
}

func (m opaqueMulti) Is(target error) bool {
	for _, e := range m {
		if errors.Is(e, target) {
			return true
		}
	}
	return false
}

func (m opaqueMulti) As(target any) bool {
	for _, e := range m {
		if errors.As(e, target) {
			return true
		}
	}
	return false
}

// timeoutErr is a net.Error that timed out.
type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func TestTransportErrorRedacts(t *testing.T) {
	signed := "http://storage.example/blob?X-Amz-Signature=" + secretMark
	withUser := "http://u:" + secretMark + "@storage.example/blob"
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	denied := fmt.Errorf("%w: 10.0.0.1 is in 10.0.0.0/8", ErrDeniedAddress)
	type check func(t *testing.T, err error)
	is := func(target error) check {
		return func(t *testing.T, err error) {
			if !errors.Is(err, target) {
				t.Errorf("errors.Is(%v) = false", target)
			}
		}
	}
	urlErrAs := func(wantURL string) check {
		return func(t *testing.T, err error) {
			var ue *url.Error
			if !errors.As(err, &ue) {
				t.Fatal("errors.As(*url.Error) = false")
			}
			if ue.URL != wantURL {
				t.Errorf("url.Error.URL = %q, want %q", ue.URL, wantURL)
			}
			if strings.Contains(ue.Error(), secretMark) {
				t.Errorf("url.Error from errors.As leaks: %v", ue)
			}
		}
	}
	timeout := func(t *testing.T, err error) {
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Errorf("no timing-out net.Error in the chain any more")
		}
	}
	for _, tc := range []struct {
		desc   string
		err    func() error
		checks []check
	}{
		{"url.Error: signed query, connection refused",
			func() error { return &url.Error{Op: "Get", URL: signed, Err: refused} },
			[]check{is(ErrUnreachable), is(blob.ErrUnavailable), is(syscall.ECONNREFUSED), urlErrAs("http://storage.example/blob")}},
		{"url.Error: userinfo",
			func() error { return &url.Error{Op: "Get", URL: withUser, Err: refused} },
			[]check{is(ErrUnreachable), urlErrAs("http://storage.example/blob")}},
		{"url.Error: policy denial keeps ErrDeniedAddress",
			func() error { return &url.Error{Op: "Get", URL: signed, Err: denied} },
			[]check{is(ErrDeniedAddress), urlErrAs("http://storage.example/blob")}},
		{"url.Error: cancellation keeps context.Canceled",
			func() error { return &url.Error{Op: "Get", URL: signed, Err: context.Canceled} },
			[]check{is(context.Canceled), urlErrAs("http://storage.example/blob")}},
		{"url.Error: timeout stays a timeout",
			func() error { return &url.Error{Op: "Get", URL: signed, Err: timeoutErr{}} },
			[]check{is(ErrUnreachable), timeout, urlErrAs("http://storage.example/blob")}},
		{"url.Error whose cause holds the Location",
			func() error {
				return &url.Error{Op: "Get", URL: signed, Err: fmt.Errorf("failed to parse Location header %q: bad", signed)}
			},
			[]check{is(ErrUnreachable), urlErrAs("http://storage.example/blob")}},
		{"url.Error wrapped by the token exchange",
			func() error {
				return fmt.Errorf("fetching token: %w", &url.Error{Op: "Get", URL: signed, Err: timeoutErr{}})
			},
			[]check{is(ErrUnreachable), timeout, urlErrAs("http://storage.example/blob")}},
		{"errors.Join of two url.Errors",
			func() error {
				return errors.Join(&url.Error{Op: "Get", URL: signed, Err: refused}, &url.Error{Op: "Get", URL: withUser, Err: context.Canceled})
			},
			[]check{is(context.Canceled), is(syscall.ECONNREFUSED), urlErrAs("http://storage.example/blob")}},
		{"opaque list without Unwrap",
			func() error {
				return opaqueMulti{&url.Error{Op: "Get", URL: "https://a.example/v2/?t=" + secretMark, Err: refused}, &url.Error{Op: "Get", URL: withUser, Err: refused}}
			},
			[]check{is(ErrUnreachable), is(syscall.ECONNREFUSED), urlErrAs("https://a.example/v2/")}},
		{"URL only in the text",
			func() error { return fmt.Errorf("refusing token-server redirect to %q: %w", signed, ErrProtocol) },
			[]check{is(ErrUnreachable), is(ErrProtocol)}},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			orig := tc.err()
			before := orig.Error()
			err := transportError("GET blob", "r.example", "app", orig)
			for _, s := range []string{err.Error(), fmt.Sprintf("%+v", err), fmt.Sprintf("%v", err), fmt.Sprintf("%s", err)} {
				if strings.Contains(s, secretMark) {
					t.Errorf("error text leaks the secret: %s", s)
				}
			}
			if !strings.Contains(err.Error(), "storage.example") && !strings.Contains(err.Error(), "a.example") {
				t.Errorf("error lost the host: %v", err)
			}
			for _, c := range tc.checks {
				c(t, err)
			}
			if orig.Error() != before {
				t.Errorf("the original error was modified: %q became %q", before, orig.Error())
			}
		})
	}
}

// An error without URLs goes through untouched.
func TestRedactErrorKeepsCleanErrors(t *testing.T) {
	for _, err := range []error{
		ErrDenied,
		&url.Error{Op: "Get", URL: "https://r.example/v2/", Err: eofErr{}},
		fmt.Errorf("dial: %w", syscall.ECONNRESET),
	} {
		if got := redactError(err); got != err {
			t.Errorf("redactError(%v) = %v, a new error", err, got)
		}
	}
	if redactError(nil) != nil {
		t.Error("redactError(nil) != nil")
	}
}

type eofErr struct{}

func (eofErr) Error() string { return "EOF" }

// One error shared by several goroutines (a deduplicated token fetch) is
// redacted by each without a data race (run with -race) and without change.
func TestRedactSharedError(t *testing.T) {
	shared := fmt.Errorf("token: %w", &url.Error{Op: "Get", URL: "http://h.example/t?sig=" + secretMark, Err: context.Canceled})
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = transportError("GET blob", "r.example", "app", shared)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if strings.Contains(err.Error(), secretMark) || !errors.Is(err, context.Canceled) {
			t.Errorf("bad redaction: %v", err)
		}
	}
	var ue *url.Error
	if !errors.As(shared, &ue) || !strings.Contains(ue.URL, secretMark) {
		t.Error("the shared error was modified")
	}
}

// A blob redirect to a signed URL on an address the policy denies: the
// error says so, names no secret, and errors.As finds a redacted url.Error.
func TestRedirectToDeniedSignedURLRedacted(t *testing.T) {
	reg := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			w.WriteHeader(http.StatusOK)
			return
		}
		http.Redirect(w, r, "http://u:"+secretMark+"@10.255.255.1:9/blob?X-Amz-Signature="+secretMark, http.StatusTemporaryRedirect)
	}))
	t.Cleanup(reg.Close)
	m := prometheus.NewRegistry()
	c, err := New(Config{AllowCIDRs: []string{"127.0.0.0/8"}, Proxy: NoProxy, Metrics: m, MaxAttempts: 1,
		Sleep: func(context.Context, time.Duration) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	repo, err := ParseRepository(strings.TrimPrefix(reg.URL, "http://") + "/app")
	if err != nil {
		t.Fatal(err)
	}
	d := blob.FromBytes([]byte("x"))
	rc, err := c.Blob(context.Background(), repo, d, 1, authn.Anonymous)
	if err == nil {
		rc.Close()
		t.Fatal("redirect to a denied address succeeded")
	}
	if !errors.Is(err, ErrDeniedAddress) {
		t.Errorf("error does not wrap ErrDeniedAddress: %v", err)
	}
	if strings.Contains(fmt.Sprintf("%+v", err), secretMark) {
		t.Errorf("error leaks the secret: %v", err)
	}
	if !strings.Contains(err.Error(), "http://10.255.255.1:9/blob") {
		t.Errorf("error should still name the redacted target: %v", err)
	}
	var ue *url.Error
	if !errors.As(err, &ue) || ue.URL != "http://10.255.255.1:9/blob" {
		t.Errorf("errors.As(*url.Error) = %v", ue)
	}
	mfs, err := m.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, mt := range mf.GetMetric() {
			for _, lp := range mt.GetLabel() {
				if strings.Contains(lp.GetValue(), secretMark) {
					t.Errorf("metric %s label %s leaks the secret", mf.GetName(), lp.GetName())
				}
			}
		}
	}
}

// Whatever surrounds it, a secret in a URL's query, fragment or userinfo
// does not survive redaction, whether the url.Error is on top or deep in
// the chain.
func FuzzRedactURLError(f *testing.F) {
	f.Add("blob", "X-Amz-Signature=", "u")
	f.Add("a%2Fb/c d", "s=\"", "u:p")
	f.Add("%zz", "a b#c", "")
	f.Add("p@q/r", "?", "x@y")
	f.Fuzz(func(t *testing.T, path, query, user string) {
		for _, raw := range []string{
			"http://h.example/" + path + "?" + query + secretMark,
			"http://h.example/" + path + "#" + query + secretMark,
			"http://" + strings.NewReplacer("/", "", "?", "", "#", "").Replace(user) + secretMark + "@h.example/" + strings.NewReplacer("?", "", "#", "").Replace(path),
		} {
			ue := &url.Error{Op: "Get", URL: raw, Err: context.Canceled}
			for _, err := range []error{ue, fmt.Errorf("token: %w", ue)} {
				got := redactError(err)
				if strings.Contains(got.Error(), secretMark) {
					t.Fatalf("redactError(%q) = %q", err.Error(), got.Error())
				}
				if !errors.Is(got, context.Canceled) {
					t.Fatalf("redactError lost context.Canceled: %v", got)
				}
			}
		}
	})
}
