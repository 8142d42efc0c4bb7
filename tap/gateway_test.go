package tap

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"regexp"
	"sort"
	"sync"
	"testing"
	"time"
)

var (
	testGatewayMAC = net.HardwareAddr{0x02, 0x52, 0x4e, 0xff, 0xff, 0xfe}
	testVMMAC      = net.HardwareAddr{0x02, 0x52, 0x4e, 0x00, 0x00, 0x01}
	otherMAC       = net.HardwareAddr{0x02, 0x52, 0x4e, 0x00, 0x00, 0x99}
	broadcastMAC   = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

	testVMAddr   = netip.MustParseAddr("10.128.0.1")
	testPeer     = netip.MustParseAddr("10.128.3.7")
	testNotHeld  = netip.MustParseAddr("10.128.9.9")
	testOutside  = netip.MustParseAddr("192.0.2.1")
	testSubnetBC = netip.MustParseAddr("10.128.255.255")
	zeroAddr     = netip.MustParseAddr("0.0.0.0")
)

const testMTU = 1400

func testGatewayConfig() GatewayConfig {
	return GatewayConfig{
		Addr:       netip.PrefixFrom(testVMAddr, 16),
		GatewayMAC: testGatewayMAC,
		VMMAC:      testVMMAC,
		MTU:        testMTU,
		Holds:      func(a netip.Addr) bool { return a != testNotHeld },
	}
}

func newTestGateway(t testing.TB) *Gateway {
	t.Helper()
	g, err := NewGateway(testGatewayConfig())
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func ethFrame(dst, src net.HardwareAddr, etherType uint16, payload []byte) []byte {
	f := make([]byte, EthHeaderLen, EthHeaderLen+len(payload))
	copy(f[0:6], dst)
	copy(f[6:12], src)
	binary.BigEndian.PutUint16(f[12:14], etherType)
	return append(f, payload...)
}

func arpPacket(op uint16, sha net.HardwareAddr, spa netip.Addr, tha net.HardwareAddr, tpa netip.Addr) []byte {
	a := make([]byte, arpLen)
	binary.BigEndian.PutUint16(a[0:2], arpHTypeEth)
	binary.BigEndian.PutUint16(a[2:4], etherTypeIPv4)
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[6:8], op)
	copy(a[arpOffSHA:], sha)
	copy(a[arpOffSPA:], spa.AsSlice())
	copy(a[arpOffTHA:], tha)
	copy(a[arpOffTPA:], tpa.AsSlice())
	return a
}

// arpRequest is the VM asking, by broadcast, who has tpa.
func arpRequestFrame(spa, tpa netip.Addr) []byte {
	return ethFrame(broadcastMAC, testVMMAC, etherTypeARP,
		arpPacket(arpRequest, testVMMAC, spa, make(net.HardwareAddr, 6), tpa))
}

type ipv4Spec struct {
	src, dst netip.Addr
	proto    byte
	id       uint16
	flags    uint16 // flags and fragment offset, as on the wire
	options  []byte // a multiple of 4 bytes
	payload  []byte
}

func (s ipv4Spec) packet() []byte {
	ihl := ipv4MinHeaderLen + len(s.options)
	p := make([]byte, ihl+len(s.payload))
	p[0] = 0x40 | byte(ihl/4)
	binary.BigEndian.PutUint16(p[2:4], uint16(len(p)))
	binary.BigEndian.PutUint16(p[4:6], s.id)
	binary.BigEndian.PutUint16(p[6:8], s.flags)
	p[8] = 64
	p[9] = s.proto
	copy(p[12:16], s.src.AsSlice())
	copy(p[16:20], s.dst.AsSlice())
	copy(p[ipv4MinHeaderLen:], s.options)
	setIPv4Checksum(p[:ihl])
	copy(p[ihl:], s.payload)
	return p
}

// udpTo is a UDP-ish packet from the VM to dst with n payload bytes.
func udpTo(dst netip.Addr, n int, flags uint16) []byte {
	payload := make([]byte, n)
	for i := range payload {
		payload[i] = byte(i*7 + 3)
	}
	return ipv4Spec{src: testVMAddr, dst: dst, proto: 17, id: 0x1234, flags: flags, payload: payload}.packet()
}

func toGateway(pkt []byte) []byte {
	return ethFrame(testGatewayMAC, testVMMAC, etherTypeIPv4, pkt)
}

// modify returns a copy of b changed by f.
func modify(b []byte, f func([]byte)) []byte {
	c := append([]byte(nil), b...)
	f(c)
	return c
}

// fixIPv4Sum recomputes the header checksum of the IPv4 packet in frame.
func fixIPv4Sum(frame []byte) []byte {
	ihl := int(frame[EthHeaderLen]&0x0f) * 4
	setIPv4Checksum(frame[EthHeaderLen : EthHeaderLen+ihl])
	return frame
}

