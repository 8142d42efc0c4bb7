package tap

import (
	"bytes"
	"encoding/binary"
)

// The receive side of the offload path. The peer cut a large TCP packet
// into segments (Segment) and each came across as its own datagram; here
// consecutive segments of one flow are joined again into one packet with
// a GSO header, so the VM's kernel takes in 64 KiB with one write and one
// trip up its stack, as Linux GRO does for a NIC.
//
// Only what GRO would join is joined: TCP segments with ACK (and PSH on
// the last) and nothing else, no IPv4 options, consecutive IPv4 IDs, the
// same addresses, ports, TOS, TTL, DF, ack number, window and TCP option
// bytes, contiguous sequence numbers, every segment the size of the first
// but the last, at most 64 KiB in all, each checksum verified first unless
// the sender left it partial (SegmentLayout.PartialCsum). Everything else
// passes through unchanged, in order; a partial checksum goes to the
// kernel as NEEDS_CSUM.

// CoalesceFrameLen is the largest frame a Coalescer emits: a vnet header,
// an Ethernet header and a 64 KiB IPv4 packet.
const CoalesceFrameLen = VirtioNetHdrLen + EthHeaderLen + ipv4MaxLen

// coalesceIPOff is where the IPv4 packet starts in a Coalescer's frame.
const coalesceIPOff = VirtioNetHdrLen + EthHeaderLen

// Coalescer joins consecutive TCP segments of a flow into GSO frames for a
// TAP with offloads. Feed it the packets of a batch in order with Add,
// then call Flush. It is not safe for concurrent use; it allocates nothing
// after NewCoalescer.
//
// emit receives each finished frame as [VirtioNetHdr][EthHeaderLen bytes
// for the caller to fill][IPv4 packet], for Gateway.ToVMOffload; it may
// modify the frame but must not keep it after returning.
type Coalescer struct {
	buf []byte // CoalesceFrameLen bytes: the frame being built
	n   int    // bytes of IPv4 packet in buf[coalesceIPOff:]; 0: none held

	segs    int // segments joined so far
	gsoSize int // payload bytes of the first segment
	hdrLen  int // IPv4 + TCP header bytes
	nextSeq uint32
	nextID  uint16
	closed  bool // the last segment was short or had PSH
	partial bool // the first segment's checksum is partial
}

// NewCoalescer returns a Coalescer with its frame buffer.
func NewCoalescer() *Coalescer {
	return &Coalescer{buf: make([]byte, CoalesceFrameLen)}
}

// Add takes one IPv4 packet, which it copies: pkt may be reused once Add
// returns. partial says that its TCP or UDP checksum holds only the
// pseudo-header sum (SegmentLayout.PartialCsum). It emits the frames that
// pkt completes, at most two.
func (c *Coalescer) Add(pkt []byte, partial bool, emit func(frame []byte)) {
	thl, ok := coalescible(pkt, partial)
	if !ok {
		c.Flush(emit)
		c.passThrough(pkt, partial, emit)
		return
	}
	pkt = pkt[:binary.BigEndian.Uint16(pkt[2:4])]
	if c.n != 0 && c.canAppend(pkt, thl) {
		c.append(pkt, thl)
		return
	}
	c.Flush(emit)
	c.start(pkt, thl, partial)
}

// Flush emits the packet being built, if any.
func (c *Coalescer) Flush(emit func(frame []byte)) {
	if c.n == 0 {
		return
	}
	ip := c.buf[coalesceIPOff : coalesceIPOff+c.n]
	var h VirtioNetHdr
	switch {
	case c.segs == 1 && c.partial:
		// Untouched, its checksum left for the kernel, which takes it on
		// trust for a local socket.
		h = VirtioNetHdr{Flags: VirtioNetHdrFNeedsCsum, CsumStart: EthHeaderLen + ipv4MinHeaderLen, CsumOffset: tcpCsumOffset}
	case c.segs == 1:
		// Untouched, and its checksum checked.
		h.Flags = VirtioNetHdrFDataValid
	default:
		binary.BigEndian.PutUint16(ip[2:4], uint16(c.n))
		setIPv4Checksum(ip[:ipv4MinHeaderLen])
		// As the kernel hands it over for TSO: the pseudo-header sum in
		// the checksum field, the rest left to whoever segments it.
		sum := pseudoSum(ip, protoTCP, c.n-ipv4MinHeaderLen)
		binary.BigEndian.PutUint16(ip[ipv4MinHeaderLen+tcpCsumOffset:], sum)
		h = VirtioNetHdr{
			Flags:      VirtioNetHdrFNeedsCsum,
			GSOType:    VirtioNetHdrGSOTCPv4,
			HdrLen:     uint16(EthHeaderLen + c.hdrLen),
			GSOSize:    uint16(c.gsoSize),
			CsumStart:  EthHeaderLen + ipv4MinHeaderLen,
			CsumOffset: tcpCsumOffset,
		}
	}
	h.Encode(c.buf)
	clear(c.buf[VirtioNetHdrLen:coalesceIPOff])
	frame := c.buf[:coalesceIPOff+c.n]
	c.n = 0
	emit(frame)
}

