package tap

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// A TAP opened with IFF_VNET_HDR puts a struct virtio_net_hdr in front of
// every frame, in both directions. It tells the reader what the kernel
// left undone: a checksum to finish (NEEDS_CSUM) and a large TCP or UDP
// packet to cut into segments (gso_type, gso_size). Written to the TAP, it
// tells the kernel the same about the frame that follows.

// VirtioNetHdrLen is the size of struct virtio_net_hdr, the TAP's default
// vnet header size (TUNSETVNETHDRSZ).
const VirtioNetHdrLen = 10

// VirtioNetHdr.Flags bits.
const (
	// VirtioNetHdrFNeedsCsum: the checksum from CsumStart to the end of
	// the packet is not done; the field at CsumStart+CsumOffset holds
	// only the pseudo-header sum.
	VirtioNetHdrFNeedsCsum = 1
	// VirtioNetHdrFDataValid: the transport checksum has been checked.
	VirtioNetHdrFDataValid = 2
)

// VirtioNetHdr.GSOType values.
const (
	VirtioNetHdrGSONone  = 0
	VirtioNetHdrGSOTCPv4 = 1
	VirtioNetHdrGSOUDP   = 3 // UFO, IPv4 fragmentation; never asked for
	VirtioNetHdrGSOTCPv6 = 4
	VirtioNetHdrGSOUDPL4 = 5 // USO: split into UDP datagrams
	// VirtioNetHdrGSOECN is or-ed into a TCP type when the packet has CWR
	// set, which belongs on the first segment only.
	VirtioNetHdrGSOECN = 0x80
)

// VirtioNetHdr is struct virtio_net_hdr. Its fields are little-endian on
// the wire (the TAP uses the host's order, and ringnet runs on x86 and
// arm64). Offsets count from the start of the buffer the header
// describes: from the Ethernet header on a TAP, from the IPv4 header for
// Segment and Result.GSO.
type VirtioNetHdr struct {
	Flags      uint8
	GSOType    uint8
	HdrLen     uint16 // headers before the payload; only a hint
	GSOSize    uint16 // payload bytes per segment
	CsumStart  uint16 // where checksumming starts
	CsumOffset uint16 // where the checksum goes, from CsumStart
}

var errShortVnetHdr = errors.New("virtio_net_hdr: short buffer")

// Decode reads the header from the first VirtioNetHdrLen bytes of b.
func (h *VirtioNetHdr) Decode(b []byte) error {
	if len(b) < VirtioNetHdrLen {
		return fmt.Errorf("%w: %d bytes", errShortVnetHdr, len(b))
	}
	h.Flags = b[0]
	h.GSOType = b[1]
	h.HdrLen = binary.LittleEndian.Uint16(b[2:4])
	h.GSOSize = binary.LittleEndian.Uint16(b[4:6])
	h.CsumStart = binary.LittleEndian.Uint16(b[6:8])
	h.CsumOffset = binary.LittleEndian.Uint16(b[8:10])
	return nil
}

// Encode writes the header into the first VirtioNetHdrLen bytes of b.
func (h VirtioNetHdr) Encode(b []byte) error {
	if len(b) < VirtioNetHdrLen {
		return fmt.Errorf("%w: %d bytes", errShortVnetHdr, len(b))
	}
	b[0] = h.Flags
	b[1] = h.GSOType
	binary.LittleEndian.PutUint16(b[2:4], h.HdrLen)
	binary.LittleEndian.PutUint16(b[4:6], h.GSOSize)
	binary.LittleEndian.PutUint16(b[6:8], h.CsumStart)
	binary.LittleEndian.PutUint16(b[8:10], h.CsumOffset)
	return nil
}

// NeedsCsum reports whether the checksum is left for the reader to finish.
func (h VirtioNetHdr) NeedsCsum() bool { return h.Flags&VirtioNetHdrFNeedsCsum != 0 }

// GSO is the segmentation type without the ECN bit.
func (h VirtioNetHdr) GSO() uint8 { return h.GSOType &^ VirtioNetHdrGSOECN }

// Rebase returns h with its offsets moved to a buffer that starts off
// bytes later, e.g. Rebase(EthHeaderLen) turns a TAP frame's header into
// one for the IPv4 packet inside. Offsets that would go negative are an
// error.
func (h VirtioNetHdr) Rebase(off int) (VirtioNetHdr, error) {
	if h.NeedsCsum() {
		if int(h.CsumStart) < off {
			return h, fmt.Errorf("virtio_net_hdr: csum_start %d before offset %d", h.CsumStart, off)
		}
		h.CsumStart -= uint16(off)
	}
	// hdr_len is only a hint (Linux reports the linear part of the skb):
	// clamp rather than reject.
	h.HdrLen = uint16(max(int(h.HdrLen)-off, 0))
	return h, nil
}

// Validate checks h against pkt, the buffer it describes: a known GSO type
// with a segment size, and a checksum position inside the packet. It does
// not parse the packet; Segment does.
func (h VirtioNetHdr) Validate(pkt []byte) error {
	if h.Flags&^(VirtioNetHdrFNeedsCsum|VirtioNetHdrFDataValid) != 0 {
		return fmt.Errorf("virtio_net_hdr: unknown flags %#x", h.Flags)
	}
	switch gso := h.GSO(); gso {
	case VirtioNetHdrGSONone:
		if h.GSOType&VirtioNetHdrGSOECN != 0 {
			return errors.New("virtio_net_hdr: ECN bit without GSO")
		}
	case VirtioNetHdrGSOTCPv4, VirtioNetHdrGSOTCPv6, VirtioNetHdrGSOUDPL4:
		if gso == VirtioNetHdrGSOUDPL4 && h.GSOType&VirtioNetHdrGSOECN != 0 {
			return errors.New("virtio_net_hdr: ECN bit on UDP")
		}
		if h.GSOSize == 0 {
			return fmt.Errorf("virtio_net_hdr: gso_type %d with gso_size 0", gso)
		}
	default:
		return fmt.Errorf("virtio_net_hdr: unsupported gso_type %#x", h.GSOType)
	}
	if h.NeedsCsum() {
		// The 2-byte checksum field must lie inside the packet.
		if int(h.CsumStart)+int(h.CsumOffset)+2 > len(pkt) {
			return fmt.Errorf("virtio_net_hdr: checksum at %d+%d outside %d-byte packet", h.CsumStart, h.CsumOffset, len(pkt))
		}
	}
	return nil
}

func (h VirtioNetHdr) String() string {
	return fmt.Sprintf("vnet{flags %#x gso %#x hdr %d size %d csum %d+%d}",
		h.Flags, h.GSOType, h.HdrLen, h.GSOSize, h.CsumStart, h.CsumOffset)
}

// finishCsum completes a NEEDS_CSUM checksum in pkt in place: the sum from
// CsumStart to the end, folded over the pseudo-header sum already in the
// field. It is what the kernel would have done before sending; pkt must
// have passed h.Validate.
func finishCsum(h VirtioNetHdr, pkt []byte) {
	at := int(h.CsumStart) + int(h.CsumOffset)
	sum := checksum(pkt[h.CsumStart:], 0)
	if sum == 0 {
		// As the kernel does: 0 means "no checksum" in UDP, and the two
		// zeros are equal in one's complement for TCP.
		sum = 0xffff
	}
	binary.BigEndian.PutUint16(pkt[at:], sum)
}
