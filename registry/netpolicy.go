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
	"::/96",             // deprecated IPv4-compatible (::a.b.c.d, RFC 4291)
	"64:ff9b:1::/48",    // local-use NAT64 (RFC 8215): translates into the operator's own networks
	"fc00::/7",          // unique local
	"fe80::/10",         // link-local
	"fec0::/10",         // deprecated site-local (RFC 3879), still routed on some networks
	"ff00::/8",          // multicast
	"fd00:ec2::254/128", // AWS metadata over IPv6 (inside fc00::/7; listed for clarity)
)

// nat64 is the well-known NAT64 prefix (RFC 6052); an address in it
// reaches the IPv4 address in its low 32 bits, which is checked instead.
// The local-use prefix 64:ff9b:1::/48 (RFC 8215) is denied as a whole
// instead: its operator picks where the IPv4 address sits (RFC 6052 allows
// six positions), so it cannot be extracted reliably, and by definition it
// leads into networks of the operator's own.
var nat64 = netip.MustParsePrefix("64:ff9b::/96")

// sixToFour is the 6to4 prefix (RFC 3056); an address in it is relayed to
// the IPv4 address in bits 16 to 47, which is checked instead.
var sixToFour = netip.MustParsePrefix("2002::/16")

// embeddedIPv4 returns the IPv4 address an IPv6 address reaches through a
// translator or relay (NAT64 /96 or 6to4), if any.
func embeddedIPv4(ip netip.Addr) (netip.Addr, bool) {
	b := ip.As16()
	switch {
	case nat64.Contains(ip):
		return netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]}), true
	case sixToFour.Contains(ip):
		return netip.AddrFrom4([4]byte{b[2], b[3], b[4], b[5]}), true
	}
	return netip.Addr{}, false
}

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
// ErrDeniedAddress that names it. An IPv6 address that embeds an IPv4
// destination (NAT64 /96, 6to4) is judged by that IPv4 address, and
// Config.AllowCIDRs opens it by either form.
func (p *netPolicy) check(ip netip.Addr) error {
	ip = ip.Unmap().WithZone("")
	probe := ip
	if v4, ok := embeddedIPv4(ip); ok {
		probe = v4
	}
	for _, a := range p.allow {
		if a.Contains(ip) || a.Contains(probe) {
			return nil
		}
	}
	for _, d := range deniedPrefixes {
		if !d.Contains(probe) {
			continue
		}
		if probe != ip {
			return fmt.Errorf("%w: %s reaches %s, which is in %s (allow it with Config.AllowCIDRs)", ErrDeniedAddress, ip, probe, d)
		}
		return fmt.Errorf("%w: %s is in %s (allow it with Config.AllowCIDRs)", ErrDeniedAddress, ip, d)
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
