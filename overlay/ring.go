package overlay

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"

	"github.com/ringnet/ringnet/routing"
)

// The ring manager keeps a node's ring links at the targets of the
// routing policy (routing.Table) on a real network: the same steps the
// simulator (bench/sim) takes, as messages.
//
// Joining: the node dials a bootstrap node and keeps a leaf link to it,
// then sends a connect-to-me for its own ring address through it. Routed
// over the ring, the request reaches the two nodes around that address;
// each dials the requester and answers on the new connection, and the
// requester keeps the link as a near link. Their neighbour lists show it
// its second neighbours, which it asks the same way (a connect-to-me
// routed to each one's address), and then it draws its far links: a
// connect-to-me to each sampled address is answered by the node nearest
// it, unless that node is full.
//
// Keeping: every round (ringRound) the node asks for the near neighbours
// it is missing, tops up its far links, applies the policy (Tidy) and
// tells each link, in a NeighbourList over a control stream, why it keeps
// the link and what its own ring links are, whenever either changed. A
// link whose control connection drops is gone at once; its neighbours
// learn it from the next lists and re-link round the gap.
//
// Requests and answers travel as ring control messages (routed, neither
// sealed nor signed: a forged request only makes a node dial a peer whose
// identity the dial then proves); the answer and the lists go over the
// libp2p connection between the two nodes, which authenticates both.
const (
	ringProtocol protocol.ID = "/ringnet/ring/1.0.0"

	// ringRound is how often the manager looks at its links; a round
	// that finds nothing to do costs no messages.
	ringRound = time.Second
	// requestTimeout is how long a connect-to-me waits for its answer
	// before the round may ask again.
	requestTimeout = 3 * time.Second
	// answerGap rate-limits answers to one requester for one target.
	answerGap = 2 * time.Second
	// answerDialTimeout bounds the dial that answers a request; after it
	// the requester is asked to dial instead.
	answerDialTimeout = 2 * time.Second
	// maxAnswerDials bounds the dials a node makes at once to answer
	// requests: a flood of requests costs it no more than that.
	maxAnswerDials = 8
	// ctlTimeout bounds one control message's stream.
	ctlTimeout = 5 * time.Second
	// maxCtlMsg bounds a control message: a NeighbourList of
	// routing.MaxNeighbours entries is about 2 KiB.
	maxCtlMsg = 4096
	// peerIdle is how long a peer that is neither a link nor a
	// destination of packets is kept before its state is dropped.
	peerIdle = 2 * time.Minute
	// sweepEvery is how many rounds pass between sweeps of idle peers.
	sweepEvery = 10
	// A ring link that has been quiet for ringKeepalive is pinged; one
	// not heard for linkTimeout is dead, whatever its control
	// connection says (a QUIC connection to a crashed node stays up for
	// half a minute). Three pings go unanswered before a link dies.
	ringKeepalive = 4 * time.Second
	linkTimeout   = 15 * time.Second
	// dialFailedFor is how long an answerer that neither end could dial
	// is left alone.
	dialFailedFor = 10 * time.Second
	// suspectAfter: a link not heard for this long missed a ping's
	// answer; routes avoid it until it answers again.
	suspectAfter = ringKeepalive + 2*time.Second
)

// Control messages over ringProtocol: a type byte, then the message.
const (
	ctlList   byte = 1 // a routing.NeighbourList
	ctlAnswer byte = 2 // a routing.ConnectToMe answering a request
	ctlSTUN   byte = 3 // STUN credentials for the peer to use with this node (stun.go)
)

// failedDial is an answerer that this node could not reach, nor it this
// node.
type failedDial struct {
	at   time.Time
	addr routing.Addr
}

// request is a connect-to-me awaiting its answer.
type request struct {
	kind routing.Kind
	sent time.Time
	farN float64 // for far links: the estimate of N the target was drawn for
	peer peer.ID // for shortcuts: the node asked
	// public is the NAT's public address the request named among its
	// endpoints, if any: an answerer behind a NAT opened its own to it.
	public netip.Addr
}

// pendingKey names a request: a node may ask for a near link and a
// shortcut to the same address at once.
type pendingKey struct {
	target routing.Addr
	kind   routing.Kind
}

// told is what a link last heard from this node.
type told struct {
	kinds routing.Kind
	adv   []routing.Neighbour
}

type answerKey struct {
	requester peer.ID
	target    routing.Addr
}

// ringManager is the overlay's Router when the ring runs.
type ringManager struct {
	o      *Overlay
	wakeCh chan struct{}
	dials  chan struct{} // semaphore for answering dials

	mu       sync.Mutex
	t        *routing.Table
	rng      *rand.Rand
	seq      uint64
	told     map[peer.ID]told
	heard    map[peer.ID]uint64 // newest list seq from each link
	since    map[peer.ID]time.Time
	pending  map[pendingKey]request
	answered map[answerKey]time.Time
	// dialFailed holds the answerers this node could not dial, nor they
	// it (both behind NATs), for a while: near requests skip them, and a
	// join asks past them.
	dialFailed map[peer.ID]failedDial
	boot       []peer.AddrInfo // remembered peers, then Config.Bootstrap
	bootNext   int             // which bootstrap node to try next
	saved      []peer.ID       // links when the peers file was last written
	bootAt     time.Time       // when one was last tried
	booting    bool
	activity   map[peer.ID]activity
	rounds     int
	staleSent  map[routing.Addr]time.Time // rate limit of stale-session hints

	// Shortcuts (shortcut.go).
	shortcuts *routing.Shortcuts
	counted   map[peer.ID]uint64 // packets each peer had at the last count

	vips resolver

	counters ringCounters
	drops    routing.Drops
}

