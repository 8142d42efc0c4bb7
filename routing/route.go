package routing

import "github.com/libp2p/go-libp2p/core/peer"

// Hop is the routing decision for one packet at one node.
type Hop struct {
	// Next is the link to send the packet on, or nil.
	Next *Link
	// Deliver says the packet is for this node: it is the destination, or
	// the destination is absent and this node is one of the two around it.
	Deliver bool
	// Nearest says this node is the nearest to the destination it knows
	// of. Of the two nodes around an absent address, only the nearer one
	// says so; a far-link request is answered by that one alone.
	Nearest bool
}

// closer reports whether address a, at distance da from the destination,
// beats b at distance db. Distances tie only for the two addresses the
// same way either side of the destination: then the one clockwise of it
// wins, so every node ranks candidates the same way and routes agree.
func closer(a, da, b, db Addr, dst Addr) bool {
	if da != db {
		return da.Less(db)
	}
	return a != b && dst.Add(da) == a
}

// NextHop decides where a packet for dst goes next; from is the peer it
// came from (empty when this node originates it). The choice depends only
// on the table.
//
// If dst lies strictly between this node and its nearest ring link on one
// side, the two of them are the nodes around dst (the destination is
// absent): the packet is delivered here and sent on to that neighbour,
// unless it came from there. So a packet for an absent address reaches
// both nodes around it, which is how a joining node finds its neighbours
// on both sides, and the second of them never sends it back. A node that
// the links advertise in that gap is not absent, though: it could not
// link to this node (NATs on both sides), and greedy routing reaches it.
//
// Otherwise routing is greedy over two hops (neighbour of neighbour, as
// the Symphony paper suggests): among this node's ring links and every
// node they advertise, find the one nearest to dst; if that is nearer than
// this node, send to the link that is, or knows, that node. A direct link
// wins over the same node seen two hops away, and of two links that know
// it, the one nearer to dst wins. The packet never goes back
// to from, nor towards it as a second hop. Each hop brings the nearest
// known node strictly nearer (or reaches it), so a route cannot loop while
// the tables agree; stale tables are what the TTL is for.
func (t *Table) NextHop(dst Addr, from peer.ID) Hop {
	self := t.self.Addr
	if self == dst {
		return Hop{Deliver: true, Nearest: true}
	}
	selfD := self.Distance(dst)
	for _, cw := range []bool{true, false} {
		n := t.closestOnSide(cw)
		if n == nil || !passes(self, dst, n.Addr, cw) {
			continue
		}
		if k, ok := t.closestKnownOnSide(cw); ok && k != n.Addr && !passes(self, dst, k, cw) {
			// A node the links advertise lies in the gap, nearer than
			// the link: one this node has no link to (behind a NAT, it
			// could not link). dst is not absent; greedy routing below
			// reaches it through a link that knows it.
			break
		}
		h := Hop{Deliver: true, Nearest: closer(self, selfD, n.Addr, n.Addr.Distance(dst), dst)}
		if n.Peer != from && !n.Unreachable {
			h.Next = n
		}
		return h
	}

	best, bestD := self, selfD
	var via *Link
	for _, l := range t.links {
		if l.Peer == from || !l.Routes() || l.Unreachable {
			continue
		}
		if d := l.Addr.Distance(dst); closer(l.Addr, d, best, bestD, dst) {
			best, bestD, via = l.Addr, d, l
		}
	}
	for _, l := range t.links {
		if l.Peer == from || !l.Routes() || l.Unreachable {
			continue
		}
		ld := l.Addr.Distance(dst)
		for _, n := range l.Neighbours {
			if n.Addr == best && via != nil && via.Addr != best && closer(l.Addr, ld, via.Addr, via.Addr.Distance(dst), dst) {
				via = l // the same second hop, through a nearer first hop
				continue
			}
			d := n.Addr.Distance(dst)
			if !closer(n.Addr, d, best, bestD, dst) || n.Addr == self || n.Peer == from {
				continue
			}
			best, bestD, via = n.Addr, d, l
		}
	}
	if via != nil {
		return Hop{Next: via}
	}
	// No ring link at all, or the only one is where the packet came from.
	return Hop{Deliver: true, Nearest: true}
}

// passes reports whether dst lies strictly between self and n, going
// clockwise if cw and anticlockwise otherwise.
func passes(self, dst, n Addr, cw bool) bool {
	if cw {
		return self.Clockwise(dst).Less(self.Clockwise(n))
	}
	return dst.Clockwise(self).Less(n.Clockwise(self))
}

// closestKnownOnSide returns the address nearest to this node going
// clockwise (cw) or anticlockwise among its ring links and the nodes they
// advertise.
func (t *Table) closestKnownOnSide(cw bool) (Addr, bool) {
	var best, bestD Addr
	found := false
	consider := func(a Addr) {
		if a == t.self.Addr {
			return
		}
		d := t.self.Addr.Clockwise(a)
		if !cw {
			d = a.Clockwise(t.self.Addr)
		}
		if !found || d.Less(bestD) {
			best, bestD, found = a, d, true
		}
	}
	for _, l := range t.links {
		if !l.Routes() {
			continue
		}
		consider(l.Addr)
		for _, n := range l.Neighbours {
			consider(n.Addr)
		}
	}
	return best, found
}

// closestOnSide returns the ring link nearest to this node going clockwise
// (cw) or anticlockwise, or nil.
func (t *Table) closestOnSide(cw bool) *Link {
	var best *Link
	var bestD Addr
	for _, l := range t.links {
		if !l.Routes() {
			continue
		}
		d := t.self.Addr.Clockwise(l.Addr)
		if !cw {
			d = l.Addr.Clockwise(t.self.Addr)
		}
		if best == nil || d.Less(bestD) {
			best, bestD = l, d
		}
	}
	return best
}