func TestFromVMVerdicts(t *testing.T) {
	okUDP := toGateway(udpTo(testPeer, 100, 0))
	tests := []struct {
		name     string
		frame    []byte
		replyBuf int // 0: ReplyBufLen
		verdict  Verdict
		counter  string
	}{
		// ARP.
		{"arp for a held peer", arpRequestFrame(testVMAddr, testPeer), 0, Reply, "from_vm_arp_replies"},
		{"arp unicast refresh", modify(arpRequestFrame(testVMAddr, testPeer), func(f []byte) { copy(f, testGatewayMAC) }), 0, Reply, "from_vm_arp_replies"},
		{"arp probe for a held peer", arpRequestFrame(zeroAddr, testPeer), 0, Reply, "from_vm_arp_replies"},
		{"arp for the VM's neighbour", arpRequestFrame(testVMAddr, testVMAddr.Next()), 0, Reply, "from_vm_arp_replies"},
		{"arp probe for own address", arpRequestFrame(zeroAddr, testVMAddr), 0, Drop, "from_vm_drop_arp_own_address"},
		{"arp from elsewhere for own address", arpRequestFrame(testPeer, testVMAddr), 0, Drop, "from_vm_drop_arp_own_address"},
		{"gratuitous arp", arpRequestFrame(testVMAddr, testVMAddr), 0, Drop, "from_vm_drop_arp_gratuitous"},
		{"gratuitous arp reply", ethFrame(broadcastMAC, testVMMAC, etherTypeARP, arpPacket(arpReply, testVMMAC, testVMAddr, broadcastMAC, testVMAddr)), 0, Drop, "from_vm_drop_arp_not_request"},
		{"arp outside subnet", arpRequestFrame(testVMAddr, testOutside), 0, Drop, "from_vm_drop_arp_outside_subnet"},
		{"arp for unheld address", arpRequestFrame(testVMAddr, testNotHeld), 0, Drop, "from_vm_drop_arp_not_held"},
		{"arp for subnet broadcast", arpRequestFrame(testVMAddr, testSubnetBC), 0, Drop, "from_vm_drop_arp_reserved_address"},
		{"arp for network address", arpRequestFrame(testVMAddr, netip.MustParseAddr("10.128.0.0")), 0, Drop, "from_vm_drop_arp_reserved_address"},
		{"arp truncated", arpRequestFrame(testVMAddr, testPeer)[:EthHeaderLen+27], 0, Drop, "from_vm_drop_arp_malformed"},
		{"arp bad hlen", modify(arpRequestFrame(testVMAddr, testPeer), func(f []byte) { f[EthHeaderLen+4] = 8 }), 0, Drop, "from_vm_drop_arp_malformed"},
		{"arp bad ptype", modify(arpRequestFrame(testVMAddr, testPeer), func(f []byte) { f[EthHeaderLen+2] = 0x86 }), 0, Drop, "from_vm_drop_arp_malformed"},
		{"arp multicast sender hw", modify(arpRequestFrame(testVMAddr, testPeer), func(f []byte) { f[EthHeaderLen+arpOffSHA] = 1 }), 0, Drop, "from_vm_drop_arp_malformed"},
		{"arp to another MAC", modify(arpRequestFrame(testVMAddr, testPeer), func(f []byte) { copy(f, otherMAC) }), 0, Drop, "from_vm_drop_not_for_gateway"},
		{"arp reply buffer too small", arpRequestFrame(testVMAddr, testPeer), 59, Drop, "from_vm_drop_reply_buf_too_small"},

		// IPv4 forwarding.
		{"ipv4 to a peer", okUDP, 0, Forward, "from_vm_forwarded"},
		{"ipv4 exactly MTU, DF", toGateway(udpTo(testPeer, testMTU-20, ipv4FlagDF)), 0, Forward, "from_vm_forwarded"},
		{"ipv4 to an unheld address", toGateway(udpTo(testNotHeld, 100, 0)), 0, Forward, "from_vm_forwarded"},
		{"ipv4 padded frame", append(toGateway(udpTo(testPeer, 2, 0)), make([]byte, 20)...), 0, Forward, "from_vm_forwarded"},
		{"ipv4 broadcast MAC", ethFrame(broadcastMAC, testVMMAC, etherTypeIPv4, udpTo(testPeer, 10, 0)), 0, Drop, "from_vm_drop_multicast"},
		{"ipv4 another MAC", ethFrame(otherMAC, testVMMAC, etherTypeIPv4, udpTo(testPeer, 10, 0)), 0, Drop, "from_vm_drop_not_for_gateway"},
		{"ipv4 outside subnet", toGateway(udpTo(testOutside, 10, 0)), 0, Drop, "from_vm_drop_dst_outside_subnet"},
		{"ipv4 to own address", toGateway(udpTo(testVMAddr, 10, 0)), 0, Drop, "from_vm_drop_dst_own_address"},
		{"ipv4 to subnet broadcast", toGateway(udpTo(testSubnetBC, 10, 0)), 0, Drop, "from_vm_drop_dst_broadcast"},
		{"ipv4 spoofed source", toGateway(ipv4Spec{src: testPeer, dst: testPeer.Next(), proto: 17}.packet()), 0, Drop, "from_vm_drop_bad_source"},

		// Malformed IPv4.
		{"ipv4 truncated header", okUDP[:EthHeaderLen+19], 0, Drop, "from_vm_drop_ipv4_truncated"},
		{"ipv4 truncated packet", okUDP[:len(okUDP)-1], 0, Drop, "from_vm_drop_ipv4_truncated"},
		{"ipv4 bad version", fixIPv4Sum(modify(okUDP, func(f []byte) { f[EthHeaderLen] = 0x65 })), 0, Drop, "from_vm_drop_ipv4_bad_version"},
		{"ipv4 IHL too small", modify(okUDP, func(f []byte) { f[EthHeaderLen] = 0x44 }), 0, Drop, "from_vm_drop_ipv4_bad_ihl"},
		{"ipv4 IHL past frame", okUDP[:EthHeaderLen+20], 0, Drop, "from_vm_drop_ipv4_truncated"},
		{"ipv4 total length below header", fixIPv4Sum(modify(okUDP, func(f []byte) { binary.BigEndian.PutUint16(f[EthHeaderLen+2:], 19) })), 0, Drop, "from_vm_drop_ipv4_bad_total_length"},
		{"ipv4 bad checksum", modify(okUDP, func(f []byte) { f[EthHeaderLen+8]-- }), 0, Drop, "from_vm_drop_ipv4_bad_checksum"},
		{"ipv4 bad options when fragmenting", fixIPv4Sum(toGateway(ipv4Spec{src: testVMAddr, dst: testPeer, proto: 17, options: []byte{0x83, 9, 0, 0}, payload: make([]byte, 2000)}.packet())), 0, Drop, "from_vm_drop_ipv4_bad_options"},

		// Too big.
		{"too big with DF", toGateway(udpTo(testPeer, 2000, ipv4FlagDF)), 0, Reply, "from_vm_frag_needed_sent"},
		{"too big with DF, ICMP error", toGateway(ipv4Spec{src: testVMAddr, dst: testPeer, proto: protoICMP, flags: ipv4FlagDF, payload: append([]byte{3, 1}, make([]byte, 2000)...)}.packet()), 0, Drop, "from_vm_drop_too_big_no_icmp"},
		{"too big with DF, later fragment", toGateway(udpTo(testPeer, 2000, ipv4FlagDF|100)), 0, Drop, "from_vm_drop_too_big_no_icmp"},
		{"too big with DF, small buffer", toGateway(udpTo(testPeer, 2000, ipv4FlagDF)), 69, Drop, "from_vm_drop_reply_buf_too_small"},
		{"too big without DF", toGateway(udpTo(testPeer, 2000, 0)), 0, ForwardFragments, "from_vm_fragmented"},
		{"too big without DF, small buffer", toGateway(udpTo(testPeer, 2000, 0)), 1500, Drop, "from_vm_drop_reply_buf_too_small"},

		// Not IPv4 or ARP.
		{"short frame", okUDP[:13], 0, Drop, "from_vm_drop_short_frame"},
		{"empty frame", nil, 0, Drop, "from_vm_drop_short_frame"},
		{"ipv6", ethFrame(testGatewayMAC, testVMMAC, etherTypeIPv6, make([]byte, 60)), 0, Drop, "from_vm_drop_ipv6"},
		{"vlan tag", ethFrame(testGatewayMAC, testVMMAC, etherTypeVLAN, append([]byte{0, 5, 8, 0}, udpTo(testPeer, 10, 0)...)), 0, Drop, "from_vm_drop_vlan"},
		{"qinq tag", ethFrame(testGatewayMAC, testVMMAC, etherTypeQinQ, make([]byte, 60)), 0, Drop, "from_vm_drop_vlan"},
		{"lldp", ethFrame(testGatewayMAC, testVMMAC, 0x88cc, make([]byte, 60)), 0, Drop, "from_vm_drop_unknown_ethertype"},
		{"802.3 length field", ethFrame(testGatewayMAC, testVMMAC, 100, make([]byte, 100)), 0, Drop, "from_vm_drop_unknown_ethertype"},
		{"multicast source MAC", ethFrame(testGatewayMAC, broadcastMAC, etherTypeIPv4, udpTo(testPeer, 10, 0)), 0, Drop, "from_vm_drop_bad_source_mac"},
		{"gateway's own source MAC", ethFrame(testGatewayMAC, testGatewayMAC, etherTypeARP, arpPacket(arpRequest, testVMMAC, testVMAddr, nil, testPeer)), 0, Drop, "from_vm_drop_bad_source_mac"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newTestGateway(t)
			size := tt.replyBuf
			if size == 0 {
				size = ReplyBufLen
			}
			frame := append([]byte(nil), tt.frame...)
			r := g.FromVM(frame, make([]byte, size))
			if r.Verdict != tt.verdict {
				t.Errorf("verdict %v, want %v", r.Verdict, tt.verdict)
			}
			checkOneCount(t, g, tt.counter)
			if !bytes.Equal(frame, tt.frame) {
				t.Errorf("FromVM modified the frame")
			}
			checkResult(t, g, frame, r)
		})
	}
}