type activity struct {
	packets uint64
	at      time.Time
}

type ringCounters struct {
	connectSent, connectAnswered, connectRefused, connectBusy     atomic.Uint64
	answersUnsolicited, linksUp, linksDown, listsSent             atomic.Uint64
	listsStale, lying, bootstrapFailed, dialFailed                atomic.Uint64
	shortcutsFormed, shortcutsFailed, shortcutsDropped            atomic.Uint64
	dialMeSent, shortcutsPunched, timeToDirectSamples, natOpeners atomic.Uint64
	staleHints                                                    atomic.Uint64
	timeToDirectMs                                                atomic.Int64 // the last shortcut's
}

func newRingManager(o *Overlay) *ringManager {
	seed := uint64(time.Now().UnixNano())
	r := &ringManager{
		o:          o,
		wakeCh:     make(chan struct{}, 1),
		dials:      make(chan struct{}, maxAnswerDials),
		t:          routing.NewTable(o.host.ID()),
		rng:        rand.New(rand.NewPCG(seed, uint64(len(o.host.ID())))),
		told:       make(map[peer.ID]told),
		heard:      make(map[peer.ID]uint64),
		since:      make(map[peer.ID]time.Time),
		pending:    make(map[pendingKey]request),
		answered:   make(map[answerKey]time.Time),
		dialFailed: make(map[peer.ID]failedDial),
		activity:   make(map[peer.ID]activity),
		staleSent:  make(map[routing.Addr]time.Time),
		shortcuts:  routing.NewShortcuts(shortcutPolicy(o.cfg.Shortcuts)),
		counted:    make(map[peer.ID]uint64),
	}
	r.vips.init()
	if path := o.cfg.PeersFile; path != "" {
		remembered, err := loadRemembered(path)
		if err != nil {
			o.log.Warn("remembered peers not read", "err", err)
		}
		r.boot = remembered
	}
	for _, b := range o.cfg.Bootstrap {
		if !slices.ContainsFunc(r.boot, func(x peer.AddrInfo) bool { return x.ID == b.ID }) {
			r.boot = append(r.boot, b)
		}
	}
	return r
}

// shortcutPolicy fills p's zero fields with the defaults.
func shortcutPolicy(p routing.ShortcutPolicy) routing.ShortcutPolicy {
	d := routing.DefaultShortcutPolicy
	if p.Threshold <= 0 {
		p.Threshold = d.Threshold
	}
	if p.HalfLife <= 0 {
		p.HalfLife = d.HalfLife
	}
	if p.IdleTimeout <= 0 {
		p.IdleTimeout = d.IdleTimeout
	}
	if p.Max <= 0 {
		p.Max = d.Max
	}
	if p.RetryAfter <= 0 {
		p.RetryAfter = d.RetryAfter
	}
	if p.MaxRetryAfter <= 0 {
		p.MaxRetryAfter = d.MaxRetryAfter
	}
	if p.MaxTries <= 0 {
		p.MaxTries = d.MaxTries
	}
	return p
}

// start registers the control protocol and runs the maintenance loop.
func (r *ringManager) start() {
	h := r.o.host
	h.SetStreamHandler(ringProtocol, r.o.gated(r.handleStream))
	h.Network().Notify(&network.NotifyBundle{
		DisconnectedF: func(network.Network, network.Conn) { r.kick() },
	})
	r.o.spawn(func() {
		r.loop(r.o.ctx)
	})
}

// kick makes the loop run a round now.
func (r *ringManager) kick() {
	select {
	case r.wakeCh <- struct{}{}:
	default:
	}
}

func (r *ringManager) loop(ctx context.Context) {
	t := time.NewTicker(ringRound)
	defer t.Stop()
	lookups := time.NewTicker(lookupRetry)
	defer lookups.Stop()
	r.round(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-lookups.C:
			r.retryLookups(now)
			r.countTraffic(ctx, now)
			continue
		case <-t.C:
		case <-r.wakeCh:
		}
		r.round(ctx)
	}
}

// NextHop routes by the table; a link to the destination itself, of any
// kind (a joining node's leaf link too), is used directly.
func (r *ringManager) NextHop(dst routing.Addr, from peer.ID) Hop {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, l := range r.t.Links() {
		if l.Addr == dst && l.Peer != from {
			return Hop{Next: l.Peer}
		}
	}
	h := r.t.NextHop(dst, from)
	out := Hop{Deliver: h.Deliver, Nearest: h.Nearest}
	if h.Next != nil {
		out.Next = h.Next.Peer
	}
	return out
}

