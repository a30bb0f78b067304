package manifest_test

import (
	"errors"
	"runtime"
	"strings"
	"testing"

	"github.com/strata-oci/strata/manifest"
)

func TestParsePlatform(t *testing.T) {
	tests := []struct {
		desc string
		in   string
		want string // normalized String(); empty means an error is expected
		msg  string // for errors: must appear in the message
	}{
		{"os/arch", "linux/amd64", "linux/amd64", ""},
		{"arm64 gets default variant v8", "linux/arm64", "linux/arm64/v8", ""},
		{"aarch64 alias", "linux/aarch64", "linux/arm64/v8", ""},
		{"arm64 v8 explicit", "linux/arm64/v8", "linux/arm64/v8", ""},
		{"arm64 variant 8.0", "linux/arm64/v8.0", "linux/arm64/v8", ""},
		{"arm default v7", "linux/arm", "linux/arm/v7", ""},
		{"arm variant without v", "linux/arm/6", "linux/arm/v6", ""},
		{"armhf", "linux/armhf", "linux/arm/v7", ""},
		{"armel", "linux/armel", "linux/arm/v6", ""},
		{"x86_64 alias", "linux/x86_64", "linux/amd64", ""},
		{"amd64 v1 is no variant", "linux/amd64/v1", "linux/amd64", ""},
		{"amd64 v3 kept", "linux/amd64/v3", "linux/amd64/v3", ""},
		{"i386", "linux/i386", "linux/386", ""},
		{"upper case", "Linux/AMD64", "linux/amd64", ""},
		{"macos", "macos/arm64", "darwin/arm64/v8", ""},
		{"windows with os.version", "windows/amd64:10.0.17763.1234", "windows/amd64:10.0.17763.1234", ""},
		{"empty", "", "", "missing architecture"},
		{"os only", "linux", "", "missing architecture"},
		{"empty os", "/amd64", "", "empty os"},
		{"empty arch", "linux/", "", "empty architecture"},
		{"empty variant", "linux/arm/", "", "empty variant"},
		{"too many parts", "linux/arm/v7/extra", "", "too many parts"},
		{"space", "linux/amd 64", "", "malformed architecture"},
		{"empty os.version", "windows/amd64:", "", "malformed os.version"},
		{"bad os.version", "windows/amd64:10 0", "", "malformed os.version"},
		{"path traversal", "../../etc", "", "malformed os"},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			p, err := manifest.ParsePlatform(tt.in)
			if tt.want == "" {
				if !errors.Is(err, manifest.ErrInvalidPlatform) || !strings.Contains(err.Error(), tt.msg) {
					t.Fatalf("ParsePlatform(%q) = %v, %v; want error mentioning %q", tt.in, p, err, tt.msg)
				}
				return
			}
			if err != nil || p.String() != tt.want {
				t.Fatalf("ParsePlatform(%q) = %v, %v; want %s", tt.in, p, err, tt.want)
			}
		})
	}
}

func TestDefaultPlatform(t *testing.T) {
	p := manifest.Default()
	if p.OS != runtime.GOOS {
		t.Errorf("Default().OS = %q, want %q", p.OS, runtime.GOOS)
	}
	want := map[string]string{"amd64": "amd64", "arm64": "arm64", "arm": "arm", "386": "386", "s390x": "s390x"}[runtime.GOARCH]
	if want != "" && p.Architecture != want {
		t.Errorf("Default().Architecture = %q, want %q", p.Architecture, want)
	}
	if runtime.GOOS == "linux" && runtime.GOARCH == "amd64" && p.String() != "linux/amd64" {
		t.Errorf("Default() = %s on linux/amd64", p)
	}
}

