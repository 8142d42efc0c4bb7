package routing

import (
	"errors"
	"fmt"
	"slices"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Kind says why a node keeps a link. A link can be kept for several
// reasons at once, so kinds are bits.
type Kind uint8

const (
	// Leaf is a link to a bootstrap node, or from a node that is still
	// joining. It carries the join's messages but no routed traffic.
	Leaf Kind = 1 << iota
	// Near links go to the NearPerSide closest nodes on each side; they
	// make the ring a ring and make greedy routing always succeed.
	Near
	// Far links go to nodes drawn from the harmonic distribution; they
	// make routes short.
	Far
	// Shortcut links go to nodes this node sends much traffic to.
	Shortcut
)

// Ring is every kind that routes traffic.
const Ring = Near | Far | Shortcut

func (k Kind) String() string {
	if k == 0 {
		return "none"
	}
	var s string
	for _, n := range []struct {
		k    Kind
		name string
	}{{Leaf, "leaf"}, {Near, "near"}, {Far, "far"}, {Shortcut, "shortcut"}} {
		if k&n.k != 0 {
			if s != "" {
				s += "+"
			}
			s += n.name
		}
	}
	if rest := k &^ (Leaf | Ring); rest != 0 {
		s += fmt.Sprintf("+%#x", uint8(rest))
	}
	return s
}

// Targets of the link policy.
const (
	// NearPerSide is how many near neighbours a node keeps on each side.
	NearPerSide = 2
	// MaxLinks caps a node's links of all kinds, made by it or by its
	// peers. Near links always fit (a ring needs them); far links the node
	// made go first when it is over, then far links its peers made.
	MaxLinks = 24
)

// Neighbour is a peer and its ring address, as nodes advertise them.
type Neighbour struct {
	Peer peer.ID
	Addr Addr
}

// Link is one of the node's links to a peer.
type Link struct {
	Peer peer.ID
	Addr Addr
	// Kinds are what this node keeps the link for; PeerKinds are what the
	// peer keeps it for, as it last told us. The link closes when both are
	// empty.
	Kinds, PeerKinds Kind
	// FarN is the estimate of the ring's size a far link was drawn for;
	// the link is redrawn when the estimate moves far from it.
	FarN float64
	// Neighbours is the peer's own link list, as it last advertised it:
	// the second hop of neighbour-of-neighbour routing. Read-only; it may
	// be shared with other tables.
	Neighbours []Neighbour
	// Unreachable says the node has not heard from the peer lately (its
	// pings went unanswered): routes avoid the link until it answers or
	// is dropped, so that packets do not vanish into a dead node.
	Unreachable bool
}

// Routes reports whether greedy routing may use the link: leaf links
// belong to nodes not yet in the ring.
func (l *Link) Routes() bool { return (l.Kinds|l.PeerKinds)&Ring != 0 }

// Table is a node's routing table: its links and the policy that decides
// which links it wants. It is pure state, with no I/O and no locking; its
// owner serialises access.
type Table struct {
	self  Neighbour
	links []*Link
	// derived caches what is computed from the links; the simulator asks
	// for it far more often than the links change.
	derived *derived
}

type derived struct {
	adv     []Neighbour // Advertise
	cw, ccw []Neighbour // Near
	est     float64     // EstimateN
}

// changed drops what was derived from the links.
func (t *Table) changed() { t.derived = nil }

func (t *Table) derive() *derived {
	if t.derived != nil {
		return t.derived
	}
	d := &derived{adv: make([]Neighbour, 0, len(t.links))}
	for _, l := range t.links {
		if l.Routes() && len(d.adv) < MaxNeighbours {
			d.adv = append(d.adv, Neighbour{Peer: l.Peer, Addr: l.Addr})
		}
	}
	ring := t.ringLinks()
	d.cw, d.ccw = t.nearest(ring, true, NearPerSide), t.nearest(ring, false, NearPerSide)
	d.est = t.estimate(d.cw, d.ccw, len(ring))
	t.derived = d
	return d
}

// ErrSelf is returned when a node is asked to link to itself.
var ErrSelf = errors.New("routing: link to self")

// NewTable returns an empty table for the node with the given peer ID.
func NewTable(self peer.ID) *Table {
	return &Table{self: Neighbour{Peer: self, Addr: AddrFromPeer(self)}}
}

// Self returns this node's peer ID and ring address.
func (t *Table) Self() Neighbour { return t.self }

// Len returns the number of links.
func (t *Table) Len() int { return len(t.links) }

// Links returns the links. The slice is the table's own: do not keep it
// across changes to the table.
func (t *Table) Links() []*Link { return t.links }

// Link returns the link to p, or nil.
func (t *Table) Link(p peer.ID) *Link {
	for _, l := range t.links {
		if l.Peer == p {
			return l
		}
	}
	return nil
}

// Add records that this node keeps a link to p for kinds (which may be
// zero when only the peer wants the link) and returns the link. Adding to
// an existing link adds the kinds. neighbours is the peer's advertised
// link list, if the linking handshake carried one.
func (t *Table) Add(p peer.ID, kinds Kind, neighbours []Neighbour) (*Link, error) {
	if p == t.self.Peer {
		return nil, ErrSelf
	}
	l := t.Link(p)
	if l == nil {
		l = &Link{Peer: p, Addr: AddrFromPeer(p)}
		t.links = append(t.links, l)
		t.changed()
	}
	if l.Kinds|kinds != l.Kinds {
		l.Kinds |= kinds
		t.changed()
	}
	if neighbours != nil {
		l.Neighbours = neighbours
	}
	return l, nil
}

// Remove drops the link to p, as when it fails or closes, and reports
// whether there was one.
func (t *Table) Remove(p peer.ID) bool {
	i := slices.IndexFunc(t.links, func(l *Link) bool { return l.Peer == p })
	if i < 0 {
		return false
	}
	t.links = slices.Delete(t.links, i, i+1)
	t.changed()
	return true
}

// Clear records that this node no longer keeps the link to p for kinds
// (a shortcut gone idle); Tidy closes the link if nothing else keeps it.
func (t *Table) Clear(p peer.ID, kinds Kind) {
	if l := t.Link(p); l != nil && l.Kinds&kinds != 0 {
		l.Kinds &^= kinds
		t.changed()
	}
}

// SetNeighbours records the link list p advertised.
func (t *Table) SetNeighbours(p peer.ID, list []Neighbour) {
	if l := t.Link(p); l != nil {
		l.Neighbours = list
	}
}

// SetPeerKinds records what p keeps its link to this node for. When
// neither side wants the link any more, the table drops it and reports
// true: the caller closes the connection.
func (t *Table) SetPeerKinds(p peer.ID, kinds Kind) (closed bool) {
	l := t.Link(p)
	if l == nil {
		return false
	}
	if l.PeerKinds != kinds {
		l.PeerKinds = kinds
		t.changed()
	}
	if l.Kinds == 0 && kinds == 0 {
		t.Remove(p)
		return true
	}
	return false
}

// Advertise returns this node's ring links, for its neighbours'
// neighbour-of-neighbour routing and near-link repair (at most
// MaxNeighbours of them). The slice is shared and must not be modified; a
// new one is built after the links change.
func (t *Table) Advertise() []Neighbour { return t.derive().adv }