// leafOnly returns a link to send through while the node has no ring
// links: it is joining, and its leaf link's far end routes for it.
func (r *ringManager) leafOnly() (peer.ID, bool) {
	if r == nil {
		return "", false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var leaf peer.ID
	for _, l := range r.t.Links() {
		if l.Routes() {
			return "", false
		}
		if leaf == "" {
			leaf = l.Peer
		}
	}
	return leaf, leaf != ""
}

// round is one pass of maintenance.
func (r *ringManager) round(ctx context.Context) {
	now := time.Now()
	host := r.o.host
	type routed struct {
		typ    byte
		target routing.Addr
		body   []byte
		kind   routing.Kind
	}
	var out []routed
	var closes []peer.ID

	r.mu.Lock()
	r.rounds++
	for _, l := range slices.Clone(r.t.Links()) {
		if host.Network().Connectedness(l.Peer) != network.Connected {
			r.dropLinkLocked(l.Peer)
			continue
		}
		age := now.Sub(r.since[l.Peer])
		if age > linkTimeout && !r.heardWithin(l.Peer, now, linkTimeout) {
			r.o.log.Info("ring link dead: not heard", "peer", l.Peer, "for", linkTimeout)
			r.dropLinkLocked(l.Peer)
			closes = append(closes, l.Peer)
			continue
		}
		// A link whose pings go unanswered is avoided by routes before
		// it is given up on.
		l.Unreachable = age > suspectAfter && !r.heardWithin(l.Peer, now, suspectAfter)
	}
	for a, q := range r.pending {
		if now.Sub(q.sent) > requestTimeout {
			delete(r.pending, a)
			if q.kind == routing.Shortcut {
				r.shortcuts.Failed(q.peer, now)
				r.counters.shortcutsFailed.Add(1)
			}
		}
	}
	for _, id := range r.shortcuts.Drop(now) {
		r.t.Clear(id, routing.Shortcut)
		r.counters.shortcutsDropped.Add(1)
		r.o.log.Info("shortcut idle: dropped", "peer", id)
		r.o.mu.RLock()
		p := r.o.peers[id]
		r.o.mu.RUnlock()
		if p != nil && r.t.Link(id) == nil {
			p.dropDirect() // a punched path
		}
	}
	for k, at := range r.answered {
		if now.Sub(at) > answerGap {
			delete(r.answered, k)
		}
	}
	for p, f := range r.dialFailed {
		if now.Sub(f.at) > dialFailedFor {
			delete(r.dialFailed, p)
		}
	}
	ask := func(kind routing.Kind, target routing.Addr, farN float64) {
		if _, ok := r.pending[pendingKey{target, kind}]; ok {
			return
		}
		body, public, err := r.connectToMe(kind, target)
		if err != nil {
			r.o.log.Debug("connect-to-me", "err", err)
			return
		}
		r.pending[pendingKey{target, kind}] = request{kind: kind, sent: now, farN: farN, public: public}
		out = append(out, routed{typeConnect, target, body, kind})
	}
	self := r.t.Self()
	joined := slices.ContainsFunc(r.t.Links(), (*routing.Link).Routes)
	switch {
	case !joined && r.t.Len() == 0:
		r.bootstrapLocked(ctx, now)
	case !joined:
		ask(routing.Near, self.Addr, 0) // join through the leaf link
		// The nodes around this one's address answered, but neither end
		// could dial the other (NATs on both sides): ask for the node
		// past each, so that a reachable one links this node into the
		// ring. Routing through it, and its neighbour lists, carry
		// packets between this node and the unreachable ones.
		for _, f := range r.dialFailed {
			ask(routing.Near, f.addr.Past(self.Addr), 0)
		}
	default:
		for _, m := range r.t.MissingNear() {
			if _, failed := r.dialFailed[m.Peer]; !failed {
				ask(routing.Near, m.Addr, 0)
			}
		}
		far := 0
		for _, q := range r.pending {
			if q.kind == routing.Far {
				far++
			}
		}
		for i := 0; r.t.FarHave()+far < r.t.FarWanted() && i < 4; i++ {
			target, n := r.t.SampleFarTarget(r.rng)
			ask(routing.Far, target, n)
			far++
		}
	}
	for _, c := range r.t.Tidy() {
		if c.Closed {
			r.forgetLocked(c.Peer)
			closes = append(closes, c.Peer)
		}
	}
	pushes := r.pushesLocked()
	nearNow := r.nearLocked()
	linkIDs := make([]peer.ID, 0, r.t.Len())
	for _, l := range r.t.Links() {
		linkIDs = append(linkIDs, l.Peer)
	}
	sweep := r.rounds%sweepEvery == 0
	var save []peer.ID
	if joined && (sweep || r.saved == nil) {
		for _, l := range r.t.Links() {
			save = append(save, l.Peer)
		}
		slices.Sort(save)
		if slices.Equal(save, r.saved) {
			save = nil
		} else {
			r.saved = save
		}
	}
	r.mu.Unlock()

	if len(save) > 0 && r.o.cfg.PeersFile != "" {
		var infos []peer.AddrInfo
		for _, id := range save {
			addrs := host.Peerstore().Addrs(id)
			if public := slices.DeleteFunc(slices.Clone(addrs), manet.IsIPLoopback); len(public) > 0 {
				addrs = public
			}
			if len(addrs) > 0 {
				infos = append(infos, peer.AddrInfo{ID: id, Addrs: addrs})
			}
		}
		if err := saveRemembered(r.o.cfg.PeersFile, infos); err != nil {
			r.o.log.Warn("remembered peers not saved", "err", err)
		}
	}

	for _, p := range closes {
		r.closeLink(p)
	}
	for _, m := range out {
		r.counters.connectSent.Add(1)
		if err := r.o.sendControl(m.typ, m.target, m.body); err != nil {
			// Most likely a new link whose session is not up yet: ask
			// again next round, or as soon as the session is up.
			r.o.log.Debug("send connect-to-me", "err", err)
			r.mu.Lock()
			delete(r.pending, pendingKey{m.target, m.kind})
			r.mu.Unlock()
		}
	}
	for _, p := range pushes {
		r.push(ctx, p)
	}
	if joined {
		r.register(now, nearNow)
	}
	if sweep {
		r.sweep(now)
		r.vips.expire(now)
	}
	r.o.stunRound(now, linkIDs)
}

// bootstrapLocked dials the next bootstrap node, in the background; on
// success the node keeps a leaf link to it. r.mu is held.
func (r *ringManager) bootstrapLocked(ctx context.Context, now time.Time) {
	boot := r.boot
	if len(boot) == 0 || r.booting || now.Sub(r.bootAt) < requestTimeout {
		return
	}
	info := boot[r.bootNext%len(boot)]
	r.bootNext++
	if info.ID == r.o.host.ID() {
		return // an image's seed list may name the node itself
	}
	r.booting, r.bootAt = true, now
	r.o.spawn(func() {
		dctx, cancel := context.WithTimeout(ctx, dialTimeout)
		err := r.o.host.Connect(dctx, info)
		cancel()
		r.mu.Lock()
		r.booting = false
		if err == nil {
			r.addLinkLocked(info.ID, routing.Leaf, 0)
		}
		r.mu.Unlock()
		if err != nil {
			r.counters.bootstrapFailed.Add(1)
			r.o.log.Warn("bootstrap node unreachable", "peer", info.ID, "err", err)
			return
		}
		r.o.log.Info("joining the ring", "bootstrap", info.ID)
		r.kick()
	})
}

// connectToMe encodes a request for kind at target, with this node's
// control endpoints.
// A node that is not yet in the ring names the node its request goes
// through (its leaf link) as the relay for dial-me messages. r.mu is held.
func (r *ringManager) connectToMe(kind routing.Kind, target routing.Addr) ([]byte, netip.Addr, error) {
	self := r.t.Self()
	eps, public := r.endpoints(kind)
	m := routing.ConnectToMe{
		Kind: kind, TTL: routeTTL, Requester: self.Peer, Addr: self.Addr, Target: target,
		Endpoints: eps,
	}
	if !slices.ContainsFunc(r.t.Links(), (*routing.Link).Routes) && r.t.Len() > 0 {
		leaf := r.t.Links()[0]
		m.Relay = routing.Neighbour{Peer: leaf.Peer, Addr: leaf.Addr}
	}
	if err := m.Sign(r.o.cfg.Identity); err != nil {
		return nil, netip.Addr{}, err
	}
	b, err := m.MarshalBinary()
	return b, public, err
}

// endpoints are the node's control addresses, where a node answering a
// request dials it; loopback only on a node that has nothing else.
//
// Behind a NAT that keeps the data socket's port and one mapping for
// every destination (as STUN showed), the NAT's public address with the
// control port goes too: the NAT will most likely map the control
// socket's port the same way. A node behind another NAT cannot dial it
// there at first, but its try opens its own NAT to this node, and this
// node's dial back (the dial-me) then gets through: the two NATed near
// neighbours link directly (see dialAddrs). Only near links are made so:
// a far link can go to another node, and two NATed nodes that exchange
// traffic punch a path for their shortcut on the data socket (punch.go).
func (r *ringManager) endpoints(kind routing.Kind) (eps []netip.AddrPort, public netip.Addr) {
	var loop []netip.AddrPort
	if nat, ok := r.o.portPreservingNAT(); ok && kind == routing.Near {
		for _, port := range r.o.controlPorts() {
			if len(eps) < routing.MaxEndpoints {
				eps = append(eps, netip.AddrPortFrom(nat, port))
				public = nat
			}
		}
	}
	for _, a := range r.o.host.Addrs() {
		ip, err := manet.ToIP(a)
		if err != nil {
			continue
		}
		port, ok := portOf(a, ma.P_TCP)
		if !ok {
			continue
		}
		addr, ok := netip.AddrFromSlice(ip)
		if !ok {
			continue
		}
		ep := netip.AddrPortFrom(addr.Unmap(), port)
		if addr.IsLoopback() {
			loop = append(loop, ep)
		} else if len(eps) < routing.MaxEndpoints {
			eps = append(eps, ep)
		}
	}
	if len(eps) == 0 && len(loop) > 0 {
		return loop[:1], public
	}
	return eps, public
}

// addLinkLocked records a link this node keeps for kinds (zero when only
// the peer wants it). r.mu is held.
func (r *ringManager) addLinkLocked(id peer.ID, kinds routing.Kind, farN float64) *routing.Link {
	l, err := r.t.Add(id, kinds, nil)
	if err != nil {
		return nil
	}
	if kinds&routing.Far != 0 {
		l.FarN = farN
	}
	if _, ok := r.since[id]; !ok {
		r.since[id] = time.Now()
		r.counters.linksUp.Add(1)
		r.o.host.ConnManager().Protect(id, "ringnet-ring")
		p := r.o.peer(id)
		p.ringLink.Store(true)
		p.wake() // the link's own handshake
		r.push(r.o.ctx, pushMsg{to: id, typ: ctlSTUN, body: r.o.issueSTUN(id)})
	}
	return l
}

// dropLinkLocked forgets a link whose connection is gone. r.mu is held.
func (r *ringManager) dropLinkLocked(id peer.ID) {
	if r.t.Remove(id) {
		r.counters.linksDown.Add(1)
	}
	r.shortcuts.Unlinked(id)
	r.forgetLocked(id)
}

func (r *ringManager) forgetLocked(id peer.ID) {
	r.o.forgetSTUN(id)
	r.o.mu.RLock()
	p := r.o.peers[id]
	r.o.mu.RUnlock()
	if p != nil && p.ringLink.Swap(false) && !p.isStatic() {
		p.dropLinkSessions()
	}
	delete(r.told, id)
	delete(r.heard, id)
	delete(r.since, id)
	r.o.host.ConnManager().Unprotect(id, "ringnet-ring")
}

// heardWithin reports whether the link to id was heard within d.
func (r *ringManager) heardWithin(id peer.ID, now time.Time, d time.Duration) bool {
	r.o.mu.RLock()
	p := r.o.peers[id]
	r.o.mu.RUnlock()
	return p != nil && p.heardWithin(now, d)
}

// closeLink closes the connection of a link neither side wants, unless a
// statically configured link shares it. A peer that no packets flow to
// goes with it; one that packets flow to keeps its session, over UDP
// while that works and over the ring after.
func (r *ringManager) closeLink(id peer.ID) {
	r.o.mu.RLock()
	p := r.o.peers[id]
	r.o.mu.RUnlock()
	if p != nil {
		p.mu.Lock()
		static := p.static
		p.mu.Unlock()
		if static {
			return
		}
	}
	r.o.host.Network().ClosePeer(id)
	r.mu.Lock()
	idle := r.shortcuts.Score(id, time.Now()) < 1
	r.mu.Unlock()
	if p != nil && idle {
		r.o.removePeer(p)
	}
}

// pushesLocked returns the lists that links must hear: their kinds or
// this node's ring links changed since they last heard. r.mu is held.
func (r *ringManager) pushesLocked() []pushMsg {
	adv := r.t.Advertise()
	self := r.t.Self()
	var out []pushMsg
	for _, l := range r.t.Links() {
		last, ok := r.told[l.Peer]
		if ok && last.kinds == l.Kinds && slices.Equal(last.adv, adv) {
			continue
		}
		r.seq++
		m := routing.NeighbourList{Kinds: l.Kinds, Seq: r.seq, Sender: self.Peer, Addr: self.Addr, Neighbours: adv}
		b, err := m.MarshalBinary()
		if err != nil {
			r.o.log.Debug("neighbour list", "err", err)
			continue
		}
		r.told[l.Peer] = told{kinds: l.Kinds, adv: adv}
		out = append(out, pushMsg{to: l.Peer, body: b})
	}
	return out
}

type pushMsg struct {
	to   peer.ID
	typ  byte // ctlList when zero
	body []byte
}

// push sends a list in the background; if it fails, the next round sends
// the link a fresh one.
func (r *ringManager) push(ctx context.Context, m pushMsg) {
	r.o.spawn(func() {
		typ := m.typ
		if typ == 0 {
			typ = ctlList
		}
		if err := r.sendCtl(ctx, m.to, typ, m.body); err != nil {
			r.o.log.Debug("control message not sent", "peer", m.to, "type", typ, "err", err)
			if typ == ctlList {
				r.mu.Lock()
				delete(r.told, m.to)
				r.mu.Unlock()
			}
			return
		}
		if typ == ctlList {
			r.counters.listsSent.Add(1)
		}
	})
}

// sendCtl sends one control message on a stream of its own, over an
// existing connection.
func (r *ringManager) sendCtl(ctx context.Context, to peer.ID, typ byte, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, ctlTimeout)
	defer cancel()
	st, err := r.o.host.NewStream(network.WithNoDial(ctx, "ring control"), to, ringProtocol)
	if err != nil {
		return err
	}
	deadline, _ := ctx.Deadline()
	st.SetDeadline(deadline)
	msg := append([]byte{typ}, body...)
	if _, err := st.Write(msg); err != nil {
		st.Reset()
		return err
	}
	return st.Close()
}

