package overlay

import (
	"errors"
	"net/netip"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ringnet/ringnet/routing"
)

// Packets between nodes without a link of their own travel over the ring,
// hop by hop. A routed datagram is a link datagram of type typeRoute:
//
//	| link header (16) | route header (42) | end-to-end datagram | link tag (16) |
//
// The route header (routing.Header: version, TTL, source and destination
// ring address) says where it goes. The end-to-end datagram is sealed
// between the source and the destination node exactly as on a direct link
// (same header, same AEAD), under keys from a handshake that travels over
// the ring itself (typeHandshake, signed hellos). Each hop checks the link
// tag, an AEAD tag over everything before it under the link's key, so no
// one but the previous hop can inject or alter a routed datagram; a hop
// can alter the route header it passes on, but not the sealed packet, and
// the destination refuses a packet whose route source is not the node its
// end-to-end key belongs to. A hop decrements the TTL and re-tags for the
// next link: a routed datagram costs each hop a GHASH over it, not a
// decryption.
const (
	typeRoute     byte = 4 // link level: a routed datagram
	typeHandshake byte = 5 // end to end: a hello sent over the ring, signed, not sealed
	// Ring control, routed to a ring address rather than to a node, so
	// neither sealed nor signed (ring.go, resolve.go).
	typeConnect byte = 6  // a routing.ConnectToMe
	typeVIP     byte = 7  // an address record, lookup or answer
	typeDialMe  byte = 8  // an answer to a connect-to-me, for a requester that could not be dialled
	typeStale   byte = 10 // "no session has this receiver index here": the sender re-keys

	routeHeaderOff = HeaderLen
	routeInnerOff  = HeaderLen + routing.HeaderLen
	// RouteOverhead is what a routed packet carries beyond the IPv4
	// packet: link header and tag, route header, end-to-end header and tag.
	RouteOverhead = routeInnerOff + Overhead + TagLen
	// RingExtra is what a routed packet carries beyond one on a link:
	// the path MTU over the ring is this much below a link's.
	RingExtra = RouteOverhead - Overhead
	// routeTTL is the TTL a routed datagram starts with.
	routeTTL = 32
	// ringHandshakeTimeout is how long an initiator waits for the answer
	// to a hello it sent over the ring.
	ringHandshakeTimeout = 5 * time.Second
)

// Router picks the next hop of a datagram routed over the ring. The
// overlay's own ring manager (ring.go) is one; tests use fixed tables.
type Router interface {
	// NextHop decides where a datagram for dst goes; from is the peer it
	// came from, empty for datagrams this node originates.
	NextHop(dst routing.Addr, from peer.ID) Hop
}

// Hop is a Router's decision (see routing.Hop).
type Hop struct {
	// Next is the link to send the datagram on; empty for none.
	Next peer.ID
	// Deliver says this node is the destination, or one of the two nodes
	// around an absent destination address.
	Deliver bool
	// Nearest says this node is the nearest to dst that it knows of.
	Nearest bool
}

var errNoRouter = errors.New("no ring router")

// routeBufSize is the size of the pooled buffers for packets sent over
// the ring, which need more room in front than the caller's buffer leaves.
const routeBufSize = RouteOverhead + 65536

// ringState is what a peer reached over the ring keeps.
type ringState struct {
	addr routing.Addr
	// pending is the initiator's half of a handshake awaiting its answer.
	pending *pendingHello
	// wanted: packets are for the peer, so a session over the ring is
	// kept while no link carries them.
	wanted bool
	hops   int // hops the peer's last datagram took to reach us
}

type pendingHello struct {
	*greeting
	sent time.Time
}

// AddRingPeer keeps an end-to-end session with a node that has no link of
// its own to this one: handshakes and packets travel over the ring.
func (o *Overlay) AddRingPeer(id peer.ID) error {
	if o.router == nil {
		return errNoRouter
	}
	if id == o.host.ID() {
		return errors.New("a node cannot peer with itself")
	}
	p := o.peer(id)
	p.mu.Lock()
	if p.ring == nil {
		p.ring = &ringState{addr: routing.AddrFromPeer(id)}
	}
	p.ring.wanted = true
	p.mu.Unlock()
	p.wake()
	return nil
}

