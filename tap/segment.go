package tap

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Segment does in software what a NIC does for a TSO or USO packet, for a
// packet read from a TAP with offloads: it cuts it into packets that fit
// the overlay's MTU, each complete with its own headers and checksums.
// The segments land in one buffer, evenly spaced, so that the overlay can
// seal each in place and send them all with one UDP_SEGMENT sendmsg.

// SegmentLayout says where Segment puts segments in its output buffer:
// every segment gets Headroom free bytes before it (for an overlay
// header) and Tailroom after it (for an AEAD tag), and how it leaves
// their checksums.
type SegmentLayout struct {
	Headroom int
	Tailroom int
	// PartialCsum leaves the TCP or UDP checksum of each segment of a GSO
	// packet partial, as the kernel hands it over with NEEDS_CSUM: the
	// pseudo-header sum alone, for whoever delivers the segment to finish
	// (FinishCsum) or to hand to a kernel as NEEDS_CSUM. A node whose
	// peer's TAP takes offloads so saves a pass over every byte at each
	// end: the AEAD already guards the segment in flight. Packets that
	// need no segmenting come out complete either way.
	PartialCsum bool
}

// TCP header flags.
const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpPSH = 0x08
	tcpACK = 0x10
	tcpURG = 0x20
	tcpECE = 0x40
	tcpCWR = 0x80
)

const (
	protoTCP        = 6
	protoUDP        = 17
	tcpMinHeaderLen = 20
	udpHeaderLen    = 8
	tcpCsumOffset   = 16
	udpCsumOffset   = 6
)

var errSegmentIPv6 = errors.New("segment: IPv6 is not supported")

// Segment turns pkt, an IPv4 packet described by hdr (offsets counted from
// pkt's first byte, as Result.GSO gives them), into IPv4 packets of at
// most mtu bytes with complete IPv4, TCP and UDP checksums (or, with
// layout.PartialCsum, partial TCP and UDP checksums for GSO packets):
//
//   - GSO none with NEEDS_CSUM: one packet, its checksum finished;
//   - GSO none without: one packet, copied as it is;
//   - GSO TCPv4: TCP segments of hdr.GSOSize payload bytes, the IPv4 ID
//     and TCP sequence number advancing, CWR on the first segment only,
//     FIN and PSH on the last only;
//   - GSO UDP_L4: UDP datagrams of hdr.GSOSize payload bytes, each with
//     its own UDP header and length.
//
// TCPv6 and anything IPv6 fail: ringnet carries IPv4 only.
//
// Segment i is out[i*stride+layout.Headroom:][:sizes[i]]. Every segment
// but the last is exactly stride-Headroom-Tailroom bytes long, so the
// datagrams out[i*stride:][:Headroom+sizes[i]+Tailroom] lie back to back,
// all stride bytes long except possibly the last: one UDP_SEGMENT send
// with segment size stride. out needs n*stride bytes at most, and sizes
// room for n segments; if either is short, Segment writes nothing and
// the error matches io.ErrShortBuffer. pkt is not modified and must not
// overlap out. Segment never panics on malformed input: it returns an
// error and the packet is dropped.
func Segment(hdr VirtioNetHdr, pkt []byte, mtu int, out []byte, layout SegmentLayout, sizes []int) (n, stride int, err error) {
	if layout.Headroom < 0 || layout.Tailroom < 0 {
		return 0, 0, fmt.Errorf("segment: negative layout %+v", layout)
	}
	if len(pkt) > 0 && pkt[0]>>4 == 6 {
		return 0, 0, errSegmentIPv6
	}
	if err := hdr.Validate(pkt); err != nil {
		return 0, 0, fmt.Errorf("segment: %w", err)
	}
	switch hdr.GSO() {
	case VirtioNetHdrGSONone:
		return segmentNone(hdr, pkt, mtu, out, layout, sizes)
	case VirtioNetHdrGSOTCPv4:
		return segmentL4(hdr, pkt, protoTCP, mtu, out, layout, sizes)
	case VirtioNetHdrGSOUDPL4:
		return segmentL4(hdr, pkt, protoUDP, mtu, out, layout, sizes)
	case VirtioNetHdrGSOTCPv6:
		return 0, 0, errSegmentIPv6
	default:
		return 0, 0, fmt.Errorf("segment: unsupported gso_type %#x", hdr.GSOType)
	}
}