func TestMatch(t *testing.T) {
	pl := func(s string, feats ...string) manifest.Platform {
		p, err := manifest.ParsePlatform(s)
		if err != nil {
			t.Fatal(err)
		}
		p.Features = feats
		return p
	}
	raw := func(os, arch, variant string) manifest.Platform {
		return manifest.Platform{OS: os, Architecture: arch, Variant: variant}
	}
	tests := []struct {
		desc       string
		want, have manifest.Platform
		match      bool
	}{
		{"same", pl("linux/amd64"), pl("linux/amd64"), true},
		{"other arch", pl("linux/amd64"), pl("linux/arm64"), false},
		{"other os", pl("linux/amd64"), pl("windows/amd64"), false},
		{"arm64 without variant in index matches v8", pl("linux/arm64/v8"), raw("linux", "arm64", ""), true},
		{"aarch64 in index matches arm64", pl("linux/arm64"), raw("linux", "aarch64", "8"), true},
		{"arm v7 want does not match v6 image (exact)", pl("linux/arm/v7"), pl("linux/arm/v6"), false},
		{"arm v7 want matches arm without variant", pl("linux/arm/v7"), raw("linux", "arm", ""), true},
		{"amd64 want does not match v3 image", pl("linux/amd64"), pl("linux/amd64/v3"), false},
		{"wanted os.version exact", pl("windows/amd64:10.0.17763.6054"), pl("windows/amd64:10.0.17763.6054"), true},
		{"windows same build, other revision", pl("windows/amd64:10.0.17763.1"), pl("windows/amd64:10.0.17763.6054"), true},
		{"windows other build", pl("windows/amd64:10.0.20348.1"), pl("windows/amd64:10.0.17763.6054"), false},
		{"wanted os.version, image has none", pl("windows/amd64:10.0.17763.1"), pl("windows/amd64"), false},
		{"no wanted os.version matches any", pl("windows/amd64"), pl("windows/amd64:10.0.17763.6054"), true},
		{"linux os.version must be exact", manifest.Platform{OS: "linux", Architecture: "amd64", OSVersion: "5.15.1"}, manifest.Platform{OS: "linux", Architecture: "amd64", OSVersion: "5.15.2"}, false},
		{"wanted features present", pl("linux/amd64", "sse4"), pl("linux/amd64", "avx", "sse4"), true},
		{"wanted feature missing", pl("linux/amd64", "avx512"), pl("linux/amd64", "sse4"), false},
		{"extra image features are fine", pl("linux/amd64"), pl("linux/amd64", "sse4"), true},
		{"wanted os.features present", manifest.Platform{OS: "windows", Architecture: "amd64", OSFeatures: []string{"win32k"}}, manifest.Platform{OS: "windows", Architecture: "amd64", OSFeatures: []string{"win32k"}}, true},
		{"wanted os.features missing", manifest.Platform{OS: "windows", Architecture: "amd64", OSFeatures: []string{"win32k"}}, manifest.Platform{OS: "windows", Architecture: "amd64"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			if got := manifest.Match(tt.want, tt.have); got != tt.match {
				t.Fatalf("Match(%v, %v) = %v, want %v", tt.want, tt.have, got, tt.match)
			}
		})
	}
}

