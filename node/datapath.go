package node

import (
	"errors"
	"net/netip"
	"os"

	"github.com/ringnet/ringnet/dhcp"
	"github.com/ringnet/ringnet/overlay"
	"github.com/ringnet/ringnet/tap"
)

// The node's data path between the TAP and the overlay, in two forms.
//
// Plain frames (no offloads): one frame per read. The frame is read two
// bytes into the buffer so that its IPv4 packet starts at
// overlay.HeaderLen, where the overlay seals it in place; arriving packets
// get their Ethernet header written in front, in place, and go to the TAP
// one by one.
//
// Offloads (vnet headers): one read brings a TCP frame of up to 64 KiB.
// tap.Segment cuts it into MTU-sized segments laid out with room for the
// overlay's header and tag; the overlay seals each in place and sends the
// batch with one UDP_SEGMENT sendmsg, so one lost datagram costs one TCP
// segment. The segments' TCP checksums stay partial, as the VM's kernel
// left them: the far node's kernel takes them so, or the far node
// finishes them for a TAP without offloads. On the far side a GRO read
// brings the run back; each datagram is opened, and a tap.Coalescer joins
// the flow's segments into one frame again for one TAP write.

// frameBatch is how many frames one read of the TAP may bring.
const frameBatch = 16

// frameReader reads frames in batches where the device can.
type frameReader struct {
	dev   tap.Device
	batch tap.BatchReader
}

func newFrameReader(dev tap.Device) frameReader {
	b, _ := dev.(tap.BatchReader)
	return frameReader{dev: dev, batch: b}
}

func (r frameReader) read(bufs [][]byte, sizes []int) (int, error) {
	if r.batch != nil {
		return r.batch.ReadFrames(bufs, sizes)
	}
	n, err := r.dev.ReadFrame(bufs[0])
	sizes[0] = n
	if err != nil {
		return 0, err
	}
	return 1, nil
}

// outbound is the loop that reads frames from the TAP, in batches, each
// readOff bytes into a buffer of its own, and hands each to handle with
// the batch's send queue. The queue is flushed when the batch is done.
//
// A batch starts with one buffer and doubles, up to frameBatch, each time
// a read fills it: an idle VM's node holds one 64 KiB buffer, not
// frameBatch of them, and a busy one reaches full batches within a few
// reads.
func (n *Node) outbound(readOff int, handle func(buf, frame []byte, q *overlay.SendQueue)) {
	var bufs, reads [][]byte
	grow := func(to int) {
		for len(bufs) < to {
			b := make([]byte, readOff+tap.VirtioNetHdrLen+tap.EthHeaderLen+65536+overlay.TagLen)
			bufs = append(bufs, b)
			reads = append(reads, b[readOff:len(b)-overlay.TagLen])
		}
	}
	grow(1)
	sizes := make([]int, frameBatch)
	q := n.ov.NewSendQueue(frameBatch)
	r := newFrameReader(n.dev)
	for {
		cnt, err := r.read(reads, sizes)
		if err != nil {
			if !errors.Is(err, os.ErrClosed) {
				n.log.Debug("TAP read ends", "err", err)
			}
			return
		}
		for i := range cnt {
			handle(bufs[i], reads[i][:sizes[i]], q)
		}
		q.Flush()
		if cnt == len(bufs) && cnt < frameBatch {
			grow(min(2*cnt, frameBatch))
		}
	}
}

// readTAP is the outbound loop for plain frames. Each frame is read two
// bytes into its buffer so that its IPv4 packet starts at
// overlay.HeaderLen, where it is sealed in place; the batch's datagrams go
// out together with one sendmmsg.
func (n *Node) readTAP() {
	reply := make([]byte, tap.ReplyBufLen)
	dhcpOut := make([]byte, dhcp.MaxFrameLen)
	var frags fragmentSender
	n.outbound(overlay.HeaderLen-tap.EthHeaderLen, func(buf, frame []byte, q *overlay.SendQueue) {
		if n.dhcpReply(frame, 0, dhcpOut) {
			return // DHCP never leaves the VM's TAP
		}
		res := n.gw.FromVM(frame, reply)
		switch res.Verdict {
		case tap.Forward:
			q.Send(res.Dst, buf, len(res.Packet))
		case tap.ForwardFragments:
			q.Flush() // keep the flow in order
			frags.send(n.ov, res)
		case tap.Reply:
			n.writeVM(res.Reply)
		}
	})
}

