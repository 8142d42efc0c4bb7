package routing

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// The ring's messages, as the overlay sends them. Each starts with a
// version byte; every list has a bound; every ring address a message
// claims for a peer must be the hash of that peer's ID, so a node cannot
// place itself, or a peer it advertises, anywhere it likes. Integers are
// big-endian; a peer ID is a length byte and its bytes.
//
//	ConnectToMe   version kind ttl id addr(20) target(20) n (ip-len ip port(2))×n relay
//	              sig-len sig
//	              (relay: 0, or id addr(20); sig: the requester's signature)
//	NeighbourList version kinds seq(8) id addr(20) n (id addr(20))×n
//	Header        version ttl src(20) dst(20)
const (
	// Version is the wire version of every ring message.
	Version = 1
	// MaxNeighbours bounds a NeighbourList.
	MaxNeighbours = 32
	// MaxEndpoints bounds the addresses in a ConnectToMe.
	MaxEndpoints = 8
	// maxPeerIDLen bounds an encoded peer ID: an identity multihash of an
	// Ed25519 key is 38 bytes, a SHA-256 one 34.
	maxPeerIDLen = 64
	// HeaderLen is the length of a data packet's overlay header.
	HeaderLen = 2 + 2*AddrLen
)

// Errors that Unmarshal wraps: a caller drops the message and counts it
// by cause (see Drops).
var (
	ErrMalformed = errors.New("malformed")
	ErrVersion   = errors.New("unknown version")
	ErrTTL       = errors.New("TTL zero")
	ErrTooMany   = errors.New("list too long")
	ErrAddr      = errors.New("ring address does not match peer ID")
	ErrSignature = errors.New("bad signature")
)

// connectContext prefixes what a connect-to-me signature covers, so that
// no other message signed with a node's identity key can pass for one.
const connectContext = "ringnet connect-to-me v1\x00"

// maxSigLen bounds a signature: Ed25519's is 64 bytes, ECDSA's at most 72.
const maxSigLen = 128

// ConnectToMe asks the node(s) nearest Target to link to Requester: routed
// over the ring, it is how a node joins (Target is its own address, Kind
// Near), draws a far link, or asks for a shortcut.
type ConnectToMe struct {
	Kind      Kind // Near, Far or Shortcut
	TTL       uint8
	Requester peer.ID
	Addr      Addr // Requester's ring address
	Target    Addr
	Endpoints []netip.AddrPort // where Requester can be dialled
	// Relay, if set, is a node that has a link to Requester: one that
	// cannot dial Requester (a NAT in the way) sends it a dial-me through
	// Relay. A joining node names its bootstrap node.
	Relay Neighbour
	// Sig is Requester's signature over the rest of the message (Sign):
	// without it any node could have others dial, or punch towards,
	// addresses of its choosing in another node's name.
	Sig []byte
}

// NeighbourList is what a node tells each of its links: why it keeps the
// link, and its ring links for the peer's neighbour-of-neighbour routing
// and near-link repair.
type NeighbourList struct {
	// Kinds are what Sender keeps the link to the receiver for.
	Kinds Kind
	// Seq grows with every list Sender sends; a receiver ignores a list
	// older than one it has (lists may overtake each other).
	Seq        uint64
	Sender     peer.ID
	Addr       Addr // Sender's ring address
	Neighbours []Neighbour
}

// Header precedes a data packet routed over the ring.
type Header struct {
	TTL      uint8
	Src, Dst Addr
}

// reader reads a message, remembering the first error.
type reader struct {
	b   []byte
	err error
}

func (r *reader) fail(err error) {
	if r.err == nil {
		r.err = err
	}
}

func (r *reader) bytes(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n > len(r.b) {
		r.fail(fmt.Errorf("%w: truncated", ErrMalformed))
		return nil
	}
	b := r.b[:n:n]
	r.b = r.b[n:]
	return b
}

func (r *reader) byte() byte {
	if b := r.bytes(1); b != nil {
		return b[0]
	}
	return 0
}

func (r *reader) addr() Addr {
	if b := r.bytes(AddrLen); b != nil {
		return AddrFromBytes(b)
	}
	return Addr{}
}

func (r *reader) version() {
	if v := r.byte(); r.err == nil && v != Version {
		r.fail(fmt.Errorf("%w %d", ErrVersion, v))
	}
}

func (r *reader) ttl() uint8 {
	ttl := r.byte()
	if r.err == nil && ttl == 0 {
		r.fail(ErrTTL)
	}
	return ttl
}

// peer reads a peer ID and the ring address claimed for it, and checks
// one against the other.
func (r *reader) peer() (peer.ID, Addr) {
	n := int(r.byte())
	if r.err == nil && (n == 0 || n > maxPeerIDLen) {
		r.fail(fmt.Errorf("%w: peer ID of %d bytes", ErrMalformed, n))
	}
	b := r.bytes(n)
	a := r.addr()
	if r.err != nil {
		return "", Addr{}
	}
	id, err := peer.IDFromBytes(b)
	if err != nil {
		r.fail(fmt.Errorf("%w: peer ID: %v", ErrMalformed, err))
		return "", Addr{}
	}
	if AddrFromPeer(id) != a {
		r.fail(fmt.Errorf("%w: %s claims %s", ErrAddr, id, a))
	}
	return id, a
}

