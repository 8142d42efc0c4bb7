package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/ringnet/ringnet/bench/testbed"
	"github.com/ringnet/ringnet/node"
)

// dhcpBench measures how VMs get their addresses from their nodes'
// leases:
//
//	lease_ms    the median over boots of a VM whose node keeps running
//	            (and its lease with it) of the time from starting its DHCP
//	            client, dhclient -1, to a usable address: configured, and
//	            a ping to a peer VM at its known address answered
//	boot32_ms   the time from starting n nodes at once, every one
//	            preferring the same address of a /26, and their VMs'
//	            udhcpc, to every VM having an address
//	duplicates  the addresses that more than one of those n VMs held or
//	            was offered (must be 0)
func dhcpBench(ctx context.Context, opts testbed.Options, base node.Config, boots, n int) error {
	leaseMs, err := dhcpLease(ctx, opts, base, boots)
	if err != nil {
		return fmt.Errorf("lease: %w", err)
	}
	boot, dups, err := dhcpBoot(ctx, opts, base, n)
	if err != nil {
		return fmt.Errorf("boot: %w", err)
	}
	fmt.Printf("dhcp: lease_ms=%.0f boot%d_ms=%d duplicates=%d\n", leaseMs, n, boot.Milliseconds(), dups)
	if dups > 0 {
		return fmt.Errorf("%d addresses went to more than one VM", dups)
	}
	return nil
}

