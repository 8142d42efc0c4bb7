package overlay

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/control"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/metrics"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/sec"
	"github.com/libp2p/go-libp2p/core/transport"
	basichost "github.com/libp2p/go-libp2p/p2p/host/basic"
	"github.com/libp2p/go-libp2p/p2p/host/eventbus"
	"github.com/libp2p/go-libp2p/p2p/host/peerstore/pstoremem"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/net/connmgr"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"
	"github.com/libp2p/go-libp2p/p2p/net/upgrader"
	"github.com/libp2p/go-libp2p/p2p/protocol/identify"
	noise "github.com/libp2p/go-libp2p/p2p/security/noise"
	quic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/quicreuse"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
	gquic "github.com/quic-go/quic-go"
	"golang.org/x/crypto/hkdf"
)

// newHost builds the control-plane host: TCP and QUIC, Noise only, and
// nothing that talks to the world on its own (no relay, no UPnP, no mDNS,
// no AutoNAT, no public bootstrap list), so the overlay stays private.
// Addresses inside the virtual subnets are neither announced nor dialled:
// the control plane must never run over the overlay it controls.
//
// The host is put together from go-libp2p's parts rather than with
// libp2p.New, whose defaults link every transport it knows (WebRTC,
// WebTransport, WebSocket) and a dependency-injection framework into the
// binary: about a third of its size, paged in by every node.
func newHost(key crypto.PrivKey, listen []string, g *gater, bw *metrics.BandwidthCounter) (host.Host, error) {
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("libp2p host: %w", err)
	}
	addrs := make([]ma.Multiaddr, 0, len(listen))
	for _, s := range listen {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			return nil, fmt.Errorf("libp2p host: listen address %q: %w", s, err)
		}
		addrs = append(addrs, a)
	}
	var closers []io.Closer
	fail := func(err error) (host.Host, error) {
		for _, c := range slices.Backward(closers) {
			c.Close()
		}
		return nil, fmt.Errorf("libp2p host: %w", err)
	}
	ps, err := pstoremem.NewPeerstore()
	if err != nil {
		return fail(err)
	}
	closers = append(closers, ps)
	if err := ps.AddPrivKey(id, key); err != nil {
		return fail(err)
	}
	if err := ps.AddPubKey(id, key.GetPublic()); err != nil {
		return fail(err)
	}
	limits := rcmgr.DefaultLimits
	limits.AddServiceLimit(identify.ServiceName,
		rcmgr.BaseLimit{StreamsInbound: 64, StreamsOutbound: 64, Streams: 128, Memory: 4 << 20},
		rcmgr.BaseLimitIncrease{StreamsInbound: 64, StreamsOutbound: 64, Streams: 128, Memory: 4 << 20})
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(limits.AutoScale()))
	if err != nil {
		return fail(err)
	}
	closers = append(closers, rm)
	cm, err := connmgr.NewConnManager(64, 256)
	if err != nil {
		return fail(err)
	}
	closers = append(closers, cm)
	bus := eventbus.NewBus()
	sw, err := swarm.NewSwarm(id, ps, bus,
		swarm.WithResourceManager(rm),
		swarm.WithConnectionGater(g),
		swarm.WithMetrics(bw),
		swarm.WithDialRanker(tcpFirst),
		// A node that died leaves its QUIC port silent: DHT lookups
		// that meet it must not wait the default 15 s.
		swarm.WithDialTimeout(5*time.Second),
	)
	if err != nil {
		return fail(err)
	}
	closers = append(closers, sw)
	// yamux pings every connection twice a minute from each end (a
	// keepalive when it is quiet, and a round-trip measurement), which on
	// an idle node costs more than all of the ring's own keepalives. The
	// ring pings its links over UDP itself and closes a link it stops
	// hearing (ringKeepalive, linkTimeout); other connections fail when
	// used, and the DHT's timeouts cover that.
	mux := *yamux.DefaultTransport
	mux.EnableKeepAlive = false
	mux.MeasureRTTInterval = 10 * time.Minute
	muxers := []upgrader.StreamMuxer{{ID: yamux.ID, Muxer: &mux}}
	secure, err := noise.New(noise.ID, key, muxers)
	if err != nil {
		return fail(err)
	}
	up, err := upgrader.New([]sec.SecureTransport{secure}, muxers, nil, rm, g)
	if err != nil {
		return fail(err)
	}
	tcpT, err := tcp.NewTCPTransport(up, rm, nil)
	if err != nil {
		return fail(err)
	}
	resetKey, tokenKey, err := quicKeys(key)
	if err != nil {
		return fail(err)
	}
	socks := new(quicSockets)
	qcm, err := quicreuse.NewConnManager(resetKey, tokenKey, quicreuse.OverrideListenUDP(socks.listen))
	if err != nil {
		return fail(err)
	}
	closers = append(closers, qcm)
	quicT, err := quic.NewTransport(key, qcm, nil, g, rm)
	if err != nil {
		return fail(err)
	}
	refused := new(refusedPeers)
	for _, t := range []transport.Transport{watchedTCP{tcpT, refused}, hastyQUIC{quicT, refused}} {
		if err := sw.AddTransport(t); err != nil {
			return fail(err)
		}
	}
	h, err := basichost.NewHost(sw, &basichost.HostOpts{
		EventBus:    bus,
		ConnManager: cm,
		AddrsFactory: func(addrs []ma.Multiaddr) []ma.Multiaddr {
			return slices.DeleteFunc(addrs, func(a ma.Multiaddr) bool { return inVirtual(a, g.virtual) })
		},
	})
	if err != nil {
		return fail(err)
	}
	// The host closes the swarm, peerstore, resource and connection
	// managers; the QUIC sockets' owner is closed after it.
	closers = []io.Closer{qcm, h}
	if err := sw.Listen(addrs...); err != nil {
		return fail(err)
	}
	h.Start()
	return &controlHost{BasicHost: h, quic: qcm, quicSockets: socks}, nil
}

