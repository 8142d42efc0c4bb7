package tap

import "encoding/binary"

// The gateway's side of a TAP with offloads (Linux.Offloads().VnetHdr):
// frames from the VM come with a VirtioNetHdr that may leave a checksum
// undone or describe a 64 KiB TCP packet, and frames to the VM need one.

// FromVMOffload is FromVM for a frame read from a TAP with a vnet header:
// hdr is that header (decoded) and frame the Ethernet frame after it.
//
// A partial checksum (NEEDS_CSUM) of a packet that needs no segmenting is
// finished in place, in frame, and the packet then goes the way FromVM
// sends it (Forward, ForwardFragments or Reply). A TSO or USO packet
// whose segments fit the MTU gives ForwardGSO: Result.Packet with
// Result.GSO for Segment. Segments larger than the MTU get ICMP
// "fragmentation needed" if DF is set, so the VM lowers its MSS, and are
// dropped otherwise.
//
// Reply frames come with a zero vnet header in front, ready for the same
// TAP: Result.Reply starts at replyBuf[0], and the frame itself at
// replyBuf[VirtioNetHdrLen]; ReplyBufLen+VirtioNetHdrLen bytes always
// suffice. Fragments are built in replyBuf after its first
// VirtioNetHdrLen bytes.
func (g *Gateway) FromVMOffload(hdr VirtioNetHdr, frame, replyBuf []byte) Result {
	if len(replyBuf) < VirtioNetHdrLen {
		return g.dropFromVM(fromVMDropReplyBufSmall)
	}
	r := g.fromVMOffload(hdr, frame, replyBuf[VirtioNetHdrLen:])
	if r.Verdict == Reply {
		clear(replyBuf[:VirtioNetHdrLen])
		r.Reply = replyBuf[:VirtioNetHdrLen+len(r.Reply)]
	}
	return r
}

func (g *Gateway) fromVMOffload(hdr VirtioNetHdr, frame, replyBuf []byte) Result {
	if hdr.GSOType == VirtioNetHdrGSONone && !hdr.NeedsCsum() ||
		len(frame) < EthHeaderLen || binary.BigEndian.Uint16(frame[12:14]) != etherTypeIPv4 {
		// Nothing left undone, or not IPv4 (which FromVM drops or
		// answers without looking at a checksum).
		return g.FromVM(frame, replyBuf)
	}
	if err := hdr.Validate(frame); err != nil {
		return g.dropFromVM(fromVMDropBadVnetHdr)
	}
	ipHdr, err := hdr.Rebase(EthHeaderLen)
	if err != nil {
		return g.dropFromVM(fromVMDropBadVnetHdr)
	}
	if hdr.GSOType == VirtioNetHdrGSONone {
		if pkt, perr := checkIPv4(frame[EthHeaderLen:]); perr == ipv4OK {
			// Checked here, not by Validate: the packet may be shorter
			// than the frame.
			ihl := int(pkt[0]&0x0f) * 4
			if int(ipHdr.CsumStart) < ihl || ipHdr.Validate(pkt) != nil {
				return g.dropFromVM(fromVMDropBadVnetHdr)
			}
			finishCsum(ipHdr, pkt)
		}
		return g.FromVM(frame, replyBuf)
	}

	if !g.learnVMMAC(frame[6:12]) {
		return g.dropFromVM(fromVMDropBadSourceMAC)
	}
	pkt, dst, c := g.checkIPv4FromVM(frame)
	if c != 0 {
		return g.dropFromVM(c)
	}
	var proto byte
	switch hdr.GSO() {
	case VirtioNetHdrGSOTCPv4:
		proto = protoTCP
	case VirtioNetHdrGSOUDPL4:
		proto = protoUDP
	default:
		return g.dropFromVM(fromVMDropBadVnetHdr) // TCPv6 on an IPv4 frame
	}
	ihl, err := gsoIPv4Header(pkt, proto)
	if err != nil {
		return g.dropFromVM(fromVMDropBadVnetHdr)
	}
	l4Len := udpHeaderLen
	if proto == protoTCP {
		if len(pkt) < ihl+tcpMinHeaderLen {
			return g.dropFromVM(fromVMDropBadVnetHdr)
		}
		l4Len = int(pkt[ihl+12]>>4) * 4
	}
	hl := ihl + l4Len
	if hl > len(pkt) || ipHdr.Validate(pkt) != nil {
		return g.dropFromVM(fromVMDropBadVnetHdr)
	}
	seg := hl + min(int(hdr.GSOSize), len(pkt)-hl)
	if mtu := g.mtuTo(dst, seg); seg > mtu {
		if binary.BigEndian.Uint16(pkt[6:8])&ipv4FlagDF != 0 {
			return g.fragNeededFromVM(frame, pkt, replyBuf, mtu)
		}
		return g.dropFromVM(fromVMDropGSOTooBig)
	}
	g.fromVM[fromVMForwardedGSO].Add(1)
	return Result{Verdict: ForwardGSO, Packet: pkt, Dst: dst, GSO: ipHdr}
}

// ToVMOffload is ToVM for a TAP with a vnet header: buf holds
// [VirtioNetHdr][EthHeaderLen bytes][IPv4 packet], as Coalescer emits it.
// It fills in the Ethernet header and returns buf cut to the frame, vnet
// header included, for WriteFrame. The vnet header is the caller's: a
// zero one says the packet is complete.
func (g *Gateway) ToVMOffload(buf []byte) (frame []byte, ok bool) {
	if len(buf) < VirtioNetHdrLen {
		g.toVM[toVMDropIPv4Truncated].Add(1)
		return nil, false
	}
	f, ok := g.ToVM(buf[VirtioNetHdrLen:])
	if !ok {
		return nil, false
	}
	return buf[:VirtioNetHdrLen+len(f)], true
}
