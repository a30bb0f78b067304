package registry_test

import (
	"bytes"
	"context"
	"sync"
	"testing"

	"github.com/strata-oci/strata/internal/registrytest"
)

func TestConcurrentUse(t *testing.T) {
	var cnt registrytest.Counter
	host := registrytest.InProcess(t, cnt.Wrap)
	p := pushImage(t, host, "app/one:v1", 200000)
	cnt.Reset()
	r := newClient(t, nil)
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for i := 0; i < 32; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := r.c.Resolve(context.Background(), p.ref, nil); err != nil {
				errs <- err
				return
			}
			got, err := readBlob(t, r.c, p.ref, p.layerD, int64(len(p.layer)))
			if err == nil && !bytes.Equal(got, p.layer) {
				t.Error("bytes differ")
			}
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if cnt.Count("GET", "blob") != 32 || cnt.Count("HEAD", "manifest") != 32 {
		t.Fatalf("blob GETs %d, HEADs %d, want 32 each (the client does not deduplicate; the fetcher does)", cnt.Count("GET", "blob"), cnt.Count("HEAD", "manifest"))
	}
}
