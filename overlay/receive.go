package overlay

import (
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
)

// maxDatagram is the largest datagram the receive path reads.
const maxDatagram = 65535

// recvBatch is how many reads one recvmmsg takes; each may be a GRO run.
const recvBatch = 8

// receiveUDP reads the data socket until it closes: up to recvBatch reads
// per system call, each a datagram or a GRO run of datagrams from one
// sender, handled in place. The Receiver's batch ends with the call.
//
// The batch starts with one buffer and doubles, up to recvBatch, each
// time a call fills it, so that an idle node holds one 64 KiB buffer.
func (o *Overlay) receiveUDP() {
	rx := o.cfg.NewReceiver()
	m := newMmsgs(recvBatch, 64)
	bufs := [][]byte{make([]byte, maxDatagram)}
	var lk lookups
	for {
		for i := range bufs {
			m.set(i, bufs[i], netip.AddrPort{})
		}
		cnt, err := o.udp.recvmmsg(m, len(bufs))
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			o.log.Warn("data socket read", "err", err)
			continue
		}
		for i := range cnt {
			n, oob := m.received(i)
			segSize := o.udp.segmentSize(n, oob)
			from := m.from(i)
			for off := 0; off < n; off += segSize {
				d := bufs[i][off:min(off+segSize, n)]
				if isSTUN(d) {
					o.handleSTUN(d, from)
					continue
				}
				o.receive(rx, &lk, d, PathUDP, from, nil)
			}
		}
		rx.Flush()
		lk.flush()
		lk = lookups{}
		if cnt == len(bufs) {
			for len(bufs) < min(2*cnt, recvBatch) {
				bufs = append(bufs, make([]byte, maxDatagram))
			}
		}
	}
}

// lookups remembers, for one batch of datagrams read together, the session
// and the source address looked up last: a GRO run brings dozens of
// datagrams under one session with one source address, and each lookup
// takes the overlay's lock. A change made meanwhile (a new session, an
// address that moved) takes effect with the next batch.
type lookups struct {
	index   uint32
	peer    *Peer
	session *session
	src     netip.Addr
	holder  *Peer

	// The packets received from counted and their bytes, not yet added
	// to its counters: once per batch (or change of peer), not once per
	// packet, since each addition is an atomic operation.
	counted        *Peer
	packets, bytes uint64
}

// count counts a packet of n bytes received from p.
func (lk *lookups) count(p *Peer, n int) {
	if lk.counted != p {
		lk.flush()
		lk.counted = p
	}
	lk.packets++
	lk.bytes += uint64(n)
}

// flush adds what count counted to the peer's counters.
func (lk *lookups) flush() {
	if lk.counted != nil && lk.packets > 0 {
		lk.counted.rxPackets.Add(lk.packets)
		lk.counted.rxBytes.Add(lk.bytes)
	}
	lk.counted, lk.packets, lk.bytes = nil, 0, 0
}

// receive handles one datagram. via says where it came from: for UDP, from
// is its source; for the stream, sender is the authenticated peer it came
// from, and datagrams that name another peer's session are refused. lk,
// if not nil, holds the lookups of the batch the datagram came in.
func (o *Overlay) receive(rx Receiver, lk *lookups, dgram []byte, via Path, from netip.AddrPort, sender *Peer) {
	h, err := parseHeader(dgram)
	if err != nil {
		o.drops.malformed.Add(1)
		return
	}
	if h.typ == typeLost {
		o.onLost(h.receiver, via, from, sender)
		return
	}
	p, s := o.sessionIn(lk, h.receiver)
	// No session yet (a handshake in progress) counts as unknown too, and
	// so does an end-to-end session of the ring on a link, except for the
	// direct UDP path hole punching made for it.
	if s == nil || (s.viaRing && (h.typ == typeRoute || via != PathUDP || !p.punchedFrom(from))) || (sender != nil && p != sender) {
		o.drops.unknownPeer.Add(1)
		if p == nil {
			// Not even reserved for a handshake: the sender holds a
			// session we lost.
			o.tellLost(h.receiver, via, from, sender)
		}
		return
	}
	if h.typ == typeRoute {
		if o.opened(s.openTag(h, dgram), p) {
			if via == PathUDP {
				p.setEndpoint(from, "datagram from new address")
			}
			o.routed(rx, dgram, p)
		}
		return
	}
	pt, err := s.open(h, dgram)
	if !o.opened(err, p) {
		return
	}
	// Authenticated: only now may the datagram move the peer's endpoint.
	if via == PathUDP {
		p.setEndpoint(from, "datagram from new address")
	}
	p.handle(rx, lk, h.typ, dgram, pt, via, from)
}