// checkOneCount checks that counter, and nothing else, counted once.
func checkOneCount(t *testing.T, g *Gateway, counter string) {
	t.Helper()
	c := g.Counters()
	if _, ok := c[counter]; !ok {
		t.Fatalf("no counter %q", counter)
	}
	for name, v := range c {
		want := uint64(0)
		if name == counter {
			want = 1
		}
		if v != want {
			t.Errorf("counter %s = %d, want %d", name, v, want)
		}
	}
}

// checkResult checks the invariants every FromVM result must meet. The
// fuzz test relies on it.
func checkResult(t *testing.T, g *Gateway, frame []byte, r Result) {
	t.Helper()
	switch r.Verdict {
	case Drop:
		if r.Packet != nil || r.Reply != nil || r.Fragments != nil {
			t.Errorf("drop carries data: %+v", r)
		}
	case Forward:
		if len(r.Packet) == 0 || len(frame) < EthHeaderLen+len(r.Packet) || &r.Packet[0] != &frame[EthHeaderLen] {
			t.Fatalf("forwarded packet is not the frame's payload")
		}
		checkForwardable(t, g, r.Packet, r.Dst)
	case ForwardFragments:
		if len(r.Fragments) < 2 {
			t.Errorf("%d fragments", len(r.Fragments))
		}
		for _, f := range r.Fragments {
			checkForwardable(t, g, f, r.Dst)
		}
		orig, _ := checkIPv4(frame[EthHeaderLen:])
		checkReassembles(t, orig, r.Fragments)
	case Reply:
		checkReply(t, g, frame, r.Reply)
	default:
		t.Errorf("unknown verdict %v", r.Verdict)
	}
}