// PathMTU returns the MTU of the path to the holder of dst, given the
// MTU of a link: less while packets to it go over the ring, and 0 when
// they do not.
func (o *Overlay) PathMTU(dst netip.Addr, linkMTU int) int {
	o.mu.RLock()
	p := o.byAddr[dst]
	o.mu.RUnlock()
	if p != nil && Path(p.path.Load()) == PathRing {
		return linkMTU - RingExtra
	}
	return 0
}

// ringControl splits a ring control message off an inner datagram.
func ringControl(inner []byte) (typ byte, body []byte, ok bool) {
	if len(inner) < HeaderLen || inner[0] != wireVersion {
		return 0, nil, false
	}
	switch inner[1] {
	case typeConnect, typeVIP, typeDialMe, typeStale:
		return inner[1], inner[HeaderLen:], true
	}
	return 0, nil, false
}

// sendControl routes a ring control message to dst. Where this node is
// itself nearest dst, or one of the two nodes around it, it handles the
// message too. A node with no ring links yet (it is joining) sends
// through a leaf link instead: the bootstrap routes it on.
func (o *Overlay) sendControl(typ byte, dst routing.Addr, body []byte) error {
	buf := make([]byte, routeInnerOff+HeaderLen+len(body)+TagLen)
	inner := buf[routeInnerOff:]
	header{typ: typ}.put(inner)
	copy(inner[HeaderLen:], body)
	rh := routing.Header{TTL: routeTTL, Src: o.ringAddr, Dst: dst}
	if _, err := rh.AppendBinary(buf[routeHeaderOff:routeHeaderOff]); err != nil {
		return err
	}
	if leaf, ok := o.ring.leafOnly(); ok {
		return o.sendRouted(leaf, buf)
	}
	hop := o.router.NextHop(dst, "")
	if hop.Deliver {
		o.ring.control(rh, typ, inner[HeaderLen:len(inner)-TagLen], hop.Nearest)
	}
	if hop.Next == "" {
		return nil
	}
	return o.sendRouted(hop.Next, buf)
}

// sealTag writes a link header and, at the end of buf, a tag over all of
// buf before it: a datagram authenticated, not encrypted.
func (s *session) sealTag(typ byte, buf []byte) (ok bool) {
	counter := s.sendCounter.Add(1) - 1
	if counter >= RejectAfterMessages {
		return false
	}
	header{typ: typ, receiver: s.remoteIndex, counter: counter}.put(buf)
	n := len(buf) - TagLen
	s.send.Seal(buf[n:n], nonce(buf), nil, buf[:n])
	return true
}

// openTag checks a tag made by sealTag and the replay window.
func (s *session) openTag(h header, dgram []byte) error {
	n := len(dgram) - TagLen
	if _, err := s.recv.Open(nil, nonce(dgram), dgram[n:], dgram[:n]); err != nil {
		return errAuth
	}
	s.replayMu.Lock()
	ok := s.replay.Accept(h.counter, RejectAfterMessages)
	s.replayMu.Unlock()
	if !ok {
		return errReplay
	}
	return nil
}

// routed handles a routed datagram that arrived on a link from prev, its
// link tag already checked: it delivers it here or passes it on.
func (o *Overlay) routed(rx Receiver, dgram []byte, prev *Peer) {
	if len(dgram) < routeInnerOff+TagLen || o.router == nil {
		o.drops.malformed.Add(1)
		return
	}
	var rh routing.Header
	if err := rh.UnmarshalBinary(dgram[routeHeaderOff:routeInnerOff]); err != nil {
		o.drops.malformed.Add(1)
		return
	}
	hop := o.router.NextHop(rh.Dst, prev.id)
	inner := dgram[routeInnerOff : len(dgram)-TagLen]
	if hop.Deliver {
		if rh.Dst == o.ringAddr {
			o.deliverRouted(rx, rh, inner)
			return
		}
		// An absent address: ring control messages for it (a join's
		// connect-to-me, address records) are for the nodes around it.
		if typ, body, ok := ringControl(inner); ok && o.ring != nil {
			o.ring.control(rh, typ, body, hop.Nearest)
		}
	}
	next := hop.Next
	if next == "" {
		o.drops.noRoute.Add(1) // an absent address, or no way on
		return
	}
	if rh.TTL <= 1 {
		o.drops.ttlExpired.Add(1)
		return
	}
	rh.TTL--
	rh.AppendBinary(dgram[routeHeaderOff:routeHeaderOff])
	o.forwarded.Add(1)
	o.sendRouted(next, dgram)
}

