package dhcp

import "encoding/binary"

// Wire layout of the frames the server reads and writes.
const (
	ethHeaderLen     = 14
	ipv4MinHeaderLen = 20
	udpHeaderLen     = 8
	etherTypeIPv4    = 0x0800
	protoUDP         = 17
	ipv4FlagMF       = 0x2000
	ipv4OffsetMask   = 0x1fff
	serverPort       = 67
	clientPort       = 68
	replyTTL         = 64
)

// MaxFrameLen is the largest reply frame HandleFrame builds, and the size
// of an out buffer that always fits one: a 1500-byte IPv4 packet in an
// Ethernet header.
const MaxFrameLen = 1500 + 14

// Broadcast addresses, as functions since Go has no array constants.
func broadcastMAC() [6]byte { return [6]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff} }
func broadcastIP() [4]byte  { return [4]byte{255, 255, 255, 255} }

// frameClass is what parseFrame makes of a frame.
type frameClass int

const (
	notDHCP   frameClass = iota // not for the server: leave it to the gateway
	malformed                   // for the server, but broken
	dhcpFrame                   // a DHCP message to the server
)

// inbound is a DHCP message taken out of its frame.
type inbound struct {
	srcMAC  [6]byte
	payload []byte // the UDP payload, cut to the UDP length
}

// parseFrame finds a DHCP message to the server in frame. The test that
// decides whether a frame is for the server (IPv4, unfragmented UDP to
// port 67, to the server or broadcast) runs first and allocates nothing,
// since every frame from the VM passes through it; only then are the
// lengths and the header checksum checked.
//
// The UDP checksum is not checked: with checksum offload the VM may hand
// the TAP a frame whose UDP checksum is only partly computed, and a frame
// that never left the host has not been corrupted on a wire.
func (s *Server) parseFrame(frame []byte) (inbound, frameClass) {
	if len(frame) < ethHeaderLen+ipv4MinHeaderLen ||
		binary.BigEndian.Uint16(frame[12:14]) != etherTypeIPv4 {
		return inbound{}, notDHCP
	}
	if dst := [6]byte(frame[0:6]); dst != broadcastMAC() && dst != s.mac {
		return inbound{}, notDHCP
	}
	ip := frame[ethHeaderLen:]
	if ip[0]>>4 != 4 || ip[9] != protoUDP ||
		binary.BigEndian.Uint16(ip[6:8])&(ipv4FlagMF|ipv4OffsetMask) != 0 {
		return inbound{}, notDHCP
	}
	// With an impossible IHL, look for the UDP header where it would be
	// without options, so that a broken DHCP message is still told from
	// some other packet and counted.
	ihl := int(ip[0]&0x0f) * 4
	udpOff := ihl
	badIHL := ihl < ipv4MinHeaderLen || ihl+udpHeaderLen > len(ip)
	if badIHL {
		udpOff = ipv4MinHeaderLen
	}
	if udpOff+udpHeaderLen > len(ip) ||
		binary.BigEndian.Uint16(ip[udpOff+2:udpOff+4]) != serverPort ||
		!s.toServer([4]byte(ip[16:20])) {
		return inbound{}, notDHCP
	}

	if badIHL {
		return inbound{}, malformed
	}
	total := int(binary.BigEndian.Uint16(ip[2:4]))
	if total < ihl+udpHeaderLen || total > len(ip) || checksum(ip[:ihl], 0) != 0 {
		return inbound{}, malformed
	}
	udp := ip[ihl:total] // Ethernet may pad past the packet
	ulen := int(binary.BigEndian.Uint16(udp[4:6]))
	if ulen < udpHeaderLen || ulen > len(udp) {
		return inbound{}, malformed
	}
	src := [6]byte(frame[6:12])
	if !unicastMAC(src[:]) {
		return inbound{}, malformed
	}
	return inbound{srcMAC: src, payload: udp[udpHeaderLen:ulen]}, dhcpFrame
}

// toServer reports whether an IPv4 destination reaches the server: its
// own address, or a broadcast a client without an address may use.
func (s *Server) toServer(dst [4]byte) bool {
	return dst == broadcastIP() || dst == s.ip || dst == s.subnetBroadcast
}

// buildFrame writes an Ethernet frame with an IPv4 UDP packet from the
// server (port 67) to dstMAC and dstIP (port 68) carrying payload into
// out. ok=false: it does not fit out or MaxFrameLen.
func (s *Server) buildFrame(out []byte, dstMAC [6]byte, dstIP [4]byte, payload []byte) (frame []byte, ok bool) {
	n := ethHeaderLen + ipv4MinHeaderLen + udpHeaderLen + len(payload)
	if n > len(out) || n > MaxFrameLen {
		return nil, false
	}
	f := out[:n]
	copy(f[0:6], dstMAC[:])
	copy(f[6:12], s.mac[:])
	binary.BigEndian.PutUint16(f[12:14], etherTypeIPv4)

	ip := f[ethHeaderLen : ethHeaderLen+ipv4MinHeaderLen]
	ip[0] = 0x45
	ip[1] = 0
	binary.BigEndian.PutUint16(ip[2:4], uint16(n-ethHeaderLen))
	binary.BigEndian.PutUint16(ip[4:6], 0) // ID: never fragmented
	binary.BigEndian.PutUint16(ip[6:8], 0)
	ip[8] = replyTTL
	ip[9] = protoUDP
	binary.BigEndian.PutUint16(ip[10:12], 0)
	copy(ip[12:16], s.ip[:])
	copy(ip[16:20], dstIP[:])
	binary.BigEndian.PutUint16(ip[10:12], checksum(ip, 0))

	udp := f[ethHeaderLen+ipv4MinHeaderLen:]
	binary.BigEndian.PutUint16(udp[0:2], serverPort)
	binary.BigEndian.PutUint16(udp[2:4], clientPort)
	binary.BigEndian.PutUint16(udp[4:6], uint16(len(udp)))
	binary.BigEndian.PutUint16(udp[6:8], 0)
	copy(udp[udpHeaderLen:], payload)
	binary.BigEndian.PutUint16(udp[6:8], udpChecksum(ip, udp))
	return f, true
}

// udpChecksum is the checksum of a UDP datagram (with its checksum field
// zero) in the IPv4 packet whose header is ip. A sum of zero is sent as
// all ones, since zero means "no checksum" (RFC 768).
func udpChecksum(ip, udp []byte) uint16 {
	var pseudo [12]byte
	copy(pseudo[0:8], ip[12:20])
	pseudo[9] = protoUDP
	binary.BigEndian.PutUint16(pseudo[10:12], uint16(len(udp)))
	c := checksum(udp, sum(pseudo[:], 0))
	if c == 0 {
		c = 0xffff
	}
	return c
}

// sum adds b as big-endian 16-bit words to the one's-complement sum acc
// (RFC 1071), padding an odd byte with zero.
func sum(b []byte, acc uint64) uint64 {
	for len(b) >= 2 {
		acc += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		acc += uint64(b[0]) << 8
	}
	return acc
}

// checksum is the Internet checksum of b folded into the sum initial.
// Over a header that carries its checksum, a valid header yields 0.
func checksum(b []byte, initial uint64) uint16 {
	acc := sum(b, initial)
	for acc > 0xffff {
		acc = acc>>16 + acc&0xffff
	}
	return ^uint16(acc)
}

func unicastMAC(mac []byte) bool {
	return len(mac) == 6 && mac[0]&1 == 0 && [6]byte(mac) != [6]byte{}
}
