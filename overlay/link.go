package overlay

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	manet "github.com/multiformats/go-multiaddr/net"
)

// Path is how a peer's datagrams travel.
type Path int32

const (
	PathNone   Path = iota // no session yet
	PathUDP                // datagrams over the UDP data socket
	PathStream             // datagrams over a libp2p stream: UDP does not get through
	PathRing               // routed over the ring: no link of its own (route.go)
)

func (p Path) String() string {
	switch p {
	case PathUDP:
		return "udp"
	case PathStream:
		return "stream"
	case PathRing:
		return "ring"
	}
	return "none"
}

// Link timing.
const (
	tickInterval = time.Second
	// pingInterval keeps an idle link's NAT mappings and path choice
	// fresh: each end pings when its last round trip over UDP is this old
	// (25 s, as WireGuard's keepalive, is short enough for NATs). A link
	// that is probing (UDP not confirmed since it last went down, or
	// sending without hearing back) pings every tick.
	pingInterval = 25 * time.Second
	// udpTimeout is how long a round trip over UDP vouches for the path
	// of an idle link; a link that is sending probes once its last round
	// trip is quietAfter old, and gives up on UDP at sendTimeout. Only
	// round trips count: hearing the peer proves nothing about the way to
	// it.
	udpTimeout  = pingInterval + 10*time.Second
	sendTimeout = 5 * time.Second
	quietAfter  = 2 * time.Second
	// probeGrace is how long a probe may take to be answered before an
	// old round trip counts against the path.
	probeGrace = time.Second
	// deafLinkTimeout is how long a link may go unanswered while we send,
	// a handshake tried in between, before its connection is closed.
	deafLinkTimeout  = 8 * time.Second
	handshakeTimeout = 5 * time.Second
	dialTimeout      = 5 * time.Second
	// rekeyGrace lets the peer with the lower ID rekey first, so that both
	// ends rarely rekey at once.
	rekeyGrace = 30 * time.Second
	// minRekeyGap bounds rekeys caused by path changes.
	minRekeyGap = 2 * time.Second
	// ringSilence: a peer over the ring that we send to and that answers
	// nothing, pings included, for this long gets a new handshake.
	ringSilence = 3 * time.Second
)

func (p *Peer) isStatic() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.static
}

// dropLinkSessions forgets the peer's link sessions when its ring link
// ends: the peer forgets them too, so packets move to a session over the
// ring rather than go on to keys the peer no longer has.
func (p *Peer) dropLinkSessions() {
	p.mu.Lock()
	var gone []*session
	if p.previous != nil && !p.previous.viaRing {
		gone = append(gone, p.previous)
		p.previous = nil
	}
	if p.current != nil && !p.current.viaRing {
		gone = append(gone, p.current)
		p.current, p.previous = p.previous, nil
	}
	p.udpDownAt = time.Now()
	p.mu.Unlock()
	for _, s := range gone {
		p.sendSession.CompareAndSwap(s, nil)
		p.o.dropIndex(s.localIndex)
	}
	p.wake()
}

// heardWithin reports whether the peer was heard (any authenticated
// datagram) within d.
func (p *Peer) heardWithin(now time.Time, d time.Duration) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return now.Sub(p.lastHeard) < d
}

