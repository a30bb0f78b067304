package layerio

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/strata-oci/strata/blob"
)

func TestFailuresRememberExpireAndBound(t *testing.T) {
	now := time.Unix(1000, 0)
	f := &Failures{TTL: time.Minute, Max: 3, now: func() time.Time { return now }}
	d := blob.FromBytes([]byte("bomb"))
	limit := fmt.Errorf("layer x: %w", ErrLimitExceeded)
	f.Remember(d, "reg/a", limit)

	err := f.Check(d, "reg/a")
	if !errors.Is(err, ErrLimitExceeded) {
		t.Fatalf("Check = %v, want the remembered ErrLimitExceeded", err)
	}
	if f.Check(d, "reg/b") != nil {
		t.Error("a failure of one origin was reported for another (one registry could poison a digest for all)")
	}
	// Remembering the remembered error again does not renew it.
	now = now.Add(50 * time.Second)
	f.Remember(d, "reg/a", err)
	now = now.Add(11 * time.Second)
	if err := f.Check(d, "reg/a"); err != nil {
		t.Errorf("after the TTL: Check = %v, want nil", err)
	}
	for i := range 10 {
		f.Remember(blob.FromBytes([]byte{byte(i)}), "o", limit)
		now = now.Add(time.Second)
	}
	if f.Len() != 3 {
		t.Errorf("Len = %d, want at most Max = 3", f.Len())
	}
	if f.Check(blob.FromBytes([]byte{9}), "o") == nil || f.Check(blob.FromBytes([]byte{0}), "o") != nil {
		t.Error("the bound did not push out the oldest entry first")
	}
}

func TestIsLayerLimit(t *testing.T) {
	for _, c := range []struct {
		desc string
		err  error
		want bool
	}{
		{"per-layer limit", fmt.Errorf("x: %w", ErrLimitExceeded), true},
		{"budget shared with others", fmt.Errorf("x: %w", ErrBudgetExceeded), false},
		{"other error", errors.New("boom"), false},
	} {
		if got := IsLayerLimit(c.err); got != c.want {
			t.Errorf("%s: IsLayerLimit = %v, want %v", c.desc, got, c.want)
		}
	}
}
