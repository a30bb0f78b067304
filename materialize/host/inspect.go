package host

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/strata-oci/strata/registry/credential"
)

// ErrNoRoot means Open with Config.Inspect found no Strata root at the
// configured path (nothing there, or a directory that holds no disk tier).
var ErrNoRoot = errors.New("no Strata root")

// BudgetsName is the file under the disk root in which Open records the
// budgets of the host using the root.
const BudgetsName = "budgets.json"

// Budgets are the byte budgets of the host that last opened a root to use
// it (not to inspect it), as recorded in ROOT/budgets.json. Their keys are
// the config keys.
type Budgets struct {
	Memory  Size `json:"memory"`
	Disk    Size `json:"disk-budget"`
	Overlay Size `json:"overlay-budget"`
	// Ext4 is 0 (unbounded) in a record written before ext4 images had
	// a budget.
	Ext4 Size `json:"ext4-budget"`
}

func budgetsOf(c Config) Budgets {
	return Budgets{Memory: c.Memory.Size, Disk: c.Disk.Budget, Overlay: c.Overlay.Budget, Ext4: c.Ext4.Budget}
}

// StoredBudgets returns the budgets recorded in root; ok is false when none
// are (no root, or one last used before budgets were recorded). A record
// that cannot be read is an error naming the file.
func StoredBudgets(root string) (b Budgets, ok bool, err error) {
	p := filepath.Join(root, BudgetsName)
	data, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return Budgets{}, false, nil
	}
	if err != nil {
		return Budgets{}, false, fmt.Errorf("stored budgets: %w", err)
	}
	if err := json.Unmarshal(data, &b); err != nil {
		return Budgets{}, false, fmt.Errorf("stored budgets %s: %w (remove the file; the next process using the root writes it again)", p, err)
	}
	if b.Memory < 0 || b.Disk < 0 || b.Overlay < 0 || b.Ext4 < 0 {
		return Budgets{}, false, fmt.Errorf("stored budgets %s: negative size (remove the file; the next process using the root writes it again)", p)
	}
	return b, true, nil
}

// writeBudgets records b in root (mode 0600, replaced atomically), unless
// the record already says so.
func writeBudgets(root string, b Budgets) error {
	if cur, ok, err := StoredBudgets(root); err == nil && ok && cur == b {
		return nil
	}
	data, err := json.MarshalIndent(b, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(root, ".budgets-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err = tmp.Write(append(data, '\n')); err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(tmp.Name(), filepath.Join(root, BudgetsName))
}

// checkInspectRoot fails with an error wrapping ErrNoRoot unless root is a
// directory holding a disk tier (its index or its blobs), so that
// inspecting a mistyped path neither creates a root there nor turns an
// unrelated directory into one.
func checkInspectRoot(root string) error {
	fi, err := os.Stat(root)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%w at %s: it does not exist (inspection never creates one)", ErrNoRoot, root)
	case err != nil:
		return fmt.Errorf("root %s: %w", root, err)
	case !fi.IsDir():
		return fmt.Errorf("%w at %s: it is not a directory", ErrNoRoot, root)
	}
	for _, name := range []string{"index", "blobs"} {
		if fi, err := os.Stat(filepath.Join(root, name)); err == nil && fi.IsDir() {
			return nil
		}
	}
	return fmt.Errorf("%w at %s: the directory holds no disk tier (no index, no blobs; inspection never creates one)", ErrNoRoot, root)
}

// identityKey reads the host's identity key, creating it unless inspect is
// set: an inspecting host without one uses a key of its own that it does
// not keep (it writes no refs that would need it later).
func identityKey(path string, inspect bool) (credential.SecretKey, error) {
	if !inspect {
		return loadOrCreateKey(path)
	}
	if _, err := os.Stat(path); err == nil {
		return loadOrCreateKey(path)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return credential.SecretKey{}, err
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return credential.SecretKey{}, err
	}
	return credential.NewSecretKey(key), nil
}
