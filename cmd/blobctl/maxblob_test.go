package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/strata-oci/strata"
)

// TestMaxBlobSizeFlag: --max-blob-size and the max-blob-size key set
// strata.Config.RegistryMaxBlob (the flag over the file), and the
// default is strata.Default().RegistryMaxBlob.
func TestMaxBlobSizeFlag(t *testing.T) {
	file := filepath.Join(t.TempDir(), "strata.yaml")
	if err := os.WriteFile(file, []byte("max-blob-size: 2GiB\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		desc    string
		args    []string
		want    strata.Size
		wantErr bool
	}{
		{desc: "default", want: strata.Default().RegistryMaxBlob},
		{desc: "flag", args: []string{"--max-blob-size", "1GiB"}, want: 1 << 30},
		{desc: "file", args: []string{"--config", file}, want: 2 << 30},
		{desc: "flag over file", args: []string{"--config", file, "--max-blob-size", "512MiB"}, want: 512 << 20},
		{desc: "negative refused", args: []string{"--max-blob-size", "-1"}, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			a := newApp(strings.NewReader(""), &bytes.Buffer{}, &bytes.Buffer{})
			root := a.rootCommand()
			err := root.ParseFlags(tc.args)
			if err == nil {
				err = a.loadConfig(root)
			}
			if tc.wantErr {
				if err == nil {
					t.Fatalf("no error, max-blob-size %s", a.cfg.RegistryMaxBlob)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := a.cfg.RegistryMaxBlob; got != tc.want {
				t.Fatalf("max-blob-size %s, want %s", got, tc.want)
			}
		})
	}
}
