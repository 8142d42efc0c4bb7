package overlay

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Which peer holds a virtual address, when Config.Resolve is set: the
// node asks the lease records (in the DHT) and believes nothing else. A
// peer's hello only names addresses to check; packets from it carry a
// source address only once the records bind that address to it, and
// packets go to an address only once they do.
//
// Lookups run in the background, a bounded number at once; the packet
// that asked is dropped and counted, as the VM's own retries (ARP, TCP)
// come soon. A peer's packets whose source is being checked wait in a
// small queue instead, so that the first packets of a new pair are not
// lost. An address nobody holds is not asked about again for a while, so
// a VM that scans the subnet cannot flood the DHT.
const (
	// resolveTimeout bounds one lookup.
	resolveTimeout = 5 * time.Second
	// maxResolving bounds the lookups in flight, and lookupRate and
	// lookupBurst how many start per second: a VM that scans the subnet
	// costs the DHT little.
	maxResolving = 16
	lookupRate   = 20
	lookupBurst  = 40
	// unheldFor is how long an address nobody holds is not looked up
	// again.
	unheldFor = 3 * time.Second
	// bindingTTL is how long a binding is used before it is checked
	// again (in the background: packets keep flowing meanwhile).
	bindingTTL = 30 * time.Second
	// heldPackets and heldBytes bound a peer's packets waiting for their
	// source to be checked.
	heldPackets = 32
	heldBytes   = 64 << 10
	// maxChecking bounds the source addresses of one peer being checked
	// at once: a peer that sends from many addresses is lying.
	maxChecking = 4
	// slowLookup is how long a lookup may take before it is logged and
	// counted: a VM's ping waits about this long for its first reply.
	slowLookup = time.Second
)

// ErrNotHeld is what a Resolve function returns for an address that no
// one holds.
var ErrNotHeld = errors.New("no one holds the address")

type addrResolver struct {
	mu       sync.Mutex
	inFlight map[netip.Addr]bool
	unheld   map[netip.Addr]time.Time // not looked up again until then
	checked  map[netip.Addr]time.Time // when the binding was last confirmed
	self     []netip.Addr             // this node's own addresses
	rx       Receiver                 // delivers held packets; under mu
	tokens   float64                  // lookups that may start now
	refilled time.Time

	lookups  atomic.Uint64
	resolved atomic.Uint64
	notHeld  atomic.Uint64
	failed   atomic.Uint64
	busy     atomic.Uint64 // lookups not started: too many in flight
	slow     atomic.Uint64 // lookups that took slowLookup or longer
	released atomic.Uint64 // held packets delivered
	dropped  atomic.Uint64 // held packets dropped
}

func (r *addrResolver) init(self []netip.Addr) {
	r.inFlight = make(map[netip.Addr]bool)
	r.unheld = make(map[netip.Addr]time.Time)
	r.checked = make(map[netip.Addr]time.Time)
	r.self = slices.Clone(self)
	r.tokens, r.refilled = lookupBurst, time.Now()
}

func (r *addrResolver) counters(m map[string]uint64) {
	m["addr_lookups"] = r.lookups.Load()
	m["addr_resolved"] = r.resolved.Load()
	m["addr_not_held"] = r.notHeld.Load()
	m["addr_lookup_failed"] = r.failed.Load()
	m["addr_lookup_busy"] = r.busy.Load()
	m["addr_lookup_slow"] = r.slow.Load()
	m["held_released"] = r.released.Load()
	m["held_dropped"] = r.dropped.Load()
}

// AddrCounters counts address lookups, packets held while their source
// was checked, and records the DHT refused to store.
func (o *Overlay) AddrCounters() map[string]uint64 {
	m := make(map[string]uint64)
	o.addrs.counters(m)
	o.admit.counters(m)
	if o.dht != nil {
		m["dht_refused"] = o.dht.store.refused.Load()
		m["dht_peers"] = uint64(o.dht.RoutingTableSize())
	}
	return m
}

// Bindings returns the addresses this node sends to, and the peers the
// lease records bind them to.
func (o *Overlay) Bindings() map[netip.Addr]peer.ID {
	o.mu.RLock()
	defer o.mu.RUnlock()
	m := make(map[netip.Addr]peer.ID, len(o.byAddr))
	for a, p := range o.byAddr {
		m[a] = p.id
	}
	return m
}

// VirtualAddrs returns this node's own virtual addresses.
func (o *Overlay) VirtualAddrs() []netip.Addr {
	o.addrs.mu.Lock()
	defer o.addrs.mu.Unlock()
	return slices.Clone(o.addrs.self)
}