// segmentNone copies a packet that needs no cutting, finishing its
// checksum if the kernel left it partial.
func segmentNone(hdr VirtioNetHdr, pkt []byte, mtu int, out []byte, layout SegmentLayout, sizes []int) (int, int, error) {
	p, perr := checkIPv4(pkt)
	if perr != ipv4OK {
		return 0, 0, fmt.Errorf("segment: invalid IPv4 header (%d)", perr)
	}
	if len(p) > mtu {
		return 0, 0, fmt.Errorf("segment: %d-byte packet exceeds MTU %d", len(p), mtu)
	}
	ihl := int(p[0]&0x0f) * 4
	if hdr.NeedsCsum() && int(hdr.CsumStart) < ihl {
		// It would write into the IPv4 header.
		return 0, 0, fmt.Errorf("segment: csum_start %d inside the %d-byte IPv4 header", hdr.CsumStart, ihl)
	}
	if hdr.NeedsCsum() && int(hdr.CsumStart)+int(hdr.CsumOffset)+2 > len(p) {
		return 0, 0, fmt.Errorf("segment: checksum at %d+%d past the %d-byte packet", hdr.CsumStart, hdr.CsumOffset, len(p))
	}
	stride := layout.Headroom + len(p) + layout.Tailroom
	if len(sizes) < 1 || len(out) < stride {
		return 0, 0, fmt.Errorf("segment: %d-byte packet in %d bytes: %w", len(p), len(out), io.ErrShortBuffer)
	}
	seg := out[layout.Headroom : layout.Headroom+len(p)]
	copy(seg, p)
	if hdr.NeedsCsum() {
		finishCsum(hdr, seg)
	}
	sizes[0] = len(seg)
	return 1, stride, nil
}

