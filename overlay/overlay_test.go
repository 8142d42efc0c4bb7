package overlay

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// testNode is an overlay on loopback that records what it delivers.
type testNode struct {
	*Overlay
	got chan []byte
	// partials counts packets delivered with a partial checksum.
	partials atomic.Int64
}

func newTestNode(t testing.TB, vip string, suite Suite, opts ...func(*Config)) *testNode {
	t.Helper()
	key, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	n := &testNode{got: make(chan []byte, 1024)}
	cfg := Config{
		Identity:     key,
		ControlAddrs: []string{"/ip4/127.0.0.1/tcp/0"},
		DataAddr:     netip.MustParseAddrPort("127.0.0.1:0"),
		VirtualAddrs: []netip.Addr{netip.MustParseAddr(vip)},
		AEAD:         suite,
		NewReceiver:  func() Receiver { return chanReceiver{n.got, &n.partials} },
	}
	for _, o := range opts {
		o(&cfg)
	}
	o, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.Close() })
	n.Overlay = o
	return n
}

// chanReceiver hands each delivered packet to a channel.
type chanReceiver struct {
	got      chan []byte
	partials *atomic.Int64
}

func (c chanReceiver) Deliver(buf []byte, csumPartial bool) {
	if csumPartial {
		c.partials.Add(1)
	}
	c.got <- append([]byte(nil), buf[HeaderLen:]...)
}

func (c chanReceiver) Flush() {}

func link(t *testing.T, a, b *testNode) {
	t.Helper()
	if err := a.AddPeer(peer.AddrInfo{ID: b.ID(), Addrs: b.Host().Addrs()}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "UDP path up both ways", func() bool {
		return pathTo(a, b.ID()) == PathUDP && pathTo(b, a.ID()) == PathUDP
	})
}

// linkOverStream links a to b with UDP blocked between them (blockUDP):
// the link runs on the stream both ways.
func linkOverStream(t *testing.T, a, b *testNode) {
	t.Helper()
	blockUDP(t, a, b)
	if err := a.AddPeer(peer.AddrInfo{ID: b.ID(), Addrs: b.Host().Addrs()}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "stream path both ways", func() bool {
		return pathTo(a, b.ID()) == PathStream && pathTo(b, a.ID()) == PathStream
	})
}

