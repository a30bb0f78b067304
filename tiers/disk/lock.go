package disk

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// ErrLocked means another Tier (in this process or another one) holds the
// root. Open returns an error that wraps it and names the root.
var ErrLocked = errors.New("disk tier root is locked")

// rootLock is an exclusive flock on root/LOCK, held for the life of a Tier.
// flock locks belong to the open file description, so a second open of the
// same file conflicts even within one process.
type rootLock struct {
	f *os.File
}

// lockRoot takes the lock without blocking. The file records the holder's
// pid, which the error for a busy root reports.
func lockRoot(root string) (*rootLock, error) {
	path := filepath.Join(root, "LOCK")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("disk: open lock file: %w", err)
	}
	fd := int(f.Fd())
	for {
		err = syscall.Flock(fd, syscall.LOCK_EX|syscall.LOCK_NB)
		if err != syscall.EINTR {
			break
		}
	}
	if err != nil {
		holder := ""
		if b, rerr := os.ReadFile(path); rerr == nil {
			if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil && pid > 0 {
				holder = fmt.Sprintf(" (held by pid %d)", pid)
			}
		}
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s is in use by another disk tier%s", ErrLocked, root, holder)
		}
		return nil, fmt.Errorf("disk: lock %s: %w", path, err)
	}
	// Best effort: the pid only improves the message another opener sees.
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &rootLock{f: f}, nil
}

// unlock releases the lock. The LOCK file stays: removing it would let two
// openers lock two different files.
func (l *rootLock) unlock() error {
	_ = l.f.Truncate(0)
	err := syscall.Flock(int(l.f.Fd()), syscall.LOCK_UN)
	if cerr := l.f.Close(); err == nil {
		err = cerr
	}
	return err
}
