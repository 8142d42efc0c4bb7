package tap

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"testing"
)

// collect runs pkts through a Coalescer and returns copies of the frames.
// partial says that their checksums are partial.
func collect(pkts [][]byte, partial bool) [][]byte {
	var frames [][]byte
	emit := func(f []byte) { frames = append(frames, bytes.Clone(f)) }
	c := NewCoalescer()
	for _, p := range pkts {
		c.Add(p, partial, emit)
	}
	c.Flush(emit)
	return frames
}

// segmentsOf cuts spec's packet, as the sending node would, and returns
// the segments.
func segmentsOf(t *testing.T, spec l4Spec, mss int) [][]byte {
	return segmentsWith(t, spec, mss, SegmentLayout{})
}

// segmentsWith is segmentsOf with the given layout.
func segmentsWith(t *testing.T, spec l4Spec, mss int, layout SegmentLayout) [][]byte {
	t.Helper()
	hdr, pkt := partial(spec.packet(), VirtioNetHdrGSOTCPv4, mss)
	out := make([]byte, 256<<10)
	sizes := make([]int, 256)
	n, stride, err := Segment(hdr, pkt, 1500, out, layout, sizes)
	if err != nil {
		t.Fatal(err)
	}
	segs := make([][]byte, n)
	for i := range segs {
		segs[i] = bytes.Clone(out[i*stride+layout.Headroom:][:sizes[i]])
	}
	return segs
}

func TestCoalesceRoundTrip(t *testing.T) {
	ts := []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2}
	for _, tc := range []struct {
		payload, mss int
		flags        byte
		options      []byte
	}{
		{2 * 1448, 1448, tcpACK, nil},
		{10*1360 + 7, 1360, tcpACK | tcpPSH, nil},
		{65535 - 52, 1348, tcpACK | tcpPSH, ts},
		{1000, 1000, tcpACK | tcpPSH, nil},
	} {
		t.Run(fmt.Sprintf("%d/%d", tc.payload, tc.mss), func(t *testing.T) {
			spec := l4Spec{id: 0xfff0, df: true, seq: 0xfffff000, ack: 1, flags: tc.flags, options: tc.options, payload: pattern(tc.payload)}
			orig := spec.packet()
			frames := collect(segmentsOf(t, spec, tc.mss), false)
			if len(frames) != 1 {
				t.Fatalf("%d frames, want 1", len(frames))
			}
			f := frames[0]
			var h VirtioNetHdr
			if err := h.Decode(f); err != nil {
				t.Fatal(err)
			}
			pkt := f[coalesceIPOff:]
			if !bytes.Equal(f[VirtioNetHdrLen:coalesceIPOff], make([]byte, EthHeaderLen)) {
				t.Errorf("Ethernet placeholder % x, want zeros", f[VirtioNetHdrLen:coalesceIPOff])
			}
			if tc.payload <= tc.mss {
				if h != (VirtioNetHdr{Flags: VirtioNetHdrFDataValid}) || !bytes.Equal(pkt, orig) {
					t.Fatalf("single segment: %v, packet changed %v", h, !bytes.Equal(pkt, orig))
				}
				return
			}
			hl := 40 + len(tc.options)
			want := VirtioNetHdr{Flags: VirtioNetHdrFNeedsCsum, GSOType: VirtioNetHdrGSOTCPv4,
				HdrLen: uint16(EthHeaderLen + hl), GSOSize: uint16(tc.mss), CsumStart: EthHeaderLen + 20, CsumOffset: 16}
			if h != want {
				t.Fatalf("header %v, want %v", h, want)
			}
			if err := h.Validate(f[VirtioNetHdrLen:]); err != nil {
				t.Fatal(err)
			}
			if !ipv4HeaderOK(pkt) {
				t.Error("IPv4 header checksum")
			}
			if got, want := binary.BigEndian.Uint16(pkt[20+16:]), refPseudo(pkt); got != want {
				t.Errorf("checksum field %#x, want the pseudo-header sum %#x", got, want)
			}
			// Finished as the kernel would, it is the original packet.
			ipHdr, _ := h.Rebase(EthHeaderLen)
			finishCsum(ipHdr, pkt)
			if !bytes.Equal(pkt, orig) {
				t.Errorf("coalesced packet differs from the original:\n% x\n% x", pkt[:60], orig[:60])
			}
		})
	}
}

