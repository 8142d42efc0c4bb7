package node

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

const peerID = "12D3KooWCuZNhRMDpJKCmZsJJkufBNkEN1YTxdtTdMHTgvPsPzRt"

func TestParseConfigDefaults(t *testing.T) {
	c, err := ParseConfig([]byte("ring = { open = true }\nnamespace = { open = true }\n[tap]\naddress = \"10.128.0.1/16\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Ring.Name != "default" || c.Namespace.Name != "default" || c.Namespace.Settle != "1s" {
		t.Fatalf("ring and namespace defaults not applied: %+v %+v", c.Ring, c.Namespace)
	}
	if c.StateDir != DefaultStateDir || c.TAP.Name != DefaultTAPName || c.TAP.UnderlayMTU != 1500 ||
		!*c.TAP.ConfigureAddress || c.Listen.Data != "0.0.0.0:4151" || len(c.Listen.Control) != 2 {
		t.Fatalf("defaults not applied: %+v", c)
	}
	if got := TAPMTU(c.TAP.UnderlayMTU); got != 1440 {
		t.Fatalf("TAP MTU on a 1500-byte underlay = %d, want 1440", got)
	}
}

func TestParseConfigErrorsNameTheField(t *testing.T) {
	// Open rings and namespaces, so that each case fails on its own
	// field; the cases with a [namespace] table use ringOnly.
	const ringOnly = "state_dir = \"/tmp/x\"\nring = { open = true }\n"
	const base = ringOnly + "namespace = { open = true }\n"
	const ns = "[namespace]\nopen = true\n"
	cases := []struct {
		name, text, field string
	}{
		{"closed ring, no root", "state_dir = \"/tmp/x\"\n[tap]\naddress = \"10.128.0.1/16\"\n", "ring.root"},
		{"closed ring, no cert", "state_dir = \"/tmp/x\"\n[ring]\nroot = \"x\"\n", "ring.cert"},
		{"closed namespace, no root", ringOnly + "[namespace]\nsubnet = \"10.128.0.0/16\"\n", "namespace.root"},
		{"closed namespace, no cert", ringOnly + "[namespace]\nroot = \"x\"\n", "namespace.cert"},
		{"no address", base, "namespace.subnet"},
		{"bad subnet", ringOnly + ns + "subnet = \"10.128.0.1/16\"\n", "namespace.subnet"},
		{"address outside subnet", ringOnly + "[tap]\naddress = \"10.129.0.1/16\"\n" + ns + "subnet = \"10.128.0.0/16\"\n", "tap.address"},
		{"bad namespace name", ringOnly + ns + "name = \"Big Net\"\nsubnet = \"10.128.0.0/16\"\n", "namespace.name"},
		{"bad settle", ringOnly + ns + "subnet = \"10.128.0.0/16\"\nsettle = \"2h\"\n", "namespace.settle"},
		{"bad address", base + "[tap]\naddress = \"banana\"\n", "tap.address"},
		{"lease time", base + "[tap]\naddress = \"10.128.0.1/16\"\nlease_time = \"soon\"\n", "tap.lease_time"},
		{"IPv6 address", base + "[tap]\naddress = \"fd00::1/64\"\n", "tap.address"},
		{"network address", base + "[tap]\naddress = \"10.128.0.0/16\"\n", "tap.address"},
		{"prefix too long", base + "[tap]\naddress = \"10.128.0.1/32\"\n", "tap.address"},
		{"long name", base + "[tap]\naddress = \"10.128.0.1/16\"\nname = \"abcdefghijklmnop\"\n", "tap.name"},
		{"mtu", base + "[tap]\naddress = \"10.128.0.1/16\"\nunderlay_mtu = 100\n", "tap.underlay_mtu"},
		{"relative state dir", "state_dir = \"rel\"\n[tap]\naddress = \"10.128.0.1/16\"\n", "state_dir"},
		{"log level", base + "log_level = \"loud\"\n[tap]\naddress = \"10.128.0.1/16\"\n", "log_level"},
		{"data addr", base + "[tap]\naddress = \"10.128.0.1/16\"\n[listen]\ndata = \"nowhere\"\n", "listen.data"},
		{"control addr", base + "[tap]\naddress = \"10.128.0.1/16\"\n[listen]\ncontrol = [\"tcp:4150\"]\n", "listen.control[0]"},
		{"peer id", base + "[tap]\naddress = \"10.128.0.1/16\"\n[[peer]]\nid = \"x\"\naddrs = [\"/ip4/1.2.3.4/tcp/1\"]\n", "peer[0].id"},
		{"peer addrs", base + "[tap]\naddress = \"10.128.0.1/16\"\n[[peer]]\nid = \"" + peerID + "\"\n", "peer[0].addrs"},
		{"duplicate peer", base + "[tap]\naddress = \"10.128.0.1/16\"\n" +
			"[[peer]]\nid = \"" + peerID + "\"\naddrs = [\"/ip4/1.2.3.4/tcp/1\"]\n" +
			"[[peer]]\nid = \"" + peerID + "\"\naddrs = [\"/ip4/1.2.3.4/tcp/1\"]\n", "peer[1].id"},
		{"bootstrap without peer ID", "bootstrap = [\"/ip4/1.2.3.4/tcp/4150\"]\n" + base + "[tap]\naddress = \"10.128.0.1/16\"\n", "bootstrap[0]"},
		{"shortcut idle timeout", base + "[tap]\naddress = \"10.128.0.1/16\"\n[shortcuts]\nidle_timeout = \"never\"\n", "shortcuts.idle_timeout"},
		{"shortcut cap", base + "[tap]\naddress = \"10.128.0.1/16\"\n[shortcuts]\nmax = 99\n", "shortcuts.max"},
		{"shortcut threshold", base + "[tap]\naddress = \"10.128.0.1/16\"\n[shortcuts]\nthreshold = -1.0\n", "shortcuts.threshold"},
		{"unknown field", base + "colour = \"blue\"\n[tap]\naddress = \"10.128.0.1/16\"\n", "colour"},
		{"unknown nested field", base + "[tap]\naddress = \"10.128.0.1/16\"\nspeed = 3\n", "tap.speed"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(c.text))
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("err = %v, want a ConfigError", err)
			}
			if ce.Field != c.field {
				t.Fatalf("error names field %q, want %q (%v)", ce.Field, c.field, err)
			}
		})
	}
}

