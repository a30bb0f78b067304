package overlay

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// makeWalkTree fills dir with a few thousand entries of every kind a walk
// meets: nested directories (some empty), files of many sizes, hard
// links, symlinks with odd targets, FIFOs, files with user. extended
// attributes (when the filesystem takes them), and, as root, device nodes
// and other owners. It returns the number of entries made.
func makeWalkTree(t *testing.T, dir string) int {
	t.Helper()
	mk := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	xattrs := true
	content := make([]byte, 9000)
	for i := range content {
		content[i] = byte(i * 31)
	}
	for i := range 2600 {
		sub := filepath.Join(dir, fmt.Sprintf("d%02d", i%13), fmt.Sprintf("s%d", i%4))
		if i%9 == 0 {
			sub = filepath.Join(sub, "deep", fmt.Sprintf("er%d", i%3))
		}
		mk(os.MkdirAll(sub, 0o755))
		// Names whose byte order is not their order by other measures.
		name := []string{"a", "a.b", "a-b", "B", "ä", "a b", "z\n"}[i%7] + strconv.Itoa(i)
		p := filepath.Join(sub, name)
		switch {
		case i%10 == 3:
			mk(os.Symlink(fmt.Sprintf("../t \"%d\"\x01/%s", i, strings.Repeat("x", i%300)), p))
		case i%97 == 5:
			mk(unix.Mkfifo(p, 0o640))
		case i%50 == 7:
			mk(os.Mkdir(p, 0o700)) // empty
		case i%41 == 8 && i > 100:
			mk(os.Link(filepath.Join(dir, "d08", "s0", "a.b8"), p)) // a file's (i == 8) hard link
		default:
			mk(os.WriteFile(p, content[:(i*37)%len(content)], 0o644))
			if i%11 == 0 && xattrs {
				if err := unix.Lsetxattr(p, "user.strata", []byte(strconv.Itoa(i)), 0); err != nil {
					t.Logf("no user xattrs here (%v): xattr digests are \"-\" only", err)
					xattrs = false
				} else {
					mk(unix.Lsetxattr(p, "user.a", content[:i%700], 0))
				}
			}
		}
		if os.Geteuid() == 0 && i%113 == 0 {
			mk(unix.Mknod(p+".dev", unix.S_IFCHR|0o600, int(unix.Mkdev(uint32(i%7), uint32(i)))))
			mk(os.Lchown(p, 1000+i, 2000+i))
		}
	}
	n := 0
	mk(filepath.WalkDir(dir, func(string, fs.DirEntry, error) error { n++; return nil }))
	return n
}

// contentSum is a hashFunc that reads the file, as Verify's does: safe for
// concurrent use. Files it may not read get no sum.
func contentSum(dir string) hashFunc {
	return func(dst []byte, rel string, st *syscall.Stat_t) ([]byte, error) {
		b, err := os.ReadFile(filepath.Join(dir, rel))
		if errors.Is(err, fs.ErrPermission) {
			return dst, nil
		}
		if err != nil {
			return dst, err
		}
		s := sha256.Sum256(b)
		return hex.AppendEncode(dst, s[:]), nil
	}
}

// setWalk sets walkWorkers and walkWindow (0: unchanged) for the test.
func setWalk(t *testing.T, workers, window int) {
	w, n := walkWorkers, walkWindow
	t.Cleanup(func() { walkWorkers, walkWindow = w, n })
	walkWorkers = workers
	if window > 0 {
		walkWindow = window
	}
}

// walkLines returns the manifest lines walkLayer emits for dir.
func walkLines(ctx context.Context, dir string, sum hashFunc, emit func(line string) error) ([]string, error) {
	var out []string
	err := walkLayer(ctx, dir, sum, nil, func(path string, fields []byte) error {
		line := strconv.Quote(path) + " " + string(fields)
		out = append(out, line)
		if emit != nil {
			return emit(line)
		}
		return nil
	})
	return out, err
}

// quotedPath returns the path of a manifest line.
func quotedPath(t *testing.T, line string) string {
	t.Helper()
	e, err := parseManifestLine(line)
	if err != nil {
		t.Fatal(err)
	}
	return e.path
}

