package dhcp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
)

// The test network: a VM with MAC vmMAC behind a gateway at serverMAC.
var (
	serverMAC = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x01}
	vmMAC     = net.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}
	serverIP  = netip.MustParseAddr("10.128.255.254")
	subnet    = netip.MustParsePrefix("10.128.0.0/16")
	vmIDAddr  = netip.MustParseAddr("10.128.0.6") // for the client ID
	vmMACAddr = netip.MustParseAddr("10.128.0.5") // for the MAC
	otherIP   = netip.MustParseAddr("10.128.0.99")
	vmID      = append([]byte{1}, vmMAC...) // option 61 as dhclient sends it
	xid       = dhcpv4.TransactionID{1, 2, 3, 4}
	bcastMAC  = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	bcastIP   = netip.MustParseAddr("255.255.255.255")
	zeroIP    = netip.IPv4Unspecified()
)

func testConfig() Config {
	return Config{
		ServerMAC: serverMAC,
		ServerIP:  serverIP,
		Subnet:    subnet,
		Router:    serverIP,
		MTU:       1400,
		LeaseTime: time.Hour,
		DNS:       []netip.Addr{serverIP, netip.MustParseAddr("10.128.255.253")},
		Domain:    "vm.ringnet",
		Lease: func(c ClientID) (netip.Addr, bool) {
			switch c {
			case ClientID(vmID):
				return vmIDAddr, true
			case ClientID("mac:" + vmMAC.String()):
				return vmMACAddr, true
			}
			return netip.Addr{}, false
		},
	}
}

func newTestServer(t testing.TB, cfg Config) *Server {
	t.Helper()
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// msg builds a DHCP message from the VM.
func msg(typ dhcpv4.MessageType, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	m := &dhcpv4.DHCPv4{
		OpCode:        dhcpv4.OpcodeBootRequest,
		HWType:        iana.HWTypeEthernet,
		TransactionID: xid,
		ClientIPAddr:  net.IPv4zero,
		YourIPAddr:    net.IPv4zero,
		ServerIPAddr:  net.IPv4zero,
		GatewayIPAddr: net.IPv4zero,
		ClientHWAddr:  vmMAC,
		Options:       make(dhcpv4.Options),
	}
	m.UpdateOption(dhcpv4.OptMessageType(typ))
	m.UpdateOption(dhcpv4.OptParameterRequestList(dhcpv4.OptionSubnetMask, dhcpv4.OptionRouter))
	for _, mod := range mods {
		mod(m)
	}
	return m
}

func withClientID(m *dhcpv4.DHCPv4) { m.UpdateOption(dhcpv4.OptClientIdentifier(vmID)) }

func withServerID(a netip.Addr) dhcpv4.Modifier {
	return dhcpv4.WithOption(dhcpv4.OptServerIdentifier(a.AsSlice()))
}

func withRequested(a netip.Addr) dhcpv4.Modifier {
	return dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(a.AsSlice()))
}

func withCiaddr(a netip.Addr) dhcpv4.Modifier { return dhcpv4.WithClientIP(a.AsSlice()) }

// udpFrame is a frame from the VM, built with valid checksums.
type udpFrame struct {
	dstMAC, srcMAC   net.HardwareAddr
	srcIP, dstIP     netip.Addr
	srcPort, dstPort uint16
	payload          []byte
}

// clientFrame wraps m as a client sends it: from 0.0.0.0 (or ciaddr) to
// the broadcast address.
func clientFrame(m *dhcpv4.DHCPv4) udpFrame {
	src := zeroIP
	if ci, ok := netip.AddrFromSlice(m.ClientIPAddr.To4()); ok {
		src = ci
	}
	return udpFrame{
		dstMAC: bcastMAC, srcMAC: vmMAC,
		srcIP: src, dstIP: bcastIP,
		srcPort: clientPort, dstPort: serverPort,
		payload: m.ToBytes(),
	}
}

// unicast sends f to the server's MAC and address, as a renewing client.
func (f udpFrame) unicast() udpFrame {
	f.dstMAC, f.dstIP = serverMAC, serverIP
	return f
}

func (f udpFrame) bytes() []byte {
	n := ethHeaderLen + ipv4MinHeaderLen + udpHeaderLen + len(f.payload)
	b := make([]byte, n)
	copy(b[0:6], f.dstMAC)
	copy(b[6:12], f.srcMAC)
	binary.BigEndian.PutUint16(b[12:14], etherTypeIPv4)
	ip := b[ethHeaderLen:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:4], uint16(n-ethHeaderLen))
	ip[8] = 64
	ip[9] = protoUDP
	copy(ip[12:16], f.srcIP.AsSlice())
	copy(ip[16:20], f.dstIP.AsSlice())
	binary.BigEndian.PutUint16(ip[10:12], checksum(ip[:ipv4MinHeaderLen], 0))
	udp := ip[ipv4MinHeaderLen:]
	binary.BigEndian.PutUint16(udp[0:2], f.srcPort)
	binary.BigEndian.PutUint16(udp[2:4], f.dstPort)
	binary.BigEndian.PutUint16(udp[4:6], uint16(len(udp)))
	copy(udp[udpHeaderLen:], f.payload)
	binary.BigEndian.PutUint16(udp[6:8], udpChecksum(ip, udp))
	return b
}

