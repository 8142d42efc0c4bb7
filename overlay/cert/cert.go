// Package cert holds the certificates that decide who takes part, with two
// kinds of trust kept apart:
//
//   - Ring admission (Scope Ring): who may link, forward and store DHT
//     records. A closed ring admits only a node that shows a chain of
//     certificates from the ring's owner key.
//   - Namespace membership (Scope Namespace): who may claim addresses in a
//     namespace's subnet and exchange its packets. Every certificate of a
//     namespace carries the namespace's subnet and lease time, so a member
//     learns the settings from its certificate.
//
// A chain runs leaf first. The leaf is a Member certificate whose subject
// is the node's peer key; each certificate is signed by the subject of the
// next one, which must be a Delegate; the last is signed by the owner
// (root) key. Delegates let an enrollment key baked into an appliance image
// admit each VM booted from it while the owner key stays in its safe. See
// Verify for the rules, and revoke.go for taking a certificate back.
//
// Files:
//
//   - Certificate chains are text: one PEM block
//     "-----BEGIN RINGNET CERTIFICATE-----" per certificate, leaf first;
//     text outside the blocks is ignored. Revocation files hold
//     "RINGNET REVOCATION" blocks.
//   - Owner and enrollment keys are libp2p-marshalled Ed25519 private keys,
//     in files of mode 0600, as the node keeps its identity.
//   - A public key, as a node config names a ring's or a namespace's root,
//     is the standard base64 of the libp2p-marshalled key (the form IPFS
//     configs use, "CAESI…"); ParsePublicKey also takes a peer ID.
package cert

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Errors that callers branch on. Errors from this package wrap one of
// them, with the details around it.
var (
	// ErrMalformed: the encoding or a field is invalid.
	ErrMalformed = errors.New("malformed certificate")
	// ErrUntrusted: the chain does not lead to the root: a bad signature,
	// an issuer that is not the next subject, a member used as an issuer,
	// a chain too long, a certificate that outlives its issuer's.
	ErrUntrusted = errors.New("certificate not trusted")
	// ErrExpired: a certificate of the chain is past its NotAfter.
	ErrExpired = errors.New("certificate expired")
	// ErrNotYetValid: a certificate of the chain is before its NotBefore.
	ErrNotYetValid = errors.New("certificate not yet valid")
	// ErrScope: the chain is for another scope, name or namespace settings.
	ErrScope = errors.New("certificate for another scope")
	// ErrSubject: the chain is valid but names another peer or key.
	ErrSubject = errors.New("certificate for another subject")
	// ErrRevoked: a certificate of the chain was revoked.
	ErrRevoked = errors.New("certificate revoked")
)

// Kind says what a certificate lets its subject do.
type Kind uint8

const (
	// Member: the subject may act in the scope: link, forward and store
	// records in a ring; claim addresses and exchange packets in a
	// namespace.
	Member Kind = 1
	// Delegate: the subject key may issue certificates in the scope (an
	// enrollment key). It does not make the key's holder a member.
	Delegate Kind = 2
)

