package overlay

import (
	"encoding/binary"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// mmsgs holds the kernel structures of one recvmmsg or sendmmsg call,
// made once and reused, so that moving a batch of datagrams allocates
// nothing.
type mmsgs struct {
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet4
	oobs  [][]byte

	// The system call in progress, for recvFn and sendFn: bound once, so
	// that handing them to the poller allocates nothing per call.
	first, count int
	done         int
	errno        syscall.Errno
	recvFn       func(fd uintptr) bool
	sendFn       func(fd uintptr) bool
}

func newMmsgs(n, oobLen int) *mmsgs {
	m := &mmsgs{
		hdrs:  make([]unix.Mmsghdr, n),
		iovs:  make([]unix.Iovec, n),
		names: make([]unix.RawSockaddrInet4, n),
		oobs:  make([][]byte, n),
	}
	for i := range n {
		if oobLen > 0 {
			m.oobs[i] = make([]byte, oobLen)
		}
	}
	m.recvFn = func(fd uintptr) bool { return m.call(unix.SYS_RECVMMSG, fd) }
	m.sendFn = func(fd uintptr) bool { return m.call(unix.SYS_SENDMMSG, fd) }
	return m
}

// call makes one recvmmsg or sendmmsg call for messages first to
// first+count-1, without waiting; it reports false, to be called again
// when the socket is ready, if it would have had to wait.
func (m *mmsgs) call(trap, fd uintptr) bool {
	r, _, e := unix.Syscall6(trap, fd, uintptr(unsafe.Pointer(&m.hdrs[m.first])),
		uintptr(m.count), unix.MSG_DONTWAIT, 0, 0)
	m.done, m.errno = int(r), e
	return e != unix.EAGAIN
}

// set points message i at buf, with addr as its destination (for sending;
// zero for receiving).
func (m *mmsgs) set(i int, buf []byte, addr netip.AddrPort) {
	m.iovs[i].Base = unsafe.SliceData(buf)
	m.iovs[i].SetLen(len(buf))
	h := &m.hdrs[i].Hdr
	*h = unix.Msghdr{}
	h.Iov = &m.iovs[i]
	h.Iovlen = 1
	h.Name = (*byte)(unsafe.Pointer(&m.names[i]))
	h.Namelen = unix.SizeofSockaddrInet4
	if addr.IsValid() {
		m.names[i] = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: addr.Addr().As4()}
		binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&m.names[i].Port))[:], addr.Port())
	}
	if m.oobs[i] != nil {
		h.Control = unsafe.SliceData(m.oobs[i])
		h.SetControllen(len(m.oobs[i]))
	}
	m.hdrs[i].Len = 0
}

// from is the source address the kernel wrote for message i.
func (m *mmsgs) from(i int) netip.AddrPort {
	sa := &m.names[i]
	port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
	return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), port)
}

// received returns the length of message i and its control data.
func (m *mmsgs) received(i int) (n int, oob []byte) {
	return int(m.hdrs[i].Len), m.oobs[i][:m.hdrs[i].Hdr.Controllen]
}

// recvmmsg fills messages 0..len-1, waiting for the first; it returns how
// many arrived.
func (u *udpConn) recvmmsg(m *mmsgs, count int) (int, error) {
	m.first, m.count = 0, count
	if err := u.raw.Read(m.recvFn); err != nil {
		return 0, err
	}
	if m.errno != 0 {
		return 0, m.errno
	}
	return m.done, nil
}

// sendmmsg sends messages 0..count-1, all of them unless an error stops
// it.
func (u *udpConn) sendmmsg(m *mmsgs, count int) error {
	for sent := 0; sent < count; {
		m.first, m.count = sent, count-sent
		if err := u.raw.Write(m.sendFn); err != nil {
			return err
		}
		if m.errno != 0 {
			return m.errno
		}
		sent += m.done
	}
	return nil
}