func diffLines(t *testing.T, got, want []string) {
	t.Helper()
	for i := range max(len(got), len(want)) {
		var g, w string
		if i < len(got) {
			g = got[i]
		}
		if i < len(want) {
			w = want[i]
		}
		if g != w {
			t.Fatalf("line %d of %d (want %d):\n got %q\nwant %q", i, len(got), len(want), g, w)
		}
	}
}

// TestWalkLayerParallelMatchesSequential: with any number of workers and
// any window (one entry; a window the walk wraps around hundreds of
// times; the default), walkLayer emits exactly the lines of a sequential
// walk, in its order; sum is called concurrently; no entry is computed
// more than a window ahead of the last one emitted; and nothing runs once
// walkLayer has returned.
func TestWalkLayerParallelMatchesSequential(t *testing.T) {
	layer := filepath.Join(t.TempDir(), "layer")
	entries := makeWalkTree(t, layer)
	want := referenceManifest(t, layer)
	if len(want) != entries || entries < 2500 {
		t.Fatalf("reference has %d lines for %d entries", len(want), entries)
	}
	index := make(map[string]int, len(want))
	kinds := map[string]int{}
	for i, l := range want {
		index[quotedPath(t, l)] = i
		e, _ := parseManifestLine(l)
		f := strings.Fields(e.fields)
		kinds[f[0]]++
		if f[7] != "-" {
			kinds["xattrs"]++
		}
	}
	t.Logf("%d entries by kind: %v", len(want), kinds)
	for _, k := range []string{"d", "f", "l", "p"} {
		if kinds[k] == 0 {
			t.Fatalf("no entry of type %s in the tree", k)
		}
	}
	for _, tt := range []struct {
		desc            string
		workers, window int
		concurrent      bool // assert two sums overlap
	}{
		{"default workers and window", 0, 0, true},
		{"one worker", 1, 0, false},
		{"eight workers, a window of 16 the walk wraps around", 8, 16, true},
		{"three workers, a window of one entry", 3, 1, false},
	} {
		t.Run(tt.desc, func(t *testing.T) {
			setWalk(t, tt.workers, tt.window)
			window := walkWindow
			var emitted, calls, running, afterReturn, aheadErrs atomic.Int64
			var returned atomic.Bool
			overlap := make(chan struct{})
			var overlapOnce sync.Once
			hash := contentSum(layer)
			sum := func(dst []byte, rel string, st *syscall.Stat_t) ([]byte, error) {
				if returned.Load() {
					afterReturn.Add(1)
				}
				if ahead := int64(index[rel]) - emitted.Load(); ahead >= int64(window) {
					if aheadErrs.Add(1) == 1 {
						t.Errorf("sum of entry %d (%s) with %d emitted: more than the window (%d) ahead", index[rel], rel, emitted.Load(), window)
					}
				}
				running.Add(1)
				defer running.Add(-1)
				if calls.Add(1) == 1 && tt.concurrent {
					// The first sum waits for another to start.
					select {
					case <-overlap:
					case <-time.After(20 * time.Second):
						t.Error("no other sum started while the first one ran")
					}
				} else if running.Load() > 1 {
					overlapOnce.Do(func() { close(overlap) })
				}
				if index[rel]%17 == 0 {
					runtime.Gosched() // shuffle the order workers finish in
				}
				return hash(dst, rel, st)
			}
			got, err := walkLines(context.Background(), layer, sum, func(string) error {
				emitted.Add(1)
				return nil
			})
			returned.Store(true)
			if err != nil {
				t.Fatal(err)
			}
			diffLines(t, got, want)
			if afterReturn.Load() != 0 {
				t.Errorf("%d sums ran after walkLayer returned", afterReturn.Load())
			}
		})
	}
}

var errBoom = errors.New("boom")

// regularLines returns the indexes of the lines of regular files.
func regularLines(t *testing.T, lines []string) []int {
	t.Helper()
	var out []int
	for i, l := range lines {
		e, err := parseManifestLine(l)
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(e.fields, "f ") {
			out = append(out, i)
		}
	}
	return out
}

