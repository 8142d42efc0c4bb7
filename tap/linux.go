//go:build linux

package tap

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// maxNameLen is the longest interface name the kernel accepts (IFNAMSIZ
// minus the terminating NUL).
const maxNameLen = unix.IFNAMSIZ - 1

// openFlags are the TUNSETIFF flags every TAP is created with, kept in one
// place so that offloads (IFF_VNET_HDR, followed by TUNSETVNETHDRSZ and
// TUNSETOFFLOAD on the fd) can be added here and in openTUN alone.
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
}

// Linux is a TAP device created through /dev/net/tun. It implements Device.
type Linux struct {
	// file is the TAP's fd, non-blocking and registered with the Go
	// poller so that Close unblocks a pending Read. Holding it keeps its
	// finalizer from closing the fd under us.
	file  *os.File
	name  string
	index int
	mac   net.HardwareAddr
	mtu   int

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

	file, name, err := openTUN(cfg.Name)
	if err != nil {
		return nil, err
	}
	d := &Linux{file: file, name: name}
	if err := d.configure(cfg); err != nil {
		d.Close()
		return nil, fmt.Errorf("tap %s: %w", name, err)
	}
	return d, nil
}

// openTUN opens /dev/net/tun and attaches it to a new TAP named name. It
// returns the fd as a pollable *os.File and the name the kernel chose.
func openTUN(name string) (*os.File, string, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, "", fmt.Errorf("tap: open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, "", fmt.Errorf("tap: name %q: %w", name, err)
	}
	ifr.SetUint16(openFlags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		if errors.Is(err, unix.EBUSY) {
			return nil, "", fmt.Errorf("tap: create %q: interface exists: %w", name, err)
		}
		return nil, "", fmt.Errorf("tap: create %q: TUNSETIFF: %w", name, err)
	}
	// The fd is already non-blocking, so os.NewFile registers it with the
	// runtime poller: reads park the goroutine instead of a thread, and
	// Close wakes them.
	return os.NewFile(uintptr(fd), "/dev/net/tun"), ifr.Name(), nil
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

// ReadFrame reads one Ethernet frame into buf, which should hold MTU() +
// EthHeaderLen bytes: the kernel cuts longer frames to fit. After Close it
// returns an error matching os.ErrClosed.
func (d *Linux) ReadFrame(buf []byte) (int, error) {
	return d.file.Read(buf)
}

// WriteFrame writes one Ethernet frame to the kernel, as if it had arrived
// on the interface.
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

// Close removes the device and unblocks a pending ReadFrame. It is safe to
// call more than once.
func (d *Linux) Close() error {
	d.closeOnce.Do(func() { d.closeErr = d.close() })
	return d.closeErr
}

func (d *Linux) close() error {
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