func TestParseConfigSyntaxErrorGivesLine(t *testing.T) {
	_, err := ParseConfig([]byte("state_dir = \"/tmp\"\nlog_level = = 1\n"))
	var ce *ConfigError
	if !errors.As(err, &ce) || ce.Line != 2 || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("err = %v, want a ConfigError naming line 2", err)
	}
}

func TestLoadConfigErrorsAreConfigErrors(t *testing.T) {
	for name, load := range map[string]func() error{
		"missing file": func() error { _, err := LoadConfig("/nonexistent/ringnet.toml"); return err },
		"wrong type":   func() error { _, err := ParseConfig([]byte("log_level = 3\n")); return err },
	} {
		var ce *ConfigError
		if err := load(); !errors.As(err, &ce) {
			t.Errorf("%s: err = %v, want a ConfigError (exit status 2)", name, err)
		}
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte("[tap]\naddress = \"10.128.0.1/16\"\n"))
	f.Add([]byte("state_dir = \"/x\"\n[[peer]]\nid = \"" + peerID + "\"\naddrs = [\"/ip4/1.2.3.4/tcp/1\"]\n"))
	f.Add([]byte("[listen]\ncontrol = [\"/ip4/0.0.0.0/udp/1/quic-v1\"]\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseConfig(b)
		if err == nil {
			// Whatever is accepted must be usable as it stands.
			if _, err := c.VirtualPrefix(); err != nil {
				t.Fatalf("accepted config has a bad address: %v", err)
			}
		}
	})
}

func TestGatewayAddrIsReserved(t *testing.T) {
	for _, c := range []struct{ prefix, gw string }{
		{"10.128.0.1/16", "10.128.255.254"},
		{"192.168.7.9/24", "192.168.7.254"},
		{"10.0.0.1/30", "10.0.0.2"},
	} {
		if got := GatewayAddr(netip.MustParsePrefix(c.prefix)).String(); got != c.gw {
			t.Errorf("GatewayAddr(%s) = %s, want %s", c.prefix, got, c.gw)
		}
	}
	for _, addr := range []string{"10.128.255.254/16", "10.128.255.255/16"} {
		var ce *ConfigError
		text := "ring = { open = true }\nnamespace = { open = true }\n[tap]\naddress = \"" + addr + "\"\n"
		if _, err := ParseConfig([]byte(text)); !errors.As(err, &ce) || ce.Field != "tap.address" {
			t.Errorf("address %s: err = %v, want one naming tap.address", addr, err)
		}
	}
}
