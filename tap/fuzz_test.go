package tap

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// Run with: go test -run='^$' -fuzz=FuzzFromVM ./tap/ (and FuzzToVM).
// Inputs worth keeping live in testdata/fuzz/.

// fromVMSeeds are frames that reach each branch of FromVM.
func fromVMSeeds() [][]byte {
	return [][]byte{
		arpRequestFrame(testVMAddr, testPeer),
		arpRequestFrame(zeroAddr, testVMAddr),
		arpRequestFrame(testVMAddr, testVMAddr),
		toGateway(udpTo(testPeer, 64, 0)),
		toGateway(udpTo(testPeer, 1500, ipv4FlagDF)),
		toGateway(udpTo(testPeer, 1500, 0)),
		toGateway(ipv4Spec{src: testVMAddr, dst: testPeer, proto: 17,
			options: []byte{1, 0x82, 4, 0xaa, 0xbb, 0x07, 7, 4, 0, 0, 0, 0}, payload: make([]byte, 1500)}.packet()),
		toGateway(ipv4Spec{src: testVMAddr, dst: testPeer, proto: protoICMP, flags: ipv4FlagDF,
			payload: append([]byte{3, 4}, make([]byte, 1500)...)}.packet()),
		ethFrame(testGatewayMAC, testVMMAC, etherTypeIPv6, make([]byte, 40)),
		ethFrame(testGatewayMAC, testVMMAC, etherTypeVLAN, append([]byte{0, 5, 8, 0}, udpTo(testPeer, 10, 0)...)),
	}
}

// fixIPv4Checksum makes the IPv4 header at b's start pass the checksum
// check when it is long enough to have one, so that the fuzzer gets past
// it to the logic behind.
func fixIPv4Checksum(b []byte) {
	if len(b) < ipv4MinHeaderLen {
		return
	}
	ihl := int(b[0]&0x0f) * 4
	if ihl >= ipv4MinHeaderLen && ihl <= len(b) {
		setIPv4Checksum(b[:ihl])
	}
}

func FuzzFromVM(f *testing.F) {
	for _, s := range fromVMSeeds() {
		f.Add(s, uint16(testMTU), false)
		f.Add(s, uint16(ipv4MinMTU), true)
	}
	// Fuzz functions run one at a time in each worker process, so one
	// buffer serves them all.
	replyBuf := make([]byte, ReplyBufLen)
	f.Fuzz(func(t *testing.T, frame []byte, mtu uint16, fixSum bool) {
		cfg := testGatewayConfig()
		cfg.MTU = max(int(mtu), ipv4MinMTU)
		g, err := NewGateway(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if fixSum && len(frame) > EthHeaderLen && binary.BigEndian.Uint16(frame[12:14]) == etherTypeIPv4 {
			fixIPv4Checksum(frame[EthHeaderLen:])
		}
		orig := bytes.Clone(frame)
		r := g.FromVM(frame, replyBuf)
		if !bytes.Equal(frame, orig) {
			t.Fatal("FromVM modified the frame")
		}
		var total uint64
		for _, v := range g.Counters() {
			total += v
		}
		if total != 1 {
			t.Fatalf("one frame counted %d times: %v", total, nonZeroCounters(g.Counters()))
		}
		if r.Verdict == Drop && g.Counters()["from_vm_forwarded"] != 0 {
			t.Fatal("dropped but counted as forwarded")
		}
		checkResult(t, g, frame, r)
	})
}

func FuzzToVM(f *testing.F) {
	f.Add(ipv4Spec{src: testPeer, dst: testVMAddr, proto: 17, payload: []byte("hello")}.packet(), false)
	f.Add(ipv4Spec{src: testPeer, dst: testVMAddr, proto: 6, options: []byte{0x94, 4, 0, 0}, payload: make([]byte, 1400)}.packet(), false)
	f.Add(ipv4Spec{src: testOutside, dst: testVMAddr, proto: 17}.packet(), false)
	f.Add(ipv4Spec{src: testPeer, dst: testPeer, proto: 17}.packet(), false)
	f.Add([]byte{0x45, 0, 0, 20}, true)
	f.Fuzz(func(t *testing.T, pkt []byte, fixSum bool) {
		g := newTestGateway(t)
		if fixSum {
			fixIPv4Checksum(pkt)
		}
		buf := append(make([]byte, EthHeaderLen), pkt...)
		frame, ok := g.ToVM(buf)
		if !bytes.Equal(buf[EthHeaderLen:], pkt) {
			t.Fatal("ToVM modified the packet")
		}
		c := g.Counters()
		var total uint64
		for _, v := range c {
			total += v
		}
		if total != 1 || ok != (c["to_vm_delivered"] == 1) {
			t.Fatalf("ok %v, counters %v", ok, nonZeroCounters(c))
		}
		if !ok {
			if frame != nil {
				t.Fatal("dropped packet returned a frame")
			}
			return
		}
		if len(frame) == 0 || &frame[0] != &buf[0] {
			t.Fatal("frame is not built in place")
		}
		if !bytes.Equal(frame[0:6], testVMMAC) || !bytes.Equal(frame[6:12], testGatewayMAC) ||
			binary.BigEndian.Uint16(frame[12:14]) != etherTypeIPv4 {
			t.Fatalf("Ethernet header % x", frame[:EthHeaderLen])
		}
		p, perr := checkIPv4(frame[EthHeaderLen:])
		if perr != ipv4OK || len(p) != len(frame)-EthHeaderLen {
			t.Fatalf("delivered an invalid packet (%d)", perr)
		}
		if !bytes.Equal(p[16:20], testVMAddr.AsSlice()) {
			t.Fatalf("delivered a packet for %v", p[16:20])
		}
	})
}
