package main

import (
	"context"
	"fmt"
	"slices"
	"syscall"
	"time"

	"github.com/ringnet/ringnet/bench/testbed"
	"github.com/ringnet/ringnet/node"
	"github.com/ringnet/ringnet/routing"
)

// shortcutBench measures shortcuts in a ring of six public nodes with two
// VMs behind port-preserving NATs and two behind NATs that map every
// destination anew:
//
//   - time to direct: from a flow's first packet to its first on the
//     punched path between the two VMs behind port-preserving NATs (the
//     node's own time_to_direct_ms), median over flows;
//   - single-stream TCP (iperf3) on that punched path, on a multi-hop ring
//     path between two public VMs whose nodes never ask for shortcuts,
//     through the ring between the two VMs behind the other NATs (no
//     shortcut can form: the ring relays), and on the raw underlay
//     between two public VMs, the baseline of the ratios.
func shortcutBench(ctx context.Context, opts testbed.Options, base node.Config, flows, runs, seconds int) error {
	bed, err := testbed.New(ctx, opts)
	if err != nil {
		return err
	}
	defer bed.Close()
	var pub []*testbed.VM
	for i := range 2 {
		site, err := bed.AddSite(ctx, fmt.Sprintf("pub%d", i), testbed.NATNone)
		if err != nil {
			return err
		}
		for j := range 3 {
			vm, err := bed.AddVM(ctx, site, fmt.Sprintf("p%d%d", i, j))
			if err != nil {
				return err
			}
			pub = append(pub, vm)
		}
	}
	natted := func(kind testbed.NATKind, name string) (*testbed.VM, error) {
		site, err := bed.AddSite(ctx, name, kind)
		if err != nil {
			return nil, err
		}
		return bed.AddVM(ctx, site, name+"vm")
	}
	var nat []*testbed.VM
	for _, n := range []struct {
		kind testbed.NATKind
		name string
	}{{testbed.NATCone, "cone0"}, {testbed.NATCone, "cone1"}, {testbed.NATSymmetric, "sym0"}, {testbed.NATSymmetric, "sym1"}} {
		vm, err := natted(n.kind, n.name)
		if err != nil {
			return err
		}
		nat = append(nat, vm)
	}

	// Public nodes never ask for shortcuts (they answer them): their
	// pairs stay on the ring. The NATed ones ask, and drop an idle
	// shortcut after 3 s, so that each flow starts on the ring again.
	pubCfg := base
	pubCfg.Shortcuts = node.ShortcutConfig{Threshold: 1e9}
	natCfg := base
	natCfg.Shortcuts = node.ShortcutConfig{IdleTimeout: "3s"}
	vms := append(slices.Clone(pub), nat...)
	// cone0 and cone1 apart on the ring: near neighbours behind NATs
	// that keep ports link directly (docs/nat.md), and their flows must
	// start on the ring.
	keys, err := testbed.KeysApart(len(vms), len(pub), len(pub)+1, routing.NearPerSide)
	if err != nil {
		return err
	}
	for i, vm := range vms {
		if err := vm.SetIdentity(keys[i]); err != nil {
			return err
		}
	}
	vips := make([]string, len(vms))
	for i := range vms {
		vips[i] = fmt.Sprintf("10.128.3.%d", i+1)
	}
	if err := testbed.StartRing(ctx, pubCfg, pub, withPrefix(vips[:len(pub)])); err != nil {
		return err
	}
	boot, err := pub[0].BootstrapAddr(ctx)
	if err != nil {
		return err
	}
	for i, vm := range nat {
		cfg := natCfg
		cfg.TAP.Address = vips[len(pub)+i] + "/16"
		cfg.Bootstrap = []string{boot}
		if err := vm.StartNode(ctx, cfg); err != nil {
			return err
		}
	}
	for _, vm := range nat {
		if err := waitStatus(ctx, vm, 30*time.Second, func(st node.Status) bool {
			return len(st.Ring.Links) > 0 && st.NAT.Mapping != "unknown"
		}); err != nil {
			return fmt.Errorf("%s never joined: %w", vm.Name(), err)
		}
	}
	// Two nodes next to each other on the ring behind NATs that change
	// ports cannot link (no tunnel links yet), so the ring may stay
	// short of consistent.
	if err := waitConsistent(ctx, vms, 30*time.Second); err != nil {
		fmt.Printf("warning: %v\n", err)
	}
	fmt.Printf("ring of %d public nodes and 4 behind NATs up\n", len(pub))
	c0, c1, s0, s1 := nat[0], nat[1], nat[2], nat[3]
	c1VIP, s1VIP := vips[len(pub)+1], vips[len(pub)+3]

	// Time to direct, flow by flow.
	var ttd []float64
	for i := range flows {
		if err := waitStatus(ctx, c0, 30*time.Second, func(st node.Status) bool { return linkTo(st, c1VIP) != "punched" }); err != nil {
			return fmt.Errorf("flow %d: the last shortcut never went idle: %w", i+1, err)
		}
		before, err := c0.Status(ctx)
		if err != nil {
			return err
		}
		fctx, stop := context.WithCancel(ctx)
		ping, err := c0.Start("ping", "-q", "-i", "0.01", "-c", "1000", c1VIP)
		if err != nil {
			stop()
			return err
		}
		var st node.Status
		err = waitStatus(fctx, c0, 10*time.Second, func(s node.Status) bool {
			st = s
			return linkTo(s, c1VIP) == "punched" && s.Ring.Counters["time_to_direct_n"] > before.Ring.Counters["time_to_direct_n"]
		})
		ping.Stop(syscall.SIGINT, time.Second)
		stop()
		if err != nil {
			return fmt.Errorf("flow %d: no punched shortcut: %w", i+1, err)
		}
		ms := float64(st.Ring.Counters["time_to_direct_ms"])
		ttd = append(ttd, ms)
		fmt.Printf("flow %2d: punched shortcut %s -> %s after %.0f ms\n", i+1, c0.Name(), c1.Name(), ms)
	}

	iperf := func(from, to *testbed.VM, addr string, warm func() error) (float64, error) {
		var gbps []float64
		for range runs {
			if warm != nil {
				if err := warm(); err != nil {
					return 0, err
				}
			}
			srv, err := to.StartIperf3Server(true)
			if err != nil {
				return 0, err
			}
			r, err := from.Iperf3(ctx, addr, "-t", fmt.Sprint(seconds))
			srv.Stop(syscall.SIGTERM, time.Second)
			if err != nil {
				return 0, err
			}
			gbps = append(gbps, r.BitsPerSecond/1e9)
		}
		return median(gbps), nil
	}
	raw, err := iperf(pub[0], pub[3], pub[3].UnderlayIP().String(), nil)
	if err != nil {
		return err
	}
	fmt.Printf("raw underlay %s -> %s: %.2f Gbit/s\n", pub[0].Name(), pub[3].Name(), raw)

	direct, err := iperf(c0, c1, c1VIP, func() error {
		if _, err := c0.Ping(ctx, c1VIP, "-i", "0.01", "-c", "100"); err != nil {
			return err
		}
		return waitStatus(ctx, c0, 10*time.Second, func(st node.Status) bool { return linkTo(st, c1VIP) == "punched" })
	})
	if err != nil {
		return err
	}
	fmt.Printf("punched shortcut %s -> %s: %.2f Gbit/s\n", c0.Name(), c1.Name(), direct)

	// A public pair that the ring links only over several hops.
	from, to, toVIP, err := routedPair(ctx, pub, vips)
	if err != nil {
		return err
	}
	ring, err := iperf(from, to, toVIP, nil)
	if err != nil {
		return err
	}
	st, err := from.Status(ctx)
	if err != nil {
		return err
	}
	fmt.Printf("ring path %s -> %s (%s, %d hops): %.2f Gbit/s\n", from.Name(), to.Name(), linkTo(st, toVIP), hopsTo(st, toVIP), ring)

	relay, err := iperf(s0, s1, s1VIP, nil)
	if err != nil {
		return err
	}
	if st, err = s0.Status(ctx); err != nil {
		return err
	}
	fmt.Printf("relayed by the ring %s -> %s (%s, %d hops; NAT %s): %.2f Gbit/s\n",
		s0.Name(), s1.Name(), linkTo(st, s1VIP), hopsTo(st, s1VIP), st.NAT.Mapping, relay)

	fmt.Printf("shortcut: time_to_direct_ms=%.0f direct_gbps=%.2f direct_ratio=%.3f ring_ratio=%.3f relay_ratio=%.3f\n",
		median(ttd), direct, direct/raw, ring/raw, relay/raw)
	return nil
}

