//go:build linux

package tap

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// maxNameLen is the longest interface name the kernel accepts (IFNAMSIZ
// minus the terminating NUL).
const maxNameLen = unix.IFNAMSIZ - 1

// openFlags are the TUNSETIFF flags every TAP is created with; offloads
// add IFF_VNET_HDR (see openTUN).
//
// IFF_NO_PI: frames arrive bare, without the 4-byte packet-info prefix.
// IFF_TUN_EXCL: fail with EBUSY if the name is taken, instead of attaching to
// someone else's persistent device (which Close would then delete).
// No TUNSETPERSIST: the device goes away when the fd is closed or the process
// dies, so a crashed node leaves nothing behind.
const openFlags = unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_TUN_EXCL

// Config describes the TAP device Open creates.
type Config struct {
	// Name is the interface name, at most 15 bytes. Empty lets the kernel
	// pick one (tap0, tap1, ...).
	Name string
	// MTU is the interface MTU; 0 keeps the kernel's default (1500).
	MTU int
	// MAC is the interface's hardware address; nil keeps the random one
	// the kernel assigns.
	MAC net.HardwareAddr
	// Addr, when valid, is assigned to the interface (e.g. 10.128.0.1/16).
	Addr netip.Prefix
	// Offloads asks for a vnet header and TCP (and, where the kernel has
	// it, UDP) segmentation offload, so that the kernel hands over TCP
	// frames of up to 64 KiB with their checksums left undone. If the
	// kernel refuses, the device opens without them: check Offloads().
	Offloads bool
	// GSOMaxSegs, if not 0, bounds the segments of one TSO or USO frame
	// (the device's gso_max_segs), so that the VM's kernel makes frames
	// whose segments leave in one batch.
	GSOMaxSegs int
}

// Linux is a TAP device created through /dev/net/tun. It implements Device.
//
// With offloads active (Offloads().VnetHdr), every frame carries a
// VirtioNetHdr: ReadFrame returns [VirtioNetHdrLen-byte header][Ethernet
// frame] and WriteFrame expects the same. The header's offsets count from
// the Ethernet header. A frame read may be a TCP packet of up to 64 KiB
// (GSO) and any TCP or UDP packet may have a partial checksum
// (NEEDS_CSUM): give them to Gateway.FromVMOffload and Segment, never to
// a peer as they are. Write with a zero header (GSO none, no flags) for
// complete packets, or as Coalescer builds them.
type Linux struct {
	// file is the TAP's fd, non-blocking and registered with the Go
	// poller so that Close unblocks a pending Read. Holding it keeps its
	// finalizer from closing the fd under us.
	file *os.File
	// raw and readFn read the frames of a batch (ReadFrames), readFn into
	// readBuf: both made once, as SyscallConn and a closure handed to the
	// poller allocate.
	raw       syscall.RawConn
	readFn    func(fd uintptr) bool
	readBuf   []byte
	readWait  bool // wait for a frame, rather than try once
	readTries int  // readFn's calls for this frame: 1 if one was queued
	readN     int
	readErr   error
	closed    atomic.Bool
	name      string
	index     int
	mac       net.HardwareAddr
	mtu       int
	off       OffloadState

	closeOnce sync.Once
	closeErr  error
}

var _ Device = (*Linux)(nil)

// Open creates a TAP device, applies cfg and brings the link up. The device
// exists until Close (or until the process exits).
func Open(cfg Config) (*Linux, error) {
	if len(cfg.Name) > maxNameLen {
		// Never truncate: a cut name could be someone else's device.
		return nil, fmt.Errorf("tap: name %q is %d bytes, the limit is %d", cfg.Name, len(cfg.Name), maxNameLen)
	}
	if cfg.MAC != nil && len(cfg.MAC) != 6 {
		return nil, fmt.Errorf("tap: MAC %v is not a 6-byte Ethernet address", cfg.MAC)
	}
	if cfg.Addr.IsValid() && !cfg.Addr.Addr().Is4() {
		return nil, fmt.Errorf("tap: address %v is not IPv4", cfg.Addr)
	}
	if cfg.MTU < 0 {
		return nil, fmt.Errorf("tap: negative MTU %d", cfg.MTU)
	}

	file, name, off, err := openTUN(cfg.Name, cfg.Offloads)
	if err != nil {
		return nil, err
	}
	raw, err := file.SyscallConn()
	if err != nil {
		file.Close()
		return nil, fmt.Errorf("tap %s: %w", name, err)
	}
	d := &Linux{file: file, raw: raw, name: name, off: off}
	d.readFn = func(fd uintptr) bool {
		d.readTries++
		d.readN, d.readErr = unix.Read(int(fd), d.readBuf)
		return !d.readWait || d.readErr != unix.EAGAIN
	}
	if err := d.configure(cfg); err != nil {
		d.Close()
		return nil, fmt.Errorf("tap %s: %w", name, err)
	}
	return d, nil
}

