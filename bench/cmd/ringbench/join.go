package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/ringnet/ringnet/bench/testbed"
	"github.com/ringnet/ringnet/node"
)

// join measures how soon a new node is routable: from starting its node
// to the first ping a random member of the ring gets answered by its VM,
// for joins into a running ring of members nodes (each through a random
// member as bootstrap), and reports the median.
func join(ctx context.Context, opts testbed.Options, base node.Config, members, joins int) error {
	bed, vms, vips, err := publicVMs(ctx, opts, members+joins, "10.128.2")
	if bed != nil {
		defer bed.Close()
	}
	if err != nil {
		return err
	}
	if err := testbed.StartRing(ctx, base, vms[:members], withPrefix(vips[:members])); err != nil {
		return err
	}
	running := slices.Clone(vms[:members])
	if err := waitConsistent(ctx, running, time.Minute); err != nil {
		return err
	}
	fmt.Printf("%d-node ring up and consistent\n", members)

	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	var times []float64
	for i := range joins {
		j := vms[members+i]
		boot, err := running[rng.IntN(len(running))].BootstrapAddr(ctx)
		if err != nil {
			return err
		}
		member := running[rng.IntN(len(running))]
		cfg := base
		cfg.TAP.Address = vips[members+i] + "/16"
		cfg.Bootstrap = []string{boot}

		start := time.Now()
		started := make(chan error, 1)
		go func() { started <- j.StartNode(ctx, cfg) }()
		took, err := firstPing(ctx, member, vips[members+i], start, 30*time.Second)
		if serr := <-started; serr != nil {
			return serr
		}
		if err != nil {
			return fmt.Errorf("join %d: %w", i+1, err)
		}
		times = append(times, float64(took.Milliseconds()))
		fmt.Printf("join %2d: %s routable from %s after %d ms\n", i+1, vips[members+i], member.Name(), took.Milliseconds())
		running = append(running, j)
		if err := waitConsistent(ctx, running, time.Minute); err != nil {
			return err
		}
	}
	fmt.Printf("join: routable_ms=%.0f\n", median(times))
	return nil
}

// firstPing pings addr from vm until a reply comes, and returns the time
// from start to that reply.
func firstPing(ctx context.Context, vm *testbed.VM, addr string, start time.Time, within time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithDeadline(ctx, start.Add(within))
	defer cancel()
	for {
		r, err := vm.Ping(ctx, addr, "-c", "1", "-W", "1")
		if err == nil && r.Received > 0 {
			return time.Since(start), nil
		}
		if ctx.Err() != nil {
			return 0, fmt.Errorf("%s never answered %s within %v", addr, vm.Name(), within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitConsistent polls until the ring of the VMs' nodes is consistent.
func waitConsistent(ctx context.Context, vms []*testbed.VM, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		_, err := testbed.RingConsistent(ctx, vms)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.Join(errors.New("ring not consistent"), err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// publicVMs builds a bed of n VMs spread over four public sites, with
// virtual addresses prefix.1, prefix.2 and so on. The caller closes the
// bed, also on error.
func publicVMs(ctx context.Context, opts testbed.Options, n int, prefix string) (*testbed.Bed, []*testbed.VM, []string, error) {
	bed, err := testbed.New(ctx, opts)
	if err != nil {
		return nil, nil, nil, err
	}
	var sites []*testbed.Site
	for i := range 4 {
		s, err := bed.AddSite(ctx, fmt.Sprintf("s%d", i), testbed.NATNone)
		if err != nil {
			return bed, nil, nil, err
		}
		sites = append(sites, s)
	}
	vms := make([]*testbed.VM, n)
	vips := make([]string, n)
	for i := range vms {
		if vms[i], err = bed.AddVM(ctx, sites[i%len(sites)], fmt.Sprintf("v%d", i)); err != nil {
			return bed, nil, nil, err
		}
		vips[i] = fmt.Sprintf("%s.%d", prefix, i+1)
	}
	return bed, vms, vips, nil
}

func withPrefix(vips []string) []string {
	out := make([]string, len(vips))
	for i, v := range vips {
		out[i] = v + "/16"
	}
	return out
}
