package tiertest_test

import (
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/tiers/tiertest"
)

const naiveLimit = 2 << 20

// naiveConfig runs the naive tier with the bugs named in bugs (comma
// separated; none for a correct tier).
func naiveConfig(bugs string) tiertest.Config {
	return tiertest.Config{
		New: func(t *testing.T) blob.Tier {
			n := newNaive(bugs, naiveLimit)
			t.Cleanup(func() { n.Close() })
			return n
		},
		MaxBlob: naiveLimit,
		Corrupt: func(t *testing.T, tier blob.Tier, d blob.Digest) {
			tier.(*naive).corrupt(d)
		},
		CannotDeleteBlobs: slices.Contains(strings.Split(bugs, ","), "noBlobDelete"),
	}
}

// TestConformanceNaive runs the suite against a second, independent correct
// implementation, so the suite is not fitted to one tier.
func TestConformanceNaive(t *testing.T) {
	tiertest.Run(t, naiveConfig(""))
}

// TestConformanceNaiveNoBlobDelete checks Config.CannotDeleteBlobs: a tier
// whose Delete is unsupported but whose DeleteRef works.
func TestConformanceNaiveNoBlobDelete(t *testing.T) {
	tiertest.Run(t, naiveConfig("noBlobDelete"))
}

// TestNaiveHelper is run in a child process by TestSuiteCatchesBugs with
// TIERTEST_NAIVE_BUGS set; on its own it does nothing.
func TestNaiveHelper(t *testing.T) {
	bugs := os.Getenv("TIERTEST_NAIVE_BUGS")
	if bugs == "" {
		t.Skip("helper for TestSuiteCatchesBugs")
	}
	tiertest.Run(t, naiveConfig(bugs))
}

// TestSuiteCatchesBugs breaks one rule of the contract at a time in the
// naive tier and checks that the subtest holding that rule fails.
func TestSuiteCatchesBugs(t *testing.T) {
	tests := []struct {
		desc    string
		bug     string
		subtest string
	}{
		{"Put stores unverified bytes", "noVerify", "PutMismatchStoresNothing"},
		{"Put checks the digest but not the size", "onlyDigest", "PutMismatchStoresNothing"},
		{"malformed digests are looked up", "noValidate", "InvalidDigest"},
		{"malformed ref keys are accepted", "noValidate", "RefInvalid"},
		{"a miss is not ErrNotFound", "missNotWrapped", "NotFound"},
		{"Put ignores ctx", "ignoreCtx", "PutCancelMidStream"},
		{"readers ignore ctx", "ignoreCtx", "OpenCancelMidStream"},
		{"calls ignore a cancelled ctx", "ignoreCtx", "CancelledContext"},
		{"second Put fails", "putNotIdempotent", "IdempotentPut"},
		{"Put reads a too-large blob before declining", "tooLargeReadsAll", "TooLarge"},
		{"Delete does nothing", "deleteNoop", "DeleteThenMiss"},
		{"Walk ignores fn's error", "walkIgnoresFnErr", "Walk"},
		{"Info.Tier empty", "infoNoTier", "Info"},
		{"reader Close fails", "readerCloseErr", "ReaderClose"},
		{"refs ignore scope", "ignoreScope", "RefScoping"},
		{"ref key joined without escaping", "joinKey", "RefScoping"},
		{"expired refs are served", "ignoreExpiry", "RefExpiredInPast"},
		{"refs never expire", "ignoreExpiry", "RefExpiresSoon"},
		{"WalkRefs lists expired refs", "ignoreExpiry", "WalkRefs"},
		{"WalkRefs matches namespace prefixes", "walkRefsPrefix", "WalkRefs"},
		{"Expires is dropped", "expiresLost", "RefRoundTrip"},
		{"Close does nothing", "closeNoop", "Close"},
		{"reads of rotten storage are not verified", "noReadVerify", "CorruptionDetected"},
		{"Delete unsupported but not declared", "noBlobDeleteUndeclared", "DeleteThenMiss"},
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			t.Parallel()
			cmd := exec.Command(exe, "-test.run=^TestNaiveHelper$/^"+tt.subtest+"$", "-test.v", "-test.count=1")
			cmd.Env = append(os.Environ(), "TIERTEST_NAIVE_BUGS="+tt.bug)
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("suite passed a tier with bug %q; want %s to fail. Output:\n%s", tt.bug, tt.subtest, out)
			}
			if _, ok := err.(*exec.ExitError); !ok {
				t.Fatalf("running the helper: %v", err)
			}
			if want := "--- FAIL: TestNaiveHelper/" + tt.subtest + " "; !strings.Contains(string(out), want) {
				t.Errorf("bug %q: output lacks %q:\n%s", tt.bug, want, out)
			}
		})
	}
}

// TestConformanceFaulty runs the suite against the fault injector with no
// fault armed: a pass-through wrapper, as every wrapper must be.
func TestConformanceFaulty(t *testing.T) {
	cfg := naiveConfig("")
	newTier := cfg.New
	cfg.New = func(t *testing.T) blob.Tier { return tiertest.NewFaulty(newTier(t)) }
	cfg.Corrupt = func(t *testing.T, tier blob.Tier, d blob.Digest) {
		tier.(*tiertest.Faulty).Tier.(*naive).corrupt(d)
	}
	tiertest.Run(t, cfg)
}