// Peer is one remote node and the link to it.
type Peer struct {
	o  *Overlay
	id peer.ID

	// Packets whose source address is being checked (addrs.go).
	heldMu   sync.Mutex
	checking []netip.Addr
	held     []heldPacket
	heldSize int

	// sendSession is what outgoing datagrams are sealed under.
	sendSession atomic.Pointer[session]
	path        atomic.Int32 // a Path
	endpoint    atomic.Pointer[netip.AddrPort]
	stream      *streamSender

	wakeCh chan struct{}
	cancel context.CancelFunc // stops the link loop

	mu           sync.Mutex
	static       bool
	ring         *ringState // set for a peer reached over the ring
	current      *session   // newest session
	previous     *session   // kept for datagrams still in flight
	lastPing     time.Time
	lastTx       uint64    // txPackets at the last tick
	lastTxChange time.Time // when txPackets last moved
	// roundTrip is when UDP last proved to work both ways: a pong to one
	// of our pings. Hearing the peer proves nothing about our way to it.
	roundTrip time.Time
	// udpDownAt is when the link last left UDP: only a round trip after
	// it brings the link back, so that a one-way failure cannot flap.
	udpDownAt time.Time
	// probeSince and udpProbeSince are when the first ping since the
	// last answer (over any path) or the last UDP round trip went out;
	// zero while none is outstanding. A link fails for want of answers
	// only to pings it sent: after a quiet spell on our side the last
	// answer may be old because there was nothing to ask.
	probeSince, udpProbeSince time.Time
	// ringTrip is when a ping over the ring was last answered: until then
	// the peer may not hold our newest keys yet, so we keep pinging.
	ringTrip      time.Time
	lastRekey     time.Time
	rekeyWanted   bool
	rtt           time.Duration
	pendingProbes map[uint64]bool

	// ringLink is set while the ring keeps a link to the peer: the link
	// is pinged often enough for the ring to notice a dead peer fast.
	ringLink atomic.Bool
	// rxControl counts authenticated pings and pongs; with rxPackets it
	// tells the link loop whether the peer was heard (lastHeard).
	rxControl atomic.Uint64
	// firstRingTx is when the first data packet went to the peer over the
	// ring (unix ns, 0 for none since the last shortcut); directAt when the
	// link's path last became UDP or stream: a shortcut's time to direct.
	firstRingTx, directAt atomic.Int64
	lastRx                uint64    // rxPackets+rxControl at the last tick; p.mu
	lastHeard             time.Time // when that sum last moved; p.mu
	// quiet is set while the peer has not been heard for quietFor (at the
	// last tick): packets sent to it meanwhile are kept (kept.go).
	quiet atomic.Bool
	kept  keptPackets

	lastPunch                   time.Time        // p.mu
	punchCands                  []netip.AddrPort // p.mu: where the peer said it may be reached
	punchesSent, punchesRefused atomic.Uint64

	rekeys                                 atomic.Uint64
	txPackets, txBytes, rxPackets, rxBytes atomic.Uint64
	drops                                  atomic.Uint64
}

func newPeer(o *Overlay, id peer.ID) *Peer {
	p := &Peer{
		o:             o,
		id:            id,
		wakeCh:        make(chan struct{}, 1),
		pendingProbes: make(map[uint64]bool),
	}
	p.stream = newStreamSender(o, id)
	return p
}

// wake makes the link loop look at the peer now rather than at its next tick.
func (p *Peer) wake() {
	select {
	case p.wakeCh <- struct{}{}:
	default:
	}
}

// requestRekey asks for a new session: the path changed, or the keys aged.
func (p *Peer) requestRekey(reason string) {
	p.mu.Lock()
	if p.rekeyWanted {
		p.mu.Unlock()
		return
	}
	p.rekeyWanted = true
	p.mu.Unlock()
	p.o.log.Debug("rekey requested", "peer", p.id, "reason", reason)
	p.wake()
}

// run is the link loop: the one goroutine that changes the peer's link.
func (p *Peer) run(ctx context.Context) {
	defer p.stream.close()
	t := time.NewTicker(tickInterval)
	defer t.Stop()
	for {
		p.tick(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-p.wakeCh:
		}
	}
}

