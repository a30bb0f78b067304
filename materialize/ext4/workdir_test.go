package ext4

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/strata-oci/strata/materialize/internal/tartest"
)

// leftover writes a file of n bytes into dir, last written age ago, as a
// killed conversion leaves it.
func leftover(t *testing.T, dir, name string, n int, age time.Duration) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, make([]byte, 0), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, n)
	for i := range buf {
		buf[i] = byte(i | 1) // not zeros: real blocks
	}
	if _, err := f.Write(buf); err != nil {
		t.Fatal(err)
	}
	f.Close()
	when := time.Now().Add(-age)
	if err := os.Chtimes(p, when, when); err != nil {
		t.Fatal(err)
	}
	return p
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// TestRemoveStale: leftovers of any age go when the Converter is alone on
// its WorkDir; only day-old ones while another Converter shares it; a
// conversion in flight keeps its files and completes.
func TestRemoveStale(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		desc      string
		shared    bool // another Converter uses the same WorkDir
		inFlight  bool // a conversion of this Converter runs during the pass
		wantFresh bool // a leftover written a minute ago is removed
	}{
		{"alone: leftovers of any age", false, false, true},
		{"shared WorkDir: only day-old leftovers", true, false, false},
		{"alone with a conversion in flight: older leftovers, not its files", false, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			dir := t.TempDir()
			c, err := New(Config{Store: bigStore(), WorkDir: dir, SigningKey: fleetKey})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if tt.shared {
				other, err := New(Config{Store: bigStore(), WorkDir: dir, SigningKey: fleetKey})
				if err != nil {
					t.Fatal(err)
				}
				defer other.Close()
			}
			fresh := leftover(t, c.tmpDir, "convert-111.ext4", 1<<20, time.Minute)
			old := leftover(t, c.tmpDir, "convert-222.ext4", 1<<20, 25*time.Hour)

			var gate chan struct{}
			errc := make(chan error, 1)
			if tt.inFlight {
				gate = make(chan struct{})
				img := &testImage{layers: append(sampleImage().layers, &gatedLayer{rawLayer: rawLayer{data: tartest.New().File("late", []byte("l")).Tar()}, gate: gate})}
				go func() { _, err := c.Materialize(ctx, img, nil); errc <- err }()
				deadline := time.Now().Add(time.Minute) // a bound against a hang, not a speed check
				for {
					if es, _ := os.ReadDir(c.tmpDir); len(es) > 2 {
						break // the conversion's temporary image exists
					}
					if time.Now().After(deadline) {
						t.Fatal("the conversion never started")
					}
					time.Sleep(10 * time.Millisecond)
				}
			}
			files, bytes, err := c.RemoveStale(ctx)
			if err != nil {
				t.Fatal(err)
			}
			want := 1
			if tt.wantFresh {
				want = 2
			}
			if files != want || bytes < int64(want)<<20 {
				t.Errorf("RemoveStale = %d files, %d bytes; want %d files of at least %d bytes", files, bytes, want, want<<20)
			}
			if exists(old) {
				t.Error("a day-old leftover stayed")
			}
			if exists(fresh) != !tt.wantFresh {
				t.Errorf("fresh leftover exists = %v, want %v", exists(fresh), !tt.wantFresh)
			}
			if tt.inFlight {
				close(gate)
				if err := <-errc; err != nil {
					t.Fatalf("the conversion in flight during RemoveStale failed: %v", err)
				}
			}
		})
	}
}

// TestRemoveStaleAfterOtherCloses: once the other Converter of a shared
// WorkDir is closed, fresh leftovers go too.
func TestRemoveStaleAfterOtherCloses(t *testing.T) {
	dir := t.TempDir()
	c, err := New(Config{Store: bigStore(), WorkDir: dir, SigningKey: fleetKey})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	other, err := New(Config{Store: bigStore(), WorkDir: dir, SigningKey: fleetKey})
	if err != nil {
		t.Fatal(err)
	}
	p := leftover(t, c.tmpDir, "download-1.ext4", 4096, time.Minute)
	if n, _, err := c.RemoveStale(context.Background()); err != nil || n != 0 || !exists(p) {
		t.Fatalf("RemoveStale while shared = %d, %v (exists %v); want 0 removed", n, err, exists(p))
	}
	other.Close()
	if n, _, err := c.RemoveStale(context.Background()); err != nil || n != 1 || exists(p) {
		t.Fatalf("RemoveStale alone = %d, %v (exists %v); want 1 removed", n, err, exists(p))
	}
}

// budgetImage is an image of its own whose one file of n bytes is not
// zeros, so that its ext4 image takes about n bytes of disk.
func budgetImage(name string, n int) *testImage {
	return imageOf(tartest.New().File(name, tartest.Content(name, n)).Tar())
}

