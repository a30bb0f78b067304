package main

import (
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// platformImage is a random image whose config says it is built for os/arch.
func platformImage(t *testing.T, os, arch string) v1.Image {
	t.Helper()
	img, err := random.Image(2<<10, 1)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = os, arch
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	return img
}

// pushIndex pushes an index of one image per os/arch pair as repoTag.
func pushIndex(t *testing.T, reg, repoTag string, platforms ...[2]string) {
	t.Helper()
	var adds []mutate.IndexAddendum
	for _, p := range platforms {
		adds = append(adds, mutate.IndexAddendum{
			Add:        platformImage(t, p[0], p[1]),
			Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: p[0], Architecture: p[1]}},
		})
	}
	ix := mutate.AppendManifests(empty.Index, adds...)
	ref, err := name.ParseReference(reg+"/"+repoTag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(ref, ix); err != nil {
		t.Fatal(err)
	}
}

// TestPlatformFacts: fetch and materialize report the platform the image
// is built for (from its config), not the one requested, and warn when
// they differ; --platform all fetches every platform of an index.
func TestPlatformFacts(t *testing.T) {
	f := newFixture(t, 1<<10, 1)
	pushImage := func(tag string, img v1.Image) string {
		ref, err := name.ParseReference(f.reg+"/"+tag, name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(ref, img); err != nil {
			t.Fatal(err)
		}
		return f.reg + "/" + tag
	}
	amd64 := pushImage("single:amd64", platformImage(t, "linux", "amd64"))

	// A single-platform amd64 image asked for as arm64: served, reported
	// as amd64, with a warning.
	r := blobctl(t, "", f.args("--platform", "linux/arm64", "fetch", amd64, "--json")...)
	if r.code != 0 {
		t.Fatalf("fetch: exit %d; %s", r.code, r.stderr)
	}
	if res := decode[fetchResult](t, r.stdout); res.Platform != "linux/amd64" {
		t.Errorf("fetch reports platform %q, want the image's linux/amd64", res.Platform)
	}
	const warning = "is built for linux/amd64, not for the requested linux/arm64/v8 (the reference names a single-platform image"
	if !strings.Contains(r.stderr, "warning: "+amd64+" "+warning) {
		t.Errorf("fetch stderr %q: want a platform warning", r.stderr)
	}
	// Text output names the image's platform too.
	if r := blobctl(t, "", f.args("--platform", "linux/arm64", "fetch", amd64)...); !strings.Contains(r.stdout, "(linux/amd64)") || !strings.Contains(r.stderr, warning) {
		t.Errorf("fetch text: %q %q", r.stdout, r.stderr)
	}
	// materialize says the same.
	r = blobctl(t, "", f.args("--platform", "linux/arm64", "materialize", amd64, "--format", "overlay", "--json")...)
	if r.code != 0 {
		t.Fatalf("materialize: exit %d; %s", r.code, r.stderr)
	}
	if res := decode[overlayResult](t, r.stdout); res.Platform != "linux/amd64" || !strings.Contains(r.stderr, warning) {
		t.Errorf("materialize: platform %q, stderr %q", res.Platform, r.stderr)
	}
	// Asked for what it is: no warning.
	if r := blobctl(t, "", f.args("--platform", "linux/amd64", "fetch", amd64)...); r.code != 0 || r.stderr != "" {
		t.Errorf("matching platform: exit %d, stderr %q", r.code, r.stderr)
	}
	// An image whose config states no platform: "unknown", no warning.
	if r := blobctl(t, "", f.args("--platform", "linux/arm64", "fetch", f.ref, "--json")...); r.code != 0 || r.stderr != "" || decode[fetchResult](t, r.stdout).Platform != "unknown" {
		t.Errorf("image without a platform: exit %d, stderr %q, %s", r.code, r.stderr, r.stdout)
	}

	// An index selects the requested platform: no warning.
	pushIndex(t, f.reg, "multi:v1", [2]string{"linux", "amd64"}, [2]string{"linux", "arm64"})
	r = blobctl(t, "", f.args("--platform", "linux/arm64", "fetch", f.reg+"/multi:v1", "--json")...)
	if res := decode[fetchResult](t, r.stdout); r.code != 0 || res.Platform != "linux/arm64/v8" || r.stderr != "" {
		t.Errorf("index, arm64: exit %d, platform %q, stderr %q", r.code, res.Platform, r.stderr)
	}

	// --platform all: every platform of the index, also when this
	// machine's platform is not among them.
	pushIndex(t, f.reg, "other:v1", [2]string{"linux", "s390x"}, [2]string{"linux", "ppc64le"})
	for _, tc := range []struct {
		ref  string
		want []string
	}{
		{f.reg + "/multi:v1", []string{"linux/amd64", "linux/arm64/v8"}},
		{f.reg + "/other:v1", []string{"linux/s390x", "linux/ppc64le"}},
		{amd64, []string{"linux/amd64"}},
	} {
		r := blobctl(t, "", f.args("--platform", "all", "fetch", tc.ref, "--json")...)
		if r.code != 0 {
			t.Fatalf("--platform all %s: exit %d; %s", tc.ref, r.code, r.stderr)
		}
		res := decode[[]fetchResult](t, r.stdout)
		var got []string
		for _, x := range res {
			got = append(got, x.Platform)
			if x.Reference != tc.ref || len(x.Blobs) < 3 {
				t.Errorf("--platform all %s: record %+v", tc.ref, x)
			}
		}
		if strings.Join(got, " ") != strings.Join(tc.want, " ") {
			t.Errorf("--platform all %s: platforms %v, want %v", tc.ref, got, tc.want)
		}
	}
	// Afterwards every platform is cached: no registry needed.
	for _, p := range []string{"linux/s390x", "linux/ppc64le"} {
		res := decode[fetchResult](t, must(t, f.args("--platform", p, "fetch", f.reg+"/other:v1", "--json")...))
		for _, b := range res.Blobs {
			if b.Source == "registry" {
				t.Errorf("%s: %s %s came from the registry after --platform all", p, b.Kind, b.Digest)
			}
		}
	}
}
