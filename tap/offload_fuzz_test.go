package tap

import (
	"bytes"
	"encoding/binary"
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
	})
}

func FuzzCoalesce(f *testing.F) {
	var stream []byte
	for _, s := range segmentsOf(&testing.T{}, l4Spec{payload: pattern(6000), flags: tcpACK | tcpPSH}, 1000) {
		stream = binary.BigEndian.AppendUint16(stream, uint16(len(s)))
		stream = append(stream, s...)
	}
	f.Add(stream)
	f.Add([]byte{0, 3, 0x45, 0, 0})
	// Room for the most segments a 64 KiB frame can hold.
	out := make([]byte, 4<<20)
	sizes := make([]int, 1<<16)
	f.Fuzz(func(t *testing.T, stream []byte) {
		// stream is packets, each behind a 2-byte length.
		var pkts [][]byte
		for len(stream) >= 2 {
			n := min(int(binary.BigEndian.Uint16(stream)), len(stream)-2)
			pkts = append(pkts, stream[2:2+n])
			stream = stream[2+n:]
		}
		var inLen, outLen int
		for _, p := range pkts {
			if _, ok := coalescible(p); ok {
				inLen += int(binary.BigEndian.Uint16(p[2:4])) // padding goes
			} else {
				inLen += len(p)
			}
		}
		for _, fr := range collect(pkts) {
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
