package overlay

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	record "github.com/libp2p/go-libp2p-record"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ringnet/ringnet/dhcp"
)

// leaseRing starts n ring nodes with the DHT holding lease records, each
// replica keeping the first claim it stores.
func leaseRing(t *testing.T, n int, opts ...func(*Config)) []*testNode {
	t.Helper()
	v := &dhcp.LeaseValidator{}
	dhtCfg := &DHTConfig{
		Validator: record.NamespacedValidator{"lease": v},
		Admit:     func(_ string, existing, incoming []byte) error { return v.Admit(existing, incoming) },
	}
	subnet := []netip.Prefix{netip.MustParsePrefix("10.128.0.0/16")}
	var nodes []*testNode
	for i := range n {
		nodes = append(nodes, newTestNode(t, fmt.Sprintf("10.128.0.%d", i+1), 0, func(c *Config) {
			c.Ring, c.VirtualSubnets, c.DHT = true, subnet, dhtCfg
			if i > 0 {
				c.Bootstrap = []peer.AddrInfo{{ID: nodes[0].ID(), Addrs: nodes[0].Host().Addrs()}}
			}
			for _, o := range opts {
				o(c)
			}
		}))
	}
	return nodes
}

func signedLease(t *testing.T, key crypto.PrivKey, ip string) []byte {
	t.Helper()
	id, _ := peer.IDFromPrivateKey(key)
	now := time.Now()
	b, err := dhcp.SignLease(key, dhcp.Lease{Namespace: "lab", IP: netip.MustParseAddr(ip), Holder: id,
		Issued: now, Expires: now.Add(time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestDHTReplicasKeepTheFirstClaim runs the lease rule over the real DHT:
// a second claimant's record is refused by the replicas that hold the
// first, so a Replicas read shows the first on a majority.
func TestDHTReplicasKeepTheFirstClaim(t *testing.T) {
	nodes := leaseRing(t, 5)
	waitConsistent(t, nodes, 20*time.Second)
	waitFor(t, "DHT routing tables", func() bool {
		for _, n := range nodes {
			if n.DHT().RoutingTableSize() < len(nodes)-1 {
				return false
			}
		}
		return true
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	key := dhcp.LeaseKey("lab", netip.MustParseAddr("10.128.0.50"))
	a, b := nodes[1], nodes[3]
	if err := a.DHT().Put(ctx, key, signedLease(t, a.cfg.Identity, "10.128.0.50")); err != nil {
		t.Fatal(err)
	}
	// b's own store takes its record, unless b is a replica of a's: count
	// what the replicas hold instead.
	_ = b.DHT().Put(ctx, key, signedLease(t, b.cfg.Identity, "10.128.0.50"))
	values, asked, err := b.DHT().Replicas(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if asked != len(nodes) {
		t.Fatalf("asked %d replicas, want all %d nodes", asked, len(nodes))
	}
	holders := map[peer.ID]int{}
	for _, v := range values {
		l, err := dhcp.ParseLease(v)
		if err != nil {
			t.Fatal(err)
		}
		holders[l.Holder]++
	}
	if 2*holders[a.ID()] <= asked || holders[b.ID()] > 1 {
		t.Fatalf("replicas hold %v of %d; want a's record on a majority and b's at most on b itself", holders, asked)
	}
	got, err := nodes[4].DHT().Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if l, _ := dhcp.ParseLease(got); l.Holder != a.ID() {
		t.Fatalf("Get returned %v's record, want a's", l.Holder)
	}
	// Malformed records are refused by validation, wherever they come from.
	if err := a.DHT().Put(ctx, key, []byte("not a lease")); err == nil {
		t.Fatal("a malformed record was stored")
	}
}

// TestDHTClientBehindNAT turns a node into a DHT client, as updateReach
// does when it sees a NAT in front of it: the others drop it from their
// routing tables, it is no replica, yet its claims land on a majority of
// the servers; told it is public again, it serves again.
func TestDHTClientBehindNAT(t *testing.T) {
	nodes := leaseRing(t, 5)
	waitConsistent(t, nodes, 20*time.Second)
	natted := nodes[2]
	// STUN on loopback sees no NAT; wait for it, so that its answer
	// cannot undo what this test tells the DHT.
	waitFor(t, "STUN", func() bool { return natted.NAT().Mapping == MappingNone })
	if !natted.DHT().Serving() {
		t.Fatal("a node with no NAT is not a DHT server")
	}
	natted.DHT().setReachability(network.ReachabilityPrivate)
	waitFor(t, "the NATed node to leave the others' routing tables", func() bool {
		if natted.DHT().Serving() {
			return false
		}
		for _, n := range nodes {
			if n != natted && n.DHT().kad.RoutingTable().Find(natted.ID()) != "" {
				return false
			}
		}
		return true
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	key := dhcp.LeaseKey("lab", netip.MustParseAddr("10.128.0.60"))
	if err := natted.DHT().Put(ctx, key, signedLease(t, natted.cfg.Identity, "10.128.0.60")); err != nil {
		t.Fatal(err)
	}
	values, asked, err := natted.DHT().Replicas(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if asked != len(nodes)-1 || 2*len(values) <= asked {
		t.Fatalf("the client asked %d replicas and %d hold its record; want the %d servers, a majority holding it",
			asked, len(values), len(nodes)-1)
	}
	if _, asked, err := nodes[0].DHT().Replicas(ctx, key); err != nil || asked != len(nodes)-1 {
		t.Fatalf("a server asked %d replicas (%v); want the %d servers, not the client", asked, err, len(nodes)-1)
	}
	natted.DHT().setReachability(network.ReachabilityPublic)
	waitFor(t, "the node to serve again", natted.DHT().Serving)
}

// TestClosedRingRefusesStrangers closes the ring: nodes whose proof
// checks link; a node with a bad proof is refused, counted and kept out.
func TestClosedRingRefusesStrangers(t *testing.T) {
	errBad := errors.New("bad proof")
	admission := func(proof string) func(*Config) {
		return func(c *Config) {
			c.Admission = &AdmissionConfig{
				Proof: []byte(proof),
				Verify: func(_ peer.ID, p []byte, now time.Time) (time.Time, error) {
					if string(p) != "member" {
						return time.Time{}, errBad
					}
					return now.Add(time.Hour), nil
				},
			}
		}
	}
	nodes := leaseRing(t, 3, admission("member"))
	waitConsistent(t, nodes, 20*time.Second)
	stranger := newTestNode(t, "10.128.0.99", 0, func(c *Config) {
		c.Ring, c.VirtualSubnets = true, []netip.Prefix{netip.MustParsePrefix("10.128.0.0/16")}
		c.Bootstrap = []peer.AddrInfo{{ID: nodes[0].ID(), Addrs: nodes[0].Host().Addrs()}}
		admission("stranger")(c)
	})
	waitFor(t, "the stranger refused", func() bool { return nodes[0].AddrCounters()["admit_refused"] > 0 })
	time.Sleep(2 * time.Second)
	if st, _ := stranger.Ring(); len(st.Links) > 0 {
		t.Fatalf("the stranger has ring links: %+v", st.Links)
	}
	for _, n := range nodes {
		for _, l := range func() []RingLink { st, _ := n.Ring(); return st.Links }() {
			if l.Peer == stranger.ID() {
				t.Fatalf("a member links to the stranger")
			}
		}
		if n.isAdmitted(stranger.ID(), time.Now()) {
			t.Fatal("the stranger is admitted")
		}
	}
	if err := consistent(nodes); err != nil {
		t.Fatalf("the members' ring: %v", err)
	}
}

// TestAddressLookupsAreBounded scans addresses nobody holds: lookups start
// at a bounded rate, and the rest are counted, not sent.
func TestAddressLookupsAreBounded(t *testing.T) {
	var calls atomic.Int64
	n := newTestNode(t, "10.128.0.1", 0, func(c *Config) {
		c.VirtualSubnets = []netip.Prefix{netip.MustParsePrefix("10.128.0.0/16")}
		c.Resolve = func(ctx context.Context, _ *DHT, _ netip.Addr) (peer.ID, error) {
			calls.Add(1)
			return "", ErrNotHeld
		}
	})
	for i := range 1000 {
		n.Holds(netip.AddrFrom4([4]byte{10, 128, byte(i >> 8), byte(i)}))
	}
	waitFor(t, "lookups to end", func() bool {
		c := n.AddrCounters()
		return c["addr_lookups"] > 0 && c["addr_not_held"] == c["addr_lookups"]
	})
	if c := calls.Load(); c > lookupBurst+5 {
		t.Fatalf("%d lookups for a scan of 1000 addresses, want about %d", c, lookupBurst)
	}
	if busy := n.AddrCounters()["addr_lookup_busy"]; busy < 900 {
		t.Fatalf("busy = %d, want the lookups not started counted", busy)
	}
	// An address nobody holds is not looked up again at once.
	before := calls.Load()
	n.Holds(netip.MustParseAddr("10.128.0.5"))
	time.Sleep(100 * time.Millisecond)
	if calls.Load() != before {
		t.Fatal("an address just found unheld was looked up again")
	}
}
