package main

import (
	"context"
	"fmt"
	"time"

	"github.com/ringnet/ringnet/bench/testbed"
)

// condorBench boots the two HTCondor pools of docs/condor.md from one
// appliance image (built into image, or into a temporary directory when
// image is empty) and measures:
//
//	pool_ready_s   from booting the five VMs at once to both pools
//	               being ready for jobs (CondorPools.WaitReady)
//	jobs8_s        from submitting 8 short jobs in pool 1 (behind a NAT)
//	               to their completion on pool 1's execute VM (behind
//	               another NAT)
//	flock_jobs8_s  the same for 8 jobs of pool 2, whose own slots refuse
//	               them, so that they flock to pool 1
//
// With hold, the pools stay up that long afterwards, for a look inside.
func condorBench(ctx context.Context, opts testbed.Options, image, mirror string, hold time.Duration) error {
	start := time.Now()
	image, remove, err := testbed.PrepareImage(ctx, image, mirror, ".", opts.Logf)
	defer remove()
	if err != nil {
		return err
	}
	fmt.Printf("image ready in %v\n", time.Since(start).Round(time.Second))

	bed, err := testbed.New(ctx, opts)
	if err != nil {
		return err
	}
	defer bed.Close()
	p, err := testbed.StartCondorPools(ctx, bed, testbed.CondorOptions{Image: image, ConfigDir: "docs/condor"})
	if p != nil {
		defer testbed.ShutdownAll(p.Appliances(), 10*time.Second)
	}
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	ready, err := p.WaitReady(wctx)
	if err != nil {
		return err
	}
	fmt.Printf("both pools ready for jobs %v after boot\n", ready.Round(100*time.Millisecond))
	var took [2]time.Duration
	for i, submit := range []*testbed.Appliance{p.Submit1, p.Manager2} {
		jobs, d, err := testbed.RunJobs(wctx, submit, fmt.Sprintf("jobs%d", i), 8)
		if err != nil {
			return err
		}
		for j, r := range jobs {
			if r.Host != p.Execute1.VM().Name() || r.User != testbed.ImageUser {
				return fmt.Errorf("job %d of %s ran as %s on %s", j, submit.VM().Name(), r.User, r.Host)
			}
		}
		fmt.Printf("8 jobs from %s ran on %s in %v\n", submit.VM().Name(), p.Execute1.VM().Name(), d.Round(100*time.Millisecond))
		took[i] = d
	}
	if hold > 0 {
		fmt.Printf("holding the pools for %v (work dir %s)\n", hold, bed.WorkDir())
		select {
		case <-time.After(hold):
		case <-ctx.Done():
		}
	}
	fmt.Printf("condor: pool_ready_s=%.1f jobs8_s=%.1f flock_jobs8_s=%.1f\n", ready.Seconds(), took[0].Seconds(), took[1].Seconds())
	return nil
}
