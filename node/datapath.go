package node

import (
	"errors"
	"os"

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
// segment. On the far side a GRO read brings the run back; each datagram
// is opened, and a tap.Coalescer joins the flow's segments into one frame
// again for one TAP write.

// readTAP is the outbound loop for plain frames.
func (n *Node) readTAP() {
	const off = overlay.HeaderLen - tap.EthHeaderLen
	buf := make([]byte, off+65536+overlay.TagLen)
	reply := make([]byte, tap.ReplyBufLen)
	var frags fragmentSender
	for {
		fn, err := n.dev.ReadFrame(buf[off : len(buf)-overlay.TagLen])
		if err != nil {
			n.readEnded(err)
			return
		}
		r := n.gw.FromVM(buf[off:off+fn], reply)
		switch r.Verdict {
		case tap.Forward:
			n.ov.Send(r.Dst, buf, len(r.Packet))
		case tap.ForwardFragments:
			frags.send(n.ov, r)
		case tap.Reply:
			n.writeVM(r.Reply)
		}
	}
}

// readTAPOffload is the outbound loop for a TAP with vnet headers.
func (n *Node) readTAPOffload() {
	buf := make([]byte, tap.VirtioNetHdrLen+tap.EthHeaderLen+65536)
	reply := make([]byte, tap.ReplyBufLen+tap.VirtioNetHdrLen)
	layout := tap.SegmentLayout{Headroom: overlay.HeaderLen, Tailroom: overlay.TagLen}
	// A 64 KiB packet in segments of at least 576 bytes, each with its
	// header and tag.
	const maxSegs = 65536/(576-40) + 1
	segs := make([]byte, maxSegs*(n.mtu+overlay.Overhead))
	sizes := make([]int, maxSegs)
	var frags fragmentSender
	for {
		fn, err := n.dev.ReadFrame(buf)
		if err != nil {
			n.readEnded(err)
			return
		}
		var hdr tap.VirtioNetHdr
		if fn < tap.VirtioNetHdrLen || hdr.Decode(buf[:tap.VirtioNetHdrLen]) != nil {
			n.badVnetHdr.Add(1)
			continue
		}
		r := n.gw.FromVMOffload(hdr, buf[tap.VirtioNetHdrLen:fn], reply)
		switch r.Verdict {
		case tap.Forward:
			// A complete packet: Segment copies it into place.
			r.GSO = tap.VirtioNetHdr{}
			fallthrough
		case tap.ForwardGSO:
			cnt, stride, err := tap.Segment(r.GSO, r.Packet, n.mtu, segs, layout, sizes)
			if err != nil {
				n.segmentFailed.Add(1)
				n.log.Debug("segment", "err", err)
				continue
			}
			n.ov.SendSegments(r.Dst, segs, stride, sizes[:cnt])
		case tap.ForwardFragments:
			frags.send(n.ov, r)
		case tap.Reply:
			n.writeVM(r.Reply)
		}
	}
}

func (n *Node) readEnded(err error) {
	if !errors.Is(err, os.ErrClosed) {
		n.log.Debug("TAP read ends", "err", err)
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
// gateway puts the Ethernet header in front of it.
func (w vmWriter) Deliver(buf []byte) {
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

func (w *coalescingWriter) Deliver(buf []byte) { w.c.Add(buf[overlay.HeaderLen:], w.emit) }
func (w *coalescingWriter) Flush()             { w.c.Flush(w.emit) }

func (w *coalescingWriter) write(frame []byte) {
	if f, ok := w.n.gw.ToVMOffload(frame); ok {
		w.n.writeVM(f)
	}
}
