package routing

import (
	"math/rand/v2"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
)

// eight nodes, with a gap across zero so routes wrap round.
func testRing() *ring {
	return newRing(at(0x10), at(0x30), at(0x50), at(0x70), at(0x90), at(0xb0), at(0xd0), at(0xe8))
}

func TestNextHopEveryPair(t *testing.T) {
	r := testRing()
	for _, src := range r.order {
		for _, dst := range r.order {
			got, nearest, path, err := r.route(src, dst.self.Addr)
			if err != nil {
				t.Fatalf("%s -> %s: %v", src.self.Addr, dst.self.Addr, err)
			}
			if len(got) != 1 || got[0] != dst || nearest != dst {
				t.Fatalf("%s -> %s: delivered to %v", src.self.Addr, dst.self.Addr, got)
			}
			// Near links plus their lists see 4 nodes each way: any of
			// eight is within two hops.
			if len(path)-1 > 2 {
				t.Errorf("%s -> %s: %d hops", src.self.Addr, dst.self.Addr, len(path)-1)
			}
		}
	}
}

func TestNextHop(t *testing.T) {
	r := testRing()
	node := func(b byte) *Table {
		for _, t := range r.order {
			if t.self.Addr == at(b) {
				return t
			}
		}
		panic("no node")
	}
	tests := []struct {
		name    string
		from    byte // 0: originated here
		at      byte
		dst     Addr
		next    byte // 0: none
		deliver bool
		nearest bool
	}{
		{name: "to self", at: 0x50, dst: at(0x50), deliver: true, nearest: true},
		{name: "direct link", at: 0x50, dst: at(0x70), next: 0x70},
		{name: "two hops: send via the neighbour that knows it", at: 0x50, dst: at(0xb0), next: 0x90},
		{name: "wrap round zero clockwise", at: 0xd0, dst: at(0x30), next: 0x10},
		{name: "wrap round zero anticlockwise", at: 0x30, dst: at(0xd0), next: 0xe8},
		{name: "absent: nearer node delivers and tells the far side", at: 0x50, dst: at(0x58), next: 0x70, deliver: true, nearest: true},
		{name: "absent: far side delivers, not nearest, sends nowhere", from: 0x50, at: 0x70, dst: at(0x58), deliver: true},
		{name: "absent: from the far side, the nearer node sends nowhere", from: 0x70, at: 0x50, dst: at(0x58), deliver: true, nearest: true},
		{name: "absent across zero", at: 0x10, dst: at(0xf8), next: 0xe8, deliver: true, nearest: false},
		{name: "absent, halfway: the clockwise node is nearest", at: 0x50, dst: at(0x60), next: 0x70, deliver: true, nearest: false},
		{name: "absent, halfway, other side", from: 0x50, at: 0x70, dst: at(0x60), deliver: true, nearest: true},
		{name: "never back where it came from", from: 0x70, at: 0x50, dst: at(0x70).Add(Addr{lo: 1}), next: 0x90},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var from peer.ID
			if tt.from != 0 {
				from = node(tt.from).self.Peer
			}
			h := node(tt.at).NextHop(tt.dst, from)
			var next Addr
			if h.Next != nil {
				next = h.Next.Addr
			}
			if want := at(tt.next); next != want && !(tt.next == 0 && h.Next == nil) {
				t.Errorf("next = %s, want %s", next, want)
			}
			if tt.next == 0 && h.Next != nil {
				t.Errorf("next = %s, want none", h.Next.Addr)
			}
			if h.Deliver != tt.deliver || h.Nearest != tt.nearest {
				t.Errorf("deliver, nearest = %v, %v; want %v, %v", h.Deliver, h.Nearest, tt.deliver, tt.nearest)
			}
		})
	}
}

func TestNextHopAvoidsUnreachableLinks(t *testing.T) {
	r := testRing()
	var n *Table
	for _, t := range r.order {
		if t.self.Addr == at(0x50) {
			n = t
		}
	}
	// With its link to 0x70 unreachable, 0x50 routes neither to 0x70
	// nor through it, and uses it again once it answers.
	n.Link(r.byAddr(at(0x70)).self.Peer).Unreachable = true
	if h := n.NextHop(at(0x70), ""); h.Next != nil && h.Next.Addr == at(0x70) {
		t.Fatal("routed to an unreachable link")
	}
	for _, dst := range []Addr{at(0x90), at(0xb0), at(0x60)} {
		if h := n.NextHop(dst, ""); h.Next != nil && h.Next.Unreachable {
			t.Fatalf("%s: routed through an unreachable link", dst)
		}
	}
	n.Link(r.byAddr(at(0x70)).self.Peer).Unreachable = false
	if h := n.NextHop(at(0x70), ""); h.Next == nil || h.Next.Addr != at(0x70) {
		t.Fatal("a reachable link again is not used")
	}
}

