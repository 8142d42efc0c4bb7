// Package node wires one ringnet node together: the VM's TAP device and
// virtual gateway, the overlay that carries its packets, and the control
// socket that `ringnet status` reads.
package node

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	record "github.com/libp2p/go-libp2p-record"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/multiformats/go-multiaddr"

	"github.com/ringnet/ringnet/dhcp"
	"github.com/ringnet/ringnet/overlay"
	"github.com/ringnet/ringnet/tap"
)

// Version is the ringnet release.
const Version = "0.1.0-dev"

// TAPMTU is the largest IPv4 packet that fits one datagram on an underlay
// with the given MTU: the VM's interface MTU, which DHCP will hand out.
func TAPMTU(underlayMTU int) int {
	return underlayMTU - overlay.UDPIPv4Overhead - overlay.Overhead
}

// Option changes how New builds a node.
type Option func(*options)

type options struct {
	device tap.Device
	vmMAC  net.HardwareAddr
}

// WithDevice runs the node over dev (an in-memory device in tests) instead
// of creating a TAP device; vmMAC is the MAC of the VM's side.
func WithDevice(dev tap.Device, vmMAC net.HardwareAddr) Option {
	return func(o *options) { o.device, o.vmMAC = dev, vmMAC }
}

// Node is one running ringnet node.
type Node struct {
	cfg    *Config
	log    *slog.Logger
	key    crypto.PrivKey
	subnet netip.Prefix
	trust  *trust // ring admission and namespace membership (trust.go)
	// validator checks lease records; lease is the VM's (lease.go).
	validator *dhcp.LeaseValidator
	lease     leaseState
	mtu       int
	dev       tap.Device
	gw        *tap.Gateway
	ov        *overlay.Overlay
	ctl       *controlServer
	gwMAC     net.HardwareAddr
	// offloads: the TAP hands over and takes vnet headers with 64 KiB
	// TCP frames (datapath.go).
	offloads tap.OffloadState
	dhcp     *dhcp.Server // nil when tap.dhcp is off

	badVnetHdr    atomic.Uint64 // frames whose vnet header did not decode
	segmentFailed atomic.Uint64 // offloaded packets Segment refused

	ctx context.Context // ends when the node stops; its cause says why
	wg  sync.WaitGroup
}