func (r *reader) count(max int) int {
	n := int(r.byte())
	if r.err == nil && n > max {
		r.fail(fmt.Errorf("%w: %d > %d", ErrTooMany, n, max))
	}
	return n
}

func (r *reader) end() error {
	if r.err == nil && len(r.b) != 0 {
		r.fail(fmt.Errorf("%w: %d trailing bytes", ErrMalformed, len(r.b)))
	}
	return r.err
}

func appendPeer(b []byte, id peer.ID, a Addr) []byte {
	b = append(b, byte(len(id)))
	b = append(b, id...)
	return a.AppendBytes(b)
}

// checkPeer is the marshalling side of reader.peer: a message that would
// not parse is not sent.
func checkPeer(id peer.ID, a Addr) error {
	if len(id) == 0 || len(id) > maxPeerIDLen {
		return fmt.Errorf("%w: peer ID of %d bytes", ErrMalformed, len(id))
	}
	if AddrFromPeer(id) != a {
		return fmt.Errorf("%w: %s claims %s", ErrAddr, id, a)
	}
	return nil
}

// MarshalBinary encodes the request, which must be signed.
func (m *ConnectToMe) MarshalBinary() ([]byte, error) {
	b, err := m.appendUnsigned(nil)
	if err != nil {
		return nil, err
	}
	if len(m.Sig) == 0 || len(m.Sig) > maxSigLen {
		return nil, fmt.Errorf("connect-to-me: %w: %d bytes", ErrSignature, len(m.Sig))
	}
	b = append(b, byte(len(m.Sig)))
	return append(b, m.Sig...), nil
}

// Sign signs the request with the requester's identity key.
func (m *ConnectToMe) Sign(key crypto.PrivKey) error {
	if id, err := peer.IDFromPrivateKey(key); err != nil || id != m.Requester {
		return fmt.Errorf("connect-to-me: %w: the key is not %s's", ErrSignature, m.Requester)
	}
	b, err := m.appendUnsigned([]byte(connectContext))
	if err != nil {
		return err
	}
	sig, err := key.Sign(b)
	if err != nil {
		return fmt.Errorf("connect-to-me: sign: %w", err)
	}
	m.Sig = sig
	return nil
}

// verify checks Sig against the public key Requester's ID embeds.
func (m *ConnectToMe) verify() error {
	pub, err := m.Requester.ExtractPublicKey()
	if err != nil {
		return fmt.Errorf("%w: no public key in %s: %v", ErrSignature, m.Requester, err)
	}
	b, err := m.appendUnsigned([]byte(connectContext))
	if err != nil {
		return err
	}
	if ok, err := pub.Verify(b, m.Sig); err != nil || !ok {
		return fmt.Errorf("%w from %s", ErrSignature, m.Requester)
	}
	return nil
}

// appendUnsigned appends the request without its signature to b.
func (m *ConnectToMe) appendUnsigned(b []byte) ([]byte, error) {
	switch {
	case m.Kind != Near && m.Kind != Far && m.Kind != Shortcut:
		return nil, fmt.Errorf("connect-to-me: %w: kind %v", ErrMalformed, m.Kind)
	case m.TTL == 0:
		return nil, fmt.Errorf("connect-to-me: %w", ErrTTL)
	case len(m.Endpoints) > MaxEndpoints:
		return nil, fmt.Errorf("connect-to-me: %w: %d endpoints", ErrTooMany, len(m.Endpoints))
	}
	if err := checkPeer(m.Requester, m.Addr); err != nil {
		return nil, fmt.Errorf("connect-to-me: %w", err)
	}
	b = append(b, Version, byte(m.Kind), m.TTL)
	b = appendPeer(b, m.Requester, m.Addr)
	b = m.Target.AppendBytes(b)
	b = append(b, byte(len(m.Endpoints)))
	for _, ep := range m.Endpoints {
		ip := ep.Addr()
		if !ip.IsValid() || ip.Zone() != "" {
			return nil, fmt.Errorf("connect-to-me: %w: endpoint %v", ErrMalformed, ep)
		}
		if ip.Is4() {
			b = append(b, 4)
		} else {
			b = append(b, 16)
		}
		b = append(b, ip.AsSlice()...)
		b = append(b, byte(ep.Port()>>8), byte(ep.Port()))
	}
	if m.Relay.Peer == "" {
		return append(b, 0), nil
	}
	if err := checkPeer(m.Relay.Peer, m.Relay.Addr); err != nil {
		return nil, fmt.Errorf("connect-to-me relay: %w", err)
	}
	return appendPeer(b, m.Relay.Peer, m.Relay.Addr), nil
}

