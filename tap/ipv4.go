package tap

import (
	"encoding/binary"
	"errors"
)

// Wire constants for the few protocols the gateway speaks.
const (
	etherTypeIPv4  = 0x0800
	etherTypeARP   = 0x0806
	etherTypeIPv6  = 0x86dd
	etherTypeVLAN  = 0x8100 // 802.1Q
	etherTypeQinQ  = 0x88a8 // 802.1ad
	etherTypeQinQ2 = 0x9100 // pre-standard double tagging

	ipv4MinHeaderLen = 20
	ipv4MinMTU       = 68 // RFC 791: every link carries 68 bytes unfragmented
	ipv4MaxLen       = 0xffff

	ipv4FlagReserved = 0x8000
	ipv4FlagDF       = 0x4000
	ipv4FlagMF       = 0x2000
	ipv4OffsetMask   = 0x1fff

	protoICMP = 1
)

// ipv4Error says why a buffer is not a usable IPv4 packet. The values are
// in the same order as the matching drop counters of both directions.
type ipv4Error int

const (
	ipv4OK ipv4Error = iota
	ipv4Truncated
	ipv4BadVersion
	ipv4BadIHL
	ipv4BadTotalLength
	ipv4BadChecksum
)

// checkIPv4 validates the IPv4 header at the start of b and returns the
// packet cut to its total length (Ethernet pads short frames, so b may be
// longer). It does not look past the header.
func checkIPv4(b []byte) ([]byte, ipv4Error) {
	if len(b) < ipv4MinHeaderLen {
		return nil, ipv4Truncated
	}
	if b[0]>>4 != 4 {
		return nil, ipv4BadVersion
	}
	ihl := int(b[0]&0x0f) * 4
	if ihl < ipv4MinHeaderLen {
		return nil, ipv4BadIHL
	}
	if ihl > len(b) {
		return nil, ipv4Truncated
	}
	total := int(binary.BigEndian.Uint16(b[2:4]))
	if total < ihl {
		return nil, ipv4BadTotalLength
	}
	if total > len(b) {
		return nil, ipv4Truncated
	}
	if checksum(b[:ihl], 0) != 0 {
		return nil, ipv4BadChecksum
	}
	return b[:total], ipv4OK
}

// checksum is the Internet checksum (RFC 1071) of b, folded into initial.
// Over a header that carries its checksum, a valid header yields 0.
func checksum(b []byte, initial uint32) uint16 {
	return ^sum16(b, fold32(initial))
}

// setIPv4Checksum fills in the checksum of the IPv4 header hdr.
func setIPv4Checksum(hdr []byte) {
	hdr[10], hdr[11] = 0, 0
	binary.BigEndian.PutUint16(hdr[10:12], checksum(hdr, 0))
}

var (
	errBadOptions       = errors.New("malformed IPv4 options")
	errOffsetOverflow   = errors.New("fragment offset overflows")
	errFragmentBufSmall = errors.New("buffer too small for fragments")
)

// fragment splits pkt, a valid IPv4 packet (as returned by checkIPv4) of
// more than mtu bytes, into fragments of at most mtu bytes each, built one
// after another in buf and returned in order (RFC 791). pkt may itself be
// a fragment; its offset and MF flag carry over. The first fragment keeps
// all options, later ones only those with the copy flag. DF is not
// checked: the caller decides whether fragmenting is allowed.
func fragment(pkt []byte, mtu int, buf []byte) ([][]byte, error) {
	ihl := int(pkt[0]&0x0f) * 4
	payload := pkt[ihl:]

	// The header of every fragment after the first: the fixed part plus
	// the options marked "copy", padded with end-of-options to 4 bytes.
	var laterHdr [60]byte
	n := copy(laterHdr[:], pkt[:ipv4MinHeaderLen])
	for i := ipv4MinHeaderLen; i < ihl; {
		switch kind := pkt[i]; kind {
		case 0: // end of options
			i = ihl
		case 1: // no-op, never copied
			i++
		default:
			if i+1 >= ihl {
				return nil, errBadOptions
			}
			l := int(pkt[i+1])
			if l < 2 || i+l > ihl {
				return nil, errBadOptions
			}
			if kind&0x80 != 0 {
				n += copy(laterHdr[n:], pkt[i:i+l])
			}
			i += l
		}
	}
	for n%4 != 0 {
		laterHdr[n] = 0
		n++
	}
	laterHdr[0] = 0x40 | byte(n/4)
	later := laterHdr[:n]

	flags := binary.BigEndian.Uint16(pkt[6:8])
	baseOffset := int(flags&ipv4OffsetMask) * 8
	lastMF := flags&ipv4FlagMF != 0
	keep := flags & ipv4FlagReserved

	hdr := pkt[:ihl]
	var frags [][]byte
	if room := (mtu - ihl) &^ 7; room > 0 {
		frags = make([][]byte, 0, len(payload)/room+1)
	}
	for off := 0; off < len(payload); {
		room := (mtu - len(hdr)) &^ 7
		if room <= 0 {
			// mtu >= 68 and a header is at most 60 bytes, so there is
			// always room for 8; guard anyway rather than loop forever.
			return nil, errFragmentBufSmall
		}
		size := min(room, len(payload)-off)
		last := off+size == len(payload)
		if (baseOffset+off)/8 > ipv4OffsetMask {
			return nil, errOffsetOverflow
		}
		if len(buf) < len(hdr)+size {
			return nil, errFragmentBufSmall
		}
		f := buf[:len(hdr)+size]
		buf = buf[len(f):]
		copy(f, hdr)
		copy(f[len(hdr):], payload[off:off+size])
		binary.BigEndian.PutUint16(f[2:4], uint16(len(f)))
		fl := keep | uint16((baseOffset+off)/8)
		if !last || lastMF {
			fl |= ipv4FlagMF
		}
		binary.BigEndian.PutUint16(f[6:8], fl)
		setIPv4Checksum(f[:len(hdr)])
		frags = append(frags, f)
		off += size
		hdr = later
	}
	return frags, nil
}
