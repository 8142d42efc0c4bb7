package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ringnet/ringnet/bench/testbed"
	"github.com/ringnet/ringnet/node"
)

// idle measures what an idle node costs in a ring of n nodes: once the
// ring is consistent and has settled, over a window with no traffic from
// the VMs, each node's resident memory, its share of one core, and the
// bytes its VM's uplink carried both ways (everything the node sends and
// receives to keep its links: pings, lists, address records, STUN). It
// reports the median node, and prints the worst.
func idle(ctx context.Context, opts testbed.Options, base node.Config, n int, settle, window time.Duration) error {
	bed, vms, vips, err := publicVMs(ctx, opts, n, "10.128.4")
	if bed != nil {
		defer bed.Close()
	}
	if err != nil {
		return err
	}
	if err := testbed.StartRing(ctx, base, vms, withPrefix(vips)); err != nil {
		return err
	}
	if err := waitConsistent(ctx, vms, 2*time.Minute); err != nil {
		return err
	}
	fmt.Printf("%d-node ring consistent; settling for %v\n", n, settle)
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(settle):
	}

	type sample struct {
		cpu   float64 // seconds
		bytes uint64
	}
	read := func() ([]sample, error) {
		out := make([]sample, n)
		for i, vm := range vms {
			cpu, err := procCPU(vm.NodePID())
			if err != nil {
				return nil, err
			}
			b, err := uplinkBytes(ctx, vm)
			if err != nil {
				return nil, err
			}
			out[i] = sample{cpu, b}
		}
		return out, nil
	}
	start, err := read()
	if err != nil {
		return err
	}
	protoStart := controlTraffic(ctx, vms)
	t0 := time.Now()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(window):
	}
	end, err := read()
	if err != nil {
		return err
	}
	protoEnd := controlTraffic(ctx, vms)
	secs := time.Since(t0).Seconds()
	var rss, anon, file, cpu, traffic []float64
	for i, vm := range vms {
		r, err := procRSS(vm.NodePID())
		if err != nil {
			return err
		}
		rss = append(rss, r)
		a, _ := procStatusMiB(vm.NodePID(), "RssAnon:")
		f, _ := procStatusMiB(vm.NodePID(), "RssFile:")
		anon, file = append(anon, a), append(file, f)
		cpu = append(cpu, 100*(end[i].cpu-start[i].cpu)/secs)
		traffic = append(traffic, float64(end[i].bytes-start[i].bytes)/secs)
	}
	st, err := vms[0].Status(ctx)
	if err != nil {
		return err
	}
	fmt.Printf("over %.0f s, %d nodes (a node has %d to %d ring links; v0 has %d):\n", secs, n,
		minLinks(ctx, vms), maxLinks(ctx, vms), len(st.Ring.Links))
	fmt.Printf("  RSS MiB:            median %.1f, max %.1f (median anonymous %.1f, file-backed %.1f)\n",
		median(rss), slices.Max(rss), median(anon), median(file))
	printMemory(ctx, vms)
	fmt.Printf("  CPU %% of a core:    median %.3f, max %.3f\n", median(cpu), slices.Max(cpu))
	fmt.Printf("  uplink bytes/s:     median %.0f, max %.0f\n", median(traffic), slices.Max(traffic))
	fmt.Printf("  per node (B/s):    ")
	for i, vm := range vms {
		fmt.Printf(" %s=%.0f", vm.Name(), traffic[i])
	}
	fmt.Println()
	// What the control plane's streams carried, by protocol: the mean
	// over the nodes, without transport framing.
	var protos []string
	for p := range protoEnd {
		protos = append(protos, p)
	}
	slices.Sort(protos)
	fmt.Printf("  control streams, mean B/s per node, by protocol:")
	for _, p := range protos {
		if d := protoEnd[p] - protoStart[p]; d > 0 {
			fmt.Printf(" %s=%.0f", p, float64(d)/secs/float64(n))
		}
	}
	fmt.Println()
	fmt.Printf("idle: rss_mib=%.1f cpu_pct=%.3f control_bytes_per_s=%.0f\n", median(rss), median(cpu), median(traffic))
	return nil
}

// printMemory prints the median of the nodes' own account of their
// anonymous memory: heap, stacks, the runtime's bookkeeping.
func printMemory(ctx context.Context, vms []*testbed.VM) {
	var live, free, stacks, rt, gor []float64
	for _, vm := range vms {
		st, err := vm.Status(ctx)
		if err != nil {
			continue
		}
		m := st.Memory
		live = append(live, float64(m.HeapLive+m.HeapUnused)/(1<<20))
		free = append(free, float64(m.HeapFree)/(1<<20))
		stacks = append(stacks, float64(m.Stacks)/(1<<20))
		rt = append(rt, float64(m.Runtime)/(1<<20))
		gor = append(gor, float64(m.Goroutines))
	}
	if len(live) == 0 {
		return
	}
	fmt.Printf("  Go runtime MiB:     median heap %.1f live, %.1f free; stacks %.1f (%.0f goroutines); runtime %.1f\n",
		median(live), median(free), median(stacks), median(gor), median(rt))
}

// controlTraffic sums the nodes' control stream bytes by protocol.
func controlTraffic(ctx context.Context, vms []*testbed.VM) map[string]uint64 {
	m := make(map[string]uint64)
	for _, vm := range vms {
		if st, err := vm.Status(ctx); err == nil {
			for p, b := range st.ControlTraffic {
				m[p] += b
			}
		}
	}
	return m
}

func linkCounts(ctx context.Context, vms []*testbed.VM) []int {
	var out []int
	for _, vm := range vms {
		if st, err := vm.Status(ctx); err == nil {
			out = append(out, len(st.Ring.Links))
		}
	}
	return out
}

func minLinks(ctx context.Context, vms []*testbed.VM) int { return slices.Min(linkCounts(ctx, vms)) }
func maxLinks(ctx context.Context, vms []*testbed.VM) int { return slices.Max(linkCounts(ctx, vms)) }

// procCPU returns the CPU time, user and system, that process pid used.
func procCPU(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name may hold spaces: fields start after its ')'.
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(fields) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(fields))
	}
	utime, err1 := strconv.ParseFloat(fields[11], 64)
	stime, err2 := strconv.ParseFloat(fields[12], 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: bad times", pid)
	}
	const clockTicks = 100 // USER_HZ on Linux
	return (utime + stime) / clockTicks, nil
}

// procRSS returns the resident memory of process pid in MiB.
func procRSS(pid int) (float64, error) { return procStatusMiB(pid, "VmRSS:") }

// procStatusMiB returns a kB field of /proc/pid/status, such as "VmRSS:",
// in MiB.
func procStatusMiB(pid int, field string) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			return kb / 1024, err
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no %s", pid, field)
}

// uplinkBytes returns the bytes the VM's interfaces other than loopback
// and the TAP carried, both ways.
func uplinkBytes(ctx context.Context, vm *testbed.VM) (uint64, error) {
	out, err := vm.Output(ctx, "cat", "/proc/net/dev")
	if err != nil {
		return 0, err
	}
	var total uint64
	for _, line := range strings.Split(string(out), "\n") {
		name, rest, ok := strings.Cut(line, ":")
		name = strings.TrimSpace(name)
		if !ok || name == "lo" || name == testbed.TAPName {
			continue
		}
		f := strings.Fields(rest)
		if len(f) < 9 {
			continue
		}
		rx, err1 := strconv.ParseUint(f[0], 10, 64)
		tx, err2 := strconv.ParseUint(f[8], 10, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		total += rx + tx
	}
	return total, nil
}