func pathTo(n *testNode, id peer.ID) Path {
	for _, p := range n.Peers() {
		if p.ID == id {
			return p.Path
		}
	}
	return PathNone
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ipv4 builds a minimal IPv4 packet from src to dst with a payload.
func ipv4(src, dst string, payload string) []byte {
	p := make([]byte, 20+len(payload))
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	p[8] = 64
	p[9] = 17
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(p[12:], s[:])
	copy(p[16:], d[:])
	copy(p[20:], payload)
	return p
}

func sendPacket(t *testing.T, n *testNode, pkt []byte) {
	t.Helper()
	buf := make([]byte, HeaderLen+len(pkt)+TagLen)
	copy(buf[HeaderLen:], pkt)
	dst := netip.AddrFrom4([4]byte(pkt[16:20]))
	if err := n.Send(dst, buf, len(pkt)); err != nil {
		t.Fatalf("send: %v", err)
	}
}

// trySend sends pkt from n, without a session too (the packet is dropped).
func trySend(n *testNode, pkt []byte) {
	buf := make([]byte, HeaderLen+len(pkt)+TagLen)
	copy(buf[HeaderLen:], pkt)
	n.Send(netip.AddrFrom4([4]byte(pkt[16:20])), buf, len(pkt))
}

func expectPacket(t *testing.T, n *testNode, want []byte) {
	t.Helper()
	select {
	case got := <-n.got:
		if string(got) != string(want) {
			t.Fatalf("delivered %x, want %x", got, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("packet not delivered")
	}
}

func TestLinkCarriesPacketsBothWays(t *testing.T) {
	for _, suite := range []Suite{SuiteAES256GCM, SuiteChaCha20Poly1305} {
		t.Run(suite.String(), func(t *testing.T) {
			a := newTestNode(t, "10.128.0.1", suite)
			b := newTestNode(t, "10.128.0.2", suite)
			link(t, a, b)
			ab := ipv4("10.128.0.1", "10.128.0.2", "hello b")
			sendPacket(t, a, ab)
			expectPacket(t, b, ab)
			ba := ipv4("10.128.0.2", "10.128.0.1", "hello a")
			sendPacket(t, b, ba)
			expectPacket(t, a, ba)
			for _, p := range a.Peers() {
				if p.Suite != suite {
					t.Errorf("link uses %v, want %v", p.Suite, suite)
				}
			}
		})
	}
}

func TestNoRouteForUnknownAddress(t *testing.T) {
	a := newTestNode(t, "10.128.0.1", 0)
	buf := make([]byte, 64)
	if err := a.Send(netip.MustParseAddr("10.128.0.9"), buf, 20); err != ErrNoRoute {
		t.Fatalf("Send = %v, want ErrNoRoute", err)
	}
	if a.Drops()["no_route"] != 1 {
		t.Fatalf("no_route counter = %d", a.Drops()["no_route"])
	}
}

// capture sends one packet from a to b through a UDP socket that records
// the sealed datagram, and returns the datagram and b's data address.
func capture(t *testing.T, a, b *testNode) []byte {
	t.Helper()
	spy, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer spy.Close()
	var pa *Peer
	a.mu.RLock()
	pa = a.peers[b.ID()]
	a.mu.RUnlock()
	real := *pa.endpoint.Load()
	spyAddr := spy.LocalAddr().(*net.UDPAddr).AddrPort()
	pa.endpoint.Store(&spyAddr)
	defer pa.endpoint.Store(&real)
	sendPacket(t, a, ipv4("10.128.0.1", "10.128.0.2", "captured"))
	buf := make([]byte, 2048)
	spy.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		n, err := spy.Read(buf)
		if err != nil {
			t.Fatalf("capture: %v", err)
		}
		if buf[1] == typeData {
			return append([]byte(nil), buf[:n]...)
		}
	}
}

func TestReplayedAndTamperedDatagramsAreDropped(t *testing.T) {
	a := newTestNode(t, "10.128.0.1", 0)
	b := newTestNode(t, "10.128.0.2", 0)
	link(t, a, b)
	dgram := capture(t, a, b)
	inject, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(b.DataAddr()))
	if err != nil {
		t.Fatal(err)
	}
	defer inject.Close()

	// First delivery is genuine; the copy is a replay.
	inject.Write(dgram)
	expectPacket(t, b, ipv4("10.128.0.1", "10.128.0.2", "captured"))
	inject.Write(dgram)
	waitFor(t, "replay counted", func() bool { return b.Drops()["replayed"] == 1 })

	tampered := append([]byte(nil), dgram...)
	tampered[len(tampered)-20] ^= 1
	inject.Write(tampered)
	waitFor(t, "tampering counted", func() bool { return b.Drops()["auth_failed"] == 1 })

	unknown := append([]byte(nil), dgram...)
	unknown[4] ^= 0xff
	inject.Write(unknown)
	waitFor(t, "unknown index counted", func() bool { return b.Drops()["unknown_peer"] == 1 })

	inject.Write(dgram[:10])
	waitFor(t, "short datagram counted", func() bool { return b.Drops()["malformed"] == 1 })

	select {
	case got := <-b.got:
		t.Fatalf("a refused datagram was delivered: %x", got)
	case <-time.After(100 * time.Millisecond):
	}
}

func TestSpoofedSourceIsDropped(t *testing.T) {
	a := newTestNode(t, "10.128.0.1", 0)
	b := newTestNode(t, "10.128.0.2", 0)
	link(t, a, b)
	sendPacket(t, a, ipv4("10.128.0.77", "10.128.0.2", "spoof"))
	waitFor(t, "spoof counted", func() bool { return b.Drops()["spoofed_source"] == 1 })
}

func TestRekeyKeepsTrafficFlowing(t *testing.T) {
	a := newTestNode(t, "10.128.0.1", 0)
	b := newTestNode(t, "10.128.0.2", 0)
	link(t, a, b)
	var pa *Peer
	a.mu.RLock()
	pa = a.peers[b.ID()]
	a.mu.RUnlock()
	for i := range 3 {
		before := pa.sendSession.Load()
		pa.requestRekey("test")
		waitFor(t, "new session", func() bool {
			s := pa.sendSession.Load()
			return s != nil && s != before
		})
		time.Sleep(minRekeyGap)
		pkt := ipv4("10.128.0.1", "10.128.0.2", string(rune('a'+i)))
		sendPacket(t, a, pkt)
		expectPacket(t, b, pkt)
		pkt = ipv4("10.128.0.2", "10.128.0.1", string(rune('A'+i)))
		sendPacket(t, b, pkt)
		expectPacket(t, a, pkt)
	}
	if r := a.Peers()[0].Rekeys; r < 3 {
		t.Fatalf("rekeys = %d, want at least 3", r)
	}
}

// TestLinkRekeysWhenPeerLostTheSession: b no longer knows the session a
// sends under (a handshake race, or a restart, left the two ends with
// different sessions), though both still have one. b tells a so, and a
// handshakes again, and packets flow: on the UDP path, and on the stream
// path, where no change of path prompts it.
func TestLinkRekeysWhenPeerLostTheSession(t *testing.T) {
	for _, path := range []Path{PathUDP, PathStream} {
		t.Run(path.String(), func(t *testing.T) {
			a := newTestNode(t, "10.128.0.1", 0)
			b := newTestNode(t, "10.128.0.2", 0)
			if path == PathStream {
				blockUDP(t, a, b)
			}
			if err := a.AddPeer(peer.AddrInfo{ID: b.ID(), Addrs: b.Host().Addrs()}); err != nil {
				t.Fatal(err)
			}
			waitFor(t, path.String()+" path both ways", func() bool {
				return pathTo(a, b.ID()) == path && pathTo(b, a.ID()) == path
			})
			pa := a.peer(b.ID())
			lost := pa.sendSession.Load()
			forgetSessions(b, a)
			deadline := time.Now().Add(15 * time.Second)
			for i := 0; ; i++ {
				pkt := ipv4("10.128.0.1", "10.128.0.2", fmt.Sprint(i))
				sendPacket(t, a, pkt)
				if awaitPacket(b, pkt, 200*time.Millisecond) {
					if pa.sendSession.Load() == lost {
						t.Fatal("delivered under the session b lost")
					}
					if b.lost.told.Load() == 0 || a.lost.heard.Load() == 0 {
						t.Errorf("b told a of the lost session %d times, a heard it %d times",
							b.lost.told.Load(), a.lost.heard.Load())
					}
					t.Logf("delivered again after %d packets; b dropped %d as from no session it knows",
						i+1, b.drops.unknownPeer.Load())
					return
				}
				if time.Now().After(deadline) {
					t.Fatalf("a never handshook again: %d packets sent to a session b lost", i+1)
				}
			}
		})
	}
}

// awaitPacket reports whether n delivers want within d, passing over
// earlier packets (late, or sent again).
func awaitPacket(n *testNode, want []byte, d time.Duration) bool {
	timeout := time.After(d)
	for {
		select {
		case got := <-n.got:
			if string(got) == string(want) {
				return true
			}
		case <-timeout:
			return false
		}
	}
}

// TestDeafLinkConnectionClosed: b opens nothing a sends and takes no
// handshake from it (as when the connection died at b's end only): a,
// sending, rekeys in vain, then closes the connection; a new one, and a
// handshake on it, bring the link back.
func TestDeafLinkConnectionClosed(t *testing.T) {
	a := newTestNode(t, "10.128.0.1", 0)
	b := newTestNode(t, "10.128.0.2", 0)
	linkOverStream(t, a, b)
	b.Host().RemoveStreamHandler(linkProtocol)
	forgetSessions(b, a)
	deadline := time.Now().Add(20 * time.Second)
	for a.deafLinks.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("a never closed the deaf link's connection")
		}
		trySend(a, ipv4("10.128.0.1", "10.128.0.2", "x"))
		time.Sleep(200 * time.Millisecond)
	}
	b.Host().SetStreamHandler(linkProtocol, b.handleLinkStream)
	for i := 0; ; i++ {
		pkt := ipv4("10.128.0.1", "10.128.0.2", fmt.Sprint(i))
		trySend(a, pkt) // no session between the old connection and the new
		select {
		case got := <-b.got:
			if string(got) == string(pkt) {
				return
			}
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline.Add(10 * time.Second)) {
			t.Fatal("the link did not come back on a new connection")
		}
	}
}

