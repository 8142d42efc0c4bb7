package integration

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ringnet/ringnet/bench/testbed"
	"github.com/ringnet/ringnet/node"
)

// leaseSubnet is the namespace subnet of the lease tests: a /26, 61
// addresses for VMs once the gateway has the one before the broadcast.
const leaseSubnet = "10.130.0.0/26"

// TestLeasesUniqueWhenClaimsCollide boots 32 nodes at once that all
// prefer the same address, and their VMs' DHCP clients with them: every
// VM ends up with an address of its own, which its node holds, no
// address was ever offered to two VMs, and the VMs reach each other.
func TestLeasesUniqueWhenClaimsCollide(t *testing.T) {
	const n = 32
	bed, vms := newRingBed(t, n, 4)
	defer func() {
		if t.Failed() {
			bed.DumpLogs(30)
		}
	}()
	ctx := t.Context()
	no := false
	base := node.Config{
		LogLevel:  "debug",
		Namespace: node.NamespaceConfig{Subnet: leaseSubnet},
		TAP:       node.TAPConfig{ConfigureAddress: &no},
	}
	var tvms []*testbed.VM
	var prefer []string
	for _, v := range vms {
		tvms = append(tvms, v.vm)
		prefer = append(prefer, "10.130.0.10/26") // every claim collides
	}
	start := time.Now()
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	err := testbed.StartRingAtOnce(sctx, base, tvms, prefer)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	started := time.Since(start)
	clients := make([]*testbed.DHCPClient, n)
	for i, v := range vms {
		dir := t.TempDir()
		if clients[i], err = v.vm.StartUdhcpc(dir); err != nil {
			t.Fatal(err)
		}
	}
	bound := make([]time.Duration, n)
	deadline := time.Now().Add(90 * time.Second)
	for left := n; left > 0; {
		if time.Now().After(deadline) {
			var missing []string
			for i, c := range clients {
				if bound[i] == 0 {
					st, _ := vms[i].vm.Status(ctx)
					missing = append(missing, fmt.Sprintf("%s (lease %q, claims %d)", vms[i].vm.Name(), st.Lease.Addr, st.Lease.Claims))
					t.Logf("%s: udhcpc: %s", vms[i].vm.Name(), c.Output())
				}
			}
			t.Fatalf("%d VMs bound no address within 90 s: %v", left, missing)
		}
		for i, c := range clients {
			if _, ok := c.Addr(); ok && bound[i] == 0 {
				bound[i] = time.Since(start)
				left--
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("boot: %d nodes started at once in %v; every VM bound an address %v after the first node started (median VM %v)",
		n, started.Round(time.Millisecond), slices.Max(bound).Round(time.Millisecond), medianDuration(bound).Round(time.Millisecond))

	checkLeases := func(when string) {
		t.Helper()
		sub := netip.MustParsePrefix(leaseSubnet)
		held := make(map[string]string)
		seen := make(map[*testbed.VM][]string)
		var claims, lost, most uint64
		for i, v := range vms {
			st, err := v.vm.Status(ctx)
			if err != nil {
				t.Fatal(err)
			}
			addr, _ := clients[i].Addr()
			iface, err := v.vm.IfaceAddrs(ctx, testbed.TAPName)
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case !addr.IsValid() || addr.Addr().String() != st.Lease.Addr:
				t.Errorf("%s: %s: the client has %v, the node holds %q", when, v.vm.Name(), addr, st.Lease.Addr)
			case len(iface) != 1 || iface[0] != addr:
				t.Errorf("%s: %s: %s has %v, the client configured %v", when, v.vm.Name(), testbed.TAPName, iface, addr)
			case addr.Bits() != sub.Bits() || !sub.Contains(addr.Addr()):
				t.Errorf("%s: %s: %v is not in %v", when, v.vm.Name(), addr, sub)
			case held[st.Lease.Addr] != "":
				t.Errorf("%s: %s and %s both hold %s", when, held[st.Lease.Addr], v.vm.Name(), st.Lease.Addr)
			}
			held[st.Lease.Addr] = v.vm.Name()
			seen[v.vm] = testbed.LeaseAddrs(st)
			v.vip, v.id = st.Lease.Addr, st.PeerID
			claims += st.Lease.Claims
			lost += st.Lease.Lost
			most = max(most, st.Lease.Claims)
		}
		for addr, names := range testbed.SharedAddrs(seen) {
			t.Errorf("%s: %s was held or offered by %d VMs: %v", when, addr, len(names), names)
		}
		t.Logf("%s: %d distinct addresses; claims %d in all (most %d by one node), leases lost %d",
			when, len(held), claims, most, lost)
	}
	checkLeases("after boot")
	if t.Failed() {
		return
	}

	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 32))
	failed, retried := pingPairsAt(t, vms, 100, rng)
	if len(failed) > 0 {
		t.Fatalf("%d of 100 pairs never got all 3 replies: %v", len(failed), failed)
	}
	t.Logf("100 random pairs pinged at their leased addresses; %d needed a second run", retried)
	checkLeases("after the pings")
	t.Logf("whole test: %v", time.Since(start).Round(time.Millisecond))
}

