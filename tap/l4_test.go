package tap

import (
	"encoding/binary"
	"net/netip"
)

// Test packets for the offload path. Checksums here use refSum16, word by
// word, so that they do not lean on the code under test.

type l4Spec struct {
	proto        byte // protoTCP or protoUDP
	src, dst     netip.Addr
	sport, dport uint16
	id           uint16
	df           bool
	ttl, tos     byte
	seq, ack     uint32
	flags        byte
	window       uint16
	options      []byte // TCP options, a multiple of 4 bytes
	payload      []byte
}

func (s l4Spec) withDefaults() l4Spec {
	if !s.src.IsValid() {
		s.src = testPeer
	}
	if !s.dst.IsValid() {
		s.dst = testVMAddr
	}
	if s.proto == 0 {
		s.proto = protoTCP
	}
	if s.sport == 0 {
		s.sport, s.dport = 40000, 5201
	}
	if s.ttl == 0 {
		s.ttl = 64
	}
	if s.window == 0 {
		s.window = 502
	}
	if s.flags == 0 && s.proto == protoTCP {
		s.flags = tcpACK
	}
	return s
}

// packet builds the IPv4 packet with complete checksums.
func (s l4Spec) packet() []byte {
	s = s.withDefaults()
	l4Len := udpHeaderLen
	if s.proto == protoTCP {
		l4Len = tcpMinHeaderLen + len(s.options)
	}
	p := make([]byte, ipv4MinHeaderLen+l4Len+len(s.payload))
	p[0] = 0x45
	p[1] = s.tos
	binary.BigEndian.PutUint16(p[2:4], uint16(len(p)))
	binary.BigEndian.PutUint16(p[4:6], s.id)
	if s.df {
		binary.BigEndian.PutUint16(p[6:8], ipv4FlagDF)
	}
	p[8] = s.ttl
	p[9] = s.proto
	copy(p[12:16], s.src.AsSlice())
	copy(p[16:20], s.dst.AsSlice())
	binary.BigEndian.PutUint16(p[10:12], ^refSum16(p[:20], 0))
	l4 := p[ipv4MinHeaderLen:]
	binary.BigEndian.PutUint16(l4[0:2], s.sport)
	binary.BigEndian.PutUint16(l4[2:4], s.dport)
	if s.proto == protoTCP {
		binary.BigEndian.PutUint32(l4[4:8], s.seq)
		binary.BigEndian.PutUint32(l4[8:12], s.ack)
		l4[12] = byte(l4Len/4) << 4
		l4[13] = s.flags
		binary.BigEndian.PutUint16(l4[14:16], s.window)
		copy(l4[tcpMinHeaderLen:], s.options)
	} else {
		binary.BigEndian.PutUint16(l4[4:6], uint16(len(l4)))
	}
	copy(l4[l4Len:], s.payload)
	off := l4CsumOffset(p)
	sum := ^refSum16(l4, refPseudo(p))
	if sum == 0 && s.proto == protoUDP {
		sum = 0xffff
	}
	binary.BigEndian.PutUint16(l4[off:], sum)
	return p
}

// partial turns a packet from packet() into what a TAP with TUN_F_CSUM
// hands over: the transport checksum field holds only the pseudo-header
// sum, and the header describing it.
func partial(p []byte, gsoType uint8, gsoSize int) (VirtioNetHdr, []byte) {
	p = append([]byte(nil), p...)
	off := l4CsumOffset(p)
	binary.BigEndian.PutUint16(p[20+off:], refPseudo(p))
	return VirtioNetHdr{
		Flags:      VirtioNetHdrFNeedsCsum,
		GSOType:    gsoType,
		GSOSize:    uint16(gsoSize),
		CsumStart:  20,
		CsumOffset: uint16(off),
	}, p
}

func l4CsumOffset(p []byte) int {
	if p[9] == protoTCP {
		return tcpCsumOffset
	}
	return udpCsumOffset
}

// refPseudo is the pseudo-header sum of the IPv4 packet p.
func refPseudo(p []byte) uint16 {
	ihl := int(p[0]&0x0f) * 4
	ph := make([]byte, 12)
	copy(ph[0:8], p[12:20])
	ph[9] = p[9]
	binary.BigEndian.PutUint16(ph[10:12], uint16(len(p)-ihl))
	return refSum16(ph, 0)
}

// l4ChecksumOK verifies the transport checksum of the IPv4 packet p.
func l4ChecksumOK(p []byte) bool {
	ihl := int(p[0]&0x0f) * 4
	return refSum16(p[ihl:], refPseudo(p)) == 0xffff
}

func ipv4HeaderOK(p []byte) bool {
	ihl := int(p[0]&0x0f) * 4
	return refSum16(p[:ihl], 0) == 0xffff
}

func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*131 + i>>8)
	}
	return b
}