// TestLinkKeepsUDPWhenSendingResumes: a link whose last round trip is long
// past, because the peer talked and we had nothing to ask, stays on UDP
// and keeps its session when we begin to send: an old round trip counts
// against the path only once a probe has gone unanswered.
func TestLinkKeepsUDPWhenSendingResumes(t *testing.T) {
	a := newTestNode(t, "10.128.0.1", 0)
	b := newTestNode(t, "10.128.0.2", 0)
	link(t, a, b)
	pa := a.peer(b.ID())
	current := func() *session {
		pa.mu.Lock()
		defer pa.mu.Unlock()
		return pa.current
	}
	// The handshakes of both ends settle: the session holds for 3 s.
	for stable, last := 0, current(); stable < 3; stable++ {
		time.Sleep(time.Second)
		if s := current(); s != last {
			stable, last = -1, s
		}
	}
	pa.mu.Lock()
	// As if the last round trip were 20 s ago, when UDP came up.
	pa.roundTrip = time.Now().Add(-20 * time.Second)
	pa.udpDownAt = pa.roundTrip.Add(-time.Second)
	pa.probeSince, pa.udpProbeSince = time.Time{}, time.Time{}
	sess := pa.current
	pa.mu.Unlock()
	for i := range 30 {
		pkt := ipv4("10.128.0.1", "10.128.0.2", fmt.Sprint(i))
		sendPacket(t, a, pkt)
		expectPacket(t, b, pkt)
		if path := pathTo(a, b.ID()); path != PathUDP {
			t.Fatalf("after %d packets the path is %v", i+1, path)
		}
		time.Sleep(100 * time.Millisecond)
	}
	pa.mu.Lock()
	rekeyed, trip := pa.current != sess, time.Since(pa.roundTrip)
	pa.mu.Unlock()
	if rekeyed {
		t.Error("the link rekeyed")
	}
	if trip > 4*time.Second {
		t.Errorf("last round trip %v ago: the link did not probe once it sent", trip.Round(time.Millisecond))
	}
}

