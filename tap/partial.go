package tap

import "encoding/binary"

// A partial checksum travels with a segment from a TAP with offloads
// (SegmentLayout.PartialCsum) to the node that delivers it, which either
// finishes it (FinishCsum, for a TAP without offloads) or hands the
// packet to its kernel marked NEEDS_CSUM (Coalescer), where nothing
// computes it at all: a local socket takes a CHECKSUM_PARTIAL packet as
// checked.

// partialCsum finds where the checksum of an IPv4 TCP or UDP packet whose
// transport checksum is partial lies: l4 is the transport header's offset
// in the packet and off the checksum field's offset within it. p is pkt
// cut to its IPv4 total length. ok is false for anything else, which
// cannot carry a partial checksum.
func partialCsum(pkt []byte) (p []byte, l4, off int, ok bool) {
	p, perr := checkIPv4(pkt)
	if perr != ipv4OK || binary.BigEndian.Uint16(p[6:8])&(ipv4FlagMF|ipv4OffsetMask) != 0 {
		return nil, 0, 0, false
	}
	l4 = int(p[0]&0x0f) * 4
	switch {
	case p[9] == protoTCP && len(p) >= l4+tcpMinHeaderLen:
		return p, l4, tcpCsumOffset, true
	case p[9] == protoUDP && len(p) >= l4+udpHeaderLen:
		return p, l4, udpCsumOffset, true
	}
	return nil, 0, 0, false
}

// FinishCsum completes, in place, the partial TCP or UDP checksum of an
// IPv4 packet: the field holds the pseudo-header sum, and gets the
// checksum of everything from the transport header on. It reports false,
// leaving pkt alone, for a packet that cannot carry one (not IPv4 TCP or
// UDP, a fragment, or malformed).
func FinishCsum(pkt []byte) bool {
	p, l4, off, ok := partialCsum(pkt)
	if !ok {
		return false
	}
	finishCsum(VirtioNetHdr{Flags: VirtioNetHdrFNeedsCsum, CsumStart: uint16(l4), CsumOffset: uint16(off)}, p)
	return true
}
