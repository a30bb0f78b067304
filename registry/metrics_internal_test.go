package registry

import "testing"

func TestMetricHostLabel(t *testing.T) {
	hosts, err := metricHosts(&Config{
		Mirrors:     map[string][]Mirror{"docker.io": {{Endpoint: "Mirror.Example:5000"}}},
		MetricHosts: []string{"GHCR.io"},
	})
	if err != nil {
		t.Fatal(err)
	}
	m := &metrics{hosts: hosts}
	for _, tc := range []struct {
		desc, host, want string
	}{
		{"a configured host, another case", "ghcr.io", "ghcr.io"},
		{"Docker Hub, as the client names it", "index.docker.io", "index.docker.io"},
		{"Docker Hub, by an alias", "registry-1.docker.io", "registry-1.docker.io"},
		{"a mirror endpoint", "mirror.example:5000", "mirror.example:5000"},
		{"the mirror on another port", "mirror.example:5001", OtherHost},
		{"a host nobody configured", "attacker-1234.example", OtherHost},
		{"a token server", "auth.docker.io", OtherHost},
		{"empty", "", OtherHost},
	} {
		if got := m.host(tc.host); got != tc.want {
			t.Errorf("%s: host(%q) = %q, want %q", tc.desc, tc.host, got, tc.want)
		}
	}
}
