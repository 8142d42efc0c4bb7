package integration

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ringnet/ringnet/bench/testbed"
	"github.com/ringnet/ringnet/node"
	"github.com/ringnet/ringnet/overlay/cert"
)

// TestClosedRingAndNamespace runs a closed ring and a closed namespace:
// members get addresses from the namespace's certificate subnet and reach
// each other; a node with another ring's certificate cannot link; a ring
// member outside the namespace cannot reach the namespace's VMs; a ring
// certificate that expires stops working; a member VM that sends from an
// address it does not hold has those packets dropped.
func TestClosedRingAndNamespace(t *testing.T) {
	ctx := t.Context()
	bed, ring, lab := trustBed(t)
	other, err := testbed.NewOwner(cert.Ring, "grid", netip.Prefix{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	sites := make([]*testbed.Site, 2)
	for i := range sites {
		if sites[i], err = bed.AddSite(ctx, fmt.Sprintf("s%d", i), testbed.NATNone); err != nil {
			t.Fatal(err)
		}
	}
	vm := func(name string, i int) *testbed.VM {
		v, err := bed.AddVM(ctx, sites[i%2], name)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	members := []*testbed.VM{vm("m0", 0), vm("m1", 1), vm("m2", 0), vm("m3", 1)}
	outsider, ringOnly := vm("out", 0), vm("ro", 1)

	boot, err := members[0].BootstrapAddr(ctx)
	if err != nil {
		t.Fatal(err)
	}
	start := func(v *testbed.VM, cfg node.Config) {
		t.Helper()
		cfg.Namespace.Settle = "300ms"
		if v != members[0] {
			cfg.Bootstrap = []string{boot}
		}
		if err := v.StartNode(ctx, cfg); err != nil {
			t.Fatal(err)
		}
	}
	// Members: admitted to both, m3's ring certificate short-lived. No
	// tap.address: the subnet comes from the namespace's certificate.
	for i, m := range members {
		var cfg node.Config
		if err := testbed.Configure(ctx, m, &cfg, ring, lab); err != nil {
			t.Fatal(err)
		}
		if i == 3 {
			f, err := ring.Admit(ctx, m, "ring.pem", time.Now().Add(40*time.Second))
			if err != nil {
				t.Fatal(err)
			}
			cfg.Ring.Cert = f
		}
		if i == 0 {
			// m0 publishes the namespace owner's revocations.
			cfg.Namespace.Revocations = "revoked.pem"
		}
		start(m, cfg)
	}
	addrs := make([]string, len(members))
	for i, m := range members {
		st, err := waitLease(ctx, m)
		if err != nil {
			t.Fatal(err)
		}
		if !netip.MustParsePrefix("10.140.0.0/16").Contains(netip.MustParseAddr(st.Lease.Addr)) || !strings.HasPrefix(st.Namespace, "lab.") {
			t.Fatalf("%s: lease %s in namespace %s, want one of lab's 10.140.0.0/16", m.Name(), st.Lease.Addr, st.Namespace)
		}
		addrs[i] = st.Lease.Addr
	}
	for i := range members {
		j := (i + 1) % len(members)
		if err := waitReach(ctx, members[i], addrs[j]); err != nil {
			t.Fatalf("member %s cannot reach %s: %v", members[i].Name(), addrs[j], err)
		}
	}
	t.Logf("4 members of a closed ring and namespace hold %v and reach each other", addrs)

	// A node whose ring certificate comes from another owner.
	var outCfg node.Config
	if err := testbed.Configure(ctx, outsider, &outCfg, other, nil); err != nil {
		t.Fatal(err)
	}
	outCfg.Namespace = node.NamespaceConfig{Open: true, Name: "lab", Subnet: "10.140.0.0/16"}
	start(outsider, outCfg)
	// A ring member that is no namespace member: it claims in an open
	// namespace of the same name, which is not lab.
	var roCfg node.Config
	if err := testbed.Configure(ctx, ringOnly, &roCfg, ring, nil); err != nil {
		t.Fatal(err)
	}
	roCfg.Namespace = node.NamespaceConfig{Open: true, Name: "lab", Subnet: "10.140.0.0/16"}
	roCfg.TAP.Address = addrs[1] + "/16" // a member's address, in its own namespace
	start(ringOnly, roCfg)

	waitFor(t, "the outsider refused", func() bool {
		st, err := members[0].Status(ctx)
		return err == nil && st.Lease.Counters["admit_refused"] > 0
	})
	if err := waitReach(ctxFor(ctx, 5*time.Second), outsider, addrs[2]); err == nil {
		t.Fatal("a node of another ring reached a member")
	}
	if st, err := outsider.Status(ctx); err != nil || len(st.Ring.Links) > 0 {
		t.Fatalf("the outsider has ring links: %+v %v", st.Ring.Links, err)
	}
	st, err := ringOnly.Status(ctx)
	if err != nil || len(st.Ring.Links) == 0 {
		t.Fatalf("the ring member outside the namespace has no ring links: %+v %v", st.Ring, err)
	}
	if err := waitReach(ctxFor(ctx, 5*time.Second), ringOnly, addrs[2]); err == nil {
		t.Fatal("a node outside the namespace reached a member's VM")
	}
	t.Logf("refused: another ring's node (no links); the namespace's VMs unreachable from a ring member outside it (%d ring links)", len(st.Ring.Links))

	// A member VM sending from an address it does not hold.
	if err := members[1].Exec(ctx, "ip", "addr", "add", "10.140.250.250/16", "dev", testbed.TAPName); err != nil {
		t.Fatal(err)
	}
	if r, err := members[1].Ping(ctx, addrs[2], "-c", "3", "-i", "0.2", "-W", "1", "-I", "10.140.250.250"); err == nil && r.Received > 0 {
		t.Fatalf("pings from an address m1 does not hold were answered: %+v", r)
	}
	st1, err := members[1].Status(ctx)
	if err != nil || st1.TAP.Counters["from_vm_drop_bad_source"] == 0 {
		t.Fatalf("spoofed packets not counted at m1's gateway: %v %v", st1.TAP.Counters["from_vm_drop_bad_source"], err)
	}

	// The owner revokes m2's membership; m0 publishes it in the DHT, and
	// within a minute m2's VM is unreachable for the other members.
	text, err := os.ReadFile(filepath.Join(members[2].StateDir(), "namespace.pem"))
	if err != nil {
		t.Fatal(err)
	}
	chain, err := cert.ParseChainText(text)
	if err != nil {
		t.Fatal(err)
	}
	rev, err := cert.Revoke(lab.Key, cert.Namespace, "lab", chain[0].Serial, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	revText, err := cert.MarshalRevocationsText([]cert.Revocation{rev})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(members[0].StateDir(), "revoked.pem"), revText, 0o600); err != nil {
		t.Fatal(err)
	}
	revoked := time.Now()
	waitFor2(t, "m2 unreachable after its revocation", 75*time.Second, func() bool {
		r, err := members[1].Ping(ctx, addrs[2], "-c", "2", "-i", "0.5", "-W", "1")
		return err != nil || r.Received == 0
	})
	t.Logf("m2's membership revoked: its VM unreachable from m1 %v later", time.Since(revoked).Round(time.Second))

	// m3's ring certificate runs out: its peers let it go.
	waitFor2(t, "m3's expired certificate refused", 70*time.Second, func() bool {
		st, err := members[0].Status(ctx)
		if err != nil {
			return false
		}
		m3, _ := members[3].PeerID(ctx)
		return !slices.ContainsFunc(st.Ring.Links, func(l node.RingLink) bool { return l.PeerID == m3 }) &&
			st.Lease.Counters["admit_refused"] >= 2
	})
	if err := waitReach(ctxFor(ctx, 5*time.Second), members[3], addrs[0]); err == nil {
		t.Fatal("m3 still reaches m0 after its ring certificate expired")
	}
	if err := waitReach(ctx, members[0], addrs[1]); err != nil {
		t.Fatalf("members no longer reach each other: %v", err)
	}
}

// trustBed makes a test bed, the owner of ring "grid" and the owner of
// namespace "lab" (10.140.0.0/16, one-hour leases).
func trustBed(t *testing.T) (bed *testbed.Bed, ring, lab *testbed.Owner) {
	t.Helper()
	bed = testbed.NewT(t, testbed.Options{RingnetPath: ringnetBin})
	t.Cleanup(func() {
		if t.Failed() {
			bed.DumpLogs(30)
		}
	})
	ring, err := testbed.NewOwner(cert.Ring, "grid", netip.Prefix{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	lab, err = testbed.NewOwner(cert.Namespace, "lab", netip.MustParsePrefix("10.140.0.0/16"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return bed, ring, lab
}

func ctxFor(ctx context.Context, d time.Duration) context.Context {
	c, cancel := context.WithTimeout(ctx, d)
	context.AfterFunc(c, cancel)
	return c
}

// waitReach pings addr from v until it answers, for at most 20 s.
func waitReach(ctx context.Context, v *testbed.VM, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	return v.WaitReachable(ctx, addr)
}

// waitFor2 polls cond for up to within.
func waitFor2(t *testing.T, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// TestRingMemberForwardsOtherNamespace: a ring member outside a namespace
// still forwards the namespace's traffic, sealed end to end, which it can
// neither read nor deliver to its own VM. Members a and b cannot reach
// each other's underlay addresses (nftables in a's namespace), so every
// packet between them goes through f, a ring member of another namespace.
func TestRingMemberForwardsOtherNamespace(t *testing.T) {
	ctx := t.Context()
	bed, ring, lab := trustBed(t)
	site, err := bed.AddSite(ctx, "s", testbed.NATNone)
	if err != nil {
		t.Fatal(err)
	}
	var vms []*testbed.VM
	for _, name := range []string{"f", "a", "b"} {
		v, err := bed.AddVM(ctx, site, name)
		if err != nil {
			t.Fatal(err)
		}
		vms = append(vms, v)
	}
	f, a, b := vms[0], vms[1], vms[2]
	block := fmt.Sprintf("add table ip rnblock; "+
		"add chain ip rnblock out { type filter hook output priority 0 ; } ; add rule ip rnblock out ip daddr %[1]s drop; "+
		"add chain ip rnblock in { type filter hook input priority 0 ; } ; add rule ip rnblock in ip saddr %[1]s drop", b.UnderlayIP())
	if err := a.Exec(ctx, "nft", block); err != nil {
		t.Fatal(err)
	}

	var fCfg node.Config
	if err := testbed.Configure(ctx, f, &fCfg, ring, nil); err != nil {
		t.Fatal(err)
	}
	fCfg.Namespace = node.NamespaceConfig{Open: true, Name: "other", Subnet: "10.141.0.0/16"}
	fCfg.LogLevel = "debug"
	if err := f.StartNode(ctx, fCfg); err != nil {
		t.Fatal(err)
	}
	boot, err := f.BootstrapAddr(ctx)
	if err != nil {
		t.Fatal(err)
	}
	addrs := make(map[*testbed.VM]string)
	started := time.Now()
	for _, m := range []*testbed.VM{a, b} {
		var cfg node.Config
		if err := testbed.Configure(ctx, m, &cfg, ring, lab); err != nil {
			t.Fatal(err)
		}
		cfg.Bootstrap = []string{boot}
		cfg.Namespace.Settle = "300ms"
		cfg.LogLevel = "debug"
		if err := m.StartNode(ctx, cfg); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range []*testbed.VM{a, b} {
		st, err := waitLease(ctx, m)
		if err != nil {
			t.Fatal(err)
		}
		addrs[m] = st.Lease.Addr
	}
	t.Logf("a leased %s, b %s, %v after the nodes started", addrs[a], addrs[b], time.Since(started).Round(100*time.Millisecond))
	if err := waitReach(ctx, a, addrs[b]); err != nil {
		t.Fatalf("a cannot reach b through f: %v", err)
	}
	t.Logf("a reached b %v after the nodes started", time.Since(started).Round(100*time.Millisecond))
	before, err := f.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r, err := a.Ping(ctx, addrs[b], "-c", "50", "-i", "0.02", "-W", "1")
	if err != nil || r.Received < 49 {
		t.Fatalf("a -> b: %+v %v", r, err)
	}
	after, err := f.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fwd := after.Ring.Counters["forwarded"] - before.Ring.Counters["forwarded"]
	if fwd < 2*uint64(r.Received) {
		t.Fatalf("f forwarded %d datagrams while a and b exchanged %d pings and replies; want them all", fwd, 2*r.Received)
	}
	st, err := a.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	bID, err := b.PeerID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range st.Peers {
		if p.PeerID == bID && (p.Link != "routed" || p.Hops != 2) {
			t.Fatalf("a reaches b by %q with %d hops; want routed through f", p.Link, p.Hops)
		}
	}
	// f holds no lab lease, so neither member's VM answers it.
	if err := waitReach(ctxFor(ctx, 5*time.Second), f, addrs[a]); err == nil {
		t.Fatal("f's VM reached a member of a namespace it is not in")
	}
	t.Logf("f, outside lab, forwarded %d sealed datagrams between lab's %s and %s (%d pings answered); its own VM reaches neither",
		fwd, addrs[a], addrs[b], r.Received)
}
