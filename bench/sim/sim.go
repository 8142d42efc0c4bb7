// Package sim runs the ring's real routing code (routing.Table, its
// NextHop and its link policy) over a simulated network of up to some
// hundred thousand nodes in one process, with no sockets: a message is a
// function call, and the simulator counts them.
//
// A run grows the ring one join at a time, lets it settle with
// maintenance rounds, measures routes between random pairs, then fails a
// share of the nodes at once and counts the rounds until the ring heals.
//
// Message accounting: every hop of a routed message counts one (including
// the joining node's first hop to its bootstrap); a link costs two (the
// dial and the answer, which carries the answerer's neighbour list, so a
// linked peer's list costs nothing more); a refused far-link request or a
// dial to a dead node costs one. Maintenance rounds push each node's
// neighbour list to its links; that traffic is not part of a join's count.
package sim

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"slices"
	"unsafe"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ringnet/ringnet/routing"
)

// maxTTL bounds a routed message's hops, as the overlay header's TTL does.
const maxTTL = 64

type node struct {
	id      peer.ID
	t       *routing.Table
	alive   bool
	touched bool                // its links changed since the last flush
	pushed  []routing.Neighbour // the list it last sent its links
}

// Network is a simulated ring. It is not safe for concurrent use.
type Network struct {
	nodes []*node // by index; the index is encoded in the peer ID
	live  []*node // the joined nodes that are alive
	rng   *rand.Rand
	msgs  int64
	// touched are the nodes whose links changed since the last flush.
	touched []*node
}

