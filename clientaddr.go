package main

// Which client a request comes from, for -max-clients-per-ip: the peer's address, or the
// address a trusted proxy (-trusted-proxies) forwarded, and how many streams each holds.

import (
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"sync"
)

// parseTrustedProxies parses -trusted-proxies: comma-separated addresses (10.0.0.1) and
// prefixes (10.0.0.0/8), spaces and empty entries ignored.
func parseTrustedProxies(list string) ([]netip.Prefix, error) {
	var prefixes []netip.Prefix
	for entry := range strings.SplitSeq(list, ",") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		if strings.Contains(entry, "/") {
			prefix, err := netip.ParsePrefix(entry)
			if err != nil {
				return nil, fmt.Errorf("entry %q: %w", entry, err)
			}
			prefixes = append(prefixes, prefix.Masked())
			continue
		}
		addr, err := netip.ParseAddr(entry)
		if err != nil {
			return nil, fmt.Errorf("entry %q: want an address or a prefix such as 10.0.0.0/8: %w", entry, err)
		}
		addr = addr.Unmap()
		prefixes = append(prefixes, netip.PrefixFrom(addr, addr.BitLen()))
	}
	return prefixes, nil
}

// trusted reports whether addr is in one of prefixes.
func trusted(prefixes []netip.Prefix, addr netip.Addr) bool {
	for _, p := range prefixes {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// clientAddr returns the address that a request counts against in -max-clients-per-ip. It is
// the peer's, unless the peer is a trusted proxy: then it is the last address, from the
// right, of Forwarded's for= (or, without Forwarded, X-Forwarded-For) that is not a trusted
// proxy itself. Each proxy appends the address it got the request from, so what a client
// writes in these headers itself stays to the left of what its first trusted proxy adds.
// An IPv6 address counts by its /64, which one client usually has whole.
func clientAddr(r *http.Request, proxies []netip.Prefix) (netip.Addr, bool) {
	peer, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}, false
	}
	addr := peer.Addr().Unmap()
	if len(proxies) > 0 && trusted(proxies, addr) {
		hops := forwardedFor(r.Header.Values("Forwarded"))
		if len(hops) == 0 {
			hops = xForwardedFor(r.Header.Values("X-Forwarded-For"))
		}
		for i := len(hops) - 1; i >= 0; i-- {
			if !hops[i].IsValid() {
				break // "unknown" or an obfuscated name: no address to count beyond it
			}
			addr = hops[i]
			if !trusted(proxies, addr) {
				break
			}
		}
	}
	if addr.Is6() {
		addr = netip.PrefixFrom(addr, 64).Masked().Addr()
	}
	return addr, true
}

// xForwardedFor returns the addresses of X-Forwarded-For headers in order; an entry that is
// not an address is the zero Addr.
func xForwardedFor(values []string) []netip.Addr {
	var hops []netip.Addr
	for _, value := range values {
		for entry := range strings.SplitSeq(value, ",") {
			hops = append(hops, parseNode(strings.TrimSpace(entry)))
		}
	}
	return hops
}

// forwardedFor returns the for= addresses of Forwarded headers (RFC 7239) in order; a node
// that is not an address ("unknown", "_hidden") is the zero Addr.
func forwardedFor(values []string) []netip.Addr {
	var hops []netip.Addr
	for _, value := range values {
		for _, element := range splitUnquoted(value, ',') {
			for _, pair := range splitUnquoted(element, ';') {
				name, node, _ := strings.Cut(strings.TrimSpace(pair), "=")
				if strings.EqualFold(name, "for") {
					hops = append(hops, parseNode(strings.Trim(node, `"`)))
				}
			}
		}
	}
	return hops
}

// parseNode parses a node as proxies write it: 192.0.2.1, 192.0.2.1:4711, 2001:db8::1 or
// [2001:db8::1]:4711. Anything else is the zero Addr.
func parseNode(node string) netip.Addr {
	if addrPort, err := netip.ParseAddrPort(node); err == nil {
		return addrPort.Addr().Unmap()
	}
	addr, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(node, "["), "]"))
	if err != nil {
		return netip.Addr{}
	}
	return addr.Unmap()
}

// addrCounts counts the streams each client address holds, for -max-clients-per-ip.
type addrCounts struct {
	mu     sync.Mutex
	counts map[netip.Addr]int
}

// take counts one more stream for addr, unless it already holds limit.
func (c *addrCounts) take(addr netip.Addr, limit int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.counts[addr] >= limit {
		return false
	}
	if c.counts == nil {
		c.counts = make(map[netip.Addr]int)
	}
	c.counts[addr]++
	return true
}

// give counts one stream fewer for addr, and forgets an address that holds none.
func (c *addrCounts) give(addr netip.Addr) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.counts[addr] <= 1 {
		delete(c.counts, addr)
		return
	}
	c.counts[addr]--
}
