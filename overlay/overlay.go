// Package overlay carries a node's packets to other nodes.
//
// Each link has two planes. The control plane is a go-libp2p host (TCP and
// QUIC, Noise): it authenticates peers by their identity keys and carries
// the link handshake (handshake.go). The data plane is one UDP socket per
// node: every IPv4 packet from the VM is sealed end to end under the
// session keys and sent as one datagram (wire.go). When no UDP path gets
// through, the same datagrams travel over a libp2p stream (stream.go).
//
// A packet's way out (send.go): TAP reader → Send → peer lookup by virtual
// address → seal under the peer's current session → UDP or stream.
// Its way in (receive.go): UDP or stream → header check → session lookup by
// receiver index → open → replay window → source check → Deliver → TAP.
// Each peer has one goroutine (link.go) that dials it, handshakes, rekeys,
// pings it, and picks its path.
package overlay

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/metrics"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/ringnet/ringnet/routing"
)

// Protocol IDs of the control plane.
const (
	linkProtocol protocol.ID = "/ringnet/link/1.0.0"
	dataProtocol protocol.ID = "/ringnet/data/1.0.0"
)

// Errors that callers of Send may branch on.
var (
	ErrNoRoute   = errors.New("no peer holds the destination address")
	ErrNoSession = errors.New("no session with the peer yet")
)

var (
	errAuth   = errors.New("datagram failed authentication")
	errReplay = errors.New("datagram replayed or too old")
)

// Config configures an Overlay.
type Config struct {
	Identity crypto.PrivKey
	// ControlAddrs are libp2p multiaddrs to listen on.
	ControlAddrs []string
	// DataAddr is the UDP data socket's address.
	DataAddr netip.AddrPort
	// VirtualAddrs are the virtual addresses this node's VM holds; peers
	// learn them in the handshake.
	VirtualAddrs []netip.Addr
	// VirtualSubnets are the overlay's own address ranges, which the
	// control plane must never use.
	VirtualSubnets []netip.Prefix
	// Ring runs the self-organizing ring (ring.go): the node keeps the
	// links the routing policy wants, routes datagrams over them, and
	// reaches the holders of virtual addresses it has no link to.
	Ring bool
	// Bootstrap are nodes to join the ring through (with Ring).
	Bootstrap []peer.AddrInfo
	// Shortcuts is the shortcut policy (with Ring); zero fields take
	// routing.DefaultShortcutPolicy's.
	Shortcuts routing.ShortcutPolicy
	// PeersFile, if set, is where the node remembers its ring links, to
	// rejoin through them after a restart before trying Bootstrap.
	PeersFile string
	// Router routes datagrams over the ring when Ring is off (tests);
	// nil: links only.
	Router Router
	// AEAD forces one suite; zero picks per link.
	AEAD Suite
	// Admission, if set, closes the ring: only peers whose proof it
	// accepts may link, forward and store records (admit.go). Nil: an
	// open ring.
	Admission *AdmissionConfig
	// DHT, if set, runs the overlay's record store (dht.go).
	DHT *DHTConfig
	// OnClone, if set, is told when another live node holds this node's
	// identity and this one is the newer (instance.go); the error wraps
	// ErrClone and says where the other runs. The node should stop.
	OnClone func(error)
	// Resolve, if set, says which node holds a virtual address, from the
	// lease records; it returns ErrNotHeld for an address no one holds.
	// With it, a peer's hello only names addresses to check (addrs.go).
	// Without it, hellos are believed and the ring's own address records
	// are used (resolve.go).
	Resolve func(ctx context.Context, d *DHT, ip netip.Addr) (peer.ID, error)
	// AddrsLearned, if set, is told of a peer's virtual addresses each
	// time packets to it can start to flow (a session is ready): the
	// gateway tells the VM of those it asked for in vain. It must not
	// block.
	AddrsLearned func([]netip.Addr)
	// NewReceiver makes the Receiver of one receiving goroutine.
	NewReceiver func() Receiver
	Logger      *slog.Logger
}

// Receiver takes the packets that arrive for the VM. Each goroutine that
// receives (the UDP socket's, one per data stream) has a Receiver of its
// own, so a Receiver needs no locking.
type Receiver interface {
	// Deliver takes one IPv4 packet at buf[HeaderLen:]; buf[:HeaderLen] is
	// free for the receiver's own header. buf is reused after Flush.
	// csumPartial says that the packet's TCP or UDP checksum holds only
	// the pseudo-header sum (tap.SegmentLayout.PartialCsum).
	Deliver(buf []byte, csumPartial bool)
	// Flush ends a batch: everything delivered since the last Flush came
	// from one read of the network.
	Flush()
}