func (k Kind) String() string {
	switch k {
	case Member:
		return "member"
	case Delegate:
		return "delegate"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Scope says which kind of trust a certificate grants.
type Scope uint8

const (
	// Ring is admission to a ring.
	Ring Scope = 1
	// Namespace is membership of a namespace.
	Namespace Scope = 2
)

func (s Scope) String() string {
	switch s {
	case Ring:
		return "ring"
	case Namespace:
		return "namespace"
	}
	return fmt.Sprintf("scope(%d)", uint8(s))
}

// ParseScope is the inverse of Scope.String.
func ParseScope(text string) (Scope, error) {
	switch text {
	case "ring":
		return Ring, nil
	case "namespace":
		return Namespace, nil
	}
	return 0, fmt.Errorf("unknown scope %q, want ring or namespace", text)
}

// MaxName is the length limit of a ring or namespace name.
const MaxName = 63

// CheckName reports whether name can name a ring or a namespace: 1 to
// MaxName letters, digits, '.', '_' or '-'. The name goes into DHT keys
// and file names, so nothing else is allowed.
func CheckName(name string) error {
	if name == "" || len(name) > MaxName {
		return fmt.Errorf("name %q: want 1 to %d characters", name, MaxName)
	}
	for _, c := range []byte(name) {
		// The same characters as a node's config and the DHT's keys take.
		ok := 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '.' || c == '-'
		if !ok {
			return fmt.Errorf("name %q: only a-z, 0-9, '.' and '-'", name)
		}
	}
	return nil
}

// Lease times a namespace may have: what a node can renew and a lease
// record can hold.
const (
	MinLeaseTime = 10 * time.Second
	MaxLeaseTime = 24 * time.Hour
)

// CheckNamespace reports whether a namespace's settings are valid: subnet
// a prefix without host bits, lease time a whole number of seconds from
// 1s to MaxLeaseTime.
func CheckNamespace(subnet netip.Prefix, lease time.Duration) error {
	if !subnet.IsValid() || subnet != subnet.Masked() {
		return fmt.Errorf("subnet %v: want a prefix without host bits", subnet)
	}
	// What a node can serve: IPv4 only for now, room for the gateway
	// and hosts, and leases the DHT's records can hold.
	if !subnet.Addr().Is4() || subnet.Bits() < 8 || subnet.Bits() > 29 {
		return fmt.Errorf("subnet %v: want an IPv4 prefix from /8 to /29", subnet)
	}
	if lease < MinLeaseTime || lease > MaxLeaseTime || lease%time.Second != 0 {
		return fmt.Errorf("lease time %v: want whole seconds from %v to %v", lease, MinLeaseTime, MaxLeaseTime)
	}
	return nil
}

// Serial names a certificate, for revocation.
type Serial [16]byte

// NewSerial returns a random serial.
func NewSerial() Serial {
	var s Serial
	rand.Read(s[:]) // never fails since Go 1.24
	return s
}

// IsZero reports whether s is the zero serial, which no certificate has.
func (s Serial) IsZero() bool { return s == Serial{} }

func (s Serial) String() string { return hex.EncodeToString(s[:]) }

// ParseSerial is the inverse of Serial.String.
func ParseSerial(text string) (Serial, error) {
	var s Serial
	b, err := hex.DecodeString(text)
	if err != nil || len(b) != len(s) {
		return s, fmt.Errorf("serial %q: want %d hex digits", text, 2*len(s))
	}
	copy(s[:], b)
	if s.IsZero() {
		return s, fmt.Errorf("serial %q: zero", text)
	}
	return s, nil
}

// Cert binds a subject key to a scope, signed by an issuer key.
type Cert struct {
	Kind  Kind
	Scope Scope
	// Name is the ring's or the namespace's name.
	Name string
	// Subnet and LeaseTime are a namespace's settings, the same in every
	// certificate of its chains; zero for a ring.
	Subnet    netip.Prefix
	LeaseTime time.Duration
	// Subject is a Member's peer key, or a Delegate's enrollment key.
	Subject crypto.PubKey
	Issuer  crypto.PubKey
	Serial  Serial
	// The certificate is valid from NotBefore until just before NotAfter,
	// to the second.
	NotBefore, NotAfter time.Time
	Signature           []byte
}

// Issue returns c signed by key. It sets c.Issuer to key's public key,
// draws a random Serial if c has none and cuts the validity to whole
// seconds, as the encoding carries it.
func Issue(key crypto.PrivKey, c Cert) (Cert, error) {
	if key == nil {
		return Cert{}, errors.New("issue certificate: no key")
	}
	c.Issuer = key.GetPublic()
	if c.Serial.IsZero() {
		c.Serial = NewSerial()
	}
	c.NotBefore = time.Unix(c.NotBefore.Unix(), 0).UTC()
	c.NotAfter = time.Unix(c.NotAfter.Unix(), 0).UTC()
	c.Signature = nil
	msg, err := c.signed()
	if err != nil {
		return Cert{}, fmt.Errorf("issue certificate: %w", err)
	}
	if c.Signature, err = key.Sign(msg); err != nil {
		return Cert{}, fmt.Errorf("issue certificate: %w", err)
	}
	return c, nil
}

// SubjectID is the peer ID of the subject key: a member's peer.
func (c *Cert) SubjectID() (peer.ID, error) { return peer.IDFromPublicKey(c.Subject) }

// CheckSignature reports whether c carries its issuer's signature. It
// says nothing of whether the issuer is trusted: see Verify.
func (c *Cert) CheckSignature() error {
	msg, err := c.signed()
	if err != nil {
		return err
	}
	if ok, err := c.Issuer.Verify(msg, c.Signature); err != nil || !ok {
		return fmt.Errorf("%w: bad signature", ErrUntrusted)
	}
	return nil
}

// Binary encoding, version 1, integers big-endian:
//
//	version(1)=1 kind(1) scope(1) name-len(1) name
//	subnet: family(1)=0 for a ring | family=4 addr(4) bits(1) | family=6 addr(16) bits(1)
//	lease-seconds(4) not-before(8) not-after(8) (signed Unix seconds)
//	serial(16) subject-len(1) subject issuer-len(1) issuer (libp2p-marshalled keys)
//	sig-len(1) sig
//
// The signature is over "ringnet-cert:" and everything before sig-len.
// ParseCert accepts exactly what MarshalBinary makes, no other spelling
// of the same certificate.
const (
	certVersion = 1
	certDomain  = "ringnet-cert:"
	maxKeyLen   = 64 // a marshalled Ed25519 key is 36
)

// MarshalBinary encodes a signed certificate.
func (c *Cert) MarshalBinary() ([]byte, error) {
	b, err := c.appendBody(nil)
	if err != nil {
		return nil, err
	}
	if len(c.Signature) == 0 || len(c.Signature) > 255 {
		return nil, fmt.Errorf("%w: signature of %d bytes", ErrMalformed, len(c.Signature))
	}
	b = append(b, byte(len(c.Signature)))
	return append(b, c.Signature...), nil
}

// signed is what the issuer signs.
func (c *Cert) signed() ([]byte, error) {
	return c.appendBody([]byte(certDomain))
}

func (c *Cert) appendBody(b []byte) ([]byte, error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	b = append(b, certVersion, byte(c.Kind), byte(c.Scope), byte(len(c.Name)))
	b = append(b, c.Name...)
	switch {
	case !c.Subnet.IsValid():
		b = append(b, 0)
	case c.Subnet.Addr().Is4():
		b = append(b, 4)
		b = append(b, c.Subnet.Addr().AsSlice()...)
		b = append(b, byte(c.Subnet.Bits()))
	default:
		b = append(b, 6)
		b = append(b, c.Subnet.Addr().AsSlice()...)
		b = append(b, byte(c.Subnet.Bits()))
	}
	b = binary.BigEndian.AppendUint32(b, uint32(c.LeaseTime/time.Second))
	b = binary.BigEndian.AppendUint64(b, uint64(c.NotBefore.Unix()))
	b = binary.BigEndian.AppendUint64(b, uint64(c.NotAfter.Unix()))
	b = append(b, c.Serial[:]...)
	for _, k := range []crypto.PubKey{c.Subject, c.Issuer} {
		kb, err := crypto.MarshalPublicKey(k)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
		}
		b = append(b, byte(len(kb)))
		b = append(b, kb...)
	}
	return b, nil
}

// check validates the fields, so that nothing invalid is signed or
// accepted.
func (c *Cert) check() error {
	if c.Kind != Member && c.Kind != Delegate {
		return fmt.Errorf("%w: %v", ErrMalformed, c.Kind)
	}
	if err := CheckName(c.Name); err != nil {
		return fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	switch c.Scope {
	case Ring:
		if c.Subnet.IsValid() || c.LeaseTime != 0 {
			return fmt.Errorf("%w: ring certificate with a subnet or lease time", ErrMalformed)
		}
	case Namespace:
		if err := CheckNamespace(c.Subnet, c.LeaseTime); err != nil {
			return fmt.Errorf("%w: %w", ErrMalformed, err)
		}
	default:
		return fmt.Errorf("%w: %v", ErrMalformed, c.Scope)
	}
	if err := checkKey(c.Subject); err != nil {
		return fmt.Errorf("subject: %w", err)
	}
	if err := checkKey(c.Issuer); err != nil {
		return fmt.Errorf("issuer: %w", err)
	}
	if c.Serial.IsZero() {
		return fmt.Errorf("%w: zero serial", ErrMalformed)
	}
	if c.NotBefore.Nanosecond() != 0 || c.NotAfter.Nanosecond() != 0 {
		return fmt.Errorf("%w: validity not in whole seconds", ErrMalformed)
	}
	if !c.NotAfter.After(c.NotBefore) {
		return fmt.Errorf("%w: not after %v is not after not before %v", ErrMalformed, c.NotAfter, c.NotBefore)
	}
	return nil
}

// checkKey: only Ed25519 keys, as peer IDs here are; others would need a
// new version of the encoding.
func checkKey(k crypto.PubKey) error {
	if k == nil {
		return fmt.Errorf("%w: no key", ErrMalformed)
	}
	if k.Type() != crypto.Ed25519 {
		return fmt.Errorf("%w: key type %v, want Ed25519", ErrMalformed, k.Type())
	}
	return nil
}

// ParseCert decodes a certificate made by MarshalBinary. It checks the
// fields, not the signature.
func ParseCert(b []byte) (Cert, error) {
	r := reader{b: b}
	var c Cert
	if v := r.byte(); v != certVersion && r.ok() {
		return Cert{}, fmt.Errorf("%w: version %d", ErrMalformed, v)
	}
	c.Kind = Kind(r.byte())
	c.Scope = Scope(r.byte())
	c.Name = string(r.short())
	switch family := r.byte(); family {
	case 0:
	case 4, 6:
		n := 4
		if family == 6 {
			n = 16
		}
		addr, _ := netip.AddrFromSlice(r.bytes(n))
		c.Subnet = netip.PrefixFrom(addr, int(r.byte()))
		if !c.Subnet.IsValid() && r.ok() {
			return Cert{}, fmt.Errorf("%w: subnet", ErrMalformed)
		}
	default:
		return Cert{}, fmt.Errorf("%w: address family %d", ErrMalformed, family)
	}
	c.LeaseTime = time.Duration(r.uint32()) * time.Second
	c.NotBefore = time.Unix(int64(r.uint64()), 0).UTC()
	c.NotAfter = time.Unix(int64(r.uint64()), 0).UTC()
	copy(c.Serial[:], r.bytes(len(c.Serial)))
	var err error
	if c.Subject, err = parseKey(r.short()); err != nil && r.ok() {
		return Cert{}, fmt.Errorf("subject: %w", err)
	}
	if c.Issuer, err = parseKey(r.short()); err != nil && r.ok() {
		return Cert{}, fmt.Errorf("issuer: %w", err)
	}
	c.Signature = bytes.Clone(r.short())
	if err := r.end(); err != nil {
		return Cert{}, err
	}
	if len(c.Signature) == 0 {
		return Cert{}, fmt.Errorf("%w: no signature", ErrMalformed)
	}
	if err := c.check(); err != nil {
		return Cert{}, err
	}
	return c, nil
}

// parseKey decodes a marshalled public key, refusing any spelling but
// the one MarshalPublicKey makes.
func parseKey(b []byte) (crypto.PubKey, error) {
	k, err := crypto.UnmarshalPublicKey(b)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if err := checkKey(k); err != nil {
		return nil, err
	}
	if again, err := crypto.MarshalPublicKey(k); err != nil || !bytes.Equal(again, b) {
		return nil, fmt.Errorf("%w: key not in canonical form", ErrMalformed)
	}
	return k, nil
}

// reader takes fields off the front of an encoding. After the first
// short read it returns zeros, and end reports the truncation.
type reader struct {
	b         []byte
	truncated bool
}

func (r *reader) ok() bool { return !r.truncated }

func (r *reader) bytes(n int) []byte {
	if r.truncated || len(r.b) < n {
		r.truncated, r.b = true, nil
		return nil
	}
	b := r.b[:n]
	r.b = r.b[n:]
	return b
}

func (r *reader) byte() byte {
	if b := r.bytes(1); b != nil {
		return b[0]
	}
	return 0
}

func (r *reader) uint16() uint16 {
	if b := r.bytes(2); b != nil {
		return binary.BigEndian.Uint16(b)
	}
	return 0
}

func (r *reader) uint32() uint32 {
	if b := r.bytes(4); b != nil {
		return binary.BigEndian.Uint32(b)
	}
	return 0
}

func (r *reader) uint64() uint64 {
	if b := r.bytes(8); b != nil {
		return binary.BigEndian.Uint64(b)
	}
	return 0
}

// short reads a field with a one-byte length before it.
func (r *reader) short() []byte { return r.bytes(int(r.byte())) }

func (r *reader) end() error {
	switch {
	case r.truncated:
		return fmt.Errorf("%w: truncated", ErrMalformed)
	case len(r.b) > 0:
		return fmt.Errorf("%w: %d trailing bytes", ErrMalformed, len(r.b))
	}
	return nil
}

// PEM block types of the text forms.
const (
	CertBlock       = "RINGNET CERTIFICATE"
	RevocationBlock = "RINGNET REVOCATION"
)

// MarshalChainText encodes a chain, leaf first, as PEM blocks.
func MarshalChainText(chain []Cert) ([]byte, error) {
	var out []byte
	for i := range chain {
		b, err := chain[i].MarshalBinary()
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", i, err)
		}
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: CertBlock, Bytes: b})...)
	}
	return out, nil
}

