//go:build linux

package tap

import (
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// TUNSETOFFLOAD flags (linux/if_tun.h; not in x/sys/unix). Each one lets
// the kernel hand us packets with that work left undone.
const (
	tunFCsum = 0x01 // checksums may be partial (NEEDS_CSUM)
	tunFTSO4 = 0x02 // TCP over IPv4 up to 64 KiB (needs tunFCsum)
	tunFTSO6 = 0x04
	tunFUSO4 = 0x20 // UDP segmentation offload, Linux 6.2+
	tunFUSO6 = 0x40
)

// OffloadState is what a TAP opened with Config.Offloads ended up with.
type OffloadState struct {
	// VnetHdr: every frame read or written carries a VirtioNetHdr first.
	VnetHdr bool
	// Flags are the TUNSETOFFLOAD flags in effect (TUN_F_*).
	Flags uint
}

// String lists the active offloads for logs, e.g. "vnet_hdr csum tso4
// tso6", or "off".
func (s OffloadState) String() string {
	if !s.VnetHdr {
		return "off"
	}
	var b strings.Builder
	b.WriteString("vnet_hdr")
	for _, f := range []struct {
		bit  uint
		name string
	}{{tunFCsum, "csum"}, {tunFTSO4, "tso4"}, {tunFTSO6, "tso6"}, {tunFUSO4, "uso4"}, {tunFUSO6, "uso6"}} {
		if s.Flags&f.bit != 0 {
			b.WriteString(" " + f.name)
		}
	}
	if rest := s.Flags &^ (tunFCsum | tunFTSO4 | tunFTSO6 | tunFUSO4 | tunFUSO6); rest != 0 {
		fmt.Fprintf(&b, " %#x", rest)
	}
	return b.String()
}

// TSO reports whether the kernel hands over TCP frames larger than the
// MTU, which must go through Segment.
func (s OffloadState) TSO() bool { return s.VnetHdr && s.Flags&tunFTSO4 != 0 }

// enableOffloads sets up a fd opened with IFF_VNET_HDR: a 10-byte header,
// then the best offload set the kernel accepts.
func enableOffloads(fd int) (OffloadState, error) {
	if err := unix.IoctlSetPointerInt(fd, unix.TUNSETVNETHDRSZ, VirtioNetHdrLen); err != nil {
		return OffloadState{}, fmt.Errorf("TUNSETVNETHDRSZ: %w", err)
	}
	// Best first: USO is Linux 6.2+, and the kernel refuses unknown bits.
	tries := [...]uint{
		tunFCsum | tunFTSO4 | tunFTSO6 | tunFUSO4 | tunFUSO6,
		tunFCsum | tunFTSO4 | tunFTSO6,
	}
	var err error
	for _, flags := range tries {
		// The ioctl takes the flags by value, not through a pointer.
		if err = unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, int(flags)); err == nil {
			return OffloadState{VnetHdr: true, Flags: flags}, nil
		}
	}
	return OffloadState{}, fmt.Errorf("TUNSETOFFLOAD: %w", err)
}