func TestCoalesceRefuses(t *testing.T) {
	base := l4Spec{id: 100, df: true, seq: 5000, ack: 9, flags: tcpACK, payload: pattern(1000)}
	seg := func(i int, f func(*l4Spec)) []byte {
		s := base
		s.id += uint16(i)
		s.seq += uint32(i * 1000)
		if f != nil {
			f(&s)
		}
		return s.packet()
	}
	mangle := func(p []byte, f func([]byte)) []byte { f(p); return p }
	tests := []struct {
		name string
		pkts [][]byte
		want []string // per frame: "gso:N" (N segments), "one", "pass"
	}{
		{"contiguous", [][]byte{seg(0, nil), seg(1, nil), seg(2, nil)}, []string{"gso:3"}},
		{"gap in sequence", [][]byte{seg(0, nil), seg(2, func(s *l4Spec) { s.id-- })}, []string{"one", "one"}},
		{"another flow", [][]byte{seg(0, nil), seg(1, func(s *l4Spec) { s.sport++ })}, []string{"one", "one"}},
		{"another source", [][]byte{seg(0, nil), seg(1, func(s *l4Spec) { s.src = testPeer.Next() })}, []string{"one", "one"}},
		{"FIN passes through", [][]byte{seg(0, nil), seg(1, func(s *l4Spec) { s.flags |= tcpFIN })}, []string{"one", "pass"}},
		{"ECE passes through", [][]byte{seg(0, nil), seg(1, func(s *l4Spec) { s.flags |= tcpECE })}, []string{"one", "pass"}},
		{"PSH ends a packet", [][]byte{seg(0, nil), seg(1, func(s *l4Spec) { s.flags |= tcpPSH }), seg(2, nil), seg(3, nil)}, []string{"gso:2", "gso:2"}},
		{"short segment ends a packet", [][]byte{seg(0, nil), seg(1, func(s *l4Spec) { s.payload = s.payload[:500] }), seg(2, func(s *l4Spec) { s.seq -= 500 })}, []string{"gso:2", "one"}},
		{"longer segment", [][]byte{seg(0, nil), seg(1, func(s *l4Spec) { s.payload = pattern(1001) })}, []string{"one", "one"}},
		{"ID not consecutive", [][]byte{seg(0, nil), seg(1, func(s *l4Spec) { s.id = 100 })}, []string{"one", "one"}},
		{"different ack", [][]byte{seg(0, nil), seg(1, func(s *l4Spec) { s.ack++ })}, []string{"one", "one"}},
		{"different window", [][]byte{seg(0, nil), seg(1, func(s *l4Spec) { s.window++ })}, []string{"one", "one"}},
		{"different TTL", [][]byte{seg(0, nil), seg(1, func(s *l4Spec) { s.ttl = 3 })}, []string{"one", "one"}},
		{"ECN mark", [][]byte{seg(0, nil), seg(1, func(s *l4Spec) { s.tos = 3 })}, []string{"one", "one"}},
		{"different timestamps", [][]byte{
			seg(0, func(s *l4Spec) { s.options = []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0} }),
			seg(1, func(s *l4Spec) { s.options = []byte{1, 1, 8, 10, 0, 0, 0, 2, 0, 0, 0, 0} })}, []string{"one", "one"}},
		{"bad checksum passes through", [][]byte{seg(0, nil), mangle(seg(1, nil), func(p []byte) { p[100]++ }), seg(2, nil)}, []string{"one", "pass", "one"}},
		{"UDP between", [][]byte{seg(0, nil), l4Spec{proto: protoUDP, payload: pattern(10)}.packet(), seg(1, nil)}, []string{"one", "pass", "one"}},
		{"not IPv4", [][]byte{seg(0, nil), {0x60, 0, 0}, seg(1, nil)}, []string{"one", "pass", "one"}},
		{"pure ACK", [][]byte{seg(0, func(s *l4Spec) { s.payload = nil }), seg(0, func(s *l4Spec) { s.payload = nil; s.id++ })}, []string{"pass", "pass"}},
		{"64 KiB bound", func() [][]byte {
			var p [][]byte
			for i := range 70 {
				p = append(p, seg(i, nil))
			}
			return p
		}(), []string{"gso:65", "gso:5"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			frames := collect(tt.pkts, false)
			var got []string
			var n int
			for _, f := range frames {
				var h VirtioNetHdr
				h.Decode(f)
				pkt := f[coalesceIPOff:]
				switch {
				case h.GSOType == VirtioNetHdrGSOTCPv4:
					got = append(got, fmt.Sprintf("gso:%d", (len(pkt)-40+int(h.GSOSize)-1)/int(h.GSOSize)))
					if len(pkt) > ipv4MaxLen {
						t.Errorf("%d-byte packet", len(pkt))
					}
				case h.Flags == VirtioNetHdrFDataValid:
					got = append(got, "one")
				case h == VirtioNetHdr{}:
					got = append(got, "pass")
				default:
					got = append(got, h.String())
				}
				n += len(pkt)
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("frames %v, want %v", got, tt.want)
			}
		})
	}
}

