package dhcp

import (
	"bytes"
	"encoding/binary"
	"maps"
	"net"
	"net/netip"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// edit returns a copy of the frame of f changed by fn.
func edit(f udpFrame, fn func(b []byte) []byte) []byte {
	return fn(f.bytes())
}

// fixIPChecksum recomputes the IPv4 header checksum after an edit.
func fixIPChecksum(b []byte) []byte {
	ip := b[ethHeaderLen:]
	ihl := int(ip[0]&0x0f) * 4
	binary.BigEndian.PutUint16(ip[10:12], 0)
	binary.BigEndian.PutUint16(ip[10:12], checksum(ip[:ihl], 0))
	return b
}

func TestHandleFrameNotDHCP(t *testing.T) {
	discover := clientFrame(msg(dhcpv4.MessageTypeDiscover))
	tests := []struct {
		name  string
		frame []byte
	}{
		{"empty", nil},
		{"short Ethernet", discover.bytes()[:13]},
		{"short IPv4", discover.bytes()[:ethHeaderLen+19]},
		{"ARP", edit(discover, func(b []byte) []byte {
			binary.BigEndian.PutUint16(b[12:14], 0x0806)
			return b
		})},
		{"IPv6", edit(discover, func(b []byte) []byte {
			binary.BigEndian.PutUint16(b[12:14], 0x86dd)
			return b
		})},
		{"VLAN", edit(discover, func(b []byte) []byte {
			binary.BigEndian.PutUint16(b[12:14], 0x8100)
			return b
		})},
		{"IP version 6 in an IPv4 frame", edit(discover, func(b []byte) []byte {
			b[ethHeaderLen] = 0x65
			return b
		})},
		{"TCP", edit(discover, func(b []byte) []byte {
			b[ethHeaderLen+9] = 6
			return fixIPChecksum(b)
		})},
		{"UDP to port 53", func() []byte {
			f := discover
			f.dstPort = 53
			return f.bytes()
		}()},
		{"DHCP reply to port 68", func() []byte {
			f := discover
			f.srcPort, f.dstPort = 67, 68
			return f.bytes()
		}()},
		{"first fragment", edit(discover, func(b []byte) []byte {
			b[ethHeaderLen+6] |= 0x20 // MF
			return fixIPChecksum(b)
		})},
		{"later fragment", edit(discover, func(b []byte) []byte {
			b[ethHeaderLen+7] = 1
			return fixIPChecksum(b)
		})},
		{"to another host", func() []byte {
			f := discover.unicast()
			f.dstIP = otherIP
			return f.bytes()
		}()},
		{"to another MAC", func() []byte {
			f := discover
			f.dstMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 2}
			return f.bytes()
		}()},
		{"to a multicast MAC", func() []byte {
			f := discover
			f.dstMAC = net.HardwareAddr{0x01, 0, 0x5e, 0, 0, 1}
			return f.bytes()
		}()},
		{"too short for the UDP ports", discover.bytes()[:ethHeaderLen+ipv4MinHeaderLen+3]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newTestServer(t, testConfig())
			before := s.Counters()
			frame := bytes.Clone(tt.frame)
			out := bytes.Repeat([]byte{0xa5}, MaxFrameLen)
			r, handled := s.HandleFrame(frame, out)
			if handled || r != nil {
				t.Fatalf("handled=%v reply=%x, want not handled", handled, r)
			}
			if !bytes.Equal(frame, tt.frame) {
				t.Error("frame changed")
			}
			if !bytes.Equal(out, bytes.Repeat([]byte{0xa5}, MaxFrameLen)) {
				t.Error("out changed")
			}
			if !maps.Equal(before, s.Counters()) {
				t.Errorf("counters changed by %v", counterDiff(before, s.Counters()))
			}
		})
	}
}