// sendRouted tags a routed datagram for the link to next and sends it.
func (o *Overlay) sendRouted(next peer.ID, dgram []byte) error {
	o.mu.RLock()
	p := o.peers[next]
	o.mu.RUnlock()
	if p == nil {
		o.drops.noRoute.Add(1)
		return ErrNoRoute
	}
	s := p.sendSession.Load()
	path := Path(p.path.Load())
	if s == nil || (path != PathUDP && path != PathStream) {
		o.drops.noSession.Add(1)
		return ErrNoSession
	}
	if !s.sealTag(typeRoute, dgram) {
		p.requestRekey("session spent")
		return ErrNoSession
	}
	var err error
	if path == PathUDP {
		if ep := p.endpoint.Load(); ep != nil {
			_, err = o.udp.WriteToUDPAddrPort(dgram, *ep)
		}
	} else {
		err = p.stream.send(dgram)
	}
	if err != nil {
		o.drops.sendFailed.Add(1)
	}
	return err
}

// deliverRouted handles the end-to-end datagram of a routed datagram for
// this node.
func (o *Overlay) deliverRouted(rx Receiver, rh routing.Header, inner []byte) {
	if len(inner) >= HeaderLen && inner[0] == wireVersion && inner[1] == typeHandshake {
		o.ringHandshake(rh, inner[HeaderLen:])
		return
	}
	if typ, body, ok := ringControl(inner); ok {
		if o.ring != nil {
			o.ring.control(rh, typ, body, true)
		}
		return
	}
	h, err := parseHeader(inner)
	if err != nil {
		o.drops.malformed.Add(1)
		return
	}
	p, s := o.session(h.receiver)
	if s == nil || !s.viaRing {
		o.drops.unknownPeer.Add(1)
		if s == nil && o.ring != nil {
			// Most likely this node restarted and lost the keys: tell
			// the sender, which handshakes again at once.
			o.ring.stale(rh.Src, h.receiver)
		}
		return
	}
	p.mu.Lock()
	ring := p.ring
	if ring != nil && ring.addr == rh.Src {
		ring.hops = routeTTL - int(rh.TTL) + 1
	}
	p.mu.Unlock()
	// The route's source must be the node the session's keys belong to:
	// a forwarder cannot pass off one node's packets as another's.
	if ring == nil || ring.addr != rh.Src {
		o.drops.spoofedSource.Add(1)
		return
	}
	pt, err := s.open(h, inner)
	if !o.opened(err, p) {
		return
	}
	if !s.sendReady.Load() {
		// The initiator's first datagram under the new keys confirms
		// that it holds them.
		p.confirm(s)
	}
	p.handle(rx, nil, h.typ, inner, pt, PathRing, netip.AddrPort{})
}

// sendRing seals a payload end to end for p and sends it over the ring.
// The payload is copied: the caller's buffer lacks the room in front.
func (p *Peer) sendRing(typ byte, payload []byte) error {
	o := p.o
	s := p.sendSession.Load()
	p.mu.Lock()
	ring := p.ring
	p.mu.Unlock()
	if s == nil || ring == nil {
		o.drops.noSession.Add(1)
		return ErrNoSession
	}
	if isData(typ) && p.quiet.Load() {
		p.keep(s.remoteIndex, typ, payload)
	}
	bp := o.routeBufs.Get().(*[]byte)
	defer o.routeBufs.Put(bp)
	buf := (*bp)[:routeInnerOff+HeaderLen+len(payload)+TagLen+TagLen]
	inner := buf[routeInnerOff:]
	copy(inner[HeaderLen:], payload)
	if _, ok := s.seal(typ, inner, len(payload)); !ok {
		p.requestRekey("session spent")
		return ErrNoSession
	}
	return o.originate(routing.Header{TTL: routeTTL, Src: o.ringAddr, Dst: ring.addr}, buf)
}

// originate routes a datagram this node starts: buf has room for the link
// header, then the route header rh, then the inner datagram, then the tag.
func (o *Overlay) originate(rh routing.Header, buf []byte) error {
	if _, err := rh.AppendBinary(buf[routeHeaderOff:routeHeaderOff]); err != nil {
		return err
	}
	next := o.router.NextHop(rh.Dst, "").Next
	if next == "" {
		o.drops.noRoute.Add(1)
		return ErrNoRoute
	}
	return o.sendRouted(next, buf)
}