// TestWalkLayerParallelSumError: an error from sum on an entry in the
// middle of the walk is the error walkLayer returns, every entry before
// it is emitted and none after it; the workers stop computing entries
// after it (while an earlier entry is still being computed, they would
// otherwise run on to the end of the window); and when two entries fail,
// the one first in walk order wins even when it fails last.
func TestWalkLayerParallelSumError(t *testing.T) {
	layer := filepath.Join(t.TempDir(), "layer")
	makeWalkTree(t, layer)
	want := referenceManifest(t, layer)
	files := regularLines(t, want)
	index := make(map[string]int, len(want))
	for i, l := range want {
		index[quotedPath(t, l)] = i
	}
	const workers = 4
	setWalk(t, workers, 0)
	hash := contentSum(layer)

	t.Run("one failing entry", func(t *testing.T) {
		early, failing := files[len(files)/2-10], files[len(files)/2]
		failed := make(chan struct{})
		var late, afterReturn atomic.Int64
		var returned atomic.Bool
		const bound = 4 * workers // workers past the check when it failed, and then some
		sum := func(dst []byte, rel string, st *syscall.Stat_t) ([]byte, error) {
			if returned.Load() {
				afterReturn.Add(1)
			}
			switch i := index[rel]; {
			case i == failing:
				close(failed)
				return dst, fmt.Errorf("%s: %w", rel, errBoom)
			case i == early:
				// Hold the emitter here until the later entry has failed
				// and the workers have gone quiet (or too far).
				select {
				case <-failed:
				case <-time.After(20 * time.Second):
					t.Error("the failing entry was not computed while an earlier one was")
				}
				for n := late.Load(); n <= bound; n = late.Load() {
					time.Sleep(20 * time.Millisecond)
					if late.Load() == n {
						break
					}
				}
			case i > failing:
				select {
				case <-failed:
					late.Add(1)
				default:
				}
			}
			return hash(dst, rel, st)
		}
		got, err := walkLines(context.Background(), layer, sum, nil)
		returned.Store(true)
		if !errors.Is(err, errBoom) || !strings.Contains(err.Error(), quotedPath(t, want[failing])) {
			t.Fatalf("walkLayer = %v, want the error of %s", err, quotedPath(t, want[failing]))
		}
		diffLines(t, got, want[:failing])
		if n := late.Load(); n > bound {
			t.Errorf("%d entries after the failed one were hashed after it failed, want at most %d", n, bound)
		}
		if afterReturn.Load() != 0 {
			t.Errorf("%d sums ran after walkLayer returned", afterReturn.Load())
		}
	})

	t.Run("the first in walk order wins", func(t *testing.T) {
		first, second := files[len(files)/3], files[len(files)/3+20]
		secondFailed := make(chan struct{})
		errFirst := errors.New("first")
		sum := func(dst []byte, rel string, st *syscall.Stat_t) ([]byte, error) {
			switch index[rel] {
			case first:
				select {
				case <-secondFailed:
				case <-time.After(20 * time.Second):
					t.Error("the later entry was not computed while the earlier one was")
				}
				return dst, errFirst
			case second:
				close(secondFailed)
				return dst, errBoom
			}
			return hash(dst, rel, st)
		}
		got, err := walkLines(context.Background(), layer, sum, nil)
		if err != errFirst {
			t.Fatalf("walkLayer = %v, want %v", err, errFirst)
		}
		diffLines(t, got, want[:first])
	})

	t.Run("an error from emit", func(t *testing.T) {
		stopAt := len(want) / 2
		errStop := errors.New("stop")
		var afterReturn atomic.Int64
		var returned atomic.Bool
		sum := func(dst []byte, rel string, st *syscall.Stat_t) ([]byte, error) {
			if returned.Load() {
				afterReturn.Add(1)
			}
			return hash(dst, rel, st)
		}
		n := 0
		got, err := walkLines(context.Background(), layer, sum, func(string) error {
			if n++; n == stopAt+1 {
				return errStop
			}
			return nil
		})
		returned.Store(true)
		if err != errStop {
			t.Fatalf("walkLayer = %v, want %v", err, errStop)
		}
		diffLines(t, got, want[:stopAt+1])
		if afterReturn.Load() != 0 {
			t.Errorf("%d sums ran after walkLayer returned", afterReturn.Load())
		}
	})
}