// forgetSessions makes n drop its receiver indexes for sessions with
// other: n no longer opens what other sends, as if it had lost those
// sessions, though it still holds one to send with, and other still
// holds its own.
func forgetSessions(n, other *testNode) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for idx, e := range n.byIndex {
		if e.peer.id == other.ID() {
			delete(n.byIndex, idx)
		}
	}
}

// blockUDP points a and b at a UDP port where nothing listens, as behind
// a firewall that drops UDP: their links run on the stream.
func blockUDP(t *testing.T, a, b *testNode) {
	t.Helper()
	dead, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.LocalAddr().(*net.UDPAddr).AddrPort()
	dead.Close()
	a.peer(b.ID()).endpoint.Store(&deadAddr)
	b.peer(a.ID()).endpoint.Store(&deadAddr)
}

func TestStreamFallbackWhenUDPDoesNotGetThrough(t *testing.T) {
	a := newTestNode(t, "10.128.0.1", 0)
	b := newTestNode(t, "10.128.0.2", 0)
	linkOverStream(t, a, b)
	for i := range 50 {
		pkt := ipv4("10.128.0.1", "10.128.0.2", string(rune('a'+i%26)))
		sendPacket(t, a, pkt)
		expectPacket(t, b, pkt)
		pkt = ipv4("10.128.0.2", "10.128.0.1", string(rune('A'+i%26)))
		sendPacket(t, b, pkt)
		expectPacket(t, a, pkt)
	}
}

func TestVirtualAddressesAreNeverControlAddresses(t *testing.T) {
	virtual := []netip.Prefix{netip.MustParsePrefix("10.128.0.0/16")}
	for _, c := range []struct {
		addr string
		want bool
	}{
		{"/ip4/10.128.0.1/tcp/4150", true},
		{"/ip4/10.128.255.9/udp/4150/quic-v1", true},
		{"/ip4/10.129.0.1/tcp/4150", false},
		{"/ip4/100.64.1.2/tcp/4150", false},
		{"/ip6/::1/tcp/4150", false},
	} {
		if got := inVirtual(ma.StringCast(c.addr), virtual); got != c.want {
			t.Errorf("inVirtual(%s) = %v, want %v", c.addr, got, c.want)
		}
	}
}

func TestSendSegmentsDeliversTheBatchInOrder(t *testing.T) {
	for _, partial := range []bool{false, true} {
		t.Run(fmt.Sprintf("partial=%v", partial), func(t *testing.T) {
			testSendSegments(t, partial)
		})
	}
}

