package registry_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/strata-oci/strata/registry"
)

const dgst = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestParseReference(t *testing.T) {
	tests := []struct {
		desc, in                    string
		registry, repo, tag, digest string
		str                         string
	}{
		{"bare name gets hub, library and latest", "ubuntu", "index.docker.io", "library/ubuntu", "latest", "", "index.docker.io/library/ubuntu:latest"},
		{"bare name with tag", "ubuntu:22.04", "index.docker.io", "library/ubuntu", "22.04", "", "index.docker.io/library/ubuntu:22.04"},
		{"hub user repo", "user/app", "index.docker.io", "user/app", "latest", "", "index.docker.io/user/app:latest"},
		{"docker.io alias", "docker.io/library/alpine:3", "index.docker.io", "library/alpine", "3", "", "index.docker.io/library/alpine:3"},
		{"docker.io single component", "docker.io/alpine", "index.docker.io", "library/alpine", "latest", "", "index.docker.io/library/alpine:latest"},
		{"other registry", "ghcr.io/org/team/app:v1.2", "ghcr.io", "org/team/app", "v1.2", "", "ghcr.io/org/team/app:v1.2"},
		{"registry with port", "127.0.0.1:5000/x/y:t", "127.0.0.1:5000", "x/y", "t", "", "127.0.0.1:5000/x/y:t"},
		{"localhost", "localhost/x", "localhost", "x", "latest", "", "localhost/x:latest"},
		{"localhost with port", "localhost:5000/x", "localhost:5000", "x", "latest", "", "localhost:5000/x:latest"},
		{"digest only", "quay.io/a/b@" + dgst, "quay.io", "a/b", "", dgst, "quay.io/a/b@" + dgst},
		{"tag and digest", "a/b:t@" + dgst, "index.docker.io", "a/b", "t", dgst, "index.docker.io/a/b:t@" + dgst},
		{"port and digest", "h:1/r@" + dgst, "h:1", "r", "", dgst, "h:1/r@" + dgst},
		{"ipv6 registry", "[::1]:5000/r:t", "[::1]:5000", "r", "t", "", "[::1]:5000/r:t"},
		{"separators in repo", "a.b/c_d/e__f-g.h:T_1", "a.b", "c_d/e__f-g.h", "T_1", "", "a.b/c_d/e__f-g.h:T_1"},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			r, err := registry.ParseReference(tt.in)
			if err != nil {
				t.Fatalf("ParseReference(%q): %v", tt.in, err)
			}
			if r.Registry() != tt.registry || r.Repository() != tt.repo || r.Tag() != tt.tag || string(r.Digest()) != tt.digest || r.String() != tt.str {
				t.Fatalf("ParseReference(%q) = %q %q %q %q %q", tt.in, r.Registry(), r.Repository(), r.Tag(), r.Digest(), r.String())
			}
			again, err := registry.ParseReference(r.String())
			if err != nil || again != r {
				t.Fatalf("round trip of %q: %v %v", r.String(), again, err)
			}
		})
	}
}

func TestParseReferenceErrors(t *testing.T) {
	tests := []struct {
		desc, in string
		part     string // the offending part the error must name
	}{
		{"empty", "", "empty"},
		{"uppercase repository", "Ubuntu", "repository"},
		{"repository with bad char", "ghcr.io/a/b$c", "repository"},
		{"empty repository", "ghcr.io/", "repository"},
		{"double slash", "ghcr.io/a//b", "repository"},
		{"bad tag char", "ubuntu:v1+x", "tag"},
		{"tag starting with dot", "ubuntu:.x", "tag"},
		{"empty tag", "ubuntu:", "tag"},
		{"long tag", "ubuntu:" + strings.Repeat("a", 129), "tag"},
		{"sha512 digest", "ubuntu@sha512:" + strings.Repeat("a", 128), "digest"},
		{"short digest", "ubuntu@sha256:abc", "digest"},
		{"empty digest", "ubuntu@", "digest"},
		{"two digests", "ubuntu@" + dgst + "@" + dgst, "digest"},
		{"bad registry", "bad_host.io:5000/a", "registry"},
		{"registry port not a number", "host.io:abc/a:1", "registry"},
		{"registry label ends in dash", "host-.io/a", "registry"},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			_, err := registry.ParseReference(tt.in)
			if !errors.Is(err, registry.ErrInvalidReference) {
				t.Fatalf("ParseReference(%q) err = %v, want ErrInvalidReference", tt.in, err)
			}
			if !strings.Contains(err.Error(), tt.part) {
				t.Fatalf("ParseReference(%q) err = %q, want it to name the %s", tt.in, err, tt.part)
			}
		})
	}
}

func TestRepositoryBuilders(t *testing.T) {
	repo, err := registry.ParseRepository("ubuntu")
	if err != nil || repo.String() != "index.docker.io/library/ubuntu" {
		t.Fatalf("ParseRepository = %v, %v", repo, err)
	}
	if _, err := registry.ParseRepository("ubuntu:1"); !errors.Is(err, registry.ErrInvalidReference) {
		t.Fatalf("repository with tag: %v", err)
	}
	r, err := repo.Digest(dgst)
	if err != nil || r.String() != "index.docker.io/library/ubuntu@"+dgst || r.Identifier() != dgst {
		t.Fatalf("Digest = %v %v", r, err)
	}
	if _, err := repo.Digest("sha256:zz"); !errors.Is(err, registry.ErrInvalidReference) {
		t.Fatalf("bad digest: %v", err)
	}
	r, err = repo.Tag("v1")
	if err != nil || r.Identifier() != "v1" || r.Repo() != repo {
		t.Fatalf("Tag = %v %v", r, err)
	}
	if _, err := repo.Tag("-x"); !errors.Is(err, registry.ErrInvalidReference) {
		t.Fatalf("bad tag: %v", err)
	}
}

func FuzzParseReference(f *testing.F) {
	for _, s := range []string{"ubuntu", "a/b:c@" + dgst, "h:1/r", "[::1]:5/x", "UP", "a@b", ":", "/", "a:b:c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := registry.ParseReference(s)
		if err != nil {
			if !errors.Is(err, registry.ErrInvalidReference) {
				t.Fatalf("error %v does not wrap ErrInvalidReference", err)
			}
			return
		}
		again, err := registry.ParseReference(r.String())
		if err != nil || again != r {
			t.Fatalf("%q -> %q does not round trip: %v", s, r.String(), err)
		}
		if r.Identifier() == "" || r.Registry() == "" || r.Repository() == "" {
			t.Fatalf("%q parsed to an incomplete reference %q", s, r.String())
		}
	})
}
