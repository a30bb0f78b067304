package bootid

import (
	"os"
	"regexp"
	"testing"
)

func TestRead(t *testing.T) {
	if _, err := os.Stat("/proc/sys/kernel/random/boot_id"); err != nil {
		t.Skipf("no boot id on this system (%v): Read's value not tested", err)
	}
	id := Read()
	if !regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`).MatchString(id) {
		t.Fatalf("Read() = %q, want the kernel's boot id (a UUID)", id)
	}
	if again := Read(); again != id {
		t.Fatalf("Read() = %q, then %q: the boot id changed within one boot", id, again)
	}
}
