package testbed

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// BootOptions say what an appliance VM boots with besides its image.
type BootOptions struct {
	// Image is a root built by BuildImage. It is mounted read-only under
	// a volatile overlay, so any number of VMs share it and none changes
	// it.
	Image string
	// Ringnet is the binary bound in as /usr/local/bin/ringnet.
	Ringnet string
	// Seed is a directory bound in read-only as /etc/ringnet: the seed
	// config and enrollment keys, the same bytes for every VM.
	Seed string
	// Files are more host files bound in read-only, by path in the VM.
	Files map[string]string
}

// Appliance is a VM booted from an image: systemd-nspawn runs the
// image's systemd in the VM's network namespace, and the image's units do
// the rest, ringnet.service among them. The node's state directory,
// /var/lib/ringnet, is the VM's StateDir, so that Status works as for
// nodes the bed starts itself; the rest of the VM's writes vanish when it
// stops.
type Appliance struct {
	vm      *VM
	machine string
	proc    *Proc
}

// Boot boots vm from o.Image and returns once its systemd runs; the
// units go on starting in the background. vm must have no node of the
// bed's.
func (vm *VM) Boot(ctx context.Context, o BootOptions) (*Appliance, error) {
	if vm.NodeRunning() {
		return nil, fmt.Errorf("boot %s: the bed runs a node there", vm.name)
	}
	a := &Appliance{vm: vm, machine: vm.ns}
	args := []string{"systemd-nspawn", "--quiet", "--console=passive", "--boot",
		// No machined or host systemd to register with here.
		"--register=no", "--keep-unit",
		"--volatile=overlay", "--directory=" + o.Image,
		"--machine=" + a.machine, "--hostname=" + vm.name, "--resolv-conf=off",
		"--network-namespace-path=/run/netns/" + vm.ns,
		// The VM's namespace is not private to the container, so nspawn
		// does not grant CAP_NET_ADMIN by itself; ringnet needs it.
		"--capability=CAP_NET_ADMIN", "--bind=/dev/net/tun",
		"--bind-ro=" + o.Ringnet + ":/usr/local/bin/ringnet",
		"--bind-ro=" + o.Seed + ":/etc/ringnet",
		"--bind=" + vm.StateDir() + ":/var/lib/ringnet",
	}
	for dst, src := range o.Files {
		args = append(args, "--bind-ro="+src+":"+dst)
	}
	log, err := os.OpenFile(a.ConsolePath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("boot %s: %w", vm.name, err)
	}
	defer log.Close() // the child has its own copy
	if a.proc, err = vm.bed.startProc("", log, args...); err != nil {
		return nil, fmt.Errorf("boot %s: %w", vm.name, err)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		if _, err := a.Output(ctx, "true"); err == nil {
			return a, nil
		}
		select {
		case <-a.proc.Done():
			tail, _ := tailFile(a.ConsolePath(), 20)
			return nil, fmt.Errorf("boot %s: systemd-nspawn exited: %v\n%s", vm.name, a.proc.err, tail)
		case <-ctx.Done():
			a.Shutdown(5 * time.Second)
			return nil, fmt.Errorf("boot %s: %w", vm.name, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// VM is the VM the appliance runs in.
func (a *Appliance) VM() *VM { return a.vm }

// ConsolePath is the file the VM's console output goes to.
func (a *Appliance) ConsolePath() string { return filepath.Join(a.vm.dir, "console.log") }

// leader is the PID, on the host, of the VM's init.
func (a *Appliance) leader() (int, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", a.proc.Pid(), a.proc.Pid()))
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(data))
	if len(f) == 0 {
		return 0, fmt.Errorf("vm %s: no init yet", a.vm.name)
	}
	return strconv.Atoi(f[0])
}

// Output runs args inside the VM, in all its namespaces (as root, in /),
// and returns their stdout; the error carries stderr.
func (a *Appliance) Output(ctx context.Context, args ...string) ([]byte, error) {
	pid, err := a.leader()
	if err != nil {
		return nil, err
	}
	out, err := run(ctx, "", "nsenter", append([]string{"--target", strconv.Itoa(pid), "--all"}, args...)...)
	if err != nil {
		return out, fmt.Errorf("vm %s: %w", a.vm.name, err)
	}
	return out, nil
}

// OutputAs runs a shell command inside the VM as user, in their home
// directory.
func (a *Appliance) OutputAs(ctx context.Context, user, script string) ([]byte, error) {
	return a.Output(ctx, "runuser", "--login", user, "--command", script)
}

// WaitUnit waits until unit is active in the VM, and fails at once if it
// failed, with its journal.
func (a *Appliance) WaitUnit(ctx context.Context, unit string) error {
	for {
		out, _ := a.Output(ctx, "systemctl", "is-active", unit)
		switch state := strings.TrimSpace(string(out)); state {
		case "active":
			return nil
		case "failed":
			journal, _ := a.Output(ctx, "journalctl", "--no-pager", "-n", "30", "-u", unit)
			return fmt.Errorf("vm %s: %s failed:\n%s", a.vm.name, unit, journal)
		}
		select {
		case <-ctx.Done():
			journal, _ := a.Output(context.Background(), "journalctl", "--no-pager", "-n", "30", "-u", unit)
			return fmt.Errorf("vm %s: %s not active: %w\n%s", a.vm.name, unit, ctx.Err(), journal)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Shutdown halts the VM as a power button would (nspawn's first SIGTERM),
// and after grace kills it. Its state directory stays.
func (a *Appliance) Shutdown(grace time.Duration) error {
	err := a.proc.Stop(syscall.SIGTERM, grace)
	// nspawn leaves this behind when /run is not a tmpfs.
	os.Remove(filepath.Join("/run/systemd/nspawn/propagate", a.machine))
	return err
}

// ShutdownAll shuts the appliances down at once, as Shutdown does; nil
// entries are skipped.
func ShutdownAll(apps []*Appliance, grace time.Duration) {
	var wg sync.WaitGroup
	for _, a := range apps {
		if a != nil {
			wg.Go(func() { a.Shutdown(grace) })
		}
	}
	wg.Wait()
}