// testSendSegments sends a batch of segments, saying that their checksums
// are partial or not, and checks that they arrive in order, said the same.
func testSendSegments(t *testing.T, csumPartial bool) {
	a := newTestNode(t, "10.128.0.1", 0)
	b := newTestNode(t, "10.128.0.2", 0)
	link(t, a, b)
	const segs, size = 40, 1400
	stride := size + Overhead
	buf := make([]byte, segs*stride)
	lens := make([]int, segs)
	var want [][]byte
	for i := range segs {
		n := size
		if i == segs-1 {
			n = 300 // the last may be shorter
		}
		pkt := ipv4("10.128.0.1", "10.128.0.2", string(make([]byte, n-20)))
		pkt[20] = byte(i)
		copy(buf[i*stride+HeaderLen:], pkt)
		lens[i] = n
		want = append(want, pkt)
	}
	if err := a.SendSegments(netip.MustParseAddr("10.128.0.2"), buf, stride, lens, csumPartial); err != nil {
		t.Fatal(err)
	}
	for i := range segs {
		expectPacket(t, b, want[i])
	}
	if got, want := b.partials.Load(), map[bool]int64{false: 0, true: segs}[csumPartial]; got != want {
		t.Fatalf("%d packets delivered as partial, want %d", got, want)
	}
	st := a.Peers()[0]
	if st.TxPackets != segs {
		t.Fatalf("tx_packets = %d, want %d", st.TxPackets, segs)
	}
	dp := a.DataPath()
	if dp["udp_gso"] != 1 || dp["udp_gso_batches"] == 0 {
		t.Errorf("the batch did not go out with UDP_SEGMENT: %v", dp)
	}
	t.Logf("sender %v, receiver %v", dp, b.DataPath())
}

func TestSendQueueBatchesToSeveralPeers(t *testing.T) {
	a := newTestNode(t, "10.128.0.1", 0)
	b := newTestNode(t, "10.128.0.2", 0)
	c := newTestNode(t, "10.128.0.3", 0)
	link(t, a, b)
	link(t, a, c)
	q := a.NewSendQueue(16)
	var bufs [][]byte
	var toB, toC [][]byte
	for i := range 10 {
		dst, got := "10.128.0.2", &toB
		if i%2 == 1 {
			dst, got = "10.128.0.3", &toC
		}
		pkt := ipv4("10.128.0.1", dst, string(rune('a'+i)))
		buf := make([]byte, HeaderLen+len(pkt)+TagLen)
		copy(buf[HeaderLen:], pkt)
		bufs = append(bufs, buf) // kept until Flush
		if err := q.Send(netip.MustParseAddr(dst), buf, len(pkt)); err != nil {
			t.Fatal(err)
		}
		*got = append(*got, pkt)
	}
	if err := q.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, pkt := range toB {
		expectPacket(t, b, pkt)
	}
	for _, pkt := range toC {
		expectPacket(t, c, pkt)
	}
	if n := a.DataPath()["sendmmsg_calls"]; n != 1 {
		t.Fatalf("sendmmsg calls = %d, want the 10 datagrams in 1", n)
	}
}

// TestIdleDataStreamClosed: a data stream that carried nothing for a while
// is given up, and the next datagram opens another and arrives.
func TestIdleDataStreamClosed(t *testing.T) {
	a := newTestNode(t, "10.128.0.1", 0)
	b := newTestNode(t, "10.128.0.2", 0)
	link(t, a, b)
	s := newStreamSender(a.Overlay, b.ID())
	s.idleAfter = 200 * time.Millisecond
	running := func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.running
	}
	pa := a.peer(b.ID())
	for i := range 2 {
		pkt := ipv4("10.128.0.1", "10.128.0.2", fmt.Sprint("over a new stream ", i))
		buf := make([]byte, HeaderLen+len(pkt)+TagLen)
		copy(buf[HeaderLen:], pkt)
		dgram, ok := pa.sendSession.Load().seal(typeData, buf, len(pkt))
		if !ok {
			t.Fatal("seal refused")
		}
		if err := s.send(dgram); err != nil {
			t.Fatal(err)
		}
		expectPacket(t, b, pkt)
		waitFor(t, "the idle stream given up", func() bool { return !running() })
	}
}

// A batch's remembered source address vouches only for the peer it was
// looked up for: another peer sending from it is still refused.
func TestHoldsSourceRemembersPerPeer(t *testing.T) {
	a := newTestNode(t, "10.128.0.1", 0)
	b := newTestNode(t, "10.128.0.2", 0)
	c := newTestNode(t, "10.128.0.3", 0)
	link(t, a, b)
	link(t, a, c)
	a.mu.RLock()
	pb, pc := a.peers[b.ID()], a.peers[c.ID()]
	a.mu.RUnlock()
	fromB := ipv4("10.128.0.2", "10.128.0.1", "x")
	var lk lookups
	if !pb.holdsSource(&lk, fromB) {
		t.Fatal("b's own address refused")
	}
	if lk.holder != pb {
		t.Fatal("the address that passed was not remembered")
	}
	if pc.holdsSource(&lk, fromB) {
		t.Fatal("c passed as b on the strength of b's lookup")
	}
	if !pb.holdsSource(&lk, fromB) || pb.holdsSource(&lk, ipv4("10.128.0.3", "10.128.0.1", "x")) {
		t.Fatal("remembering one address changed the answer for another")
	}
}
