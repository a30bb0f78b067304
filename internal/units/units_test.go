package units

import "testing"

func TestParseSize(t *testing.T) {
	tests := []struct {
		desc, in string
		want     Size
		wantErr  bool
	}{
		{"plain bytes", "1048576", 1 << 20, false},
		{"mebibytes", "256MiB", 256 << 20, false},
		{"gibibytes lower case", "1gib", 1 << 30, false},
		{"decimal megabytes", "10MB", 10_000_000, false},
		{"bare K is binary", "512k", 512 << 10, false},
		{"fraction", "1.5GiB", 3 << 29, false},
		{"space before unit", "2 MiB", 2 << 20, false},
		{"zero", "0", 0, false},
		{"negative", "-1", 0, true},
		{"empty", "", 0, true},
		{"unit only", "MiB", 0, true},
		{"garbage", "lots", 0, true},
		{"overflow", "99999999999TiB", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			got, err := ParseSize(tt.in)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Fatalf("ParseSize(%q) = %d, %v; want %d, err %v", tt.in, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"256MiB", "1GiB", "0", "1.5k", "10MB", "-3", "1e30"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseSize(s)
		if err != nil {
			return
		}
		if n < 0 {
			t.Fatalf("ParseSize(%q) = %d < 0", s, n)
		}
		// What String prints parses back to the same size.
		if m, err := ParseSize(n.String()); err != nil || m != n {
			t.Fatalf("round trip of %d via %q: %d, %v", n, n.String(), m, err)
		}
	})
}

func FuzzParseDuration(f *testing.F) {
	for _, s := range []string{"15m", "7d", "1.5d", "90s", "-1h", "1e9d", "d"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseDuration(s)
		if err != nil {
			return
		}
		if d < 0 {
			t.Fatalf("ParseDuration(%q) = %v < 0", s, d)
		}
		if e, err := ParseDuration(d.String()); err != nil || e != d {
			t.Fatalf("round trip of %v via %q: %v, %v", d, d.String(), e, err)
		}
	})
}