// passThrough emits pkt as it is, behind an empty vnet header, so that
// the kernel checks it as if it came off the wire; or, if its checksum is
// partial, behind one that says where the kernel is to finish it.
func (c *Coalescer) passThrough(pkt []byte, partial bool, emit func(frame []byte)) {
	n := copy(c.buf[coalesceIPOff:], pkt)
	clear(c.buf[:coalesceIPOff])
	if partial {
		if _, l4, off, ok := partialCsum(pkt); ok {
			h := VirtioNetHdr{Flags: VirtioNetHdrFNeedsCsum, CsumStart: uint16(EthHeaderLen + l4), CsumOffset: uint16(off)}
			h.Encode(c.buf)
		}
	}
	emit(c.buf[:coalesceIPOff+n])
}

// start holds pkt as the first segment of a new packet.
func (c *Coalescer) start(pkt []byte, thl int, partial bool) {
	c.n = copy(c.buf[coalesceIPOff:], pkt)
	c.partial = partial
	c.segs = 1
	c.hdrLen = ipv4MinHeaderLen + thl
	c.gsoSize = len(pkt) - c.hdrLen
	c.nextSeq = binary.BigEndian.Uint32(pkt[24:28]) + uint32(c.gsoSize)
	c.nextID = binary.BigEndian.Uint16(pkt[4:6]) + 1
	c.closed = pkt[33]&tcpPSH != 0
}

// canAppend reports whether pkt, a coalescible TCP segment, continues the
// packet being built.
func (c *Coalescer) canAppend(pkt []byte, thl int) bool {
	held := c.buf[coalesceIPOff : coalesceIPOff+c.hdrLen]
	payload := len(pkt) - ipv4MinHeaderLen - thl
	switch {
	case c.closed,
		ipv4MinHeaderLen+thl != c.hdrLen,
		payload > c.gsoSize,
		c.n+payload > ipv4MaxLen,
		binary.BigEndian.Uint16(pkt[4:6]) != c.nextID,
		binary.BigEndian.Uint32(pkt[24:28]) != c.nextSeq:
		return false
	}
	// Byte for byte, everything that must match: TOS; flags and fragment
	// offset; TTL and protocol; addresses and ports; the ack number, data
	// offset and flags (held has no PSH: it would be closed); window;
	// options. Skipped: lengths, ID, checksums, sequence number.
	// Fixed-width loads, not bytes.Equal: this runs for every segment.
	be := binary.BigEndian
	return pkt[1] == held[1] &&
		be.Uint32(pkt[6:10]) == be.Uint32(held[6:10]) &&
		be.Uint64(pkt[12:20]) == be.Uint64(held[12:20]) &&
		be.Uint32(pkt[20:24]) == be.Uint32(held[20:24]) &&
		be.Uint32(pkt[28:32]) == be.Uint32(held[28:32]) &&
		pkt[32] == held[32] &&
		pkt[33]&^tcpPSH == held[33] &&
		be.Uint16(pkt[34:36]) == be.Uint16(held[34:36]) &&
		bytes.Equal(pkt[40:c.hdrLen], held[40:])
}

// append adds pkt's payload to the packet being built.
func (c *Coalescer) append(pkt []byte, thl int) {
	payload := pkt[ipv4MinHeaderLen+thl:]
	c.n += copy(c.buf[coalesceIPOff+c.n:], payload)
	c.segs++
	c.nextSeq += uint32(len(payload))
	c.nextID++
	if pkt[33]&tcpPSH != 0 {
		c.buf[coalesceIPOff+33] |= tcpPSH
		c.closed = true
	}
	if len(payload) < c.gsoSize {
		c.closed = true
	}
}

// coalescible reports whether pkt is a TCP segment that may be joined
// with others, and returns its TCP header length. partial says that its
// checksum is partial, so that there is none to check.
func coalescible(pkt []byte, partial bool) (thl int, ok bool) {
	p, perr := checkIPv4(pkt)
	if perr != ipv4OK ||
		p[0] != 0x45 || // options: GRO does not join those either
		p[9] != protoTCP ||
		binary.BigEndian.Uint16(p[6:8])&(ipv4FlagMF|ipv4OffsetMask) != 0 ||
		len(p) < ipv4MinHeaderLen+tcpMinHeaderLen {
		return 0, false
	}
	thl = int(p[32]>>4) * 4
	if thl < tcpMinHeaderLen || ipv4MinHeaderLen+thl >= len(p) || // no payload
		p[33]&^tcpPSH != tcpACK {
		return 0, false
	}
	// A joined packet reaches the VM with its checksum marked as to be
	// done, which the VM's kernel takes for correct: check every part
	// whose sender finished it.
	if !partial && sum16(p[ipv4MinHeaderLen:], pseudoSum(p, protoTCP, len(p)-ipv4MinHeaderLen)) != 0xffff {
		return 0, false
	}
	return thl, true
}
