//go:build linux

package tap

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// requireTAP skips a test that needs to create TAP devices when it cannot,
// unless CI=true: there a skip would hide a broken runner, so it fails.
func requireTAP(t *testing.T) {
	t.Helper()
	var why string
	if os.Geteuid() != 0 {
		why = "needs root: creating a TAP device requires CAP_NET_ADMIN"
	} else if _, err := os.Stat("/dev/net/tun"); err != nil {
		why = fmt.Sprintf("needs /dev/net/tun: %v", err)
	}
	if why == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal(why + " (CI=true, so this is a failure, not a skip)")
	}
	t.Skip(why)
}

// testName is an interface name unique to this test run and to n.
func testName(n int) string {
	return fmt.Sprintf("rntest%d%d", os.Getpid()%10000, n)
}

// testPrefix is a /24 from the benchmarking range (RFC 2544), varied by
// process so that concurrent runs do not share one.
func testPrefix() netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(os.Getpid() % 256), 1}), 24)
}

func openTest(t *testing.T, cfg Config) *Linux {
	t.Helper()
	d, err := Open(cfg)
	if err != nil {
		t.Fatalf("Open(%+v): %v", cfg, err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func TestOpenRejectsLongName(t *testing.T) {
	// No root needed: the name is checked before anything is created.
	_, err := Open(Config{Name: "a-name-of-16-byt"})
	if err == nil || !strings.Contains(err.Error(), "15") {
		t.Fatalf("Open with a 16-byte name: %v, want an error naming the limit", err)
	}
}

func TestOpenConfiguresLink(t *testing.T) {
	requireTAP(t)
	mac := net.HardwareAddr{0x02, 0x52, 0x4e, 0x00, 0x00, 0x01}
	prefix := testPrefix()
	d := openTest(t, Config{Name: testName(1), MTU: 1400, MAC: mac, Addr: prefix, GSOMaxSegs: 44})

	if d.Name() != testName(1) {
		t.Errorf("Name() = %q, want %q", d.Name(), testName(1))
	}
	if d.MTU() != 1400 {
		t.Errorf("MTU() = %d, want 1400", d.MTU())
	}
	if !bytes.Equal(d.MAC(), mac) {
		t.Errorf("MAC() = %v, want %v", d.MAC(), mac)
	}

	link, err := netlink.LinkByName(d.Name())
	if err != nil {
		t.Fatal(err)
	}
	attrs := link.Attrs()
	if attrs.MTU != 1400 || !bytes.Equal(attrs.HardwareAddr, mac) || attrs.Flags&net.FlagUp == 0 || attrs.GSOMaxSegs != 44 {
		t.Errorf("link has MTU %d, MAC %v, flags %v, gso_max_segs %d; want 1400, %v, up, 44", attrs.MTU, attrs.HardwareAddr, attrs.Flags, attrs.GSOMaxSegs, mac)
	}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, a := range addrs {
		ones, _ := a.Mask.Size()
		found = found || a.IP.Equal(prefix.Addr().AsSlice()) && ones == prefix.Bits()
	}
	if !found {
		t.Errorf("link addresses %v lack %v", addrs, prefix)
	}
}

func TestOpenRefusesExistingName(t *testing.T) {
	requireTAP(t)
	openTest(t, Config{Name: testName(2)})
	if d, err := Open(Config{Name: testName(2)}); err == nil {
		d.Close()
		t.Fatal("second Open with the same name succeeded; it must not attach to an existing device")
	}
}

func TestOpenPicksNameAndMAC(t *testing.T) {
	requireTAP(t)
	d := openTest(t, Config{})
	if d.Name() == "" || len(d.MAC()) != 6 || d.MTU() == 0 {
		t.Errorf("got name %q, MAC %v, MTU %d; want what the kernel chose", d.Name(), d.MAC(), d.MTU())
	}
}

func TestCloseUnblocksReadAndRemovesDevice(t *testing.T) {
	requireTAP(t)
	d := openTest(t, Config{Name: testName(3)})

	// One reader of each kind, both blocked when Close comes.
	errc := make(chan error, 2)
	go func() {
		buf := make([]byte, 2048)
		for {
			// The kernel may send IPv6 router solicitations and the
			// like first; read until Close ends it.
			if _, err := d.ReadFrame(buf); err != nil {
				errc <- fmt.Errorf("ReadFrame: %w", err)
				return
			}
		}
	}()
	go func() {
		bufs, sizes := [][]byte{make([]byte, 2048), make([]byte, 2048)}, make([]int, 2)
		for {
			if _, err := d.ReadFrames(bufs, sizes); err != nil {
				errc <- fmt.Errorf("ReadFrames: %w", err)
				return
			}
		}
	}()
	time.Sleep(50 * time.Millisecond) // let the readers block
	if err := d.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for range 2 {
		select {
		case err := <-errc:
			if !errors.Is(err, os.ErrClosed) {
				t.Errorf("after Close: %v, want os.ErrClosed", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Close did not unblock both readers")
		}
	}

	_, err := netlink.LinkByName(testName(3))
	var notFound netlink.LinkNotFoundError
	if !errors.As(err, &notFound) {
		t.Errorf("LinkByName after Close: %v, want LinkNotFoundError", err)
	}
	if err := d.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestRoundTripThroughGateway has the kernel send a UDP datagram to a peer
// in the TAP's subnet: the gateway answers the kernel's ARP, takes the
// packet out of its frame, and a reply built through ToVM reaches the
// socket. Nothing leaves the TAP: the socket is bound to it.
func TestRoundTripThroughGateway(t *testing.T) {
	requireTAP(t)
	vmMAC := net.HardwareAddr{0x02, 0x52, 0x4e, 0x00, 0x00, 0x02}
	gwMAC := net.HardwareAddr{0x02, 0x52, 0x4e, 0xff, 0xff, 0xfe}
	prefix := testPrefix()
	peer := prefix.Addr().Next()
	d := openTest(t, Config{Name: testName(4), MTU: 1400, MAC: vmMAC, Addr: prefix})
	gw, err := NewGateway(GatewayConfig{Addr: prefix, GatewayMAC: gwMAC, VMMAC: d.MAC(), MTU: 1400})
	if err != nil {
		t.Fatal(err)
	}

	frames := make(chan []byte, 64)
	go func() {
		for {
			buf := make([]byte, 2048)
			n, err := d.ReadFrame(buf)
			if err != nil {
				close(frames)
				return
			}
			frames <- buf[:n]
		}
	}()
	// next returns the gateway's verdict on the next frame that is not
	// the kernel's IPv6 chatter.
	next := func(want Verdict) Result {
		t.Helper()
		reply := make([]byte, ReplyBufLen)
		for {
			select {
			case f, ok := <-frames:
				if !ok {
					t.Fatal("device closed")
				}
				if binary.BigEndian.Uint16(f[12:14]) == etherTypeIPv6 {
					continue
				}
				r := gw.FromVM(f, reply)
				if r.Verdict != want {
					t.Fatalf("verdict %v on frame % x, want %v; counters %v", r.Verdict, f, want, nonZero(gw.Counters()))
				}
				return r
			case <-time.After(5 * time.Second):
				t.Fatalf("no frame from the kernel while waiting for %v", want)
			}
		}
	}

	dialer := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptString(int(fd), unix.SOL_SOCKET, unix.SO_BINDTODEVICE, d.Name())
		})
		return errors.Join(err, serr)
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := dialer.DialContext(ctx, "udp4", netip.AddrPortFrom(peer, 9).String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}

	arp := next(Reply)
	if err := d.WriteFrame(arp.Reply); err != nil {
		t.Fatalf("write ARP reply: %v", err)
	}
	fwd := next(Forward)
	if fwd.Dst != peer || !bytes.HasSuffix(fwd.Packet, []byte("ping")) {
		t.Fatalf("forwarded %v % x, want the datagram to %v", fwd.Dst, fwd.Packet, peer)
	}

	// Answer from the peer: swap addresses and ports.
	ihl := int(fwd.Packet[0]&0x0f) * 4
	buf := make([]byte, EthHeaderLen+ihl+8+4)
	pkt := buf[EthHeaderLen:]
	copy(pkt, fwd.Packet[:ihl+8])
	copy(pkt[12:16], fwd.Packet[16:20])
	copy(pkt[16:20], fwd.Packet[12:16])
	binary.BigEndian.PutUint16(pkt[2:4], uint16(len(pkt)))
	setIPv4Checksum(pkt[:ihl])
	udp := pkt[ihl:]
	copy(udp[0:2], fwd.Packet[ihl+2:ihl+4])
	copy(udp[2:4], fwd.Packet[ihl:ihl+2])
	binary.BigEndian.PutUint16(udp[4:6], 8+4)
	binary.BigEndian.PutUint16(udp[6:8], 0) // no checksum
	copy(udp[8:], "pong")
	frame, ok := gw.ToVM(buf)
	if !ok {
		t.Fatalf("ToVM dropped the reply; counters %v", nonZero(gw.Counters()))
	}
	if err := d.WriteFrame(frame); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := make([]byte, 16)
	n, err := conn.Read(got)
	if err != nil || string(got[:n]) != "pong" {
		t.Fatalf("socket read %q, %v; want pong", got[:n], err)
	}
}

func nonZero(m map[string]uint64) map[string]uint64 {
	out := make(map[string]uint64)
	for k, v := range m {
		if v != 0 {
			out[k] = v
		}
	}
	return out
}

func TestOpenWithOffloads(t *testing.T) {
	requireTAP(t)
	d := openTest(t, Config{Name: testName(5), Offloads: true})
	off := d.Offloads()
	if !off.VnetHdr || !off.TSO() || off.Flags&tunFCsum == 0 {
		t.Fatalf("Offloads() = %v, want vnet_hdr with csum and tso4", off)
	}
	t.Logf("offloads: %v", off)
	plain := openTest(t, Config{Name: testName(6)})
	if got := plain.Offloads(); got.VnetHdr || got.String() != "off" {
		t.Errorf("device without Config.Offloads reports %v", got)
	}
}

// ReadFrames takes every frame the kernel has queued in one call, and
// allocates nothing doing so.
func TestReadFramesTakesWhatIsQueued(t *testing.T) {
	requireTAP(t)
	prefix := netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(os.Getpid()%256 + 1), 1}), 24)
	d := openTest(t, Config{Name: testName(9), MTU: 1400, Addr: prefix})
	link, err := netlink.LinkByIndex(d.index)
	if err != nil {
		t.Fatal(err)
	}
	// A static neighbour, so that datagrams leave at once, no ARP first.
	neighbour := prefix.Addr().Next()
	if err := netlink.NeighAdd(&netlink.Neigh{
		LinkIndex:    d.index,
		State:        netlink.NUD_PERMANENT,
		IP:           neighbour.AsSlice(),
		HardwareAddr: net.HardwareAddr{0x02, 0x52, 0x4e, 0x00, 0x00, 0x09},
	}); err != nil {
		t.Fatalf("neighbour on %s: %v", link.Attrs().Name, err)
	}
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: prefix.Addr().AsSlice()})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	to := &net.UDPAddr{IP: neighbour.AsSlice(), Port: 9}

	bufs := make([][]byte, 8)
	for i := range bufs {
		bufs[i] = make([]byte, 2048)
	}
	sizes := make([]int, len(bufs))
	const queued = 5
	// sendAndRead queues datagrams and reads them back; the kernel's own
	// frames (IPv6 router solicitations and the like) may come along.
	sendAndRead := func() int {
		for i := range queued {
			if _, err := conn.WriteToUDP([]byte{byte(i)}, to); err != nil {
				t.Fatal(err)
			}
		}
		var udp int
		for udp < queued {
			n, err := d.ReadFrames(bufs, sizes)
			if err != nil {
				t.Fatal(err)
			}
			for i := range n {
				f := bufs[i][:sizes[i]]
				if len(f) > EthHeaderLen+20 && binary.BigEndian.Uint16(f[12:14]) == etherTypeIPv4 && f[EthHeaderLen+9] == protoUDP {
					udp++
				}
			}
			if udp < queued && n == 1 {
				t.Fatalf("a read took one frame with %d datagrams still queued", queued-udp)
			}
		}
		return udp
	}
	if got := sendAndRead(); got != queued {
		t.Fatalf("%d datagrams read, want %d", got, queued)
	}
	// Sending allocates nothing here either (0 measured), so any
	// allocation is ReadFrames'.
	if allocs := testing.AllocsPerRun(20, func() { sendAndRead() }); allocs > 0 {
		t.Errorf("%v allocations per %d datagrams sent and read", allocs, queued)
	}
}