func (p *Peer) tick(ctx context.Context) {
	now := time.Now()
	p.mu.Lock()
	if rx := p.rxPackets.Load() + p.rxControl.Load(); rx != p.lastRx {
		p.lastRx, p.lastHeard = rx, now
	}
	p.quiet.Store(now.Sub(p.lastHeard) >= quietFor)
	p.mu.Unlock()
	p.expireKept(now)
	h := p.o.host
	connected := h.Network().Connectedness(p.id) == network.Connected
	p.mu.Lock()
	static := p.static
	ring := p.ring != nil
	udpUp := p.udpConfirmed(now) && (p.current == nil || !p.current.viaRing)
	linkSession := p.current != nil && !p.current.viaRing
	p.mu.Unlock()
	// With the ring, only links the ring keeps (and static ones) start
	// link sessions: a connection left from answering a request must not
	// pull a peer off its session over the ring. A link session the peer
	// started is used all the same.
	mayLink := p.o.ring == nil || static || p.ringLink.Load()
	if ring && !static && !mayLink && linkSession && (p.silentWhileSending(now) || p.unconfirmedLink(now)) {
		// A link session the peer started, on a connection it no longer
		// keeps, and the peer has stopped answering it, or never
		// confirmed it: it lost the session. We may not handshake on the
		// connection; drop the session, so that the ring carries the
		// packets under a new one.
		p.o.log.Debug("link session silent; falling back to the ring", "peer", p.id)
		p.dropLinkSessions()
		linkSession = false
	}
	// A link whose control connection is gone keeps its UDP path while
	// pings over it are answered; after that the ring carries its
	// packets.
	if ring && !static && ((!connected && !udpUp) || (!mayLink && !linkSession)) {
		p.tickRing(now)
		return
	}

	if !connected && static {
		dctx, cancel := context.WithTimeout(ctx, dialTimeout)
		err := h.Connect(dctx, peer.AddrInfo{ID: p.id})
		cancel()
		if err != nil {
			p.o.log.Debug("dial failed", "peer", p.id, "err", err)
			p.updatePath(now, false)
			return
		}
		connected = true
	}
	// Sending on a link session, and no ping answered: the peer cannot
	// open what we send (a handshake race lost a confirm, or it lost
	// the session), though it may still send under a session we hold.
	// Handshake again, as over the ring.
	// If the handshake does not help either, the connection is dead
	// at the far end though not yet here: close it and forget the
	// session; the ring carries the packets meanwhile, and links again
	// on a new connection.
	if connected && mayLink && linkSession {
		switch deaf := p.unanswered(now); {
		case deaf > deafLinkTimeout:
			p.o.log.Info("link deaf: closing its connection", "peer", p.id, "unanswered", deaf.Round(time.Second))
			p.o.deafLinks.Add(1)
			p.dropLinkSessions() // the next connection starts afresh
			h.Network().ClosePeer(p.id)
			return
		case deaf > ringSilence:
			p.requestRekey("pings unanswered")
		}
	}
	// A link that came up under a session over the ring handshakes at
	// once: the link's own session gives it keys and a UDP endpoint.
	if connected && mayLink && (p.wantHandshake(now) || p.currentViaRing()) {
		if err := p.initiate(ctx); err != nil {
			p.o.log.Warn("handshake failed", "peer", p.id, "err", err)
		}
	}
	p.expireSessions(now)
	p.ping(now)
	p.updatePath(now, connected)
}

// tickRing is tick for a peer reached over the ring.
func (p *Peer) tickRing(now time.Time) {
	p.mu.Lock()
	if tx := p.txPackets.Load(); tx != p.lastTx {
		p.lastTx, p.lastTxChange = tx, now
	}
	pend := p.ring.pending
	if pend != nil && now.Sub(pend.sent) > ringHandshakeTimeout {
		p.ring.pending = nil
		p.o.abandon(pend.greeting)
		pend = nil
	}
	sending := now.Sub(p.lastTxChange) < quietAfter
	// A session is wanted where packets wait for one, or flow.
	wanted := p.ring.wanted || sending
	// Sending, answered by silence though pinged: the peer may have
	// restarted and lost our keys. Handshake again.
	silent := p.silentLocked(now)
	p.mu.Unlock()
	if silent {
		p.requestRekey("peer silent")
	}
	viaRing := p.currentViaRing()
	if wanted && pend == nil && (p.wantHandshake(now) || !viaRing || p.unconfirmedRing(now)) {
		if err := p.initiateRing(); err != nil {
			p.o.log.Debug("ring handshake", "peer", p.id, "err", err)
		}
	}
	p.expireSessions(now)
	// Compare and swap: a session confirmed meanwhile sets the path
	// itself, and this tick's older view must not undo it.
	prev := Path(p.path.Load())
	next := PathNone
	if s := p.sendSession.Load(); s != nil && s.viaRing {
		next = PathRing
		if p.punchedUp(now) {
			next = PathUDP // hole punching found a direct path
		}
	}
	if prev != next && p.path.CompareAndSwap(int32(prev), int32(next)) && prev != PathNone {
		p.o.log.Info("link path", "peer", p.id, "path", next.String(), "was", prev.String())
		switch {
		case prev == PathRing && next == PathUDP:
			p.directAt.Store(now.UnixNano())
		case prev == PathUDP:
			p.mu.Lock()
			p.udpDownAt = now
			p.mu.Unlock()
		}
	}
	p.ping(now)
}

// silentWhileSending reports whether we have sent to the peer lately
// while it stayed silent for ringSilence, under a session that old.
func (p *Peer) silentWhileSending(now time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if tx := p.txPackets.Load(); tx != p.lastTx {
		p.lastTx, p.lastTxChange = tx, now
	}
	return p.silentLocked(now)
}

// silentLocked is silentWhileSending with p.mu held.
func (p *Peer) silentLocked(now time.Time) bool {
	sending := now.Sub(p.lastTxChange) < quietAfter
	return sending && now.Sub(p.lastHeard) > ringSilence &&
		p.current != nil && now.Sub(p.current.created) > ringSilence
}