// SetVirtualAddrs changes this node's own virtual addresses (its VM's
// lease was won or lost). New sessions announce them; peers that have a
// session already find them in the lease records.
func (o *Overlay) SetVirtualAddrs(addrs []netip.Addr) {
	o.addrs.mu.Lock()
	o.addrs.self = slices.Clone(addrs)
	o.addrs.mu.Unlock()
}

// lookupAddr finds the holder of ip in the background and binds ip to
// it. It reports whether a lookup of ip is running.
func (o *Overlay) lookupAddr(ip netip.Addr) bool {
	if o.cfg.Resolve == nil {
		if o.ring != nil {
			o.ring.resolve(ip)
		}
		return false
	}
	if !ip.Is4() || !o.inVirtualSubnet(ip) {
		return false
	}
	r := &o.addrs
	now := time.Now()
	r.mu.Lock()
	if r.inFlight[ip] {
		r.mu.Unlock()
		return true
	}
	if slices.Contains(r.self, ip) || now.Before(r.unheld[ip]) {
		r.mu.Unlock()
		return false
	}
	r.tokens = min(lookupBurst, r.tokens+now.Sub(r.refilled).Seconds()*lookupRate)
	r.refilled = now
	if len(r.inFlight) >= maxResolving || r.tokens < 1 {
		r.mu.Unlock()
		r.busy.Add(1)
		return false
	}
	r.tokens--
	r.inFlight[ip] = true
	r.mu.Unlock()
	r.lookups.Add(1)
	o.spawn(func() {
		o.resolveAddr(ip)
	})
	return true
}

func (o *Overlay) resolveAddr(ip netip.Addr) {
	r := &o.addrs
	ctx, cancel := context.WithTimeout(o.ctx, resolveTimeout)
	start := time.Now()
	holder, err := o.cfg.Resolve(ctx, o.dht, ip)
	took := time.Since(start)
	cancel()
	if took >= slowLookup {
		r.slow.Add(1)
		o.log.Info("slow address lookup", "ip", ip, "took", took.Round(time.Millisecond), "holder", holder, "err", err)
	}
	r.mu.Lock()
	delete(r.inFlight, ip)
	if errors.Is(err, ErrNotHeld) {
		r.unheld[ip] = time.Now().Add(unheldFor)
	}
	r.mu.Unlock()
	// Packets from ip that other peers sent are not theirs to send; on a
	// failed lookup nobody's are known to be (dropHeld takes o's peers'
	// own locks, so it runs after o.mu is released).
	var others []*Peer
	o.mu.RLock()
	for _, q := range o.peers {
		if q.id != holder || err != nil {
			others = append(others, q)
		}
	}
	o.mu.RUnlock()
	for _, q := range others {
		q.dropHeld(ip)
	}
	switch {
	case errors.Is(err, ErrNotHeld):
		r.notHeld.Add(1)
		o.unbind(ip)
		return
	case err != nil:
		r.failed.Add(1)
		o.log.Info("address lookup failed", "ip", ip, "err", err)
		return
	case holder == o.host.ID():
		return
	}
	r.resolved.Add(1)
	p := o.peer(holder)
	if o.router != nil {
		if err := o.AddRingPeer(holder); err != nil {
			o.log.Debug("address holder", "ip", ip, "err", err)
		}
	}
	o.bind(ip, p)
}

// bind records that p holds ip, as the lease records say.
func (o *Overlay) bind(ip netip.Addr, p *Peer) {
	o.mu.Lock()
	old := o.byAddr[ip]
	o.byAddr[ip] = p
	o.mu.Unlock()
	o.addrs.mu.Lock()
	o.addrs.checked[ip] = time.Now()
	delete(o.addrs.unheld, ip)
	o.addrs.mu.Unlock()
	if old != p {
		if old != nil {
			o.log.Info("virtual address moves to another peer", "addr", ip, "from", old.id, "to", p.id)
			old.dropHeld(ip)
		}
		if s := p.sendSession.Load(); s != nil && s.sendReady.Load() {
			o.announce(p)
		}
	}
	o.releaseHeld(p, ip)
}

// unbind forgets who holds ip.
func (o *Overlay) unbind(ip netip.Addr) {
	o.mu.Lock()
	old := o.byAddr[ip]
	delete(o.byAddr, ip)
	o.mu.Unlock()
	o.addrs.mu.Lock()
	delete(o.addrs.checked, ip)
	o.addrs.mu.Unlock()
	if old != nil {
		old.dropHeld(ip)
	}
}

