package overlay

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// A datagram on the data path, over UDP or the stream fallback:
//
//	0      1      2      4            8                16
//	+------+------+------+------------+----------------+------------------+
//	| ver  | type | rsvd | receiver   | counter        | sealed payload   |
//	|      |      | (0)  | index (BE) | (BE)           | + 16-byte tag    |
//	+------+------+------+------------+----------------+------------------+
//
// The receiver index names the session key at the receiving node; the
// counter is the AEAD nonce and feeds the replay window. The whole header
// is the AEAD's associated data, so none of it can be altered in flight.
const (
	// wireVersion 2 added typeDataPartial: a node of version 1 would
	// drop those, so the two refuse each other's handshakes instead.
	wireVersion = 2

	// HeaderLen is the datagram header length. Callers of Send leave this
	// much room in front of the packet so that sealing needs no copy.
	HeaderLen = 16
	// TagLen is the AEAD tag length of every suite.
	TagLen = 16
	// Overhead is what the overlay adds to an IP packet on a direct link.
	Overhead = HeaderLen + TagLen
	// UDPIPv4Overhead is the underlay's IPv4 and UDP headers.
	UDPIPv4Overhead = 20 + 8
)

// Datagram types.
const (
	typeData byte = 1 // an IPv4 packet for the VM
	typePing byte = 2 // keepalive and path probe; payload is pingLen bytes
	typePong byte = 3 // answer to a ping, echoing its payload
	// typePunch carries a node's UDP candidates for hole punching, end to
	// end under a session over the ring (punch.go).
	typePunch byte = 9
	// typeLost tells a peer that no session here has the receiver index
	// its datagram named: a bare header, padded to the shortest datagram
	// and not sealed (lost.go).
	typeLost byte = 11
	// typeDataPartial is an IPv4 TCP or UDP packet for the VM whose
	// transport checksum holds only the pseudo-header sum, as a kernel
	// with checksum offload leaves it (tap.SegmentLayout.PartialCsum):
	// the receiving node finishes it, or has its own kernel take it as
	// it is. The AEAD guards the packet in flight, so a checksum computed
	// at one end and checked at the other would only cost two passes
	// over every byte.
	typeDataPartial byte = 12
)

const pingLen = 16 // probe id (8) and send time (8)

// isData reports whether a datagram type carries a packet for the VM.
func isData(typ byte) bool { return typ == typeData || typ == typeDataPartial }

// dataType is the datagram type of a packet for the VM.
func dataType(csumPartial bool) byte {
	if csumPartial {
		return typeDataPartial
	}
	return typeData
}

var (
	errShort      = errors.New("datagram shorter than header and tag")
	errVersion    = errors.New("unknown datagram version")
	errType       = errors.New("unknown datagram type")
	errReservedNZ = errors.New("reserved header bits set")
)

// header is the parsed datagram header.
type header struct {
	typ      byte
	receiver uint32
	counter  uint64
}

func (h header) put(b []byte) {
	b[0] = wireVersion
	b[1] = h.typ
	b[2], b[3] = 0, 0
	binary.BigEndian.PutUint32(b[4:8], h.receiver)
	binary.BigEndian.PutUint64(b[8:16], h.counter)
}

// parseHeader checks a datagram's header. It does not authenticate it.
func parseHeader(b []byte) (header, error) {
	if len(b) < HeaderLen+TagLen {
		return header{}, errShort
	}
	if b[0] != wireVersion {
		return header{}, fmt.Errorf("%w %d", errVersion, b[0])
	}
	h := header{
		typ:      b[1],
		receiver: binary.BigEndian.Uint32(b[4:8]),
		counter:  binary.BigEndian.Uint64(b[8:16]),
	}
	switch h.typ {
	case typeData, typeDataPartial, typePing, typePong, typeRoute, typePunch, typeLost:
	default:
		return header{}, fmt.Errorf("%w %d", errType, h.typ)
	}
	if b[2] != 0 || b[3] != 0 {
		return header{}, errReservedNZ
	}
	return h, nil
}
