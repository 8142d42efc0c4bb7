package routing

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
)

func TestMissingNear(t *testing.T) {
	r := newRing(at(0x10), at(0x20), at(0x30), at(0x40), at(0x50), at(0x60), at(0x70))
	// A node that knows only its nearest neighbour on each side learns
	// the second ones from their lists.
	j := &Table{self: Neighbour{Peer: "j", Addr: at(0x38)}}
	r.tables["j"] = j
	r.link(j, r.order[2], Near) // 0x30
	r.link(j, r.order[3], Near) // 0x40
	r.order = append(r.order, j)
	r.refresh()
	got := map[Addr]bool{}
	for _, n := range j.MissingNear() {
		got[n.Addr] = true
	}
	if len(got) != 2 || !got[at(0x20)] || !got[at(0x50)] {
		t.Fatalf("MissingNear = %v, want 0x20.. and 0x50..", got)
	}
}

func TestEstimateN(t *testing.T) {
	for _, n := range []int{16, 1000, 100000} {
		addrs := make([]Addr, 5)
		for i := range addrs {
			addrs[i] = AddrFromFraction(float64(i) / float64(n))
		}
		r := newRing(addrs...)
		mid := r.order[2] // two neighbours on each side, evenly spaced
		if est := mid.EstimateN(); math.Abs(est-float64(n))/float64(n) > 1e-6 {
			t.Errorf("n=%d: estimate %g", n, est)
		}
		if want := int(math.Ceil(math.Log2(float64(n)) / 2)); mid.FarWanted() != want {
			t.Errorf("n=%d: FarWanted %d, want %d", n, mid.FarWanted(), want)
		}
	}
}

func TestSampleFarTargetIsHarmonic(t *testing.T) {
	const n = 1 << 16
	addrs := make([]Addr, 5)
	for i := range addrs {
		addrs[i] = AddrFromFraction(float64(i) / n)
	}
	tb := newRing(addrs...).order[2]
	rng := rand.New(rand.NewPCG(7, 8))
	const draws = 100000
	// Harmonic: log2 of the distance is uniform on [log2(1/n), log2(1/2)],
	// so each of the 15 octaves gets about a fifteenth of the draws.
	var octave [16]int
	for range draws {
		target, est := tb.SampleFarTarget(rng)
		if est != n {
			t.Fatalf("drawn for N=%g, want %d", est, n)
		}
		x := tb.self.Addr.Distance(target).Fraction()
		if x < 1.0/n || x > 0.5 {
			t.Fatalf("distance %g outside [1/N, 1/2]", x)
		}
		octave[min(int(-math.Log2(x)), 15)]++
	}
	for i := 1; i <= 15; i++ {
		if got := float64(octave[i]) / draws; math.Abs(got-1.0/15) > 0.01 {
			t.Errorf("octave 2^-%d holds %.3f of the draws, want %.3f", i, got, 1.0/15)
		}
	}
}

func TestAcceptFarCap(t *testing.T) {
	tb := NewTable(testID(0))
	for i := 1; i <= MaxLinks; i++ {
		if !tb.AcceptFar(testID(i)) {
			t.Fatalf("refused link %d below the cap", i)
		}
		tb.Add(testID(i), 0, nil)
		tb.SetPeerKinds(testID(i), Far)
	}
	if tb.AcceptFar(testID(MaxLinks + 1)) {
		t.Fatal("accepted a far link above the cap")
	}
	if !tb.AcceptFar(testID(3)) {
		t.Fatal("refused a peer it already links to")
	}
}

func TestTidy(t *testing.T) {
	addrs := make([]Addr, 40)
	for i := range addrs {
		addrs[i] = at(byte(i * 6))
	}
	r := newRing(addrs...)
	self := r.order[20]
	// Far links to every other node: far more than the cap allows.
	for _, o := range r.order {
		if o != self && self.Link(o.self.Peer) == nil {
			r.link(self, o, Far)
		}
	}
	// And a stale near link: node 17 is three away.
	self.Link(r.order[17].self.Peer).Kinds |= Near
	changes := self.Tidy()
	if self.Len() > MaxLinks {
		t.Errorf("%d links after Tidy, cap %d", self.Len(), MaxLinks)
	}
	if got, want := self.FarHave(), self.FarWanted(); got > want {
		t.Errorf("%d far links, want at most %d", got, want)
	}
	cw, ccw := self.Near()
	for _, n := range append(cw, ccw...) {
		if l := self.Link(n.Peer); l == nil || l.Kinds&Near == 0 {
			t.Errorf("near neighbour %s lost its link or its Near mark", n.Addr)
		}
	}
	if l := self.Link(r.order[17].self.Peer); l != nil && l.Kinds&Near != 0 {
		t.Error("node three away still marked near")
	}
	closed := 0
	for _, c := range changes {
		if c.Closed {
			closed++
			if self.Link(c.Peer) != nil {
				t.Errorf("%s reported closed but still linked", c.Peer)
			}
		}
	}
	if closed == 0 {
		t.Error("nothing closed")
	}
	if again := self.Tidy(); len(again) != 0 {
		t.Errorf("a second Tidy changed %d links", len(again))
	}
}

func TestTidyDropsLeafOnceJoined(t *testing.T) {
	r := newRing(at(0x10), at(0x20), at(0x30), at(0x40), at(0x50))
	j := &Table{self: Neighbour{Peer: "j", Addr: at(0x38)}}
	r.tables["j"] = j
	r.link(j, r.order[0], Leaf)
	if j.Tidy(); j.Link(r.order[0].self.Peer) == nil {
		t.Fatal("leaf dropped before the node has neighbours")
	}
	r.link(j, r.order[2], Near)
	r.link(j, r.order[3], Near)
	j.Tidy()
	if j.Link(r.order[0].self.Peer) != nil {
		t.Fatal("leaf kept after the node joined")
	}
}

func TestAddSelf(t *testing.T) {
	tb := NewTable(testID(0))
	if _, err := tb.Add(testID(0), Near, nil); err != ErrSelf {
		t.Fatalf("Add(self) = %v, want ErrSelf", err)
	}
	var none peer.ID
	if h := tb.NextHop(at(1), none); !h.Deliver || h.Next != nil {
		t.Fatalf("a lone node must deliver everything itself: %+v", h)
	}
}