// Overlay is one node's set of links.
type Overlay struct {
	cfg  Config
	log  *slog.Logger
	host host.Host
	bw   *metrics.BandwidthCounter // the control plane's stream bytes
	udp  *udpConn

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// spawnMu guards closing: once Close waits on wg, no goroutine may
	// join it (see spawn).
	spawnMu sync.Mutex
	closing bool

	mu      sync.RWMutex
	peers   map[peer.ID]*Peer
	byIndex map[uint32]*indexEntry
	byAddr  map[netip.Addr]*Peer

	drops     dropCounters
	forwarded atomic.Uint64 // routed datagrams passed on
	deafLinks atomic.Uint64 // link connections closed for unanswered pings
	// resentAfterLost counts kept packets sent again after their peer
	// lost the session they went under (kept.go).
	resentAfterLost atomic.Uint64
	lost            lostNotices

	ringAddr  routing.Addr
	routeBufs sync.Pool
	router    Router
	ring      *ringManager // nil without Config.Ring
	stun      stunState
	reach     reachState
	instance  instanceState
	punches   punchCounters
	addrs     addrResolver
	admit     admission
	dht       *DHT // nil without Config.DHT
}

type indexEntry struct {
	peer    *Peer
	session *session
}

// New starts the overlay's host and data socket. The overlay runs until
// Close or until ctx ends.
func New(ctx context.Context, cfg Config) (*Overlay, error) {
	if cfg.Identity == nil {
		return nil, errors.New("overlay: no identity")
	}
	if cfg.NewReceiver == nil {
		return nil, errors.New("overlay: no NewReceiver function")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	conn, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(cfg.DataAddr))
	if err != nil {
		return nil, fmt.Errorf("data socket %v: %w", cfg.DataAddr, err)
	}
	udp, err := newUDPConn(conn)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("data socket: %w", err)
	}
	g := &gater{virtual: cfg.VirtualSubnets}
	bw := metrics.NewBandwidthCounter()
	h, err := newHost(cfg.Identity, cfg.ControlAddrs, g, bw)
	if err != nil {
		udp.Close()
		return nil, err
	}
	o := &Overlay{
		cfg:     cfg,
		log:     cfg.Logger,
		host:    h,
		bw:      bw,
		udp:     udp,
		peers:   make(map[peer.ID]*Peer),
		byIndex: make(map[uint32]*indexEntry),
		byAddr:  make(map[netip.Addr]*Peer),
	}
	o.ringAddr = routing.AddrFromPeer(h.ID())
	o.routeBufs = newRouteBufs()
	o.stun.init()
	o.addrs.init(cfg.VirtualAddrs)
	o.admit.init()
	refused := o.refusedPeer
	g.refused.Store(&refused)
	if cfg.DHT != nil {
		if o.dht, err = newDHT(h, *cfg.DHT, o); err != nil {
			h.Close()
			udp.Close()
			return nil, err
		}
	}
	o.ctx, o.cancel = context.WithCancel(ctx)
	o.router = cfg.Router
	if cfg.Ring {
		o.ring = newRingManager(o)
		o.router = o.ring
	}
	if cfg.Admission != nil {
		o.startAdmission()
	}
	o.startInstanceChecks()
	h.SetStreamHandler(linkProtocol, o.gated(o.handleLinkStream))
	h.SetStreamHandler(dataProtocol, o.gated(o.handleDataStream))
	o.spawn(func() {
		o.receiveUDP()
	})
	if o.ring != nil {
		o.ring.start()
	}
	return o, nil
}

// DHT is the overlay's record store, or nil without Config.DHT.
func (o *Overlay) DHT() *DHT { return o.dht }

// ID is this node's peer ID.
func (o *Overlay) ID() peer.ID { return o.host.ID() }

// Host is the control-plane host.
func (o *Overlay) Host() host.Host { return o.host }

// DataAddr is the bound address of the UDP data socket.
func (o *Overlay) DataAddr() netip.AddrPort {
	return o.udp.LocalAddr().(*net.UDPAddr).AddrPort()
}

