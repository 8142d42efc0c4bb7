package routing

import (
	"crypto/sha256"
	"fmt"

	"github.com/libp2p/go-libp2p/core/peer"
)

// testID returns a valid peer ID (a SHA-256 multihash) for test node i.
func testID(i int) peer.ID {
	sum := sha256.Sum256(fmt.Appendf(nil, "node %d", i))
	return peer.ID(append([]byte{0x12, 0x20}, sum[:]...))
}

// at returns the address whose top byte is b: hand-built rings place
// their nodes with it.
func at(b byte) Addr { return Addr{hi: uint64(b) << 56} }

// ring is a hand-built ring: tables at chosen addresses (which no real
// peer ID hashes to), each linked to its NearPerSide neighbours on each
// side, with every link's neighbour list filled in.
type ring struct {
	tables map[peer.ID]*Table
	order  []*Table
}

func newRing(addrs ...Addr) *ring {
	r := &ring{tables: map[peer.ID]*Table{}}
	for i, a := range addrs {
		t := &Table{self: Neighbour{Peer: peer.ID(fmt.Sprintf("n%d", i)), Addr: a}}
		r.tables[t.self.Peer] = t
		r.order = append(r.order, t) // addrs are given in ring order
	}
	n := len(r.order)
	for i, t := range r.order {
		for k := 1; k <= NearPerSide && k < n; k++ {
			r.link(t, r.order[(i+k)%n], Near)
		}
	}
	r.refresh()
	return r
}

// link adds a link between a and b, which a keeps for kinds.
func (r *ring) link(a, b *Table, kinds Kind) {
	if a.Link(b.self.Peer) == nil {
		a.links = append(a.links, &Link{Peer: b.self.Peer, Addr: b.self.Addr})
		b.links = append(b.links, &Link{Peer: a.self.Peer, Addr: a.self.Addr})
	}
	a.Link(b.self.Peer).Kinds |= kinds
	b.Link(a.self.Peer).PeerKinds |= kinds
	a.changed()
	b.changed()
}

// refresh gives every link its peer's current neighbour list.
func (r *ring) refresh() {
	for _, t := range r.order {
		for _, l := range t.links {
			l.Neighbours = r.tables[l.Peer].Advertise()
		}
	}
}

// route carries a packet for dst from src and returns the nodes it was
// delivered to and the path, failing on a loop.
func (r *ring) route(src *Table, dst Addr) (got []*Table, nearest *Table, path []*Table, err error) {
	cur, from := src, peer.ID("")
	seen := map[*Table]bool{}
	for {
		if seen[cur] {
			return got, nearest, path, fmt.Errorf("loop at %s", cur.self.Addr)
		}
		seen[cur] = true
		path = append(path, cur)
		h := cur.NextHop(dst, from)
		if h.Deliver {
			got = append(got, cur)
			if h.Nearest {
				if nearest != nil {
					return got, nearest, path, fmt.Errorf("two nearest: %s and %s", nearest.self.Addr, cur.self.Addr)
				}
				nearest = cur
			}
		}
		if h.Next == nil {
			return got, nearest, path, nil
		}
		if h.Next.Peer == from {
			return got, nearest, path, fmt.Errorf("%s sent back to %s", cur.self.Addr, from)
		}
		from, cur = cur.self.Peer, r.tables[h.Next.Peer]
	}
}

// byAddr returns the table of the node at a.
func (r *ring) byAddr(a Addr) *Table {
	for _, t := range r.order {
		if t.self.Addr == a {
			return t
		}
	}
	panic("no node at " + a.String())
}
