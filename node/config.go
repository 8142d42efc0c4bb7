package node

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/multiformats/go-multiaddr"

	"github.com/ringnet/ringnet/routing"
)

// Config is a node's configuration file (TOML). docs/operations.md documents
// every field.
type Config struct {
	// StateDir holds the identity key and the control socket.
	StateDir string `toml:"state_dir"`
	// LogLevel is debug, info, warn or error.
	LogLevel string    `toml:"log_level"`
	TAP      TAPConfig `toml:"tap"`
	Listen   Listen    `toml:"listen"`
	// Bootstrap lists nodes to join the ring through, as multiaddrs
	// ending in /p2p/<peer ID>. One reachable node is enough; a node
	// with none starts a ring of its own that others join.
	Bootstrap []string `toml:"bootstrap"`
	// Ring says who may join the ring.
	Ring RingConfig `toml:"ring"`
	// Namespace is the virtual network the VM's address comes from.
	Namespace NamespaceConfig `toml:"namespace"`
	// Shortcuts tunes when nodes that talk over the ring link directly.
	Shortcuts ShortcutConfig `toml:"shortcuts"`
	// Peers are nodes to keep a direct link to, outside the ring's
	// policy.
	Peers []Peer `toml:"peer"`
}

// RingConfig is ring admission. A ring is closed unless open is set:
// every node shows a certificate chain from the ring's owner key
// (`ringnet ring create`, `ringnet ring admit`).
type RingConfig struct {
	// Open lets any node link, as IPOP's shared public overlay did.
	Open bool `toml:"open,omitempty"`
	// Name of the ring (default "default").
	Name string `toml:"name,omitempty"`
	// Root is the ring owner's public key, as `ringnet ring create`
	// prints it.
	Root string `toml:"root,omitempty"`
	// Cert is this node's certificate chain file (relative paths are in
	// state_dir); with EnrollKey, the enrollment key's chain.
	Cert string `toml:"cert,omitempty"`
	// EnrollKey, if set, is an enrollment key file the node admits
	// itself with, for images booted by the hundred.
	EnrollKey string `toml:"enroll_key,omitempty"`
	// Revocations, if set, is a revocation list file (`ringnet ring
	// revoke`) that this node publishes in the DHT; every node honours
	// what the DHT holds.
	Revocations string `toml:"revocations,omitempty"`
}

// NamespaceConfig names the VM's virtual network: the node claims an
// address for its VM in the namespace's subnet, as a lease held in the
// overlay's DHT.
type NamespaceConfig struct {
	// Name of the namespace (default "default"): lowercase letters,
	// digits, '-' and '.'.
	Name string `toml:"name,omitempty"`
	// Subnet is the virtual subnet, such as 10.128.0.0/16. It may be left
	// out when tap.address names the subnet.
	Subnet string `toml:"subnet,omitempty"`
	// Settle is how long a claim waits before the node checks that the
	// DHT kept it (default "1s").
	Settle string `toml:"settle,omitempty"`
	// Open lets any node claim addresses. Otherwise the namespace is
	// closed: Root, Cert (and EnrollKey) work as in RingConfig, and the
	// subnet and lease time may come from the certificate.
	Open        bool   `toml:"open,omitempty"`
	Root        string `toml:"root,omitempty"`
	Cert        string `toml:"cert,omitempty"`
	EnrollKey   string `toml:"enroll_key,omitempty"`
	Revocations string `toml:"revocations,omitempty"`
}

// ShortcutConfig is the shortcut policy (routing.ShortcutPolicy); zero
// values take the defaults.
type ShortcutConfig struct {
	// Threshold is the traffic score, in packets, that asks for a
	// shortcut (default 20).
	Threshold float64 `toml:"threshold,omitempty"`
	// HalfLife is how fast the score forgets, such as "10s" (default).
	HalfLife string `toml:"half_life,omitempty"`
	// IdleTimeout drops a shortcut that carried nothing for so long
	// (default "2m").
	IdleTimeout string `toml:"idle_timeout,omitempty"`
	// Max bounds the shortcuts a node keeps (default 8).
	Max int `toml:"max,omitempty"`
	// RetryAfter is how long a peer whose shortcut failed is left alone,
	// doubled with each failure (default "5s"); after max_tries failures
	// in a row (default 4) the node stops asking.
	RetryAfter string `toml:"retry_after,omitempty"`
	MaxTries   int    `toml:"max_tries,omitempty"`
}