// checkForwardable checks that pkt is a valid IPv4 packet of at most MTU
// bytes from the VM to dst, a forwardable address in the subnet.
func checkForwardable(t *testing.T, g *Gateway, pkt []byte, dst netip.Addr) {
	t.Helper()
	got, perr := checkIPv4(pkt)
	if perr != ipv4OK || len(got) != len(pkt) {
		t.Fatalf("invalid IPv4 packet (%d): % x", perr, pkt)
	}
	if len(pkt) > g.mtu {
		t.Errorf("packet of %d bytes exceeds MTU %d", len(pkt), g.mtu)
	}
	if hdrDst := netip.AddrFrom4([4]byte(pkt[16:20])); hdrDst != dst {
		t.Errorf("Dst %v, header says %v", dst, hdrDst)
	}
	if src := netip.AddrFrom4([4]byte(pkt[12:16])); src != uint32Addr(g.vm.Load()) {
		t.Errorf("source %v is not the VM", src)
	}
	d := addrUint32(dst)
	if d&g.mask != g.network || d == g.vm.Load() || d == g.network || d == g.broadcast {
		t.Errorf("forwarded to %v", dst)
	}
}

// checkReply checks a reply frame: a well-formed ARP reply for the
// gateway, or a well-formed ICMP "fragmentation needed".
func checkReply(t *testing.T, g *Gateway, frame, reply []byte) {
	t.Helper()
	if len(reply) < minFrameLen {
		t.Fatalf("reply of %d bytes is shorter than an Ethernet frame", len(reply))
	}
	if !bytes.Equal(reply[0:6], frame[6:12]) || !bytes.Equal(reply[6:12], g.gwMAC[:]) {
		t.Errorf("reply from %x to %x, want from the gateway to %x", reply[6:12], reply[0:6], frame[6:12])
	}
	switch binary.BigEndian.Uint16(reply[12:14]) {
	case etherTypeARP:
		a := reply[EthHeaderLen:]
		req := frame[EthHeaderLen:]
		want := arpPacket(arpReply, net.HardwareAddr(g.gwMAC[:]), netip.AddrFrom4([4]byte(req[arpOffTPA:])),
			req[arpOffSHA:arpOffSHA+6], netip.AddrFrom4([4]byte(req[arpOffSPA:])))
		if !bytes.Equal(a[:arpLen], want) {
			t.Errorf("ARP reply\n% x, want\n% x", a[:arpLen], want)
		}
		target := addrUint32(netip.AddrFrom4([4]byte(a[arpOffSPA:])))
		if target == g.vm.Load() || target&g.mask != g.network {
			t.Errorf("ARP reply claims %v", uint32Addr(target))
		}
	case etherTypeIPv4:
		checkFragNeeded(t, g, frame[EthHeaderLen:], reply[EthHeaderLen:])
	default:
		t.Errorf("reply of EtherType %#x", reply[12:14])
	}
}

