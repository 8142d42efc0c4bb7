package routing

import (
	"math"
	"math/rand/v2"
	"slices"

	"github.com/libp2p/go-libp2p/core/peer"
)

// farRedraw is how far (as a factor either way) the estimate of the ring's
// size may drift from the one a far link was drawn for before the link is
// redrawn: the harmonic distribution's shape depends on N, but the estimate
// is noisy, and redrawing at every wobble would churn links for nothing.
const farRedraw = 4

// nearest returns up to k ring links nearest to this node going clockwise
// (cw) or anticlockwise, nearest first, from the given candidates.
func (t *Table) nearest(cands []Neighbour, cw bool, k int) []Neighbour {
	self := t.self.Addr
	dist := func(a Addr) Addr {
		if cw {
			return self.Clockwise(a)
		}
		return a.Clockwise(self)
	}
	out := make([]Neighbour, 0, k+1)
	for _, c := range cands {
		if c.Addr == self || slices.ContainsFunc(out, func(o Neighbour) bool { return o.Peer == c.Peer }) {
			continue
		}
		d := dist(c.Addr)
		i := len(out)
		for i > 0 && d.Less(dist(out[i-1].Addr)) {
			i--
		}
		if i < k {
			out = slices.Insert(out, i, c)
			if len(out) > k {
				out = out[:k]
			}
		}
	}
	return out
}

// ringLinks returns the links that route, as neighbours.
func (t *Table) ringLinks() []Neighbour {
	out := make([]Neighbour, 0, len(t.links))
	for _, l := range t.links {
		if l.Routes() {
			out = append(out, Neighbour{Peer: l.Peer, Addr: l.Addr})
		}
	}
	return out
}

// Near returns this node's near neighbours: the NearPerSide nearest ring
// links clockwise and anticlockwise, nearest first.
// The slices are shared and must not be modified.
func (t *Table) Near() (cw, ccw []Neighbour) {
	d := t.derive()
	return d.cw, d.ccw
}

// MissingNear returns the nodes this node should link to as near
// neighbours but has no link to: the NearPerSide nearest on each side
// among its links and the links its neighbours advertise. A node that lost
// its neighbours learns their replacements this way, and a joining node
// learns its second neighbours from its first.
func (t *Table) MissingNear() []Neighbour {
	cands := t.ringLinks()
	for _, l := range t.links {
		if l.Routes() {
			cands = append(cands, l.Neighbours...)
		}
	}
	var out []Neighbour
	for _, cw := range []bool{true, false} {
		for _, n := range t.nearest(cands, cw, NearPerSide) {
			if l := t.Link(n.Peer); (l == nil || !l.Routes()) && !slices.Contains(out, n) {
				out = append(out, n)
			}
		}
	}
	return out
}

// EstimateN estimates the number of nodes in the ring from how closely
// the near neighbours are spaced: k gaps span a fraction f of the ring, so
// N ≈ k/f. Four gaps give an estimate within a factor of two or so, which
// is all the far-link policy needs (it uses log2 N).
func (t *Table) EstimateN() float64 { return t.derive().est }

func (t *Table) estimate(cw, ccw []Neighbour, ringLinks int) float64 {
	if len(cw) == 0 {
		return 1
	}
	self := t.self.Addr
	f := self.Clockwise(cw[len(cw)-1].Addr).Fraction() + ccw[len(ccw)-1].Addr.Clockwise(self).Fraction()
	n := float64(len(cw)+len(ccw)) / f
	// A ring of few nodes wraps its near neighbours round; it has at
	// least as many nodes as this one can see.
	return max(n, float64(ringLinks+1))
}

// FarWanted returns how many far links this node should make: about
// log2(N)/2, so that with the far links other nodes make to it (as many
// again, on average) and its near links a node keeps log2(N)+4 links.
func (t *Table) FarWanted() int {
	n := t.EstimateN()
	if n < 2 {
		return 0
	}
	k := int(math.Ceil(math.Log2(n) / 2))
	return min(k, MaxLinks/2-NearPerSide)
}