// controlHost is the host and the QUIC socket manager it does not close.
type controlHost struct {
	*basichost.BasicHost
	quic        *quicreuse.ConnManager
	quicSockets *quicSockets

	closeOnce sync.Once
	closeErr  error
}

// Close closes the host, then the QUIC sockets; again, it does nothing.
func (h *controlHost) Close() error {
	h.closeOnce.Do(func() {
		h.closeErr = errors.Join(h.BasicHost.Close(), h.quic.Close())
	})
	return h.closeErr
}

// quicKeys derives QUIC's stateless-reset and token keys from the
// identity, as go-libp2p does: a restarted node's resets stay valid.
// (go-libp2p's config package has these, but importing it links the
// transports and framework newHost leaves out.)
func quicKeys(key crypto.PrivKey) (reset gquic.StatelessResetKey, token gquic.TokenGeneratorKey, err error) {
	raw, err := key.Raw()
	if err != nil {
		return reset, token, err
	}
	if _, err := io.ReadFull(hkdf.New(sha256.New, raw, nil, []byte("libp2p quic stateless reset key")), reset[:]); err != nil {
		return reset, token, err
	}
	if _, err := io.ReadFull(hkdf.New(sha256.New, raw, nil, []byte("libp2p quic token generator key")), token[:]); err != nil {
		return reset, token, err
	}
	return reset, token, nil
}

// tcpFirst dials TCP addresses at once and QUIC ones only if TCP has not
// connected within half a second. A node that crashes leaves a QUIC
// connection up for half a minute, but its kernel resets a TCP one at
// once, and the ring notices; QUIC remains the way in where only UDP is
// let through.
func tcpFirst(addrs []ma.Multiaddr) []network.AddrDelay {
	out := make([]network.AddrDelay, 0, len(addrs))
	for _, a := range addrs {
		d := network.AddrDelay{Addr: a}
		if _, err := a.ValueForProtocol(ma.P_TCP); err != nil {
			d.Delay = 500 * time.Millisecond
		}
		out = append(out, d)
	}
	return out
}