func TestCoalesceAllocatesNothing(t *testing.T) {
	segs := segmentsOf(t, l4Spec{payload: pattern(20000)}, 1400)
	c := NewCoalescer()
	emit := func([]byte) {}
	allocs := testing.AllocsPerRun(100, func() {
		for _, s := range segs {
			c.Add(s, false, emit)
		}
		c.Flush(emit)
	})
	if allocs != 0 {
		t.Errorf("%v allocations per batch", allocs)
	}
}

func BenchmarkCoalesce(b *testing.B) {
	for _, partial := range []bool{false, true} {
		b.Run(fmt.Sprintf("partial=%v", partial), func(b *testing.B) {
			segs := segmentsWith(&testing.T{}, l4Spec{payload: pattern(61600)}, 1400, SegmentLayout{PartialCsum: partial})
			c := NewCoalescer()
			emit := func([]byte) {}
			b.SetBytes(61600)
			for b.Loop() {
				for _, s := range segs {
					c.Add(s, partial, emit)
				}
				c.Flush(emit)
			}
		})
	}
}

// Segments whose checksums the sender left partial join as checked ones
// do, the joined frame marked NEEDS_CSUM; cut again, with checksums, they
// are the segments of a sender that finished them.
func TestCoalescePartialChecksums(t *testing.T) {
	spec := l4Spec{flags: tcpACK | tcpPSH, payload: pattern(20000)}
	want := segmentsOf(t, spec, 1400)
	segs := segmentsWith(t, spec, 1400, SegmentLayout{PartialCsum: true})
	if len(segs) != len(want) {
		t.Fatalf("%d partial segments, %d complete", len(segs), len(want))
	}
	for i, s := range segs {
		off := ipv4MinHeaderLen + tcpCsumOffset
		if got, pseudo := binary.BigEndian.Uint16(s[off:]), refPseudo(s); got != pseudo {
			t.Fatalf("segment %d: checksum field %#04x, want the pseudo-header sum %#04x", i, got, pseudo)
		}
		fin := bytes.Clone(s)
		if !FinishCsum(fin) || !bytes.Equal(fin, want[i]) {
			t.Fatalf("segment %d, finished, differs from the complete one", i)
		}
	}

	frames := collect(segs, true)
	if len(frames) != 1 {
		t.Fatalf("%d frames, want 1", len(frames))
	}
	var h VirtioNetHdr
	if err := h.Decode(frames[0]); err != nil || h.GSOType != VirtioNetHdrGSOTCPv4 || !h.NeedsCsum() {
		t.Fatalf("frame header %v (%v)", h, err)
	}
	ipHdr, err := h.Rebase(EthHeaderLen)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]byte, 256<<10)
	sizes := make([]int, 256)
	n, stride, err := Segment(ipHdr, frames[0][coalesceIPOff:], 1500, out, SegmentLayout{}, sizes)
	if err != nil || n != len(want) {
		t.Fatalf("cut again: %d segments, %v", n, err)
	}
	for i := range n {
		if !bytes.Equal(out[i*stride:][:sizes[i]], want[i]) {
			t.Fatalf("segment %d, cut again, differs", i)
		}
	}
}