// FarHave returns how many far links this node made.
func (t *Table) FarHave() int {
	n := 0
	for _, l := range t.links {
		if l.Kinds&Far != 0 {
			n++
		}
	}
	return n
}

// SampleFarTarget draws the ring address a new far link should go to, and
// returns it with the estimate of N it was drawn for (record it in the
// link's FarN). The distance, as a fraction x of the ring, follows the
// harmonic distribution, density ∝ 1/x on [1/N, 1/2], on either side with
// equal chance: Symphony's distribution, folded so that the shorter-way
// distance used for routing covers the whole range.
func (t *Table) SampleFarTarget(r *rand.Rand) (target Addr, n float64) {
	n = max(t.EstimateN(), 2)
	x := math.Exp(math.Log(n/2)*(r.Float64()-1)) / 2
	d := AddrFromFraction(x).Add(Addr{mid: r.Uint64() >> 1, lo: r.Uint32()}) // fill the bits below float precision
	if r.IntN(2) == 0 {
		return t.self.Addr.Add(d), n
	}
	return t.self.Addr.Sub(d), n
}

// AcceptFar reports whether this node takes a far link that p asks for: it
// refuses when it is at MaxLinks, unless it already has a link to p.
func (t *Table) AcceptFar(p peer.ID) bool {
	return t.Link(p) != nil || len(t.links) < MaxLinks
}

// Change is a link whose kinds this node changed: the peer must hear of
// the new Kinds (it calls SetPeerKinds). Closed links were dropped from the
// table, because neither side wants them or this node refused them.
type Change struct {
	Peer   peer.ID
	Kinds  Kind
	Closed bool
}

// Tidy brings the links in line with the policy and returns what changed:
// Near marks exactly the near neighbours; Leaf goes once the node has near
// neighbours on both sides; far links drawn for an estimate of N that is
// now off by more than a factor farRedraw, or beyond FarWanted, lose Far;
// above MaxLinks, far links go (this node's first, then its peers'); links
// that no side wants close.
func (t *Table) Tidy() []Change {
	before := make([]Kind, len(t.links))
	for i, l := range t.links {
		before[i] = l.Kinds
	}

	cw, ccw := t.Near()
	for _, l := range t.links {
		near := slices.ContainsFunc(cw, func(n Neighbour) bool { return n.Peer == l.Peer }) ||
			slices.ContainsFunc(ccw, func(n Neighbour) bool { return n.Peer == l.Peer })
		if near {
			l.Kinds |= Near
		} else {
			l.Kinds &^= Near
		}
	}
	if len(cw) > 0 && len(ccw) > 0 {
		for _, l := range t.links {
			l.Kinds &^= Leaf
		}
	}

	n := t.EstimateN()
	extra := t.FarHave() - t.FarWanted()
	for i := len(t.links) - 1; i >= 0; i-- { // newest last: keep the oldest
		l := t.links[i]
		if l.Kinds&Far == 0 {
			continue
		}
		if extra > 0 || l.FarN > n*farRedraw || l.FarN*farRedraw < n {
			l.Kinds &^= Far
			extra--
		}
	}

	var changes []Change
	over := len(t.links) - MaxLinks
	for _, pass := range []func(*Link) bool{
		func(l *Link) bool { return l.Kinds == Far },
		func(l *Link) bool { return l.Kinds == 0 && l.PeerKinds&^Far == 0 },
	} {
		for i := len(t.links) - 1; i >= 0 && over > 0; i-- {
			if l := t.links[i]; pass(l) {
				l.Kinds, l.PeerKinds = 0, 0
				over--
			}
		}
	}

	kept := t.links[:0]
	for i, l := range t.links {
		closed := l.Kinds == 0 && l.PeerKinds == 0
		if closed || l.Kinds != before[i] {
			changes = append(changes, Change{Peer: l.Peer, Kinds: l.Kinds, Closed: closed})
		}
		if !closed {
			kept = append(kept, l)
		}
	}
	clear(t.links[len(kept):])
	t.links = kept
	if len(changes) > 0 {
		t.changed()
	}
	return changes
}
