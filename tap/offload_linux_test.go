//go:build linux

package tap

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestOffloadTCPThroughKernel has the kernel open a TCP connection through
// a TAP with offloads to a peer the test plays by hand. The SYN comes with
// a partial checksum that FromVMOffload finishes; after a SYN-ACK the
// kernel's large write arrives as one TSO frame that Segment cuts into
// valid segments; and data from the peer, cut with Segment and joined
// again by the Coalescer, goes up the kernel's stack as one GSO frame and
// reaches the socket intact.
func TestOffloadTCPThroughKernel(t *testing.T) {
	requireTAP(t)
	const mtu = 1400
	vmMAC := net.HardwareAddr{0x02, 0x52, 0x4e, 0x00, 0x00, 0x03}
	gwMAC := net.HardwareAddr{0x02, 0x52, 0x4e, 0xff, 0xff, 0xfd}
	prefix := netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 19, byte(testPrefix().Addr().As4()[2]), 1}), 24)
	peer := prefix.Addr().Next()
	// At most 3 segments per TSO frame: the 30000-byte write below makes
	// frames of as many as the initial window allows (10) otherwise.
	const maxSegs = 3
	d := openTest(t, Config{Name: testName(7), MTU: mtu, MAC: vmMAC, Addr: prefix, Offloads: true, GSOMaxSegs: maxSegs})
	if !d.Offloads().TSO() {
		t.Fatalf("offloads %v, want TSO", d.Offloads())
	}
	gw, err := NewGateway(GatewayConfig{Addr: prefix, GatewayMAC: gwMAC, VMMAC: vmMAC, MTU: mtu})
	if err != nil {
		t.Fatal(err)
	}

	frames := make(chan []byte, 256)
	go func() {
		defer close(frames)
		for {
			buf := make([]byte, VirtioNetHdrLen+EthHeaderLen+ipv4MaxLen)
			n, err := d.ReadFrame(buf)
			if err != nil {
				return
			}
			frames <- buf[:n]
		}
	}()
	replyBuf := make([]byte, ReplyBufLen+VirtioNetHdrLen)
	// next returns the gateway's result for the next IPv4 or ARP frame,
	// writing replies back.
	next := func(want Verdict) Result {
		t.Helper()
		for {
			select {
			case f, ok := <-frames:
				if !ok {
					t.Fatal("device closed")
				}
				var h VirtioNetHdr
				if err := h.Decode(f); err != nil {
					t.Fatal(err)
				}
				frame := f[VirtioNetHdrLen:]
				if et := binary.BigEndian.Uint16(frame[12:14]); et != etherTypeIPv4 && et != etherTypeARP {
					continue
				}
				r := gw.FromVMOffload(h, frame, replyBuf)
				if r.Verdict == Reply && want != Reply {
					if err := d.WriteFrame(r.Reply); err != nil {
						t.Fatal(err)
					}
					continue
				}
				if want == ForwardGSO && r.Verdict == Forward {
					continue // an ACK, or data before the window opened
				}
				if r.Verdict != want {
					t.Fatalf("verdict %v (header %v), want %v; counters %v", r.Verdict, h, want, nonZero(gw.Counters()))
				}
				return r
			case <-time.After(5 * time.Second):
				t.Fatalf("no frame while waiting for %v", want)
			}
		}
	}
	toVM := func(pkt []byte, h VirtioNetHdr) {
		t.Helper()
		buf := make([]byte, VirtioNetHdrLen+EthHeaderLen+len(pkt))
		h.Encode(buf)
		copy(buf[VirtioNetHdrLen+EthHeaderLen:], pkt)
		f, ok := gw.ToVMOffload(buf)
		if !ok {
			t.Fatalf("ToVMOffload dropped; %v", nonZero(gw.Counters()))
		}
		if err := d.WriteFrame(f); err != nil {
			t.Fatalf("write %v: %v", h, err)
		}
	}

	dialer := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptString(int(fd), unix.SOL_SOCKET, unix.SO_BINDTODEVICE, d.Name())
		})
		return errors.Join(err, serr)
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	type dialed struct {
		c   net.Conn
		err error
	}
	dialc := make(chan dialed, 1)
	go func() {
		c, err := dialer.DialContext(ctx, "tcp4", netip.AddrPortFrom(peer, 5201).String())
		dialc <- dialed{c, err}
	}()

	// The SYN: partial checksum, finished by the gateway.
	syn := next(Forward).Packet
	if syn[33]&tcpSYN == 0 || !l4ChecksumOK(syn) {
		t.Fatalf("first packet flags %#x, checksum ok %v", syn[33], l4ChecksumOK(syn))
	}
	vmPort := binary.BigEndian.Uint16(syn[20:22])
	vmSeq := binary.BigEndian.Uint32(syn[24:28]) + 1
	const mss = mtu - 40
	peerSeq := uint32(1000)
	fromPeer := func(flags byte, options, payload []byte) []byte {
		return l4Spec{src: peer, dst: prefix.Addr(), sport: 5201, dport: vmPort, df: true,
			seq: peerSeq, ack: vmSeq, flags: flags, window: 65535, options: options, payload: payload}.packet()
	}
	toVM(fromPeer(tcpSYN|tcpACK, []byte{2, 4, mss >> 8, mss & 0xff}, nil), VirtioNetHdr{})
	peerSeq++
	var conn net.Conn
	select {
	case dc := <-dialc:
		if dc.err != nil {
			t.Fatal(dc.err)
		}
		conn = dc.c
	case <-time.After(5 * time.Second):
		t.Fatal("handshake did not complete")
	}
	defer conn.Close()

	// The kernel's large write: one TSO frame, cut into valid segments.
	data := pattern(30000)
	go conn.Write(data)
	r := next(ForwardGSO)
	first := binary.BigEndian.Uint32(r.Packet[24:28]) - vmSeq
	if r.GSO.GSO() != VirtioNetHdrGSOTCPv4 || r.GSO.GSOSize != mss || len(r.Packet) <= mtu {
		t.Fatalf("large write came as %v, %d bytes", r.GSO, len(r.Packet))
	}
	if segs := (len(r.Packet) - 40 + mss - 1) / mss; segs > maxSegs {
		t.Fatalf("a TSO frame of %d segments; gso_max_segs is %d", segs, maxSegs)
	}
	out := make([]byte, 128<<10)
	sizes := make([]int, 128)
	n, stride, err := Segment(r.GSO, r.Packet, mtu, out, overlayLayout, sizes)
	if err != nil {
		t.Fatal(err)
	}
	var got []byte
	for i := range n {
		seg := out[i*stride+16:][:sizes[i]]
		if len(seg) > mtu || !ipv4HeaderOK(seg) || !l4ChecksumOK(seg) {
			t.Fatalf("segment %d: %d bytes, IPv4 ok %v, TCP ok %v", i, len(seg), ipv4HeaderOK(seg), l4ChecksumOK(seg))
		}
		if seq := binary.BigEndian.Uint32(seg[24:28]); seq != vmSeq+first+uint32(len(got)) {
			t.Fatalf("segment %d: seq %d, want %d", i, seq, vmSeq+first+uint32(len(got)))
		}
		got = append(got, seg[40:]...)
	}
	if int(first)+len(got) > len(data) || !bytes.Equal(got, data[first:int(first)+len(got)]) {
		t.Fatal("segments do not carry the written data")
	}
	t.Logf("kernel sent a %d-byte TSO frame, cut into %d segments", len(r.Packet), n)

	// The other way: the peer's 20000 bytes, cut and joined again, go to
	// the kernel as one GSO frame.
	sent := pattern(20001)[1:]
	hdr, big := partial(fromPeer(tcpACK|tcpPSH, nil, sent), VirtioNetHdrGSOTCPv4, mss)
	n, stride, err = Segment(hdr, big, mtu, out, SegmentLayout{}, sizes)
	if err != nil {
		t.Fatal(err)
	}
	c := NewCoalescer()
	var emitted int
	emit := func(f []byte) {
		emitted++
		fr, ok := gw.ToVMOffload(f)
		if !ok {
			t.Fatalf("ToVMOffload dropped; %v", nonZero(gw.Counters()))
		}
		if err := d.WriteFrame(fr); err != nil {
			t.Fatalf("write GSO frame: %v", err)
		}
	}
	for i := range n {
		c.Add(out[i*stride:][:sizes[i]], false, emit)
	}
	c.Flush(emit)
	if emitted != 1 {
		t.Fatalf("%d frames written, want one GSO frame", emitted)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	recv := make([]byte, len(sent))
	if _, err := io.ReadFull(conn, recv); err != nil {
		t.Fatalf("socket read: %v", err)
	}
	if !bytes.Equal(recv, sent) {
		t.Fatal("socket read other bytes than the peer sent")
	}

	// Segments whose checksums the sending node left partial, then a lone
	// one: a GSO frame and a plain frame, both NEEDS_CSUM, which the
	// kernel takes without computing a checksum.
	peerSeq += uint32(len(sent))
	sent = pattern(20001)[1:]
	hdr, big = partial(fromPeer(tcpACK, nil, sent), VirtioNetHdrGSOTCPv4, mss)
	n, stride, err = Segment(hdr, big, mtu, out, SegmentLayout{PartialCsum: true}, sizes)
	if err != nil {
		t.Fatal(err)
	}
	emitted = 0
	for i := range n {
		c.Add(out[i*stride:][:sizes[i]], true, emit)
	}
	peerSeq += uint32(len(sent))
	lone := pattern(501)[1:]
	_, p := partial(fromPeer(tcpACK|tcpPSH, nil, lone), VirtioNetHdrGSONone, 0)
	c.Add(p, true, emit)
	c.Flush(emit)
	if emitted != 2 {
		t.Fatalf("%d frames written, want a GSO frame and a lone segment", emitted)
	}
	sent = append(sent, lone...)
	recv = make([]byte, len(sent))
	if _, err := io.ReadFull(conn, recv); err != nil {
		t.Fatalf("socket read of the partial-checksum frames: %v", err)
	}
	if !bytes.Equal(recv, sent) {
		t.Fatal("socket read other bytes than the peer sent with partial checksums")
	}
}
