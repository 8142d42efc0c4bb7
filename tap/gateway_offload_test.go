package tap

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// fromVMGSO is a frame the VM's kernel would hand a TAP with offloads: a
// TCP packet of payload bytes, to be cut at mss, checksum left partial.
func fromVMGSO(payload, mss int, df bool) (VirtioNetHdr, []byte, []byte) {
	spec := l4Spec{src: testVMAddr, dst: testPeer, df: df, flags: tcpACK | tcpPSH, payload: pattern(payload)}
	orig := spec.packet()
	gso := uint8(VirtioNetHdrGSOTCPv4)
	if payload <= mss {
		gso = VirtioNetHdrGSONone
	}
	h, pkt := partial(orig, gso, mss)
	if gso == VirtioNetHdrGSONone {
		h.GSOSize = 0
	}
	h.CsumStart += EthHeaderLen
	h.HdrLen = EthHeaderLen + 40 + 100 // a hint, and here a wrong one
	return h, toGateway(pkt), orig
}

func TestFromVMOffload(t *testing.T) {
	type check func(t *testing.T, r Result, orig []byte, replyBuf []byte)
	tests := []struct {
		name    string
		payload int
		mss     int
		df      bool
		mutate  func(h *VirtioNetHdr, frame []byte)
		verdict Verdict
		counter string
		check   check
	}{
		{"gso that fits", 20000, testMTU - 40, true, nil, ForwardGSO, "from_vm_forwarded_gso",
			func(t *testing.T, r Result, orig, _ []byte) {
				if r.GSO.CsumStart != 20 || r.GSO.CsumOffset != 16 || r.GSO.GSOSize != testMTU-40 || r.Dst != testPeer {
					t.Fatalf("GSO %v dst %v", r.GSO, r.Dst)
				}
				out := make([]byte, 64<<10)
				sizes := make([]int, 64)
				n, stride, err := Segment(r.GSO, r.Packet, testMTU, out, overlayLayout, sizes)
				if err != nil || n != (20000+testMTU-41)/(testMTU-40) {
					t.Fatalf("Segment: %d, %v", n, err)
				}
				for i := range n {
					if seg := out[i*stride+16:][:sizes[i]]; !l4ChecksumOK(seg) || len(seg) > testMTU {
						t.Errorf("segment %d: %d bytes, checksum ok %v", i, len(seg), l4ChecksumOK(seg))
					}
				}
			}},
		{"gso too big with DF", 20000, testMTU, true, nil, Reply, "from_vm_frag_needed_sent",
			func(t *testing.T, r Result, _, replyBuf []byte) {
				if &r.Reply[0] != &replyBuf[0] || !bytes.Equal(r.Reply[:VirtioNetHdrLen], make([]byte, VirtioNetHdrLen)) {
					t.Fatal("reply does not start with a zero vnet header in replyBuf")
				}
				f := r.Reply[VirtioNetHdrLen:]
				icmp := f[EthHeaderLen+20:]
				if icmp[0] != icmpDestUnreachable || icmp[1] != icmpCodeFragNeeded || binary.BigEndian.Uint16(icmp[6:8]) != testMTU {
					t.Errorf("ICMP % x", icmp[:8])
				}
			}},
		{"gso too big without DF", 20000, testMTU, false, nil, Drop, "from_vm_drop_gso_too_big", nil},
		{"small with partial checksum", 500, 1460, true, nil, Forward, "from_vm_forwarded",
			func(t *testing.T, r Result, orig, _ []byte) {
				if !bytes.Equal(r.Packet, orig) {
					t.Error("checksum not finished in place")
				}
			}},
		{"partial checksum, fragmented", 2000, 2000, false, nil, ForwardFragments, "from_vm_fragmented",
			func(t *testing.T, r Result, orig, _ []byte) {
				var p []byte
				for i, f := range r.Fragments {
					ihl := int(f[0]&0x0f) * 4
					if i == 0 {
						p = append(p, f...)
					} else {
						p = append(p, f[ihl:]...)
					}
				}
				if !bytes.Equal(p[20:], orig[20:]) {
					t.Error("fragments do not carry the finished packet")
				}
			}},
		{"partial checksum past the packet", 500, 1460, true, func(h *VirtioNetHdr, _ []byte) { h.CsumOffset = 600 }, Drop, "from_vm_drop_bad_vnet_hdr", nil},
		{"partial checksum in the IP header", 500, 1460, true, func(h *VirtioNetHdr, _ []byte) { h.CsumStart = EthHeaderLen + 2; h.CsumOffset = 0 }, Drop, "from_vm_drop_bad_vnet_hdr", nil},
		{"gso size 0", 20000, 1000, true, func(h *VirtioNetHdr, _ []byte) { h.GSOSize = 0 }, Drop, "from_vm_drop_bad_vnet_hdr", nil},
		{"tcpv6 on IPv4", 20000, 1000, true, func(h *VirtioNetHdr, _ []byte) { h.GSOType = VirtioNetHdrGSOTCPv6 }, Drop, "from_vm_drop_bad_vnet_hdr", nil},
		{"udp type on TCP", 20000, 1000, true, func(h *VirtioNetHdr, _ []byte) { h.GSOType = VirtioNetHdrGSOUDPL4 }, Drop, "from_vm_drop_bad_vnet_hdr", nil},
		{"gso to own address", 20000, 1000, true, func(_ *VirtioNetHdr, f []byte) {
			copy(f[EthHeaderLen+16:], testVMAddr.AsSlice())
			fixIPv4Sum(f)
		}, Drop, "from_vm_drop_dst_own_address", nil},
		{"gso bad IPv4 checksum", 20000, 1000, true, func(_ *VirtioNetHdr, f []byte) { f[EthHeaderLen+8]-- }, Drop, "from_vm_drop_ipv4_bad_checksum", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newTestGateway(t)
			h, frame, orig := fromVMGSO(tt.payload, tt.mss, tt.df)
			if tt.mutate != nil {
				tt.mutate(&h, frame)
			}
			replyBuf := make([]byte, ReplyBufLen+VirtioNetHdrLen)
			r := g.FromVMOffload(h, frame, replyBuf)
			c := nonZero(g.Counters())
			if r.Verdict != tt.verdict || c[tt.counter] != 1 || len(c) != 1 {
				t.Fatalf("verdict %v, counters %v; want %v, %s", r.Verdict, c, tt.verdict, tt.counter)
			}
			if tt.check != nil {
				tt.check(t, r, orig, replyBuf)
			}
		})
	}
}