// handleStream takes one control message from a peer.
func (r *ringManager) handleStream(st network.Stream) {
	defer st.Close()
	st.SetDeadline(time.Now().Add(ctlTimeout))
	from := st.Conn().RemotePeer()
	msg, err := io.ReadAll(io.LimitReader(st, maxCtlMsg+1))
	if err != nil || len(msg) < 1 || len(msg) > maxCtlMsg {
		r.drops.Malformed.Add(1)
		st.Reset()
		return
	}
	switch msg[0] {
	case ctlList:
		var m routing.NeighbourList
		if err := m.UnmarshalBinary(msg[1:]); err != nil {
			r.drops.Count(err)
			return
		}
		if m.Sender != from {
			r.counters.lying.Add(1)
			return
		}
		r.onList(&m)
	case ctlAnswer:
		var m routing.ConnectToMe
		if err := m.UnmarshalBinary(msg[1:]); err != nil {
			r.drops.Count(err)
			return
		}
		if m.Requester != from {
			r.counters.lying.Add(1)
			return
		}
		r.onAnswer(&m)
	case ctlSTUN:
		if err := r.o.takeSTUN(from, msg[1:]); err != nil {
			r.drops.Malformed.Add(1)
		}
	default:
		r.drops.Malformed.Add(1)
	}
}