// unanswered returns how long we have been sending to the peer under a
// link session without an answer to our pings: since the first ping after
// the last answer or since the session began, whichever is later (0 when
// we are not sending, not on a link session, or no ping is outstanding).
func (p *Peer) unanswered(now time.Time) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	if tx := p.txPackets.Load(); tx != p.lastTx {
		p.lastTx, p.lastTxChange = tx, now
	}
	s := p.current
	if now.Sub(p.lastTxChange) >= quietAfter || s == nil || s.viaRing || p.probeSince.IsZero() {
		return 0
	}
	return now.Sub(later(p.probeSince, s.created))
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// unconfirmedLink reports whether the current session is a link session
// we answered and the initiator never confirmed.
func (p *Peer) unconfirmedLink(now time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.current
	return s != nil && !s.viaRing && !s.sendReady.Load() && now.Sub(s.created) > ringHandshakeTimeout
}

// unconfirmedRing reports whether the current session is one over the
// ring that we answered but the initiator never confirmed: it gave up on
// it, and we must handshake ourselves or never send.
func (p *Peer) unconfirmedRing(now time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.current
	return s != nil && s.viaRing && !s.sendReady.Load() && now.Sub(s.created) > ringHandshakeTimeout
}

// punchedUp reports whether a punched UDP path carries the peer's packets:
// a round trip over it is recent, and the peer answers while we send.
func (p *Peer) punchedUp(now time.Time) bool {
	if p.endpoint.Load() == nil {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.udpConfirmed(now) && !p.udpFailing(now)
}

// udpFailing reports whether UDP stopped answering while we send: no round
// trip for sendTimeout, and a probe out for probeGrace; p.mu is held.
func (p *Peer) udpFailing(now time.Time) bool {
	sending := now.Sub(p.lastTxChange) < quietAfter
	return sending && now.Sub(p.roundTrip) >= sendTimeout &&
		!p.udpProbeSince.IsZero() && now.Sub(p.udpProbeSince) >= probeGrace
}

// dropDirect moves the peer's packets back to the ring: its punched
// path was let go.
func (p *Peer) dropDirect() {
	p.mu.Lock()
	p.udpDownAt = time.Now()
	p.mu.Unlock()
	p.wake()
}

// currentViaRing reports whether the peer's newest session was made over
// the ring.
func (p *Peer) currentViaRing() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.current != nil && p.current.viaRing
}

// wantRing asks for a session over the ring: packets are waiting for a
// peer that no link reaches.
func (p *Peer) wantRing() {
	p.mu.Lock()
	if p.ring == nil || p.ring.wanted {
		p.mu.Unlock()
		return
	}
	p.ring.wanted = true
	p.mu.Unlock()
	p.wake()
}

// wantHandshake decides whether this side starts a handshake now.
func (p *Peer) wantHandshake(now time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.current
	switch {
	case s == nil || s.expired(now):
		return true
	case p.rekeyWanted && now.Sub(p.lastRekey) >= minRekeyGap:
		return true
	case s.sendCounter.Load() > RekeyAfterMessages:
		return true
	case now.Sub(s.created) > RekeyAfterTime:
		// The lower peer ID rekeys on time; the other waits a grace
		// period in case the first is gone.
		if p.o.host.ID() < p.id {
			return true
		}
		return now.Sub(s.created) > RekeyAfterTime+rekeyGrace
	}
	return false
}

// install makes s the peer's newest session. Sessions older than the one
// it replaces are forgotten.
func (p *Peer) install(s *session, ready bool) {
	p.mu.Lock()
	old := p.previous
	if p.current != nil {
		p.rekeys.Add(1)
	}
	p.previous, p.current = p.current, s
	p.rekeyWanted = false
	p.lastRekey = time.Now()
	p.mu.Unlock()
	if old != nil {
		p.o.dropIndex(old.localIndex)
	}
	if ready {
		p.confirm(s)
	}
}

// confirm starts sending under s.
func (p *Peer) confirm(s *session) {
	s.sendReady.Store(true)
	p.sendSession.Store(s)
	if s.viaRing {
		// Packets may go at once, before the link loop looks.
		p.path.CompareAndSwap(int32(PathNone), int32(PathRing))
	}
	p.wake() // ping at once to (re)confirm the path under the new keys
	if p.ringLink.Load() {
		p.o.ring.kick() // requests may be waiting for the link
	}
	p.o.announce(p)
	p.resendKept(s)
}

