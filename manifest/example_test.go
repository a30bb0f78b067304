package manifest_test

import (
	"fmt"
	"os"

	"github.com/strata-oci/strata/manifest"
)

// The fetcher's path: parse what the registry served (with its
// Content-Type), pick the platform's manifest from an index, then check the
// config against the manifest.
func Example() {
	body, _ := os.ReadFile("testdata/dockerhub-list.json")
	doc, err := manifest.Parse("application/vnd.docker.distribution.manifest.list.v2+json", body)
	if err != nil {
		fmt.Println(err)
		return
	}
	want, _ := manifest.ParsePlatform("linux/arm64")
	desc, err := doc.Index.Select(want)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(doc.Kind(), "->", desc.Platform.Variant, desc.MediaType)

	_, err = doc.Index.Select(manifest.Platform{OS: "linux", Architecture: "riscv64"})
	fmt.Println(err != nil)
	// Output:
	// index -> v8 application/vnd.docker.distribution.manifest.v2+json
	// true
}