// handle acts on an opened datagram from p: pt, its plaintext, starts at
// dgram[HeaderLen:]. lk is as for receive.
func (p *Peer) handle(rx Receiver, lk *lookups, typ byte, dgram, pt []byte, via Path, from netip.AddrPort) {
	switch typ {
	case typePing:
		p.rxControl.Add(1)
		if len(pt) == pingLen {
			var buf [HeaderLen + pingLen + TagLen]byte
			copy(buf[HeaderLen:], pt)
			p.answerPing(via, from, buf[:])
		}
	case typePong:
		p.rxControl.Add(1)
		p.pong(pt, via)
	case typePunch:
		p.rxControl.Add(1)
		p.onPunch(pt)
	case typeData, typeDataPartial:
		if !p.holdsSource(lk, pt) {
			if p.hold(pt, typ == typeDataPartial) {
				return
			}
			p.o.drops.spoofedSource.Add(1)
			p.drops.Add(1)
			return
		}
		if lk != nil {
			lk.count(p, len(pt))
		} else {
			p.rxPackets.Add(1)
			p.rxBytes.Add(uint64(len(pt)))
		}
		rx.Deliver(dgram[:HeaderLen+len(pt)], typ == typeDataPartial)
	}
}

// sessionIn is session, looked up in lk first and remembered there.
func (o *Overlay) sessionIn(lk *lookups, idx uint32) (*Peer, *session) {
	if lk != nil && lk.session != nil && lk.index == idx {
		return lk.peer, lk.session
	}
	p, s := o.session(idx)
	if lk != nil && s != nil {
		lk.index, lk.peer, lk.session = idx, p, s
	}
	return p, s
}

// session finds the session a receiver index names, and its peer; nil
// while the session's handshake is still in progress.
func (o *Overlay) session(idx uint32) (*Peer, *session) {
	o.mu.RLock()
	defer o.mu.RUnlock()
	if e := o.byIndex[idx]; e != nil {
		return e.peer, e.session
	}
	return nil, nil
}

// opened reports whether a datagram from p opened, counting it by cause
// when it did not.
func (o *Overlay) opened(err error, p *Peer) bool {
	switch {
	case err == nil:
		return true
	case errors.Is(err, errReplay):
		o.drops.replay.Add(1)
	default:
		o.drops.auth.Add(1)
	}
	p.drops.Add(1)
	return false
}

// answerPing echoes a probe on the path it came by.
func (p *Peer) answerPing(via Path, from netip.AddrPort, buf []byte) {
	if via == PathRing {
		p.sendRing(typePong, buf[HeaderLen:HeaderLen+pingLen])
		return
	}
	s := p.sendSession.Load()
	if s == nil {
		return
	}
	dgram, ok := s.seal(typePong, buf, pingLen)
	if !ok {
		return
	}
	switch via {
	case PathUDP:
		p.o.udp.WriteToUDPAddrPort(dgram, from)
	case PathStream:
		p.stream.send(dgram)
	}
}

// holdsSource reports whether the packet's IPv4 source address is one the
// peer announced, so that no member can send as another. lk, if not nil,
// remembers the last address that passed.
func (p *Peer) holdsSource(lk *lookups, pkt []byte) bool {
	if len(pkt) < 20 || pkt[0]>>4 != 4 {
		return false
	}
	src := netip.AddrFrom4([4]byte(pkt[12:16]))
	if lk != nil && lk.holder == p && lk.src == src {
		return true
	}
	p.o.mu.RLock()
	held := p.o.byAddr[src] == p
	p.o.mu.RUnlock()
	if held && lk != nil {
		lk.src, lk.holder = src, p
	}
	return held
}

// dropCounters count datagrams and packets refused, by reason.
type dropCounters struct {
	malformed     atomic.Uint64
	unknownPeer   atomic.Uint64
	auth          atomic.Uint64
	replay        atomic.Uint64
	spoofedSource atomic.Uint64
	noRoute       atomic.Uint64
	noSession     atomic.Uint64
	sendFailed    atomic.Uint64
	badHandshake  atomic.Uint64
	streamQueue   atomic.Uint64
	badStream     atomic.Uint64
	ttlExpired    atomic.Uint64
}

func (d *dropCounters) snapshot() map[string]uint64 {
	return map[string]uint64{
		"malformed":          d.malformed.Load(),
		"unknown_peer":       d.unknownPeer.Load(),
		"auth_failed":        d.auth.Load(),
		"replayed":           d.replay.Load(),
		"spoofed_source":     d.spoofedSource.Load(),
		"no_route":           d.noRoute.Load(),
		"no_session":         d.noSession.Load(),
		"send_failed":        d.sendFailed.Load(),
		"bad_handshake":      d.badHandshake.Load(),
		"stream_queue_full":  d.streamQueue.Load(),
		"bad_stream_framing": d.badStream.Load(),
		"ttl_expired":        d.ttlExpired.Load(),
	}
}
