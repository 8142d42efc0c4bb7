package testbed

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ringnet/ringnet/node"
)

// CondorOptions configure StartCondorPools.
type CondorOptions struct {
	// Image is a root built by BuildImage.
	Image string
	// ConfigDir holds the Condor files of docs/condor: ringnet.config,
	// pool1.config, pool2.config and one per role.
	ConfigDir string
}

// Virtual addresses and subnet that docs/condor's files name.
const (
	condorSubnet   = "10.128.0.0/16"
	condorManager1 = "10.128.0.10"
	condorManager2 = "10.128.0.20"
)

// CondorPools are two HTCondor pools of appliance VMs on one ringnet
// namespace, as docs/condor.md sets them up: pool 1 has its central
// manager at a public site and an execute and a submit VM behind two NATs;
// pool 2 has a central manager that also submits, and an execute VM whose
// slots refuse jobs, so that its jobs flock to pool 1. Every VM boots the
// same image and seed config; only the managers' configs name their
// address. A bootstrap node, outside the pools, is the seed's way in.
type CondorPools struct {
	Bed *Bed
	// Manager1, Execute1, Submit1 are pool 1; Manager2 (which submits too)
	// and Execute2 are pool 2.
	Manager1, Execute1, Submit1, Manager2, Execute2 *Appliance
	// Booted is when the VMs were booted, all at once.
	Booted time.Time
}

// Appliances are the pools' VMs.
func (p *CondorPools) Appliances() []*Appliance {
	return []*Appliance{p.Manager1, p.Execute1, p.Submit1, p.Manager2, p.Execute2}
}