func (p *Peer) expireSessions(now time.Time) {
	p.mu.Lock()
	var gone []*session
	if p.previous != nil && p.previous.expired(now) {
		gone = append(gone, p.previous)
		p.previous = nil
	}
	if p.current != nil && p.current.expired(now) {
		gone = append(gone, p.current)
		p.current = nil
	}
	p.mu.Unlock()
	for _, s := range gone {
		p.sendSession.CompareAndSwap(s, nil)
		p.o.dropIndex(s.localIndex)
	}
}

// ping sends a probe over UDP (and over the stream while that is the
// path): answered probes keep the UDP path confirmed and measure RTT.
func (p *Peer) ping(now time.Time) {
	if p.sendSession.Load() == nil {
		return
	}
	p.mu.Lock()
	overRing := p.ring != nil && Path(p.path.Load()) == PathRing
	sending := now.Sub(p.lastTxChange) < quietAfter
	sinceTrip := now.Sub(p.roundTrip)
	var due bool
	switch {
	case overRing:
		due = now.Sub(p.ringTrip) >= udpTimeout || now.Sub(p.lastPing) >= pingInterval ||
			(sending && now.Sub(p.lastHeard) >= quietAfter && now.Sub(p.lastPing) >= quietAfter)
	case p.ringLink.Load() && now.Sub(p.lastHeard) >= ringKeepalive && now.Sub(p.lastPing) >= ringKeepalive:
		due = true // the ring must notice a dead link within linkTimeout
	case !p.udpConfirmed(now), sending && sinceTrip >= quietAfter:
		due = true // probing
	default:
		due = sinceTrip >= pingInterval && now.Sub(p.lastPing) >= pingInterval
	}
	if !due {
		p.mu.Unlock()
		return
	}
	p.lastPing = now
	if p.probeSince.IsZero() {
		p.probeSince = now
	}
	if !overRing && p.udpProbeSince.IsZero() {
		p.udpProbeSince = now
	}
	var idb [8]byte
	rand.Read(idb[:])
	id := binary.BigEndian.Uint64(idb[:])
	if len(p.pendingProbes) > 64 { // unanswered probes must not pile up
		clear(p.pendingProbes)
	}
	p.pendingProbes[id] = true
	p.mu.Unlock()

	var buf [HeaderLen + pingLen + TagLen]byte
	binary.BigEndian.PutUint64(buf[HeaderLen:], id)
	binary.BigEndian.PutUint64(buf[HeaderLen+8:], uint64(now.UnixNano()))
	if overRing {
		p.sendRing(typePing, buf[HeaderLen:HeaderLen+pingLen])
		return
	}
	p.sendVia(PathUDP, typePing, buf[:], pingLen)
	if Path(p.path.Load()) == PathStream {
		binary.BigEndian.PutUint64(buf[HeaderLen:], id)
		binary.BigEndian.PutUint64(buf[HeaderLen+8:], uint64(now.UnixNano()))
		p.sendVia(PathStream, typePing, buf[:], pingLen)
	}
}

// pong handles an authenticated answer to one of our probes.
func (p *Peer) pong(payload []byte, via Path) {
	if len(payload) != pingLen {
		return
	}
	id := binary.BigEndian.Uint64(payload)
	sent := time.Unix(0, int64(binary.BigEndian.Uint64(payload[8:])))
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.pendingProbes[id] {
		return
	}
	delete(p.pendingProbes, id)
	// An answer, on any path, shows that the peer can open what we send
	// (hearing it shows only the reverse).
	p.probeSince = time.Time{}
	if rtt := now.Sub(sent); rtt >= 0 && rtt < time.Minute {
		p.rtt = rtt
	}
	switch via {
	case PathUDP:
		p.tripLocked(now)
	case PathRing:
		p.ringTrip = now
	}
}

// tripLocked records a round trip over UDP; p.mu is held.
func (p *Peer) tripLocked(now time.Time) {
	was := p.udpConfirmed(now)
	p.roundTrip = now
	p.udpProbeSince = time.Time{}
	if !was {
		p.wake() // switch to UDP without waiting for the tick
	}
}

// udpConfirmed reports whether a round trip since UDP last went down, and
// recent enough, shows that UDP works; p.mu is held.
func (p *Peer) udpConfirmed(now time.Time) bool {
	return p.roundTrip.After(p.udpDownAt) && now.Sub(p.roundTrip) < udpTimeout
}

