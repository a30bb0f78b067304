package fetcher_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/internal/fleettest"
	"github.com/strata-oci/strata/internal/reapitest"
	"github.com/strata-oci/strata/internal/registrytest"
	"github.com/strata-oci/strata/manifest"
	"github.com/strata-oci/strata/registry/credential"
)

// checkBytes fails unless every executor (but those in mayFail) read
// exactly the pushed layers.
func checkBytes(t *testing.T, res []fleettest.Result, want [][]byte, mayFail map[int]bool) {
	t.Helper()
	for i, r := range res {
		if mayFail[i] {
			continue
		}
		if r.Err != nil {
			t.Errorf("executor %d: %v", i, r.Err)
			continue
		}
		for j := range want {
			if !bytes.Equal(r.Layers[j], want[j]) {
				t.Errorf("executor %d: layer %d differs", i, j)
			}
		}
	}
}

// TestFleetCollapsesPulls: 16 executors sharing a REAPI tier start the
// same private 8-layer image at once. With leases the registry serves
// each blob at most twice in all and the CAS receives each layer at most
// twice; without them (the control) every executor pulls.
func TestFleetCollapsesPulls(t *testing.T) {
	for _, tc := range []struct {
		desc   string
		leases bool
	}{
		{"with leases", true},
		{"control: no leases", false},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			fl := fleettest.New(t, fleettest.Options{N: 16, Leases: tc.leases})
			ref, layers := fl.Push(t)
			checkBytes(t, fl.Run(ref), layers, nil)

			maxGets, maxUploads := 0, 0
			for _, l := range layers {
				d := blob.FromBytes(l)
				maxGets = max(maxGets, fl.GETs(d))
				maxUploads = max(maxUploads, fl.Uploads(d))
			}
			// The image's documents are blobs of the fleet too.
			img, err := fl.Execs[0].Fetcher.FetchImage(context.Background(), ref, fleettest.Credential())
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range []blob.Digest{img.Digest(), img.Manifest.Config.Digest} {
				if n := fl.Uploads(d); tc.leases && n > 2 {
					t.Errorf("document %s was uploaded %d times to the CAS, want at most 2", d, n)
				}
			}
			t.Logf("most registry GETs of one layer: %d; most CAS uploads of one layer: %d; leases taken %d, followed %d",
				maxGets, maxUploads, fl.LeaseEvents("taken"), fl.LeaseEvents("followed"))
			if !tc.leases {
				if maxGets < 4 {
					t.Fatalf("without leases the most-pulled layer was pulled %d times by 16 executors; the control shows nothing", maxGets)
				}
				return
			}
			if maxUploads > 2 {
				t.Errorf("a layer was uploaded %d times to the CAS, want at most 2", maxUploads)
			}
			for d, n := range fl.AllGETs() {
				if n > 2 {
					t.Errorf("blob %s pulled %d times from the registry, want at most 2", d, n)
				}
			}
			if fl.LeaseEvents("followed") == 0 {
				t.Error("no executor followed a lease")
			}
		})
	}
}

// TestFleetLeaderKilled: the executor that pulls a layer first has its
// context cancelled halfway through the layer's bytes. Every other
// executor still ends with verified bytes; one of them takes the lease
// over.
func TestFleetLeaderKilled(t *testing.T) {
	fl := fleettest.New(t, fleettest.Options{N: 16, Leases: true})
	ref, layers := fl.Push(t)
	victim := layers[3]
	vd := string(blob.FromBytes(victim))
	var once sync.Once
	killed := -1
	fl.OnBlobGET = func(exec int, d string, w http.ResponseWriter) bool {
		if d != vd {
			return false
		}
		first := false
		once.Do(func() { first = true; killed = exec })
		if !first {
			return false
		}
		// Half the bytes, then the executor dies.
		w.Header().Set("Content-Length", fmt.Sprint(len(victim)))
		w.WriteHeader(http.StatusOK)
		w.Write(victim[:len(victim)/2])
		w.(http.Flusher).Flush()
		fl.Execs[exec].Cancel()
		time.Sleep(100 * time.Millisecond)
		return true
	}
	res := fl.Run(ref)
	if killed < 0 {
		t.Fatal("no executor pulled the victim layer")
	}
	checkBytes(t, res, layers, map[int]bool{killed: true})
	if res[killed].Err == nil {
		t.Errorf("the killed executor %d succeeded", killed)
	}
	n := fl.GETs(blob.FromBytes(victim))
	if n > 3 {
		t.Errorf("the victim layer was pulled %d times, want the killed pull plus at most 2", n)
	}
	t.Logf("victim layer pulls: %d; takeovers: %d", n, fl.LeaseEvents("takeover"))
}