// onList takes a link's list: why it keeps the link, and its ring links.
func (r *ringManager) onList(m *routing.NeighbourList) {
	r.mu.Lock()
	defer r.kick()
	defer r.mu.Unlock()
	if last, ok := r.heard[m.Sender]; ok && m.Seq <= last {
		r.counters.listsStale.Add(1)
		return
	}
	if r.t.Link(m.Sender) == nil {
		if m.Kinds == 0 {
			return // a link this node already dropped
		}
		r.addLinkLocked(m.Sender, 0, 0)
	}
	r.heard[m.Sender] = m.Seq
	// The peer's own list says nothing about this node: keep the second
	// hops honest.
	list := slices.DeleteFunc(m.Neighbours, func(n routing.Neighbour) bool { return n.Peer == r.t.Self().Peer })
	r.t.SetNeighbours(m.Sender, list)
	if r.t.SetPeerKinds(m.Sender, m.Kinds) {
		r.forgetLocked(m.Sender)
	}
}

// onAnswer takes the answer to one of this node's requests: the answerer
// dialled this node and will link.
func (r *ringManager) onAnswer(m *routing.ConnectToMe) {
	r.mu.Lock()
	defer r.kick()
	defer r.mu.Unlock()
	q, ok := r.answeredLocked(m)
	if !ok {
		return
	}
	r.linkAnswerLocked(m, q)
}