// A partial checksum that is not joined reaches the kernel with a header
// that says where to finish it; one that cannot be partial goes as it is.
func TestCoalescePartialAlone(t *testing.T) {
	withPseudo := func(p []byte) []byte {
		_, l4, off, ok := partialCsum(p)
		if !ok {
			t.Fatal("no partial checksum")
		}
		binary.BigEndian.PutUint16(p[l4+off:], refPseudo(p))
		return p
	}
	tcp := withPseudo(l4Spec{flags: tcpACK | tcpPSH, payload: pattern(700)}.packet())
	udp := withPseudo(l4Spec{proto: protoUDP, payload: pattern(900)}.packet())
	syn := withPseudo(l4Spec{flags: tcpSYN}.packet())
	icmp := ipv4Spec{src: testPeer, dst: testVMAddr, proto: 1, payload: pattern(20)}.packet()
	tests := []struct {
		name string
		pkt  []byte
		want VirtioNetHdr
	}{
		{"TCP segment", tcp, VirtioNetHdr{Flags: VirtioNetHdrFNeedsCsum, CsumStart: EthHeaderLen + 20, CsumOffset: tcpCsumOffset}},
		{"UDP", udp, VirtioNetHdr{Flags: VirtioNetHdrFNeedsCsum, CsumStart: EthHeaderLen + 20, CsumOffset: udpCsumOffset}},
		{"SYN", syn, VirtioNetHdr{Flags: VirtioNetHdrFNeedsCsum, CsumStart: EthHeaderLen + 20, CsumOffset: tcpCsumOffset}},
		{"ICMP", icmp, VirtioNetHdr{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			frames := collect([][]byte{bytes.Clone(tt.pkt)}, true)
			if len(frames) != 1 {
				t.Fatalf("%d frames", len(frames))
			}
			var h VirtioNetHdr
			if err := h.Decode(frames[0]); err != nil || h != tt.want {
				t.Fatalf("header %v (%v), want %v", h, err, tt.want)
			}
			if !bytes.Equal(frames[0][coalesceIPOff:], tt.pkt) {
				t.Fatal("packet changed")
			}
			if h.NeedsCsum() {
				if err := h.Validate(frames[0][VirtioNetHdrLen:]); err != nil {
					t.Fatal(err)
				}
				fin := bytes.Clone(frames[0][coalesceIPOff:])
				FinishCsum(fin)
				if !l4ChecksumOK(fin) {
					t.Fatal("finished where the header says: bad checksum")
				}
			}
		})
	}
}

func TestFinishCsumRefuses(t *testing.T) {
	frag := l4Spec{proto: protoUDP, payload: pattern(100)}.packet()
	binary.BigEndian.PutUint16(frag[6:8], ipv4FlagMF)
	binary.BigEndian.PutUint16(frag[10:12], 0)
	binary.BigEndian.PutUint16(frag[10:12], ^refSum16(frag[:20], 0))
	short := l4Spec{payload: pattern(10)}.packet()[:30]
	for name, p := range map[string][]byte{
		"fragment":  frag,
		"ICMP":      ipv4Spec{src: testPeer, dst: testVMAddr, proto: 1}.packet(),
		"truncated": short,
		"empty":     nil,
	} {
		orig := bytes.Clone(p)
		if FinishCsum(p) || !bytes.Equal(p, orig) {
			t.Errorf("%s: finished, or changed", name)
		}
	}
}
