package testbed

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/ringnet/ringnet/node"
)

// WaitLease polls the node's status until it holds a lease on an address
// for its VM, and returns that status; for at most 30 s if ctx has no
// deadline.
func (vm *VM) WaitLease(ctx context.Context) (node.Status, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, readyTimeout)
		defer cancel()
	}
	for {
		st, err := vm.Status(ctx)
		if err == nil && st.Lease.Addr != "" {
			return st, nil
		}
		if err == nil {
			err = errors.New("no lease yet")
		}
		select {
		case <-ctx.Done():
			return st, fmt.Errorf("node on %s: no lease: %w (last: %v)", vm.name, ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// IfaceAddrs returns the IPv4 addresses on the VM's interface dev, with
// their prefix lengths.
func (vm *VM) IfaceAddrs(ctx context.Context, dev string) ([]netip.Prefix, error) {
	out, err := vm.Output(ctx, "ip", "-4", "-o", "addr", "show", "dev", dev)
	if err != nil {
		return nil, err
	}
	// "5: rn0    inet 10.130.0.9/26 brd 10.130.0.63 scope global rn0\ ..."
	var addrs []netip.Prefix
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		for i := 0; i+1 < len(f); i++ {
			if f[i] == "inet" {
				p, err := netip.ParsePrefix(f[i+1])
				if err != nil {
					return nil, fmt.Errorf("vm %s: ip addr: %q: %w", vm.name, f[i+1], err)
				}
				addrs = append(addrs, p)
			}
		}
	}
	return addrs, nil
}

// StartRingAtOnce is StartRing with the joins at once: once the first
// VM's node is up, every other VM's node starts at the same time, joining
// through the first (or through base.Bootstrap, if set). vips[i] is the
// address node i claims first (tap.address, with its prefix length); ""
// leaves it to pick one from base.Namespace.Subnet. It returns once every
// node answers `ringnet status`; their leases may still be pending.
func StartRingAtOnce(ctx context.Context, base node.Config, vms []*VM, vips []string) error {
	if len(vms) != len(vips) || len(vms) == 0 {
		return fmt.Errorf("start ring: %d VMs but %d virtual addresses", len(vms), len(vips))
	}
	boot, err := vms[0].BootstrapAddr(ctx)
	if err != nil {
		return err
	}
	first := base
	first.TAP.Address = vips[0]
	if err := vms[0].StartNode(ctx, first); err != nil {
		return err
	}
	errs := make([]error, len(vms))
	var wg sync.WaitGroup
	for i := 1; i < len(vms); i++ {
		cfg := base
		cfg.TAP.Address = vips[i]
		if len(cfg.Bootstrap) == 0 {
			cfg.Bootstrap = []string{boot}
		}
		wg.Go(func() { errs[i] = vms[i].StartNode(ctx, cfg) })
	}
	wg.Wait()
	return errors.Join(errs...)
}
