package main

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/ringnet/ringnet/bench/testbed"
	"github.com/ringnet/ringnet/node"
)

// contactCase is one way a pair can meet: what was done to it before the
// ping.
type contactCase struct {
	name string
	// prepare readies the pair a→b; it restarts a node where the case
	// asks for one.
	prepare func(ctx context.Context, a, b *testbed.VM, bVIP string) error
}

// contact measures the first ping between two VMs of a 32-node ring, one
// ping with the 2 s wait the churn benchmark gives it, in the cases that
// churn makes common: two nodes that never spoke, a pair whose far end
// restarted since they last spoke, and one whose near end did. For each
// lost ping it reports how long until a ping got through, and what the
// pinging node counted meanwhile.
func contact(ctx context.Context, opts testbed.Options, base node.Config, n, trials int) error {
	bed, vms, vips, err := publicVMs(ctx, opts, n, "10.128.6")
	if bed != nil {
		defer bed.Close()
	}
	if err != nil {
		return err
	}
	if err := startChurnRing(ctx, base, vms, vips); err != nil {
		return err
	}
	// Just after the boot, DHT lookups still fill buckets.
	time.Sleep(30 * time.Second)
	fmt.Printf("%d-node ring consistent\n", n)

	const settle = 5 * time.Second // as the churn benchmark's
	restart := func(ctx context.Context, vm *testbed.VM) error {
		if err := vm.StopNode(syscall.SIGKILL); err != nil {
			return err
		}
		if err := vm.StartNode(ctx, vm.NodeConfig()); err != nil {
			return err
		}
		time.Sleep(settle)
		return nil
	}
	spoke := func(ctx context.Context, a *testbed.VM, bVIP string) error {
		_, err := firstPing(ctx, a, bVIP, time.Now(), 20*time.Second)
		return err
	}
	cases := []contactCase{
		{"new pair", func(context.Context, *testbed.VM, *testbed.VM, string) error { return nil }},
		{"spoke before", func(ctx context.Context, a, b *testbed.VM, bVIP string) error {
			return spoke(ctx, a, bVIP)
		}},
		{"far end restarted", func(ctx context.Context, a, b *testbed.VM, bVIP string) error {
			if err := spoke(ctx, a, bVIP); err != nil {
				return err
			}
			return restart(ctx, b)
		}},
		{"near end restarted", func(ctx context.Context, a, b *testbed.VM, bVIP string) error {
			if err := spoke(ctx, a, bVIP); err != nil {
				return err
			}
			return restart(ctx, a)
		}},
	}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 11))
	used := make(map[[2]int]bool)
	var summary []string
	for _, c := range cases {
		delivered := 0
		var recover []time.Duration
		for t := range trials {
			var ai, bi int
			for {
				ai, bi = rng.IntN(n), rng.IntN(n)
				if ai != bi && !used[[2]int{min(ai, bi), max(ai, bi)}] {
					break
				}
			}
			used[[2]int{min(ai, bi), max(ai, bi)}] = true
			a, b := vms[ai], vms[bi]
			if err := c.prepare(ctx, a, b, vips[bi]); err != nil {
				return fmt.Errorf("%s, %s→%s: %w", c.name, a.Name(), b.Name(), err)
			}
			before, _ := a.Status(ctx)
			start := time.Now()
			r, err := a.Ping(ctx, vips[bi], "-c", "1", "-W", "2")
			if err == nil && r.Received > 0 {
				delivered++
				fmt.Printf("%-18s %2d %s→%s: delivered, %.1f ms\n", c.name, t+1, a.Name(), b.Name(), r.AvgRTTMs)
				continue
			}
			took, err := firstPing(ctx, a, vips[bi], start, 30*time.Second)
			if err != nil {
				return fmt.Errorf("%s: %w", c.name, err)
			}
			recover = append(recover, took)
			after, _ := a.Status(ctx)
			fmt.Printf("%-18s %2d %s→%s: LOST; a ping got through %v after the first; %s\n",
				c.name, t+1, a.Name(), b.Name(), took.Round(10*time.Millisecond), counterDiff(before, after))
		}
		fmt.Printf("%s: %d of %d delivered; the lost got through after %v\n", c.name, delivered, trials, recover)
		summary = append(summary, fmt.Sprintf("%s=%d/%d", strings.ReplaceAll(c.name, " ", "_"), delivered, trials))
	}
	fmt.Printf("contact: %s\n", strings.Join(summary, " "))
	return nil
}

// counterDiff lists the lease and drop counters that changed from before
// to after.
func counterDiff(before, after node.Status) string {
	var out []string
	diff := func(prefix string, b, a map[string]uint64) {
		for _, k := range slices.Sorted(maps.Keys(a)) {
			if d := a[k] - b[k]; a[k] > b[k] {
				out = append(out, fmt.Sprintf("%s%s+%d", prefix, k, d))
			}
		}
	}
	diff("", before.Lease.Counters, after.Lease.Counters)
	diff("drop:", before.Drops, after.Drops)
	return strings.Join(out, " ")
}
