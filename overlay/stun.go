package overlay

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/pion/stun/v3"
)

// STUN on the data socket (RFC 8489, with github.com/pion/stun/v3), so
// that the overlay needs no outside STUN server: every node answers
// binding requests on its data socket, but only requests that carry
// short-term credentials it handed out over a ring link's control
// connection (USERNAME and MESSAGE-INTEGRITY), so it cannot be used to
// reflect traffic at others. Each node asks two of its linked peers with
// different addresses how they see its data socket: that is its public
// mapping, the candidate for hole punching, and whether the mapping is
// the same for both tells whether its NAT keeps one mapping for every
// destination (punching works) or makes one per destination (it does
// not; relaying does).
const (
	stunRefresh = 30 * time.Second
	stunTimeout = 2 * time.Second
	// maxSTUNCreds bounds the credentials a node hands out.
	maxSTUNCreds = 256
	// stunCookieIndex is a receiver index no session may take: a
	// datagram with it where STUN keeps its magic cookie would look like
	// STUN.
	stunCookieIndex = 0x2112A442
)

// Mapping is what a node knows of the NAT in front of its data socket.
type Mapping string

const (
	MappingUnknown     Mapping = "unknown"
	MappingNone        Mapping = "none"                 // no NAT: the socket's own address
	MappingIndependent Mapping = "endpoint-independent" // one public mapping for every destination
	MappingDependent   Mapping = "address-dependent"    // a new mapping per destination
)

// stunCredLen is the length of a username and of a password, in bytes
// before hex encoding.
const stunCredLen = 16

type stunCred struct {
	user, pass string
}

type stunPending struct {
	server netip.AddrPort
	pass   string
	sent   time.Time
}

// stunState is the overlay's STUN server and client.
type stunState struct {
	mu      sync.Mutex
	issued  map[string]issuedCred // by username: credentials this node handed out
	creds   map[peer.ID]stunCred  // credentials peers handed this node
	pending map[[12]byte]stunPending
	mapped  map[netip.Addr]seenAs // by server IP: how it saw us
	last    time.Time

	answered, refused, responses, badResponses atomic.Uint64
}

type seenAs struct {
	addr netip.AddrPort
	at   time.Time
}

type issuedCred struct {
	peer peer.ID
	pass string
}

func (s *stunState) init() {
	s.issued = make(map[string]issuedCred)
	s.creds = make(map[peer.ID]stunCred)
	s.pending = make(map[[12]byte]stunPending)
	s.mapped = make(map[netip.Addr]seenAs)
}

// isSTUN reports whether a datagram on the data socket is STUN.
func isSTUN(b []byte) bool { return stun.IsMessage(b) }

// issueSTUN makes credentials for peer id to use with this node's STUN
// server, replacing any it had, and returns the control message body.
func (o *Overlay) issueSTUN(id peer.ID) []byte {
	var b [2 * stunCredLen]byte
	rand.Read(b[:])
	user, pass := hex.EncodeToString(b[:stunCredLen]), hex.EncodeToString(b[stunCredLen:])
	s := &o.stun
	s.mu.Lock()
	defer s.mu.Unlock()
	for u, c := range s.issued {
		if c.peer == id {
			delete(s.issued, u)
		}
	}
	if len(s.issued) >= maxSTUNCreds {
		for u := range s.issued { // drop one at random
			delete(s.issued, u)
			break
		}
	}
	s.issued[user] = issuedCred{peer: id, pass: pass}
	return b[:]
}

// takeSTUN records the credentials a peer handed this node.
func (o *Overlay) takeSTUN(id peer.ID, body []byte) error {
	if len(body) != 2*stunCredLen {
		return errors.New("STUN credentials of the wrong length")
	}
	s := &o.stun
	s.mu.Lock()
	defer s.mu.Unlock()
	s.creds[id] = stunCred{user: hex.EncodeToString(body[:stunCredLen]), pass: hex.EncodeToString(body[stunCredLen:])}
	return nil
}

// forgetSTUN drops what was exchanged with a peer whose link is gone.
func (o *Overlay) forgetSTUN(id peer.ID) {
	s := &o.stun
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.creds, id)
	for u, c := range s.issued {
		if c.peer == id {
			delete(s.issued, u)
		}
	}
}