// pingPairsAt pings between random ordered pairs of the VMs at their
// leased addresses, 16 pairs at a time: a pair passes when one of up to 4
// runs of 3 pings gets every reply (its first packet may wait for an
// address lookup, and be lost). It returns the pairs that never passed,
// and how many passed only on a later run.
func pingPairsAt(t *testing.T, vms []*ringVM, pairs int, rng *rand.Rand) (failed []string, retried int) {
	t.Helper()
	type pair struct{ a, b *ringVM }
	var ps []pair
	for len(ps) < pairs {
		a, b := vms[rng.IntN(len(vms))], vms[rng.IntN(len(vms))]
		if a != b {
			ps = append(ps, pair{a, b})
		}
	}
	var mu sync.Mutex
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for _, p := range ps {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			var last string
			for run := range 4 {
				r, err := p.a.vm.Ping(t.Context(), p.b.vip, "-c", "3", "-i", "0.2", "-W", "2")
				if err == nil && r.Received == r.Transmitted {
					if run > 0 {
						mu.Lock()
						retried++
						mu.Unlock()
					}
					return
				}
				last = fmt.Sprintf("%d of %d replies, %v", r.Received, r.Transmitted, err)
			}
			mu.Lock()
			failed = append(failed, fmt.Sprintf("%s -> %s: %s\n%s%s", p.a.vip, p.b.vip, last, describeBinding(t, p.a, p.b), describePeer(t, p.a, p.b)))
			mu.Unlock()
		})
	}
	wg.Wait()
	return failed, retried
}

// describeBinding says which peers a's node takes b's address for, and
// b's node a's, for a failure message: each should be the other's node.
func describeBinding(t *testing.T, a, b *ringVM) string {
	var out string
	for _, pair := range [2][2]*ringVM{{a, b}, {b, a}} {
		st, err := pair[0].vm.Status(context.Background())
		if err != nil {
			return err.Error()
		}
		var to []string
		for _, p := range st.Peers {
			if p.VirtualIP == pair[1].vip {
				to = append(to, p.PeerID)
			}
		}
		out += fmt.Sprintf("  %s's node binds %s to %v; its holder is %s\n", pair[0].vip, pair[1].vip, to, pair[1].id)
	}
	return out
}