// ParseChainText decodes the PEM blocks of a chain file, leaf first. Any
// other block type is an error; text between blocks is ignored.
func ParseChainText(text []byte) ([]Cert, error) {
	var chain []Cert
	for {
		block, rest := pem.Decode(text)
		if block == nil {
			break
		}
		text = rest
		if block.Type != CertBlock {
			return nil, fmt.Errorf("%w: block %d is %q, want %q", ErrMalformed, len(chain), block.Type, CertBlock)
		}
		c, err := ParseCert(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(chain), err)
		}
		chain = append(chain, c)
	}
	if len(chain) == 0 {
		return nil, fmt.Errorf("%w: no %q block", ErrMalformed, CertBlock)
	}
	return chain, nil
}

// FormatPublicKey returns the text form of a public key, as node configs
// name a root: the base64 of its libp2p marshalling.
func FormatPublicKey(k crypto.PubKey) (string, error) {
	b, err := crypto.MarshalPublicKey(k)
	if err != nil {
		return "", fmt.Errorf("public key: %w", err)
	}
	return base64.StdEncoding.EncodeToString(b), nil
}

// ParsePublicKey decodes an Ed25519 public key from FormatPublicKey's text
// form, or from a peer ID, which holds the key.
func ParsePublicKey(text string) (crypto.PubKey, error) {
	var k crypto.PubKey
	b, err := base64.StdEncoding.DecodeString(text)
	if err == nil {
		k, err = parseKey(b)
	}
	if err != nil {
		id, perr := peer.Decode(text)
		if perr != nil {
			return nil, fmt.Errorf("public key %q: neither a base64 key (%v) nor a peer ID (%v)", text, err, perr)
		}
		if k, err = id.ExtractPublicKey(); err != nil {
			return nil, fmt.Errorf("public key from peer ID %s: %w", id, err)
		}
	}
	if err := checkKey(k); err != nil {
		return nil, fmt.Errorf("public key %q: %w", text, err)
	}
	return k, nil
}