// dhcpLease boots a's DHCP client again and again, each time from no
// lease file (a fresh VM: DISCOVER, OFFER, REQUEST, ACK), and returns the
// median time to a usable address in milliseconds. Between boots the
// client releases the address and the interface is flushed; a's node
// keeps running, and must keep its lease.
func dhcpLease(ctx context.Context, opts testbed.Options, base node.Config, boots int) (float64, error) {
	bed, vms, _, err := publicVMs(ctx, opts, 2, "10.128.6")
	if bed != nil {
		defer bed.Close()
	}
	if err != nil {
		return 0, err
	}
	a, b := vms[0], vms[1]
	cfgB := base
	cfgB.TAP.Address = vipB + "/16"
	if err := b.StartNode(ctx, cfgB); err != nil {
		return 0, err
	}
	boot, err := b.BootstrapAddr(ctx)
	if err != nil {
		return 0, err
	}
	no := false
	cfgA := base
	cfgA.TAP.Address = vipA + "/16"
	cfgA.TAP.ConfigureAddress = &no
	cfgA.Bootstrap = []string{boot}
	if err := a.StartNode(ctx, cfgA); err != nil {
		return 0, err
	}
	st, err := a.WaitLease(ctx)
	if err != nil {
		return 0, err
	}
	fmt.Printf("a's node leased %s; its VM boots %d times\n", st.Lease.Addr, boots)

	dir := filepath.Join(a.Dir(), "dhclient")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, err
	}
	script, leases, pid := filepath.Join(dir, "script"), filepath.Join(dir, "leases"), filepath.Join(dir, "pid")
	if err := testbed.WriteDHCPScript(testbed.Dhclient, script, filepath.Join(dir, "log")); err != nil {
		return 0, err
	}
	dhclient := func(args ...string) error {
		args = append(append([]string{"dhclient"}, args...), "-sf", script, "-lf", leases, "-pf", pid, testbed.TAPName)
		out, err := a.Command(ctx, args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	var times []float64
	for i := range boots {
		if err := os.Remove(leases); err != nil && !errors.Is(err, os.ErrNotExist) {
			return 0, err
		}
		start := time.Now()
		// -1: one try; it returns once bound, leaving a daemon that
		// renews.
		if err := dhclient("-1"); err != nil {
			return 0, err
		}
		bound := time.Since(start)
		took, err := firstPing(ctx, a, vipB, start, 30*time.Second)
		if err != nil {
			return 0, fmt.Errorf("boot %d: %w", i+1, err)
		}
		addrs, err := a.IfaceAddrs(ctx, testbed.TAPName)
		if err != nil {
			return 0, err
		}
		if len(addrs) != 1 || addrs[0].Addr().String() != st.Lease.Addr {
			return 0, fmt.Errorf("boot %d: %s has %v, the node leased %s", i+1, testbed.TAPName, addrs, st.Lease.Addr)
		}
		times = append(times, float64(took.Milliseconds()))
		fmt.Printf("boot %2d: bound %v after %d ms, usable after %d ms\n", i+1, addrs[0], bound.Milliseconds(), took.Milliseconds())
		if err := dhclient("-r"); err != nil {
			return 0, err
		}
		if err := a.Exec(ctx, "ip", "addr", "flush", "dev", testbed.TAPName); err != nil {
			return 0, err
		}
		now, err := a.Status(ctx)
		if err != nil {
			return 0, err
		}
		if now.Lease.Addr != st.Lease.Addr || now.Lease.Claims != st.Lease.Claims {
			return 0, fmt.Errorf("boot %d: the node's lease went from %s (claims %d) to %q (claims %d)",
				i+1, st.Lease.Addr, st.Lease.Claims, now.Lease.Addr, now.Lease.Claims)
		}
	}
	return median(times), nil
}

// dhcpBoot starts n nodes at once whose claims collide (they all prefer
// one address of a /26), with a udhcpc in each VM, and returns the time
// from the first node's start to the last VM's address, and the number
// of addresses that more than one VM held or was offered.
func dhcpBoot(ctx context.Context, opts testbed.Options, base node.Config, n int) (time.Duration, int, error) {
	bed, vms, _, err := publicVMs(ctx, opts, n, "10.130.0")
	if bed != nil {
		defer bed.Close()
	}
	if err != nil {
		return 0, 0, err
	}
	no := false
	cfg := base
	cfg.Namespace.Subnet = "10.130.0.0/26"
	cfg.TAP.ConfigureAddress = &no
	prefer := make([]string, n)
	for i := range prefer {
		prefer[i] = "10.130.0.10/26"
	}
	start := time.Now()
	if err := testbed.StartRingAtOnce(ctx, cfg, vms, prefer); err != nil {
		return 0, 0, err
	}
	fmt.Printf("%d nodes preferring 10.130.0.10/26 started at once in %d ms\n", n, time.Since(start).Milliseconds())
	clients := make([]*testbed.DHCPClient, n)
	for i, vm := range vms {
		dir := filepath.Join(vm.Dir(), "udhcpc")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return 0, 0, err
		}
		if clients[i], err = vm.StartUdhcpc(dir); err != nil {
			return 0, 0, err
		}
	}
	var took time.Duration
	reported := 0
	for {
		bound := 0
		for _, c := range clients {
			if _, ok := c.Addr(); ok {
				bound++
			}
		}
		if bound == n {
			took = time.Since(start)
			break
		}
		if elapsed := time.Since(start); elapsed > 2*time.Minute {
			return 0, 0, fmt.Errorf("%d of %d VMs have no address after %v", n-bound, n, elapsed.Round(time.Second))
		}
		if bound >= reported+8 {
			fmt.Printf("%2d of %d VMs bound after %d ms\n", bound, n, time.Since(start).Milliseconds())
			reported = bound - bound%8
		}
		select {
		case <-ctx.Done():
			return 0, 0, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	fmt.Printf("all %d VMs bound after %d ms\n", n, took.Milliseconds())

	seen := make(map[*testbed.VM][]string)
	var claims, lost, most uint64
	for i, vm := range vms {
		st, err := vm.Status(ctx)
		if err != nil {
			return 0, 0, err
		}
		addr, _ := clients[i].Addr()
		if addr.Addr().String() != st.Lease.Addr {
			fmt.Printf("%s: the VM has %v, its node holds %q\n", vm.Name(), addr, st.Lease.Addr)
		}
		seen[vm] = append(testbed.LeaseAddrs(st), addr.Addr().String())
		claims += st.Lease.Claims
		lost += st.Lease.Lost
		most = max(most, st.Lease.Claims)
	}
	shared := testbed.SharedAddrs(seen)
	addrs := make([]string, 0, len(shared))
	for a := range shared {
		addrs = append(addrs, a)
	}
	slices.Sort(addrs)
	for _, a := range addrs {
		fmt.Printf("%s went to %v\n", a, shared[a])
	}
	fmt.Printf("claims %d in all (most %d by one node), leases lost %d\n", claims, most, lost)
	return took, len(shared), nil
}