// recheck looks ip up again if its binding is old; packets keep flowing
// to the holder meanwhile.
func (o *Overlay) recheck(ip netip.Addr) {
	if o.cfg.Resolve == nil {
		return
	}
	o.addrs.mu.Lock()
	last, ok := o.addrs.checked[ip]
	o.addrs.mu.Unlock()
	if ok && time.Since(last) > bindingTTL {
		o.lookupAddr(ip)
	}
}

// helloAddrs takes the addresses a peer's hello names: with Resolve, they
// are only checked; without, they are believed.
func (o *Overlay) helloAddrs(p *Peer, addrs []netip.Addr) {
	if o.cfg.Resolve == nil {
		o.setAddrs(p, addrs)
		return
	}
	o.mu.RLock()
	var check []netip.Addr
	for _, a := range addrs {
		if o.byAddr[a] != p {
			check = append(check, a)
		}
	}
	o.mu.RUnlock()
	for _, a := range check {
		o.lookupAddr(a)
	}
}

func (o *Overlay) inVirtualSubnet(ip netip.Addr) bool {
	return slices.ContainsFunc(o.cfg.VirtualSubnets, func(p netip.Prefix) bool { return p.Contains(ip) })
}

// heldPacket is a packet from a peer whose source address is being
// checked.
type heldPacket struct {
	src         netip.Addr
	buf         []byte // HeaderLen bytes of room, then the packet
	csumPartial bool
}

// hold keeps a copy of pkt, whose source address the records do not yet
// bind to p, while a lookup checks it; it reports whether it did. The
// first packets of a new peer, or of one whose lease was won after its
// session began, are held this way rather than lost.
func (p *Peer) hold(pkt []byte, csumPartial bool) bool {
	if p.o.cfg.Resolve == nil || len(pkt) < 20 {
		return false
	}
	src := netip.AddrFrom4([4]byte(pkt[12:16]))
	if !p.o.inVirtualSubnet(src) {
		return false
	}
	p.heldMu.Lock()
	checking := slices.Contains(p.checking, src)
	if !checking {
		if len(p.checking) >= maxChecking {
			p.heldMu.Unlock()
			return false
		}
		p.checking = append(p.checking, src)
	}
	if len(p.held) >= heldPackets || p.heldSize+len(pkt) > heldBytes {
		p.heldMu.Unlock()
		p.o.addrs.dropped.Add(1)
		return true
	}
	buf := make([]byte, HeaderLen+len(pkt))
	copy(buf[HeaderLen:], pkt)
	p.held = append(p.held, heldPacket{src: src, buf: buf, csumPartial: csumPartial})
	p.heldSize += len(pkt)
	p.heldMu.Unlock()
	if !checking && !p.o.lookupAddr(src) {
		// No lookup runs (the address was found unheld a moment ago,
		// or too many are in flight): nothing would release the packet.
		p.dropHeld(src)
	}
	return true
}

// releaseHeld delivers p's packets from ip, now that ip is bound to p.
func (o *Overlay) releaseHeld(p *Peer, ip netip.Addr) {
	p.heldMu.Lock()
	p.checking = slices.DeleteFunc(p.checking, func(a netip.Addr) bool { return a == ip })
	var out []heldPacket
	p.held = slices.DeleteFunc(p.held, func(h heldPacket) bool {
		if h.src == ip {
			out = append(out, h)
			p.heldSize -= len(h.buf) - HeaderLen
			return true
		}
		return false
	})
	p.heldMu.Unlock()
	if len(out) == 0 {
		return
	}
	r := &o.addrs
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.rx == nil {
		r.rx = o.cfg.NewReceiver()
	}
	for _, h := range out {
		r.rx.Deliver(h.buf, h.csumPartial)
		r.rx.Flush()
		p.rxPackets.Add(1)
		p.rxBytes.Add(uint64(len(h.buf) - HeaderLen))
	}
	r.released.Add(uint64(len(out)))
}

// dropHeld drops p's packets from ip: the records do not bind ip to p.
func (p *Peer) dropHeld(ip netip.Addr) {
	p.heldMu.Lock()
	defer p.heldMu.Unlock()
	p.checking = slices.DeleteFunc(p.checking, func(a netip.Addr) bool { return a == ip })
	n := 0
	p.held = slices.DeleteFunc(p.held, func(h heldPacket) bool {
		if h.src == ip {
			n++
			p.heldSize -= len(h.buf) - HeaderLen
			return true
		}
		return false
	})
	p.o.addrs.dropped.Add(uint64(n))
	p.o.drops.spoofedSource.Add(uint64(n))
}
