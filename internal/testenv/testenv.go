// Package testenv holds the project's rule for tests that need something
// the machine may lack (root, a program): under CI=true, which runs as root
// with every package installed, a missing requirement fails the test;
// elsewhere the test is skipped with a message saying what was not tested.
package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// Missing fails t under CI=true and skips it otherwise. need names what is
// missing; what says what the test would have checked.
func Missing(t testing.TB, need, what string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is required to test %s, and CI=true (CI runs as root with every package installed)", need, what)
	}
	t.Skipf("%s missing: %s not tested", need, what)
}

// RequireRoot applies Missing unless the test runs as root.
func RequireRoot(t testing.TB, what string) {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, "root", what)
	}
}

// RequireBinary returns the path of program name (looked up in PATH, then
// in /usr/sbin and /sbin, which a non-root PATH may lack), applying Missing
// when it is not installed.
func RequireBinary(t testing.TB, name, what string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, d := range []string{"/usr/sbin", "/sbin"} {
		if _, err := os.Stat(d + "/" + name); err == nil {
			return d + "/" + name
		}
	}
	Missing(t, fmt.Sprintf("the %s program", name), what)
	return ""
}
