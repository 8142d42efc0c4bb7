package integration

import (
	"context"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/ringnet/ringnet/bench/testbed"
)

// The appliance image: built once per run, on first use, into the
// directory TestMain removes (or into RINGNET_IMAGE, kept for later runs).
var (
	imageOnce sync.Once
	imageDir  string
	imageErr  error
)

// applianceImage returns the root of the Debian 13 appliance image with
// HTCondor and ringnet's unit, building it the first time.
func applianceImage(t *testing.T) string {
	t.Helper()
	testbed.RequireRoot(t)
	for _, tool := range []string{"debootstrap", "systemd-nspawn", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("appliance tests need %s (./scripts/test installs it)", tool)
		}
	}
	imageOnce.Do(func() {
		imageDir = os.Getenv("RINGNET_IMAGE")
		if imageDir == "" {
			imageDir = filepath.Join(workDir, "image")
		}
		mirror := os.Getenv("RINGNET_DEBIAN_MIRROR")
		if mirror == "" {
			mirror = "http://deb.debian.org/debian"
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		start := time.Now()
		imageErr = testbed.BuildImage(ctx, imageDir, mirror, testbed.RepoImageFiles("../.."), t.Logf)
		t.Logf("image ready in %v", time.Since(start).Round(time.Second))
	})
	if imageErr != nil {
		t.Fatal(imageErr)
	}
	return imageDir
}

// TestCondorPoolsOverRingnet boots two HTCondor pools of appliance VMs, as
// docs/condor.md sets them up, from one image and one seed config: every
// VM creates its own identity, admits itself with the seed's enrollment
// keys, claims an address, and the image's systemd-networkd configures
// ringnet0 by DHCP before Condor starts. Jobs submitted as an ordinary user
// in pool 1, behind a NAT, run on pool 1's execute VM behind another NAT;
// jobs of pool 2, whose own slots refuse them, flock to pool 1 and run
// there.
func TestCondorPoolsOverRingnet(t *testing.T) {
	image := applianceImage(t)
	bed := testbed.NewT(t, testbed.Options{RingnetPath: ringnetBin})
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	p, err := testbed.StartCondorPools(ctx, bed, testbed.CondorOptions{Image: image, ConfigDir: "../../docs/condor"})
	if p != nil {
		t.Cleanup(func() {
			if t.Failed() {
				for _, a := range p.Appliances() {
					if a == nil {
						continue
					}
					out, _ := a.Output(context.Background(), "journalctl", "--no-pager", "-n", "40", "-u", "condor", "-u", "systemd-networkd", "-u", "ringnet", "--priority", "warning")
					logs, _ := a.Output(context.Background(), "sh", "-c", "tail -n 15 /var/log/condor/*Log")
					out = append(out, logs...)
					t.Logf("journal of %s:\n%s", a.VM().Name(), out)
				}
			}
			testbed.ShutdownAll(p.Appliances(), 10*time.Second)
		})
	}
	if err != nil {
		t.Fatal(err)
	}

	// Each VM's ringnet.service is ready (it holds an address), Condor
	// came up after the network did, and both pools list their slots.
	ready, err := p.WaitReady(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("both pools ready for jobs %v after boot", ready.Round(100*time.Millisecond))

	// The appliance path: one seed, distinct identities and addresses, and
	// the DHCP client put the node's lease on ringnet0.
	ids, addrs := map[string]string{}, map[netip.Addr]string{}
	for _, a := range p.Appliances() {
		vm := a.VM()
		st, err := vm.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		lease, err := netip.ParseAddr(st.Lease.Addr)
		if err != nil {
			t.Fatalf("%s: lease %q: %v", vm.Name(), st.Lease.Addr, err)
		}
		onTAP, err := a.VirtualAddr(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if onTAP != lease {
			t.Errorf("%s: ringnet0 has %v, the node's lease is %v", vm.Name(), onTAP, lease)
		}
		if other, dup := ids[st.PeerID]; dup {
			t.Errorf("%s and %s share peer ID %s", vm.Name(), other, st.PeerID)
		}
		if other, dup := addrs[lease]; dup {
			t.Errorf("%s and %s share address %v", vm.Name(), other, lease)
		}
		ids[st.PeerID], addrs[lease] = vm.Name(), vm.Name()
		t.Logf("%s at site %s (NAT %v): peer %s, %v on ringnet0", vm.Name(), vm.Site().Name(), vm.Site().NAT(), st.PeerID, onTAP)
	}

	// Pool 1: jobs from the submit VM run on the execute VM as their
	// owner, and their output comes back.
	jobs, took, err := testbed.RunJobs(ctx, p.Submit1, "pool", 8)
	if err != nil {
		t.Fatal(err)
	}
	checkJobs(t, jobs, p.Execute1.VM().Name())
	t.Logf("pool 1 ran 8 jobs in %v", took.Round(100*time.Millisecond))

	// Pool 2: its slots refuse jobs, so they flock to pool 1.
	jobs, took, err = testbed.RunJobs(ctx, p.Manager2, "flock", 8)
	if err != nil {
		t.Fatal(err)
	}
	checkJobs(t, jobs, p.Execute1.VM().Name())
	t.Logf("pool 2's 8 jobs flocked to pool 1 and ran in %v", took.Round(100*time.Millisecond))
}

// checkJobs checks that every job ran as the image's user on host.
func checkJobs(t *testing.T, jobs []testbed.JobResult, host string) {
	t.Helper()
	for i, j := range jobs {
		if j.User != testbed.ImageUser || j.Host != host {
			t.Errorf("job %d ran as %s on %s, want %s on %s", i, j.User, j.Host, testbed.ImageUser, host)
		}
	}
}