func checkFragNeeded(t *testing.T, g *Gateway, orig, ip []byte) {
	t.Helper()
	got, perr := checkIPv4(ip)
	if perr != ipv4OK || len(got) != len(ip) {
		t.Fatalf("ICMP reply: invalid IPv4 (%d)", perr)
	}
	if ip[0] != 0x45 || ip[9] != protoICMP {
		t.Fatalf("ICMP reply header % x", ip[:20])
	}
	if !bytes.Equal(ip[12:16], orig[16:20]) || !bytes.Equal(ip[16:20], orig[12:16]) {
		t.Errorf("ICMP from %v to %v, want from the original destination to its source", ip[12:16], ip[16:20])
	}
	icmp := ip[20:]
	if checksum(icmp, 0) != 0 {
		t.Errorf("ICMP checksum wrong")
	}
	if icmp[0] != 3 || icmp[1] != 4 || binary.BigEndian.Uint16(icmp[6:8]) != uint16(g.mtu) {
		t.Errorf("ICMP type %d code %d MTU %d, want 3, 4, %d", icmp[0], icmp[1], binary.BigEndian.Uint16(icmp[6:8]), g.mtu)
	}
	ihl := int(orig[0]&0x0f) * 4
	if !bytes.Equal(icmp[8:], orig[:ihl+8]) {
		t.Errorf("ICMP quotes % x, want the original header and 8 bytes", icmp[8:])
	}
}

// checkReassembles reassembles frags as a receiver would and compares the
// result with orig.
func checkReassembles(t *testing.T, orig []byte, frags [][]byte) {
	t.Helper()
	ihl := int(orig[0]&0x0f) * 4
	origFlags := binary.BigEndian.Uint16(orig[6:8])
	base := int(origFlags&ipv4OffsetMask) * 8
	sorted := append([][]byte(nil), frags...)
	sort.Slice(sorted, func(i, j int) bool {
		return binary.BigEndian.Uint16(sorted[i][6:8])&ipv4OffsetMask < binary.BigEndian.Uint16(sorted[j][6:8])&ipv4OffsetMask
	})
	var payload []byte
	for i, f := range sorted {
		fihl := int(f[0]&0x0f) * 4
		fl := binary.BigEndian.Uint16(f[6:8])
		if off := int(fl&ipv4OffsetMask)*8 - base; off != len(payload) {
			t.Fatalf("fragment %d at offset %d, want %d", i, off, len(payload))
		}
		last := i == len(sorted)-1
		if mf := fl&ipv4FlagMF != 0; mf != (!last || origFlags&ipv4FlagMF != 0) {
			t.Errorf("fragment %d: MF %v", i, mf)
		}
		if fl&ipv4FlagDF != 0 {
			t.Errorf("fragment %d has DF", i)
		}
		if !last && (len(f)-fihl)%8 != 0 {
			t.Errorf("fragment %d carries %d bytes, not a multiple of 8", i, len(f)-fihl)
		}
		// Everything but length, flags, checksum and options is the
		// original's.
		if !bytes.Equal(f[4:6], orig[4:6]) || !bytes.Equal(f[8:10], orig[8:10]) || !bytes.Equal(f[12:20], orig[12:20]) || f[1] != orig[1] {
			t.Errorf("fragment %d header % x differs from % x", i, f[:20], orig[:20])
		}
		if i == 0 && !bytes.Equal(f[20:fihl], orig[20:ihl]) {
			t.Errorf("first fragment options % x, want % x", f[20:fihl], orig[20:ihl])
		}
		payload = append(payload, f[fihl:]...)
	}
	if !bytes.Equal(payload, orig[ihl:]) {
		t.Errorf("reassembled %d bytes differ from the original %d", len(payload), len(orig)-ihl)
	}
}

func TestARPReplyFields(t *testing.T) {
	g := newTestGateway(t)
	req := arpRequestFrame(testVMAddr, testPeer)
	r := g.FromVM(req, make([]byte, 128))
	if r.Verdict != Reply {
		t.Fatalf("verdict %v", r.Verdict)
	}
	want := ethFrame(testVMMAC, testGatewayMAC, etherTypeARP,
		arpPacket(arpReply, testGatewayMAC, testPeer, testVMMAC, testVMAddr))
	want = append(want, make([]byte, minFrameLen-len(want))...)
	if !bytes.Equal(r.Reply, want) {
		t.Errorf("reply\n% x, want\n% x", r.Reply, want)
	}
}

func TestHoldsNilMeansWholeSubnet(t *testing.T) {
	cfg := testGatewayConfig()
	cfg.Holds = nil
	g, err := NewGateway(cfg)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 128)
	if r := g.FromVM(arpRequestFrame(testVMAddr, testNotHeld), buf); r.Verdict != Reply {
		t.Errorf("ARP for %v: %v, want reply", testNotHeld, r.Verdict)
	}
	if r := g.FromVM(arpRequestFrame(zeroAddr, testVMAddr), buf); r.Verdict != Drop {
		t.Errorf("ARP probe for own address: %v, want drop", r.Verdict)
	}
}