// openTUN opens /dev/net/tun and attaches it to a new TAP named name. It
// returns the fd as a pollable *os.File, the name the kernel chose and the
// offloads in effect.
//
// With offloads, IFF_VNET_HDR is fixed at TUNSETIFF time, so if the kernel
// then refuses TUNSETOFFLOAD the fd is closed (which removes the device)
// and a plain one is opened in its place.
func openTUN(name string, offloads bool) (*os.File, string, OffloadState, error) {
	if offloads {
		fd, ifname, err := createTAP(name, openFlags|unix.IFF_VNET_HDR)
		if err != nil {
			return nil, "", OffloadState{}, err
		}
		off, err := enableOffloads(fd)
		if err == nil {
			return os.NewFile(uintptr(fd), "/dev/net/tun"), ifname, off, nil
		}
		unix.Close(fd)
	}
	fd, ifname, err := createTAP(name, openFlags)
	if err != nil {
		return nil, "", OffloadState{}, err
	}
	// The fd is already non-blocking, so os.NewFile registers it with the
	// runtime poller: reads park the goroutine instead of a thread, and
	// Close wakes them.
	return os.NewFile(uintptr(fd), "/dev/net/tun"), ifname, OffloadState{}, nil
}

// createTAP opens /dev/net/tun non-blocking and attaches it to a new TAP
// with the given TUNSETIFF flags.
func createTAP(name string, flags uint16) (int, string, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return -1, "", fmt.Errorf("tap: open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return -1, "", fmt.Errorf("tap: name %q: %w", name, err)
	}
	ifr.SetUint16(flags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		if errors.Is(err, unix.EBUSY) {
			return -1, "", fmt.Errorf("tap: create %q: interface exists: %w", name, err)
		}
		return -1, "", fmt.Errorf("tap: create %q: TUNSETIFF: %w", name, err)
	}
	return fd, ifr.Name(), nil
}

// configure sets the MAC, MTU and address, brings the link up and records
// what the kernel ended up with.
func (d *Linux) configure(cfg Config) error {
	link, err := netlink.LinkByName(d.name)
	if err != nil {
		return fmt.Errorf("find link: %w", err)
	}
	d.index = link.Attrs().Index
	if cfg.MAC != nil {
		if err := netlink.LinkSetHardwareAddr(link, cfg.MAC); err != nil {
			return fmt.Errorf("set MAC %v: %w", cfg.MAC, err)
		}
	}
	if cfg.MTU != 0 {
		if err := netlink.LinkSetMTU(link, cfg.MTU); err != nil {
			return fmt.Errorf("set MTU %d: %w", cfg.MTU, err)
		}
	}
	if cfg.GSOMaxSegs != 0 {
		if err := netlink.LinkSetGSOMaxSegs(link, cfg.GSOMaxSegs); err != nil {
			return fmt.Errorf("set gso_max_segs %d: %w", cfg.GSOMaxSegs, err)
		}
	}
	if cfg.Addr.IsValid() {
		addr := &netlink.Addr{IPNet: &net.IPNet{
			IP:   cfg.Addr.Addr().AsSlice(),
			Mask: net.CIDRMask(cfg.Addr.Bits(), 32),
		}}
		if err := netlink.AddrAdd(link, addr); err != nil {
			return fmt.Errorf("add address %v: %w", cfg.Addr, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("set up: %w", err)
	}
	// Read back rather than trust cfg: without a MAC or MTU the kernel
	// chose them.
	link, err = netlink.LinkByIndex(d.index)
	if err != nil {
		return fmt.Errorf("read link: %w", err)
	}
	d.mac = link.Attrs().HardwareAddr
	d.mtu = link.Attrs().MTU
	return nil
}

// SetAddr makes p the device's only IPv4 address; the zero Prefix
// removes them all. The node calls it as its VM's lease changes, for
// hosts with no DHCP client.
func (d *Linux) SetAddr(p netip.Prefix) error {
	link, err := netlink.LinkByIndex(d.index)
	if err != nil {
		return fmt.Errorf("tap %s: find link: %w", d.name, err)
	}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("tap %s: list addresses: %w", d.name, err)
	}
	for _, a := range addrs {
		if ones, _ := a.Mask.Size(); p.IsValid() && a.IP.Equal(p.Addr().AsSlice()) && ones == p.Bits() {
			return nil // already there
		}
		if err := netlink.AddrDel(link, &a); err != nil {
			return fmt.Errorf("tap %s: remove address %v: %w", d.name, a.IPNet, err)
		}
	}
	if !p.IsValid() {
		return nil
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}}
	if err := netlink.AddrAdd(link, addr); err != nil {
		return fmt.Errorf("tap %s: add address %v: %w", d.name, p, err)
	}
	return nil
}