// UnmarshalBinary decodes and validates a request, its signature included.
func (m *ConnectToMe) UnmarshalBinary(b []byte) error {
	r := reader{b: b}
	r.version()
	kind := Kind(r.byte())
	if r.err == nil && kind != Near && kind != Far && kind != Shortcut {
		r.fail(fmt.Errorf("%w: kind %v", ErrMalformed, kind))
	}
	ttl := r.ttl()
	id, a := r.peer()
	target := r.addr()
	eps := make([]netip.AddrPort, r.count(MaxEndpoints))
	for i := range eps {
		n := int(r.byte())
		if r.err == nil && n != 4 && n != 16 {
			r.fail(fmt.Errorf("%w: IP of %d bytes", ErrMalformed, n))
		}
		ip, _ := netip.AddrFromSlice(r.bytes(n))
		port := r.bytes(2)
		if r.err != nil {
			break
		}
		eps[i] = netip.AddrPortFrom(ip, uint16(port[0])<<8|uint16(port[1]))
	}
	var relay Neighbour
	if r.err == nil && len(r.b) > 0 && r.b[0] == 0 {
		r.byte()
	} else {
		relay.Peer, relay.Addr = r.peer()
	}
	n := int(r.byte())
	if r.err == nil && (n == 0 || n > maxSigLen) {
		r.fail(fmt.Errorf("%w: signature of %d bytes", ErrMalformed, n))
	}
	sig := r.bytes(n)
	if err := r.end(); err != nil {
		return fmt.Errorf("connect-to-me: %w", err)
	}
	got := ConnectToMe{Kind: kind, TTL: ttl, Requester: id, Addr: a, Target: target, Endpoints: eps, Relay: relay, Sig: bytes.Clone(sig)}
	if err := got.verify(); err != nil {
		return fmt.Errorf("connect-to-me: %w", err)
	}
	*m = got
	return nil
}

// MarshalBinary encodes the list.
func (m *NeighbourList) MarshalBinary() ([]byte, error) {
	if len(m.Neighbours) > MaxNeighbours {
		return nil, fmt.Errorf("neighbour list: %w: %d", ErrTooMany, len(m.Neighbours))
	}
	if err := checkPeer(m.Sender, m.Addr); err != nil {
		return nil, fmt.Errorf("neighbour list: %w", err)
	}
	if m.Kinds&^(Leaf|Ring) != 0 {
		return nil, fmt.Errorf("neighbour list: %w: kinds %v", ErrMalformed, m.Kinds)
	}
	b := []byte{Version, byte(m.Kinds)}
	b = binary.BigEndian.AppendUint64(b, m.Seq)
	b = appendPeer(b, m.Sender, m.Addr)
	b = append(b, byte(len(m.Neighbours)))
	for _, n := range m.Neighbours {
		if err := checkPeer(n.Peer, n.Addr); err != nil {
			return nil, fmt.Errorf("neighbour list: %w", err)
		}
		b = appendPeer(b, n.Peer, n.Addr)
	}
	return b, nil
}

// UnmarshalBinary decodes and validates a list.
func (m *NeighbourList) UnmarshalBinary(b []byte) error {
	r := reader{b: b}
	r.version()
	kinds := Kind(r.byte())
	if r.err == nil && kinds&^(Leaf|Ring) != 0 {
		r.fail(fmt.Errorf("%w: kinds %#x", ErrMalformed, uint8(kinds)))
	}
	var seq uint64
	if s := r.bytes(8); s != nil {
		seq = binary.BigEndian.Uint64(s)
	}
	id, a := r.peer()
	list := make([]Neighbour, r.count(MaxNeighbours))
	for i := range list {
		if r.err != nil {
			break
		}
		list[i].Peer, list[i].Addr = r.peer()
	}
	if err := r.end(); err != nil {
		return fmt.Errorf("neighbour list: %w", err)
	}
	*m = NeighbourList{Kinds: kinds, Seq: seq, Sender: id, Addr: a, Neighbours: list}
	return nil
}

// AppendBinary appends the header to b.
func (h *Header) AppendBinary(b []byte) ([]byte, error) {
	if h.TTL == 0 {
		return nil, fmt.Errorf("header: %w", ErrTTL)
	}
	b = append(b, Version, h.TTL)
	b = h.Src.AppendBytes(b)
	return h.Dst.AppendBytes(b), nil
}

// MarshalBinary encodes the header.
func (h *Header) MarshalBinary() ([]byte, error) {
	return h.AppendBinary(make([]byte, 0, HeaderLen))
}

// UnmarshalBinary decodes and validates a header; b must be exactly
// HeaderLen bytes (the packet follows it).
func (h *Header) UnmarshalBinary(b []byte) error {
	r := reader{b: b}
	r.version()
	ttl := r.ttl()
	src, dst := r.addr(), r.addr()
	if err := r.end(); err != nil {
		return fmt.Errorf("header: %w", err)
	}
	*h = Header{TTL: ttl, Src: src, Dst: dst}
	return nil
}