func TestFragNeededIsRateLimited(t *testing.T) {
	g := newTestGateway(t)
	now := time.Unix(1000, 0)
	g.now = func() time.Time { return now }
	frame := toGateway(udpTo(testPeer, 2000, ipv4FlagDF))
	buf := make([]byte, ReplyBufLen)

	for i := range fragNeededBurst {
		if r := g.FromVM(frame, buf); r.Verdict != Reply {
			t.Fatalf("message %d within the burst: %v", i, r.Verdict)
		}
	}
	if r := g.FromVM(frame, buf); r.Verdict != Drop {
		t.Fatalf("message past the burst: %v, want drop", r.Verdict)
	}
	if c := g.Counters(); c["from_vm_frag_needed_rate_limited"] != 1 || c["from_vm_frag_needed_sent"] != fragNeededBurst {
		t.Errorf("counters %v", nonZeroCounters(c))
	}
	now = now.Add(time.Second / fragNeededPerSecond)
	if r := g.FromVM(frame, buf); r.Verdict != Reply {
		t.Errorf("after one token's time: %v, want reply", r.Verdict)
	}
	if r := g.FromVM(frame, buf); r.Verdict != Drop {
		t.Errorf("second message after one token's time: %v, want drop", r.Verdict)
	}
}

func TestFragmentReassembles(t *testing.T) {
	// Options: a NOP, a copied option (security, 0x82) and one not copied
	// (record route, 0x07).
	opts := []byte{1, 0x82, 4, 0xaa, 0xbb, 0x07, 7, 4, 0, 0, 0, 0}
	payload := func(n int) []byte {
		p := make([]byte, n)
		for i := range p {
			p[i] = byte(i ^ i>>8)
		}
		return p
	}
	tests := []struct {
		name string
		mtu  int
		spec ipv4Spec
	}{
		{"just over", 1400, ipv4Spec{payload: payload(1381)}},
		{"two full and a bit", 1400, ipv4Spec{payload: payload(3 * 1380)}},
		{"largest packet", 1400, ipv4Spec{payload: payload(ipv4MaxLen - 20)}},
		{"minimum MTU", 68, ipv4Spec{payload: payload(1000)}},
		{"minimum MTU, largest header", 68, ipv4Spec{options: append(opts, make([]byte, 40-len(opts))...), payload: payload(300)}},
		{"options", 576, ipv4Spec{options: opts, payload: payload(3000)}},
		{"refragment a middle fragment", 576, ipv4Spec{flags: ipv4FlagMF | 100, payload: payload(1600)}},
		{"refragment a last fragment", 576, ipv4Spec{flags: 185, payload: payload(1601)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := tt.spec
			s.src, s.dst, s.proto, s.id = testVMAddr, testPeer, 17, 0xbeef
			orig := s.packet()
			frags, err := fragment(orig, tt.mtu, make([]byte, 8*len(orig)))
			if err != nil {
				t.Fatal(err)
			}
			for i, f := range frags {
				if got, perr := checkIPv4(f); perr != ipv4OK || len(got) != len(f) || len(f) > tt.mtu {
					t.Errorf("fragment %d: %d bytes, check %d", i, len(f), perr)
				}
				if i > 0 && len(s.options) > 0 {
					// Later fragments keep only the copied option.
					if got := f[20 : int(f[0]&0x0f)*4]; !bytes.Equal(got, []byte{0x82, 4, 0xaa, 0xbb}) {
						t.Errorf("fragment %d options % x", i, got)
					}
				}
			}
			checkReassembles(t, orig, frags)
		})
	}
}

func TestFragmentRejectsOffsetOverflow(t *testing.T) {
	pkt := ipv4Spec{src: testVMAddr, dst: testPeer, flags: 0x1fff, payload: make([]byte, 3000)}.packet()
	if _, err := fragment(pkt, 1400, make([]byte, 8000)); err == nil {
		t.Error("fragmenting past offset 65535 succeeded")
	}
}

