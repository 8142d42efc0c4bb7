package overlay

import (
	"context"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ringnet/ringnet/routing"
)

// staticRouter routes by a fixed table, standing in for the ring.
type staticRouter struct {
	mu   sync.Mutex
	self routing.Addr
	next map[routing.Addr]peer.ID
}

func (r *staticRouter) NextHop(dst routing.Addr, from peer.ID) Hop {
	if dst == r.self {
		return Hop{Deliver: true, Nearest: true}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if n := r.next[dst]; n != from {
		return Hop{Next: n}
	}
	return Hop{}
}

func (r *staticRouter) via(dst, hop peer.ID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.next[routing.AddrFromPeer(dst)] = hop
}

// chain builds a -- b -- c: links a-b and b-c, and routers that send a's
// packets for c through b and back.
func chain(t *testing.T, opts ...func(*Config)) (a, b, c *testNode) {
	t.Helper()
	routers := make([]*staticRouter, 3)
	nodes := make([]*testNode, 3)
	for i, vip := range []string{"10.128.0.1", "10.128.0.2", "10.128.0.3"} {
		routers[i] = &staticRouter{next: make(map[routing.Addr]peer.ID)}
		r := routers[i]
		nodes[i] = newTestNode(t, vip, 0, append([]func(*Config){func(c *Config) { c.Router = r }}, opts...)...)
		r.self = routing.AddrFromPeer(nodes[i].ID())
	}
	a, b, c = nodes[0], nodes[1], nodes[2]
	routers[0].via(c.ID(), b.ID())
	routers[0].via(b.ID(), b.ID())
	routers[1].via(a.ID(), a.ID())
	routers[1].via(c.ID(), c.ID())
	routers[2].via(a.ID(), b.ID())
	routers[2].via(b.ID(), b.ID())
	link(t, a, b)
	link(t, b, c)
	return a, b, c
}

func peerStatus(n *testNode, id peer.ID) PeerStatus {
	for _, p := range n.Peers() {
		if p.ID == id {
			return p
		}
	}
	return PeerStatus{}
}

func TestRingCarriesPacketsBetweenNodesWithoutALink(t *testing.T) {
	a, b, c := chain(t)
	if err := a.AddRingPeer(c.ID()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a ring session both ways", func() bool {
		return peerStatus(a, c.ID()).Path == PathRing && peerStatus(c, a.ID()).Path == PathRing
	})
	for i := range 20 {
		pkt := ipv4("10.128.0.1", "10.128.0.3", string(rune('a'+i)))
		sendPacket(t, a, pkt)
		expectPacket(t, c, pkt)
		pkt = ipv4("10.128.0.3", "10.128.0.1", string(rune('A'+i)))
		sendPacket(t, c, pkt)
		expectPacket(t, a, pkt)
	}
	if h := peerStatus(a, c.ID()).Hops; h != 2 {
		t.Errorf("a sees c %d hops away, want 2", h)
	}
	if b.forwarded.Load() < 40 {
		t.Errorf("b forwarded %d datagrams, want at least the 40 packets", b.forwarded.Load())
	}
	// b relays but holds no session with either end, so it cannot open
	// what it relays.
	if got := peerStatus(b, a.ID()).RxPackets + peerStatus(b, c.ID()).RxPackets; got != 0 {
		t.Errorf("b delivered %d of the relayed packets itself", got)
	}
}

// routedTo builds a routed data datagram from a to c under a's session
// with c, with the route header rh, and sends it.
func routedTo(t *testing.T, a, c *testNode, rh routing.Header) {
	t.Helper()
	a.mu.RLock()
	p := a.peers[c.ID()]
	a.mu.RUnlock()
	pkt := ipv4("10.128.0.1", "10.128.0.3", "crafted")
	buf := make([]byte, routeInnerOff+HeaderLen+len(pkt)+2*TagLen)
	inner := buf[routeInnerOff:]
	copy(inner[HeaderLen:], pkt)
	if _, ok := p.sendSession.Load().seal(typeData, inner, len(pkt)); !ok {
		t.Fatal("seal")
	}
	if err := a.originate(rh, buf); err != nil {
		t.Fatal(err)
	}
}

func TestRingDropsExpiredAndForgedRoutes(t *testing.T) {
	a, b, c := chain(t)
	if err := a.AddRingPeer(c.ID()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a ring session both ways", func() bool {
		return peerStatus(a, c.ID()).Path == PathRing && peerStatus(c, a.ID()).Path == PathRing
	})
	src, dst := routing.AddrFromPeer(a.ID()), routing.AddrFromPeer(c.ID())

	routedTo(t, a, c, routing.Header{TTL: 1, Src: src, Dst: dst})
	waitFor(t, "TTL expiry counted at b", func() bool { return b.Drops()["ttl_expired"] == 1 })

	// A source that is not the node whose key sealed the packet.
	routedTo(t, a, c, routing.Header{TTL: 8, Src: routing.AddrFromPeer(b.ID()), Dst: dst})
	waitFor(t, "forged source counted at c", func() bool { return c.Drops()["spoofed_source"] == 1 })

	select {
	case got := <-c.got:
		t.Fatalf("c delivered a refused packet: %x", got)
	default:
	}
	if err := a.Send(netip.MustParseAddr("10.128.0.3"), make([]byte, 64), 20); err != nil {
		t.Logf("send after the refused ones: %v", err)
	}
}