func TestNextHopAbsentReachesBothSides(t *testing.T) {
	r := testRing()
	rng := rand.New(rand.NewPCG(3, 4))
	for range 2000 {
		dst := Addr{hi: rng.Uint64(), mid: rng.Uint64(), lo: rng.Uint32()}
		// The two nodes around dst.
		var before, after *Table
		for i, t := range r.order {
			next := r.order[(i+1)%len(r.order)]
			if t.self.Addr.Clockwise(dst).Less(t.self.Addr.Clockwise(next.self.Addr)) {
				before, after = t, next
			}
		}
		want := before
		if after.self.Addr.Distance(dst).Less(before.self.Addr.Distance(dst)) {
			want = after
		}
		for _, src := range r.order {
			got, nearest, _, err := r.route(src, dst)
			if err != nil {
				t.Fatalf("%s -> %s: %v", src.self.Addr, dst, err)
			}
			if len(got) != 2 || !(got[0] == before && got[1] == after || got[0] == after && got[1] == before) {
				t.Fatalf("%s -> %s: delivered to %d nodes, want %s and %s", src.self.Addr, dst, len(got), before.self.Addr, after.self.Addr)
			}
			if nearest != want {
				t.Fatalf("%s -> %s: nearest %v, want %s", src.self.Addr, dst, nearest, want.self.Addr)
			}
		}
	}
}

func TestCloserTies(t *testing.T) {
	dst := at(0x40)
	a, b := at(0x50), at(0x30) // equally far, either side
	da, db := a.Distance(dst), b.Distance(dst)
	if !closer(a, da, b, db, dst) || closer(b, db, a, da, dst) {
		t.Fatal("a tie must go to the node clockwise of the destination, and only to it")
	}
	if closer(a, da, a, da, dst) {
		t.Fatal("a node is not closer than itself")
	}
}

// TestNextHopNoLoops routes between random pairs and to random addresses
// on random rings with far links, checking with the ring's own route
// helper that no packet visits a node twice or goes back where it came
// from, and that every packet ends at its destination or both nodes around
// it.
func TestNextHopNoLoops(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for _, n := range []int{2, 3, 5, 40, 300} {
		addrs := make([]Addr, n)
		for i := range addrs {
			addrs[i] = Addr{hi: uint64(i+1) * (^uint64(0) / uint64(n+1)), mid: rng.Uint64()}
		}
		r := newRing(addrs...)
		for _, t := range r.order {
			for range 3 {
				if o := r.order[rng.IntN(n)]; o != t {
					r.link(t, o, Far)
				}
			}
		}
		r.refresh()
		for range 2000 {
			src := r.order[rng.IntN(n)]
			dst := r.order[rng.IntN(n)]
			got, _, _, err := r.route(src, dst.self.Addr)
			if err != nil || len(got) != 1 || got[0] != dst {
				t.Fatalf("n=%d: %s -> %s: delivered to %d nodes, err %v", n, src.self.Addr, dst.self.Addr, len(got), err)
			}
			absent := Addr{hi: rng.Uint64(), mid: rng.Uint64(), lo: rng.Uint32()}
			got, _, _, err = r.route(src, absent)
			if err != nil || len(got) != min(n, 2) {
				t.Fatalf("n=%d: %s -> absent %s: delivered to %d nodes, err %v", n, src.self.Addr, absent, len(got), err)
			}
		}
	}
}

// TestNextHopReachesAnUnlinkedNeighbour: a node at 0x60 that could not
// link to its neighbours 0x50 and 0x70 (NATs on all three) but is linked
// to 0x30 and 0x90, which advertise it, is reached from every node,
// although 0x50 and 0x70 are linked to each other across it.
func TestNextHopReachesAnUnlinkedNeighbour(t *testing.T) {
	r := testRing()
	j := &Table{self: Neighbour{Peer: "j", Addr: at(0x60)}}
	r.tables[j.self.Peer] = j
	r.link(j, r.byAddr(at(0x30)), Near)
	r.link(j, r.byAddr(at(0x90)), Near)
	r.refresh()
	for _, l := range j.links {
		l.Neighbours = r.tables[l.Peer].Advertise()
	}
	for _, src := range r.order {
		got, nearest, _, err := r.route(src, j.self.Addr)
		if err != nil {
			t.Fatalf("%s -> j: %v", src.self.Addr, err)
		}
		if len(got) != 1 || got[0] != j || nearest != j {
			t.Fatalf("%s -> j: delivered to %v", src.self.Addr, got)
		}
		got, _, _, err = r.route(j, src.self.Addr)
		if err != nil || len(got) != 1 || got[0] != src {
			t.Fatalf("j -> %s: delivered to %v (%v)", src.self.Addr, got, err)
		}
	}
}