// TAPConfig describes the VM's side: its TAP device and virtual address.
type TAPConfig struct {
	// Name of the TAP device, at most 15 bytes.
	Name string `toml:"name"`
	// Address, if set, is the address the node claims for its VM first,
	// with the virtual subnet's prefix length, such as 10.128.0.1/16.
	// Without it the node picks a free address from namespace.subnet.
	Address string `toml:"address"`
	// UnderlayMTU is the MTU of the physical network; the TAP MTU leaves
	// room below it for the overlay's headers.
	UnderlayMTU int `toml:"underlay_mtu"`
	// ConfigureAddress makes the node put Address on the TAP device itself,
	// for hosts with no DHCP client.
	ConfigureAddress *bool `toml:"configure_address"`
	// Offloads opens the TAP with vnet headers and TSO, so that the VM
	// hands over 64 KiB TCP frames; the node falls back to plain frames
	// where the kernel refuses.
	Offloads *bool `toml:"offloads"`
	// DHCP serves the VM's DHCP client on the TAP: it hands out Address,
	// the MTU that fits the overlay and the virtual gateway.
	DHCP *bool `toml:"dhcp"`
	// LeaseTime is the DHCP lease time, such as "1h".
	LeaseTime string `toml:"lease_time"`
}

// Listen names the node's sockets.
type Listen struct {
	// Control holds libp2p multiaddrs for the control plane (TCP and QUIC).
	Control []string `toml:"control"`
	// Data is the UDP address of the data socket, host:port.
	Data string `toml:"data"`
}

// Peer is a statically configured peer.
type Peer struct {
	ID    string   `toml:"id"`
	Addrs []string `toml:"addrs"`
}

// Defaults used for fields the file leaves out.
const (
	DefaultTAPName     = "ringnet0"
	DefaultUnderlayMTU = 1500
	DefaultControlPort = 4150
	DefaultDataPort    = 4151
	DefaultStateDir    = "/var/lib/ringnet"
	DefaultLeaseTime   = time.Hour
	DefaultNamespace   = "default"
	DefaultSettle      = time.Second
)

// ConfigError is a config that cannot be used: it names the field, or the
// line of a syntax error, where it can. `ringnet up` exits with status 2
// on one.
type ConfigError struct {
	Field string // empty when no field is to blame
	Line  int    // for syntax errors; 0 when unknown
	Err   error
}

func (e *ConfigError) Error() string {
	switch {
	case e.Field != "":
		return fmt.Sprintf("config field %s: %v", e.Field, e.Err)
	case e.Line > 0:
		return fmt.Sprintf("config line %d: %v", e.Line, e.Err)
	}
	return fmt.Sprintf("config: %v", e.Err)
}
func (e *ConfigError) Unwrap() error { return e.Err }

func fieldErr(field, format string, args ...any) error {
	return &ConfigError{Field: field, Err: fmt.Errorf(format, args...)}
}

// LoadConfig reads, defaults and validates a config file.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, &ConfigError{Err: err}
	}
	return ParseConfig(data)
}

