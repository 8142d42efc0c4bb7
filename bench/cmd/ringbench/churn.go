package main

import (
	"context"
	"fmt"
	"time"

	"github.com/ringnet/ringnet/bench/testbed"
	"github.com/ringnet/ringnet/node"
)

// churn kills and restarts random nodes of a 32-node ring, about one
// every 3 s (at most 4 down at once), for d, while a ping starts every
// 200 ms between a random pair of nodes that have run for 5 s; it counts
// the pings between nodes that were both up from start to end.
func churn(ctx context.Context, opts testbed.Options, base node.Config, n int, d time.Duration) error {
	bed, vms, vips, err := publicVMs(ctx, opts, n, "10.128.5")
	if bed != nil {
		defer bed.Close()
	}
	if err != nil {
		return err
	}
	if err := startChurnRing(ctx, base, vms, vips); err != nil {
		return err
	}
	fmt.Printf("%d-node ring consistent; churning for %v\n", n, d)
	res, err := testbed.Churn(ctx, vms, vips, testbed.ChurnOptions{
		Duration: d, Every: 3 * time.Second, MaxDown: 4, Settle: 5 * time.Second,
		PingEvery: 200 * time.Millisecond, Seed: uint64(time.Now().UnixNano()),
		Logf: opts.Logf,
	})
	if err != nil {
		return err
	}
	fmt.Printf("%d kills, %d restarts; %d of %d pings between live nodes delivered, %d answered twice\n",
		res.Kills, res.Restarts, res.Delivered, res.Pings, res.Duplicates)
	fmt.Printf("lost: %d where one end had started within 20 s, %d between older nodes; %d between a pair with none delivered since both started\n",
		res.LostYoung, res.LostOld, res.LostFresh)
	start := time.Now()
	if err := waitConsistent(ctx, vms, 2*time.Minute); err != nil {
		return err
	}
	fmt.Printf("ring consistent %v after the churn ended\n", time.Since(start).Round(100*time.Millisecond))
	fmt.Printf("churn: delivered_pct=%.2f duplicates=%d\n", res.DeliveredPct(), res.Duplicates)
	return nil
}

// startChurnRing starts a node on each VM, each with the first three as
// its bootstrap nodes (so that a restarted node has one up to join
// through), and waits until the ring is consistent.
func startChurnRing(ctx context.Context, base node.Config, vms []*testbed.VM, vips []string) error {
	for _, vm := range vms[:3] {
		b, err := vm.BootstrapAddr(ctx)
		if err != nil {
			return err
		}
		base.Bootstrap = append(base.Bootstrap, b)
	}
	if err := testbed.StartRing(ctx, base, vms, withPrefix(vips)); err != nil {
		return err
	}
	return waitConsistent(ctx, vms, 2*time.Minute)
}
