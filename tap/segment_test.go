package tap

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"testing"
)

var overlayLayout = SegmentLayout{Headroom: 16, Tailroom: 16}

func TestSegmentTCP(t *testing.T) {
	timestamps := []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2}
	tests := []struct {
		name    string
		payload int
		mss     int
		flags   byte
		options []byte
		layout  SegmentLayout
	}{
		{"one byte", 1, 1448, tcpACK | tcpPSH, nil, overlayLayout},
		{"exactly one segment", 1360, 1360, tcpACK, nil, overlayLayout},
		{"one more than a segment", 1361, 1360, tcpACK | tcpPSH, nil, overlayLayout},
		{"ten full segments", 13600, 1360, tcpACK | tcpPSH | tcpFIN, nil, overlayLayout},
		{"largest with timestamps", 65535 - 20 - 32, 1348, tcpACK | tcpPSH, timestamps, overlayLayout},
		{"cwr on the first only", 5000, 1000, tcpACK | tcpCWR | tcpECE, nil, overlayLayout},
		{"no room around", 4000, 1360, tcpACK, timestamps, SegmentLayout{}},
		{"odd payload size", 3001, 999, tcpACK | tcpPSH, nil, SegmentLayout{Headroom: 3, Tailroom: 5}},
		{"headers only", 0, 1360, tcpACK | tcpFIN, nil, overlayLayout},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := l4Spec{proto: protoTCP, id: 0xfffe, df: true, seq: 0xffffff00, ack: 77,
				flags: tt.flags, options: tt.options, payload: pattern(tt.payload)}
			orig := spec.packet()
			hdr, pkt := partial(orig, VirtioNetHdrGSOTCPv4, tt.mss)
			in := bytes.Clone(pkt)
			mtu := 20 + 20 + len(tt.options) + tt.mss
			out := make([]byte, 256<<10)
			sizes := make([]int, 128)
			n, stride, err := Segment(hdr, pkt, mtu, out, tt.layout, sizes)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(pkt, in) {
				t.Fatal("Segment modified its input")
			}
			hl := 40 + len(tt.options)
			if want := max(1, (tt.payload+tt.mss-1)/tt.mss); n != want {
				t.Fatalf("%d segments, want %d", n, want)
			}
			if want := tt.layout.Headroom + hl + min(tt.mss, tt.payload) + tt.layout.Tailroom; stride != want {
				t.Fatalf("stride %d, want %d", stride, want)
			}
			var data []byte
			for i := range n {
				seg := out[i*stride+tt.layout.Headroom:][:sizes[i]]
				if i < n-1 && sizes[i] != stride-tt.layout.Headroom-tt.layout.Tailroom {
					t.Errorf("segment %d: %d bytes, not the full stride", i, sizes[i])
				}
				if len(seg) > mtu {
					t.Errorf("segment %d: %d bytes > MTU %d", i, len(seg), mtu)
				}
				if p, perr := checkIPv4(seg); perr != ipv4OK || len(p) != len(seg) || !ipv4HeaderOK(seg) {
					t.Fatalf("segment %d: bad IPv4 header (%d)", i, perr)
				}
				if !l4ChecksumOK(seg) {
					t.Errorf("segment %d: TCP checksum does not verify", i)
				}
				if id := binary.BigEndian.Uint16(seg[4:6]); id != 0xfffe+uint16(i) {
					t.Errorf("segment %d: IP ID %#x", i, id)
				}
				if seq := binary.BigEndian.Uint32(seg[24:28]); seq != 0xffffff00+uint32(len(data)) {
					t.Errorf("segment %d: seq %#x, want %#x", i, seq, 0xffffff00+uint32(len(data)))
				}
				if !bytes.Equal(seg[:12], orig[:12]) && i == 0 && n == 1 {
					t.Errorf("single segment header changed")
				}
				want := tt.flags
				if i > 0 {
					want &^= tcpCWR
				}
				if i < n-1 {
					want &^= tcpFIN | tcpPSH
				}
				if seg[33] != want {
					t.Errorf("segment %d: flags %#x, want %#x", i, seg[33], want)
				}
				if !bytes.Equal(seg[40:hl], tt.options) {
					t.Errorf("segment %d: options % x", i, seg[40:hl])
				}
				data = append(data, seg[hl:]...)
			}
			if !bytes.Equal(data, spec.payload) {
				t.Error("reassembled payload differs")
			}
			if n == 1 && !bytes.Equal(out[tt.layout.Headroom:][:sizes[0]], orig) {
				t.Error("a single segment differs from the packet with its checksum done")
			}
		})
	}
}

func TestSegmentUDP(t *testing.T) {
	for _, tc := range []struct{ payload, size int }{{1, 1200}, {1200, 1200}, {1201, 1200}, {60000, 1300}, {0, 100}} {
		spec := l4Spec{proto: protoUDP, id: 9, payload: pattern(tc.payload)}
		hdr, pkt := partial(spec.packet(), VirtioNetHdrGSOUDPL4, tc.size)
		out := make([]byte, 128<<10)
		sizes := make([]int, 64)
		n, stride, err := Segment(hdr, pkt, 28+tc.size, out, overlayLayout, sizes)
		if err != nil {
			t.Fatalf("%+v: %v", tc, err)
		}
		var data []byte
		for i := range n {
			seg := out[i*stride+16:][:sizes[i]]
			if _, perr := checkIPv4(seg); perr != ipv4OK {
				t.Fatalf("%+v segment %d: bad IPv4 header", tc, i)
			}
			if !l4ChecksumOK(seg) || binary.BigEndian.Uint16(seg[26:28]) == 0 {
				t.Errorf("%+v segment %d: UDP checksum does not verify", tc, i)
			}
			if l := binary.BigEndian.Uint16(seg[24:26]); int(l) != len(seg)-20 {
				t.Errorf("%+v segment %d: UDP length %d for %d bytes", tc, i, l, len(seg)-20)
			}
			if i < n-1 && len(seg)-28 != tc.size {
				t.Errorf("%+v segment %d: %d payload bytes", tc, i, len(seg)-28)
			}
			if id := binary.BigEndian.Uint16(seg[4:6]); id != 9+uint16(i) {
				t.Errorf("%+v segment %d: IP ID %d", tc, i, id)
			}
			data = append(data, seg[28:]...)
		}
		if !bytes.Equal(data, spec.payload) {
			t.Errorf("%+v: reassembled payload differs", tc)
		}
	}
}

