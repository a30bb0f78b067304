package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/registrytest"
)

// Red-team regression tests for issue 13 through blobctl, as an operator's
// shared root would be attacked: alice's private image sits on Debian's
// docker-registry with htpasswd; mallory, anonymous, runs blobctl against
// the same root with a registry of her own. The library side of these
// attacks is in materialize/internal/hosttest/redteam_reuse_test.go.

const redteamSecret = "the victim's private key material"

type redteamVictim struct {
	ref      string
	manifest []byte
	mt       types.MediaType
	config   []byte
	cfgName  string
	layers   []v1.Descriptor
}

func pushVictim(t *testing.T) *redteamVictim {
	t.Helper()
	reg := registrytest.StartDistribution(t, registrytest.DistributionOptions{BasicUsers: map[string]string{"alice": "alice-pw"}})
	base := tarGz(t, "etc/os-release", "ID=victim\n")
	secret := tarGz(t, "etc/secret", redteamSecret)
	img := registrytest.Image(t, base, secret)
	registrytest.Push(t, reg.Host, "private/secret:v1", img, basicAuth("alice", "alice-pw"))
	v := &redteamVictim{ref: reg.Host + "/private/secret:v1"}
	var err error
	if v.manifest, err = img.RawManifest(); err != nil {
		t.Fatal(err)
	}
	if v.mt, err = img.MediaType(); err != nil {
		t.Fatal(err)
	}
	if v.config, err = img.RawConfigFile(); err != nil {
		t.Fatal(err)
	}
	cn, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	v.cfgName = cn.String()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	v.layers = m.Layers
	return v
}

// tarGz is a gzip layer holding directory etc and one file.
func tarGz(t *testing.T, name, content string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, h := range []*tar.Header{
		{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: name, Typeflag: tar.TypeReg, Mode: 0o600, Size: int64(len(content))},
	} {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tw.Write([]byte(content)); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestRedteamReuseThroughBlobctl runs the digest-listing and manifest-replay
// attacks with blobctl on one root that alice's materializations warmed.
func TestRedteamReuseThroughBlobctl(t *testing.T) {
	v := pushVictim(t)
	root := filepath.Join(t.TempDir(), "root")
	flags := []string{"--root", root, "--allow-cidr", "127.0.0.0/8"}
	as := func(args ...string) []string { return append(append([]string{}, flags...), args...) }
	aliceArgs := func(args ...string) []string {
		return as(append([]string{"--username", "alice", "--password-stdin"}, args...)...)
	}
	out := filepath.Join(t.TempDir(), "alice.ext4")
	if r := blobctl(t, "alice-pw\n", aliceArgs("materialize", v.ref, "--format", "ext4", "--out", out, "--json")...); r.code != 0 {
		t.Fatalf("alice's ext4: exit %d: %s", r.code, r.stderr)
	}
	r := blobctl(t, "alice-pw\n", aliceArgs("materialize", v.ref, "--format", "overlay", "--json")...)
	if r.code != 0 {
		t.Fatalf("alice's overlay: exit %d: %s", r.code, r.stderr)
	}
	alicesDirs := decode[overlayResult](t, r.stdout).LowerDirs

	evil := registrytest.NewHostile(t)
	// Digest listing: a manifest of mallory's own over alice's layer digests.
	cfg := strings.Replace(string(v.config), `{`, `{"author":"mallory",`, 1)
	cd := blob.FromBytes([]byte(cfg)).String()
	evil.Blob(cd, []byte(cfg))
	listing, _ := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": string(types.OCIManifestSchema1),
		"config": map[string]any{"mediaType": string(types.OCIConfigJSON), "digest": cd, "size": len(cfg)},
		"layers": v.layers,
	})
	evil.Manifest("listing", listing, string(types.OCIManifestSchema1))
	// Replay: alice's own manifest and config bytes, no layers.
	evil.Manifest("replay", v.manifest, string(v.mt))
	evil.Blob(v.cfgName, v.config)

	for _, tc := range []struct {
		desc string
		args []string
		out  string
	}{
		{"overlay of a digest listing", []string{"materialize", evil.Host + "/mallory/app:listing", "--format", "overlay", "--json"}, ""},
		{"ext4 of a digest listing", []string{"materialize", evil.Host + "/mallory/app:listing", "--format", "ext4", "--out", "listing.ext4"}, "listing.ext4"},
		{"fetch of a digest listing", []string{"fetch", evil.Host + "/mallory/app:listing", "--json"}, ""},
		{"overlay of a replayed manifest", []string{"materialize", evil.Host + "/mallory/app:replay", "--format", "overlay", "--json"}, ""},
		{"ext4 of a replayed manifest", []string{"materialize", evil.Host + "/mallory/app:replay", "--format", "ext4", "--out", "replay.ext4"}, "replay.ext4"},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			dir := t.TempDir()
			args := append([]string{}, tc.args...)
			for i, a := range args {
				if a == tc.out && a != "" {
					args[i] = filepath.Join(dir, a)
				}
			}
			r := blobctl(t, "", as(args...)...)
			if r.code == 0 {
				t.Errorf("mallory: exit 0\n%s", r.stdout)
			}
			for _, d := range alicesDirs {
				if strings.Contains(r.stdout, d) {
					t.Errorf("mallory was handed alice's layer directory %s", d)
				}
			}
			if tc.out != "" {
				if _, err := os.Stat(filepath.Join(dir, tc.out)); err == nil {
					t.Errorf("mallory got an ext4 image at --out")
				}
			}
			if strings.Contains(r.stdout+r.stderr, "alice-pw") {
				t.Error("a password reached the output")
			}
		})
	}
	// Alice keeps her cached image: the attacks broke nothing.
	if r := blobctl(t, "alice-pw\n", aliceArgs("materialize", v.ref, "--format", "ext4", "--out", out, "--json")...); r.code != 0 || !decode[ext4Result](t, r.stdout).FromCache {
		t.Errorf("alice after the attacks: exit %d %s %s", r.code, r.stdout, r.stderr)
	}
}
