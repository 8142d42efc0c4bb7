package overlay

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/ringnet/ringnet/routing"
)

// Dial-me: a node answering a connect-to-me dials the requester; when a
// NAT stops that dial, it routes its answer to the requester instead (a
// dial-me), and the requester, which can dial out, dials the answerer. A
// requester that is not yet in the ring cannot be reached by routing: it
// names its bootstrap node as the relay in its request, the dial-me goes
// to the relay, and the relay passes it on over its leaf link.
//
// A dial-me carries the requester's peer ID and the answer (a
// routing.ConnectToMe from the answerer):
//
//	id-len id answer
//
// The requester dials only for requests it made, at most
// maxAnswerDials at once, so a forged dial-me cannot make it dial at
// will.

var errDialMe = errors.New("malformed dial-me")

// maxDialFailed bounds the answerers a node remembers it could not reach:
// a join asks past each of them.
const maxDialFailed = 8

func marshalDialMe(to peer.ID, ans *routing.ConnectToMe) ([]byte, error) {
	b, err := ans.MarshalBinary()
	if err != nil {
		return nil, err
	}
	if len(to) == 0 || len(to) > 64 {
		return nil, errDialMe
	}
	return append(append([]byte{byte(len(to))}, to...), b...), nil
}

func parseDialMe(b []byte) (peer.ID, *routing.ConnectToMe, error) {
	if len(b) < 1 {
		return "", nil, errDialMe
	}
	// An int: 1+b[0] as a byte wraps to 0 for 255.
	n := int(b[0])
	if n == 0 || len(b) < 1+n {
		return "", nil, errDialMe
	}
	to, err := peer.IDFromBytes(b[1 : 1+n])
	if err != nil {
		return "", nil, fmt.Errorf("%w: %v", errDialMe, err)
	}
	var m routing.ConnectToMe
	if err := m.UnmarshalBinary(b[1+n:]); err != nil {
		return "", nil, err
	}
	return to, &m, nil
}

// dialMe routes an answer to a requester this node could not dial.
func (r *ringManager) dialMe(req, ans *routing.ConnectToMe, dialErr error) error {
	body, err := marshalDialMe(req.Requester, ans)
	if err != nil {
		return err
	}
	dst := req.Addr
	if req.Relay.Peer != "" {
		dst = req.Relay.Addr
	}
	r.counters.dialMeSent.Add(1)
	if err := r.o.sendControl(typeDialMe, dst, body); err != nil {
		return fmt.Errorf("dial failed (%v), and so did the dial-me: %w", dialErr, err)
	}
	return nil
}

// onDialMe handles a dial-me: for this node, it dials the answerer; for a
// leaf link of this node, it passes it on.
func (r *ringManager) onDialMe(rh routing.Header, body []byte) {
	to, m, err := parseDialMe(body)
	if err != nil {
		r.drops.Count(err)
		return
	}
	// The route's source is the answerer, or a relay that passed the
	// message on: it proves nothing, and the dial to the answerer proves
	// who it is.
	self := r.t.Self()
	if to != self.Peer {
		// A relay: pass it to the leaf it names, and only to a link.
		if rh.Dst != self.Addr {
			return
		}
		r.mu.Lock()
		linked := r.t.Link(to) != nil
		r.mu.Unlock()
		if !linked {
			r.counters.answersUnsolicited.Add(1)
			return
		}
		r.o.sendControl(typeDialMe, routing.AddrFromPeer(to), body)
		return
	}
	r.mu.Lock()
	q, ok := r.answeredLocked(m)
	r.mu.Unlock()
	if !ok {
		return
	}
	// QUIC only to an answerer that opened its NAT to this node's: one
	// that was told this node's public address, still its address.
	public, natted := r.o.portPreservingNAT()
	withQUIC := natted && q.public == public
	r.o.noteDialMe(time.Now())
	r.goDial(func() {
		if err := r.dialAnswerer(r.o.ctx, m, withQUIC); err != nil {
			r.counters.dialFailed.Add(1)
			r.mu.Lock()
			if len(r.dialFailed) < maxDialFailed {
				r.dialFailed[m.Requester] = failedDial{at: time.Now(), addr: routing.AddrFromPeer(m.Requester)}
			}
			r.mu.Unlock()
			r.o.log.Debug("dial-me: answerer not reached", "peer", m.Requester, "err", err)
			return
		}
		r.mu.Lock()
		if q, ok := r.answeredLocked(m); ok {
			r.linkAnswerLocked(m, q)
		}
		r.mu.Unlock()
		r.kick()
	})
}

