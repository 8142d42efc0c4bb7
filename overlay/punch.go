package overlay

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"slices"
	"sync/atomic"
	"time"
)

// Hole punching. Two nodes behind NATs cannot dial each other, but each
// can send UDP: when both send to the other's public mapping at about the
// same time, each NAT sees an answer to a packet its side sent, and lets
// it in. A node that wants a shortcut to a peer it reaches over the ring,
// and that is itself behind a NAT, sends the peer its UDP candidates (its
// public mapping from STUN, and its local addresses for a peer on the
// same network) end to end under their session over the ring; the peer
// answers with its own and both probe each other's candidates with pings
// under that session. A path is adopted only on an authenticated pong, so
// no third host can capture it; the packets then go over UDP, still under
// the end-to-end keys, and back over the ring as soon as the pings go
// unanswered.
//
// A punch message makes a node send at most punchRounds pings to each of
// at most maxCandidates addresses, and a peer gets at most one punch
// every punchEvery: no peer can use it to make a node flood others.
const (
	punchRounds   = 5
	punchGap      = 200 * time.Millisecond
	punchEvery    = 2 * time.Second
	maxCandidates = 8
	// punchTTL is the TTL of the first round of probes: enough to leave
	// through this side's NAT, too little to reach the peer's (see
	// udpConn.writeTTL): NATs are usually the first hop or the second.
	punchTTL = 2

	punchReply byte = 1 // flag: an answer to a punch
)

var errPunch = errors.New("malformed punch message")

// punch message: flags n (ip4(4) port(2))×n
func marshalPunch(flags byte, cands []netip.AddrPort) []byte {
	b := []byte{flags, 0}
	for _, c := range cands {
		if !c.Addr().Is4() || b[1] == maxCandidates {
			continue
		}
		b = append(b, c.Addr().AsSlice()...)
		b = binary.BigEndian.AppendUint16(b, c.Port())
		b[1]++
	}
	return b
}

func parsePunch(b []byte) (flags byte, cands []netip.AddrPort, err error) {
	if len(b) < 2 || b[0]&^punchReply != 0 || int(b[1]) > maxCandidates || len(b) != 2+6*int(b[1]) {
		return 0, nil, errPunch
	}
	for i := range int(b[1]) {
		e := b[2+6*i:]
		ap := netip.AddrPortFrom(netip.AddrFrom4([4]byte(e[:4])), binary.BigEndian.Uint16(e[4:6]))
		if !ap.Addr().IsUnspecified() && ap.Port() != 0 && !ap.Addr().IsMulticast() {
			cands = append(cands, ap)
		}
	}
	return b[0], cands, nil
}

// candidates are where peers may reach this node's data socket: its
// public mapping when its NAT keeps one mapping for every destination,
// and its own addresses.
func (o *Overlay) candidates() []netip.AddrPort {
	var out []netip.AddrPort
	if nat := o.NAT(); nat.Public.IsValid() && (nat.Mapping == MappingIndependent || nat.Mapping == MappingNone) {
		out = append(out, nat.Public)
	}
	addrs, _ := net.InterfaceAddrs()
	port := o.DataAddr().Port()
	for _, a := range addrs {
		n, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(n.IP)
		if !ok || !ip.Unmap().Is4() || ip.IsLoopback() || len(out) == maxCandidates || o.inVirtual(ip.Unmap()) {
			continue // never the VM's side: the data plane must not run over itself
		}
		out = append(out, netip.AddrPortFrom(ip.Unmap(), port))
	}
	return out
}

// startPunch sends the peer this node's candidates over the ring.
func (p *Peer) startPunch(flags byte) {
	p.o.punches.sent.Add(1)
	p.o.log.Debug("punching", "peer", p.id, "reply", flags&punchReply != 0, "candidates", p.o.candidates())
	p.sendRing(typePunch, marshalPunch(flags, p.o.candidates()))
}

// onPunch takes a peer's candidates: it answers a first punch with its
// own, and probes them.
func (p *Peer) onPunch(pt []byte) {
	flags, cands, err := parsePunch(pt)
	if err != nil {
		p.o.drops.malformed.Add(1)
		return
	}
	now := time.Now()
	p.mu.Lock()
	if now.Sub(p.lastPunch) < punchEvery {
		p.mu.Unlock()
		p.o.punches.refused.Add(1)
		return
	}
	p.lastPunch = now
	// Only these addresses, which the peer named under the session's
	// keys, may carry its datagrams until a path is adopted: a relay
	// that unwraps a routed datagram cannot move the peer's endpoint.
	p.punchCands = cands
	p.mu.Unlock()
	p.o.punches.received.Add(1)
	p.o.log.Debug("punch from peer", "peer", p.id, "reply", flags&punchReply != 0, "candidates", cands)
	if flags&punchReply == 0 {
		p.startPunch(punchReply)
	}
	if len(cands) == 0 {
		return
	}
	o := p.o
	o.spawn(func() {
		t := time.NewTicker(punchGap)
		defer t.Stop()
		for i := range punchRounds {
			if p.punchedUp(time.Now()) {
				return
			}
			for _, c := range cands {
				if !o.inVirtual(c.Addr()) {
					// The first round only opens this side's NAT.
					p.probeTo(c, map[bool]int{true: punchTTL}[i == 0])
				}
			}
			select {
			case <-o.ctx.Done():
				return
			case <-t.C:
			}
		}
	})
}

// inVirtual reports whether a lies in one of the overlay's own subnets.
func (o *Overlay) inVirtual(a netip.Addr) bool {
	for _, p := range o.cfg.VirtualSubnets {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// punchedFrom reports whether a datagram under a session made over the
// ring may come over UDP from addr: the peer named it as a candidate, or
// it is the endpoint already adopted.
func (p *Peer) punchedFrom(addr netip.AddrPort) bool {
	addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
	if ep := p.endpoint.Load(); ep != nil && *ep == addr {
		return true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Contains(p.punchCands, addr)
}

// punched reports whether the peer's packets go over a punched path: UDP
// under a session made over the ring.
func (p *Peer) punched() bool {
	s := p.sendSession.Load()
	return s != nil && s.viaRing && Path(p.path.Load()) == PathUDP
}

// probeTo sends a ping under the current session to one address, with
// the given IP TTL (0: the default).
func (p *Peer) probeTo(ep netip.AddrPort, ttl int) {
	s := p.sendSession.Load()
	if s == nil {
		return
	}
	var idb [8]byte
	rand.Read(idb[:])
	id := binary.BigEndian.Uint64(idb[:])
	p.mu.Lock()
	if len(p.pendingProbes) > 64 {
		clear(p.pendingProbes)
	}
	p.pendingProbes[id] = true
	p.mu.Unlock()
	var buf [HeaderLen + pingLen + TagLen]byte
	binary.BigEndian.PutUint64(buf[HeaderLen:], id)
	binary.BigEndian.PutUint64(buf[HeaderLen+8:], uint64(time.Now().UnixNano()))
	dgram, ok := s.seal(typePing, buf[:], pingLen)
	if !ok {
		return
	}
	p.o.punches.probes.Add(1)
	if ttl > 0 {
		p.o.udp.writeTTL(dgram, ep, ttl)
		return
	}
	p.o.udp.WriteToUDPAddrPort(dgram, ep)
}

// punchCounters count hole punching's messages.
type punchCounters struct {
	sent, received, refused, probes atomic.Uint64
}
