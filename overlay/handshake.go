package overlay

import (
	"bytes"
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// The link handshake runs over an authenticated libp2p stream, three
// messages long:
//
//	initiator                              responder
//	hello(init): suites, eph_i, index_i  ->
//	                                    <- hello(resp): suite, eph_r, index_r
//	confirm                              ->
//
// Each hello is signed with the sender's identity key over both peer IDs
// (and, in the answer, the initiator's ephemeral key), so the handshake
// needs no trust in the channel that carries it: the ring can carry it for
// multi-hop pairs unchanged. The responder sends under the new keys only
// after the confirm, when it knows the initiator holds them too.
const (
	helloInit    byte = 1
	helloResp    byte = 2
	helloConfirm byte = 3

	maxSuites     = 4
	maxHelloAddrs = 8
	// maxHelloLen bounds a handshake message on the stream.
	maxHelloLen = 1024

	signContext = "ringnet/link-handshake/v1"
	keyContext  = "ringnet/link-keys/v1"
)

var (
	errHelloShort = errors.New("handshake message truncated")
	errHelloLong  = errors.New("handshake message has trailing bytes")
)

// hello is the first or second handshake message.
type hello struct {
	typ    byte
	suites []Suite // init: what the sender supports, preferred first; resp: the choice
	hasAES bool    // the sender has AES hardware
	eph    [32]byte
	index  uint32 // the sender's receiver index for this session
	// dataPort is the UDP port of the sender's data socket; the peer pairs
	// it with the address the control connection came from.
	dataPort uint16
	// addrs are the virtual addresses the sender holds.
	addrs []netip.Addr
	sig   []byte
}

// marshalBody encodes everything but the signature.
func (h *hello) marshalBody() []byte {
	b := make([]byte, 0, 64+len(h.suites)+4*len(h.addrs))
	var flags byte
	if h.hasAES {
		flags |= 1
	}
	b = append(b, wireVersion, h.typ, flags, byte(len(h.suites)))
	for _, s := range h.suites {
		b = append(b, byte(s))
	}
	b = append(b, h.eph[:]...)
	b = binary.BigEndian.AppendUint32(b, h.index)
	b = binary.BigEndian.AppendUint16(b, h.dataPort)
	b = append(b, byte(len(h.addrs)))
	for _, a := range h.addrs {
		a4 := a.As4()
		b = append(b, a4[:]...)
	}
	return b
}

func (h *hello) marshal() []byte {
	b := h.marshalBody()
	b = binary.BigEndian.AppendUint16(b, uint16(len(h.sig)))
	return append(b, h.sig...)
}

// parseHello decodes a hello; it checks form, not signatures.
func parseHello(b []byte) (*hello, error) {
	r := reader{b: b}
	ver, typ, flags, nSuites := r.byte(), r.byte(), r.byte(), int(r.byte())
	if r.err != nil {
		return nil, r.err
	}
	if ver != wireVersion {
		return nil, fmt.Errorf("handshake version %d, want %d", ver, wireVersion)
	}
	if typ != helloInit && typ != helloResp {
		return nil, fmt.Errorf("handshake message type %d is not a hello", typ)
	}
	if flags&^1 != 0 {
		return nil, fmt.Errorf("handshake flags %#x: unknown bits", flags)
	}
	if nSuites == 0 || nSuites > maxSuites || (typ == helloResp && nSuites != 1) {
		return nil, fmt.Errorf("handshake lists %d suites", nSuites)
	}
	h := &hello{typ: typ, hasAES: flags&1 != 0}
	for range nSuites {
		h.suites = append(h.suites, Suite(r.byte()))
	}
	copy(h.eph[:], r.bytes(32))
	h.index = r.uint32()
	h.dataPort = r.uint16()
	nAddrs := int(r.byte())
	if nAddrs > maxHelloAddrs {
		return nil, fmt.Errorf("handshake lists %d addresses, at most %d", nAddrs, maxHelloAddrs)
	}
	for range nAddrs {
		if a := r.bytes(4); a != nil {
			h.addrs = append(h.addrs, netip.AddrFrom4([4]byte(a)))
		}
	}
	h.sig = bytes.Clone(r.bytes(int(r.uint16())))
	if r.err != nil {
		return nil, r.err
	}
	if len(r.b) != 0 {
		return nil, errHelloLong
	}
	return h, nil
}

// signedBytes is what a hello's signature covers.
func (h *hello) signedBytes(initiator, responder peer.ID, initEph *[32]byte) []byte {
	var b []byte
	b = append(b, signContext...)
	b = appendID(b, initiator)
	b = appendID(b, responder)
	if h.typ == helloResp {
		b = append(b, initEph[:]...)
	}
	return append(b, h.marshalBody()...)
}

func appendID(b []byte, id peer.ID) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(id)))
	return append(b, id...)
}

