package tap

import (
	"bytes"
	"encoding/binary"
	"slices"
	"testing"
)

// Run with: go test -run='^$' -fuzz=FuzzSegment ./tap/ (and
// FuzzVirtioNetHdr, FuzzCoalesce). Inputs worth keeping live in
// testdata/fuzz/.

func FuzzVirtioNetHdr(f *testing.F) {
	h, p := partial(l4Spec{payload: pattern(3000)}.packet(), VirtioNetHdrGSOTCPv4, 1000)
	b := make([]byte, VirtioNetHdrLen)
	h.Encode(b)
	f.Add(b, p)
	f.Add(make([]byte, VirtioNetHdrLen), []byte{0x45})
	f.Add([]byte{1, 0x81, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff}, []byte{})
	f.Fuzz(func(t *testing.T, b, pkt []byte) {
		var h VirtioNetHdr
		if err := h.Decode(b); err != nil {
			if len(b) >= VirtioNetHdrLen {
				t.Fatalf("Decode of %d bytes: %v", len(b), err)
			}
			return
		}
		out := make([]byte, VirtioNetHdrLen)
		if err := h.Encode(out); err != nil || !bytes.Equal(out, b[:VirtioNetHdrLen]) {
			t.Fatalf("Encode(Decode(% x)) = % x, %v", b[:VirtioNetHdrLen], out, err)
		}
		if h.Validate(pkt) == nil && h.NeedsCsum() {
			// Valid means finishing the checksum stays inside pkt.
			finishCsum(h, bytes.Clone(pkt))
		}
		if r, err := h.Rebase(EthHeaderLen); err == nil && h.NeedsCsum() && r.CsumStart+EthHeaderLen != h.CsumStart {
			t.Fatalf("Rebase moved csum_start from %d to %d", h.CsumStart, r.CsumStart)
		}
	})
}

func FuzzSegment(f *testing.F) {
	for _, s := range []struct {
		spec l4Spec
		gso  uint8
		size int
	}{
		{l4Spec{payload: pattern(5000), flags: tcpACK | tcpFIN | tcpPSH | tcpCWR}, VirtioNetHdrGSOTCPv4, 1000},
		{l4Spec{payload: pattern(3001), options: []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2}}, VirtioNetHdrGSOTCPv4 | VirtioNetHdrGSOECN, 1448},
		{l4Spec{proto: protoUDP, payload: pattern(4000)}, VirtioNetHdrGSOUDPL4, 1200},
		{l4Spec{flags: tcpSYN}, VirtioNetHdrGSONone, 0},
		{l4Spec{proto: protoUDP, payload: pattern(10)}, VirtioNetHdrGSONone, 0},
	} {
		h, p := partial(s.spec.packet(), s.gso, s.size)
		b := make([]byte, VirtioNetHdrLen)
		h.Encode(b)
		f.Add(b, p, uint16(1500), uint8(16), uint8(16))
	}
	out := make([]byte, 1<<20)
	sizes := make([]int, 1024)
	f.Fuzz(func(t *testing.T, hb, pkt []byte, mtu uint16, head, tail uint8) {
		var h VirtioNetHdr
		if h.Decode(hb) != nil {
			return
		}
		in := bytes.Clone(pkt)
		layout := SegmentLayout{Headroom: int(head), Tailroom: int(tail)}
		n, stride, err := Segment(h, pkt, int(mtu), out, layout, sizes)
		if !bytes.Equal(pkt, in) {
			t.Fatal("Segment modified its input")
		}
		if err != nil {
			return
		}
		if n < 1 || n > len(sizes) {
			t.Fatalf("%d segments", n)
		}
		for i := range n {
			if i < n-1 && sizes[i] != stride-layout.Headroom-layout.Tailroom {
				t.Fatalf("segment %d of %d: %d bytes, stride %d", i, n, sizes[i], stride)
			}
			seg := out[i*stride+layout.Headroom:][:sizes[i]]
			if len(seg) > int(mtu) {
				t.Fatalf("segment %d: %d bytes > MTU %d", i, len(seg), mtu)
			}
			p, perr := checkIPv4(seg)
			if perr != ipv4OK || len(p) != len(seg) {
				t.Fatalf("segment %d: invalid IPv4 (%d)", i, perr)
			}
			if h.GSOType != VirtioNetHdrGSONone && !l4ChecksumOK(seg) {
				t.Fatalf("segment %d: transport checksum does not verify", i)
			}
		}

		// Left partial, and finished at the far end, the segments are
		// the same.
		complete := bytes.Clone(out[:(n-1)*stride+layout.Headroom+sizes[n-1]])
		completeSizes := slices.Clone(sizes[:n])
		layout.PartialCsum = true
		pn, pstride, err := Segment(h, pkt, int(mtu), out, layout, sizes)
		if err != nil || pn != n || pstride != stride {
			t.Fatalf("partial: %d segments of stride %d (%v), complete: %d of %d", pn, pstride, err, n, stride)
		}
		for i := range n {
			seg := out[i*stride+layout.Headroom:][:sizes[i]]
			if sizes[i] != completeSizes[i] {
				t.Fatalf("segment %d: %d bytes partial, %d complete", i, sizes[i], completeSizes[i])
			}
			if h.GSOType != VirtioNetHdrGSONone && !FinishCsum(seg) {
				t.Fatalf("segment %d: partial checksum cannot be finished", i)
			}
			if !bytes.Equal(seg, complete[i*stride+layout.Headroom:][:sizes[i]]) {
				t.Fatalf("segment %d, finished, differs from the complete one", i)
			}
		}
	})
}

