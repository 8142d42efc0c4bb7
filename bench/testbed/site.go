package testbed

import (
	"context"
	"fmt"
	"net/netip"
	"regexp"
)

// NATKind is how a site's router treats traffic between its LAN and the core.
type NATKind int

const (
	// NATNone routes the LAN's public addresses; the core knows the way in.
	NATNone NATKind = iota
	// NATCone masquerades behind the WAN address, keeping source ports: a
	// port-restricted cone NAT.
	NATCone
	// NATSymmetric masquerades with random ports for every new flow.
	NATSymmetric
	// NATUDPBlocked masquerades like NATCone and drops all forwarded UDP.
	NATUDPBlocked
)

func (k NATKind) String() string {
	switch k {
	case NATNone:
		return "none"
	case NATCone:
		return "cone"
	case NATSymmetric:
		return "symmetric"
	case NATUDPBlocked:
		return "udp-blocked"
	}
	return fmt.Sprintf("NATKind(%d)", int(k))
}

// Site is a router namespace with a WAN link to the core and a LAN bridge
// that its VMs plug into.
type Site struct {
	bed    *Bed
	name   string
	index  int
	ns     string
	nat    NATKind
	wan    string // WAN link, in the site's namespace
	bridge string
	wanIP  netip.Addr
	lan    netip.Prefix
	gw     netip.Addr

	nextHost int // guarded by bed.mu
}

// Name is the name given to AddSite.
func (s *Site) Name() string { return s.name }

// Namespace is the site router's namespace.
func (s *Site) Namespace() string { return s.ns }

// NAT is the site's kind of NAT.
func (s *Site) NAT() NATKind { return s.nat }

// WANIP is the router's public address, which NATed VMs appear as.
func (s *Site) WANIP() netip.Addr { return s.wanIP }

// LAN is the site's LAN subnet.
func (s *Site) LAN() netip.Prefix { return s.lan }

// Gateway is the router's LAN address, the VMs' default route.
func (s *Site) Gateway() netip.Addr { return s.gw }

// Bridge is the LAN bridge's name in the site's namespace.
func (s *Site) Bridge() string { return s.bridge }

var namePattern = regexp.MustCompile(`^[a-z][a-z0-9]{0,15}$`)

// AddSite creates a site router behind the core with a LAN bridge, and NAT
// of the given kind on its WAN link.
func (b *Bed) AddSite(ctx context.Context, name string, nat NATKind) (*Site, error) {
	if !namePattern.MatchString(name) {
		return nil, fmt.Errorf("site name %q: want 1 to 16 of [a-z0-9], starting with a letter", name)
	}
	if b.Site(name) != nil {
		return nil, fmt.Errorf("site %s exists already", name)
	}
	b.mu.Lock()
	i := len(b.sites) + 1
	b.mu.Unlock()
	if i > 250 {
		return nil, fmt.Errorf("site %s: too many sites", name)
	}
	s := &Site{
		bed:      b,
		name:     name,
		index:    i,
		ns:       b.id + "-s-" + name,
		nat:      nat,
		wanIP:    netip.AddrFrom4([4]byte{100, 64, byte(i), 2}),
		nextHost: 10,
	}
	if nat == NATNone {
		s.lan = netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 96, byte(i), 0}), 24)
	} else {
		s.lan = netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 168, byte(i), 0}), 24)
	}
	s.gw = s.lan.Addr().Next()
	if err := b.addNamespace(ctx, s.ns, true); err != nil {
		return nil, fmt.Errorf("site %s: %w", name, err)
	}
	var coreEnd string
	coreEnd, s.wan = b.linkNames("cw")
	s.bridge = fmt.Sprintf("%s-b%d", b.id, i)
	coreIP := netip.AddrFrom4([4]byte{100, 64, byte(i), 1})
	steps := [][]string{
		{"ip", "-n", b.core, "link", "add", coreEnd, "type", "veth", "peer", "name", s.wan, "netns", s.ns},
		{"ip", "-n", b.core, "addr", "add", coreIP.String() + "/24", "dev", coreEnd},
		{"ip", "-n", b.core, "link", "set", coreEnd, "up"},
		{"ip", "-n", s.ns, "addr", "add", s.wanIP.String() + "/24", "dev", s.wan},
		{"ip", "-n", s.ns, "link", "set", s.wan, "up"},
		{"ip", "-n", s.ns, "route", "add", "default", "via", coreIP.String()},
		{"ip", "-n", s.ns, "link", "add", s.bridge, "type", "bridge"},
		{"ip", "-n", s.ns, "addr", "add", netip.PrefixFrom(s.gw, 24).String(), "dev", s.bridge},
		{"ip", "-n", s.ns, "link", "set", s.bridge, "up"},
	}
	if nat == NATNone {
		steps = append(steps, []string{"ip", "-n", b.core, "route", "add", s.lan.String(), "via", s.wanIP.String()})
	}
	for _, args := range steps {
		if _, err := run(ctx, "", args[0], args[1:]...); err != nil {
			return nil, fmt.Errorf("site %s: %w", name, err)
		}
	}
	if rules := natRules(nat, s.wan); rules != "" {
		if _, err := run(ctx, rules, "ip", "netns", "exec", s.ns, "nft", "-f", "-"); err != nil {
			return nil, fmt.Errorf("site %s: nat: %w", name, err)
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.checkOpen(); err != nil {
		return nil, err
	}
	b.sites = append(b.sites, s)
	return s, nil
}

// natRules is the nftables ruleset of a site router. A NATed site also
// refuses new connections from the outside: only replies and related
// traffic come in, as behind a home router.
func natRules(nat NATKind, wan string) string {
	var masq, udp string
	switch nat {
	case NATNone:
		return ""
	case NATCone:
		masq = "masquerade"
	case NATSymmetric:
		masq = "masquerade fully-random"
	case NATUDPBlocked:
		masq = "masquerade"
		udp = "meta l4proto udp counter drop"
	}
	return fmt.Sprintf(`table ip testbed_nat {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname %[1]q %[2]s
	}
	chain forward {
		type filter hook forward priority filter; policy accept;
		%[3]s
		iifname %[1]q ct state established,related accept
		iifname %[1]q counter drop
	}
}
`, wan, masq, udp)
}
