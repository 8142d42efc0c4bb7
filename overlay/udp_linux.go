package overlay

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The data socket sends a batch of equal-sized datagrams with one sendmsg
// (UDP_SEGMENT: the kernel or the NIC cuts them apart) and receives a run of
// datagrams from one sender with one recvmsg (UDP_GRO). That is where most
// of the data path's speed comes from: the per-datagram cost of the system
// call is paid once per batch.

const (
	// maxGSOBytes bounds one UDP_SEGMENT send: the batch travels as one
	// UDP packet inside the kernel, whose length field is 16 bits.
	maxGSOBytes = 65535 - UDPIPv4Overhead
	// maxGSOSegments is the kernel's UDP_MAX_SEGMENTS.
	maxGSOSegments = 64
)

// SegmentsPerSend is how many datagrams, each carrying a packet of up to
// mtu bytes, one UDP_SEGMENT send takes. A TSO frame of more segments
// costs a second system call at each end for its last few: a TAP's
// gso_max_segs set to this keeps the VM's frames to one.
func SegmentsPerSend(mtu int) int {
	return max(1, min(maxGSOSegments, maxGSOBytes/(mtu+Overhead)))
}

// udpConn is the data socket with its offloads.
type udpConn struct {
	*net.UDPConn
	raw syscall.RawConn
	gso atomic.Bool // UDP_SEGMENT works; cleared on the first refusal
	gro bool

	gsoBatches atomic.Uint64 // sends of several datagrams in one call
	groBatches atomic.Uint64 // reads that brought several datagrams
	// mmsgBatches counts sendmmsg calls of queued small datagrams.
	mmsgBatches atomic.Uint64
}

func newUDPConn(c *net.UDPConn) (*udpConn, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	u := &udpConn{UDPConn: c, raw: raw}
	u.gso.Store(true)
	raw.Control(func(fd uintptr) {
		// Large buffers ride out bursts of a 64 KiB TSO frame's worth of
		// datagrams arriving while the receiver is busy decrypting.
		unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20)
		unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 8<<20)
		u.gro = unix.SetsockoptInt(int(fd), unix.SOL_UDP, unix.UDP_GRO, 1) == nil
	})
	return u, nil
}

// writeBatch sends datagrams laid out back to back in b, each segSize long
// but the last, which may be shorter.
func (u *udpConn) writeBatch(b []byte, segSize int, to netip.AddrPort) error {
	if len(b) <= segSize {
		_, err := u.WriteToUDPAddrPort(b, to)
		return err
	}
	if u.gso.Load() {
		var oob [24]byte // unix.CmsgSpace(2)
		h := (*unix.Cmsghdr)(unsafePointer(&oob[0]))
		h.Level, h.Type = unix.SOL_UDP, unix.UDP_SEGMENT
		h.SetLen(unix.CmsgLen(2))
		binary.NativeEndian.PutUint16(oob[unix.CmsgLen(0):], uint16(segSize))
		_, _, err := u.WriteMsgUDPAddrPort(b, oob[:unix.CmsgSpace(2)], to)
		if err == nil {
			u.gsoBatches.Add(1)
			return nil
		}
		if !errors.Is(err, unix.EIO) && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.EOPNOTSUPP) {
			return err
		}
		// The route's device cannot segment: do it one by one from now on.
		u.gso.Store(false)
	}
	for off := 0; off < len(b); off += segSize {
		end := min(off+segSize, len(b))
		if _, err := u.WriteToUDPAddrPort(b[off:end], to); err != nil {
			return err
		}
	}
	return nil
}

// segmentSize is the size of each datagram of an n-byte read but the
// last: the UDP_GRO segment size when the read was a GRO run, n otherwise.
func (u *udpConn) segmentSize(n int, oob []byte) int {
	if u.gro && len(oob) > 0 {
		if s := groSegmentSize(oob); s > 0 && s < n {
			u.groBatches.Add(1)
			return s
		}
	}
	return n
}

// groSegmentSize finds the UDP_GRO control message and returns its segment
// size, or 0.
func groSegmentSize(oob []byte) int {
	for len(oob) >= unix.CmsgLen(0) {
		h := (*unix.Cmsghdr)(unsafePointer(&oob[0]))
		l := int(h.Len)
		if l < unix.CmsgLen(0) || l > len(oob) {
			return 0
		}
		if h.Level == unix.SOL_UDP && h.Type == unix.UDP_GRO && l >= unix.CmsgLen(4) {
			return int(binary.NativeEndian.Uint32(oob[unix.CmsgLen(0):]))
		}
		next := unix.CmsgSpace(l - unix.CmsgLen(0))
		if next > len(oob) {
			return 0
		}
		oob = oob[next:]
	}
	return 0
}

func (u *udpConn) String() string {
	return fmt.Sprintf("udp %v (gso %v, gro %v)", u.LocalAddr(), u.gso.Load(), u.gro)
}

// writeTTL sends one datagram with the given IP TTL, for the first probes
// of hole punching: they open this side's NAT mapping but die before the
// peer's NAT, where an early packet would make conntrack pick another
// port for the mapping the peer is about to send to.
func (c *udpConn) writeTTL(b []byte, to netip.AddrPort, ttl int) error {
	return writeTTL(c.UDPConn, b, to, ttl)
}

// writeTTL sends b to to with an IP TTL of ttl for this datagram only.
func writeTTL(c *net.UDPConn, b []byte, to netip.AddrPort, ttl int) error {
	oob := make([]byte, unix.CmsgSpace(4))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	h.Level, h.Type = unix.IPPROTO_IP, unix.IP_TTL
	h.SetLen(unix.CmsgLen(4))
	*(*int32)(unsafe.Pointer(&oob[unix.CmsgLen(0)])) = int32(ttl)
	_, _, err := c.WriteMsgUDPAddrPort(b, oob, to)
	return err
}