// partialBit marks a packet of FuzzCoalesce's stream as having a partial
// checksum.
const partialBit = 0x8000

func FuzzCoalesce(f *testing.F) {
	var stream []byte
	for _, s := range segmentsOf(&testing.T{}, l4Spec{payload: pattern(6000), flags: tcpACK | tcpPSH}, 1000) {
		stream = binary.BigEndian.AppendUint16(stream, uint16(len(s)))
		stream = append(stream, s...)
	}
	f.Add(stream)
	f.Add([]byte{0, 3, 0x45, 0, 0})
	// The same segments with their checksums left partial.
	stream = nil
	for _, s := range segmentsWith(&testing.T{}, l4Spec{payload: pattern(6000), flags: tcpACK | tcpPSH}, 1000, SegmentLayout{PartialCsum: true}) {
		stream = binary.BigEndian.AppendUint16(stream, partialBit|uint16(len(s)))
		stream = append(stream, s...)
	}
	f.Add(stream)
	// Room for the most segments a 64 KiB frame can hold.
	out := make([]byte, 4<<20)
	sizes := make([]int, 1<<16)
	f.Fuzz(func(t *testing.T, stream []byte) {
		// stream is packets, each behind a 2-byte length whose top bit
		// says that the packet's checksum is partial.
		var pkts [][]byte
		var partials []bool
		for len(stream) >= 2 {
			l := binary.BigEndian.Uint16(stream)
			n := min(int(l&^partialBit), len(stream)-2)
			pkts = append(pkts, stream[2:2+n])
			partials = append(partials, l&partialBit != 0)
			stream = stream[2+n:]
		}
		var inLen, outLen int
		for i, p := range pkts {
			if _, ok := coalescible(p, partials[i]); ok {
				inLen += int(binary.BigEndian.Uint16(p[2:4])) // padding goes
			} else {
				inLen += len(p)
			}
		}
		var frames [][]byte
		c := NewCoalescer()
		emit := func(f []byte) { frames = append(frames, bytes.Clone(f)) }
		for i, p := range pkts {
			c.Add(p, partials[i], emit)
		}
		c.Flush(emit)
		for _, fr := range frames {
			var h VirtioNetHdr
			if err := h.Decode(fr); err != nil {
				t.Fatal(err)
			}
			pkt := fr[coalesceIPOff:]
			switch {
			case h == VirtioNetHdr{}:
				outLen += len(pkt) // passed through as it came
				continue
			case h.Flags == VirtioNetHdrFDataValid && h.GSOType == VirtioNetHdrGSONone:
				if !l4ChecksumOK(pkt) {
					t.Fatal("DATA_VALID on a bad checksum")
				}
				outLen += len(pkt)
				continue
			case h.NeedsCsum() && h.GSOType == VirtioNetHdrGSONone:
				// A partial checksum, for the kernel to finish where
				// the header says.
				if err := h.Validate(fr[VirtioNetHdrLen:]); err != nil || int(h.CsumStart) < EthHeaderLen+ipv4MinHeaderLen {
					t.Fatalf("NEEDS_CSUM frame %v, %d bytes: %v", h, len(fr), err)
				}
				outLen += len(pkt)
				continue
			}
			if len(pkt) > ipv4MaxLen || !ipv4HeaderOK(pkt) || h.Validate(fr[VirtioNetHdrLen:]) != nil {
				t.Fatalf("bad GSO frame %v, %d bytes", h, len(pkt))
			}
			// Cut again, the segments must verify.
			ipHdr, err := h.Rebase(EthHeaderLen)
			if err != nil {
				t.Fatal(err)
			}
			n, stride, err := Segment(ipHdr, pkt, ipv4MaxLen, out, SegmentLayout{}, sizes)
			if err != nil {
				t.Fatalf("coalesced frame does not segment: %v", err)
			}
			for i := range n {
				seg := out[i*stride:][:sizes[i]]
				if !l4ChecksumOK(seg) {
					t.Fatalf("segment %d of a coalesced frame: bad checksum", i)
				}
				outLen += len(seg)
			}
		}
		if outLen != inLen {
			// Every byte in comes out, as payload or as a header rebuilt.
			t.Fatalf("%d bytes in, %d bytes out", inLen, outLen)
		}
	})
}
