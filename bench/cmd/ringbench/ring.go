package main

import (
	"context"
	"fmt"
	"io"
	"runtime/debug"
	"time"

	"github.com/ringnet/ringnet/bench/sim"
)

// ringSizes are the ring sizes the ring benchmark simulates.
var ringSizes = []int{100, 1000, 10000, 100000}

// ring runs the ring simulator (bench/sim, the real routing code over
// simulated nodes) at each size and prints a table, then one summary line
// for the largest ring. It needs neither root nor a test bed.
func ring(ctx context.Context, w io.Writer, seed uint64) error {
	// The simulator allocates much and keeps most of it: collecting less
	// often saves a third of its time for a few hundred MiB more.
	defer debug.SetGCPercent(debug.SetGCPercent(400))

	fmt.Fprintf(w, "%8s %10s %9s %15s %10s %12s %8s\n", "N", "mean_hops", "p99_hops", "links_per_node", "join_msgs", "heal_rounds", "time")
	var last sim.Result
	for _, n := range ringSizes {
		if err := ctx.Err(); err != nil {
			return err
		}
		start := time.Now()
		res, err := sim.Run(sim.Config{N: n, Seed: seed, Pairs: max(10000, n/10), FailFrac: 0.1, MaxHealRounds: 50})
		if err != nil {
			return fmt.Errorf("ring n=%d: %w", n, err)
		}
		if res.RouteFailures > 0 {
			return fmt.Errorf("ring n=%d: %d routes not delivered", n, res.RouteFailures)
		}
		heal := fmt.Sprint(res.HealRounds)
		if res.HealRounds < 0 {
			heal = "never"
		}
		fmt.Fprintf(w, "%8d %10.2f %9.2f %15.2f %10.1f %12s %8s\n",
			n, res.MeanHops, res.P99Hops, res.LinksPerNode, res.JoinMsgs, heal, time.Since(start).Round(time.Second))
		last = res
	}
	fmt.Fprintf(w, "ring: n=%d mean_hops=%.2f p99_hops=%.2f links_per_node=%.2f join_msgs=%.1f\n",
		last.N, last.MeanHops, last.P99Hops, last.LinksPerNode, last.JoinMsgs)
	return nil
}