// age sets the last use of img's local image to ago.
func age(t *testing.T, c *Converter, img *testImage, ago time.Duration) {
	t.Helper()
	dv, err := c.derive(img, nil)
	if err != nil {
		t.Fatal(err)
	}
	when := time.Now().Add(-ago)
	if err := os.Chtimes(c.metaPath(dv), when, when); err != nil {
		t.Fatal(err)
	}
}

func isLocal(t *testing.T, c *Converter, img *testImage) bool {
	t.Helper()
	dv, err := c.derive(img, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, ok := c.local(dv)
	return ok
}

// TestBudgetEvictsLRU: after a materialization, the least recently used
// local images go until the rest fit Config.Budget; a use (a local hit)
// makes an image recent; the image just returned, and images handed out
// moments ago, stay even when the budget cannot hold them.
func TestBudgetEvictsLRU(t *testing.T) {
	ctx := context.Background()
	c := newConverter(t, bigStore())
	a, b, cc, d := budgetImage("a", 2<<20), budgetImage("b", 2<<20), budgetImage("c", 2<<20), budgetImage("d", 2<<20)
	for _, img := range []*testImage{a, b, cc} {
		if _, err := c.Materialize(ctx, img, nil); err != nil {
			t.Fatal(err)
		}
	}
	u, err := c.Usage()
	if err != nil || u.Images != 3 || u.Bytes < 6<<20 {
		t.Fatalf("Usage = %+v, %v; want 3 images of at least 6 MiB", u, err)
	}
	one := u.Bytes / 3
	c.cfg.Budget = 3*one + one/2 // room for three of the four

	// d makes four: a, used longest ago, goes.
	age(t, c, a, 10*time.Minute)
	age(t, c, b, 5*time.Minute)
	age(t, c, cc, 4*time.Minute)
	if _, err := c.Materialize(ctx, d, nil); err != nil {
		t.Fatal(err)
	}
	for _, x := range []struct {
		name string
		img  *testImage
		want bool
	}{{"a", a, false}, {"b", b, true}, {"c", cc, true}, {"d", d, true}} {
		if got := isLocal(t, c, x.img); got != x.want {
			t.Errorf("after d: image %s local = %v, want %v", x.name, got, x.want)
		}
	}
	if u, _ := c.Usage(); u.Bytes > c.cfg.Budget || u.Images != 3 || u.Budget != c.cfg.Budget {
		t.Errorf("after d: Usage = %+v, want 3 images within the budget %d", u, c.cfg.Budget)
	}

	// A local hit on b makes it recent: bringing a back evicts c.
	age(t, c, b, 20*time.Minute)
	age(t, c, cc, 10*time.Minute)
	age(t, c, d, 5*time.Minute)
	if r, err := c.Materialize(ctx, b, nil); err != nil || !r.FromCache {
		t.Fatalf("Materialize(b) = %+v, %v; want a local hit", r, err)
	}
	if _, err := c.Materialize(ctx, a, nil); err != nil {
		t.Fatal(err)
	}
	for _, x := range []struct {
		name string
		img  *testImage
		want bool
	}{{"a", a, true}, {"b", b, true}, {"c", cc, false}, {"d", d, true}} {
		if got := isLocal(t, c, x.img); got != x.want {
			t.Errorf("after using b and bringing a back: image %s local = %v, want %v", x.name, got, x.want)
		}
	}

	// A budget smaller than one image: the image returned stays, and so
	// does one handed out moments ago (b); older ones go.
	c.cfg.Budget = 1
	age(t, c, a, time.Hour)
	age(t, c, d, time.Hour)
	r, err := c.Materialize(ctx, cc, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(r.Path); err != nil {
		t.Fatalf("the image just returned is gone: %v", err)
	}
	for _, x := range []struct {
		name string
		img  *testImage
		want bool
	}{{"a", a, false}, {"b", b, true}, {"c", cc, true}, {"d", d, false}} {
		if got := isLocal(t, c, x.img); got != x.want {
			t.Errorf("budget of 1 byte: image %s local = %v, want %v", x.name, got, x.want)
		}
	}
}

// TestBudgetUnlinksOpenImage: an image removed by the budget stays
// readable through a file opened before.
func TestBudgetUnlinksOpenImage(t *testing.T) {
	ctx := context.Background()
	c := newConverter(t, bigStore())
	a, b := budgetImage("a", 1<<20), budgetImage("b", 1<<20)
	ra, err := c.Materialize(ctx, a, nil)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(ra.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	age(t, c, a, time.Hour)
	c.cfg.Budget = 1
	if _, err := c.Materialize(ctx, b, nil); err != nil {
		t.Fatal(err)
	}
	if exists(ra.Path) {
		t.Fatal("image a was not removed by the budget")
	}
	// Another process (e2fsck) reads it through this one's descriptor.
	e2fsck(t, fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), f.Fd()))
}
