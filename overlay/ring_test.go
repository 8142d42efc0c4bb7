package overlay

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/pion/stun/v3"

	"github.com/ringnet/ringnet/routing"
)

// ringNodes starts n nodes with the ring on, each joining through the
// first.
func ringNodes(t *testing.T, n int) []*testNode {
	t.Helper()
	subnet := []netip.Prefix{netip.MustParsePrefix("10.128.0.0/16")}
	first := newTestNode(t, "10.128.0.1", 0, func(c *Config) {
		c.Ring, c.VirtualSubnets = true, subnet
	})
	boot := peer.AddrInfo{ID: first.ID(), Addrs: first.Host().Addrs()}
	nodes := []*testNode{first}
	for i := 2; i <= n; i++ {
		nodes = append(nodes, newTestNode(t, fmt.Sprintf("10.128.0.%d", i), 0, func(c *Config) {
			c.Ring, c.VirtualSubnets, c.Bootstrap = true, subnet, []peer.AddrInfo{boot}
		}))
	}
	return nodes
}

// consistent reports whether every node's near neighbours are the true
// nearest nodes on each side, and why not.
func consistent(nodes []*testNode) error {
	sorted := slices.Clone(nodes)
	slices.SortFunc(sorted, func(a, b *testNode) int {
		return routing.AddrFromPeer(a.ID()).Cmp(routing.AddrFromPeer(b.ID()))
	})
	n := len(sorted)
	k := min(routing.NearPerSide, n-1)
	for i, v := range sorted {
		st, _ := v.Ring()
		var wantCW, wantCCW []peer.ID
		for j := range k {
			wantCW = append(wantCW, sorted[(i+1+j)%n].ID())
			wantCCW = append(wantCCW, sorted[(i-1-j+n)%n].ID())
		}
		if !slices.Equal(st.NearCW, wantCW) || !slices.Equal(st.NearCCW, wantCCW) {
			return fmt.Errorf("node %d: near %v / %v, want %v / %v", i, st.NearCW, st.NearCCW, wantCW, wantCCW)
		}
	}
	return nil
}

