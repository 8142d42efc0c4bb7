package testbed

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// WireGuard in the bed is userspace wireguard-go, a baseline for ringnet's
// benchmarks: one interface per VM, every VM a peer of every other at its
// underlay address. wireguard-go keeps its control socket in
// /var/run/wireguard/NAME.sock, which all namespaces share, so the
// interfaces are named after the bed's run ID ("rb3fa1-g3") rather than
// all "wg0": two wg0s in two VMs would fight over one socket.

const (
	// WireGuardPort is the UDP port every VM's wireguard-go listens on.
	WireGuardPort = 51820
	// WireGuardMTU is wireguard's default interface MTU: 1500 minus the
	// outer IPv4, UDP and WireGuard headers, with room for IPv6.
	WireGuardMTU = 1420
)

// WireGuard is one VM's wireguard-go interface.
type WireGuard struct {
	vm        *VM
	name      string
	addr      netip.Prefix
	publicKey string
	proc      *Proc
}

// StartWireGuard runs the wireguard-go binary at path in each of vms, in the
// foreground with its default offloads (UDP GSO and GRO, TUN TSO, where the
// kernel has them), as a process the bed stops on Close. VM i's interface
// gets addrs[i] (a prefix such as "10.129.0.1/24"), MTU WireGuardMTU and
// fresh keys, listens on WireGuardPort, and has every other VM as a peer at
// its underlay address, allowed that VM's address alone. All VMs must reach
// each other's underlay addresses (public sites). It waits until vms[0]
// reaches the others through the tunnel, for at most 30 s if ctx has no
// deadline. wireguard-go logs verbosely to Dir()/wireguard.log.
func StartWireGuard(ctx context.Context, path string, vms []*VM, addrs []string) ([]*WireGuard, error) {
	if len(vms) != len(addrs) {
		return nil, fmt.Errorf("start wireguard: %d VMs but %d addresses", len(vms), len(addrs))
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, readyTimeout)
		defer cancel()
	}
	wgs := make([]*WireGuard, len(vms))
	for i, vm := range vms {
		addr, err := netip.ParsePrefix(addrs[i])
		if err != nil || !addr.Addr().Is4() {
			return nil, fmt.Errorf("start wireguard on %s: address %q: want an IPv4 prefix", vm.name, addrs[i])
		}
		if wgs[i], err = vm.startWireGuard(ctx, path, addr); err != nil {
			return nil, fmt.Errorf("start wireguard on %s: %w", vm.name, err)
		}
	}
	for i, w := range wgs {
		args := []string{"wg", "set", w.name,
			"listen-port", strconv.Itoa(WireGuardPort),
			"private-key", w.privateKeyPath()}
		for j, peer := range wgs {
			if j != i {
				args = append(args, "peer", peer.publicKey,
					"endpoint", netip.AddrPortFrom(peer.vm.UnderlayIP(), WireGuardPort).String(),
					"allowed-ips", netip.PrefixFrom(peer.addr.Addr(), 32).String())
			}
		}
		steps := [][]string{
			args,
			{"ip", "addr", "add", w.addr.String(), "dev", w.name},
			{"ip", "link", "set", w.name, "mtu", strconv.Itoa(WireGuardMTU), "up"},
		}
		for _, step := range steps {
			if err := w.vm.Exec(ctx, step...); err != nil {
				return nil, fmt.Errorf("start wireguard: %w", err)
			}
		}
	}
	for _, w := range wgs[1:] {
		if err := vms[0].WaitReachable(ctx, w.addr.Addr().String()); err != nil {
			return nil, fmt.Errorf("wireguard tunnel never came up: %w", err)
		}
	}
	return wgs, nil
}

// startWireGuard makes keys, starts wireguard-go and waits for its control
// socket.
func (vm *VM) startWireGuard(ctx context.Context, path string, addr netip.Prefix) (*WireGuard, error) {
	vm.bed.mu.Lock()
	vm.bed.nextLink++
	name := fmt.Sprintf("%s-g%d", vm.bed.id, vm.bed.nextLink)
	vm.bed.mu.Unlock()
	w := &WireGuard{vm: vm, name: name, addr: addr}
	private, err := run(ctx, "", "wg", "genkey")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(w.privateKeyPath(), private, 0o600); err != nil {
		return nil, err
	}
	public, err := run(ctx, string(private), "wg", "pubkey")
	if err != nil {
		return nil, err
	}
	w.publicKey = strings.TrimSpace(string(public))

	log, err := os.OpenFile(w.LogPath(), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer log.Close() // the child has its own copy
	if w.proc, err = vm.bed.startProc(vm.ns, log, "env", "LOG_LEVEL=verbose", path, "-f", name); err != nil {
		return nil, err
	}
	// The control socket appears once the TUN device is up.
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if _, err := os.Stat(w.socketPath()); err == nil {
			return w, nil
		}
		select {
		case <-w.proc.Done():
			tail, _ := tailFile(w.LogPath(), 20)
			return nil, fmt.Errorf("wireguard-go exited: %v:\n%s", w.proc.err, tail)
		case <-ctx.Done():
			return nil, fmt.Errorf("wireguard-go: no control socket %s: %w", w.socketPath(), ctx.Err())
		case <-tick.C:
		}
	}
}

// Name is the interface's name in the VM's namespace.
func (w *WireGuard) Name() string { return w.name }

// Addr is the interface's address and subnet.
func (w *WireGuard) Addr() netip.Prefix { return w.addr }

// PublicKey is the interface's public key, base64 as wg prints it.
func (w *WireGuard) PublicKey() string { return w.publicKey }

// Proc is the running wireguard-go.
func (w *WireGuard) Proc() *Proc { return w.proc }

// LogPath is wireguard-go's output, appended across starts.
func (w *WireGuard) LogPath() string { return filepath.Join(w.vm.dir, "wireguard.log") }

func (w *WireGuard) privateKeyPath() string {
	return filepath.Join(w.vm.dir, w.name+".key")
}

func (w *WireGuard) socketPath() string {
	return filepath.Join("/var/run/wireguard", w.name+".sock")
}

// Offloads returns the interface's offload features as `ethtool -k` lists
// them ("tcp-segmentation-offload": true, ...), without the fixed ones'
// "[fixed]" mark.
func (w *WireGuard) Offloads(ctx context.Context) (map[string]bool, error) {
	out, err := w.vm.Output(ctx, "ethtool", "-k", w.name)
	if err != nil {
		return nil, err
	}
	return parseEthtoolFeatures(string(out))
}

// parseEthtoolFeatures reads the "name: on|off [fixed]" lines of
// `ethtool -k`.
func parseEthtoolFeatures(out string) (map[string]bool, error) {
	features := make(map[string]bool)
	for line := range strings.Lines(out) {
		name, value, ok := strings.Cut(strings.TrimSpace(line), ": ")
		if !ok || value == "" {
			continue
		}
		switch strings.Fields(value)[0] {
		case "on":
			features[name] = true
		case "off":
			features[name] = false
		}
	}
	if len(features) == 0 {
		return nil, errors.New("ethtool -k: no features in output")
	}
	return features, nil
}
