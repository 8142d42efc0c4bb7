package testbed

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"

	"github.com/ringnet/ringnet/node"
)

// VM is a namespace standing for a virtual machine: one uplink veth into its
// site's LAN bridge, and at most one ringnet node.
type VM struct {
	bed  *Bed
	name string
	ns   string
	dir  string

	mu       sync.Mutex
	site     *Site
	uplink   string // in the VM's namespace
	port     string // the other end, in the site's namespace
	ip       netip.Addr
	loss     *lossState  // nil until SetLoss
	node     *Proc       // the running node, or nil
	nodeCfg  node.Config // the config of the last StartNode
	nodeSeen bool        // StartNode was called once
}

// AddVM creates a VM in site: a namespace whose uplink plugs into the
// site's bridge, with the next free LAN address and a default route via the
// site's router.
func (b *Bed) AddVM(ctx context.Context, site *Site, name string) (*VM, error) {
	if !namePattern.MatchString(name) {
		return nil, fmt.Errorf("vm name %q: want 1 to 16 of [a-z0-9], starting with a letter", name)
	}
	for _, vm := range b.VMs() {
		if vm.name == name {
			return nil, fmt.Errorf("vm %s exists already", name)
		}
	}
	vm := &VM{bed: b, name: name, ns: b.id + "-vm-" + name, dir: filepath.Join(b.workDir, name)}
	if err := os.MkdirAll(vm.StateDir(), 0o700); err != nil {
		return nil, fmt.Errorf("vm %s: %w", name, err)
	}
	if err := b.addNamespace(ctx, vm.ns, false); err != nil {
		return nil, fmt.Errorf("vm %s: %w", name, err)
	}
	if err := b.attach(ctx, vm, site); err != nil {
		return nil, fmt.Errorf("vm %s: %w", name, err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.checkOpen(); err != nil {
		return nil, err
	}
	b.vms = append(b.vms, vm)
	return vm, nil
}

// MoveVM moves vm's uplink to another site while its node keeps running, as
// a live migration does: a new veth into the new site's bridge, a new
// address and default route, then the old veth is deleted. Loss set with
// SetLoss moves along.
func (b *Bed) MoveVM(ctx context.Context, vm *VM, site *Site) error {
	vm.mu.Lock()
	oldUplink := vm.uplink
	vm.mu.Unlock()
	if err := b.attach(ctx, vm, site); err != nil {
		return fmt.Errorf("move %s to %s: %w", vm.name, site.name, err)
	}
	if _, err := run(ctx, "", "ip", "-n", vm.ns, "link", "del", oldUplink); err != nil {
		return fmt.Errorf("move %s to %s: %w", vm.name, site.name, err)
	}
	return nil
}

// attach plugs a new uplink from vm into site's bridge, makes it the
// default route and, if loss is set, applies it there.
func (b *Bed) attach(ctx context.Context, vm *VM, site *Site) error {
	port, uplink := b.linkNames("pu")
	b.mu.Lock()
	host := site.nextHost
	site.nextHost++
	b.mu.Unlock()
	if host > 254 {
		return fmt.Errorf("site %s is full", site.name)
	}
	ip := site.lan.Addr().As4()
	ip[3] = byte(host)
	addr := netip.AddrFrom4(ip)
	steps := [][]string{
		{"ip", "-n", vm.ns, "link", "add", uplink, "type", "veth", "peer", "name", port, "netns", site.ns},
		{"ip", "-n", site.ns, "link", "set", port, "master", site.bridge},
		{"ip", "-n", site.ns, "link", "set", port, "up"},
		{"ip", "-n", vm.ns, "addr", "add", netip.PrefixFrom(addr, site.lan.Bits()).String(), "dev", uplink},
		{"ip", "-n", vm.ns, "link", "set", uplink, "up"},
		{"ip", "-n", vm.ns, "route", "replace", "default", "via", site.gw.String()},
	}
	for _, args := range steps {
		if _, err := run(ctx, "", args[0], args[1:]...); err != nil {
			return err
		}
	}
	vm.mu.Lock()
	oldSite, oldPort, loss := vm.site, vm.port, vm.loss
	vm.site, vm.uplink, vm.port, vm.ip = site, uplink, port, addr
	vm.mu.Unlock()
	if loss != nil {
		if err := b.moveLoss(ctx, vm, oldSite, oldPort); err != nil {
			return err
		}
	}
	return nil
}

// Name is the name given to AddVM.
func (vm *VM) Name() string { return vm.name }

// Namespace is the VM's namespace.
func (vm *VM) Namespace() string { return vm.ns }

// Site is the site the VM's uplink is plugged into now.
func (vm *VM) Site() *Site {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return vm.site
}

// UnderlayIP is the VM's current address on its site's LAN.
func (vm *VM) UnderlayIP() netip.Addr {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return vm.ip
}

// Uplink is the name of the VM's uplink link in its namespace.
func (vm *VM) Uplink() string {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return vm.uplink
}

// Dir is the VM's directory in the bed's work dir.
func (vm *VM) Dir() string { return vm.dir }

// StateDir is the node's state directory: its identity and control socket.
// It outlives node restarts.
func (vm *VM) StateDir() string { return filepath.Join(vm.dir, "state") }

// ConfigPath is where StartNode writes the node's config.
func (vm *VM) ConfigPath() string { return filepath.Join(vm.dir, "ringnet.toml") }

// LogPath is the node's stdout and stderr, appended across restarts.
func (vm *VM) LogPath() string { return filepath.Join(vm.dir, "node.log") }

// Command returns a command that runs args in the VM's namespace; the
// caller runs it.
func (vm *VM) Command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", vm.ns}, args...)...)
	// Kill the whole group on cancel, in case the command forks.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	return cmd
}

// Exec runs args in the VM's namespace; the error carries its stderr.
func (vm *VM) Exec(ctx context.Context, args ...string) error {
	_, err := vm.Output(ctx, args...)
	return err
}

// Output runs args in the VM's namespace and returns its stdout; the error
// carries its stderr.
func (vm *VM) Output(ctx context.Context, args ...string) ([]byte, error) {
	out, err := run(ctx, "", "ip", append([]string{"netns", "exec", vm.ns}, args...)...)
	if err != nil {
		return out, fmt.Errorf("vm %s: %w", vm.name, err)
	}
	return out, nil
}

// Start starts args in the VM's namespace in the background; Close stops
// it if it still runs. Its output is kept for Proc.Output.
func (vm *VM) Start(args ...string) (*Proc, error) {
	return vm.bed.startProc(vm.ns, nil, args...)
}
