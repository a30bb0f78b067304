//go:build tools

// Package deps pins the project's chosen dependencies while their users are
// being written, so that go.mod and go.sum stay stable under parallel work.
package deps

import (
	_ "github.com/Microsoft/hcsshim/ext4/tar2ext4"
	_ "github.com/bazelbuild/remote-apis-sdks/go/pkg/client"
	_ "github.com/bazelbuild/remote-apis-sdks/go/pkg/fakes"
	_ "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	_ "github.com/dgraph-io/badger/v4"
	_ "github.com/google/go-containerregistry/pkg/authn"
	_ "github.com/google/go-containerregistry/pkg/crane"
	_ "github.com/google/go-containerregistry/pkg/name"
	_ "github.com/google/go-containerregistry/pkg/registry"
	_ "github.com/google/go-containerregistry/pkg/v1/mutate"
	_ "github.com/google/go-containerregistry/pkg/v1/random"
	_ "github.com/google/go-containerregistry/pkg/v1/remote"
	_ "github.com/google/go-containerregistry/pkg/v1/remote/transport"
	_ "github.com/klauspost/compress/gzip"
	_ "github.com/klauspost/compress/zstd"
	_ "github.com/opencontainers/go-digest"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/prometheus/client_golang/prometheus/promhttp"
	_ "github.com/prometheus/client_golang/prometheus/testutil"
	_ "github.com/spf13/cobra"
	_ "github.com/vbauerster/mpb/v8"
	_ "golang.org/x/sync/errgroup"
	_ "golang.org/x/sync/singleflight"
	_ "google.golang.org/grpc"
	_ "sigs.k8s.io/yaml"
)
