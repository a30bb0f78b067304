package registry

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"syscall"
)

// deniedPrefixes are the ranges the network policy refuses by default:
// addresses that reach the machine itself, its private networks or its
// cloud metadata service rather than a public registry.
var deniedPrefixes = mustPrefixes(
	"0.0.0.0/8",         // "this network", includes the unspecified 0.0.0.0
	"10.0.0.0/8",        // RFC 1918
	"100.64.0.0/10",     // CGNAT (RFC 6598)
	"127.0.0.0/8",       // loopback
	"169.254.0.0/16",    // link-local, includes 169.254.169.254 (metadata)
	"172.16.0.0/12",     // RFC 1918
	"192.0.0.0/24",      // IETF protocol assignments
	"192.168.0.0/16",    // RFC 1918
	"198.18.0.0/15",     // benchmarking
	"224.0.0.0/4",       // multicast
	"240.0.0.0/4",       // reserved, includes 255.255.255.255 broadcast
	"::/128",            // unspecified
	"::1/128",           // loopback
	"fc00::/7",          // unique local
	"fe80::/10",         // link-local
	"ff00::/8",          // multicast
	"fd00:ec2::254/128", // AWS metadata over IPv6 (inside fc00::/7; listed for clarity)
)

// nat64 is the well-known NAT64 prefix; an address in it reaches the IPv4
// address in its low 32 bits, which is checked instead.
var nat64 = netip.MustParsePrefix("64:ff9b::/96")

func mustPrefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

// netPolicy decides which IP addresses the client may connect to. It is
// enforced in net.Dialer.Control, on the address actually being dialed after
// DNS resolution, so DNS names that resolve to internal addresses and
// redirects (including blob redirects to storage hosts) are covered.
type netPolicy struct {
	allow []netip.Prefix
}

func newNetPolicy(allowCIDRs []string) (*netPolicy, error) {
	p := &netPolicy{}
	for _, s := range allowCIDRs {
		pfx, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("registry: Config.AllowCIDRs: %q is not a CIDR: %w", s, err)
		}
		p.allow = append(p.allow, pfx.Masked())
	}
	return p, nil
}

// check returns nil if ip may be dialed, else an error wrapping
// ErrDeniedAddress that names it.
func (p *netPolicy) check(ip netip.Addr) error {
	ip = ip.Unmap().WithZone("")
	probe := ip
	if nat64.Contains(ip) {
		b := ip.As16()
		probe = netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]})
	}
	for _, a := range p.allow {
		if a.Contains(ip) || a.Contains(probe) {
			return nil
		}
	}
	for _, d := range deniedPrefixes {
		if d.Contains(probe) {
			return fmt.Errorf("%w: %s is in %s (allow it with Config.AllowCIDRs)", ErrDeniedAddress, ip, d)
		}
	}
	return nil
}

// control is a net.Dialer.Control hook: address is the resolved "ip:port".
func (p *netPolicy) control(network, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: cannot parse dial address %q", ErrDeniedAddress, address)
	}
	return p.check(ap.Addr())
}

// checkHost resolves host and checks every address it resolves to. It is
// used for the target of a request sent through an HTTP proxy, which the
// client itself never dials.
func (p *netPolicy) checkHost(ctx context.Context, resolver *net.Resolver, host string) error {
	if ip, err := netip.ParseAddr(host); err == nil {
		return p.check(ip)
	}
	addrs, err := resolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return fmt.Errorf("resolving %s to check the network policy: %w", host, err)
	}
	for _, a := range addrs {
		if err := p.check(a); err != nil {
			return fmt.Errorf("%s resolves to a denied address: %w", host, err)
		}
	}
	return nil
}

// proxyFunc wraps a proxy selector (Config.Proxy or the environment) so that
// a request that will go through a proxy has its target host checked
// against the policy first. The connection to the proxy itself is dialed
// through the policy like any other. Caveat: the proxy resolves the target
// again on its own, so a DNS answer that changes between our check and the
// proxy's lookup is not caught here; only the proxy can enforce that.
func (p *netPolicy) proxyFunc(sel func(*http.Request) (*url.URL, error), resolver *net.Resolver) func(*http.Request) (*url.URL, error) {
	if sel == nil {
		return nil
	}
	return func(req *http.Request) (*url.URL, error) {
		u, err := sel(req)
		if err != nil || u == nil {
			return u, err
		}
		if err := p.checkHost(req.Context(), resolver, req.URL.Hostname()); err != nil {
			return nil, err
		}
		return u, nil
	}
}
