// Package trunc shortens untrusted strings (names from tar headers,
// manifests, registries) before they go into an error or a log line, so a
// hostile input cannot make a message arbitrarily long.
package trunc

// String returns s when it has at most n bytes, else its first n bytes
// followed by "...". It cuts at a byte, not a rune boundary: callers quote
// the result (%q), which shows a cut rune as an escape.
func String(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
