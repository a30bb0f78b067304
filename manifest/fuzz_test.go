package manifest_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/manifest"
)

var seedContentTypes = []string{
	"", "application/json", string(types.OCIManifestSchema1), string(types.OCIImageIndex),
	string(types.DockerManifestSchema2), string(types.DockerManifestList), string(types.DockerManifestSchema1Signed),
}

func addFixtureSeeds(f *testing.F, add func(data []byte)) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.json"))
	if err != nil {
		f.Fatal(err)
	}
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		add(b)
	}
}

// FuzzParse feeds arbitrary bytes and media types to Parse. It must never
// panic, must fail only with the package's sentinels, and what it accepts
// must re-validate: from its raw bytes under its resolved media type, and
// after conversion to go-containerregistry's types and back.
func FuzzParse(f *testing.F) {
	addFixtureSeeds(f, func(b []byte) {
		for _, ct := range seedContentTypes {
			f.Add(ct, b)
		}
	})
	f.Fuzz(func(t *testing.T, ct string, data []byte) {
		doc, err := manifest.Parse(ct, data)
		if err != nil {
			if !errors.Is(err, manifest.ErrInvalid) && !errors.Is(err, manifest.ErrSchema1) &&
				!errors.Is(err, manifest.ErrMediaTypeMismatch) && !errors.Is(err, manifest.ErrUnknownMediaType) {
				t.Fatalf("error wraps no sentinel: %v", err)
			}
			return
		}
		if doc.Digest() != blob.FromBytes(data) || !bytes.Equal(doc.Raw(), data) {
			t.Fatal("digest or raw bytes not kept")
		}
		again, err := manifest.Parse(string(doc.MediaType()), doc.Raw())
		if err != nil || again.Kind() != doc.Kind() || again.MediaType() != doc.MediaType() {
			t.Fatalf("accepted document does not re-validate under %s: %v", doc.MediaType(), err)
		}
		var descs []manifest.Descriptor
		var v1doc any
		if m := doc.Manifest; m != nil {
			descs = append(append(descs, m.Config), m.Layers...)
			for _, l := range m.Layers {
				if _, err := l.Compression(); !m.IsArtifact() && err != nil {
					t.Fatalf("image layer with unknown compression: %v", err)
				}
			}
			v1doc = m.V1()
		} else {
			ix := doc.Index
			descs = ix.Manifests
			if d, err := ix.Select(manifest.Default()); err == nil {
				if !manifest.IsManifest(d.MediaType) || d.Platform == nil {
					t.Fatalf("Select returned a non-image entry %+v", d)
				}
			} else if !errors.Is(err, manifest.ErrNoMatchingPlatform) {
				t.Fatalf("Select: %v", err)
			}
			v1doc = ix.V1()
		}
		for _, d := range descs {
			if blob.ValidateDigest(d.Digest) != nil || d.Size < 0 || d.Size > manifest.MaxDescriptorSize || d.MediaType == "" {
				t.Fatalf("accepted a bad descriptor %+v", d)
			}
		}
		b, err := json.Marshal(v1doc)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := manifest.Parse(string(doc.MediaType()), b); err != nil {
			t.Fatalf("go-containerregistry form does not re-validate: %v\n%s", err, b)
		}
	})
}

// FuzzParseConfig: never panics; accepted configs re-validate.
func FuzzParseConfig(f *testing.F) {
	addFixtureSeeds(f, func(b []byte) { f.Add("", b) })
	f.Add(string(types.DockerConfigJSON), fixture(f, "config-windows.json"))
	f.Fuzz(func(t *testing.T, ct string, data []byte) {
		c, err := manifest.ParseConfig(ct, data)
		if err != nil {
			if !errors.Is(err, manifest.ErrInvalid) && !errors.Is(err, manifest.ErrUnknownMediaType) {
				t.Fatalf("error wraps no sentinel: %v", err)
			}
			return
		}
		if c.Digest != blob.FromBytes(data) || c.File == nil || len(c.DiffIDs) != len(c.File.RootFS.DiffIDs) {
			t.Fatalf("accepted incomplete config %+v", c)
		}
		for _, d := range c.DiffIDs {
			if blob.ValidateDigest(d) != nil {
				t.Fatalf("bad diff_id %q", d)
			}
		}
		if _, err := manifest.ParseConfig(string(c.MediaType), c.Raw()); err != nil {
			t.Fatalf("accepted config does not re-validate: %v", err)
		}
	})
}

// FuzzParsePlatform: never panics; a parsed platform prints to a string
// that parses to the same platform.
func FuzzParsePlatform(f *testing.F) {
	for _, s := range []string{"linux/amd64", "linux/arm64/v8", "linux/arm", "windows/amd64:10.0.17763.1", "a/b/c/d", "/", ":", "linux/armhf"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := manifest.ParsePlatform(s)
		if err != nil {
			if !errors.Is(err, manifest.ErrInvalidPlatform) {
				t.Fatalf("error wraps no sentinel: %v", err)
			}
			return
		}
		q, err := manifest.ParsePlatform(p.String())
		if err != nil || q.String() != p.String() || !manifest.Match(p, q) || !manifest.Match(q, p) {
			t.Fatalf("ParsePlatform(%q) = %v; re-parse of %q = %v, %v", s, p, p.String(), q, err)
		}
	})
}