func medianDuration(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// TestLeaseSurvivesRestartAndExpires checks a lease's life in a small
// ring with 12 s leases: a node that restarts from its state directory
// gets its address back, resuming its saved lease; once it is killed, its address stays its own
// until the lease expires (a new VM that prefers it gets another), and
// then goes to the next VM that asks for it.
func TestLeaseSurvivesRestartAndExpires(t *testing.T) {
	const leaseTime = 12 * time.Second
	// v0..v2 keep the ring; v3 is A, v4 is C, v5 is D.
	bed, vms := newRingBed(t, 6, 3)
	defer func() {
		if t.Failed() {
			bed.DumpLogs(40)
		}
	}()
	ctx := t.Context()
	base := node.Config{
		LogLevel:  "debug",
		Namespace: node.NamespaceConfig{Subnet: leaseSubnet},
		TAP:       node.TAPConfig{LeaseTime: leaseTime.String()},
	}
	var ring []*testbed.VM
	for _, v := range vms[:4] {
		ring = append(ring, v.vm)
	}
	// No preferred addresses: each node picks its own.
	if err := testbed.StartRing(ctx, base, ring, make([]string, len(ring))); err != nil {
		t.Fatal(err)
	}
	a, c, d := vms[3].vm, vms[4].vm, vms[5].vm
	st, err := a.WaitLease(ctx)
	if err != nil {
		t.Fatal(err)
	}
	x := st.Lease.Addr
	t.Logf("A leased %s, expiring %s", x, st.Lease.Expires)

	// A restart from the same state directory gets the same address.
	restart := time.Now()
	if err := a.RestartNode(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err = a.WaitLease(ctx); err != nil {
		t.Fatal(err)
	}
	if st.Lease.Addr != x {
		t.Fatalf("after a restart A holds %s, want %s", st.Lease.Addr, x)
	}
	if st.Lease.Claims != 0 {
		t.Errorf("after a restart A claimed its address %d times, want its saved lease resumed without a claim", st.Lease.Claims)
	}
	t.Logf("A restarted and holds %s again after %v", x, time.Since(restart).Round(time.Millisecond))

	// Killed, A renews no more: its lease expires within leaseTime.
	boot, err := vms[0].vm.BootstrapAddr(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	expiresBy := killed.Add(leaseTime)
	prefer := func(vm *testbed.VM) {
		t.Helper()
		cfg := base
		cfg.TAP.Address = x + "/26"
		cfg.Bootstrap = []string{boot}
		if err := vm.StartNode(ctx, cfg); err != nil {
			t.Fatal(err)
		}
	}
	prefer(c)
	stc, err := c.WaitLease(ctx)
	if err != nil {
		t.Fatal(err)
	}
	y := stc.Lease.Addr
	if y == x {
		t.Fatalf("C got %s %v after A was killed, while A's lease still ran (until %v at the latest)",
			x, time.Since(killed).Round(time.Millisecond), expiresBy.Format(time.TimeOnly))
	}
	t.Logf("C, which prefers %s, got %s %v after A was killed", x, y, time.Since(killed).Round(time.Millisecond))
	// C keeps y until A's lease is over for sure.
	for time.Now().Before(expiresBy.Add(2 * time.Second)) {
		if stc, err = c.Status(ctx); err != nil {
			t.Fatal(err)
		}
		if stc.Lease.Addr != y {
			t.Fatalf("C's lease went from %s to %q %v after A was killed", y, stc.Lease.Addr, time.Since(killed).Round(time.Millisecond))
		}
		time.Sleep(500 * time.Millisecond)
	}

	// Now x is free: D, which prefers it too, gets it.
	prefer(d)
	std, err := d.WaitLease(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if std.Lease.Addr != x {
		t.Fatalf("D, which prefers %s, got %s %v after A was killed (its lease ended by %v)", x, std.Lease.Addr,
			time.Since(killed).Round(time.Millisecond), expiresBy.Format(time.TimeOnly))
	}
	t.Logf("D got %s %v after A was killed (A's lease time %v)", x, time.Since(killed).Round(time.Millisecond), leaseTime)
	if stc, err = c.Status(ctx); err != nil || stc.Lease.Addr != y {
		t.Fatalf("C's lease: %q %v; want still %s", stc.Lease.Addr, err, y)
	}
	if err := vms[0].vm.WaitReachable(ctx, x); err != nil {
		t.Fatalf("D is not reachable at %s: %v", x, err)
	}
}
