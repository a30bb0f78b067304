package admin

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/strata-oci/strata/internal/units"
)

// ErrNoRoot means a host opened only to inspect found no Strata root at the
// configured path (nothing there, or a directory that holds no disk tier).
var ErrNoRoot = errors.New("no Strata root")

// BudgetsName is the file under the disk root in which a host opened to use
// the root records its budgets.
const BudgetsName = "budgets.json"

// Budgets are the byte budgets of the host that last opened a root to use
// it (not to inspect it), as recorded in ROOT/budgets.json. Their keys are
// the config keys.
type Budgets struct {
	Memory  units.Size `json:"memory"`
	Disk    units.Size `json:"disk-budget"`
	Overlay units.Size `json:"overlay-budget"`
	// Ext4 is 0 (unbounded) in a record written before ext4 images had
	// a budget.
	Ext4 units.Size `json:"ext4-budget"`
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

// WriteBudgets records b in root (mode 0600, replaced atomically), unless
// the record already says so.
func WriteBudgets(root string, b Budgets) error {
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
