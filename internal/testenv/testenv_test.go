package testenv_test

import (
	"testing"

	"github.com/strata-oci/strata/internal/testenv"
)

// Outside CI a missing requirement skips the test (and says what).
func TestMissingSkipsOutsideCI(t *testing.T) {
	t.Setenv("CI", "")
	var skipped bool
	t.Run("missing program", func(t *testing.T) {
		defer func() { skipped = t.Skipped() }()
		testenv.RequireBinary(t, "strata-no-such-program", "nothing")
		t.Error("RequireBinary returned for a missing program")
	})
	if !skipped {
		t.Fatal("a missing program outside CI did not skip the test")
	}
}

func TestRequireBinaryFindsSbin(t *testing.T) {
	if p := testenv.RequireBinary(t, "sh", "the lookup"); p == "" {
		t.Fatal("sh not found")
	}
}
