package overlay

import (
	"crypto/aes"
	"crypto/cipher"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/sys/cpu"

	"github.com/ringnet/ringnet/overlay/replay"
)

// Suite is an AEAD a link can use.
type Suite byte

const (
	SuiteAES256GCM        Suite = 1
	SuiteChaCha20Poly1305 Suite = 2
)

func (s Suite) String() string {
	switch s {
	case SuiteAES256GCM:
		return "aes-256-gcm"
	case SuiteChaCha20Poly1305:
		return "chacha20-poly1305"
	}
	return fmt.Sprintf("suite(%d)", byte(s))
}

// ParseSuite maps a suite's name to the suite.
func ParseSuite(name string) (Suite, error) {
	for _, s := range []Suite{SuiteAES256GCM, SuiteChaCha20Poly1305} {
		if s.String() == name {
			return s, nil
		}
	}
	return 0, fmt.Errorf("unknown AEAD %q (want aes-256-gcm or chacha20-poly1305)", name)
}

// hasAESHardware reports whether AES-GCM runs in hardware here: only then
// is it faster than ChaCha20-Poly1305, and only then is it constant-time.
func hasAESHardware() bool {
	return (cpu.X86.HasAES && cpu.X86.HasPCLMULQDQ) || (cpu.ARM64.HasAES && cpu.ARM64.HasPMULL)
}

func newAEAD(s Suite, key []byte) (cipher.AEAD, error) {
	switch s {
	case SuiteAES256GCM:
		block, err := aes.NewCipher(key)
		if err != nil {
			return nil, err
		}
		return cipher.NewGCM(block)
	case SuiteChaCha20Poly1305:
		return chacha20poly1305.New(key)
	}
	return nil, fmt.Errorf("unknown suite %d", s)
}

// Session limits, as in WireGuard: a session is replaced after
// RekeyAfterTime or RekeyAfterMessages, and refused outright a little later,
// so a stuck rekey cannot keep old keys in use.
const (
	RekeyAfterTime      = 2 * time.Minute
	RejectAfterTime     = 3 * time.Minute
	RekeyAfterMessages  = 1 << 28
	RejectAfterMessages = RekeyAfterMessages + 1<<24
)

// session is one set of keys between two nodes, one key per direction.
// Keys live only in memory: a VM restored from a snapshot must handshake
// again rather than reuse nonces.
type session struct {
	suite       Suite
	localIndex  uint32 // the index peers put in datagrams for us
	remoteIndex uint32 // the index we put in datagrams for the peer
	send        cipher.AEAD
	recv        cipher.AEAD
	created     time.Time
	sendCounter atomic.Uint64
	// sendReady is false on the responder until the initiator confirms it
	// holds the keys, so that the first datagrams are not lost.
	sendReady atomic.Bool
	// viaRing marks an end-to-end session with a node reached over the
	// ring: its datagrams are taken only out of routed datagrams, and a
	// link session's only directly, so that no relay can pass one off as
	// the other.
	viaRing bool

	replayMu sync.Mutex
	replay   replay.Filter
}

// nonce is a datagram's 96-bit AEAD nonce: the receiver index and the
// counter, bytes 4 to 16 of its header. The index is fixed for a key and
// the counter never repeats under it, so no nonce repeats; and taking it
// from the header needs no buffer of its own.
func nonce(dgram []byte) []byte { return dgram[4:HeaderLen] }

// seal encrypts the payload at buf[HeaderLen:HeaderLen+n] in place and
// returns the datagram, header included. buf needs TagLen bytes of spare
// capacity past the payload. ok is false when the session is spent.
func (s *session) seal(typ byte, buf []byte, n int) (dgram []byte, ok bool) {
	counter, ok := s.reserve(1)
	if !ok {
		return nil, false
	}
	return s.sealAt(typ, counter, buf, n), true
}

// reserve takes n consecutive send counters, for a batch of datagrams to
// seal with one atomic operation rather than n: it returns the first, and
// false when the session cannot seal that many.
func (s *session) reserve(n int) (first uint64, ok bool) {
	end := s.sendCounter.Add(uint64(n))
	return end - uint64(n), end <= RejectAfterMessages
}

// sealAt is seal under a counter that reserve handed out.
func (s *session) sealAt(typ byte, counter uint64, buf []byte, n int) []byte {
	header{typ: typ, receiver: s.remoteIndex, counter: counter}.put(buf)
	out := s.send.Seal(buf[HeaderLen:HeaderLen], nonce(buf), buf[HeaderLen:HeaderLen+n], buf[:HeaderLen])
	return buf[:HeaderLen+len(out)]
}

// open authenticates and decrypts a datagram in place and checks it against
// the replay window. It returns the plaintext, which starts at
// dgram[HeaderLen:].
func (s *session) open(h header, dgram []byte) ([]byte, error) {
	pt, err := s.recv.Open(dgram[HeaderLen:HeaderLen], nonce(dgram), dgram[HeaderLen:], dgram[:HeaderLen])
	if err != nil {
		return nil, errAuth
	}
	// Only after authentication may the counter move the window.
	s.replayMu.Lock()
	ok := s.replay.Accept(h.counter, RejectAfterMessages)
	s.replayMu.Unlock()
	if !ok {
		return nil, errReplay
	}
	return pt, nil
}

func (s *session) expired(now time.Time) bool {
	return now.Sub(s.created) > RejectAfterTime
}

func (s *session) needsRekey(now time.Time) bool {
	return now.Sub(s.created) > RekeyAfterTime || s.sendCounter.Load() > RekeyAfterMessages
}