// ReadFrame reads one Ethernet frame into buf, which should hold MTU() +
// EthHeaderLen bytes: the kernel cuts longer frames to fit. With offloads
// the frame comes after a VirtioNetHdr and may be up to 64 KiB: buf should
// hold VirtioNetHdrLen + EthHeaderLen + 65535 bytes. After Close it
// returns an error matching os.ErrClosed.
func (d *Linux) ReadFrame(buf []byte) (int, error) {
	return d.file.Read(buf)
}

// ReadFrames implements BatchReader: it waits for a frame and, if one was
// already queued when it came (so others may be behind it), reads on until
// the device has nothing queued (EAGAIN) or bufs are full. A frame it had
// to wait for most likely came alone, and finding that out would cost a
// system call for every frame. One goroutine at a time may call it; after
// Close it returns an error matching os.ErrClosed.
func (d *Linux) ReadFrames(bufs [][]byte, sizes []int) (int, error) {
	n, queued, err := d.read(bufs[0], true)
	if err != nil {
		return 0, err
	}
	sizes[0] = n
	count := 1
	for queued && count < len(bufs) {
		n, _, err := d.read(bufs[count], false)
		if err != nil || n <= 0 {
			break
		}
		sizes[count] = n
		count++
	}
	return count, nil
}

// read reads one frame into buf, waiting for one if wait is set (and
// failing with EAGAIN otherwise). queued reports that the frame was there
// at the first try.
func (d *Linux) read(buf []byte, wait bool) (n int, queued bool, err error) {
	d.readBuf, d.readWait, d.readTries = buf, wait, 0
	err = d.raw.Read(d.readFn)
	d.readBuf = nil
	switch {
	case err != nil && d.closed.Load():
		return 0, false, fmt.Errorf("tap %s: read: %w", d.name, os.ErrClosed)
	case err != nil:
		return 0, false, err
	case d.readErr != nil:
		return 0, false, d.readErr
	}
	return d.readN, d.readTries == 1, nil
}

// WriteFrame writes one Ethernet frame to the kernel, as if it had arrived
// on the interface; with offloads, preceded by a VirtioNetHdr.
func (d *Linux) WriteFrame(frame []byte) error {
	_, err := d.file.Write(frame)
	return err
}

// Name is the interface name.
func (d *Linux) Name() string { return d.name }

// MAC is the interface's hardware address, read after configuration.
func (d *Linux) MAC() net.HardwareAddr { return append(net.HardwareAddr(nil), d.mac...) }

// MTU is the interface's MTU, read after configuration.
func (d *Linux) MTU() int { return d.mtu }

// Offloads reports whether frames carry a vnet header and which offloads
// the kernel accepted. It is the zero OffloadState ("off") unless
// Config.Offloads was set and the kernel went along.
func (d *Linux) Offloads() OffloadState { return d.off }

// Close removes the device and unblocks a pending ReadFrame. It is safe to
// call more than once.
func (d *Linux) Close() error {
	d.closeOnce.Do(func() { d.closeErr = d.close() })
	return d.closeErr
}

func (d *Linux) close() error {
	d.closed.Store(true)
	// Closing the last fd of a non-persistent TAP unregisters it.
	err := d.file.Close()
	if err != nil {
		err = fmt.Errorf("tap %s: close: %w", d.name, err)
	}
	// If something made it persistent meanwhile, delete it anyway. Look it
	// up by index and check the name so a newer device that reuses the
	// name is left alone.
	if d.index == 0 {
		return err
	}
	link, lerr := netlink.LinkByIndex(d.index)
	if lerr != nil || link.Attrs().Name != d.name {
		return err
	}
	if derr := netlink.LinkDel(link); derr != nil {
		err = errors.Join(err, fmt.Errorf("tap %s: delete link: %w", d.name, derr))
	}
	return err
}
