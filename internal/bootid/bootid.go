// Package bootid reads the kernel's boot id, which tells a machine that
// went down (a new id) from a process that only restarted (the same id):
// after the first, files written but not yet fsynced may be torn.
package bootid

import (
	"os"
	"strings"
)

// Read returns the kernel's boot id, or "" when it cannot be read (callers
// then take every restart for a machine crash).
func Read() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