// reply is a reply frame taken apart.
type reply struct {
	dstMAC net.HardwareAddr
	dstIP  netip.Addr
	msg    *dhcpv4.DHCPv4
}

// parseReply checks that frame is a well-formed IPv4 UDP frame from the
// server at mac and ip, port 67 to 68, with valid checksums, no longer
// than MaxFrameLen, carrying a DHCP reply.
func parseReply(frame []byte, mac net.HardwareAddr, ip netip.Addr) (reply, error) {
	if len(frame) > MaxFrameLen {
		return reply{}, fmt.Errorf("frame of %d bytes, more than %d", len(frame), MaxFrameLen)
	}
	if len(frame) < ethHeaderLen+ipv4MinHeaderLen+udpHeaderLen {
		return reply{}, fmt.Errorf("frame of %d bytes is too short", len(frame))
	}
	if src := net.HardwareAddr(frame[6:12]); src.String() != mac.String() {
		return reply{}, fmt.Errorf("source MAC %v, want %v", src, mac)
	}
	if et := binary.BigEndian.Uint16(frame[12:14]); et != etherTypeIPv4 {
		return reply{}, fmt.Errorf("EtherType %#04x", et)
	}
	p := frame[ethHeaderLen:]
	switch {
	case p[0] != 0x45:
		return reply{}, fmt.Errorf("version/IHL %#02x", p[0])
	case int(binary.BigEndian.Uint16(p[2:4])) != len(p):
		return reply{}, fmt.Errorf("total length %d, packet %d", binary.BigEndian.Uint16(p[2:4]), len(p))
	case binary.BigEndian.Uint16(p[6:8])&(ipv4FlagMF|ipv4OffsetMask) != 0:
		return reply{}, errors.New("a fragment")
	case p[8] == 0:
		return reply{}, errors.New("TTL 0")
	case p[9] != protoUDP:
		return reply{}, fmt.Errorf("protocol %d", p[9])
	case checksum(p[:ipv4MinHeaderLen], 0) != 0:
		return reply{}, errors.New("bad IPv4 header checksum")
	case netip.AddrFrom4([4]byte(p[12:16])) != ip:
		return reply{}, fmt.Errorf("source %v, want %v", netip.AddrFrom4([4]byte(p[12:16])), ip)
	}
	udp := p[ipv4MinHeaderLen:]
	switch {
	case binary.BigEndian.Uint16(udp[0:2]) != serverPort || binary.BigEndian.Uint16(udp[2:4]) != clientPort:
		return reply{}, fmt.Errorf("ports %d -> %d", binary.BigEndian.Uint16(udp[0:2]), binary.BigEndian.Uint16(udp[2:4]))
	case int(binary.BigEndian.Uint16(udp[4:6])) != len(udp):
		return reply{}, fmt.Errorf("UDP length %d, datagram %d", binary.BigEndian.Uint16(udp[4:6]), len(udp))
	case binary.BigEndian.Uint16(udp[6:8]) == 0:
		return reply{}, errors.New("no UDP checksum")
	}
	var pseudo [12]byte
	copy(pseudo[0:8], p[12:20])
	pseudo[9] = protoUDP
	binary.BigEndian.PutUint16(pseudo[10:12], uint16(len(udp)))
	if checksum(udp, sum(pseudo[:], 0)) != 0 {
		return reply{}, errors.New("bad UDP checksum")
	}
	m, err := dhcpv4.FromBytes(udp[udpHeaderLen:])
	if err != nil {
		return reply{}, fmt.Errorf("DHCP message: %w", err)
	}
	if m.OpCode != dhcpv4.OpcodeBootReply {
		return reply{}, fmt.Errorf("op %v", m.OpCode)
	}
	return reply{
		dstMAC: net.HardwareAddr(frame[0:6]),
		dstIP:  netip.AddrFrom4([4]byte(p[16:20])),
		msg:    m,
	}, nil
}

// counterDiff returns the counters that changed from before to after.
func counterDiff(before, after map[string]uint64) map[string]uint64 {
	d := make(map[string]uint64)
	for k, v := range after {
		if v != before[k] {
			d[k] = v - before[k]
		}
	}
	return d
}