// TestWalkLayerParallelCancel: a context cancelled before or during the
// walk ends it with ctx.Err(), after a prefix of the lines, and nothing
// runs once walkLayer has returned.
func TestWalkLayerParallelCancel(t *testing.T) {
	layer := filepath.Join(t.TempDir(), "layer")
	makeWalkTree(t, layer)
	want := referenceManifest(t, layer)
	setWalk(t, 4, 0)
	hash := contentSum(layer)

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	got, err := walkLines(ctx, layer, hash, nil)
	if !errors.Is(err, context.Canceled) || len(got) != 0 {
		t.Fatalf("walkLayer with a cancelled context = %d lines, %v; want none, %v", len(got), err, context.Canceled)
	}

	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	var calls, afterReturn atomic.Int64
	var returned atomic.Bool
	sum := func(dst []byte, rel string, st *syscall.Stat_t) ([]byte, error) {
		if returned.Load() {
			afterReturn.Add(1)
		}
		if calls.Add(1) == 200 {
			cancel()
		}
		return hash(dst, rel, st)
	}
	got, err = walkLines(ctx, layer, sum, nil)
	returned.Store(true)
	if err != context.Canceled {
		t.Fatalf("walkLayer cancelled midway = %v, want %v", err, context.Canceled)
	}
	if len(got) >= len(want) {
		t.Fatalf("walkLayer cancelled midway emitted all %d lines", len(got))
	}
	diffLines(t, got, want[:len(got)])
	if afterReturn.Load() != 0 {
		t.Errorf("%d sums ran after walkLayer returned", afterReturn.Load())
	}
}

// TestWalkLayerParallelRootless: without privilege, directories the walk
// may not list (their "path/" ! lines) and files it may not read come out
// of the parallel walk as out of a one-worker one, and Verify's
// comparison (its sum on several workers) finds no difference and counts
// every unreadable file.
func TestWalkLayerParallelRootless(t *testing.T) {
	if !unprivilegedChild(t) {
		runAsNobody(t, t.Name())
		return
	}
	layer := filepath.Join(t.TempDir(), "layer")
	makeWalkTree(t, layer)
	const unreadable = 150
	var locked []string
	for i := range unreadable {
		p := filepath.Join(layer, fmt.Sprintf("d%02d", i%13), fmt.Sprintf("secret%d", i))
		if err := os.WriteFile(p, []byte("s"), 0o000); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 20 {
		p := filepath.Join(layer, fmt.Sprintf("d%02d", i%13), fmt.Sprintf("locked%d", i))
		if err := os.MkdirAll(filepath.Join(p, "inside"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, []os.FileMode{0o000, 0o300}[i%2]); err != nil {
			t.Fatal(err)
		}
		locked = append(locked, p)
	}
	t.Cleanup(func() {
		for _, p := range locked {
			os.Chmod(p, 0o755)
		}
	})
	ctx := context.Background()
	setWalk(t, 1, 0)
	want, err := walkLines(ctx, layer, contentSum(layer), nil)
	if err != nil {
		t.Fatal(err)
	}
	bangs := 0
	for _, l := range want {
		if strings.HasSuffix(l, "/\" !") {
			bangs++
		}
	}
	if bangs != len(locked) {
		t.Fatalf("%d unlistable directories in the walk, want %d", bangs, len(locked))
	}
	setWalk(t, 4, 64)
	got, err := walkLines(ctx, layer, contentSum(layer), nil)
	if err != nil {
		t.Fatal(err)
	}
	diffLines(t, got, want)

	mf := filepath.Join(t.TempDir(), "m"+manifestSuffix)
	if err := os.WriteFile(mf, []byte(manifestHeader+"\n"+strings.Join(want, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	diffs, n, err := compareManifest(ctx, layer, mf)
	if err != nil || len(diffs) != 0 || n != unreadable {
		t.Fatalf("compareManifest = %v, %d unreadable, %v; want no differences, %d unreadable", diffs, n, err, unreadable)
	}
}