// segmentL4 cuts a TCP (TSO) or UDP (USO) packet at hdr.GSOSize payload
// bytes.
func segmentL4(hdr VirtioNetHdr, pkt []byte, proto byte, mtu int, out []byte, layout SegmentLayout, sizes []int) (int, int, error) {
	ihl, err := gsoIPv4Header(pkt, proto)
	if err != nil {
		return 0, 0, err
	}
	total := int(binary.BigEndian.Uint16(pkt[2:4]))
	pkt = pkt[:total]

	csumOffset, l4Len := udpCsumOffset, udpHeaderLen
	if proto == protoTCP {
		csumOffset = tcpCsumOffset
		if total < ihl+tcpMinHeaderLen {
			return 0, 0, fmt.Errorf("segment: %d-byte packet too short for TCP", total)
		}
		l4Len = int(pkt[ihl+12]>>4) * 4
		if l4Len < tcpMinHeaderLen {
			return 0, 0, fmt.Errorf("segment: TCP data offset %d", l4Len)
		}
	}
	hl := ihl + l4Len
	if hl > total {
		return 0, 0, fmt.Errorf("segment: %d bytes of headers in a %d-byte packet", hl, total)
	}
	if hdr.NeedsCsum() && (int(hdr.CsumStart) != ihl || int(hdr.CsumOffset) != csumOffset) {
		return 0, 0, fmt.Errorf("segment: checksum at %d+%d, want %d+%d", hdr.CsumStart, hdr.CsumOffset, ihl, csumOffset)
	}

	payload := pkt[hl:]
	gso := int(hdr.GSOSize)
	full := hl + min(gso, len(payload)) // the longest segment
	if full > mtu {
		return 0, 0, fmt.Errorf("segment: %d-byte segments exceed MTU %d", full, mtu)
	}
	n := max(1, (len(payload)+gso-1)/gso)
	stride := layout.Headroom + full + layout.Tailroom
	last := hl + len(payload) - (n-1)*gso
	if need := (n-1)*stride + layout.Headroom + last + layout.Tailroom; n > len(sizes) || need > len(out) {
		return 0, 0, fmt.Errorf("segment: %d segments, %d bytes in %d sizes, %d bytes: %w", n, need, len(sizes), len(out), io.ErrShortBuffer)
	}

	id := binary.BigEndian.Uint16(pkt[4:6])
	// The segments' IPv4 headers differ from pkt's only in length and ID
	// (and checksum): sum the rest once, and add those two per segment.
	var ipHdr [60]byte
	copy(ipHdr[:], pkt[:ihl])
	clear(ipHdr[2:6])
	clear(ipHdr[10:12])
	ipSum := uint32(sum16(ipHdr[:ihl], 0))
	var seq uint32
	var flags byte
	if proto == protoTCP {
		seq = binary.BigEndian.Uint32(pkt[ihl+4 : ihl+8])
		flags = pkt[ihl+13]
	}
	for i := range n {
		off := i * gso
		end := min(off+gso, len(payload))
		seg := out[i*stride+layout.Headroom:][:hl+end-off]
		copy(seg, pkt[:hl])
		copy(seg[hl:], payload[off:end])

		ip := seg[:ihl]
		binary.BigEndian.PutUint16(ip[2:4], uint16(len(seg)))
		binary.BigEndian.PutUint16(ip[4:6], id+uint16(i))
		binary.BigEndian.PutUint16(ip[10:12], ^fold32(ipSum+uint32(len(seg))+uint32(id+uint16(i))))

		l4 := seg[ihl:]
		if proto == protoTCP {
			binary.BigEndian.PutUint32(l4[4:8], seq+uint32(off))
			f := flags
			if i > 0 {
				f &^= tcpCWR
			}
			if i < n-1 {
				f &^= tcpFIN | tcpPSH
			}
			l4[13] = f
		} else {
			binary.BigEndian.PutUint16(l4[4:6], uint16(len(l4)))
		}
		sum := pseudoSum(ip, proto, len(l4)) // all a partial checksum holds
		if !layout.PartialCsum {
			l4[csumOffset], l4[csumOffset+1] = 0, 0
			sum = ^sum16(l4, sum)
			if sum == 0 && proto == protoUDP {
				sum = 0xffff // 0 would mean "no checksum"
			}
		}
		binary.BigEndian.PutUint16(l4[csumOffset:], sum)
		sizes[i] = len(seg)
	}
	return n, stride, nil
}

// gsoIPv4Header checks the IPv4 header of a GSO packet and returns its
// length. The header checksum is not checked: every segment gets a new
// one.
func gsoIPv4Header(pkt []byte, proto byte) (int, error) {
	if len(pkt) < ipv4MinHeaderLen {
		return 0, fmt.Errorf("segment: %d-byte packet", len(pkt))
	}
	if v := pkt[0] >> 4; v != 4 {
		return 0, fmt.Errorf("segment: IP version %d", v)
	}
	ihl := int(pkt[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(pkt[2:4]))
	switch {
	case ihl < ipv4MinHeaderLen:
		return 0, fmt.Errorf("segment: IHL %d", ihl)
	case total < ihl || total > len(pkt):
		return 0, fmt.Errorf("segment: total length %d in %d bytes", total, len(pkt))
	case binary.BigEndian.Uint16(pkt[6:8])&(ipv4FlagMF|ipv4OffsetMask) != 0:
		return 0, errors.New("segment: a fragment cannot be segmented")
	case pkt[9] != proto:
		return 0, fmt.Errorf("segment: protocol %d, want %d for the GSO type", pkt[9], proto)
	}
	return ihl, nil
}
