package strata

import (
	"strings"
	"testing"

	"github.com/strata-oci/strata/tiers/reapi"
)

// TestRemoteReadStreams: remote-read-streams is checked, and maps to the
// remote tier's parallel reads: one stream per blob by default (0 or 1),
// N ranged reads at once when asked.
func TestRemoteReadStreams(t *testing.T) {
	for _, n := range []int{-1, maxRemoteReadStreams + 1} {
		cfg := Default()
		cfg.RemoteReadStreams = n
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "remote-read-streams") {
			t.Errorf("remote-read-streams %d: Validate = %v, want an error naming the key", n, err)
		}
	}
	cfg := Default()
	cfg.RemoteReadStreams = maxRemoteReadStreams
	if err := cfg.Validate(); err != nil {
		t.Errorf("remote-read-streams %d: %v", maxRemoteReadStreams, err)
	}
	for _, tc := range []struct {
		streams int
		want    reapi.ParallelConfig
	}{
		{0, reapi.ParallelConfig{Threshold: -1}},
		{1, reapi.ParallelConfig{Threshold: -1}},
		{4, reapi.ParallelConfig{Streams: 4}},
	} {
		if got := remoteParallel(tc.streams); got != tc.want {
			t.Errorf("remoteParallel(%d) = %+v, want %+v", tc.streams, got, tc.want)
		}
	}
	if Default().RemoteReadStreams != 0 {
		t.Errorf("Default() reads %d streams per blob, want 0 (one)", Default().RemoteReadStreams)
	}
}
