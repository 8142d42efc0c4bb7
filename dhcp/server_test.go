package dhcp

import (
	"bytes"
	"maps"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// released is a call of Config.Released.
type released struct {
	client   ClientID
	addr     netip.Addr
	declined bool
}

func TestHandleFrameMessages(t *testing.T) {
	macID := ClientID("mac:" + vmMAC.String())
	leaseOpts := []dhcpv4.OptionCode{
		dhcpv4.OptionIPAddressLeaseTime, dhcpv4.OptionRenewTimeValue, dhcpv4.OptionRebindingTimeValue,
	}
	configOpts := []dhcpv4.OptionCode{
		dhcpv4.OptionSubnetMask, dhcpv4.OptionRouter, dhcpv4.OptionDomainNameServer,
		dhcpv4.OptionDomainName, dhcpv4.OptionInterfaceMTU,
	}
	tests := []struct {
		name  string
		frame udpFrame
		// The reply, if any: its type, yiaddr, ciaddr and destination.
		typ      dhcpv4.MessageType
		yiaddr   netip.Addr
		ciaddr   netip.Addr
		dstMAC   net.HardwareAddr
		dstIP    netip.Addr
		released *released
		counters map[string]uint64
	}{
		{
			name:     "discover by MAC",
			frame:    clientFrame(msg(dhcpv4.MessageTypeDiscover)),
			typ:      dhcpv4.MessageTypeOffer,
			yiaddr:   vmMACAddr,
			dstMAC:   vmMAC,
			dstIP:    bcastIP,
			counters: map[string]uint64{"discovers": 1, "offers": 1},
		},
		{
			name:     "discover by client ID, broadcast flag",
			frame:    clientFrame(msg(dhcpv4.MessageTypeDiscover, withClientID, dhcpv4.WithBroadcast(true))),
			typ:      dhcpv4.MessageTypeOffer,
			yiaddr:   vmIDAddr,
			dstMAC:   bcastMAC,
			dstIP:    bcastIP,
			counters: map[string]uint64{"discovers": 1, "offers": 1},
		},
		{
			name:     "discover without a lease",
			frame:    clientFrame(msg(dhcpv4.MessageTypeDiscover, dhcpv4.WithHwAddr(net.HardwareAddr{0x52, 0, 0, 0, 0, 9}))),
			counters: map[string]uint64{"discovers": 1, "no_lease": 1},
		},
		{
			name:     "request selecting",
			frame:    clientFrame(msg(dhcpv4.MessageTypeRequest, withServerID(serverIP), withRequested(vmMACAddr))),
			typ:      dhcpv4.MessageTypeAck,
			yiaddr:   vmMACAddr,
			dstMAC:   vmMAC,
			dstIP:    bcastIP,
			counters: map[string]uint64{"requests": 1, "acks": 1},
		},
		{
			name:     "request selecting by client ID, broadcast flag",
			frame:    clientFrame(msg(dhcpv4.MessageTypeRequest, withClientID, dhcpv4.WithBroadcast(true), withServerID(serverIP), withRequested(vmIDAddr))),
			typ:      dhcpv4.MessageTypeAck,
			yiaddr:   vmIDAddr,
			dstMAC:   bcastMAC,
			dstIP:    bcastIP,
			counters: map[string]uint64{"requests": 1, "acks": 1},
		},
		{
			name:     "request selecting another server",
			frame:    clientFrame(msg(dhcpv4.MessageTypeRequest, withServerID(otherIP), withRequested(vmMACAddr))),
			counters: map[string]uint64{"requests": 1, "ignored": 1},
		},
		{
			name:     "request selecting the wrong address",
			frame:    clientFrame(msg(dhcpv4.MessageTypeRequest, withServerID(serverIP), withRequested(otherIP))),
			typ:      dhcpv4.MessageTypeNak,
			yiaddr:   zeroIP,
			dstMAC:   bcastMAC,
			dstIP:    bcastIP,
			counters: map[string]uint64{"requests": 1, "naks": 1},
		},
		{
			name:     "request init-reboot",
			frame:    clientFrame(msg(dhcpv4.MessageTypeRequest, withRequested(vmMACAddr))),
			typ:      dhcpv4.MessageTypeAck,
			yiaddr:   vmMACAddr,
			dstMAC:   vmMAC,
			dstIP:    bcastIP,
			counters: map[string]uint64{"requests": 1, "acks": 1},
		},
		{
			name:     "request init-reboot, the wrong address",
			frame:    clientFrame(msg(dhcpv4.MessageTypeRequest, withRequested(otherIP))),
			typ:      dhcpv4.MessageTypeNak,
			yiaddr:   zeroIP,
			dstMAC:   bcastMAC,
			dstIP:    bcastIP,
			counters: map[string]uint64{"requests": 1, "naks": 1},
		},
		{
			name:     "request without a lease",
			frame:    clientFrame(msg(dhcpv4.MessageTypeRequest, dhcpv4.WithHwAddr(net.HardwareAddr{0x52, 0, 0, 0, 0, 9}), withRequested(vmMACAddr))),
			typ:      dhcpv4.MessageTypeNak,
			yiaddr:   zeroIP,
			dstMAC:   bcastMAC,
			dstIP:    bcastIP,
			counters: map[string]uint64{"requests": 1, "naks": 1},
		},
		{
			name:     "request naming no address",
			frame:    clientFrame(msg(dhcpv4.MessageTypeRequest)),
			typ:      dhcpv4.MessageTypeNak,
			yiaddr:   zeroIP,
			dstMAC:   bcastMAC,
			dstIP:    bcastIP,
			counters: map[string]uint64{"requests": 1, "naks": 1},
		},
		{
			name:     "request renewing",
			frame:    clientFrame(msg(dhcpv4.MessageTypeRequest, withCiaddr(vmMACAddr))).unicast(),
			typ:      dhcpv4.MessageTypeAck,
			yiaddr:   vmMACAddr,
			ciaddr:   vmMACAddr,
			dstMAC:   vmMAC,
			dstIP:    vmMACAddr,
			counters: map[string]uint64{"requests": 1, "acks": 1},
		},
		{
			name:     "request rebinding",
			frame:    clientFrame(msg(dhcpv4.MessageTypeRequest, withClientID, withCiaddr(vmIDAddr))),
			typ:      dhcpv4.MessageTypeAck,
			yiaddr:   vmIDAddr,
			ciaddr:   vmIDAddr,
			dstMAC:   vmMAC,
			dstIP:    vmIDAddr,
			counters: map[string]uint64{"requests": 1, "acks": 1},
		},
		{
			name:     "request renewing the wrong address",
			frame:    clientFrame(msg(dhcpv4.MessageTypeRequest, withCiaddr(otherIP))).unicast(),
			typ:      dhcpv4.MessageTypeNak,
			yiaddr:   zeroIP,
			dstMAC:   bcastMAC,
			dstIP:    bcastIP,
			counters: map[string]uint64{"requests": 1, "naks": 1},
		},
		{
			name:     "release",
			frame:    clientFrame(msg(dhcpv4.MessageTypeRelease, withServerID(serverIP), withCiaddr(vmMACAddr))).unicast(),
			released: &released{macID, vmMACAddr, false},
			counters: map[string]uint64{"releases": 1},
		},
		{
			name:     "release by client ID",
			frame:    clientFrame(msg(dhcpv4.MessageTypeRelease, withClientID, withServerID(serverIP), withCiaddr(vmIDAddr))).unicast(),
			released: &released{ClientID(vmID), vmIDAddr, false},
			counters: map[string]uint64{"releases": 1},
		},
		{
			name:     "release to another server",
			frame:    clientFrame(msg(dhcpv4.MessageTypeRelease, withServerID(otherIP), withCiaddr(vmMACAddr))),
			counters: map[string]uint64{"releases": 1, "ignored": 1},
		},
		{
			name:     "release without an address",
			frame:    clientFrame(msg(dhcpv4.MessageTypeRelease, withServerID(serverIP))),
			counters: map[string]uint64{"releases": 1, "malformed": 1},
		},
		{
			name:     "decline",
			frame:    clientFrame(msg(dhcpv4.MessageTypeDecline, withServerID(serverIP), withRequested(vmMACAddr))),
			released: &released{macID, vmMACAddr, true},
			counters: map[string]uint64{"declines": 1},
		},
		{
			name:     "decline without an address",
			frame:    clientFrame(msg(dhcpv4.MessageTypeDecline, withServerID(serverIP))),
			counters: map[string]uint64{"declines": 1, "malformed": 1},
		},
		{
			name:     "inform",
			frame:    clientFrame(msg(dhcpv4.MessageTypeInform, withCiaddr(otherIP))).unicast(),
			typ:      dhcpv4.MessageTypeInform, // an ACK without a lease
			yiaddr:   zeroIP,
			ciaddr:   otherIP,
			dstMAC:   vmMAC,
			dstIP:    otherIP,
			counters: map[string]uint64{"informs": 1, "acks": 1},
		},
		{
			name:     "inform, broadcast flag",
			frame:    clientFrame(msg(dhcpv4.MessageTypeInform, withClientID, dhcpv4.WithBroadcast(true), withCiaddr(vmIDAddr))),
			typ:      dhcpv4.MessageTypeInform,
			yiaddr:   zeroIP,
			ciaddr:   vmIDAddr,
			dstMAC:   bcastMAC,
			dstIP:    bcastIP,
			counters: map[string]uint64{"informs": 1, "acks": 1},
		},
		{
			name:     "a server's message type",
			frame:    clientFrame(msg(dhcpv4.MessageTypeOffer)),
			counters: map[string]uint64{"ignored": 1},
		},
		{
			name:     "relayed",
			frame:    clientFrame(msg(dhcpv4.MessageTypeDiscover, dhcpv4.WithGatewayIP(otherIP.AsSlice()))),
			counters: map[string]uint64{"ignored": 1},
		},
		{
			name: "chaddr not Ethernet: reply to the frame's source",
			frame: clientFrame(msg(dhcpv4.MessageTypeDiscover, withClientID,
				dhcpv4.WithHwAddr(net.HardwareAddr{1, 2, 3, 4, 5, 6, 7, 8}))),
			typ:      dhcpv4.MessageTypeOffer,
			yiaddr:   vmIDAddr,
			dstMAC:   vmMAC,
			dstIP:    bcastIP,
			counters: map[string]uint64{"discovers": 1, "offers": 1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig()
			var got []released
			cfg.Released = func(c ClientID, a netip.Addr, declined bool) {
				got = append(got, released{c, a, declined})
			}
			s := newTestServer(t, cfg)
			before := s.Counters()
			req := tt.frame.bytes()
			out := make([]byte, MaxFrameLen)
			f, handled := s.HandleFrame(req, out)
			if !handled {
				t.Fatal("not handled")
			}
			if d := counterDiff(before, s.Counters()); !maps.Equal(d, tt.counters) {
				t.Errorf("counters changed by %v, want %v", d, tt.counters)
			}
			var want []released
			if tt.released != nil {
				want = []released{*tt.released}
			}
			if !slices.Equal(got, want) {
				t.Errorf("Released calls %v, want %v", got, want)
			}
			if tt.typ == dhcpv4.MessageTypeNone {
				if f != nil {
					t.Fatalf("reply %x, want none", f)
				}
				return
			}
			if f == nil {
				t.Fatal("no reply")
			}
			r, err := parseReply(f, serverMAC, serverIP)
			if err != nil {
				t.Fatal(err)
			}
			if r.dstMAC.String() != tt.dstMAC.String() || r.dstIP != tt.dstIP {
				t.Errorf("reply to %v %v, want %v %v", r.dstMAC, r.dstIP, tt.dstMAC, tt.dstIP)
			}
			m := r.msg
			reqMsg, err := dhcpv4.FromBytes(tt.frame.payload)
			if err != nil {
				t.Fatal(err)
			}
			wantTyp := tt.typ
			if wantTyp == dhcpv4.MessageTypeInform {
				wantTyp = dhcpv4.MessageTypeAck
			}
			if m.MessageType() != wantTyp {
				t.Errorf("type %v, want %v", m.MessageType(), wantTyp)
			}
			if m.TransactionID != xid {
				t.Errorf("xid %v, want %v", m.TransactionID, xid)
			}
			if !bytes.Equal(m.ClientHWAddr, reqMsg.ClientHWAddr) {
				t.Errorf("chaddr %v, want the request's", m.ClientHWAddr)
			}
			if m.Flags != reqMsg.Flags {
				t.Errorf("flags %#x, want the request's", m.Flags)
			}
			if !m.YourIPAddr.Equal(tt.yiaddr.AsSlice()) {
				t.Errorf("yiaddr %v, want %v", m.YourIPAddr, tt.yiaddr)
			}
			ciaddr := tt.ciaddr
			if !ciaddr.IsValid() {
				ciaddr = zeroIP
			}
			if !m.ClientIPAddr.Equal(ciaddr.AsSlice()) {
				t.Errorf("ciaddr %v, want %v", m.ClientIPAddr, ciaddr)
			}
			if !m.ServerIdentifier().Equal(serverIP.AsSlice()) {
				t.Errorf("server ID %v, want %v", m.ServerIdentifier(), serverIP)
			}
			if id, want := m.Options.Get(dhcpv4.OptionClientIdentifier), reqMsg.Options.Get(dhcpv4.OptionClientIdentifier); !bytes.Equal(id, want) {
				t.Errorf("client ID %x, want %x echoed", id, want)
			}
			hasConfig, hasLease := tt.typ != dhcpv4.MessageTypeNak, tt.typ == dhcpv4.MessageTypeOffer || tt.typ == dhcpv4.MessageTypeAck
			for _, c := range configOpts {
				if m.Options.Has(c) != hasConfig {
					t.Errorf("has option %v: %v, want %v", c, m.Options.Has(c), hasConfig)
				}
			}
			for _, c := range leaseOpts {
				if m.Options.Has(c) != hasLease {
					t.Errorf("has option %v: %v, want %v", c, m.Options.Has(c), hasLease)
				}
			}
			if hasConfig {
				checkConfigOptions(t, m)
			}
			if hasLease {
				checkLeaseOptions(t, m)
			}
		})
	}
}

func checkConfigOptions(t *testing.T, m *dhcpv4.DHCPv4) {
	t.Helper()
	if got := m.SubnetMask().String(); got != "ffff0000" {
		t.Errorf("subnet mask %v, want ffff0000", got)
	}
	if r := m.Router(); len(r) != 1 || !r[0].Equal(serverIP.AsSlice()) {
		t.Errorf("router %v, want %v", r, serverIP)
	}
	if d := m.DNS(); len(d) != 2 || !d[0].Equal(serverIP.AsSlice()) || d[1].String() != "10.128.255.253" {
		t.Errorf("DNS %v", d)
	}
	if d := m.DomainName(); d != "vm.ringnet" {
		t.Errorf("domain %q", d)
	}
	if mtu := m.Options.Get(dhcpv4.OptionInterfaceMTU); !bytes.Equal(mtu, []byte{1400 >> 8, 1400 & 0xff}) {
		t.Errorf("MTU option %x, want 1400", mtu)
	}
}

func checkLeaseOptions(t *testing.T, m *dhcpv4.DHCPv4) {
	t.Helper()
	for _, o := range []struct {
		name string
		got  time.Duration
		want time.Duration
	}{
		{"lease time", m.IPAddressLeaseTime(0), time.Hour},
		{"renewal time", m.IPAddressRenewalTime(0), 30 * time.Minute},
		{"rebinding time", m.IPAddressRebindingTime(0), 52*time.Minute + 30*time.Second},
	} {
		if o.got != o.want {
			t.Errorf("%s %v, want %v", o.name, o.got, o.want)
		}
	}
}
