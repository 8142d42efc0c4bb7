package main

import (
	"context"
	"strings"
	"time"

	"github.com/ringnet/ringnet/bench/testbed"
)

// condorDemo builds an appliance image and boots two HTCondor pools from
// it, as docs/appliance.md and docs/condor.md describe, then runs jobs in
// the first pool and flocks the second pool's jobs to it.
func condorDemo(ctx context.Context, ringnet, runID, image, mirror string) error {
	say("Building an appliance image (docs/appliance.md): Debian 13 with systemd, HTCondor,")
	say("ringnet.service and systemd-networkd configuring ringnet0 by DHCP. About a minute.")
	image, remove, err := testbed.PrepareImage(ctx, image, mirror, ".", func(format string, args ...any) { say("  "+format, args...) })
	defer remove()
	if err != nil {
		return err
	}
	bed, err := newBed(ctx, ringnet, runID)
	if err != nil {
		return err
	}
	defer closeBed(bed, "shutting the VMs down")

	say("\nBooting five VMs from that one image, at once, at four sites (three behind NATs),")
	say("with one seed config: the same enrollment keys and bootstrap address for all; the")
	say("two central managers' seeds add the address they claim. The operator runs one")
	say("bootstrap node. Nobody admits a VM by hand.")
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
	say("\n%v after boot every VM's ringnet.service held an address, systemd-networkd had put", ready.Round(100*time.Millisecond))
	say("it on ringnet0, and Condor ran on it; both pools list their machines:")
	roles := map[*testbed.Appliance]string{
		p.Manager1: "pool 1 central manager", p.Execute1: "pool 1 execute", p.Submit1: "pool 1 submit",
		p.Manager2: "pool 2 manager+submit", p.Execute2: "pool 2 execute (refuses jobs)",
	}
	for _, a := range p.Appliances() {
		vm := a.VM()
		st, err := vm.Status(wctx)
		if err != nil {
			return err
		}
		addr, err := a.VirtualAddr(wctx)
		if err != nil {
			return err
		}
		say("  %-5s %-30s site %-4s (NAT %-4v) peer %s  ringnet0 %v", vm.Name(), roles[a], vm.Site().Name(), vm.Site().NAT(), shortID(st.PeerID), addr)
	}
	out, err := p.Manager1.Output(wctx, "systemctl", "status", "--no-pager", "--lines=0", "ringnet")
	if err != nil {
		return err
	}
	say("\nsystemctl status ringnet, in cm1:\n%s", indent(string(out)))

	say("\nalice submits 8 jobs on sub1 (behind a NAT); each prints who ran it, where:")
	jobs, took, err := testbed.RunJobs(wctx, p.Submit1, "pool", 8)
	if err != nil {
		return err
	}
	sayJobs(jobs, took)
	say("\nalice submits 8 jobs on cm2. Pool 2's only slots refuse jobs, so they flock to pool 1:")
	jobs, took, err = testbed.RunJobs(wctx, p.Manager2, "flock", 8)
	if err != nil {
		return err
	}
	sayJobs(jobs, took)
	say("\nThe Condor configuration is docs/condor; docs/condor.md explains it.")
	return nil
}

func sayJobs(jobs []testbed.JobResult, took time.Duration) {
	count := map[testbed.JobResult]int{}
	for _, j := range jobs {
		count[j]++
	}
	for j, n := range count {
		say("  %d jobs ran as %s on %s", n, j.User, j.Host)
	}
	say("  all 8 done %v after condor_submit", took.Round(100*time.Millisecond))
}

func shortID(id string) string {
	if len(id) > 8 {
		return "…" + id[len(id)-8:]
	}
	return id
}

func indent(s string) string {
	return "  " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n  ")
}