// AddPeer keeps a link to a statically configured peer: the overlay dials
// it, and redials whenever the link goes down.
func (o *Overlay) AddPeer(info peer.AddrInfo) error {
	if info.ID == o.host.ID() {
		return errors.New("a node cannot peer with itself")
	}
	o.host.Peerstore().AddAddrs(info.ID, info.Addrs, time.Duration(1<<62))
	o.host.ConnManager().Protect(info.ID, "ringnet-link")
	p := o.peer(info.ID)
	p.mu.Lock()
	p.static = true
	p.mu.Unlock()
	p.wake()
	return nil
}

// peer returns the peer with id, starting its link loop on first sight.
func (o *Overlay) peer(id peer.ID) *Peer {
	o.mu.Lock()
	defer o.mu.Unlock()
	if p, ok := o.peers[id]; ok {
		return p
	}
	p := newPeer(o, id)
	if o.ring != nil {
		// Any peer may be reached over the ring when no link carries
		// its packets.
		p.ring = &ringState{addr: routing.AddrFromPeer(id)}
	}
	ctx, cancel := context.WithCancel(o.ctx)
	p.cancel = cancel
	o.peers[id] = p
	o.spawn(func() {
		p.run(ctx)
	})
	return p
}

// removePeer forgets a peer and stops its link loop: its link is gone and
// no packets flow to it.
func (o *Overlay) removePeer(p *Peer) {
	o.mu.Lock()
	if o.peers[p.id] == p {
		delete(o.peers, p.id)
	}
	for a, holder := range o.byAddr {
		if holder == p {
			delete(o.byAddr, a)
		}
	}
	for idx, e := range o.byIndex {
		if e.peer == p {
			delete(o.byIndex, idx)
		}
	}
	o.mu.Unlock()
	p.cancel()
}

// Send seals one IPv4 packet to the node that holds dst. The packet is at
// buf[HeaderLen:HeaderLen+n]; buf needs TagLen bytes of capacity past it.
// Send overwrites buf.
func (o *Overlay) Send(dst netip.Addr, buf []byte, n int) error {
	p, err := o.route(dst, 1)
	if err != nil {
		return err
	}
	return p.send(typeData, buf, n)
}

// route finds the peer that holds dst, counting count packets as dropped
// when none does.
func (o *Overlay) route(dst netip.Addr, count int) (*Peer, error) {
	o.mu.RLock()
	p := o.byAddr[dst]
	o.mu.RUnlock()
	if p == nil {
		o.drops.noRoute.Add(uint64(count))
		o.lookupAddr(dst)
		return nil, ErrNoRoute
	}
	o.recheck(dst)
	return p, nil
}

// SendSegments seals a batch of IPv4 packets to the node that holds dst
// and sends them with as few system calls as the path allows. Packet i is
// at buf[i*stride+HeaderLen:][:lens[i]]; every packet but the last must be
// stride-Overhead bytes long, so that the sealed datagrams lie back to
// back, and buf needs TagLen bytes of capacity past the last. csumPartial
// says that the packets' TCP or UDP checksums were left partial
// (tap.SegmentLayout.PartialCsum), for the receiving node to finish.
func (o *Overlay) SendSegments(dst netip.Addr, buf []byte, stride int, lens []int, csumPartial bool) error {
	p, err := o.route(dst, len(lens))
	if err != nil {
		return err
	}
	return p.sendSegments(dataType(csumPartial), buf, stride, lens)
}

// Holds reports whether some peer announced addr. With the ring, asking
// about an address no peer announced starts looking for its holder.
func (o *Overlay) Holds(addr netip.Addr) bool {
	o.mu.RLock()
	held := o.byAddr[addr] != nil
	o.mu.RUnlock()
	if !held {
		o.lookupAddr(addr)
	}
	return held
}

// reserveIndex picks a fresh random receiver index for a session being
// built. Datagrams naming it are refused until publish.
func (o *Overlay) reserveIndex(p *Peer) uint32 {
	o.mu.Lock()
	defer o.mu.Unlock()
	for {
		var b [4]byte
		rand.Read(b[:])
		idx := binary.BigEndian.Uint32(b[:])
		if idx == 0 || idx == stunCookieIndex || o.byIndex[idx] != nil {
			continue
		}
		o.byIndex[idx] = &indexEntry{peer: p}
		return idx
	}
}

