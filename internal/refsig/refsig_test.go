package refsig_test

import (
	"bytes"
	"testing"

	"github.com/strata-oci/strata/internal/refsig"
)

func TestMACSeparatesFields(t *testing.T) {
	key := []byte("k")
	if bytes.Equal(refsig.MAC(key, "ab", "c"), refsig.MAC(key, "a", "bc")) {
		t.Fatal("field boundaries do not change the MAC")
	}
	if bytes.Equal(refsig.MAC(key, "x"), refsig.MAC([]byte("other"), "x")) {
		t.Fatal("the key does not change the MAC")
	}
}

func TestAttachSplit(t *testing.T) {
	key := []byte("k")
	want := func(base string) []byte { return refsig.MAC(key, base) }
	signed := refsig.Attach("application/x", want("application/x"))
	for _, tc := range []struct {
		desc, in string
		base     string
		ok       bool
	}{
		{"signed", signed, "application/x", true},
		{"unsigned", "application/x", "application/x", false},
		{"base changed", "application/y" + signed[len("application/x"):], "application/y", false},
		{"signature cut", signed[:len(signed)-2], "application/x", false},
		{"not hex", "application/x" + refsig.Param + "zz", "application/x", false},
	} {
		base, ok := refsig.Split(tc.in, want)
		if base != tc.base || ok != tc.ok {
			t.Errorf("%s: Split = %q, %v; want %q, %v", tc.desc, base, ok, tc.base, tc.ok)
		}
	}
}
