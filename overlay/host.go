package overlay

import (
	"fmt"
	"net/netip"
	"slices"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/control"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/metrics"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/net/connmgr"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"
	noise "github.com/libp2p/go-libp2p/p2p/security/noise"
	quic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

// newHost builds the control-plane host: TCP and QUIC, Noise only, and
// nothing that talks to the world on its own (no relay, no UPnP, no mDNS,
// no public bootstrap list), so the overlay stays private. Addresses inside
// the virtual subnets are neither announced nor dialled: the control plane
// must never run over the overlay it controls.
func newHost(key crypto.PrivKey, listen []string, g *gater, bw *metrics.BandwidthCounter) (host.Host, error) {
	virtual := g.virtual
	cm, err := connmgr.NewConnManager(64, 256)
	if err != nil {
		return nil, fmt.Errorf("connection manager: %w", err)
	}
	// yamux pings every connection twice a minute from each end (a
	// keepalive when it is quiet, and a round-trip measurement), which on
	// an idle node costs more than all of the ring's own keepalives. The
	// ring pings its links over UDP itself and closes a link it stops
	// hearing (ringKeepalive, linkTimeout); other connections fail when
	// used, and the DHT's timeouts cover that.
	mux := *yamux.DefaultTransport
	mux.EnableKeepAlive = false
	mux.MeasureRTTInterval = 10 * time.Minute
	h, err := libp2p.New(
		libp2p.Identity(key),
		libp2p.ListenAddrStrings(listen...),
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.Transport(quic.NewTransport),
		libp2p.Security(noise.ID, noise.New),
		libp2p.Muxer(yamux.ID, &mux),
		libp2p.ConnectionManager(cm),
		libp2p.DisableRelay(),
		libp2p.DisableMetrics(),
		libp2p.BandwidthReporter(bw),
		libp2p.Ping(false),
		libp2p.AddrsFactory(func(addrs []ma.Multiaddr) []ma.Multiaddr {
			return slices.DeleteFunc(addrs, func(a ma.Multiaddr) bool { return inVirtual(a, virtual) })
		}),
		libp2p.ConnectionGater(g),
		libp2p.SwarmOpts(swarm.WithDialRanker(tcpFirst)),
		// A node that died leaves its QUIC port silent: DHT lookups that
		// meet it must not wait the default 15 s.
		libp2p.WithDialTimeout(5*time.Second),
	)
	if err != nil {
		return nil, fmt.Errorf("libp2p host: %w", err)
	}
	return h, nil
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
