package routing

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"math"
	"math/bits"

	"github.com/libp2p/go-libp2p/core/peer"
)

// AddrLen is the length of a ring address in bytes.
const AddrLen = 20

// Addr is a position on the ring: a 160-bit number, arithmetic modulo
// 2^160. It is a value (comparable, usable as a map key, no allocation);
// the three words hold the big-endian bytes 0-7, 8-15 and 16-19, so
// ordering and arithmetic cost a few instructions, which matters when the
// simulator routes millions of packets.
type Addr struct {
	hi, mid uint64
	lo      uint32
}

// AddrFromPeer returns the ring address of a peer: the first 20 bytes of
// SHA-256 over its peer ID's bytes. The peer ID is a hash of the public
// key, so a node cannot choose its place on the ring.
func AddrFromPeer(id peer.ID) Addr {
	sum := sha256.Sum256([]byte(id))
	return AddrFromBytes(sum[:AddrLen])
}

// AddrFromBytes reads a big-endian address from the first AddrLen bytes
// of b, which must hold at least that many.
func AddrFromBytes(b []byte) Addr {
	_ = b[AddrLen-1]
	return Addr{
		hi:  binary.BigEndian.Uint64(b[0:8]),
		mid: binary.BigEndian.Uint64(b[8:16]),
		lo:  binary.BigEndian.Uint32(b[16:20]),
	}
}

// Bytes returns the address big-endian.
func (a Addr) Bytes() [AddrLen]byte {
	var b [AddrLen]byte
	binary.BigEndian.PutUint64(b[0:8], a.hi)
	binary.BigEndian.PutUint64(b[8:16], a.mid)
	binary.BigEndian.PutUint32(b[16:20], a.lo)
	return b
}

// AppendBytes appends the address big-endian to b.
func (a Addr) AppendBytes(b []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, a.hi)
	b = binary.BigEndian.AppendUint64(b, a.mid)
	return binary.BigEndian.AppendUint32(b, a.lo)
}

// String returns the address as 40 hex digits.
func (a Addr) String() string {
	b := a.Bytes()
	return hex.EncodeToString(b[:])
}

// Cmp compares a and b as unsigned numbers: -1, 0 or +1.
func (a Addr) Cmp(b Addr) int {
	switch {
	case a.hi != b.hi:
		return cmp64(a.hi, b.hi)
	case a.mid != b.mid:
		return cmp64(a.mid, b.mid)
	case a.lo != b.lo:
		return cmp64(uint64(a.lo), uint64(b.lo))
	}
	return 0
}

func cmp64(a, b uint64) int {
	if a < b {
		return -1
	}
	return 1
}

// Less reports whether a < b as unsigned numbers. For distances, it means
// "closer".
func (a Addr) Less(b Addr) bool {
	if a.hi != b.hi {
		return a.hi < b.hi
	}
	if a.mid != b.mid {
		return a.mid < b.mid
	}
	return a.lo < b.lo
}

// Add returns a+b modulo 2^160.
func (a Addr) Add(b Addr) Addr {
	// The low word is 32 bits wide, so its carry is bit 32 of the sum.
	lo := uint64(a.lo) + uint64(b.lo)
	mid, c := bits.Add64(a.mid, b.mid, lo>>32)
	hi, _ := bits.Add64(a.hi, b.hi, c)
	return Addr{hi: hi, mid: mid, lo: uint32(lo)}
}

// Sub returns a-b modulo 2^160.
func (a Addr) Sub(b Addr) Addr {
	lo := uint64(a.lo) - uint64(b.lo)
	mid, c := bits.Sub64(a.mid, b.mid, lo>>63)
	hi, _ := bits.Sub64(a.hi, b.hi, c)
	return Addr{hi: hi, mid: mid, lo: uint32(lo)}
}

// Past returns the address one step beyond a going away from self, the
// shorter way round: asking for the node nearest it finds a's next
// neighbour on that side (or a itself, where a has none).
func (a Addr) Past(self Addr) Addr {
	one := Addr{lo: 1}
	if self.Clockwise(a).hi>>63 == 0 { // a is clockwise of self
		return a.Add(one)
	}
	return a.Sub(one)
}

// Neg returns -a modulo 2^160.
func (a Addr) Neg() Addr { return Addr{}.Sub(a) }

// Clockwise returns the distance from a to b going clockwise (the
// direction of increasing addresses): b-a modulo 2^160.
func (a Addr) Clockwise(b Addr) Addr { return b.Sub(a) }

// Distance returns the distance between a and b the shorter way round the
// ring. Compare distances with Less.
func (a Addr) Distance(b Addr) Addr {
	d := b.Sub(a)
	if d.hi>>63 == 1 { // more than half way round: the other way is shorter
		return d.Neg()
	}
	return d
}

// Fraction returns the address as a fraction of the ring, in [0, 1). Used
// for estimates, never for routing, so float precision is enough.
func (a Addr) Fraction() float64 {
	return (float64(a.hi) + float64(a.mid)/0x1p64) / 0x1p64
}

// AddrFromFraction returns the address a fraction f of the way round the
// ring from zero, f in [0, 1); values outside are clamped. The bits below
// the float's precision are zero.
func AddrFromFraction(f float64) Addr {
	switch {
	case !(f > 0): // also NaN
		return Addr{}
	case f >= 1:
		return Addr{hi: math.MaxUint64, mid: math.MaxUint64, lo: math.MaxUint32}
	}
	x := f * 0x1p64
	hi := uint64(x)
	mid := uint64((x - float64(hi)) * 0x1p64)
	return Addr{hi: hi, mid: mid}
}