func TestToVM(t *testing.T) {
	fromPeer := ipv4Spec{src: testPeer, dst: testVMAddr, proto: 17, payload: []byte("hello")}.packet()
	tests := []struct {
		name    string
		pkt     []byte
		noVMMAC bool
		ok      bool
		counter string
	}{
		{"from a peer", fromPeer, false, true, "to_vm_delivered"},
		{"with trailing bytes", append(append([]byte(nil), fromPeer...), 0, 0, 0), false, true, "to_vm_delivered"},
		{"not for the VM", ipv4Spec{src: testPeer, dst: testPeer.Next(), proto: 17}.packet(), false, false, "to_vm_drop_not_for_vm"},
		{"from outside the subnet", ipv4Spec{src: testOutside, dst: testVMAddr, proto: 17}.packet(), false, false, "to_vm_drop_bad_source"},
		{"from the VM's own address", ipv4Spec{src: testVMAddr, dst: testVMAddr, proto: 17}.packet(), false, false, "to_vm_drop_bad_source"},
		{"VM MAC unknown", fromPeer, true, false, "to_vm_drop_vm_mac_unknown"},
		{"empty", nil, false, false, "to_vm_drop_ipv4_truncated"},
		{"truncated", fromPeer[:len(fromPeer)-1], false, false, "to_vm_drop_ipv4_truncated"},
		{"bad checksum", modify(fromPeer, func(p []byte) { p[8]++ }), false, false, "to_vm_drop_ipv4_bad_checksum"},
		{"bad IHL", modify(fromPeer, func(p []byte) { p[0] = 0x43 }), false, false, "to_vm_drop_ipv4_bad_ihl"},
		{"ipv6", modify(fromPeer, func(p []byte) { p[0] = 0x60 }), false, false, "to_vm_drop_ipv4_bad_version"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testGatewayConfig()
			if tt.noVMMAC {
				cfg.VMMAC = nil
			}
			g, err := NewGateway(cfg)
			if err != nil {
				t.Fatal(err)
			}
			buf := append(make([]byte, EthHeaderLen), tt.pkt...)
			frame, ok := g.ToVM(buf)
			if ok != tt.ok {
				t.Fatalf("ok = %v, want %v", ok, tt.ok)
			}
			checkOneCount(t, g, tt.counter)
			if !ok {
				return
			}
			if &frame[0] != &buf[0] {
				t.Error("frame is not built in place")
			}
			want := ethFrame(testVMMAC, testGatewayMAC, etherTypeIPv4, fromPeer)
			if !bytes.Equal(frame, want) {
				t.Errorf("frame\n% x, want\n% x", frame, want)
			}
		})
	}
}

func TestVMMACIsLearned(t *testing.T) {
	cfg := testGatewayConfig()
	cfg.VMMAC = nil
	g, err := NewGateway(cfg)
	if err != nil {
		t.Fatal(err)
	}
	g.FromVM(ethFrame(broadcastMAC, otherMAC, etherTypeARP, arpPacket(arpRequest, otherMAC, testVMAddr, nil, testPeer)), make([]byte, 128))
	buf := append(make([]byte, EthHeaderLen), ipv4Spec{src: testPeer, dst: testVMAddr, proto: 17}.packet()...)
	frame, ok := g.ToVM(buf)
	if !ok || !bytes.Equal(frame[0:6], otherMAC) {
		t.Errorf("ToVM after learning: ok %v, to %x; want %v", ok, frame[0:6], otherMAC)
	}
}

func TestNewGatewayRejects(t *testing.T) {
	tests := []struct {
		name string
		edit func(*GatewayConfig)
	}{
		{"no address", func(c *GatewayConfig) { c.Addr = netip.Prefix{} }},
		{"IPv6", func(c *GatewayConfig) { c.Addr = netip.MustParsePrefix("fd00::1/64") }},
		{"/31", func(c *GatewayConfig) { c.Addr = netip.MustParsePrefix("10.0.0.1/31") }},
		{"network address", func(c *GatewayConfig) { c.Addr = netip.MustParsePrefix("10.128.0.0/16") }},
		{"broadcast address", func(c *GatewayConfig) { c.Addr = netip.MustParsePrefix("10.128.255.255/16") }},
		{"no gateway MAC", func(c *GatewayConfig) { c.GatewayMAC = nil }},
		{"multicast gateway MAC", func(c *GatewayConfig) { c.GatewayMAC = broadcastMAC }},
		{"zero gateway MAC", func(c *GatewayConfig) { c.GatewayMAC = make(net.HardwareAddr, 6) }},
		{"short VM MAC", func(c *GatewayConfig) { c.VMMAC = testVMMAC[:5] }},
		{"VM MAC is the gateway's", func(c *GatewayConfig) { c.VMMAC = testGatewayMAC }},
		{"MTU too small", func(c *GatewayConfig) { c.MTU = 67 }},
		{"MTU too large", func(c *GatewayConfig) { c.MTU = 65536 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testGatewayConfig()
			tt.edit(&cfg)
			if _, err := NewGateway(cfg); err == nil {
				t.Errorf("NewGateway accepted %+v", cfg)
			}
		})
	}
}

func TestCounterNames(t *testing.T) {
	g := newTestGateway(t)
	c := g.Counters()
	if len(c) != int(numFromVMCounters)+int(numToVMCounters) {
		t.Errorf("%d counters, want %d (duplicate or missing names?)", len(c), int(numFromVMCounters)+int(numToVMCounters))
	}
	snake := regexp.MustCompile(`^(from|to)_vm_[a-z0-9]+(_[a-z0-9]+)*$`)
	for name := range c {
		if !snake.MatchString(name) {
			t.Errorf("counter name %q", name)
		}
	}
}