// answeredLocked checks an answer (or dial-me) against this node's
// pending requests. r.mu is held.
func (r *ringManager) answeredLocked(m *routing.ConnectToMe) (request, bool) {
	q, ok := r.pending[pendingKey{m.Target, m.Kind}]
	if !ok || (m.Kind == routing.Shortcut && m.Requester != q.peer) {
		// Only requests this node made are answered, a shortcut only
		// by the node asked.
		r.counters.answersUnsolicited.Add(1)
		return request{}, false
	}
	return q, true
}

// linkAnswerLocked keeps the link an answer brought. r.mu is held.
func (r *ringManager) linkAnswerLocked(m *routing.ConnectToMe, q request) {
	// A join's request has two answers, one from each side; others one.
	if m.Target != r.t.Self().Addr {
		delete(r.pending, pendingKey{m.Target, m.Kind})
	}
	r.addLinkLocked(m.Requester, m.Kind, q.farN)
	if m.Kind == routing.Shortcut {
		r.shortcuts.Linked(m.Requester, time.Now())
		r.counters.shortcutsFormed.Add(1)
		r.o.log.Info("shortcut formed", "peer", m.Requester)
	}
}

// control handles a ring control message routed to this node, or to an
// absent address this node is next to (nearest says it is the nearer of
// the two).
func (r *ringManager) control(rh routing.Header, typ byte, body []byte, nearest bool) {
	switch typ {
	case typeConnect:
		var m routing.ConnectToMe
		if err := m.UnmarshalBinary(body); err != nil {
			r.drops.Count(err)
			return
		}
		r.onConnect(rh, &m, nearest)
	case typeVIP:
		r.onVIP(rh, body)
	case typeDialMe:
		r.onDialMe(rh, body)
	case typeStale:
		r.onStale(rh, body)
	}
}