// updatePath picks UDP while pings over it are answered, the stream while
// the control connection is up, and nothing otherwise.
func (p *Peer) updatePath(now time.Time, connected bool) {
	p.mu.Lock()
	if tx := p.txPackets.Load(); tx != p.lastTx {
		p.lastTx, p.lastTxChange = tx, now
	}
	udpOK := p.udpConfirmed(now) && !p.udpFailing(now)
	p.mu.Unlock()
	next := PathNone
	switch s := p.sendSession.Load(); {
	case s == nil:
	case s.viaRing:
		next = PathRing // until the link's own session is up
	case udpOK:
		next = PathUDP
	case connected:
		next = PathStream
	}
	prev := Path(p.path.Swap(int32(next)))
	if prev != next {
		if prev == PathRing || prev == PathNone {
			p.directAt.Store(now.UnixNano())
		}
		if prev == PathUDP {
			p.mu.Lock()
			p.udpDownAt = now
			p.mu.Unlock()
		}
		p.o.log.Info("link path", "peer", p.id, "path", next.String(), "was", prev.String())
		if prev != PathNone && next != PathNone {
			p.requestRekey("path changed")
		}
	}
}

// setEndpoint records the peer's UDP address. A change of address is a
// path change: it rekeys.
//
// It runs for every datagram received, so the common case, no change,
// comes first and allocates nothing.
func (p *Peer) setEndpoint(from netip.AddrPort, reason string) {
	from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
	old := p.endpoint.Load()
	if old != nil && *old == from {
		return
	}
	if p.o.inVirtual(from.Addr()) {
		return // a datagram that came through the overlay itself
	}
	ep := from
	p.endpoint.Store(&ep)
	if old != nil {
		p.o.log.Info("peer endpoint moved", "peer", p.id, "from", *old, "to", ep, "reason", reason)
		p.requestRekey("endpoint moved")
	}
}

// send seals and sends one datagram on the peer's current path.
func (p *Peer) send(typ byte, buf []byte, n int) error {
	path := Path(p.path.Load())
	switch path {
	case PathNone:
		p.drops.Add(1)
		p.o.drops.noSession.Add(1)
		if isData(typ) {
			p.keepUnsent(typ, buf[HeaderLen:HeaderLen+n])
		}
		p.wantRing()
		return ErrNoSession
	case PathRing:
		err := p.sendRing(typ, buf[HeaderLen:HeaderLen+n])
		if err == nil && isData(typ) {
			p.txPackets.Add(1)
			p.txBytes.Add(uint64(n))
			if p.firstRingTx.Load() == 0 {
				p.firstRingTx.CompareAndSwap(0, time.Now().UnixNano())
			}
		}
		return err
	}
	return p.sendVia(path, typ, buf, n)
}

func (p *Peer) sendVia(path Path, typ byte, buf []byte, n int) error {
	s := p.sendSession.Load()
	if s == nil {
		p.o.drops.noSession.Add(1)
		return ErrNoSession
	}
	if isData(typ) && p.quiet.Load() {
		p.keep(s.remoteIndex, typ, buf[HeaderLen:HeaderLen+n])
	}
	dgram, ok := s.seal(typ, buf, n)
	if !ok {
		p.requestRekey("session spent")
		p.o.drops.noSession.Add(1)
		return ErrNoSession
	}
	if s.sendCounter.Load() == RekeyAfterMessages {
		p.requestRekey("message limit")
	}
	var err error
	switch path {
	case PathUDP:
		ep := p.endpoint.Load()
		if ep == nil {
			return ErrNoSession
		}
		_, err = p.o.udp.WriteToUDPAddrPort(dgram, *ep)
	case PathStream:
		err = p.stream.send(dgram)
	}
	if err != nil {
		p.drops.Add(1)
		p.o.drops.sendFailed.Add(1)
		return fmt.Errorf("send to %s over %v: %w", p.id, path, err)
	}
	if isData(typ) {
		p.txPackets.Add(1)
		p.txBytes.Add(uint64(n))
	}
	return nil
}

