package tap

import (
	"encoding/binary"
	"math/bits"
)

// sum16 is the one's-complement sum of b (big-endian 16-bit words, an odd
// last byte padded with zero) added to initial, not complemented. It adds
// 64-bit words with end-around carry, which folds to the same 16-bit sum
// (RFC 1071) four times as fast: segmenting and coalescing checksum every
// byte that crosses the overlay.
func sum16(b []byte, initial uint16) uint16 {
	acc := uint64(initial)
	var carry uint64
	for len(b) >= 32 {
		acc, carry = bits.Add64(acc, binary.BigEndian.Uint64(b[0:8]), 0)
		acc, carry = bits.Add64(acc, binary.BigEndian.Uint64(b[8:16]), carry)
		acc, carry = bits.Add64(acc, binary.BigEndian.Uint64(b[16:24]), carry)
		acc, carry = bits.Add64(acc, binary.BigEndian.Uint64(b[24:32]), carry)
		acc += carry // cannot carry again: acc was at most 2^64-2
		b = b[32:]
	}
	for len(b) >= 8 {
		acc, carry = bits.Add64(acc, binary.BigEndian.Uint64(b), 0)
		acc += carry
		b = b[8:]
	}
	var tail uint64
	for i := 0; i < len(b); i++ {
		tail |= uint64(b[i]) << (56 - 8*i)
	}
	acc, carry = bits.Add64(acc, tail, 0)
	acc += carry
	return fold64(acc)
}

// fold64 folds a 64-bit one's-complement sum to 16 bits.
func fold64(v uint64) uint16 {
	v = v>>32 + v&0xffffffff
	v = v>>32 + v&0xffffffff
	return fold32(uint32(v))
}

// fold32 folds a 32-bit one's-complement sum to 16 bits.
func fold32(v uint32) uint16 {
	v = v>>16 + v&0xffff
	v = v>>16 + v&0xffff
	return uint16(v)
}

// pseudoSum is the one's-complement sum of the IPv4 pseudo-header of a
// TCP or UDP segment of length n (RFC 793, RFC 768), from the addresses
// in the IPv4 header ip.
func pseudoSum(ip []byte, proto byte, n int) uint16 {
	s := uint32(binary.BigEndian.Uint16(ip[12:14])) + uint32(binary.BigEndian.Uint16(ip[14:16])) +
		uint32(binary.BigEndian.Uint16(ip[16:18])) + uint32(binary.BigEndian.Uint16(ip[18:20])) +
		uint32(proto) + uint32(n)
	return fold32(s)
}
