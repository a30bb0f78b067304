package trunc_test

import (
	"testing"

	"github.com/strata-oci/strata/internal/trunc"
)

func TestString(t *testing.T) {
	for _, tc := range []struct {
		desc, in string
		n        int
		want     string
	}{
		{"shorter than n: unchanged", "abc", 5, "abc"},
		{"exactly n: unchanged", "abcde", 5, "abcde"},
		{"longer than n: cut and marked", "abcdef", 5, "abcde..."},
		{"empty", "", 3, ""},
		{"n zero", "x", 0, "..."},
	} {
		if got := trunc.String(tc.in, tc.n); got != tc.want {
			t.Errorf("%s: String(%q, %d) = %q, want %q", tc.desc, tc.in, tc.n, got, tc.want)
		}
	}
}
