package manifest

import (
	"fmt"
	"regexp"
	"runtime"
	"slices"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/strata-oci/strata/internal/trunc"
)

// Platform is the platform an image runs on (the OCI image-index platform
// object).
type Platform struct {
	OS           string
	Architecture string
	Variant      string
	OSVersion    string
	OSFeatures   []string
	Features     []string
}

var platformPartRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// ParsePlatform parses "os/arch[/variant][:os.version]", for example
// "linux/amd64", "linux/arm64/v8", "linux/arm/v7" or
// "windows/amd64:10.0.17763.1234", and returns it normalized. An empty
// part, a fourth part, or a character outside [A-Za-z0-9_.-] is an error
// wrapping ErrInvalidPlatform that names the offending part.
func ParsePlatform(s string) (Platform, error) {
	orig := s
	fail := func(format string, a ...any) (Platform, error) {
		return Platform{}, fmt.Errorf("%w %q: %s (want os/arch[/variant][:os.version], e.g. linux/arm64/v8)", ErrInvalidPlatform, trunc.String(orig, 100), fmt.Sprintf(format, a...))
	}
	var p Platform
	if head, ver, ok := strings.Cut(s, ":"); ok {
		if !platformPartRE.MatchString(ver) {
			return fail("malformed os.version %q", trunc.String(ver, 100))
		}
		s, p.OSVersion = head, ver
	}
	parts := strings.Split(s, "/")
	names := []string{"os", "architecture", "variant"}
	if len(parts) > len(names) {
		return fail("too many parts (%d)", len(parts))
	}
	if len(parts) < 2 {
		return fail("missing architecture")
	}
	for i, part := range parts {
		if part == "" {
			return fail("empty %s", names[i])
		}
		if !platformPartRE.MatchString(part) {
			return fail("malformed %s %q", names[i], trunc.String(part, 100))
		}
	}
	p.OS, p.Architecture = parts[0], parts[1]
	if len(parts) == 3 {
		p.Variant = parts[2]
	}
	return p.Normalize(), nil
}

// Default returns the platform of the running process (runtime.GOOS and
// runtime.GOARCH, normalized; "linux/amd64" on an amd64 Linux host). For
// 32-bit arm it assumes v7, the variant nearly all arm images are built for.
func Default() Platform {
	return Platform{OS: runtime.GOOS, Architecture: runtime.GOARCH}.Normalize()
}

// Normalize returns p in canonical form, following containerd's platforms
// package except for arm64, whose canonical variant is "v8":
//
//   - OS lower case, "macos" -> "darwin".
//   - x86_64, x86-64 -> amd64 (variant v1 -> none); i386, i686, x86 -> 386.
//   - aarch64 -> arm64; arm64 variant none, 8, v8.0 -> v8; 9, v9.0 -> v9.
//   - armhf -> arm/v7; armel -> arm/v6; arm variant none or 7 -> v7,
//     5, 6, 8 -> v5, v6, v8.
//
// Features are copied, not sorted. Normalize never fails; unknown values are
// kept (lower-cased).
func (p Platform) Normalize() Platform {
	out := p
	out.OS = strings.ToLower(p.OS)
	if out.OS == "macos" {
		out.OS = "darwin"
	}
	arch, variant := strings.ToLower(p.Architecture), strings.ToLower(p.Variant)
	switch arch {
	case "i386", "i686", "x86":
		arch, variant = "386", ""
	case "x86_64", "x86-64", "amd64":
		arch = "amd64"
		if variant == "v1" {
			variant = ""
		}
	case "aarch64", "arm64":
		arch = "arm64"
		switch variant {
		case "", "8", "v8", "v8.0":
			variant = "v8"
		case "9", "9.0", "v9.0":
			variant = "v9"
		}
	case "armhf":
		arch, variant = "arm", "v7"
	case "armel":
		arch, variant = "arm", "v6"
	case "arm":
		switch variant {
		case "", "7":
			variant = "v7"
		case "5", "6", "8":
			variant = "v" + variant
		}
	}
	out.Architecture, out.Variant = arch, variant
	out.OSFeatures = slices.Clone(p.OSFeatures)
	out.Features = slices.Clone(p.Features)
	return out
}