func TestFromVMOffloadPlainFrames(t *testing.T) {
	g := newTestGateway(t)
	replyBuf := make([]byte, ReplyBufLen+VirtioNetHdrLen)
	r := g.FromVMOffload(VirtioNetHdr{}, arpRequestFrame(testVMAddr, testPeer), replyBuf)
	if r.Verdict != Reply || len(r.Reply) != VirtioNetHdrLen+arpReplyLen || !bytes.Equal(r.Reply[:VirtioNetHdrLen], make([]byte, VirtioNetHdrLen)) {
		t.Fatalf("ARP: %v, %d-byte reply", r.Verdict, len(r.Reply))
	}
	r = g.FromVMOffload(VirtioNetHdr{}, toGateway(udpTo(testPeer, 100, 0)), replyBuf)
	if r.Verdict != Forward {
		t.Fatalf("plain UDP: %v", r.Verdict)
	}
	if r = g.FromVMOffload(VirtioNetHdr{}, nil, replyBuf[:5]); r.Verdict != Drop {
		t.Fatalf("tiny replyBuf: %v", r.Verdict)
	}
}

func TestToVMOffload(t *testing.T) {
	g := newTestGateway(t)
	spec := l4Spec{flags: tcpACK, payload: pattern(30000)}
	var frames [][]byte
	c := NewCoalescer()
	emit := func(f []byte) {
		out, ok := g.ToVMOffload(f)
		if !ok {
			t.Fatalf("ToVMOffload dropped; %v", nonZero(g.Counters()))
		}
		frames = append(frames, bytes.Clone(out))
	}
	for _, s := range segmentsOf(t, spec, 1400) {
		c.Add(s, false, emit)
	}
	c.Flush(emit)
	if len(frames) != 1 {
		t.Fatalf("%d frames", len(frames))
	}
	f := frames[0]
	var h VirtioNetHdr
	h.Decode(f)
	eth := f[VirtioNetHdrLen:]
	if h.GSOType != VirtioNetHdrGSOTCPv4 || !bytes.Equal(eth[0:6], testVMMAC) || !bytes.Equal(eth[6:12], testGatewayMAC) ||
		len(eth) != EthHeaderLen+40+30000 {
		t.Fatalf("frame %v, Ethernet % x, %d bytes", h, eth[:EthHeaderLen], len(eth))
	}
	if _, ok := g.ToVMOffload(make([]byte, 5)); ok {
		t.Error("ToVMOffload took 5 bytes")
	}
}