// sendHandshake sends a hello (or confirm) to p over the ring. The
// message carries the sender's peer ID, since no connection vouches for it.
func (p *Peer) sendHandshake(msg []byte) error {
	o := p.o
	p.mu.Lock()
	ring := p.ring
	p.mu.Unlock()
	self := []byte(o.host.ID())
	buf := make([]byte, routeInnerOff+HeaderLen+1+len(self)+len(msg)+TagLen)
	inner := buf[routeInnerOff:]
	header{typ: typeHandshake}.put(inner)
	body := inner[HeaderLen:]
	body[0] = byte(len(self))
	copy(body[1:], self)
	copy(body[1+len(self):], msg)
	return o.originate(routing.Header{TTL: routeTTL, Src: o.ringAddr, Dst: ring.addr}, buf)
}

// initiateRing starts a handshake with a ring peer.
func (p *Peer) initiateRing() error {
	g, err := p.o.greet(p, 0, true)
	if err != nil {
		return err
	}
	p.mu.Lock()
	if old := p.ring.pending; old != nil {
		p.o.abandon(old.greeting)
	}
	p.ring.pending = &pendingHello{greeting: g, sent: time.Now()}
	p.mu.Unlock()
	return p.sendHandshake(g.hello.marshal())
}

// ringHandshake handles a hello that came over the ring.
func (o *Overlay) ringHandshake(rh routing.Header, body []byte) {
	if len(body) < 1 {
		o.drops.badHandshake.Add(1)
		return
	}
	n := int(body[0]) // an int: 1+body[0] as a byte wraps to 0 for 255
	if len(body) < 1+n {
		o.drops.badHandshake.Add(1)
		return
	}
	id, err := peer.IDFromBytes(body[1 : 1+n])
	if err != nil || routing.AddrFromPeer(id) != rh.Src || id == o.host.ID() || o.refusedPeer(id) {
		o.drops.badHandshake.Add(1)
		return
	}
	h, err := parseHello(body[1+n:])
	if err != nil {
		o.drops.badHandshake.Add(1)
		return
	}
	// Nothing here may create a peer (and its goroutine) before a
	// signature checks: a routed datagram is cheap to forge.
	var p *Peer
	switch h.typ {
	case helloInit:
		if err = h.verify(id, id, o.host.ID(), nil); err == nil {
			// The answering side does not want a session of its own
			// (wanted): handshaking back at once would race this one.
			p = o.peer(id)
			p.mu.Lock()
			if p.ring == nil {
				p.ring = &ringState{addr: rh.Src}
			}
			p.mu.Unlock()
			err = p.respondRing(h)
		}
	case helloResp:
		o.mu.RLock()
		p = o.peers[id]
		o.mu.RUnlock()
		if p == nil {
			err = errors.New("answer from a peer this node did not greet")
		} else {
			err = p.completeRing(h)
		}
	}
	if err != nil {
		o.drops.badHandshake.Add(1)
		o.log.Debug("ring handshake refused", "peer", id, "err", err)
	}
}

// respondRing answers an initiating hello, its signature checked, that
// came over the ring.
func (p *Peer) respondRing(init *hello) error {
	s, resp, err := p.o.answer(p, init, 0, true)
	if err != nil {
		return err
	}
	p.o.helloAddrs(p, init.addrs)
	// Send only after the initiator's first datagram under these keys.
	p.install(s, false)
	return p.sendHandshake(resp.marshal())
}

// completeRing finishes a handshake this node started over the ring.
func (p *Peer) completeRing(resp *hello) error {
	p.mu.Lock()
	var pend *pendingHello
	if p.ring != nil {
		pend, p.ring.pending = p.ring.pending, nil
	}
	p.mu.Unlock()
	if pend == nil {
		return errors.New("answer to no pending hello")
	}
	if err := p.o.finish(p, pend.greeting, resp); err != nil {
		return err
	}
	p.o.helloAddrs(p, resp.addrs)
	p.install(pend.greeting.session, true) // confirm sets the path
	// The first datagram under the new keys confirms them to the peer.
	p.ping(time.Now())
	return nil
}

// newRouteBufs makes the pool of buffers for packets sent over the ring.
func newRouteBufs() sync.Pool {
	return sync.Pool{New: func() any {
		b := make([]byte, routeBufSize)
		return &b
	}}
}