// linkTo is how st's node reaches the VM at vip ("" when it has no
// session with it).
func linkTo(st node.Status, vip string) string {
	for _, p := range st.Peers {
		if p.VirtualIP == vip {
			return p.Link
		}
	}
	return ""
}

func hopsTo(st node.Status, vip string) int {
	for _, p := range st.Peers {
		if p.VirtualIP == vip {
			return p.Hops
		}
	}
	return 0
}

// routedPair finds two of the VMs whose nodes have no link to each other.
func routedPair(ctx context.Context, vms []*testbed.VM, vips []string) (from, to *testbed.VM, toVIP string, err error) {
	ids := make([]string, len(vms))
	for i, vm := range vms {
		if ids[i], err = vm.PeerID(ctx); err != nil {
			return nil, nil, "", err
		}
	}
	for i, vm := range vms {
		st, err := vm.Status(ctx)
		if err != nil {
			return nil, nil, "", err
		}
		for j := range vms {
			if j == i || slices.ContainsFunc(st.Ring.Links, func(l node.RingLink) bool { return l.PeerID == ids[j] }) {
				continue
			}
			if l := linkTo(st, vips[j]); l != "" && l != "routed" {
				continue // a direct path outside the ring's links
			}
			if err := vm.WaitReachable(ctx, vips[j]); err != nil {
				return nil, nil, "", err
			}
			if st, err := vm.Status(ctx); err != nil || linkTo(st, vips[j]) != "routed" {
				continue
			}
			return vm, vms[j], vips[j], nil
		}
	}
	return nil, nil, "", fmt.Errorf("no pair of nodes reaches each other over several hops")
}

// waitStatus polls vm's status until cond holds.
func waitStatus(ctx context.Context, vm *testbed.VM, within time.Duration, cond func(node.Status) bool) error {
	deadline := time.Now().Add(within)
	for {
		st, err := vm.Status(ctx)
		if err == nil && cond(st) {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%s: timed out after %v", vm.Name(), within)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