func TestSegmentNone(t *testing.T) {
	for _, proto := range []byte{protoTCP, protoUDP} {
		orig := l4Spec{proto: proto, flags: tcpSYN, payload: pattern(333)}.packet()
		hdr, pkt := partial(orig, VirtioNetHdrGSONone, 0)
		out := make([]byte, 2048)
		sizes := make([]int, 1)
		n, stride, err := Segment(hdr, pkt, 1500, out, overlayLayout, sizes)
		if err != nil || n != 1 || stride != 32+len(orig) {
			t.Fatalf("proto %d: n %d stride %d err %v", proto, n, stride, err)
		}
		if !bytes.Equal(out[16:16+sizes[0]], orig) {
			t.Errorf("proto %d: finished packet differs from the complete one", proto)
		}
		// Without NEEDS_CSUM it is copied as it is.
		n, _, err = Segment(VirtioNetHdr{}, orig, 1500, out, SegmentLayout{}, sizes)
		if err != nil || n != 1 || !bytes.Equal(out[:sizes[0]], orig) {
			t.Errorf("proto %d: pass-through: n %d err %v", proto, n, err)
		}
	}
}

func TestSegmentRefuses(t *testing.T) {
	tcp := l4Spec{proto: protoTCP, payload: pattern(5000)}.packet()
	hdr, pkt := partial(tcp, VirtioNetHdrGSOTCPv4, 1000)
	ipv6 := make([]byte, 100)
	ipv6[0] = 0x60
	tests := []struct {
		name  string
		hdr   VirtioNetHdr
		pkt   []byte
		mtu   int
		out   int
		sizes int
		short bool
	}{
		{"ipv6 packet", VirtioNetHdr{}, ipv6, 1500, 4096, 8, false},
		{"tcpv6", VirtioNetHdr{GSOType: VirtioNetHdrGSOTCPv6, GSOSize: 1000}, pkt, 1500, 65536, 64, false},
		{"gso size 0", VirtioNetHdr{GSOType: VirtioNetHdrGSOTCPv4}, pkt, 1500, 65536, 64, false},
		{"segments over the MTU", hdr, pkt, 1039, 65536, 64, false},
		{"out too short", hdr, pkt, 1500, 5000, 64, true},
		{"sizes too short", hdr, pkt, 1500, 65536, 4, true},
		{"checksum not at TCP's", func() VirtioNetHdr { h := hdr; h.CsumOffset = 6; return h }(), pkt, 1500, 65536, 64, false},
		{"UDP type on TCP", func() VirtioNetHdr { h := hdr; h.GSOType = VirtioNetHdrGSOUDPL4; return h }(), pkt, 1500, 65536, 64, false},
		{"fragment", hdr, modify(pkt, func(p []byte) { p[6] |= 0x20 }), 1500, 65536, 64, false},
		{"truncated", hdr, pkt[:3000], 1500, 65536, 64, false},
		{"bad data offset", hdr, modify(pkt, func(p []byte) { p[32] = 0x40 }), 1500, 65536, 64, false},
		{"unknown gso type", func() VirtioNetHdr { h := hdr; h.GSOType = 2; return h }(), pkt, 1500, 65536, 64, false},
		{"none over MTU", VirtioNetHdr{}, tcp, 1500, 65536, 64, false},
		{"none with csum in IP header", VirtioNetHdr{Flags: VirtioNetHdrFNeedsCsum, CsumStart: 4}, tcp[:1000], 1500, 65536, 64, false},
		{"none with bad IP checksum", VirtioNetHdr{}, modify(tcp[:100], func(p []byte) { p[2], p[3] = 0, 100 }), 1500, 65536, 64, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, _, err := Segment(tt.hdr, tt.pkt, tt.mtu, make([]byte, tt.out), overlayLayout, make([]int, tt.sizes))
			if err == nil {
				t.Fatalf("Segment made %d segments, want an error", n)
			}
			if errors.Is(err, io.ErrShortBuffer) != tt.short {
				t.Errorf("error %v: ErrShortBuffer %v, want %v", err, !tt.short, tt.short)
			}
		})
	}
}

func BenchmarkSegment(b *testing.B) {
	for _, partialCsum := range []bool{false, true} {
		b.Run(fmt.Sprintf("partial=%v", partialCsum), func(b *testing.B) {
			hdr, pkt := partial(l4Spec{payload: pattern(44 * 1360)}.packet(), VirtioNetHdrGSOTCPv4, 1360)
			out := make([]byte, 128<<10)
			sizes := make([]int, 64)
			layout := overlayLayout
			layout.PartialCsum = partialCsum
			b.SetBytes(int64(len(pkt)))
			for b.Loop() {
				if _, _, err := Segment(hdr, pkt, 1400, out, layout, sizes); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