func TestSelect(t *testing.T) {
	hub, err := manifest.ParseIndex("", fixture(t, "dockerhub-list.json"))
	if err != nil {
		t.Fatal(err)
	}
	bk, err := manifest.ParseIndex("", fixture(t, "buildkit-index.json"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		desc  string
		ix    *manifest.Index
		want  manifest.Platform
		entry int    // index of the expected entry; -1 for no match
		msg   string // for no match: must appear in the error
	}{
		{"hub amd64", hub, mustPlatform(t, "linux/amd64"), 0, ""},
		{"hub arm64 (entry says v8)", hub, mustPlatform(t, "linux/arm64"), 3, ""},
		{"hub arm/v7", hub, mustPlatform(t, "linux/arm/v7"), 2, ""},
		{"hub arm/v6 falls back to v5", hub, mustPlatform(t, "linux/arm/v6"), 1, ""},
		{"hub arm/v8 prefers v7 over v5", hub, mustPlatform(t, "linux/arm/v8"), 2, ""},
		{"hub arm64/v9 falls back to v8", hub, mustPlatform(t, "linux/arm64/v9"), 3, ""},
		{"hub s390x", hub, mustPlatform(t, "linux/s390x"), 6, ""},
		{"hub windows ltsc2022 by os.version", hub, mustPlatform(t, "windows/amd64:10.0.20348.1000"), 7, ""},
		{"hub windows 1809 by os.version", hub, mustPlatform(t, "windows/amd64:10.0.17763.1"), 8, ""},
		{"hub windows without os.version takes the first", hub, mustPlatform(t, "windows/amd64"), 7, ""},
		{"hub amd64/v3 falls back to plain amd64", hub, mustPlatform(t, "linux/amd64/v3"), 0, ""},
		{"hub attestation never selected", hub, manifest.Platform{OS: "unknown", Architecture: "unknown"}, -1, "linux/s390x, windows/amd64:10.0.20348.2582"},
		{"hub riscv64 missing", hub, mustPlatform(t, "linux/riscv64"), -1, "linux/arm/v5, linux/arm/v7, linux/arm64/v8"},
		{"hub windows unknown build", hub, mustPlatform(t, "windows/amd64:10.0.26100.1"), -1, "windows/amd64:10.0.17763.6054"},
		{"buildkit arm64 entry without variant", bk, mustPlatform(t, "linux/arm64/v8"), 1, ""},
		{"buildkit attestation never selected", bk, manifest.Platform{OS: "unknown", Architecture: "unknown"}, -1, "offers linux/amd64, linux/arm64/v8, linux/arm/v7, linux/s390x"},
		{"buildkit ppc64le missing", bk, mustPlatform(t, "linux/ppc64le"), -1, "want linux/ppc64le"},
		{"buildkit arm/v6 cannot run v7", bk, mustPlatform(t, "linux/arm/v6"), -1, "linux/arm/v7"},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			d, err := tt.ix.Select(tt.want)
			if tt.entry < 0 {
				if !errors.Is(err, manifest.ErrNoMatchingPlatform) || !strings.Contains(err.Error(), tt.msg) || !strings.Contains(err.Error(), string(tt.ix.Digest)) {
					t.Fatalf("Select(%v) = %v, %v; want ErrNoMatchingPlatform mentioning %q and the index digest", tt.want, d.Digest, err, tt.msg)
				}
				if _, offers, _ := strings.Cut(err.Error(), " offers "); strings.Contains(offers, "unknown") {
					t.Errorf("error lists attestation platforms: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Select(%v) = %v", tt.want, err)
			}
			if d.Digest != tt.ix.Manifests[tt.entry].Digest {
				t.Fatalf("Select(%v) = %v (%s), want entry %d (%v)", tt.want, d.Platform, d.Digest, tt.entry, tt.ix.Manifests[tt.entry].Platform)
			}
		})
	}
}

func TestSelectSkipsNonImages(t *testing.T) {
	// An index whose only linux/amd64 entries are an attestation (by
	// annotation), a nested index, a platform-less manifest and one whose
	// platform is empty.
	doc := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
 {"mediaType":"application/vnd.oci.image.manifest.v1+json","size":1,"digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111","platform":{"os":"linux","architecture":"amd64"},"annotations":{"vnd.docker.reference.type":"attestation-manifest"}},
 {"mediaType":"application/vnd.oci.image.index.v1+json","size":1,"digest":"sha256:2222222222222222222222222222222222222222222222222222222222222222","platform":{"os":"linux","architecture":"amd64"}},
 {"mediaType":"application/vnd.oci.image.manifest.v1+json","size":1,"digest":"sha256:3333333333333333333333333333333333333333333333333333333333333333"},
 {"mediaType":"application/vnd.oci.image.manifest.v1+json","size":1,"digest":"sha256:4444444444444444444444444444444444444444444444444444444444444444","platform":{"os":"","architecture":""}}]}`
	ix, err := manifest.ParseIndex("", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ix.Select(mustPlatform(t, "linux/amd64")); !errors.Is(err, manifest.ErrNoMatchingPlatform) || !strings.Contains(err.Error(), "offers none") {
		t.Fatalf("Select = %v, want no match offering none", err)
	}
}

func mustPlatform(t *testing.T, s string) manifest.Platform {
	t.Helper()
	p, err := manifest.ParsePlatform(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
