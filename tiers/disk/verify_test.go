package disk

import (
	"context"
	"errors"
	"os"
	"testing"

	"github.com/strata-oci/strata/blob"
)

func TestVerify(t *testing.T) {
	ctx := context.Background()
	tr := openTier(t, Config{})
	good := put(t, tr, randomBytes(90, 300_000))
	rotten := put(t, tr, randomBytes(91, 300_000))
	missing := put(t, tr, randomBytes(92, 1000))
	f, err := os.OpenFile(tr.path(rotten.Encoded()), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("rot"), 1000); err != nil {
		t.Fatal(err)
	}
	f.Close()
	rm(t, tr.path(missing.Encoded()))

	run := func(remove bool) map[blob.Digest]error {
		got := map[blob.Digest]error{}
		err := tr.Verify(ctx, remove, func(info blob.Info, err error) { got[info.Digest] = err })
		if err != nil {
			t.Fatalf("Verify: %v", err)
		}
		return got
	}
	got := run(false)
	if len(got) != 3 || got[good] != nil || !errors.Is(got[rotten], blob.ErrMismatch) || !errors.Is(got[missing], blob.ErrNotFound) {
		t.Fatalf("Verify(remove=false) reported %v", got)
	}
	// Without remove the rotten blob stays listed; a missing file's row is
	// forgotten either way.
	if _, err := tr.Stat(ctx, rotten); err != nil {
		t.Fatalf("Stat(rotten) after Verify without remove = %v", err)
	}
	requireMiss(t, tr, missing)

	got = run(true)
	if len(got) != 2 || got[good] != nil || !errors.Is(got[rotten], blob.ErrMismatch) {
		t.Fatalf("Verify(remove=true) reported %v", got)
	}
	requireMiss(t, tr, rotten)
	if got := run(true); len(got) != 1 || got[good] != nil {
		t.Fatalf("third Verify reported %v", got)
	}
	if u := usage(t, tr); u.Blobs != 1 || u.Bytes != 300_000 {
		t.Fatalf("usage %+v", u)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := tr.Verify(cctx, false, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("Verify with a cancelled context = %v", err)
	}
}