// sendSegments seals each packet of a batch in place, as datagrams of
// type typ, and sends the batch (see Overlay.SendSegments).
func (p *Peer) sendSegments(typ byte, buf []byte, stride int, lens []int) error {
	path := Path(p.path.Load())
	s := p.sendSession.Load()
	if path == PathNone || s == nil {
		p.drops.Add(uint64(len(lens)))
		p.o.drops.noSession.Add(uint64(len(lens)))
		for i, n := range lens {
			off := i*stride + HeaderLen
			p.keepUnsent(typ, buf[off:off+n])
		}
		if path == PathNone {
			p.wantRing()
		}
		return ErrNoSession
	}
	if path == PathRing {
		for i, n := range lens {
			off := i*stride + HeaderLen
			if err := p.send(typ, buf[off-HeaderLen:], n); err != nil {
				return err
			}
		}
		return nil
	}
	first, ok := s.reserve(len(lens))
	if !ok {
		p.requestRekey("session spent")
		p.o.drops.noSession.Add(uint64(len(lens)))
		return ErrNoSession
	}
	end := 0
	var bytes uint64
	quiet := p.quiet.Load()
	for i, n := range lens {
		off := i * stride
		if quiet {
			p.keep(s.remoteIndex, typ, buf[off+HeaderLen:off+HeaderLen+n])
		}
		dgram := s.sealAt(typ, first+uint64(i), buf[off:], n)
		end = off + len(dgram)
		bytes += uint64(n)
		if path == PathStream {
			if err := p.stream.send(dgram); err != nil {
				p.drops.Add(1)
				p.o.drops.sendFailed.Add(1)
			}
		}
	}
	if s.sendCounter.Load() >= RekeyAfterMessages {
		p.requestRekey("message limit")
	}
	p.txPackets.Add(uint64(len(lens)))
	p.txBytes.Add(bytes)
	if path == PathStream {
		return nil
	}
	ep := p.endpoint.Load()
	if ep == nil {
		return ErrNoSession
	}
	// One GSO send carries at most maxGSOSegments datagrams of stride
	// bytes within maxGSOBytes.
	per := SegmentsPerSend(stride-Overhead) * stride
	for off := 0; off < end; off += per {
		if err := p.o.udp.writeBatch(buf[off:min(off+per, end)], stride, *ep); err != nil {
			p.drops.Add(1)
			p.o.drops.sendFailed.Add(1)
			return fmt.Errorf("send to %s: %w", p.id, err)
		}
	}
	return nil
}

func (p *Peer) status() PeerStatus {
	st := PeerStatus{
		ID:        p.id,
		Path:      Path(p.path.Load()),
		Rekeys:    p.rekeys.Load(),
		TxPackets: p.txPackets.Load(),
		TxBytes:   p.txBytes.Load(),
		RxPackets: p.rxPackets.Load(),
		RxBytes:   p.rxBytes.Load(),
		Drops:     p.drops.Load(),
	}
	if ep := p.endpoint.Load(); ep != nil {
		st.Endpoint = *ep
	}
	if s := p.sendSession.Load(); s != nil {
		st.Suite = s.suite
		st.SessionAge = time.Since(s.created)
		st.Punched = s.viaRing && st.Path == PathUDP
	}
	p.mu.Lock()
	st.Static = p.static
	st.RTT = p.rtt
	st.Hops = 1
	if p.ring != nil && st.Path == PathRing {
		st.Hops = p.ring.hops
	}
	p.mu.Unlock()
	p.o.mu.RLock()
	for a, holder := range p.o.byAddr {
		if holder == p {
			st.Addrs = append(st.Addrs, a)
		}
	}
	p.o.mu.RUnlock()
	return st
}

// initiate runs the initiator's side of the link handshake.
func (p *Peer) initiate(ctx context.Context) error {
	o := p.o
	ctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	defer cancel()
	st, err := o.host.NewStream(ctx, p.id, linkProtocol)
	if err != nil {
		return fmt.Errorf("open link stream: %w", err)
	}
	defer st.Close()
	deadline, _ := ctx.Deadline()
	st.SetDeadline(deadline)

	g, err := o.greet(p, o.DataAddr().Port(), false)
	if err != nil {
		return err
	}
	if err := writeMsg(st, g.hello.marshal()); err != nil {
		o.abandon(g)
		return fmt.Errorf("send hello: %w", err)
	}
	msg, err := readMsg(bufio.NewReader(st))
	if err != nil {
		o.abandon(g)
		return fmt.Errorf("read answer: %w", err)
	}
	resp, err := parseHello(msg)
	if err == nil {
		err = o.finish(p, g, resp)
	} else {
		o.abandon(g)
	}
	if err != nil {
		o.drops.badHandshake.Add(1)
		return fmt.Errorf("answer: %w", err)
	}
	s := g.session
	if err := writeMsg(st, []byte{wireVersion, helloConfirm}); err != nil {
		o.dropIndex(s.localIndex)
		return fmt.Errorf("send confirm: %w", err)
	}
	p.learn(st.Conn(), resp)
	p.install(s, true)
	o.log.Debug("session up", "peer", p.id, "role", "initiator", "aead", s.suite)
	return nil
}

