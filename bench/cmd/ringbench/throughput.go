package main

import (
	"context"
	"fmt"
	"slices"
	"strconv"

	"github.com/ringnet/ringnet/bench/testbed"
	"github.com/ringnet/ringnet/node"
)

// Virtual addresses of the pair's nodes.
const (
	vipA = "10.128.0.1"
	vipB = "10.128.0.2"
)

// throughput measures single-stream TCP (median of runs iperf3 runs) and
// ping RTT from VM a to VM b, through the overlay and between the same VMs'
// underlay addresses, alternating the two paths so that both see the same
// machine.
func throughput(ctx context.Context, opts testbed.Options, base node.Config, runs, seconds, pings int) error {
	bed, a, b, err := newPair(ctx, opts, base)
	if err != nil {
		return err
	}
	defer bed.Close()
	if _, err := b.StartIperf3Server(false); err != nil {
		return err
	}
	paths := []path{
		{"overlay", vipB},
		{"raw", b.UnderlayIP().String()},
	}
	gbps := map[string][]float64{}
	for i := range runs {
		for _, p := range paths {
			r, err := a.Iperf3(ctx, p.addr, "-t", strconv.Itoa(seconds))
			if err != nil {
				return err
			}
			g := r.BitsPerSecond / 1e9
			gbps[p.name] = append(gbps[p.name], g)
			fmt.Printf("run %d %-7s tcp %6.2f Gbit/s  (%d retransmits)\n", i+1, p.name, g, r.Retransmits)
		}
	}
	rtt, err := pingPaths(ctx, a, paths, pings, 7)
	if err != nil {
		return err
	}
	overlay, raw := median(gbps["overlay"]), median(gbps["raw"])
	if raw == 0 {
		return fmt.Errorf("raw path measured 0 Gbit/s")
	}
	fmt.Printf("throughput: overlay_gbps=%.2f raw_gbps=%.2f ratio=%.3f overlay_rtt_ms=%.3f raw_rtt_ms=%.3f\n",
		overlay, raw, overlay/raw, rtt["overlay"], rtt["raw"])
	return nil
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(xs))
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// pingPaths measures the average RTT from vm over each path (pings at
// 10 ms), printing a line for each with the path's name padded to width.
func pingPaths(ctx context.Context, vm *testbed.VM, paths []path, pings, width int) (map[string]float64, error) {
	rtt := map[string]float64{}
	for _, p := range paths {
		r, err := vm.Ping(ctx, p.addr, "-c", strconv.Itoa(pings), "-i", "0.01")
		if err != nil {
			return nil, err
		}
		if r.Received == 0 {
			return nil, fmt.Errorf("ping %s (%s): no replies", p.name, p.addr)
		}
		rtt[p.name] = r.AvgRTTMs
		fmt.Printf("%-*s ping avg %.3f ms (%d/%d replies)\n", width, p.name, r.AvgRTTMs, r.Received, r.Transmitted)
	}
	return rtt, nil
}