// ParseConfig parses, defaults and validates a config file's contents.
func ParseConfig(data []byte) (*Config, error) {
	var c Config
	md, err := toml.Decode(string(data), &c)
	if err != nil {
		var perr toml.ParseError
		if errors.As(err, &perr) {
			return nil, &ConfigError{Line: perr.Position.Line, Err: errors.New(perr.Message)}
		}
		// A value of the wrong type for its field, and the like.
		return nil, &ConfigError{Err: err}
	}
	if undecoded := md.Undecoded(); len(undecoded) > 0 {
		return nil, fieldErr(undecoded[0].String(), "unknown field")
	}
	c.setDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

func (c *Config) setDefaults() {
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	if c.LogLevel == "" {
		c.LogLevel = "info"
	}
	if c.TAP.Name == "" {
		c.TAP.Name = DefaultTAPName
	}
	if c.TAP.UnderlayMTU == 0 {
		c.TAP.UnderlayMTU = DefaultUnderlayMTU
	}
	if c.TAP.ConfigureAddress == nil {
		c.TAP.ConfigureAddress = ptr(true)
	}
	if c.TAP.Offloads == nil {
		c.TAP.Offloads = ptr(true)
	}
	if c.TAP.DHCP == nil {
		c.TAP.DHCP = ptr(true)
	}
	if c.Namespace.Name == "" {
		c.Namespace.Name = DefaultNamespace
	}
	if c.Ring.Name == "" {
		c.Ring.Name = DefaultNamespace
	}
	if c.Namespace.Settle == "" {
		c.Namespace.Settle = DefaultSettle.String()
	}
	if c.TAP.LeaseTime == "" {
		c.TAP.LeaseTime = DefaultLeaseTime.String()
	}
	if len(c.Listen.Control) == 0 {
		c.Listen.Control = []string{
			fmt.Sprintf("/ip4/0.0.0.0/tcp/%d", DefaultControlPort),
			fmt.Sprintf("/ip4/0.0.0.0/udp/%d/quic-v1", DefaultControlPort),
		}
	}
	if c.Listen.Data == "" {
		c.Listen.Data = fmt.Sprintf("0.0.0.0:%d", DefaultDataPort)
	}
}

// Validate checks every field and returns the first problem, naming it.
func (c *Config) Validate() error {
	if !filepath.IsAbs(c.StateDir) {
		return fieldErr("state_dir", "%q is not an absolute path", c.StateDir)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return fieldErr("log_level", "%q is not one of debug, info, warn, error", c.LogLevel)
	}
	if len(c.TAP.Name) > 15 {
		return fieldErr("tap.name", "%q is longer than 15 bytes", c.TAP.Name)
	}
	if strings.ContainsAny(c.TAP.Name, "/ \t\n%") {
		return fieldErr("tap.name", "%q is not a valid interface name", c.TAP.Name)
	}
	if !c.Ring.Open {
		if c.Ring.Root == "" {
			return fieldErr("ring.root", "missing: a closed ring needs its owner's public key (or set ring.open = true)")
		}
		if c.Ring.Cert == "" {
			return fieldErr("ring.cert", "missing: a closed ring needs this node's certificate (or set ring.open = true)")
		}
	}
	if !validNamespace(c.Ring.Name) {
		return fieldErr("ring.name", "%q is not 1 to 63 of a-z, 0-9, '-' and '.'", c.Ring.Name)
	}
	if !c.Namespace.Open {
		if c.Namespace.Root == "" {
			return fieldErr("namespace.root", "missing: a closed namespace needs its owner's public key (or set namespace.open = true)")
		}
		if c.Namespace.Cert == "" {
			return fieldErr("namespace.cert", "missing: a closed namespace needs this node's certificate (or set namespace.open = true)")
		}
	}
	if c.TAP.Address == "" && c.Namespace.Subnet == "" && c.Namespace.Open {
		return fieldErr("namespace.subnet", "missing (the virtual subnet, such as 10.128.0.0/16; or give tap.address)")
	}
	if _, err := c.Subnet(); err != nil {
		return err
	}
	if !validNamespace(c.Namespace.Name) {
		return fieldErr("namespace.name", "%q is not 1 to 63 of a-z, 0-9, '-' and '.'", c.Namespace.Name)
	}
	if d, err := time.ParseDuration(c.Namespace.Settle); err != nil || d < 0 || d > time.Minute {
		return fieldErr("namespace.settle", "%q is not a duration from 0s to 1m", c.Namespace.Settle)
	}
	// A lease record lives at most a day (dhcp.DefaultMaxLease).
	if d, err := time.ParseDuration(c.TAP.LeaseTime); err != nil || d < 10*time.Second || d > 24*time.Hour {
		return fieldErr("tap.lease_time", "%q is not a duration from 10s to 24h", c.TAP.LeaseTime)
	}
	if c.TAP.UnderlayMTU < 576 || c.TAP.UnderlayMTU > 65535 {
		return fieldErr("tap.underlay_mtu", "%d is outside 576..65535", c.TAP.UnderlayMTU)
	}
	for i, a := range c.Listen.Control {
		if _, err := multiaddr.NewMultiaddr(a); err != nil {
			return fieldErr(fmt.Sprintf("listen.control[%d]", i), "%q: %v", a, err)
		}
	}
	if _, err := netip.ParseAddrPort(c.Listen.Data); err != nil {
		return fieldErr("listen.data", "%q: %v", c.Listen.Data, err)
	}
	if _, err := c.BootstrapPeers(); err != nil {
		return err
	}
	if _, err := c.ShortcutPolicy(); err != nil {
		return err
	}
	seen := make(map[peer.ID]bool)
	for i, p := range c.Peers {
		field := fmt.Sprintf("peer[%d]", i)
		id, err := peer.Decode(p.ID)
		if err != nil {
			return fieldErr(field+".id", "%q is not a peer ID: %v", p.ID, err)
		}
		if seen[id] {
			return fieldErr(field+".id", "%s is listed twice", p.ID)
		}
		seen[id] = true
		if len(p.Addrs) == 0 {
			return fieldErr(field+".addrs", "missing (the peer's control multiaddrs)")
		}
		for j, a := range p.Addrs {
			if _, err := multiaddr.NewMultiaddr(a); err != nil {
				return fieldErr(fmt.Sprintf("%s.addrs[%d]", field, j), "%q: %v", a, err)
			}
		}
	}
	return nil
}

// ShortcutPolicy returns the shortcuts section parsed, defaults filled in.
func (c *Config) ShortcutPolicy() (routing.ShortcutPolicy, error) {
	p := routing.DefaultShortcutPolicy
	sc := c.Shortcuts
	if sc.Threshold < 0 || sc.Threshold > 1e9 {
		return p, fieldErr("shortcuts.threshold", "%v is outside 0..1e9 packets", sc.Threshold)
	}
	if sc.Threshold > 0 {
		p.Threshold = sc.Threshold
	}
	for _, d := range []struct {
		field, value string
		into         *time.Duration
	}{
		{"shortcuts.half_life", sc.HalfLife, &p.HalfLife},
		{"shortcuts.idle_timeout", sc.IdleTimeout, &p.IdleTimeout},
		{"shortcuts.retry_after", sc.RetryAfter, &p.RetryAfter},
	} {
		if d.value == "" {
			continue
		}
		v, err := time.ParseDuration(d.value)
		if err != nil || v < time.Second || v > 24*time.Hour {
			return p, fieldErr(d.field, "%q is not a duration from 1s to 24h", d.value)
		}
		*d.into = v
	}
	if sc.Max < 0 || sc.Max > routing.MaxLinks {
		return p, fieldErr("shortcuts.max", "%d is outside 0..%d", sc.Max, routing.MaxLinks)
	}
	if sc.Max > 0 {
		p.Max = sc.Max
	}
	if sc.MaxTries < 0 || sc.MaxTries > 100 {
		return p, fieldErr("shortcuts.max_tries", "%d is outside 0..100", sc.MaxTries)
	}
	if sc.MaxTries > 0 {
		p.MaxTries = sc.MaxTries
	}
	return p, nil
}

// BootstrapPeers returns the bootstrap list parsed.
func (c *Config) BootstrapPeers() ([]peer.AddrInfo, error) {
	var out []peer.AddrInfo
	for i, a := range c.Bootstrap {
		field := fmt.Sprintf("bootstrap[%d]", i)
		m, err := multiaddr.NewMultiaddr(a)
		if err != nil {
			return nil, fieldErr(field, "%q: %v", a, err)
		}
		info, err := peer.AddrInfoFromP2pAddr(m)
		if err != nil {
			return nil, fieldErr(field, "%q does not end in /p2p/<peer ID>: %v", a, err)
		}
		if i := slices.IndexFunc(out, func(o peer.AddrInfo) bool { return o.ID == info.ID }); i >= 0 {
			out[i].Addrs = append(out[i].Addrs, info.Addrs...)
			continue
		}
		out = append(out, *info)
	}
	return out, nil
}

// Subnet returns the virtual subnet: namespace.subnet, or tap.address's.
func (c *Config) Subnet() (netip.Prefix, error) {
	var addr netip.Prefix
	if c.TAP.Address != "" {
		p, err := c.VirtualPrefix()
		if err != nil {
			return netip.Prefix{}, err
		}
		addr = p
	}
	if c.Namespace.Subnet == "" {
		return addr.Masked(), nil
	}
	p, err := netip.ParsePrefix(c.Namespace.Subnet)
	switch {
	case err != nil:
		return netip.Prefix{}, fieldErr("namespace.subnet", "%q: %v", c.Namespace.Subnet, err)
	case !p.Addr().Is4():
		return netip.Prefix{}, fieldErr("namespace.subnet", "%q is not IPv4 (IPv6 is not carried yet)", c.Namespace.Subnet)
	case p.Bits() < 8 || p.Bits() > 29:
		return netip.Prefix{}, fieldErr("namespace.subnet", "prefix length /%d is outside /8../29", p.Bits())
	case p != p.Masked():
		return netip.Prefix{}, fieldErr("namespace.subnet", "%q has host bits set (the subnet is %v)", c.Namespace.Subnet, p.Masked())
	case addr.IsValid() && addr.Masked() != p:
		return netip.Prefix{}, fieldErr("tap.address", "%v is not in namespace.subnet %v", addr, p)
	}
	return p, nil
}

// PreferredAddr is tap.address's address, if set: the one the node
// claims first.
func (c *Config) PreferredAddr() (netip.Addr, bool) {
	if c.TAP.Address == "" {
		return netip.Addr{}, false
	}
	p, err := c.VirtualPrefix()
	return p.Addr(), err == nil
}

// SettleTime is namespace.settle parsed.
func (c *Config) SettleTime() time.Duration {
	d, _ := time.ParseDuration(c.Namespace.Settle) // validated
	return d
}

func validNamespace(name string) bool {
	if len(name) == 0 || len(name) > 63 {
		return false
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '.') {
			return false
		}
	}
	return true
}