// TestFleetSharedTierStalls: the REAPI server stalls every streamed upload
// (the layers are too large for a batch, so no layer reaches the shared
// tier) and every read of one layer; leases then cannot collapse those
// pulls, but every executor still ends with verified bytes: a leader
// whose blob did not reach the shared tier tells the followers to pull
// themselves instead of waiting.
func TestFleetSharedTierStalls(t *testing.T) {
	fl := fleettest.New(t, fleettest.Options{N: 8, Leases: true, StallTimeout: 300 * time.Millisecond, LayerSize: 5 << 20})
	ref, layers := fl.Push(t)
	fl.Srv.Inject(reapitest.Fault{Call: reapitest.Write, Action: reapitest.Stall, AfterBytes: 64 << 10})
	fl.Srv.Inject(reapitest.Fault{Call: reapitest.Read, Action: reapitest.Stall, Hash: strings.TrimPrefix(string(blob.FromBytes(layers[5])), "sha256:")})
	checkBytes(t, fl.Run(ref), layers, nil)
	t.Logf("leases taken %d, followed %d, pulled at own deadline or on the holder's word %d",
		fl.LeaseEvents("taken"), fl.LeaseEvents("followed"), fl.LeaseEvents("deadline"))
}

// BenchmarkFleet: N executors starting the same image together, with and
// without leases: registry GETs per layer and the mean time until an
// executor has read every layer.
func BenchmarkFleet(b *testing.B) {
	for _, n := range []int{1, 4, 16} {
		for _, leases := range []bool{false, true} {
			b.Run(fmt.Sprintf("n=%d/leases=%v", n, leases), func(b *testing.B) {
				var gets, ready float64
				for range b.N {
					b.StopTimer()
					fl := fleettest.New(b, fleettest.Options{N: n, Leases: leases})
					ref, layers := fl.Push(b)
					b.StartTimer()
					res := fl.Run(ref)
					b.StopTimer()
					for i, r := range res {
						if r.Err != nil {
							b.Fatalf("executor %d: %v", i, r.Err)
						}
						ready += r.Ready.Seconds() / float64(n)
					}
					total := 0
					for _, l := range layers {
						total += fl.GETs(blob.FromBytes(l))
					}
					gets += float64(total) / float64(len(layers))
				}
				b.ReportMetric(gets/float64(b.N), "GETs/layer")
				b.ReportMetric(ready/float64(b.N)*1000, "ms-to-ready/executor")
			})
		}
	}
}

// TestFleetLeasesDoNotAdmitOtherRepositories: while a fleet with leases
// pulls a private image, mallory, through one of the fleet's executors and
// with credentials of her own (so she takes part in leases), fetches a
// manifest from a registry she controls that lists the victim's config
// and layer digests. Leases are keyed by repository, so she neither
// follows the fleet's leases nor is handed the bytes they brought into
// the shared tier: every read of hers fails, before and after the fleet
// has the blobs.
func TestFleetLeasesDoNotAdmitOtherRepositories(t *testing.T) {
	ctx := context.Background()
	fl := fleettest.New(t, fleettest.Options{N: 4, Leases: true})
	ref, layers := fl.Push(t)
	ev := registrytest.NewHostile(t)
	ev.BasicAuth("mallory", "mallory-PASSWORD")

	// The victim's documents, as the fleet's first executor sees them.
	warm := fl.Execs[1]
	img, err := warm.Fetcher.FetchImage(ctx, ref, fleettest.Credential())
	if err != nil {
		t.Fatal(err)
	}
	desc := func(d manifest.Descriptor) map[string]any {
		return map[string]any{"mediaType": d.MediaType, "digest": d.Digest, "size": d.Size}
	}
	var ls []map[string]any
	for _, l := range img.Manifest.Layers {
		ls = append(ls, desc(l))
	}
	doc, _ := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": desc(img.Manifest.Config), "layers": ls,
	})
	ev.Manifest("latest", doc, "application/vnd.oci.image.manifest.v1+json")
	mallory := credential.Basic("", "mallory", "mallory-PASSWORD")

	attempt := func() {
		im, err := fl.Execs[0].Fetcher.FetchImage(ctx, ev.Host+"/evil/app:latest", mallory)
		if err != nil {
			return // refused at the config: nothing handed out
		}
		for i, l := range im.Layers() {
			rc, err := l.Open(ctx)
			if err != nil {
				continue
			}
			got, err := io.ReadAll(rc)
			rc.Close()
			if err == nil || bytes.Equal(got, layers[i]) {
				t.Errorf("mallory read layer %d (%d bytes, err %v)", i, len(got), err)
			}
		}
	}
	// During the fleet's pull and after it.
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 5 {
			attempt()
		}
	}()
	checkBytes(t, fl.Run(ref), layers, nil)
	<-done
	attempt()
	if n := fl.LeaseEvents("followed"); n == 0 {
		t.Log("no lease was followed (the fleet may have been too quick); mallory was still refused")
	}
}
