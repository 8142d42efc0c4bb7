package testbed

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ringnet/ringnet/node"
)

// TAPName is the TAP device name StartNode gives nodes by default.
const TAPName = "rn0"

// readyTimeout bounds WaitReady when its context has no deadline.
const readyTimeout = 30 * time.Second

// StartNode writes cfg to ConfigPath and runs `ringnet up --config` in the
// VM's namespace, logging to LogPath, then waits until the node answers
// `ringnet status`. Empty fields get the bed's defaults: state_dir
// StateDir(), tap.name TAPName, an open ring and namespace where the config
// names no owner key; the rest is left to ringnet's own defaults.
func (vm *VM) StartNode(ctx context.Context, cfg node.Config) error {
	if vm.bed.ringnet == "" {
		return fmt.Errorf("start node on %s: the bed has no ringnet binary (Options.RingnetPath)", vm.name)
	}
	if cfg.StateDir == "" {
		cfg.StateDir = vm.StateDir()
	}
	if cfg.TAP.Name == "" {
		cfg.TAP.Name = TAPName
	}
	if cfg.Ring.Root == "" {
		cfg.Ring.Open = true
	}
	if cfg.Namespace.Root == "" {
		cfg.Namespace.Open = true
	}
	if vm.NodeRunning() {
		return fmt.Errorf("start node on %s: a node is running already", vm.name)
	}
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(cfg); err != nil {
		return fmt.Errorf("start node on %s: encode config: %w", vm.name, err)
	}
	if err := os.WriteFile(vm.ConfigPath(), buf.Bytes(), 0o600); err != nil {
		return fmt.Errorf("start node on %s: %w", vm.name, err)
	}
	log, err := os.OpenFile(vm.LogPath(), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("start node on %s: %w", vm.name, err)
	}
	defer log.Close() // the child has its own copy
	fmt.Fprintf(log, "=== testbed: %s: ringnet up --config %s\n", time.Now().Format(time.RFC3339Nano), vm.ConfigPath())
	p, err := vm.bed.startProc(vm.ns, log, vm.bed.ringnet, "up", "--config", vm.ConfigPath())
	if err != nil {
		return fmt.Errorf("start node on %s: %w", vm.name, err)
	}
	vm.mu.Lock()
	vm.node, vm.nodeCfg, vm.nodeSeen = p, cfg, true
	vm.mu.Unlock()
	return vm.WaitReady(ctx)
}

// WaitReady waits until the node answers `ringnet status` on its control
// socket, for at most 30 s if ctx has no deadline. It fails at once if the
// node exits, with the tail of its log.
func (vm *VM) WaitReady(ctx context.Context) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, readyTimeout)
		defer cancel()
	}
	p := vm.nodeProc()
	if p == nil {
		return fmt.Errorf("node on %s: not running", vm.name)
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		if exited, err := p.Exited(); exited {
			vm.mu.Lock()
			vm.node = nil
			vm.mu.Unlock()
			tail, _ := tailFile(vm.LogPath(), 20)
			return fmt.Errorf("node on %s exited before it was ready (%v); log:\n%s", vm.name, err, tail)
		}
		if _, lastErr = vm.Status(ctx); lastErr == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("node on %s: not ready: %w (last: %v)", vm.name, ctx.Err(), lastErr)
		case <-tick.C:
		case <-p.Done():
		}
	}
}

// Status asks the VM's running node for its status over its control socket.
func (vm *VM) Status(ctx context.Context) (node.Status, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var st node.Status
	out, err := vm.Output(ctx, vm.bed.ringnet, "status", "--json", "--state-dir", vm.StateDir())
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(out, &st); err != nil {
		return st, fmt.Errorf("vm %s: ringnet status --json: %w", vm.name, err)
	}
	return st, nil
}

// PeerID returns the node's peer ID from `ringnet id --state-dir`, which
// creates the identity if there is none yet.
func (vm *VM) PeerID(ctx context.Context) (string, error) {
	if vm.bed.ringnet == "" {
		return "", fmt.Errorf("peer id of %s: the bed has no ringnet binary (Options.RingnetPath)", vm.name)
	}
	out, err := run(ctx, "", vm.bed.ringnet, "id", "--state-dir", vm.StateDir())
	if err != nil {
		return "", fmt.Errorf("peer id of %s: %w", vm.name, err)
	}
	id := strings.TrimSpace(string(out))
	if _, err := peer.Decode(id); err != nil {
		return "", fmt.Errorf("peer id of %s: ringnet id printed %q: %w", vm.name, id, err)
	}
	return id, nil
}

// PeerEntry returns the [[peer]] entry by which other nodes reach this VM's
// node at its current underlay address: its peer ID, and its TCP and QUIC
// control addresses on ringnet's default port.
func (vm *VM) PeerEntry(ctx context.Context) (node.Peer, error) {
	id, err := vm.PeerID(ctx)
	if err != nil {
		return node.Peer{}, err
	}
	ip := vm.UnderlayIP()
	return node.Peer{
		ID: id,
		Addrs: []string{
			fmt.Sprintf("/ip4/%v/tcp/%d", ip, node.DefaultControlPort),
			fmt.Sprintf("/ip4/%v/udp/%d/quic-v1", ip, node.DefaultControlPort),
		},
	}, nil
}

