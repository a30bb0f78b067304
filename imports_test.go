package strata

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"sort"
	"strings"
	"testing"
)

const module = "github.com/strata-oci/strata"

// leaves are the packages of internal/ that any layer may use (they import
// nothing of the project but other leaves); a rule that allows nothing
// allows them neither.
var leaves = []string{"internal/safego", "internal/sparse", "internal/privdir", "internal/refsig", "internal/testenv", "internal/flight", "internal/units", "internal/trunc", "internal/ctxio", "internal/lru", "internal/bootid", "internal/readahead"}

// testHelpers are fakes and builders for tests: no production package may
// import them (benchmarks may).
var testHelpers = []string{"internal/registrytest", "internal/reapitest", "internal/faulttest", "internal/fleettest", "tiers/tiertest", "materialize/internal/tartest"}

// rule says which project packages pkg may import (by prefix), as
// docs/architecture.md draws the layers. Packages not matched by any rule
// (the CLI, the benchmarks, tools) may import anything but test helpers,
// except benchmarks, which may import those too.
type rule struct {
	pkg   string   // the package, or a prefix ending in "/"
	allow []string // import paths or prefixes ending in "/"
}

var rules = []rule{
	// blob is the lowest layer: it may use the leaves, nothing else.
	{"blob", []string{}},
	{"internal/safego", nil}, {"internal/sparse", nil}, {"internal/privdir", nil},
	{"internal/refsig", nil}, {"internal/testenv", nil}, {"internal/units", nil},
	{"internal/trunc", nil}, {"internal/ctxio", nil}, {"internal/lru", nil}, {"internal/bootid", nil}, {"internal/readahead", nil},
	{"internal/flight", []string{"internal/safego"}},
	// Fill leases know a store and a signature, nothing of images.
	{"internal/lease", []string{"blob", "internal/refsig"}},
	{"manifest", []string{"blob", "manifest/internal/"}},
	{"manifest/internal/", nil},
	{"registry/credential", []string{}},
	{"registry", []string{"blob", "manifest", "registry/credential"}},
	// The tiers know nothing of images, registries or callers.
	{"tiers", []string{"blob"}},
	{"tiers/memory", []string{"blob"}},
	{"tiers/disk", []string{"blob"}},
	{"tiers/reapi", []string{"blob"}},
	// Only the fetcher joins registries and tiers, and through the stack.
	{"fetcher", []string{"blob", "manifest", "registry", "registry/credential", "tiers", "internal/lease"}},
	// Nothing under materialize/ knows registries, tiers or the fetcher:
	// the materializers read images through manifest.Image.
	{"materialize/", []string{"blob", "manifest", "materialize/internal/"}},
	{"materialize/internal/layerio", []string{"blob", "manifest"}},
	{"materialize/overlay", []string{"blob", "manifest", "materialize/internal/layerio"}},
	{"materialize/ext4", []string{"blob", "manifest", "materialize/internal/layerio"}},
	// The admin socket and the operator's operations act on the parts of an
	// opened host (never the REAPI tier directly, nor the front door).
	{"internal/admin", []string{"blob", "manifest", "registry", "registry/credential", "tiers", "tiers/memory",
		"tiers/disk", "fetcher", "materialize/overlay", "materialize/ext4", "internal/units"}},
	// The composition root (the module's root package, strata.Open) may use
	// every layer below the CLI.
	{"", []string{"blob", "manifest", "registry", "registry/credential", "tiers", "tiers/memory",
		"tiers/disk", "tiers/reapi", "fetcher", "materialize/overlay", "materialize/ext4", "internal/admin", "internal/units"}},
}

// violations returns one line per import that breaks the rules, for a
// graph of project packages (module-relative paths) to their project
// imports (non-test files).
func violations(graph map[string][]string) []string {
	var out []string
	for pkg, imps := range graph {
		r, ruled := ruleOf(pkg)
		for _, imp := range imps {
			switch {
			case isOneOf(imp, testHelpers) && !strings.HasPrefix(pkg, "benchmarks/") && !isOneOf(pkg, testHelpers):
				out = append(out, fmt.Sprintf("%s imports the test helper %s", pkg, imp))
			case !ruled || (r.allow != nil && isOneOf(imp, leaves)):
				// A rule with no allowed imports (blob, the leaves) allows
				// none at all; the others may use the leaves.
			case !allowed(imp, r.allow):
				out = append(out, fmt.Sprintf("%s imports %s, which is not below it (allowed: %s)", pkg, imp, strings.Join(r.allow, ", ")))
			}
		}
	}
	sort.Strings(out)
	return out
}