// New starts a node: it opens the identity, the TAP device, the overlay and
// the control socket, and links to the configured peers. The node runs
// until ctx ends; then Wait returns.
func New(ctx context.Context, cfg *Config, log *slog.Logger, opts ...Option) (*Node, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	subnet, err := cfg.Subnet()
	if err != nil {
		return nil, err
	}
	key, err := overlay.LoadOrCreateIdentity(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("peer ID: %w", err)
	}
	t, err := loadTrust(cfg, key, time.Now())
	if err != nil {
		return nil, err
	}
	if !t.nsOpen {
		// A member learns the namespace's subnet from its certificate.
		field := "namespace.subnet"
		if cfg.Namespace.Subnet == "" {
			field = "tap.address"
		}
		switch {
		case !subnet.IsValid():
			subnet = t.nsCert.Subnet
		case subnet != t.nsCert.Subnet:
			return nil, fieldErr(field, "%v is not in the namespace's subnet %v (from its certificate)", subnet, t.nsCert.Subnet)
		}
	}
	// The node runs until ctx ends, or until it finds it must not run
	// (another live node holds its identity): then stop records why.
	ctx, stop := context.WithCancelCause(ctx)
	n := &Node{
		ctx:    ctx,
		cfg:    cfg,
		log:    log,
		key:    key,
		trust:  t,
		subnet: subnet,
		mtu:    TAPMTU(cfg.TAP.UnderlayMTU),
		gwMAC:  gatewayMAC(id),
	}
	// Claim the control socket first: a second node on the same state
	// directory (a cloned VM, a double start) must stop here, before it
	// touches the TAP or the network.
	ctl, err := listenControl(cfg.ControlSocket())
	if err != nil {
		stop(nil)
		return nil, err
	}
	n.ctl = ctl
	ok := false
	defer func() {
		if !ok {
			n.close()
			stop(nil)
		}
	}()

	vmMAC := o.vmMAC
	if o.device != nil {
		n.dev = o.device
	} else {
		tcfg := tap.Config{Name: cfg.TAP.Name, MTU: n.mtu, Offloads: *cfg.TAP.Offloads}
		if tcfg.Offloads {
			tcfg.GSOMaxSegs = overlay.SegmentsPerSend(n.mtu)
		}
		dev, err := tap.Open(tcfg)
		if err != nil {
			return nil, fmt.Errorf("open TAP %s: %w", cfg.TAP.Name, err)
		}
		n.dev = dev
		vmMAC = dev.MAC()
		n.offloads = dev.Offloads()
		if *cfg.TAP.Offloads && !n.offloads.VnetHdr {
			log.Warn("the kernel refused TAP offloads: every packet costs a system call", "tap", dev.Name())
		}
	}

	n.validator = n.leaseValidator()
	gwAddr := GatewayAddr(subnet)
	// The gateway starts with no VM address: the VM gets one when the
	// lease is won (lease.go). Until then only its DHCP client is heard.
	n.gw, err = tap.NewGateway(tap.GatewayConfig{
		Addr:       netip.PrefixFrom(subnet.Addr().Next(), subnet.Bits()),
		GatewayMAC: n.gwMAC,
		VMMAC:      vmMAC,
		MTU:        n.mtu,
		// The gateway's own address answers too: the VM renews its DHCP
		// lease there.
		Holds: func(a netip.Addr) bool { return a == gwAddr || n.ov.Holds(a) },
		// Packets that go over several hops carry a route header.
		PathMTU:    func(dst netip.Addr) int { return n.ov.PathMTU(dst, n.mtu) },
		MinPathMTU: n.mtu - overlay.RingExtra,
	})
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	dataAddr, _ := netip.ParseAddrPort(cfg.Listen.Data) // validated
	boot, _ := cfg.BootstrapPeers()                     // validated
	shortcuts, _ := cfg.ShortcutPolicy()                // validated
	n.ov, err = overlay.New(ctx, overlay.Config{
		Identity:       key,
		ControlAddrs:   cfg.Listen.Control,
		DataAddr:       dataAddr,
		VirtualSubnets: []netip.Prefix{subnet},
		DHT: &overlay.DHTConfig{
			Validator: record.NamespacedValidator{
				"lease":  countingValidator{n.validator, &n.lease.invalid},
				"revoke": countingValidator{revocationValidator{}, &n.lease.invalid},
			},
			Admit: n.admit,
		},
		Admission:    t.admission(),
		Resolve:      n.resolve,
		Ring:         true,
		Bootstrap:    boot,
		PeersFile:    filepath.Join(cfg.StateDir, "peers.json"),
		Shortcuts:    shortcuts,
		NewReceiver:  n.newReceiver,
		AddrsLearned: n.announce,
		OnClone: func(err error) {
			log.Error("refusing to run", "err", err)
			stop(err)
		},
		Logger: log,
	})
	if err != nil {
		return nil, err
	}
	if *cfg.TAP.DHCP {
		if n.dhcp, err = n.newDHCP(); err != nil {
			return nil, fmt.Errorf("DHCP server: %w", err)
		}
	}
	for i, p := range cfg.Peers {
		info, err := peerInfo(p)
		if err != nil {
			return nil, fieldErr(fmt.Sprintf("peer[%d]", i), "%v", err)
		}
		if err := n.ov.AddPeer(info); err != nil {
			return nil, fieldErr(fmt.Sprintf("peer[%d]", i), "%v", err)
		}
	}

	if err := n.gw.SetVMAddr(netip.Addr{}); err != nil {
		return nil, err
	}
	n.ctl.handle(n.Status, n.Leases)
	n.wg.Add(4)
	go func() {
		defer n.wg.Done()
		n.keepLease(ctx)
	}()
	go func() {
		defer n.wg.Done()
		n.followRevocations(ctx)
	}()
	go func() {
		defer n.wg.Done()
		if n.offloads.VnetHdr {
			n.readTAPOffload()
		} else {
			n.readTAP()
		}
	}()
	go func() {
		defer n.wg.Done()
		n.ctl.serve()
	}()
	context.AfterFunc(ctx, func() { n.close() })
	ok = true
	log.Info("node up", "peer_id", id, "ring_open", t.ringOpen, "namespace", t.nsID, "subnet", subnet, "tap", n.dev.Name(),
		"mtu", n.mtu, "offloads", n.offloads, "data", n.ov.DataAddr(), "control", n.ov.Host().Addrs())
	return n, nil
}

// Wait blocks until the node has stopped.
func (n *Node) Wait() { n.wg.Wait() }

// Done is closed when the node begins to stop: its context ended, or it
// found that it must not run (Err says why).
func (n *Node) Done() <-chan struct{} { return n.ctx.Done() }

// Err is why the node stopped on its own: it wraps overlay.ErrClone when
// another live node holds its identity. It is nil while the node runs or
// when its context ended.
func (n *Node) Err() error {
	if err := context.Cause(n.ctx); errors.Is(err, overlay.ErrClone) {
		return err
	}
	return nil
}

// ID is the node's peer ID.
func (n *Node) ID() peer.ID { return n.ov.ID() }

// Overlay is the node's overlay.
func (n *Node) Overlay() *overlay.Overlay { return n.ov }

// close releases everything New acquired; it runs once, when ctx ends or
// New fails part-way.
func (n *Node) close() {
	var errs []error
	if n.ov != nil {
		errs = append(errs, n.ov.Close())
	}
	if n.dev != nil {
		errs = append(errs, n.dev.Close())
	}
	if n.ctl != nil {
		errs = append(errs, n.ctl.close())
	}
	if err := errors.Join(errs...); err != nil {
		n.log.Warn("shutdown", "err", err)
	}
}

// gatewayMAC derives the gateway's MAC from the peer ID: stable across
// restarts, locally administered and unicast.
func gatewayMAC(id peer.ID) net.HardwareAddr {
	sum := sha256.Sum256([]byte(id))
	mac := net.HardwareAddr(sum[:6])
	mac[0] = mac[0]&^0x01 | 0x02
	return mac
}

func peerInfo(p Peer) (peer.AddrInfo, error) {
	id, err := peer.Decode(p.ID)
	if err != nil {
		return peer.AddrInfo{}, err
	}
	info := peer.AddrInfo{ID: id}
	for _, a := range p.Addrs {
		ma, err := multiaddr.NewMultiaddr(a)
		if err != nil {
			return peer.AddrInfo{}, err
		}
		info.Addrs = append(info.Addrs, ma)
	}
	return info, nil
}