// respond runs the responder's side of the link handshake on st.
func (p *Peer) respond(st network.Stream) error {
	o := p.o
	st.SetDeadline(time.Now().Add(handshakeTimeout))
	br := bufio.NewReader(st)
	msg, err := readMsg(br)
	if err != nil {
		return fmt.Errorf("read hello: %w", err)
	}
	init, err := parseHello(msg)
	if err != nil {
		o.drops.badHandshake.Add(1)
		return fmt.Errorf("hello: %w", err)
	}
	if init.typ != helloInit {
		o.drops.badHandshake.Add(1)
		return errors.New("first message is not an initiating hello")
	}
	if err := init.verify(p.id, p.id, o.host.ID(), nil); err != nil {
		o.drops.badHandshake.Add(1)
		return err
	}
	s, resp, err := o.answer(p, init, o.DataAddr().Port(), false)
	if err != nil {
		o.drops.badHandshake.Add(1)
		return err
	}
	if err := writeMsg(st, resp.marshal()); err != nil {
		o.dropIndex(s.localIndex)
		return fmt.Errorf("send answer: %w", err)
	}
	// The session can receive from now on; it sends once confirmed.
	p.learn(st.Conn(), init)
	p.install(s, false)
	msg, err = readMsg(br)
	if err != nil {
		return fmt.Errorf("read confirm: %w", err)
	}
	if len(msg) != 2 || msg[0] != wireVersion || msg[1] != helloConfirm {
		o.drops.badHandshake.Add(1)
		return errors.New("bad confirm message")
	}
	p.confirm(s)
	o.log.Debug("session up", "peer", p.id, "role", "responder", "aead", s.suite)
	return nil
}

// learn takes the peer's virtual addresses and its UDP endpoint (the
// control connection's remote IP with the announced data port) from a
// verified hello.
func (p *Peer) learn(c network.Conn, h *hello) {
	p.o.helloAddrs(p, h.addrs)
	if p.endpoint.Load() != nil {
		return // the peer's datagrams told us where it is; keep that
	}
	if c.Stat().Direction == network.DirInbound {
		// The peer dialled us and may be behind a NAT, whose mapping
		// for its data socket we cannot guess: a datagram sent there
		// before the peer sends us one would make the NAT pick another
		// port for it (a conntrack clash) and spoil its mapping for
		// everyone. Its first ping tells us where it is.
		return
	}
	ip, err := manet.ToIP(c.RemoteMultiaddr())
	if err != nil {
		return
	}
	if a, ok := netip.AddrFromSlice(ip); ok && h.dataPort != 0 {
		p.setEndpoint(netip.AddrPortFrom(a.Unmap(), h.dataPort), "handshake")
	}
}

func containsSuite(list []Suite, s Suite) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func (s *session) setKeys(suite Suite, remoteIndex uint32, sendKey, recvKey []byte) error {
	var err error
	s.suite = suite
	s.remoteIndex = remoteIndex
	if s.send, err = newAEAD(suite, sendKey); err != nil {
		return err
	}
	if s.recv, err = newAEAD(suite, recvKey); err != nil {
		return err
	}
	return nil
}

// handleLinkStream answers a handshake a peer starts.
func (o *Overlay) handleLinkStream(st network.Stream) {
	defer st.Close()
	p := o.peer(st.Conn().RemotePeer())
	if err := p.respond(st); err != nil {
		o.log.Warn("handshake refused", "peer", p.id, "err", err)
		st.Reset()
	}
}

// Handshake messages are framed with a two-byte length.
func writeMsg(w io.Writer, msg []byte) error {
	b := make([]byte, 2+len(msg))
	binary.BigEndian.PutUint16(b, uint16(len(msg)))
	copy(b[2:], msg)
	_, err := w.Write(b)
	return err
}

func readMsg(r io.Reader) ([]byte, error) {
	var l [2]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint16(l[:]))
	if n > maxHelloLen {
		return nil, fmt.Errorf("handshake message of %d bytes, at most %d", n, maxHelloLen)
	}
	b := make([]byte, n)
	_, err := io.ReadFull(r, b)
	return b, err
}
