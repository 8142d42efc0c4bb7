package dhcp

import (
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

func TestNewServerConfig(t *testing.T) {
	tests := []struct {
		name    string
		edit    func(*Config)
		wantErr string // "" for none
	}{
		{"valid", func(*Config) {}, ""},
		{"minimal", func(c *Config) {
			c.Router, c.DNS, c.Domain, c.Released = netip.Addr{}, nil, "", nil
		}, ""},
		{"no server MAC", func(c *Config) { c.ServerMAC = nil }, "server MAC"},
		{"group server MAC", func(c *Config) { c.ServerMAC = net.HardwareAddr{1, 0, 0, 0, 0, 1} }, "server MAC"},
		{"zero server MAC", func(c *Config) { c.ServerMAC = make(net.HardwareAddr, 6) }, "server MAC"},
		{"long server MAC", func(c *Config) { c.ServerMAC = make(net.HardwareAddr, 8) }, "server MAC"},
		{"no server IP", func(c *Config) { c.ServerIP = netip.Addr{} }, "server IP"},
		{"IPv6 server IP", func(c *Config) { c.ServerIP = netip.MustParseAddr("fd00::1") }, "server IP"},
		{"unspecified server IP", func(c *Config) { c.ServerIP = netip.IPv4Unspecified() }, "server IP"},
		{"no subnet", func(c *Config) { c.Subnet = netip.Prefix{} }, "subnet"},
		{"IPv6 subnet", func(c *Config) { c.Subnet = netip.MustParsePrefix("fd00::/64") }, "subnet"},
		{"unmasked subnet", func(c *Config) { c.Subnet = netip.MustParsePrefix("10.128.0.1/16") }, "not masked"},
		{"tiny subnet", func(c *Config) { c.Subnet = netip.MustParsePrefix("10.128.0.0/31") }, "too small"},
		{"IPv6 router", func(c *Config) { c.Router = netip.MustParseAddr("fd00::1") }, "router"},
		{"MTU too small", func(c *Config) { c.MTU = 67 }, "MTU"},
		{"MTU too large", func(c *Config) { c.MTU = 65536 }, "MTU"},
		{"no lease time", func(c *Config) { c.LeaseTime = 0 }, "lease time"},
		{"lease time too long", func(c *Config) { c.LeaseTime = 200 * 365 * 24 * time.Hour }, "lease time"},
		{"IPv6 DNS", func(c *Config) { c.DNS = []netip.Addr{netip.MustParseAddr("fd00::1")} }, "DNS"},
		{"invalid DNS", func(c *Config) { c.DNS = []netip.Addr{{}} }, "DNS"},
		{"too many DNS", func(c *Config) { c.DNS = make([]netip.Addr, 33) }, "DNS"},
		{"long domain", func(c *Config) { c.Domain = strings.Repeat("a", 256) }, "domain"},
		{"no Lease", func(c *Config) { c.Lease = nil }, "Lease"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig()
			tt.edit(&cfg)
			s, err := NewServer(cfg)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("NewServer: %v", err)
			case tt.wantErr != "" && err == nil:
				t.Fatalf("NewServer succeeded, want an error about %s", tt.wantErr)
			case tt.wantErr != "" && !strings.Contains(err.Error(), tt.wantErr):
				t.Fatalf("NewServer: %v, want an error about %s", err, tt.wantErr)
			case err == nil && s == nil:
				t.Fatal("NewServer returned nil and no error")
			}
		})
	}
}

// Options that are not set are not sent.
func TestOptionalOptionsOmitted(t *testing.T) {
	cfg := testConfig()
	cfg.Router, cfg.DNS, cfg.Domain = netip.Addr{}, nil, ""
	s := newTestServer(t, cfg)
	f, _ := s.HandleFrame(clientFrame(msg(dhcpv4.MessageTypeDiscover)).bytes(), make([]byte, MaxFrameLen))
	r, err := parseReply(f, serverMAC, serverIP)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []dhcpv4.OptionCode{dhcpv4.OptionRouter, dhcpv4.OptionDomainNameServer, dhcpv4.OptionDomainName} {
		if r.msg.Options.Has(c) {
			t.Errorf("offer has option %v", c)
		}
	}
	for _, c := range []dhcpv4.OptionCode{dhcpv4.OptionSubnetMask, dhcpv4.OptionInterfaceMTU, dhcpv4.OptionIPAddressLeaseTime} {
		if !r.msg.Options.Has(c) {
			t.Errorf("offer lacks option %v", c)
		}
	}
}

// The config's slices are copied: changing them later changes nothing.
func TestNewServerCopiesConfig(t *testing.T) {
	cfg := testConfig()
	cfg.ServerMAC = append(net.HardwareAddr(nil), serverMAC...)
	s := newTestServer(t, cfg)
	cfg.ServerMAC[5] = 9
	cfg.DNS[0] = netip.MustParseAddr("1.1.1.1")
	f, _ := s.HandleFrame(clientFrame(msg(dhcpv4.MessageTypeDiscover)).bytes(), make([]byte, MaxFrameLen))
	r, err := parseReply(f, serverMAC, serverIP)
	if err != nil {
		t.Fatal(err)
	}
	if d := r.msg.DNS(); !d[0].Equal(serverIP.AsSlice()) {
		t.Errorf("DNS %v after the config changed", d)
	}
}

func TestClientIDString(t *testing.T) {
	tests := []struct {
		id   ClientID
		want string
	}{
		{ClientID("mac:52:54:00:12:34:56"), "mac:52:54:00:12:34:56"},
		{ClientID(vmID), "id:01525400123456"},
		{ClientID("mac:"), "id:6d61633a"},
	}
	for _, tt := range tests {
		if got := tt.id.String(); got != tt.want {
			t.Errorf("%q.String() = %q, want %q", string(tt.id), got, tt.want)
		}
	}
}

func TestCountersNames(t *testing.T) {
	s := newTestServer(t, testConfig())
	c := s.Counters()
	if len(c) != int(numCounters) {
		t.Errorf("%d counters, want %d", len(c), numCounters)
	}
	for _, name := range []string{
		"discovers", "offers", "requests", "acks", "naks", "releases", "declines",
		"informs", "malformed", "ignored", "no_lease", "bad_lease", "reply_too_large",
	} {
		if _, ok := c[name]; !ok {
			t.Errorf("no counter %q", name)
		}
	}
}

// HandleFrame may be called from several goroutines (run with -race).
func TestHandleFrameConcurrent(t *testing.T) {
	s := newTestServer(t, testConfig())
	frame := clientFrame(msg(dhcpv4.MessageTypeDiscover)).bytes()
	const goroutines, each = 4, 50
	var wg sync.WaitGroup
	for range goroutines {
		wg.Go(func() {
			out := make([]byte, MaxFrameLen)
			for range each {
				if r, _ := s.HandleFrame(frame, out); r == nil {
					t.Error("no offer")
					return
				}
			}
		})
	}
	wg.Wait()
	if got := s.Counters()["offers"]; got != goroutines*each {
		t.Errorf("%d offers, want %d", got, goroutines*each)
	}
}