// handleSTUN answers a binding request or takes a binding response.
func (o *Overlay) handleSTUN(b []byte, from netip.AddrPort) {
	s := &o.stun
	m := &stun.Message{Raw: append([]byte(nil), b...)}
	if err := m.Decode(); err != nil {
		s.refused.Add(1)
		return
	}
	switch m.Type {
	case stun.BindingRequest:
		var user stun.Username
		if err := user.GetFrom(m); err != nil {
			s.refused.Add(1)
			return
		}
		s.mu.Lock()
		c, ok := s.issued[user.String()]
		s.mu.Unlock()
		if !ok || stun.NewShortTermIntegrity(c.pass).Check(m) != nil || stun.Fingerprint.Check(m) != nil {
			s.refused.Add(1)
			return
		}
		resp, err := stun.Build(stun.NewTransactionIDSetter(m.TransactionID), stun.BindingSuccess,
			&stun.XORMappedAddress{IP: from.Addr().AsSlice(), Port: int(from.Port())},
			stun.NewShortTermIntegrity(c.pass), stun.Fingerprint)
		if err != nil {
			return
		}
		if _, err := o.udp.WriteToUDPAddrPort(resp.Raw, from); err == nil {
			s.answered.Add(1)
		}
	case stun.BindingSuccess:
		s.mu.Lock()
		p, ok := s.pending[m.TransactionID]
		delete(s.pending, m.TransactionID)
		s.mu.Unlock()
		var xor stun.XORMappedAddress
		if !ok || p.server != from || stun.NewShortTermIntegrity(p.pass).Check(m) != nil || xor.GetFrom(m) != nil {
			s.badResponses.Add(1)
			return
		}
		addr, ok := netip.AddrFromSlice(xor.IP)
		if !ok {
			s.badResponses.Add(1)
			return
		}
		s.responses.Add(1)
		seen := netip.AddrPortFrom(addr.Unmap(), uint16(xor.Port))
		s.mu.Lock()
		if old, ok := s.mapped[from.Addr()]; !ok || old.addr != seen {
			o.reach.changed.Store(true)
		}
		s.mapped[from.Addr()] = seenAs{seen, time.Now()}
		s.mu.Unlock()
	default:
		s.refused.Add(1)
	}
}

// stunRound asks up to two linked peers, at different addresses, how they
// see this node's data socket, when that is due.
func (o *Overlay) stunRound(now time.Time, links []peer.ID) {
	s := &o.stun
	s.mu.Lock()
	for id, p := range s.pending {
		if now.Sub(p.sent) > stunTimeout {
			delete(s.pending, id)
		}
	}
	due := now.Sub(s.last) >= stunRefresh || (len(s.mapped) < 2 && now.Sub(s.last) >= stunTimeout)
	type ask struct {
		server netip.AddrPort
		cred   stunCred
	}
	var asks []ask
	if due {
		seen := make(map[netip.Addr]bool)
		for _, id := range links {
			c, ok := s.creds[id]
			if !ok {
				continue
			}
			o.mu.RLock()
			p := o.peers[id]
			o.mu.RUnlock()
			if p == nil {
				continue
			}
			ep := p.endpoint.Load()
			if ep == nil || seen[ep.Addr()] {
				continue
			}
			seen[ep.Addr()] = true
			asks = append(asks, ask{*ep, c})
			if len(asks) == 2 {
				break
			}
		}
		if len(asks) > 0 {
			s.last = now
		}
		for ip, m := range s.mapped {
			if now.Sub(m.at) > 2*stunRefresh+stunTimeout {
				delete(s.mapped, ip) // a server no longer asked, or a NAT that changed
				o.reach.changed.Store(true)
			}
		}
	}
	s.mu.Unlock()
	for _, a := range asks {
		req, err := stun.Build(stun.TransactionID, stun.BindingRequest, stun.NewUsername(a.cred.user),
			stun.NewShortTermIntegrity(a.cred.pass), stun.Fingerprint)
		if err != nil {
			continue
		}
		s.mu.Lock()
		s.pending[req.TransactionID] = stunPending{server: a.server, pass: a.cred.pass, sent: now}
		s.mu.Unlock()
		o.udp.WriteToUDPAddrPort(req.Raw, a.server)
	}
	o.updateReach(now)
}

// NATStatus is what the node learned with STUN.
type NATStatus struct {
	// Public is the data socket's address as peers see it.
	Public  netip.AddrPort
	Mapping Mapping
	// Answered and Refused count binding requests this node served and
	// refused (no or wrong credentials); Responses and BadResponses the
	// answers it got.
	Answered, Refused, Responses, BadResponses uint64
}

// NAT reports what the node learned of the NAT in front of it.
func (o *Overlay) NAT() NATStatus {
	s := &o.stun
	st := NATStatus{
		Mapping:      MappingUnknown,
		Answered:     s.answered.Load(),
		Refused:      s.refused.Load(),
		Responses:    s.responses.Load(),
		BadResponses: s.badResponses.Load(),
	}
	s.mu.Lock()
	var seen []netip.AddrPort
	for _, m := range s.mapped {
		seen = append(seen, m.addr)
	}
	s.mu.Unlock()
	if len(seen) == 0 {
		return st
	}
	st.Public = seen[0]
	switch {
	case o.isLocal(seen[0]):
		st.Mapping = MappingNone
	case len(seen) < 2:
	case slices.ContainsFunc(seen, func(m netip.AddrPort) bool { return m != seen[0] }):
		st.Mapping = MappingDependent
	default:
		st.Mapping = MappingIndependent
	}
	return st
}

// isLocal reports whether ap is the data socket's own address on one of
// the host's interfaces.
func (o *Overlay) isLocal(ap netip.AddrPort) bool {
	if ap.Port() != o.DataAddr().Port() {
		return false
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.Unmap() == ap.Addr() {
				return true
			}
		}
	}
	return false
}