// publish makes a session, its keys set, reachable by its receiver index.
func (o *Overlay) publish(s *session) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if e := o.byIndex[s.localIndex]; e != nil {
		e.session = s
	}
}

func (o *Overlay) dropIndex(idx uint32) {
	o.mu.Lock()
	delete(o.byIndex, idx)
	o.mu.Unlock()
}

// setAddrs records the virtual addresses p announced.
func (o *Overlay) setAddrs(p *Peer, addrs []netip.Addr) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for a, holder := range o.byAddr {
		if holder == p && !slices.Contains(addrs, a) {
			delete(o.byAddr, a)
		}
	}
	for _, a := range addrs {
		old := o.byAddr[a]
		if old != nil && old != p {
			o.log.Warn("virtual address moves to another peer", "addr", a, "from", old.id, "to", p.id)
		}
		o.byAddr[a] = p
	}
}

// announce tells the AddrsLearned hook of p's addresses: packets to them
// can go now.
func (o *Overlay) announce(p *Peer) {
	if o.cfg.AddrsLearned == nil {
		return
	}
	var addrs []netip.Addr
	o.mu.RLock()
	for a, holder := range o.byAddr {
		if holder == p {
			addrs = append(addrs, a)
		}
	}
	o.mu.RUnlock()
	if len(addrs) > 0 {
		o.cfg.AddrsLearned(addrs)
	}
}

// Close shuts the overlay down and waits for its goroutines.
func (o *Overlay) Close() error {
	o.cancel()
	var dhtErr error
	if o.dht != nil {
		dhtErr = o.dht.Close()
	}
	err := errors.Join(dhtErr, o.udp.Close(), o.host.Close())
	o.spawnMu.Lock()
	o.closing = true
	o.spawnMu.Unlock()
	o.wg.Wait()
	return err
}

// spawn runs f in a goroutine that Close waits for, and reports whether
// it did: once Close has begun to wait, f does not run (a WaitGroup may
// not gain goroutines while it is waited on).
func (o *Overlay) spawn(f func()) bool {
	o.spawnMu.Lock()
	defer o.spawnMu.Unlock()
	if o.closing {
		return false
	}
	o.wg.Add(1)
	go func() {
		defer o.wg.Done()
		f()
	}()
	return true
}

// PeerStatus is a snapshot of one link.
type PeerStatus struct {
	ID     peer.ID
	Static bool
	Addrs  []netip.Addr
	Path   Path
	// Punched: the path is UDP that hole punching opened, under the keys
	// of a session made over the ring.
	Punched    bool
	Endpoint   netip.AddrPort
	Hops       int // 1 on a link; over the ring, the hops its last datagram took
	Suite      Suite
	RTT        time.Duration
	SessionAge time.Duration
	Rekeys     uint64
	TxPackets  uint64
	TxBytes    uint64
	RxPackets  uint64
	RxBytes    uint64
	Drops      uint64
}

// peerList returns the peers, in no order.
func (o *Overlay) peerList() []*Peer {
	o.mu.RLock()
	defer o.mu.RUnlock()
	ps := make([]*Peer, 0, len(o.peers))
	for _, p := range o.peers {
		ps = append(ps, p)
	}
	return ps
}

// Peers reports every peer's link, sorted by peer ID.
func (o *Overlay) Peers() []PeerStatus {
	ps := o.peerList()
	out := make([]PeerStatus, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.status())
	}
	slices.SortFunc(out, func(a, b PeerStatus) int {
		return cmpString(string(a.ID), string(b.ID))
	})
	return out
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// DataPath reports how the data socket batches: whether UDP_SEGMENT and
// UDP_GRO are on, and how many batches each carried.
func (o *Overlay) DataPath() map[string]uint64 {
	b2u := func(b bool) uint64 {
		if b {
			return 1
		}
		return 0
	}
	return map[string]uint64{
		"udp_gso":         b2u(o.udp.gso.Load()),
		"udp_gro":         b2u(o.udp.gro),
		"udp_gso_batches": o.udp.gsoBatches.Load(),
		"udp_gro_batches": o.udp.groBatches.Load(),
		"sendmmsg_calls":  o.udp.mmsgBatches.Load(),
	}
}

// Drops reports the datagrams refused, by reason.
func (o *Overlay) Drops() map[string]uint64 { return o.drops.snapshot() }
