// Package tap is the VM's side of a node: the TAP device that carries the
// VM's Ethernet frames, and the virtual gateway that answers the VM's ARP,
// takes IPv4 packets out of its frames and writes arriving packets back to it.
package tap

import "io"

// EthHeaderLen is the length of an Ethernet II header without VLAN tags.
const EthHeaderLen = 14

// Device carries whole Ethernet frames between the node and the VM.
// Implementations are the Linux TAP device and an in-memory pipe for tests.
// ReadFrame and WriteFrame may be called from different goroutines; Close
// unblocks a pending ReadFrame.
type Device interface {
	// ReadFrame reads one frame into buf and returns its length.
	ReadFrame(buf []byte) (int, error)
	// WriteFrame writes one frame.
	WriteFrame(frame []byte) error
	// Name is the interface name.
	Name() string
	io.Closer
}

// BatchReader is a Device that reads several frames in one call, so that a
// burst of small packets costs one wake-up rather than one each.
type BatchReader interface {
	// ReadFrames waits for one frame, then takes without waiting up to
	// len(bufs)-1 more that are already queued. Frame i lands in bufs[i]
	// with its length in sizes[i]; it returns how many it read.
	ReadFrames(bufs [][]byte, sizes []int) (int, error)
}