// NodeConfig is the config the node was last started with, defaults of
// StartNode filled in.
func (vm *VM) NodeConfig() node.Config {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return vm.nodeCfg
}

// NodeRunning reports whether the VM's node is running.
func (vm *VM) NodeRunning() bool {
	p := vm.nodeProc()
	if p == nil {
		return false
	}
	exited, _ := p.Exited()
	return !exited
}

// NodeExit reports whether the VM's node has exited, and if so its exit
// error (nil for status 0).
func (vm *VM) NodeExit() (exited bool, err error) {
	p := vm.nodeProc()
	if p == nil {
		return false, nil
	}
	return p.Exited()
}

func (vm *VM) nodeProc() *Proc {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return vm.node
}

// StopNode sends sig to the node and waits up to 10 s for it to exit (then
// kills it). It returns nil if the node exited with status 0, or was killed
// by the SIGKILL it was asked to send.
func (vm *VM) StopNode(sig syscall.Signal) error {
	vm.mu.Lock()
	p := vm.node
	vm.node = nil
	vm.mu.Unlock()
	if p == nil {
		return fmt.Errorf("stop node on %s: not running", vm.name)
	}
	if err := p.Stop(sig, 10*time.Second); err != nil {
		return fmt.Errorf("stop node on %s with %v: %w", vm.name, sig, err)
	}
	return nil
}

// Kill kills the node with SIGKILL, giving it no chance to clean up.
func (vm *VM) Kill() error { return vm.StopNode(syscall.SIGKILL) }

// RestartNode stops the node with SIGTERM, if it runs, and starts it again
// with the same config and state directory.
func (vm *VM) RestartNode(ctx context.Context) error {
	vm.mu.Lock()
	seen, cfg := vm.nodeSeen, vm.nodeCfg
	vm.mu.Unlock()
	if !seen {
		return errors.New("restart node on " + vm.name + ": it was never started")
	}
	if vm.NodeRunning() {
		if err := vm.StopNode(syscall.SIGTERM); err != nil {
			return err
		}
	}
	return vm.StartNode(ctx, cfg)
}

// StartMesh starts a node on each VM with virtual address vips[i] (with its
// prefix length, such as "10.128.0.1/16") and every other VM as a static
// peer, the rest of the config from base; then it waits until the first VM
// reaches each of the others through the overlay, for at most 30 s if ctx
// has no deadline.
func StartMesh(ctx context.Context, base node.Config, vms []*VM, vips []string) error {
	if len(vms) != len(vips) {
		return fmt.Errorf("start mesh: %d VMs but %d virtual addresses", len(vms), len(vips))
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, readyTimeout)
		defer cancel()
	}
	peers := make([]node.Peer, len(vms))
	for i, vm := range vms {
		var err error
		if peers[i], err = vm.PeerEntry(ctx); err != nil {
			return err
		}
	}
	for i, vm := range vms {
		cfg := base
		cfg.TAP.Address = vips[i]
		cfg.Peers = nil
		for j, p := range peers {
			if j != i {
				cfg.Peers = append(cfg.Peers, p)
			}
		}
		if err := vm.StartNode(ctx, cfg); err != nil {
			return err
		}
	}
	for _, vip := range vips[1:] {
		addr, _, _ := strings.Cut(vip, "/")
		if err := vms[0].WaitReachable(ctx, addr); err != nil {
			return fmt.Errorf("overlay never came up: %w", err)
		}
	}
	return nil
}

// BootstrapAddr returns the multiaddr by which other nodes join the ring
// through this VM's node: its TCP control address at its current underlay
// address, with its peer ID.
func (vm *VM) BootstrapAddr(ctx context.Context) (string, error) {
	id, err := vm.PeerID(ctx)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("/ip4/%v/tcp/%d/p2p/%s", vm.UnderlayIP(), node.DefaultControlPort, id), nil
}

// StartRing starts a node on each VM with virtual address vips[i] (with
// its prefix length), the rest of the config from base: the first VM's
// node starts a ring of its own and every other joins through it (or
// through base.Bootstrap, if set), one after the other.
func StartRing(ctx context.Context, base node.Config, vms []*VM, vips []string) error {
	if len(vms) != len(vips) || len(vms) == 0 {
		return fmt.Errorf("start ring: %d VMs but %d virtual addresses", len(vms), len(vips))
	}
	boot, err := vms[0].BootstrapAddr(ctx)
	if err != nil {
		return err
	}
	for i, vm := range vms {
		cfg := base
		cfg.TAP.Address = vips[i]
		if i > 0 && len(cfg.Bootstrap) == 0 {
			cfg.Bootstrap = []string{boot}
		}
		if err := vm.StartNode(ctx, cfg); err != nil {
			return err
		}
	}
	return nil
}

// NodePID returns the process ID of the VM's running node, or 0.
func (vm *VM) NodePID() int {
	if p := vm.nodeProc(); p != nil {
		return p.Pid()
	}
	return 0
}