// TestConcurrentDirections runs FromVM and ToVM at once, as the node's two
// reader goroutines do; run with -race.
func TestConcurrentDirections(t *testing.T) {
	g := newTestGateway(t)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		buf := make([]byte, ReplyBufLen)
		frames := [][]byte{toGateway(udpTo(testPeer, 100, 0)), arpRequestFrame(testVMAddr, testPeer), toGateway(udpTo(testPeer, 2000, ipv4FlagDF))}
		for i := range 3000 {
			g.FromVM(frames[i%len(frames)], buf)
			g.Counters()
		}
	}()
	go func() {
		defer wg.Done()
		pkt := ipv4Spec{src: testPeer, dst: testVMAddr, proto: 17}.packet()
		buf := make([]byte, EthHeaderLen+len(pkt))
		for range 3000 {
			copy(buf[EthHeaderLen:], pkt)
			g.ToVM(buf)
		}
	}()
	wg.Wait()
	c := g.Counters()
	if c["to_vm_delivered"] != 3000 || c["from_vm_forwarded"] != 1000 || c["from_vm_arp_replies"] != 1000 {
		t.Errorf("counters %v", nonZeroCounters(c))
	}
}

func nonZeroCounters(m map[string]uint64) map[string]uint64 {
	out := make(map[string]uint64)
	for k, v := range m {
		if v != 0 {
			out[k] = v
		}
	}
	return out
}

func BenchmarkFromVMForward(b *testing.B) {
	g := newTestGateway(b)
	frame := toGateway(udpTo(testPeer, 1300, ipv4FlagDF))
	buf := make([]byte, ReplyBufLen)
	b.SetBytes(int64(len(frame)))
	b.ReportAllocs()
	for b.Loop() {
		if g.FromVM(frame, buf).Verdict != Forward {
			b.Fatal("not forwarded")
		}
	}
}

func BenchmarkToVM(b *testing.B) {
	g := newTestGateway(b)
	pkt := ipv4Spec{src: testPeer, dst: testVMAddr, proto: 17, payload: make([]byte, 1300)}.packet()
	buf := append(make([]byte, EthHeaderLen), pkt...)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := g.ToVM(buf); !ok {
			b.Fatal("dropped")
		}
	}
}

func TestAnnounceTellsTheVMAnAddressItAskedFor(t *testing.T) {
	g := newTestGateway(t)
	buf := make([]byte, ReplyBufLen)
	if r := g.Announce(testNotHeld, buf); r != nil {
		t.Fatal("announced an address the VM never asked for")
	}
	if res := g.FromVM(arpRequestFrame(testVMAddr, testNotHeld), buf); res.Verdict != Drop {
		t.Fatalf("ARP for an address no node holds: verdict %v", res.Verdict)
	}
	r := g.Announce(testNotHeld, buf)
	if r == nil {
		t.Fatal("no announcement for the address the VM asked for")
	}
	want := ethFrame(testVMMAC, testGatewayMAC, etherTypeARP,
		arpPacket(arpReply, testGatewayMAC, testNotHeld, testVMMAC, testVMAddr))
	if !bytes.Equal(r[:len(want)], want) || len(r) != arpReplyLen {
		t.Fatalf("announcement\n got %x\nwant %x", r, want)
	}
	if g.Announce(testNotHeld, buf) != nil {
		t.Fatal("announced the same address twice")
	}
}

func TestPathMTUBelowTheLinkMTU(t *testing.T) {
	cfg := testGatewayConfig()
	far := netip.MustParseAddr("10.128.3.8")
	const ringMTU = testMTU - 74
	cfg.MinPathMTU = ringMTU
	cfg.PathMTU = func(dst netip.Addr) int {
		if dst == far {
			return ringMTU
		}
		return 0
	}
	g, err := NewGateway(cfg)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, ReplyBufLen)
	// 1350 bytes fit either path; 1380 only the direct one.
	if r := g.FromVM(toGateway(udpTo(far, ringMTU-28, ipv4FlagDF)), buf); r.Verdict != Forward {
		t.Fatalf("packet at the path MTU: %v", r.Verdict)
	}
	if r := g.FromVM(toGateway(udpTo(testPeer, testMTU-28, ipv4FlagDF)), buf); r.Verdict != Forward {
		t.Fatalf("packet at the link MTU on a direct path: %v", r.Verdict)
	}
	r := g.FromVM(toGateway(udpTo(far, testMTU-28, ipv4FlagDF)), buf)
	if r.Verdict != Reply {
		t.Fatalf("DF packet over the path MTU: %v, want frag needed", r.Verdict)
	}
	icmp := r.Reply[EthHeaderLen+ipv4MinHeaderLen:]
	if got := binary.BigEndian.Uint16(icmp[6:8]); icmp[0] != icmpDestUnreachable || got != ringMTU {
		t.Fatalf("ICMP type %d, next-hop MTU %d; want 3 and %d", icmp[0], got, ringMTU)
	}
	r = g.FromVM(toGateway(udpTo(far, testMTU-28, 0)), buf)
	if r.Verdict != ForwardFragments {
		t.Fatalf("packet over the path MTU without DF: %v, want fragments", r.Verdict)
	}
	for _, f := range r.Fragments {
		if len(f) > ringMTU {
			t.Fatalf("fragment of %d bytes over the path MTU %d", len(f), ringMTU)
		}
	}
}
