package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/reapitest"
	"github.com/strata-oci/strata/internal/registrytest"
)

// More of issue 13's attacks through blobctl (the library side is in
// fetcher/redteam_mirror_test.go, fetcher/size_test.go and
// materialize/internal/hosttest/redteam_reuse_test.go).

// TestRedteamMirrorThroughBlobctl: a mirror configured for alice's private
// registry (docker-registry with htpasswd) holds another image under her
// tag, and a tag her registry does not have. Tags come from the origin.
func TestRedteamMirrorThroughBlobctl(t *testing.T) {
	v := pushVictim(t)
	origin := strings.Split(v.ref, "/")[0]
	mirror := registrytest.InProcess(t)
	other := registrytest.Image(t, tarGz(t, "etc/planted", "mallory was here"))
	planted := registrytest.Push(t, mirror, "private/secret:v1", other, nil).String()
	registrytest.Push(t, mirror, "private/secret:latest", other, nil)

	root := filepath.Join(t.TempDir(), "root")
	args := func(a ...string) []string {
		return append([]string{"--root", root, "--allow-cidr", "127.0.0.0/8", "--mirror", origin + "=" + mirror,
			"--username", "alice", "--password-stdin"}, a...)
	}
	r := blobctl(t, "alice-pw\n", args("fetch", v.ref, "--json")...)
	if r.code != 0 {
		t.Fatalf("fetch through the mirror: exit %d: %s", r.code, r.stderr)
	}
	if res := decode[fetchResult](t, r.stdout); res.Digest == planted || !strings.HasPrefix(res.Digest, "sha256:") {
		t.Fatalf("the tag resolved to %s (the mirror's image is %s)", res.Digest, planted)
	}
	r = blobctl(t, "alice-pw\n", args("fetch", origin+"/private/secret:latest", "--json")...)
	if r.code != exitNotFound {
		t.Errorf("a tag only the mirror has: exit %d, want %d (not found)\n%s%s", r.code, exitNotFound, r.stdout, r.stderr)
	}
	if strings.Contains(r.stdout, planted) {
		t.Error("the mirror's image was served for a tag the origin does not have")
	}
}

// TestRedteamHugeSizeThroughBlobctl: a registry lists a layer of
// 2^63-1 bytes. Every command fails with an error; none panics (an
// in-process panic would end this test binary).
func TestRedteamHugeSizeThroughBlobctl(t *testing.T) {
	evil := registrytest.NewHostile(t)
	cfg := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:` + strings.Repeat("0", 64) + `"]}}`)
	cd := blob.FromBytes(cfg).String()
	evil.Blob(cd, cfg)
	data := []byte("not that big")
	layer := blob.FromBytes(data).Encoded()
	m, _ := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": string(types.OCIManifestSchema1),
		"config": map[string]any{"mediaType": string(types.OCIConfigJSON), "digest": cd, "size": len(cfg)},
		"layers": []map[string]any{{"mediaType": string(types.OCILayer), "digest": "sha256:" + layer, "size": int64(9223372036854775807)}},
	})
	evil.Manifest("huge", m, string(types.OCIManifestSchema1))
	evil.BlobChunked("sha256:"+layer, data) // no Content-Length: the size comes from the manifest
	ref := evil.Host + "/mallory/app:huge"
	root := filepath.Join(t.TempDir(), "root")
	for _, a := range [][]string{
		{"fetch", ref},
		{"materialize", ref, "--format", "overlay"},
		{"materialize", ref, "--format", "ext4", "--out", filepath.Join(t.TempDir(), "x.ext4")},
	} {
		r := blobctl(t, "", append([]string{"--root", root, "--allow-cidr", "127.0.0.0/8"}, a...)...)
		if r.code == 0 {
			t.Errorf("%s: exit 0", a[0])
		}
		if strings.Contains(r.stderr, "panic") || strings.Contains(r.stderr, "goroutine ") {
			t.Errorf("%s: %s", a[0], r.stderr)
		}
	}
}

// TestRedteamSharedReplayThroughBlobctl: two executors share a REAPI tier
// and a fleet key. Alice's ext4 image, converted on the first, is in the
// shared tier. Mallory, authenticated at her own registry, replays alice's
// manifest on the second: blobctl must not hand her alice's image.
func TestRedteamSharedReplayThroughBlobctl(t *testing.T) {
	v := pushVictim(t)
	endpoint := reapitest.Start(t)
	fleet := filepath.Join(t.TempDir(), "fleet.yaml")
	if err := os.WriteFile(fleet, []byte("identity-key: \"a fleet key shared by every executor of this test\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	on := func(root string, a ...string) []string {
		return append([]string{"--root", root, "--allow-cidr", "127.0.0.0/8", "--config", fleet,
			"--remote", endpoint, "--remote-instance", reapitest.Instance}, a...)
	}
	a, b := filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")
	out := filepath.Join(t.TempDir(), "alice.ext4")
	r := blobctl(t, "alice-pw\n", on(a, "--username", "alice", "--password-stdin", "materialize", v.ref, "--format", "ext4", "--out", out, "--json")...)
	if r.code != 0 {
		t.Fatalf("alice's conversion: exit %d: %s", r.code, r.stderr)
	}

	evil := registrytest.NewHostile(t)
	evil.BasicAuth("mallory", "mallory-pw")
	evil.Manifest("replay", v.manifest, string(v.mt))
	evil.Blob(v.cfgName, v.config)
	stolen := filepath.Join(t.TempDir(), "stolen.ext4")
	r = blobctl(t, "mallory-pw\n", on(b, "--username", "mallory", "--password-stdin", "materialize", evil.Host+"/mallory/app:replay", "--format", "ext4", "--out", stolen)...)
	if r.code == 0 {
		t.Fatalf("mallory got alice's image from the shared tier:\n%s", r.stdout)
	}
	if _, err := os.Stat(stolen); err == nil {
		t.Error("mallory got an ext4 image at --out")
	}
	// Alice on the second executor gets the shared image.
	r = blobctl(t, "alice-pw\n", on(b, "--username", "alice", "--password-stdin", "materialize", v.ref, "--format", "ext4", "--out", filepath.Join(t.TempDir(), "b.ext4"), "--json")...)
	if r.code != 0 || !decode[ext4Result](t, r.stdout).FromCache {
		t.Errorf("alice on the second executor: exit %d %s %s", r.code, r.stdout, r.stderr)
	}
}