// dialAnswerer dials the node that answered with m.
func (r *ringManager) dialAnswerer(ctx context.Context, m *routing.ConnectToMe, withQUIC bool) error {
	h := r.o.host
	if h.Network().Connectedness(m.Requester) == network.Connected {
		return nil
	}
	info := peer.AddrInfo{ID: m.Requester, Addrs: r.dialAddrs(m.Endpoints, withQUIC)}
	if len(info.Addrs) == 0 {
		return errors.New("no endpoint to dial")
	}
	if sw, ok := h.Network().(*swarm.Swarm); ok {
		// The answerer has just opened its NAT to this node: an earlier
		// failure is no reason to wait.
		sw.Backoff().Clear(m.Requester)
	}
	// Only the endpoints the answerer signed: a QUIC dial to an address
	// of its NAT it did not open (one the DHT passed on) would spoil the
	// port there for the dial that can work.
	h.Peerstore().ClearAddrs(m.Requester)
	r.o.log.Debug("dialling the answerer", "peer", m.Requester, "addrs", info.Addrs)
	ctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	return h.Connect(ctx, info)
}

// dialAddrs are the addresses endpoints are dialled at: TCP, and with
// withQUIC, QUIC too.
//
// Two near neighbours behind NATs link like this. Each names its NAT's
// public address among its endpoints. The answerer's TCP dial to the
// requester fails, but first it opens its own NAT from its QUIC port to
// the requester (openNAT). The requester, told to dial back (a
// dial-me), dials the answerer over QUIC, from its own QUIC port: its
// NAT lets the datagrams out, and the answerer's NAT takes them as
// answers to the opener.
func (r *ringManager) dialAddrs(eps []netip.AddrPort, withQUIC bool) []ma.Multiaddr {
	var out []ma.Multiaddr
	for _, ep := range eps {
		if !ep.Addr().Is4() || ep.Addr().IsUnspecified() {
			continue
		}
		if a, err := ma.NewMultiaddr(fmt.Sprintf("/ip4/%s/tcp/%d", ep.Addr(), ep.Port())); err == nil {
			out = append(out, a)
		}
		if !withQUIC {
			continue
		}
		if a, err := ma.NewMultiaddr(fmt.Sprintf("/ip4/%s/udp/%d/quic-v1", ep.Addr(), ep.Port())); err == nil {
			out = append(out, a)
		}
	}
	return out
}

// openNAT opens this node's NAT, if it is behind one that keeps ports,
// from its QUIC ports to endpoints (see dialAddrs).
func (r *ringManager) openNAT(eps []netip.AddrPort) {
	if _, natted := r.o.portPreservingNAT(); !natted {
		return
	}
	ch, ok := r.o.host.(*controlHost)
	if !ok {
		return
	}
	for _, port := range r.o.controlPorts() {
		n := ch.quicSockets.openNAT(port, eps, punchTTL)
		r.counters.natOpeners.Add(uint64(n))
		r.o.log.Debug("opened the NAT", "port", port, "to", eps, "sent", n)
	}
}

// portPreservingNAT reports whether the node is behind a NAT that maps
// the data socket to one public address for every destination and keeps
// its port, and that public address.
func (o *Overlay) portPreservingNAT() (netip.Addr, bool) {
	nat := o.NAT()
	ok := nat.Mapping == MappingIndependent && nat.Public.Port() == o.DataAddr().Port() && nat.Public.Addr().Is4()
	return nat.Public.Addr(), ok
}

// controlPorts are the ports the control host listens on for QUIC.
func (o *Overlay) controlPorts() []uint16 {
	var ports []uint16
	for _, a := range o.host.Addrs() {
		if _, err := a.ValueForProtocol(ma.P_QUIC_V1); err != nil {
			continue
		}
		if port, ok := portOf(a, ma.P_UDP); ok && !slices.Contains(ports, port) {
			ports = append(ports, port)
		}
	}
	return ports
}

// portOf is a's port for the protocol proto (ma.P_TCP or ma.P_UDP).
func portOf(a ma.Multiaddr, proto int) (uint16, bool) {
	s, err := a.ValueForProtocol(proto)
	if err != nil {
		return 0, false
	}
	port, err := strconv.ParseUint(s, 10, 16)
	return uint16(port), err == nil
}