func waitConsistent(t *testing.T, nodes []*testNode, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := consistent(nodes)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("ring not consistent after %v: %v", within, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// reach sends packets from a to b's virtual address until one arrives:
// the first ones go while a looks up b's address and handshakes with it.
func reach(t *testing.T, a, b *testNode, within time.Duration) {
	t.Helper()
	src, dst := a.cfg.VirtualAddrs[0].String(), b.cfg.VirtualAddrs[0].String()
	pkt := ipv4(src, dst, "over the ring")
	deadline := time.Now().Add(within)
	for {
		buf := make([]byte, HeaderLen+len(pkt)+TagLen)
		copy(buf[HeaderLen:], pkt)
		a.Send(b.cfg.VirtualAddrs[0], buf, len(pkt))
		select {
		case got := <-b.got:
			if string(got) == string(pkt) {
				return
			}
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			st, _ := a.Ring()
			t.Fatalf("%s -> %s: nothing delivered within %v (ring counters %v, drops %v)", src, dst, within, st.Counters, a.Drops())
		}
	}
}

func TestRingJoinsAndRoutes(t *testing.T) {
	nodes := ringNodes(t, 8)
	waitConsistent(t, nodes, 20*time.Second)
	for _, n := range nodes {
		st, _ := n.Ring()
		if len(st.Links) > routing.MaxLinks {
			t.Errorf("%s has %d links, above the cap", n.ID(), len(st.Links))
		}
		for _, l := range st.Links {
			if (l.Kinds|l.PeerKinds)&routing.Leaf != 0 && len(st.NearCW) == routing.NearPerSide {
				t.Errorf("%s still keeps a leaf link to %s after joining", n.ID(), l.Peer)
			}
		}
	}
	// Every pair, including those with no link of their own.
	for i, a := range nodes {
		for j, b := range nodes {
			if i != j {
				reach(t, a, b, 10*time.Second)
			}
		}
	}
}

func TestRingRepairsAfterFailures(t *testing.T) {
	nodes := ringNodes(t, 10)
	waitConsistent(t, nodes, 20*time.Second)
	// Kill three, the bootstrap node among them.
	for _, n := range []*testNode{nodes[0], nodes[4], nodes[7]} {
		n.Close()
	}
	alive := []*testNode{nodes[1], nodes[2], nodes[3], nodes[5], nodes[6], nodes[8], nodes[9]}
	waitConsistent(t, alive, 15*time.Second)
	reach(t, alive[0], alive[len(alive)-1], 10*time.Second)
	reach(t, alive[3], alive[1], 10*time.Second)
}

// TestRingRefusesLyingControlMessages sends a ring node control messages
// that lie or do not parse: each is dropped and counted, and none makes a
// link.
func TestRingRefusesLyingControlMessages(t *testing.T) {
	n := ringNodes(t, 1)[0]
	liar := newTestNode(t, "10.128.0.99", 0)
	other := newTestNode(t, "10.128.0.98", 0)
	if err := liar.Host().Connect(t.Context(), peer.AddrInfo{ID: n.ID(), Addrs: n.Host().Addrs()}); err != nil {
		t.Fatal(err)
	}
	send := func(typ byte, body []byte) {
		t.Helper()
		st, err := liar.Host().NewStream(t.Context(), n.ID(), ringProtocol)
		if err != nil {
			t.Fatal(err)
		}
		st.Write(append([]byte{typ}, body...))
		st.Close()
	}
	list := func(sender peer.ID) []byte {
		m := routing.NeighbourList{Kinds: routing.Near, Seq: 1, Sender: sender, Addr: routing.AddrFromPeer(sender),
			Neighbours: []routing.Neighbour{{Peer: other.ID(), Addr: routing.AddrFromPeer(other.ID())}}}
		b, err := m.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	lyingEntry := list(liar.ID())
	lyingEntry[len(lyingEntry)-1] ^= 1 // the neighbour's ring address
	answer := routing.ConnectToMe{Kind: routing.Far, TTL: 1, Requester: liar.ID(), Addr: routing.AddrFromPeer(liar.ID()),
		Target: routing.AddrFromPeer(other.ID())}
	if err := answer.Sign(liar.cfg.Identity); err != nil {
		t.Fatal(err)
	}
	unasked, err := answer.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	forged := append([]byte(nil), unasked...)
	forged[len(forged)-1] ^= 1 // the signature

	send(ctlList, list(other.ID())) // sent by liar, claims to be other
	send(ctlList, lyingEntry)
	send(ctlList, []byte{1, 2, 3})
	send(9, nil)
	send(ctlAnswer, unasked)
	send(ctlAnswer, forged)
	want := map[string]uint64{"lying": 1, "wrong_ring_address": 1, "malformed": 2, "answers_unsolicited": 1, "bad_signature": 1}
	waitFor(t, "every message counted", func() bool {
		st, _ := n.Ring()
		for k, v := range want {
			if st.Counters[k] != v {
				return false
			}
		}
		return true
	})
	if st, _ := n.Ring(); len(st.Links) != 0 {
		t.Fatalf("lying messages made links: %+v", st.Links)
	}
}

// TestSTUNOnTheDataSocket: ring links hand each other STUN credentials,
// and each node learns how its links see its data socket; a binding
// request without credentials is refused.
func TestSTUNOnTheDataSocket(t *testing.T) {
	nodes := ringNodes(t, 3)
	waitConsistent(t, nodes, 20*time.Second)
	for _, n := range nodes {
		waitFor(t, "a STUN answer", func() bool {
			nat := n.NAT()
			return nat.Public == n.DataAddr() && nat.Mapping == MappingNone
		})
	}
	req, err := stun.Build(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(nodes[0].DataAddr()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	before := nodes[0].NAT().Refused
	c.Write(req.Raw)
	waitFor(t, "the request without credentials to be refused", func() bool { return nodes[0].NAT().Refused > before })
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, err := c.Read(make([]byte, 1500)); err == nil {
		t.Fatalf("a request without credentials got a %d-byte answer", n)
	}
}

// TestRingPeerRestarts: a node that talks to another over the ring keeps
// reaching it after it restarts with the same identity (and so lost the
// session keys): it notices the silence and handshakes again.
func TestRingPeerRestarts(t *testing.T) {
	nodes := ringNodes(t, 6)
	waitConsistent(t, nodes, 20*time.Second)
	var a, d *testNode
	for _, x := range nodes {
		st, _ := x.Ring()
		for _, y := range nodes {
			if y != x && !slices.ContainsFunc(st.Links, func(l RingLink) bool { return l.Peer == y.ID() }) {
				a, d = x, y
			}
		}
	}
	if a == nil {
		t.Skip("every node links to every other")
	}
	reach(t, a, d, 10*time.Second)
	key, vip := d.cfg.Identity, d.cfg.VirtualAddrs[0].String()
	d.Close()
	subnet := []netip.Prefix{netip.MustParsePrefix("10.128.0.0/16")}
	boot := peer.AddrInfo{ID: nodes[0].ID(), Addrs: nodes[0].Host().Addrs()}
	if d == nodes[0] {
		boot = peer.AddrInfo{ID: nodes[1].ID(), Addrs: nodes[1].Host().Addrs()}
	}
	d2 := newTestNode(t, vip, 0, func(c *Config) {
		c.Ring, c.VirtualSubnets, c.Bootstrap, c.Identity = true, subnet, []peer.AddrInfo{boot}, key
	})
	reach(t, a, d2, 20*time.Second)
}