// readTAPOffload is the outbound loop for a TAP with vnet headers. Large
// frames are cut into segments and sent as one UDP_SEGMENT batch each;
// small ones are queued and leave together with one sendmmsg.
func (n *Node) readTAPOffload() {
	// A frame read at vnetOff puts its IPv4 header at ipOff; the overlay
	// header goes in the HeaderLen bytes before it (from sendOff), so a
	// complete packet is sealed where it was read.
	const (
		vnetOff = 8
		ipOff   = vnetOff + tap.VirtioNetHdrLen + tap.EthHeaderLen
		sendOff = ipOff - overlay.HeaderLen
	)
	reply := make([]byte, tap.ReplyBufLen+tap.VirtioNetHdrLen)
	layout := tap.SegmentLayout{Headroom: overlay.HeaderLen, Tailroom: overlay.TagLen, PartialCsum: true}
	// A 64 KiB packet in segments of at least 576 bytes, each with its
	// header and tag.
	// Made with the first such packet: a VM that never sends TCP in
	// bulk never needs it.
	const maxSegs = 65536/(576-40) + 1
	var segs []byte
	segSizes := make([]int, maxSegs)
	dhcpOut := make([]byte, tap.VirtioNetHdrLen+dhcp.MaxFrameLen)
	var frags fragmentSender
	n.outbound(vnetOff, func(buf, frame []byte, q *overlay.SendQueue) {
		var hdr tap.VirtioNetHdr
		if len(frame) < tap.VirtioNetHdrLen || hdr.Decode(frame) != nil {
			n.badVnetHdr.Add(1)
			return
		}
		if n.dhcpReply(frame, tap.VirtioNetHdrLen, dhcpOut) {
			return // DHCP never leaves the VM's TAP
		}
		res := n.gw.FromVMOffload(hdr, frame[tap.VirtioNetHdrLen:], reply)
		switch res.Verdict {
		case tap.Forward:
			// Complete, and already where it is sealed.
			q.Send(res.Dst, buf[sendOff:], len(res.Packet))
		case tap.ForwardGSO:
			if segs == nil {
				segs = make([]byte, maxSegs*(n.mtu+overlay.Overhead))
			}
			c, stride, err := tap.Segment(res.GSO, res.Packet, n.mtu, segs, layout, segSizes)
			if err != nil {
				n.segmentFailed.Add(1)
				n.log.Debug("segment", "err", err)
				return
			}
			q.Flush() // keep the flow in order
			n.ov.SendSegments(res.Dst, segs, stride, segSizes[:c], layout.PartialCsum)
		case tap.ForwardFragments:
			q.Flush()
			frags.send(n.ov, res)
		case tap.Reply:
			n.writeVM(res.Reply)
		}
	})
}

// announce tells the VM at once where addresses it asked for in vain
// turned out to be, rather than leave it to its next ARP retry.
func (n *Node) announce(addrs []netip.Addr) {
	for _, a := range addrs {
		buf := make([]byte, tap.VirtioNetHdrLen+tap.ReplyBufLen)
		frame := n.gw.Announce(a, buf[tap.VirtioNetHdrLen:])
		if frame == nil {
			continue
		}
		if n.offloads.VnetHdr {
			// A zero vnet header: a complete frame, nothing to offload.
			frame = buf[:tap.VirtioNetHdrLen+len(frame)]
		}
		n.log.Debug("telling the VM where an address it asked for is", "addr", a)
		n.writeVM(frame)
	}
}

func (n *Node) writeVM(frame []byte) {
	if err := n.dev.WriteFrame(frame); err != nil {
		n.log.Debug("TAP write", "err", err)
	}
}

// fragmentSender sends the fragments of a packet the gateway cut up.
type fragmentSender struct{ buf []byte }

func (f *fragmentSender) send(ov *overlay.Overlay, r tap.Result) {
	if f.buf == nil {
		f.buf = make([]byte, overlay.HeaderLen+65536+overlay.TagLen)
	}
	for _, frag := range r.Fragments {
		copy(f.buf[overlay.HeaderLen:], frag)
		ov.Send(r.Dst, f.buf, len(frag))
	}
}

func (n *Node) newReceiver() overlay.Receiver {
	if n.offloads.VnetHdr {
		c := &coalescingWriter{n: n, c: tap.NewCoalescer()}
		c.emit = c.write // bound once: no allocation per packet
		return c
	}
	return vmWriter{n}
}

// vmWriter writes packets from the overlay to a TAP without offloads, one
// per frame.
type vmWriter struct{ n *Node }

// Deliver writes one packet, at buf[overlay.HeaderLen:], to the VM; the
// gateway puts the Ethernet header in front of it. A partial checksum is
// finished first: this TAP cannot take one.
func (w vmWriter) Deliver(buf []byte, csumPartial bool) {
	if csumPartial {
		tap.FinishCsum(buf[overlay.HeaderLen:])
	}
	frame, ok := w.n.gw.ToVM(buf[overlay.HeaderLen-tap.EthHeaderLen:])
	if ok {
		w.n.writeVM(frame)
	}
}

func (vmWriter) Flush() {}

// coalescingWriter joins the TCP segments of one read into large frames
// for a TAP with offloads.
type coalescingWriter struct {
	n    *Node
	c    *tap.Coalescer
	emit func([]byte)
}

func (w *coalescingWriter) Deliver(buf []byte, csumPartial bool) {
	w.c.Add(buf[overlay.HeaderLen:], csumPartial, w.emit)
}
func (w *coalescingWriter) Flush() { w.c.Flush(w.emit) }

func (w *coalescingWriter) write(frame []byte) {
	if f, ok := w.n.gw.ToVMOffload(frame); ok {
		w.n.writeVM(f)
	}
}
