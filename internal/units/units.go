// Package units holds the two quantities of Strata's configuration and admin
// requests: Size (bytes, "256MiB") and Duration ("15m", "7d"), each readable
// from a config file, a flag and JSON. It imports nothing of the project.
package units

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Size is a byte count that reads "256MiB", "1GiB", "10GB", "512k" or plain
// bytes ("1048576"), in configuration files (a string or a number) and in
// flags (it implements pflag.Value). Binary units (KiB, MiB, GiB, TiB) are
// powers of 1024; decimal units (kB, MB, GB, TB) powers of 1000; a bare K, M,
// G or T is binary. It prints in the largest binary unit that divides it.
type Size int64

var sizeUnits = []struct {
	suffix string
	mult   int64
}{
	{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30}, {"tib", 1 << 40},
	{"kb", 1000}, {"mb", 1000 * 1000}, {"gb", 1000 * 1000 * 1000}, {"tb", 1000 * 1000 * 1000 * 1000},
	{"k", 1 << 10}, {"m", 1 << 20}, {"g", 1 << 30}, {"t", 1 << 40},
	{"b", 1},
}

// ParseSize parses s as a Size. A negative, fractional-byte or overflowing
// value is an error naming s.
func ParseSize(s string) (Size, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	if t == "" {
		return 0, fmt.Errorf("invalid size %q: empty", s)
	}
	mult := int64(1)
	for _, u := range sizeUnits {
		if strings.HasSuffix(t, u.suffix) {
			mult = u.mult
			t = strings.TrimSpace(strings.TrimSuffix(t, u.suffix))
			break
		}
	}
	if t == "" {
		return 0, fmt.Errorf("invalid size %q: no number", s)
	}
	if n, err := strconv.ParseInt(t, 10, 64); err == nil {
		if n < 0 {
			return 0, fmt.Errorf("invalid size %q: negative", s)
		}
		if n > math.MaxInt64/mult {
			return 0, fmt.Errorf("invalid size %q: too large", s)
		}
		return Size(n * mult), nil
	}
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, fmt.Errorf("invalid size %q: want a number of bytes or a number with a unit such as MiB or GiB", s)
	}
	if f < 0 {
		return 0, fmt.Errorf("invalid size %q: negative", s)
	}
	v := f * float64(mult)
	if v >= math.MaxInt64 {
		return 0, fmt.Errorf("invalid size %q: too large", s)
	}
	return Size(int64(math.Round(v))), nil
}

// String prints the size in the largest binary unit that divides it exactly.
func (s Size) String() string {
	n := int64(s)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n != 0 && n%u.mult == 0 {
			return strconv.FormatInt(n/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}

// Set implements pflag.Value.
func (s *Size) Set(v string) error {
	n, err := ParseSize(v)
	if err != nil {
		return err
	}
	*s = n
	return nil
}

// Type implements pflag.Value.
func (s *Size) Type() string { return "size" }

// MarshalJSON writes the size as a string such as "256MiB".
func (s Size) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

// UnmarshalJSON reads a string ("256MiB") or a number of bytes.
func (s *Size) UnmarshalJSON(b []byte) error {
	var str string
	if err := json.Unmarshal(b, &str); err == nil {
		return s.Set(str)
	}
	var n json.Number
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("invalid size %s: want a string such as \"256MiB\" or a number of bytes", b)
	}
	return s.Set(n.String())
}

// Duration is a time.Duration that reads "15m", "90s" or "1h30m" in
// configuration files and flags, and also "7d" for days.
type Duration time.Duration

// ParseDuration parses time.ParseDuration's syntax plus a plain "<n>d".
func ParseDuration(s string) (Duration, error) {
	t := strings.TrimSpace(s)
	if strings.HasSuffix(t, "d") {
		n, err := strconv.ParseFloat(strings.TrimSuffix(t, "d"), 64)
		if err == nil && n >= 0 && n < 1e5 {
			return Duration(time.Duration(n * float64(24*time.Hour))), nil
		}
	}
	d, err := time.ParseDuration(t)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q: want e.g. 90s, 15m, 2h or 7d", s)
	}
	if d < 0 {
		return 0, fmt.Errorf("invalid duration %q: negative", s)
	}
	return Duration(d), nil
}

// String implements fmt.Stringer.
func (d Duration) String() string { return time.Duration(d).String() }

// Set implements pflag.Value.
func (d *Duration) Set(v string) error {
	n, err := ParseDuration(v)
	if err != nil {
		return err
	}
	*d = n
	return nil
}

// Type implements pflag.Value.
func (d *Duration) Type() string { return "duration" }

// MarshalJSON writes the duration as a string such as "15m0s".
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// UnmarshalJSON reads a string such as "15m" (a bare number is seconds).
func (d *Duration) UnmarshalJSON(b []byte) error {
	var str string
	if err := json.Unmarshal(b, &str); err == nil {
		return d.Set(str)
	}
	var n float64
	if err := json.Unmarshal(b, &n); err != nil || n < 0 {
		return fmt.Errorf("invalid duration %s: want a string such as \"15m\"", b)
	}
	*d = Duration(time.Duration(n * float64(time.Second)))
	return nil
}