// inVirtual reports whether a's IP lies in one of the virtual subnets.
func inVirtual(a ma.Multiaddr, virtual []netip.Prefix) bool {
	ip, err := manet.ToIP(a)
	if err != nil {
		return false
	}
	addr, ok := netip.AddrFromSlice(ip)
	if !ok {
		return false
	}
	addr = addr.Unmap()
	for _, p := range virtual {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// gater refuses to dial or accept control connections over virtual
// addresses, and connections with peers refused admission (admit.go).
type gater struct {
	virtual []netip.Prefix
	// refused is set once the overlay exists.
	refused atomic.Pointer[func(peer.ID) bool]
}

func (g *gater) refusedPeer(id peer.ID) bool {
	f := g.refused.Load()
	return f != nil && (*f)(id)
}

func (g *gater) InterceptPeerDial(id peer.ID) bool { return !g.refusedPeer(id) }
func (g *gater) InterceptAddrDial(_ peer.ID, a ma.Multiaddr) bool {
	return !inVirtual(a, g.virtual)
}
func (g *gater) InterceptAccept(c network.ConnMultiaddrs) bool {
	return !inVirtual(c.RemoteMultiaddr(), g.virtual)
}
func (g *gater) InterceptSecured(_ network.Direction, id peer.ID, _ network.ConnMultiaddrs) bool {
	return !g.refusedPeer(id)
}
func (g *gater) InterceptUpgraded(network.Conn) (bool, control.DisconnectReason) {
	return true, 0
}

// ControlTraffic returns the bytes the control plane's streams carried
// since the node started, both ways, by protocol ("other" for streams
// before their protocol was agreed). Transport framing (Noise, yamux,
// TCP and QUIC headers) is not counted.
func (o *Overlay) ControlTraffic() map[string]uint64 {
	m := make(map[string]uint64)
	for id, st := range o.bw.GetBandwidthByProtocol() {
		name := string(id)
		if name == "" {
			name = "other"
		}
		m[name] += uint64(st.TotalIn + st.TotalOut)
	}
	return m
}

// quicSockets are the UDP sockets QUIC runs on, kept so that the ring can
// open this node's NAT from the control port (openNAT).
type quicSockets struct {
	mu    sync.Mutex
	conns []*net.UDPConn
}

func (q *quicSockets) listen(network string, laddr *net.UDPAddr) (net.PacketConn, error) {
	c, err := net.ListenUDP(network, laddr)
	if err != nil {
		return nil, err
	}
	q.mu.Lock()
	q.conns = append(q.conns, c)
	q.mu.Unlock()
	return c, nil
}

// openNAT sends a datagram from the QUIC socket on port to each address,
// with an IP TTL of ttl: enough to leave through this node's NAT and so
// open a mapping from the control port to the address, too little to
// reach a NAT in front of the address, where it would take the port that
// the peer's dial needs (a Linux NAT that sees a datagram come in to it
// keeps the flow, and maps the peer's later datagrams to another port).
func (q *quicSockets) openNAT(port uint16, to []netip.AddrPort, ttl int) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	for i := 0; i < len(q.conns); {
		c := q.conns[i]
		if a, ok := c.LocalAddr().(*net.UDPAddr); !ok || a.Port != int(port) || a.IP.To4() == nil {
			i++
			continue
		}
		sent, closed := 0, false
		for _, ep := range to {
			err := writeTTL(c, []byte{0}, ep, ttl)
			if closed = errors.Is(err, net.ErrClosed); closed {
				break
			}
			if err == nil {
				sent++
			}
		}
		if !closed {
			return sent
		}
		q.conns = slices.Delete(q.conns, i, i+1) // quicreuse closed it
	}
	return 0
}
