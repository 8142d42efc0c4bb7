// Package replay rejects datagrams whose counter was seen before or lies
// too far behind the newest one.
//
// The window is a ring of 64-bit blocks: moving it forward clears whole
// blocks, so the cost does not depend on how far the counter jumps.
package replay

const (
	blockBits  = 64
	ringBlocks = 1 << 8 // must be a power of two
	blockMask  = ringBlocks - 1
	bitMask    = blockBits - 1

	// WindowSize is how far behind the newest counter a datagram may
	// arrive and still be accepted once.
	WindowSize = (ringBlocks - 1) * blockBits
)

// Filter tracks the counters received under one session key. The zero
// value is ready to use. It is not safe for concurrent use.
type Filter struct {
	last uint64
	ring [ringBlocks]uint64
}

// Reset forgets every counter seen.
func (f *Filter) Reset() {
	f.last = 0
	f.ring = [ringBlocks]uint64{}
}

// Accept reports whether counter is new and inside the window, and records
// it. Counters at or above limit are always refused, so a session cannot
// be driven past its rekey bound.
func (f *Filter) Accept(counter, limit uint64) bool {
	if counter >= limit {
		return false
	}
	block := counter / blockBits
	if counter > f.last {
		current := f.last / blockBits
		diff := block - current
		if diff > ringBlocks {
			diff = ringBlocks
		}
		for i := current + 1; i <= current+diff; i++ {
			f.ring[i&blockMask] = 0
		}
		f.last = counter
	} else if f.last-counter > WindowSize {
		return false
	}
	block &= blockMask
	bit := uint64(1) << (counter & bitMask)
	old := f.ring[block]
	f.ring[block] = old | bit
	return old&bit == 0
}