// FuzzRouted feeds arbitrary routed datagrams, their link tag taken as
// checked, to a node that takes itself as every destination: nothing may
// panic, and nothing unsigned may create a peer.
func FuzzRouted(f *testing.F) {
	r := &staticRouter{next: make(map[routing.Addr]peer.ID)}
	n := newTestNode(f, "10.128.0.9", 0, func(c *Config) { c.Router = r })
	r.self = routing.AddrFromPeer(n.ID())
	prev := n.peer(peer.ID("prev"))
	self := routing.AddrFromPeer(n.ID())
	seed := make([]byte, routeInnerOff+HeaderLen+TagLen)
	rh := routing.Header{TTL: 3, Src: self, Dst: self}
	rh.AppendBinary(seed[routeHeaderOff:routeHeaderOff])
	f.Add(seed)
	hs := append([]byte(nil), seed...)
	hs[routeInnerOff], hs[routeInnerOff+1] = wireVersion, typeHandshake
	f.Add(append(hs, 38))
	f.Fuzz(func(t *testing.T, dgram []byte) {
		before := len(n.Peers())
		n.routed(chanReceiver{make(chan []byte, 4), new(atomic.Int64)}, append([]byte(nil), dgram...), prev)
		if len(n.Peers()) != before {
			t.Fatalf("an unsigned datagram created a peer")
		}
	})
}

// TestRingHandshakeLengthByte: a routed hello whose peer ID length byte
// is 255 is dropped, not a panic (1+255 must not wrap to 0 as a byte).
func TestRingHandshakeLengthByte(t *testing.T) {
	n := newTestNode(t, "10.128.0.9", 0)
	body := append([]byte{255}, make([]byte, 300)...)
	before := n.drops.badHandshake.Load()
	n.ringHandshake(routing.Header{TTL: 3}, body)
	if n.drops.badHandshake.Load() != before+1 {
		t.Fatal("the hello was not counted as a bad handshake")
	}
}

// TestRelayCannotUnwrapRingDatagrams has b take the end-to-end datagram
// out of a routed one and hand it to c as if a had sent it directly: c
// must refuse it, and must not move a's endpoint to b.
func TestRelayCannotUnwrapRingDatagrams(t *testing.T) {
	a, b, c := chain(t)
	if err := a.AddRingPeer(c.ID()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a ring session both ways", func() bool {
		return peerStatus(a, c.ID()).Path == PathRing && peerStatus(c, a.ID()).Path == PathRing
	})
	a.mu.RLock()
	p := a.peers[c.ID()]
	a.mu.RUnlock()
	pkt := ipv4("10.128.0.1", "10.128.0.3", "unwrapped")
	inner := make([]byte, HeaderLen+len(pkt)+TagLen)
	copy(inner[HeaderLen:], pkt)
	dgram, ok := p.sendSession.Load().seal(typeData, inner, len(pkt))
	if !ok {
		t.Fatal("seal")
	}
	before := c.Drops()["unknown_peer"]
	if _, err := b.udp.WriteToUDPAddrPort(dgram, c.DataAddr()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "c to refuse the unwrapped datagram", func() bool { return c.Drops()["unknown_peer"] > before })
	select {
	case got := <-c.got:
		t.Fatalf("c delivered an unwrapped ring datagram: %x", got)
	default:
	}
}

// TestOtherNamespaceForwardsButCannotDeliver puts b, the middle of a
// chain, outside the namespace a and c share (the lease records bind
// a's and c's addresses, none of b's): b forwards their sealed packets
// but delivers none to its VM, and packets b sends to c, from its own
// address or from a's, are dropped.
func TestOtherNamespaceForwardsButCannotDeliver(t *testing.T) {
	var ids sync.Map // address -> holder, as the lease records say
	resolve := func(c *Config) {
		c.VirtualSubnets = []netip.Prefix{netip.MustParsePrefix("10.128.0.0/16")}
		c.Resolve = func(_ context.Context, _ *DHT, ip netip.Addr) (peer.ID, error) {
			if id, ok := ids.Load(ip); ok {
				return id.(peer.ID), nil
			}
			return "", ErrNotHeld
		}
	}
	a, b, c := chain(t, resolve)
	ids.Store(netip.MustParseAddr("10.128.0.1"), a.ID())
	ids.Store(netip.MustParseAddr("10.128.0.3"), c.ID())
	if err := a.AddRingPeer(c.ID()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a ring session a to c", func() bool { return peerStatus(a, c.ID()).Path == PathRing })
	waitFor(t, "a to find c's address", func() bool { return a.Holds(netip.MustParseAddr("10.128.0.3")) })
	for i := range 10 {
		pkt := ipv4("10.128.0.1", "10.128.0.3", string(rune('a'+i)))
		sendPacket(t, a, pkt)
		expectPacket(t, c, pkt)
	}
	if b.forwarded.Load() < 10 {
		t.Errorf("b forwarded %d datagrams, want the 10 packets", b.forwarded.Load())
	}
	select {
	case got := <-b.got:
		t.Fatalf("b delivered a packet of another namespace: %x", got)
	default:
	}

	// b, a ring member, opens a session with c and sends from its own
	// address and from a's: no lease binds either to b.
	if err := b.AddRingPeer(c.ID()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a session b to c", func() bool { return peerStatus(b, c.ID()).Path != PathNone })
	before := c.Drops()["spoofed_source"]
	for _, src := range []string{"10.128.0.2", "10.128.0.1"} {
		pkt := ipv4(src, "10.128.0.3", "from b")
		buf := make([]byte, HeaderLen+len(pkt)+TagLen)
		copy(buf[HeaderLen:], pkt)
		b.mu.RLock()
		p := b.peers[c.ID()]
		b.mu.RUnlock()
		if err := p.send(typeData, buf, len(pkt)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "c to drop b's packets", func() bool { return c.Drops()["spoofed_source"] >= before+2 })
	select {
	case got := <-c.got:
		t.Fatalf("c delivered a packet from outside its namespace: %x", got)
	case <-time.After(500 * time.Millisecond):
	}
}