// onConnect answers a connect-to-me: a near request (a join, or a node
// missing this one as its neighbour) by each node it is delivered to, a
// far request by the nearest node only, and only below the link cap.
func (r *ringManager) onConnect(rh routing.Header, m *routing.ConnectToMe, nearest bool) {
	self := r.t.Self()
	if m.Requester == self.Peer {
		return
	}
	if rh.Src != m.Addr {
		r.counters.lying.Add(1) // the route's source is not the requester
		return
	}
	r.mu.Lock()
	key := answerKey{m.Requester, m.Target}
	_, recent := r.answered[key]
	var refuse bool
	switch m.Kind {
	case routing.Far:
		refuse = !nearest || !r.t.AcceptFar(m.Requester)
	case routing.Shortcut:
		// Only the node itself answers, and only below the link cap.
		refuse = m.Target != self.Addr || !r.t.AcceptFar(m.Requester)
	}
	if !recent && !refuse {
		r.answered[key] = time.Now()
	}
	r.mu.Unlock()
	if refuse {
		r.counters.connectRefused.Add(1)
		return
	}
	if recent {
		return
	}
	answer := routing.ConnectToMe{
		Kind: m.Kind, TTL: 1, Requester: self.Peer, Addr: self.Addr, Target: m.Target,
	}
	answer.Endpoints, _ = r.endpoints(m.Kind)
	if err := answer.Sign(r.o.cfg.Identity); err != nil {
		r.o.log.Warn("connect-to-me answer not signed", "err", err)
		return
	}
	r.goDial(func() {
		if err := r.answer(m, &answer); err != nil {
			r.counters.dialFailed.Add(1)
			r.o.log.Debug("connect-to-me not answered", "peer", m.Requester, "err", err)
			return
		}
		r.counters.connectAnswered.Add(1)
	})
}

// stale tells the node at src that this node has no session with the
// receiver index its datagram named (this node restarted, most likely),
// at most once a second per node. The hint is not authenticated: all it
// can do is make a node handshake again.
func (r *ringManager) stale(src routing.Addr, idx uint32) {
	now := time.Now()
	r.mu.Lock()
	if at, ok := r.staleSent[src]; ok && now.Sub(at) < time.Second {
		r.mu.Unlock()
		return
	}
	if len(r.staleSent) > 1024 {
		clear(r.staleSent)
	}
	r.staleSent[src] = now
	r.mu.Unlock()
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], idx)
	r.o.sendControl(typeStale, src, b[:])
}

// onStale handles a stale-session hint: if it names the session this
// node sends to that peer under, the node handshakes again.
func (r *ringManager) onStale(rh routing.Header, body []byte) {
	if len(body) != 4 || rh.Dst != r.o.ringAddr {
		return
	}
	idx := binary.BigEndian.Uint32(body)
	for _, p := range r.o.peerList() {
		s := p.sendSession.Load()
		if s == nil || !s.viaRing || s.remoteIndex != idx || routing.AddrFromPeer(p.id) != rh.Src {
			continue
		}
		r.counters.staleHints.Add(1)
		p.sessionLost(idx)
		p.mu.Lock()
		if p.ring != nil {
			p.ring.wanted = true
		}
		p.mu.Unlock()
		p.requestRekey("peer lost the session")
	}
}

// goDial runs dial in a goroutine of its own, unless maxAnswerDials are
// running: a flood of requests costs a node no more than that.
func (r *ringManager) goDial(dial func()) {
	select {
	case r.dials <- struct{}{}:
	default:
		r.counters.connectBusy.Add(1)
		return
	}
	if !r.o.spawn(func() {
		defer func() { <-r.dials }()
		dial()
	}) {
		<-r.dials
	}
}

// answer dials a requester and sends it the answer on the connection.
func (r *ringManager) answer(req, ans *routing.ConnectToMe) error {
	ctx := r.o.ctx
	h := r.o.host
	if h.Network().Connectedness(req.Requester) != network.Connected {
		// TCP only: a QUIC dial's datagrams would reach the requester's
		// NAT and spoil its port for the dial back (see openNAT).
		if req.Kind == routing.Near {
			r.openNAT(req.Endpoints)
		}
		h.Peerstore().ClearAddrs(req.Requester)
		info := peer.AddrInfo{ID: req.Requester, Addrs: r.dialAddrs(req.Endpoints, false)}
		if len(info.Addrs) == 0 {
			return errors.New("no endpoint to dial")
		}
		dctx, cancel := context.WithTimeout(ctx, answerDialTimeout)
		err := h.Connect(dctx, info)
		cancel()
		if err != nil {
			// A NAT in the way: have the requester dial this node.
			return r.dialMe(req, ans, err)
		}
	}
	b, err := ans.MarshalBinary()
	if err != nil {
		return err
	}
	return r.sendCtl(ctx, req.Requester, ctlAnswer, b)
}

// nearLocked returns the near neighbours, clockwise first. r.mu is held.
func (r *ringManager) nearLocked() []peer.ID {
	cw, ccw := r.t.Near()
	var out []peer.ID
	for _, n := range cw {
		out = append(out, n.Peer)
	}
	for _, n := range ccw {
		out = append(out, n.Peer)
	}
	return out
}

// sweep stops the link loops of peers that are neither links nor static
// nor destinations of recent packets.
func (r *ringManager) sweep(now time.Time) {
	o := r.o
	peers := o.peerList()
	r.mu.Lock()
	defer r.mu.Unlock()
	seen := make(map[peer.ID]bool, len(peers))
	for _, p := range peers {
		seen[p.id] = true
		n := p.txPackets.Load() + p.rxPackets.Load()
		a, ok := r.activity[p.id]
		if !ok || a.packets != n {
			r.activity[p.id] = activity{packets: n, at: now}
			continue
		}
		p.mu.Lock()
		static := p.static
		p.mu.Unlock()
		if static || r.t.Link(p.id) != nil || now.Sub(a.at) < peerIdle ||
			o.host.Network().Connectedness(p.id) == network.Connected {
			continue
		}
		delete(r.activity, p.id)
		o.removePeer(p)
	}
	for id := range r.activity {
		if !seen[id] {
			delete(r.activity, id)
		}
	}
}