// VirtualPrefix returns tap.address parsed: the VM's address and its subnet.
func (c *Config) VirtualPrefix() (netip.Prefix, error) {
	p, err := netip.ParsePrefix(c.TAP.Address)
	if err != nil {
		return netip.Prefix{}, fieldErr("tap.address", "%q: %v", c.TAP.Address, err)
	}
	if !p.Addr().Is4() {
		return netip.Prefix{}, fieldErr("tap.address", "%q is not IPv4 (IPv6 is not carried yet)", c.TAP.Address)
	}
	if p.Bits() < 8 || p.Bits() > 29 {
		return netip.Prefix{}, fieldErr("tap.address", "prefix length /%d is outside /8../29", p.Bits())
	}
	if p.Addr() == p.Masked().Addr() {
		return netip.Prefix{}, fieldErr("tap.address", "%v is the subnet's network address", p.Addr())
	}
	if gw := GatewayAddr(p); p.Addr() == gw || p.Addr() == gw.Next() {
		return netip.Prefix{}, fieldErr("tap.address", "%v is reserved: the subnet's last address is its broadcast address and the one before it the virtual gateway's", p.Addr())
	}
	return p, nil
}

// GatewayAddr is the virtual gateway's address in a subnet: the last
// address before the broadcast address, reserved in every subnet, so that
// DHCP has a server address no VM can hold.
func GatewayAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	host := ^uint32(0) >> p.Bits()
	v := (uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])) | host
	v-- // the broadcast address's predecessor
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// LeaseDuration is tap.lease_time parsed.
func (c *Config) LeaseDuration() time.Duration {
	d, _ := time.ParseDuration(c.TAP.LeaseTime) // validated
	return d
}

// ControlSocket is the path of the running node's control socket.
func (c *Config) ControlSocket() string { return ControlSocketIn(c.StateDir) }

// ControlSocketIn is the control socket's path in a state directory.
func ControlSocketIn(stateDir string) string { return filepath.Join(stateDir, "control.sock") }

func ptr[T any](v T) *T { return &v }
