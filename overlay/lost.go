package overlay

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// A node that gets a datagram naming a link session it does not hold (it
// dropped the session when it stopped wanting the link, it restarted, or
// the last message of a handshake went astray) tells the sender, which
// then handshakes again, or falls back to the ring, at once: otherwise it
// would send into the void until its pings time out, seconds later.
//
// The notice is a bare datagram header of type typeLost naming the index
// the sender used, padded to the shortest datagram. Over the stream the
// connection authenticates it; over UDP it is unauthenticated and taken
// only from the address the peer's datagrams come from. All it can make a
// node do is handshake again, as with the ring's stale-session hints, and
// it is never larger than the datagram that caused it, so it cannot
// amplify anything.

const (
	// lostEvery is how often one peer or address may be told.
	lostEvery = time.Second
	// lostPerSecond bounds the notices a node sends in all.
	lostPerSecond = 64
)

// lostKey is whom a notice goes to: a UDP source, or a peer on the
// stream.
type lostKey struct {
	from netip.AddrPort
	peer peer.ID
}

// lostNotices rate-limits the notices a node sends and counts them.
type lostNotices struct {
	told, heard atomic.Uint64

	mu          sync.Mutex
	sent        map[lostKey]time.Time
	windowStart time.Time
	inWindow    int
}

// allow reports whether a notice may go to key now, and records it.
func (l *lostNotices) allow(key lostKey, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.windowStart) >= time.Second {
		l.windowStart, l.inWindow = now, 0
	}
	if l.inWindow >= lostPerSecond {
		return false
	}
	if at, ok := l.sent[key]; ok && now.Sub(at) < lostEvery {
		return false
	}
	if l.sent == nil || len(l.sent) >= 1024 {
		l.sent = make(map[lostKey]time.Time)
	}
	l.sent[key] = now
	l.inWindow++
	return true
}

// tellLost tells whoever sent a datagram naming idx, an index this node
// does not hold, that the session is gone: the authenticated peer it came
// from over the stream, or its source address over UDP.
func (o *Overlay) tellLost(idx uint32, via Path, from netip.AddrPort, sender *Peer) {
	var key lostKey
	switch {
	case via == PathStream && sender != nil:
		key.peer = sender.id
	case via == PathUDP && from.IsValid():
		key.from = from
	default:
		return
	}
	if !o.lost.allow(key, time.Now()) {
		return
	}
	var buf [HeaderLen + TagLen]byte
	header{typ: typeLost, receiver: idx}.put(buf[:])
	var err error
	if via == PathStream {
		err = sender.stream.send(buf[:])
	} else {
		_, err = o.udp.WriteToUDPAddrPort(buf[:], from)
	}
	if err != nil {
		o.log.Debug("lost-session notice not sent", "via", via, "err", err)
		return
	}
	o.lost.told.Add(1)
}

// onLost handles a notice that the peer holds no session with index idx,
// ours for it. When that is the link session we send under, the link
// handshakes again, or, where we may not handshake on it (a link the peer
// started that neither ring nor configuration keeps), drops its sessions
// so that the ring carries the packets.
func (o *Overlay) onLost(idx uint32, via Path, from netip.AddrPort, sender *Peer) {
	p := sender
	if via == PathUDP {
		p = nil
		for _, q := range o.peerList() {
			// Peers pick their indexes apart, so two may share one:
			// the address tells them apart.
			s, ep := q.sendSession.Load(), q.endpoint.Load()
			if s != nil && s.remoteIndex == idx && ep != nil && *ep == from {
				p = q
				break
			}
		}
	}
	if p == nil {
		return
	}
	s := p.sendSession.Load()
	if s == nil || s.viaRing || s.remoteIndex != idx {
		return
	}
	o.lost.heard.Add(1)
	p.sessionLost(idx)
	if o.ring == nil || p.isStatic() || p.ringLink.Load() {
		p.requestRekey("peer lost the session")
		return
	}
	o.log.Debug("peer lost a link session we may not renew; falling back to the ring", "peer", p.id)
	p.dropLinkSessions()
}