// String returns "os/arch[/variant][:os.version]".
func (p Platform) String() string {
	var b strings.Builder
	b.WriteString(orUnset(p.OS))
	b.WriteString("/")
	b.WriteString(orUnset(p.Architecture))
	if p.Variant != "" {
		b.WriteString("/" + p.Variant)
	}
	if p.OSVersion != "" {
		b.WriteString(":" + p.OSVersion)
	}
	return b.String()
}

func orUnset(s string) string {
	if s == "" {
		return "?"
	}
	return s
}

// V1 converts p to go-containerregistry's platform type.
func (p Platform) V1() v1.Platform {
	return v1.Platform{
		OS: p.OS, Architecture: p.Architecture, Variant: p.Variant, OSVersion: p.OSVersion,
		OSFeatures: slices.Clone(p.OSFeatures), Features: slices.Clone(p.Features),
	}
}

// Match reports whether an image built for have runs where want is wanted.
// Both are normalized first. OS, architecture and variant must be equal
// (exact: a wanted arm/v7 does not match an arm/v6 image here; Index.Select
// falls back to compatible lower variants explicitly). A wanted os.version
// must equal have's, except on Windows where only major.minor.build must
// agree (the revision may differ), as containerd matches. Every wanted
// os.feature and feature must be present in have; have may carry more.
// An empty wanted os.version matches any.
func Match(want, have Platform) bool {
	want, have = want.Normalize(), have.Normalize()
	if want.OS != have.OS || want.Architecture != have.Architecture || want.Variant != have.Variant {
		return false
	}
	if want.OSVersion != "" && !osVersionMatch(want.OS, want.OSVersion, have.OSVersion) {
		return false
	}
	return subset(want.OSFeatures, have.OSFeatures) && subset(want.Features, have.Features)
}

func osVersionMatch(os, want, have string) bool {
	if want == have {
		return true
	}
	if os != "windows" {
		return false
	}
	w, h := strings.Split(want, "."), strings.Split(have, ".")
	if len(w) < 3 || len(h) < 3 {
		return false
	}
	return slices.Equal(w[:3], h[:3])
}

func subset(want, have []string) bool {
	for _, w := range want {
		if !slices.Contains(have, w) {
			return false
		}
	}
	return true
}

// fallbackVariants lists, best first, the lower variants an image may have
// and still run where want is wanted (containerd's compatibility order).
func fallbackVariants(want Platform) []string {
	order := map[string][]string{
		"arm":   {"v8", "v7", "v6", "v5"},
		"amd64": {"v4", "v3", "v2", ""},
		"arm64": {"v9", "v8"},
	}[want.Architecture]
	i := slices.Index(order, want.Variant)
	if i < 0 {
		return nil
	}
	return order[i+1:]
}

// unknownPlatform reports the platform of index entries that are not images
// (BuildKit attestation manifests use unknown/unknown) or that do not say
// what they are (empty os or architecture).
func unknownPlatform(p Platform) bool {
	return p.OS == "unknown" || p.Architecture == "unknown" || p.OS == "" || p.Architecture == ""
}

// Bounds of the platform list an error message carries: an index may list
// tens of thousands of entries, the message stays a few hundred bytes.
const (
	maxListedPlatforms = 10
	maxPlatformChars   = 80
)

// platformList names the distinct platforms of ps, normalized, in order:
// at most maxListedPlatforms of them, each clipped to maxPlatformChars,
// then "and K more"; "none" when ps is empty.
func platformList(ps []Platform) string {
	seen := make(map[string]bool, len(ps))
	var shown []string
	more := 0
	for _, p := range ps {
		s := p.Normalize().String()
		if seen[s] {
			continue
		}
		seen[s] = true
		if len(shown) == maxListedPlatforms {
			more++
			continue
		}
		if len(s) > maxPlatformChars {
			s = s[:maxPlatformChars] + "..."
		}
		shown = append(shown, s)
	}
	if len(shown) == 0 {
		return "none"
	}
	list := strings.Join(shown, ", ")
	if more > 0 {
		list += fmt.Sprintf(" and %d more", more)
	}
	return list
}