func TestHandleFrameMalformed(t *testing.T) {
	discover := clientFrame(msg(dhcpv4.MessageTypeDiscover))
	withPayload := func(p []byte) []byte {
		f := discover
		f.payload = p
		return f.bytes()
	}
	good := discover.payload
	tests := []struct {
		name  string
		frame []byte
	}{
		{"IHL below 5", edit(discover, func(b []byte) []byte {
			b[ethHeaderLen] = 0x44
			return b
		})},
		{"IHL past the frame", edit(discover, func(b []byte) []byte {
			b[ethHeaderLen] = 0x4f
			return b[:ethHeaderLen+60]
		})},
		{"total length past the frame", edit(discover, func(b []byte) []byte {
			binary.BigEndian.PutUint16(b[ethHeaderLen+2:], uint16(len(b)))
			return fixIPChecksum(b)
		})},
		{"total length short of UDP", edit(discover, func(b []byte) []byte {
			binary.BigEndian.PutUint16(b[ethHeaderLen+2:], ipv4MinHeaderLen+4)
			return fixIPChecksum(b)
		})},
		{"truncated frame", discover.bytes()[:300]},
		{"bad IPv4 checksum", edit(discover, func(b []byte) []byte {
			b[ethHeaderLen+10] ^= 0xff
			return b
		})},
		{"UDP length past the packet", edit(discover, func(b []byte) []byte {
			binary.BigEndian.PutUint16(b[ethHeaderLen+ipv4MinHeaderLen+4:], 2000)
			return b
		})},
		{"UDP length short of its header", edit(discover, func(b []byte) []byte {
			binary.BigEndian.PutUint16(b[ethHeaderLen+ipv4MinHeaderLen+4:], 7)
			return b
		})},
		{"multicast source MAC", func() []byte {
			f := discover
			f.srcMAC = net.HardwareAddr{0x01, 0, 0x5e, 0, 0, 1}
			return f.bytes()
		}()},
		{"empty DHCP message", withPayload(nil)},
		{"truncated DHCP message", withPayload(good[:200])},
		{"no end option", withPayload(good[:240+3])},
		{"wrong op", withPayload(func() []byte {
			p := bytes.Clone(good)
			p[0] = byte(dhcpv4.OpcodeBootReply)
			return p
		}())},
		{"bad magic cookie", withPayload(func() []byte {
			p := bytes.Clone(good)
			p[236] ^= 0xff
			return p
		}())},
		{"no message type", withPayload(msg(dhcpv4.MessageTypeDiscover, dhcpv4.WithoutOption(dhcpv4.OptionDHCPMessageType)).ToBytes())},
		{"long message type", withPayload(msg(dhcpv4.MessageTypeDiscover,
			dhcpv4.WithGeneric(dhcpv4.OptionDHCPMessageType, []byte{1, 1})).ToBytes())},
		{"short server ID", withPayload(msg(dhcpv4.MessageTypeRequest,
			dhcpv4.WithGeneric(dhcpv4.OptionServerIdentifier, []byte{10, 128, 255})).ToBytes())},
		{"long requested address", withPayload(msg(dhcpv4.MessageTypeRequest,
			dhcpv4.WithGeneric(dhcpv4.OptionRequestedIPAddress, []byte{10, 128, 0, 5, 0})).ToBytes())},
		{"option past the end", withPayload(append(bytes.Clone(good[:240]), 53, 5, 1))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newTestServer(t, testConfig())
			before := s.Counters()
			r, handled := s.HandleFrame(tt.frame, make([]byte, MaxFrameLen))
			if !handled || r != nil {
				t.Fatalf("handled=%v reply=%x, want handled, no reply", handled, r)
			}
			if d, want := counterDiff(before, s.Counters()), map[string]uint64{"malformed": 1}; !maps.Equal(d, want) {
				t.Errorf("counters changed by %v, want %v", d, want)
			}
		})
	}
}

// Frames a client may send that the server must read past: Ethernet
// padding, IP options, no UDP checksum, a subnet broadcast.
func TestHandleFrameVariants(t *testing.T) {
	discover := clientFrame(msg(dhcpv4.MessageTypeDiscover))
	tests := []struct {
		name  string
		frame []byte
	}{
		{"plain", discover.bytes()},
		{"Ethernet padding", append(discover.bytes(), make([]byte, 20)...)},
		{"IP options", edit(discover, func(b []byte) []byte {
			// Insert a router alert option (RFC 2113) after the header.
			ip := b[ethHeaderLen:]
			n := append(bytes.Clone(b[:ethHeaderLen+ipv4MinHeaderLen]), 0x94, 4, 0, 0)
			n = append(n, ip[ipv4MinHeaderLen:]...)
			n[ethHeaderLen] = 0x46
			binary.BigEndian.PutUint16(n[ethHeaderLen+2:], uint16(len(n)-ethHeaderLen))
			return fixIPChecksum(n)
		})},
		{"no UDP checksum", edit(discover, func(b []byte) []byte {
			binary.BigEndian.PutUint16(b[ethHeaderLen+ipv4MinHeaderLen+6:], 0)
			return b
		})},
		{"partial UDP checksum (offload)", edit(discover, func(b []byte) []byte {
			binary.BigEndian.PutUint16(b[ethHeaderLen+ipv4MinHeaderLen+6:], 0x1234)
			return b
		})},
		{"subnet broadcast", func() []byte {
			f := discover
			f.dstIP = netip.MustParseAddr("10.128.255.255")
			return f.bytes()
		}()},
		{"to the server's MAC", func() []byte {
			f := discover
			f.dstMAC = serverMAC
			return f.bytes()
		}()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newTestServer(t, testConfig())
			f, handled := s.HandleFrame(tt.frame, make([]byte, MaxFrameLen))
			if !handled || f == nil {
				t.Fatalf("handled=%v reply=%x, want an offer", handled, f)
			}
			r, err := parseReply(f, serverMAC, serverIP)
			if err != nil {
				t.Fatal(err)
			}
			if r.msg.MessageType() != dhcpv4.MessageTypeOffer {
				t.Errorf("reply %v, want an offer", r.msg.MessageType())
			}
		})
	}
}