// RingStatus is a snapshot of the node's place in the ring.
type RingStatus struct {
	Addr routing.Addr
	// EstimateN is the node's estimate of the ring's size; FarWanted and
	// FarHave the far links it wants and has made.
	EstimateN          float64
	FarWanted, FarHave int
	// NearCW and NearCCW are the near neighbours clockwise and
	// anticlockwise, nearest first.
	NearCW, NearCCW []peer.ID
	Links           []RingLink
	// OtherConns counts control connections that are not ring links (a
	// node answering a request, static peers, the DHT).
	OtherConns int
	Counters   map[string]uint64
}

// RingLink is one ring link.
type RingLink struct {
	Peer peer.ID
	Addr routing.Addr
	// Kinds are why this node keeps the link, PeerKinds why the peer does.
	Kinds, PeerKinds routing.Kind
	Age              time.Duration
	Remote           string // the control connection's remote address
}

// Ring reports the node's ring state; ok is false without Config.Ring.
func (o *Overlay) Ring() (st RingStatus, ok bool) {
	r := o.ring
	if r == nil {
		return RingStatus{}, false
	}
	now := time.Now()
	r.mu.Lock()
	st.Addr = r.t.Self().Addr
	st.EstimateN = r.t.EstimateN()
	st.FarWanted, st.FarHave = r.t.FarWanted(), r.t.FarHave()
	cw, ccw := r.t.Near()
	for _, n := range cw {
		st.NearCW = append(st.NearCW, n.Peer)
	}
	for _, n := range ccw {
		st.NearCCW = append(st.NearCCW, n.Peer)
	}
	linked := make(map[peer.ID]bool)
	for _, l := range r.t.Links() {
		linked[l.Peer] = true
		st.Links = append(st.Links, RingLink{
			Peer: l.Peer, Addr: l.Addr, Kinds: l.Kinds, PeerKinds: l.PeerKinds, Age: now.Sub(r.since[l.Peer]),
		})
	}
	r.mu.Unlock()
	for i := range st.Links {
		if cs := o.host.Network().ConnsToPeer(st.Links[i].Peer); len(cs) > 0 {
			st.Links[i].Remote = cs[0].RemoteMultiaddr().String()
		}
	}
	for _, p := range o.host.Network().Peers() {
		if !linked[p] {
			st.OtherConns++
		}
	}
	c := &r.counters
	st.Counters = map[string]uint64{
		"connect_sent":        c.connectSent.Load(),
		"connect_answered":    c.connectAnswered.Load(),
		"connect_refused":     c.connectRefused.Load(),
		"connect_busy":        c.connectBusy.Load(),
		"answers_unsolicited": c.answersUnsolicited.Load(),
		"links_up":            c.linksUp.Load(),
		"links_down":          c.linksDown.Load(),
		"lists_sent":          c.listsSent.Load(),
		"lists_stale":         c.listsStale.Load(),
		"lying":               c.lying.Load(),
		"bootstrap_failed":    c.bootstrapFailed.Load(),
		"dial_failed":         c.dialFailed.Load(),
		"dial_me_sent":        c.dialMeSent.Load(),
		"nat_openers":         c.natOpeners.Load(),
		"stale_hints":         c.staleHints.Load(),
		"forwarded":           r.o.forwarded.Load(),
		"deaf_links_closed":   r.o.deafLinks.Load(),
		"lost_sessions_told":  r.o.lost.told.Load(),
		"lost_sessions_heard": r.o.lost.heard.Load(),
		"lost_packets_resent": r.o.resentAfterLost.Load(),
		"clone_checks_served": r.o.instance.asks.Load(),
		"clone_probes":        r.o.instance.probes.Load(),
		"clones_found":        r.o.instance.found.Load(),
		"shortcuts_formed":    c.shortcutsFormed.Load(),
		"shortcuts_punched":   c.shortcutsPunched.Load(),
		"punches_sent":        r.o.punches.sent.Load(),
		"punches_received":    r.o.punches.received.Load(),
		"punches_refused":     r.o.punches.refused.Load(),
		"punch_probes":        r.o.punches.probes.Load(),
		"shortcuts_failed":    c.shortcutsFailed.Load(),
		"shortcuts_dropped":   c.shortcutsDropped.Load(),
		"time_to_direct_ms":   uint64(max(0, c.timeToDirectMs.Load())),
		"time_to_direct_n":    c.timeToDirectSamples.Load(),
		"malformed":           r.drops.Malformed.Load(),
		"bad_version":         r.drops.Version.Load(),
		"ttl_zero":            r.drops.TTL.Load(),
		"too_many":            r.drops.TooMany.Load(),
		"bad_signature":       r.drops.Signature.Load(),
		"wrong_ring_address":  r.drops.Addr.Load(),
	}
	r.vips.counters(st.Counters)
	return st, true
}