// GenerateKey makes a new Ed25519 key, for an owner or an enrollment key.
func GenerateKey() (crypto.PrivKey, error) {
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	return key, nil
}

// WriteKeyFile saves key at path, readable by its owner only. It never
// replaces an existing file: losing an owner key to a typo would lose the
// ring.
func WriteKeyFile(path string, key crypto.PrivKey) error {
	data, err := crypto.MarshalPrivateKey(key)
	if err != nil {
		return fmt.Errorf("key %s: %w", path, err)
	}
	if _, err := os.Lstat(path); err == nil {
		return fmt.Errorf("key %s: %w", path, fs.ErrExist)
	}
	// Write a temporary file, then link it into place: a crash never
	// leaves half a key behind, and the link fails if path exists.
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("key %s: %w", path, err)
	}
	defer os.Remove(tmp)
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("key %s: %w", path, err)
	}
	if err := os.Link(tmp, path); err != nil {
		return fmt.Errorf("key %s: %w", path, err)
	}
	return nil
}

// ReadKeyFile loads an Ed25519 private key saved by WriteKeyFile.
func ReadKeyFile(path string) (crypto.PrivKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("key: %w", err)
	}
	key, err := crypto.UnmarshalPrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", path, err)
	}
	if key.Type() != crypto.Ed25519 {
		return nil, fmt.Errorf("key %s: key type %v, want Ed25519", path, key.Type())
	}
	return key, nil
}

