package registry_test

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"
	"time"

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

func TestConcurrentFirstCallsShareOneTokenFetch(t *testing.T) {
	ts := registrytest.NewTokenServer(t, registrytest.TokenOptions{Users: map[string]string{"bob": secret}})
	d := registrytest.StartDistribution(t, registrytest.DistributionOptions{Token: ts})
	good := basicAuth("bob", secret)
	p := pushAuthed(t, d.Host, "team/private:v1", 1000, good)
	px := registrytest.NewProxy(t, d.Host)
	p.ref = mustRef(t, px.Host()+"/team/private:v1")
	r := newClient(t, nil)
	before := ts.Issued()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := r.c.CheckAccess(context.Background(), p.ref, good); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := ts.Issued() - before; n != 1 {
		t.Fatalf("tokens issued %d, want 1", n)
	}
	if n := px.Count("GET", "ping"); n != 1 {
		t.Fatalf("pings %d, want 1", n)
	}
}

func TestLeaderCancellationDoesNotFailWaiters(t *testing.T) {
	host := registrytest.InProcess(t)
	p := pushImage(t, host, "app/one:v1", 100)
	px := registrytest.NewProxy(t, host)
	// The first ping hangs until its caller gives up.
	px.Inject(registrytest.Fault{Kind: "ping", Times: 1, Delay: time.Minute})
	r := newClient(t, nil)
	ref := mustRef(t, px.Host()+"/app/one:v1")
	leaderCtx, cancel := context.WithCancel(context.Background())
	leaderDone := make(chan error, 1)
	go func() { leaderDone <- r.c.CheckAccess(leaderCtx, ref, nil) }()
	for px.Count("GET", "ping") == 0 {
		time.Sleep(time.Millisecond)
	}
	waiterDone := make(chan error, 1)
	go func() { waiterDone <- r.c.CheckAccess(context.Background(), ref, nil) }()
	time.Sleep(20 * time.Millisecond) // let the waiter join the flight
	cancel()
	if err := <-leaderDone; !errors.Is(err, context.Canceled) {
		t.Fatalf("leader err = %v, want context.Canceled", err)
	}
	if err := <-waiterDone; err != nil {
		t.Fatalf("waiter failed with the leader: %v", err)
	}
	_ = p
}