func TestHandleFrameOutTooSmall(t *testing.T) {
	s := newTestServer(t, testConfig())
	frame := clientFrame(msg(dhcpv4.MessageTypeDiscover)).bytes()
	if r, handled := s.HandleFrame(frame, make([]byte, 100)); !handled || r != nil {
		t.Fatalf("handled=%v reply=%x, want handled, no reply", handled, r)
	}
	if d, want := s.Counters(), uint64(1); d["reply_too_large"] != want || d["offers"] != 0 {
		t.Errorf("counters %v, want reply_too_large 1 and no offers", d)
	}
}

func TestHandleFrameBadLease(t *testing.T) {
	for _, addr := range []string{"10.129.0.5", "10.128.0.0", "10.128.255.255", "10.128.255.254", "::1"} {
		t.Run(addr, func(t *testing.T) {
			cfg := testConfig()
			cfg.Lease = func(ClientID) (netip.Addr, bool) { return netip.MustParseAddr(addr), true }
			s := newTestServer(t, cfg)
			frame := clientFrame(msg(dhcpv4.MessageTypeDiscover)).bytes()
			if r, handled := s.HandleFrame(frame, make([]byte, MaxFrameLen)); !handled || r != nil {
				t.Fatalf("handled=%v reply=%x, want handled, no reply", handled, r)
			}
			if c := s.Counters(); c["bad_lease"] != 1 || c["offers"] != 0 {
				t.Errorf("counters %v, want bad_lease 1 and no offers", c)
			}
		})
	}
}

// A lease for a v4-mapped address is the IPv4 address.
func TestHandleFrameMappedLease(t *testing.T) {
	cfg := testConfig()
	cfg.Lease = func(ClientID) (netip.Addr, bool) {
		return netip.AddrFrom16(vmMACAddr.As16()), true
	}
	s := newTestServer(t, cfg)
	f, _ := s.HandleFrame(clientFrame(msg(dhcpv4.MessageTypeDiscover)).bytes(), make([]byte, MaxFrameLen))
	r, err := parseReply(f, serverMAC, serverIP)
	if err != nil {
		t.Fatal(err)
	}
	if !r.msg.YourIPAddr.Equal(vmMACAddr.AsSlice()) {
		t.Errorf("yiaddr %v, want %v", r.msg.YourIPAddr, vmMACAddr)
	}
}

// Every frame from the VM passes HandleFrame; those that are not DHCP
// must cost no allocation.
func TestHandleFrameNotDHCPAllocs(t *testing.T) {
	s := newTestServer(t, testConfig())
	f := clientFrame(msg(dhcpv4.MessageTypeDiscover))
	f.dstPort = 53
	frame, out := f.bytes(), make([]byte, MaxFrameLen)
	if n := testing.AllocsPerRun(100, func() { s.HandleFrame(frame, out) }); n != 0 {
		t.Errorf("%v allocations per non-DHCP frame, want 0", n)
	}
}

func BenchmarkHandleFrameNotDHCP(b *testing.B) {
	s := newTestServer(b, testConfig())
	f := clientFrame(msg(dhcpv4.MessageTypeDiscover)).unicast()
	f.dstIP, f.dstPort, f.payload = otherIP, 5000, make([]byte, 1400)
	frame, out := f.bytes(), make([]byte, MaxFrameLen)
	b.ReportAllocs()
	for b.Loop() {
		s.HandleFrame(frame, out)
	}
}

func BenchmarkHandleFrameDiscover(b *testing.B) {
	s := newTestServer(b, testConfig())
	frame, out := clientFrame(msg(dhcpv4.MessageTypeDiscover, withClientID)).bytes(), make([]byte, MaxFrameLen)
	b.ReportAllocs()
	for b.Loop() {
		s.HandleFrame(frame, out)
	}
}