// StartCondorPools builds the sites, starts the bootstrap node, writes the
// seed (enrollment keys made with `ringnet ring|namespace delegate`) and
// boots the five VMs at once. It returns once they run systemd; Condor
// and ringnet go on starting inside.
func StartCondorPools(ctx context.Context, bed *Bed, o CondorOptions) (*CondorPools, error) {
	p := &CondorPools{Bed: bed}
	sites := map[string]NATKind{"core": NATNone, "nat1": NATCone, "nat2": NATCone, "nat3": NATCone}
	site := map[string]*Site{}
	for _, name := range slices.Sorted(maps.Keys(sites)) {
		s, err := bed.AddSite(ctx, name, sites[name])
		if err != nil {
			return nil, err
		}
		site[name] = s
	}
	// The operator's owner keys, made with ringnet's own commands.
	owners := filepath.Join(bed.WorkDir(), "owner")
	ringRoot, err := ringnetOut(ctx, bed, "ring", "create", "-name", "grid", "-out", owners)
	if err != nil {
		return nil, err
	}
	labRoot, err := ringnetOut(ctx, bed, "namespace", "create", "-name", "lab", "-subnet", condorSubnet, "-lease", "10m", "-out", owners)
	if err != nil {
		return nil, err
	}
	roots := map[string]string{"ring": ringRoot, "namespace": labRoot}
	keys := map[string]string{"ring": filepath.Join(owners, "ring-grid.key"), "namespace": filepath.Join(owners, "namespace-lab.key")}

	// The operator's bootstrap node: a ring member at the public site,
	// whose own VM is in no pool (an open namespace of its own).
	boot, err := bed.AddVM(ctx, site["core"], "boot")
	if err != nil {
		return nil, err
	}
	bootID, err := boot.PeerID(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := ringnetOut(ctx, bed, "ring", "admit", "-key", keys["ring"], "-peer", bootID, "-days", "1",
		"-out", filepath.Join(boot.StateDir(), "ring.pem")); err != nil {
		return nil, err
	}
	bootCfg := node.Config{
		Ring:      node.RingConfig{Name: "grid", Root: ringRoot, Cert: "ring.pem"},
		Namespace: node.NamespaceConfig{Name: "infra", Subnet: "10.250.0.0/16", Open: true},
	}
	if err := boot.StartNode(ctx, bootCfg); err != nil {
		return nil, err
	}
	bootAddr, err := boot.BootstrapAddr(ctx)
	if err != nil {
		return nil, err
	}

	seed := filepath.Join(bed.WorkDir(), "seed")
	if err := writeEnrollment(ctx, bed, seed, keys); err != nil {
		return nil, err
	}
	if err := writeSeedConfig(seed, bootAddr, roots, ""); err != nil {
		return nil, err
	}
	// The managers' seeds differ in one line: the address they claim.
	seeds := map[string]string{"": seed}
	for _, vip := range []string{condorManager1, condorManager2} {
		dir := filepath.Join(bed.WorkDir(), "seed-"+vip)
		if err := os.CopyFS(dir, os.DirFS(seed)); err != nil {
			return nil, err
		}
		if err := writeSeedConfig(dir, bootAddr, roots, vip+"/16"); err != nil {
			return nil, err
		}
		seeds[vip] = dir
	}

	type vmSpec struct {
		name, site, pin string
		roles           []string
		pool            string
		out             **Appliance
	}
	specs := []vmSpec{
		{"cm1", "core", condorManager1, []string{"manager"}, "pool1", &p.Manager1},
		{"exec1", "nat1", "", []string{"execute"}, "pool1", &p.Execute1},
		{"sub1", "nat2", "", []string{"submit"}, "pool1", &p.Submit1},
		{"cm2", "nat3", condorManager2, []string{"manager", "submit"}, "pool2", &p.Manager2},
		{"exec2", "core", "", []string{"execute", "refuse"}, "pool2", &p.Execute2},
	}
	vms := make([]*VM, len(specs))
	for i, s := range specs {
		if vms[i], err = bed.AddVM(ctx, site[s.site], s.name); err != nil {
			return nil, err
		}
	}
	p.Booted = time.Now()
	var wg sync.WaitGroup
	errs := make([]error, len(specs))
	for i, s := range specs {
		files := map[string]string{
			"/etc/condor/config.d/20-ringnet.config": filepath.Join(o.ConfigDir, "ringnet.config"),
			"/etc/condor/config.d/30-pool.config":    filepath.Join(o.ConfigDir, s.pool+".config"),
			"/etc/condor/config.d/90-fast.config":    filepath.Join(o.ConfigDir, "fast.config"),
		}
		for j, role := range s.roles {
			files[fmt.Sprintf("/etc/condor/config.d/4%d-%s.config", j, role)] = filepath.Join(o.ConfigDir, role+".config")
		}
		wg.Go(func() {
			*s.out, errs[i] = vms[i].Boot(ctx, BootOptions{Image: o.Image, Ringnet: bed.RingnetPath(), Seed: seeds[s.pin], Files: files})
		})
	}
	wg.Wait()
	return p, errors.Join(errs...)
}

// writeEnrollment writes the enrollment keys for the ring and the
// namespace that an image carries in /etc/ringnet, made as an operator
// makes them from the owner keys.
func writeEnrollment(ctx context.Context, bed *Bed, dir string, ownerKeys map[string]string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, scope := range []string{"ring", "namespace"} {
		if _, err := ringnetOut(ctx, bed, scope, "delegate", "-key", ownerKeys[scope],
			"-out-key", filepath.Join(dir, scope+"-enroll.key"), "-days", "1",
			"-out", filepath.Join(dir, scope+"-enroll.pem")); err != nil {
			return err
		}
	}
	return nil
}

// ringnetOut runs the ringnet binary on the host and returns its stdout,
// trimmed.
func ringnetOut(ctx context.Context, bed *Bed, args ...string) (string, error) {
	out, err := run(ctx, "", bed.RingnetPath(), args...)
	return strings.TrimSpace(string(out)), err
}

// writeSeedConfig writes the seed config, /etc/ringnet/ringnet.toml. pin,
// if set, is the address the node claims.
func writeSeedConfig(dir, bootAddr string, roots map[string]string, pin string) error {
	var tap string
	if pin != "" {
		tap = fmt.Sprintf("address = %q\n", pin)
	}
	cfg := fmt.Sprintf(`# The same file in every VM booted from the image.
bootstrap = [%q]

[ring]
name = %q
root = %q
cert = "/etc/ringnet/ring-enroll.pem"
enroll_key = "/etc/ringnet/ring-enroll.key"

[namespace]
name = %q
root = %q
cert = "/etc/ringnet/namespace-enroll.pem"
enroll_key = "/etc/ringnet/namespace-enroll.key"

[tap]
# The image's DHCP client configures ringnet0.
configure_address = false
%s`, bootAddr, "grid", roots["ring"], "lab", roots["namespace"], tap)
	return os.WriteFile(filepath.Join(dir, "ringnet.toml"), []byte(cfg), 0o644)
}

// WaitReady waits until the pools are ready for jobs: in every VM,
// ringnet.service is ready (it holds the VM's address),
// systemd-networkd-wait-online saw ringnet0 configured, and condor.service
// runs; and each pool's collector lists its execute VM's startd and its
// submit VM's schedd. It returns how long after p.Booted that was.
func (p *CondorPools) WaitReady(ctx context.Context) (time.Duration, error) {
	for _, a := range p.Appliances() {
		for _, unit := range []string{"ringnet.service", "systemd-networkd-wait-online.service", "condor.service"} {
			if err := a.WaitUnit(ctx, unit); err != nil {
				return 0, err
			}
		}
	}
	pools := []struct {
		manager, execute, submit *Appliance
	}{{p.Manager1, p.Execute1, p.Submit1}, {p.Manager2, p.Execute2, p.Manager2}}
	for _, pool := range pools {
		if err := waitListed(ctx, pool.manager, "-startd", pool.execute.VM().Name()); err != nil {
			return 0, err
		}
		if err := waitListed(ctx, pool.manager, "-schedd", pool.submit.VM().Name()); err != nil {
			return 0, err
		}
	}
	return time.Since(p.Booted), nil
}

// waitListed waits until `condor_status kind` on manager lists a daemon
// of the VM name (an execute VM has one partitionable slot).
func waitListed(ctx context.Context, manager *Appliance, kind, name string) error {
	var last string
	var lastErr error
	for {
		out, err := manager.Output(ctx, "condor_status", kind, "-af", "Name")
		last, lastErr = strings.TrimSpace(string(out)), err
		for _, f := range strings.Fields(last) {
			if err == nil && (f == name || strings.HasSuffix(f, "@"+name)) {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("vm %s: condor_status %s lists %q (%v), not %s: %w",
				manager.VM().Name(), kind, last, lastErr, name, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// JobResult is what one job printed: who ran it, where.
type JobResult struct {
	User, Host string
}

// RunJobs submits n short jobs as ImageUser on submit, waits until all
// have completed, and returns each job's output and the time from submit
// to the last completion. Each job prints its user and host name.
func RunJobs(ctx context.Context, submit *Appliance, name string, n int) ([]JobResult, time.Duration, error) {
	script := fmt.Sprintf(`set -e
mkdir -p %[1]s && cd %[1]s
printf '#!/bin/sh\necho "$(id -un) $(hostname)"\nsleep 1\n' > job.sh
chmod +x job.sh
printf 'executable = job.sh\noutput = out.$(Process)\nerror = err.$(Process)\nlog = job.log\nshould_transfer_files = YES\nrequest_memory = 64M\nqueue %[2]d\n' > job.sub
condor_submit job.sub
`, name, n)
	start := time.Now()
	if out, err := submit.OutputAs(ctx, ImageUser, script); err != nil {
		return nil, 0, fmt.Errorf("condor_submit: %w\n%s", err, out)
	}
	deadline := 300
	if d, ok := ctx.Deadline(); ok {
		deadline = max(1, int(time.Until(d).Seconds()))
	}
	if out, err := submit.OutputAs(ctx, ImageUser, fmt.Sprintf("cd %s && condor_wait -wait %d job.log", name, deadline)); err != nil {
		q, _ := submit.OutputAs(context.Background(), ImageUser, "condor_q -better-analyze -af ClusterId ProcId JobStatus HoldReason; condor_q -analyze | tail -20")
		return nil, 0, fmt.Errorf("condor_wait: %w\n%s\n%s", err, out, q)
	}
	took := time.Since(start)
	results := make([]JobResult, n)
	for i := range n {
		out, err := submit.OutputAs(ctx, ImageUser, fmt.Sprintf("cat %s/out.%d", name, i))
		if err != nil {
			return nil, 0, err
		}
		f := strings.Fields(string(out))
		if len(f) != 2 {
			return nil, 0, fmt.Errorf("job %d printed %q, want user and host", i, out)
		}
		results[i] = JobResult{User: f[0], Host: f[1]}
	}
	return results, took, nil
}

// VirtualAddr is the IPv4 address on the VM's ringnet0, put there by the
// image's DHCP client.
func (a *Appliance) VirtualAddr(ctx context.Context) (netip.Addr, error) {
	out, err := a.Output(ctx, "ip", "-4", "-o", "addr", "show", "dev", node.DefaultTAPName)
	if err != nil {
		return netip.Addr{}, err
	}
	f := strings.Fields(string(out))
	for i, w := range f {
		if w == "inet" && i+1 < len(f) {
			pfx, err := netip.ParsePrefix(f[i+1])
			if err != nil {
				return netip.Addr{}, fmt.Errorf("vm %s: %w", a.vm.name, err)
			}
			return pfx.Addr(), nil
		}
	}
	return netip.Addr{}, fmt.Errorf("vm %s: no IPv4 address on %s", a.vm.name, node.DefaultTAPName)
}