// ruleOf returns the most specific rule for pkg.
func ruleOf(pkg string) (rule, bool) {
	best, found := rule{}, false
	for _, r := range rules {
		match := r.pkg == pkg || (strings.HasSuffix(r.pkg, "/") && strings.HasPrefix(pkg, r.pkg))
		if match && (!found || len(r.pkg) > len(best.pkg)) {
			best, found = r, true
		}
	}
	return best, found
}

func allowed(imp string, allow []string) bool {
	for _, a := range allow {
		if imp == a || (strings.HasSuffix(a, "/") && strings.HasPrefix(imp, a)) {
			return true
		}
	}
	return false
}

func isOneOf(pkg string, list []string) bool {
	for _, p := range list {
		if pkg == p {
			return true
		}
	}
	return false
}

// projectGraph lists the module's packages and their project imports
// (non-test files) with go list.
func projectGraph(t *testing.T) map[string][]string {
	t.Helper()
	out, err := exec.Command("go", "list", "-json", module+"/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	graph := map[string][]string{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p struct {
			ImportPath string
			Imports    []string
		}
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		rel := strings.TrimPrefix(strings.TrimPrefix(p.ImportPath, module), "/")
		var imps []string
		for _, imp := range p.Imports {
			if strings.HasPrefix(imp, module+"/") {
				imps = append(imps, strings.TrimPrefix(imp, module+"/"))
			}
		}
		graph[rel] = imps
	}
	return graph
}

// TestImportRules: no package imports one above its layer.
func TestImportRules(t *testing.T) {
	graph := projectGraph(t)
	if len(graph) < 20 {
		t.Fatalf("go list found %d packages", len(graph))
	}
	for _, r := range rules {
		if _, ok := graph[strings.TrimSuffix(r.pkg, "/")]; !ok && !strings.HasSuffix(r.pkg, "/") {
			t.Errorf("rule for %s names no package (renamed? update the rules and docs/architecture.md)", r.pkg)
		}
	}
	for _, v := range violations(graph) {
		t.Error(v)
	}
}

// TestImportRulesCatchViolations: the checker refuses each kind of upward
// import (a test of the test).
func TestImportRulesCatchViolations(t *testing.T) {
	for _, tc := range []struct {
		desc string
		pkg  string
		imp  string
	}{
		{"blob imports the project", "blob", "manifest"},
		{"blob imports the registry", "blob", "registry"},
		{"a tier knows images", "tiers/disk", "manifest"},
		{"the stack knows the fetcher", "tiers", "fetcher"},
		{"the registry knows tiers", "registry", "tiers"},
		{"a materializer knows the registry", "materialize/overlay", "registry"},
		{"a materializer knows a concrete tier", "materialize/ext4", "tiers/disk"},
		{"the fetcher knows a concrete tier", "fetcher", "tiers/reapi"},
		{"production code imports a fake", "", "internal/registrytest"},
		{"the CLI imports a fake", "cmd/blobctl", "internal/reapitest"},
		{"the front door imports the CLI", "", "cmd/blobctl"},
		{"a materializer helper knows the fetcher", "materialize/internal/layerio", "fetcher"},
		{"a new package under materialize knows the registry", "materialize/newthing", "registry"},
		{"the admin package knows the REAPI tier", "internal/admin", "tiers/reapi"},
		{"a leaf imports the project", "internal/units", "blob"},
		{"a leaf imports another leaf", "internal/trunc", "internal/units"},
		{"the context reader imports blob", "internal/ctxio", "blob"},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			if v := violations(map[string][]string{tc.pkg: {tc.imp}}); len(v) != 1 {
				t.Errorf("%s -> %s: %d violations, want 1", tc.pkg, tc.imp, len(v))
			}
		})
	}
	if v := violations(map[string][]string{"fetcher": {"tiers", "registry", "internal/safego"}, "benchmarks/harness": {"internal/registrytest"}}); len(v) != 0 {
		t.Errorf("allowed imports refused: %v", v)
	}
}