func (h *hello) sign(key crypto.PrivKey, initiator, responder peer.ID, initEph *[32]byte) error {
	if h.typ == helloResp && initEph == nil {
		return errors.New("sign handshake: an answer must cover the initiator's key")
	}
	sig, err := key.Sign(h.signedBytes(initiator, responder, initEph))
	if err != nil {
		return fmt.Errorf("sign handshake: %w", err)
	}
	h.sig = sig
	return nil
}

// verify checks that signer signed h. The signer's public key comes out of
// its peer ID, so a hello cannot be passed off as another node's.
func (h *hello) verify(signer, initiator, responder peer.ID, initEph *[32]byte) error {
	if h.typ == helloResp && initEph == nil {
		return errors.New("handshake answer checked without the initiator's key")
	}
	pub, err := signer.ExtractPublicKey()
	if err != nil {
		return fmt.Errorf("public key of %s: %w", signer, err)
	}
	ok, err := pub.Verify(h.signedBytes(initiator, responder, initEph), h.sig)
	if err != nil || !ok {
		return fmt.Errorf("handshake signature of %s does not verify", signer)
	}
	return nil
}

// chooseSuite is the responder's pick: AES-256-GCM when both ends have AES
// hardware, ChaCha20-Poly1305 otherwise, restricted to what both offer.
// A node may insist on one suite (forced != 0), for benchmarks.
func chooseSuite(offered []Suite, peerHasAES, weHaveAES bool, forced Suite) (Suite, error) {
	has := func(s Suite) bool {
		for _, o := range offered {
			if o == s {
				return true
			}
		}
		return false
	}
	if forced != 0 {
		if has(forced) {
			return forced, nil
		}
		return 0, fmt.Errorf("peer does not offer %v", forced)
	}
	if peerHasAES && weHaveAES && has(SuiteAES256GCM) {
		return SuiteAES256GCM, nil
	}
	if has(SuiteChaCha20Poly1305) {
		return SuiteChaCha20Poly1305, nil
	}
	if has(SuiteAES256GCM) {
		return SuiteAES256GCM, nil
	}
	return 0, errors.New("no AEAD in common")
}

// offeredSuites lists what this node supports, preferred first.
func offeredSuites(forced Suite) []Suite {
	switch {
	case forced != 0:
		return []Suite{forced}
	case hasAESHardware():
		return []Suite{SuiteAES256GCM, SuiteChaCha20Poly1305}
	default:
		return []Suite{SuiteChaCha20Poly1305, SuiteAES256GCM}
	}
}

// newEphemeral makes a fresh X25519 key for one handshake.
func newEphemeral() (*ecdh.PrivateKey, [32]byte, error) {
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return nil, [32]byte{}, fmt.Errorf("ephemeral key: %w", err)
	}
	return k, [32]byte(k.PublicKey().Bytes()), nil
}

// deriveKeys computes the two direction keys. HKDF binds both peer IDs,
// both ephemeral keys and the suite, so keys for one link, pair of keys or
// AEAD can never be replayed as another's.
func deriveKeys(priv *ecdh.PrivateKey, peerEph [32]byte, suite Suite,
	initiator, responder peer.ID, initEph, respEph [32]byte) (initToResp, respToInit []byte, err error) {
	pub, err := ecdh.X25519().NewPublicKey(peerEph[:])
	if err != nil {
		return nil, nil, fmt.Errorf("peer ephemeral key: %w", err)
	}
	shared, err := priv.ECDH(pub) // fails on low-order points
	if err != nil {
		return nil, nil, fmt.Errorf("key agreement: %w", err)
	}
	var info []byte
	info = append(info, keyContext...)
	info = append(info, byte(suite))
	info = appendID(info, initiator)
	info = appendID(info, responder)
	info = append(info, initEph[:]...)
	info = append(info, respEph[:]...)
	okm, err := hkdf.Key(sha256.New, shared, nil, string(info), 64)
	if err != nil {
		return nil, nil, fmt.Errorf("hkdf: %w", err)
	}
	return okm[:32], okm[32:], nil
}

// reader decodes big-endian fields and remembers the first short read.
type reader struct {
	b   []byte
	err error
}

func (r *reader) bytes(n int) []byte {
	if r.err != nil {
		return nil
	}
	if len(r.b) < n {
		r.err = errHelloShort
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) byte() byte {
	if v := r.bytes(1); v != nil {
		return v[0]
	}
	return 0
}

func (r *reader) uint16() uint16 {
	if v := r.bytes(2); v != nil {
		return binary.BigEndian.Uint16(v)
	}
	return 0
}

func (r *reader) uint32() uint32 {
	if v := r.bytes(4); v != nil {
		return binary.BigEndian.Uint32(v)
	}
	return 0
}