// New returns an empty network whose choices all come from seed.
func New(seed uint64) *Network {
	return &Network{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

// Len returns the number of live nodes.
func (nw *Network) Len() int { return len(nw.live) }

// Messages returns the messages sent so far.
func (nw *Network) Messages() int64 { return nw.msgs }

// newNode makes a node whose peer ID is a short tag and its index, so a
// peer ID maps back to its node without a map. The routing code hashes
// the ID like any other.
func (nw *Network) newNode() *node {
	id := binary.BigEndian.AppendUint32([]byte("sim"), uint32(len(nw.nodes)))
	n := &node{id: peer.ID(id), alive: true}
	n.t = routing.NewTable(n.id)
	nw.nodes = append(nw.nodes, n)
	return n
}

func (nw *Network) node(id peer.ID) *node {
	return nw.nodes[binary.BigEndian.Uint32([]byte(id[3:]))]
}

// delivery is a node that a routed message was delivered to.
type delivery struct {
	n       *node
	nearest bool
}

// route carries a message for dst from cur, which got it from from, until
// no node sends it on, and returns where it was delivered and its hops.
func (nw *Network) route(cur *node, dst routing.Addr, from peer.ID) (got []delivery, hops int) {
	for ttl := maxTTL; ; ttl-- {
		h := cur.t.NextHop(dst, from)
		if h.Deliver {
			got = append(got, delivery{cur, h.Nearest})
		}
		if h.Next == nil || ttl == 0 {
			return got, hops
		}
		next := nw.node(h.Next.Peer)
		nw.msgs++
		hops++
		if !next.alive {
			return got, hops
		}
		from, cur = cur.id, next
	}
}

func (nw *Network) touch(n *node) {
	if !n.touched {
		n.touched = true
		nw.touched = append(nw.touched, n)
	}
}

// flush sends the neighbour list of every node whose list changed to all
// its links, one message each: the second hops of neighbour-of-neighbour
// routing must not go stale, or routes can loop.
func (nw *Network) flush() {
	for _, n := range nw.touched {
		n.touched = false
		adv := n.t.Advertise()
		if !n.alive || unsafe.SliceData(adv) == unsafe.SliceData(n.pushed) {
			continue
		}
		n.pushed = adv
		for _, l := range n.t.Links() {
			nw.node(l.Peer).t.SetNeighbours(n.id, adv)
			nw.msgs++
		}
	}
	nw.touched = nw.touched[:0]
}

// link links a to b, which a wants for kinds. Each learns the other's
// neighbour list in the handshake.
func (nw *Network) link(a, b *node, kinds routing.Kind) *routing.Link {
	nw.msgs += 2
	nw.touch(a)
	nw.touch(b)
	la, err := a.t.Add(b.id, kinds, b.t.Advertise())
	if err != nil {
		panic(err) // the simulator never links a node to itself
	}
	lb, _ := b.t.Add(a.id, 0, a.t.Advertise())
	b.t.SetPeerKinds(a.id, la.Kinds)
	a.t.SetPeerKinds(b.id, lb.Kinds)
	return la
}

// unlink drops the link between a and b on both sides.
func (nw *Network) unlink(a, b *node) {
	nw.touch(a)
	nw.touch(b)
	a.t.Remove(b.id)
	b.t.Remove(a.id)
}

// tidy applies n's link policy and tells the peers.
func (nw *Network) tidy(n *node) {
	for _, c := range n.t.Tidy() {
		p := nw.node(c.Peer)
		nw.touch(n)
		nw.touch(p)
		if c.Closed {
			p.t.Remove(n.id)
			continue
		}
		if p.t.SetPeerKinds(n.id, c.Kinds) {
			n.t.Remove(p.id)
		}
	}
}

// fillNear links n to the near neighbours its neighbours' lists show it is
// missing, a few passes over, since each new link brings a fresher list.
func (nw *Network) fillNear(n *node, passes int) {
	for range passes {
		missing := n.t.MissingNear()
		if len(missing) == 0 {
			return
		}
		for _, m := range missing {
			p := nw.node(m.Peer)
			if !p.alive {
				nw.msgs++ // the dial fails; the stale entry goes with the next list
				continue
			}
			nw.link(n, p, routing.Near)
		}
	}
}

// fillFar makes the far links n wants: each is a connect-to-me routed to
// a target drawn from the harmonic distribution, answered by the node
// nearest the target, unless it is full.
func (nw *Network) fillFar(n *node) {
	for tries := 2 * n.t.FarWanted(); tries > 0 && n.t.FarHave() < n.t.FarWanted(); tries-- {
		target, est := n.t.SampleFarTarget(nw.rng)
		got, _ := nw.route(n, target, "")
		var d *node
		for _, g := range got {
			if g.nearest && g.n != n {
				d = g.n
			}
		}
		if d == nil {
			continue // the target is nearest this node itself
		}
		if !d.t.AcceptFar(n.id) {
			nw.msgs++ // the refusal
			continue
		}
		var l *routing.Link
		if l = n.t.Link(d.id); l != nil {
			nw.msgs++ // already linked: the answer only marks it
			n.t.Add(d.id, routing.Far, nil)
			d.t.SetPeerKinds(n.id, l.Kinds)
		} else {
			l = nw.link(n, d, routing.Far)
		}
		l.FarN = est
	}
}

// Join adds a node through a random bootstrap: it routes a connect-to-me
// to its own address, which reaches the two nodes around that address;
// they link to it, their lists show it its second neighbours, and then it
// draws its far links. It returns the messages the join took.
func (nw *Network) Join() int64 {
	start := nw.msgs
	j := nw.newNode()
	if len(nw.live) == 0 {
		nw.live = append(nw.live, j)
		return 0
	}
	b := nw.live[nw.rng.IntN(len(nw.live))]
	nw.link(j, b, routing.Leaf)
	nw.msgs++ // the connect-to-me's first hop, to the bootstrap
	got, _ := nw.route(b, j.t.Self().Addr, j.id)
	for _, g := range got {
		if g.n != j {
			nw.link(j, g.n, routing.Near)
		}
	}
	nw.fillNear(j, 3)
	nw.live = append(nw.live, j)
	nw.fillFar(j)
	nw.tidy(j)
	for _, l := range slices.Clone(j.t.Links()) {
		nw.tidy(nw.node(l.Peer))
	}
	if j.t.Link(b.id) != nil {
		nw.tidy(b)
	}
	nw.flush()
	return nw.msgs - start
}

// Round runs one maintenance round: every live node, in random order,
// links its missing near neighbours, tops up its far links and tidies;
// then every node pushes its neighbour list to its links.
func (nw *Network) Round() {
	order := nw.rng.Perm(len(nw.live))
	for _, i := range order {
		n := nw.live[i]
		nw.fillNear(n, 1)
		nw.fillFar(n)
		nw.tidy(n)
	}
	nw.flush()
}

// Fail kills a fraction of the live nodes at once. Their peers notice at
// once (a link's keepalive fails) and drop the links; the lists they hold
// still name the dead until the next round.
func (nw *Network) Fail(frac float64) {
	k := int(frac * float64(len(nw.live)))
	nw.rng.Shuffle(len(nw.live), func(i, j int) { nw.live[i], nw.live[j] = nw.live[j], nw.live[i] })
	for _, n := range nw.live[:k] {
		n.alive = false
		for _, l := range slices.Clone(n.t.Links()) {
			nw.unlink(n, nw.node(l.Peer))
		}
	}
	nw.live = slices.Delete(nw.live, 0, k)
	nw.flush()
}

// Consistent reports whether every live node's near neighbours are the
// true nearest live nodes on each side.
func (nw *Network) Consistent() bool {
	sorted := slices.Clone(nw.live)
	slices.SortFunc(sorted, func(a, b *node) int { return a.t.Self().Addr.Cmp(b.t.Self().Addr) })
	n := len(sorted)
	k := min(routing.NearPerSide, n-1)
	for i, v := range sorted {
		cw, ccw := v.t.Near()
		if len(cw) != k || len(ccw) != k {
			return false
		}
		for j := range k {
			if cw[j].Peer != sorted[(i+1+j)%n].id || ccw[j].Peer != sorted[(i-1-j+n)%n].id {
				return false
			}
		}
	}
	return true
}

// Route sends a message from a random live node to another's address and
// returns its hops, or an error if it was not delivered there.
func (nw *Network) Route() (int, error) {
	a := nw.live[nw.rng.IntN(len(nw.live))]
	b := nw.live[nw.rng.IntN(len(nw.live))]
	got, hops := nw.route(a, b.t.Self().Addr, "")
	if len(got) == 0 || got[0].n != b {
		return hops, fmt.Errorf("route %s -> %s: not delivered after %d hops", a.t.Self().Addr, b.t.Self().Addr, hops)
	}
	return hops, nil
}

// LinksPerNode returns the mean number of links of a live node.
func (nw *Network) LinksPerNode() float64 {
	total := 0
	for _, n := range nw.live {
		total += n.t.Len()
	}
	return float64(total) / float64(len(nw.live))
}