// MarshalChain encodes a chain, leaf first, for the wire: a count byte,
// then each certificate behind a 2-byte length. It is how a node shows its
// chain to a peer, and how a lease record carries its holder's.
func MarshalChain(chain []Cert) ([]byte, error) {
	if len(chain) == 0 || len(chain) > MaxChain {
		return nil, fmt.Errorf("chain of %d certificates, want 1 to %d", len(chain), MaxChain)
	}
	b := []byte{byte(len(chain))}
	for i := range chain {
		c, err := chain[i].MarshalBinary()
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", i+1, err)
		}
		b = binary.BigEndian.AppendUint16(b, uint16(len(c)))
		b = append(b, c...)
	}
	return b, nil
}

// ParseChain decodes what MarshalChain encoded. It checks each
// certificate's form and signature, not the chain: that is Verify's job.
func ParseChain(b []byte) ([]Cert, error) {
	r := reader{b: b}
	n := int(r.byte())
	if !r.ok() || n == 0 || n > MaxChain {
		return nil, fmt.Errorf("%w: chain of %d certificates", ErrMalformed, n)
	}
	chain := make([]Cert, 0, n)
	for i := range n {
		raw := r.bytes(int(r.uint16()))
		if !r.ok() {
			return nil, fmt.Errorf("%w: chain truncated at certificate %d", ErrMalformed, i+1)
		}
		c, err := ParseCert(raw)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", i+1, err)
		}
		chain = append(chain, c)
	}
	if err := r.end(); err != nil {
		return nil, err
	}
	return chain, nil
}
