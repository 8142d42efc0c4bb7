package dhcp

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	record "github.com/libp2p/go-libp2p-record"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// A lease record names the node that holds a virtual address in a
// namespace until a time. Records live in the overlay's DHT under
// LeaseKey, signed by their holder, whose peer ID embeds the public key,
// so any node can check one without asking anybody.
//
// The wire form is compact and has exactly one encoding per lease:
//
//	version         1 byte (leaseVersion)
//	namespace       1 byte length, then the name
//	address         4 bytes, IPv4
//	holder          1 byte length, then the peer ID's bytes
//	issued          8 bytes, Unix milliseconds, big-endian, signed
//	expires         8 bytes, Unix milliseconds, big-endian, signed
//	proof           2 bytes length, then the holder's proof of
//	                membership in the namespace (a certificate chain;
//	                empty in an open namespace)
//	signature       2 bytes length, then the holder's signature over
//	                leaseSigPrefix and every byte before the length

// Lease is one node's claim on an address.
type Lease struct {
	Namespace string
	IP        netip.Addr
	Holder    peer.ID
	// Issued and Expires are on the holder's clock, to the millisecond.
	Issued, Expires time.Time
	// Proof shows that Holder may claim addresses in Namespace: its
	// certificate chain (LeaseValidator.Member checks it). Empty in an
	// open namespace.
	Proof []byte
	// Signature is the holder's, as ParseLease found it; SignLease
	// ignores it.
	Signature []byte
}

// Key returns the DHT key of l.
func (l Lease) Key() string { return LeaseKey(l.Namespace, l.IP) }

// String returns a short description for logs.
func (l Lease) String() string {
	return fmt.Sprintf("%s/%v held by %v until %s", l.Namespace, l.IP, l.Holder,
		l.Expires.UTC().Format(time.RFC3339Nano))
}

// Errors callers branch on.
var (
	// ErrMalformed: the bytes are not a lease record.
	ErrMalformed = errors.New("malformed lease record")
	// ErrNotMember: the holder cannot show it may claim addresses in the
	// namespace.
	ErrNotMember = errors.New("holder is not a member of the namespace")
	// ErrBadSignature: the record is not signed by its holder.
	ErrBadSignature = errors.New("lease signature does not verify")
	// ErrExpired: the lease is over.
	ErrExpired = errors.New("lease expired")
	// ErrHeld: another node holds the address.
	ErrHeld = errors.New("address held by another node")
	// ErrStale: the record is older than the one its holder already
	// stored, so storing it would shorten the lease.
	ErrStale = errors.New("lease record older than the stored one")
)

// LeaseNamespace is the first element of every lease key, which the
// DHT's namespaced validator dispatches on.
const LeaseNamespace = "lease"

// Limits of the record format.
const (
	leaseVersion    = 1
	maxNamespaceLen = 96 // a name of up to 63 bytes, a dot and a key hash
	// An ID that embeds its key is an identity multihash of at most 42
	// bytes of key (go-libp2p's inline limit) behind a 2-byte header.
	maxHolderLen = 64
	// Ed25519 signatures are 64 bytes, secp256k1 ones at most 72.
	maxSigLen = 512
	// MaxProofLen bounds a membership proof: three certificates and room
	// to spare.
	MaxProofLen = 4096
	// MaxLeaseSize is the longest record ParseLease takes.
	MaxLeaseSize = 1 + 1 + maxNamespaceLen + 4 + 1 + maxHolderLen + 8 + 8 + 2 + MaxProofLen + 2 + maxSigLen
)

// leaseSigPrefix separates lease signatures from anything else a node's
// key signs, so no other signed message can pass for a lease.
const leaseSigPrefix = "ringnet-lease:"

// LeaseKey returns the DHT key of the lease on ip in namespace:
// "/lease/<namespace>/<ip>".
func LeaseKey(namespace string, ip netip.Addr) string {
	return "/" + LeaseNamespace + "/" + namespace + "/" + ip.Unmap().String()
}

// ValidateNamespace checks a namespace name: 1 to 64 bytes of lower-case
// letters, digits, '-' and '.', so that it stays one element of a key.
func ValidateNamespace(name string) error {
	if len(name) == 0 || len(name) > maxNamespaceLen {
		return fmt.Errorf("namespace %.70q: length %d is outside [1, %d]", name, len(name), maxNamespaceLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '.') {
			return fmt.Errorf("namespace %q: byte %#02x at %d is not one of [a-z0-9-.]", name, c, i)
		}
	}
	return nil
}

// SignLease encodes l and signs it with key, whose peer ID must be
// l.Holder and must embed the public key (Ed25519 IDs do).
func SignLease(key crypto.PrivKey, l Lease) ([]byte, error) {
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("sign lease: %w", err)
	}
	if id != l.Holder {
		return nil, fmt.Errorf("sign lease: holder %v is not the key's peer %v", l.Holder, id)
	}
	if _, err := id.ExtractPublicKey(); err != nil {
		return nil, fmt.Errorf("sign lease: holder %v: %w", id, err)
	}
	body, err := appendLeaseBody(make([]byte, 0, MaxLeaseSize), l)
	if err != nil {
		return nil, fmt.Errorf("sign lease: %w", err)
	}
	sig, err := key.Sign(signedLeaseBytes(body))
	if err != nil {
		return nil, fmt.Errorf("sign lease: %w", err)
	}
	if len(sig) == 0 || len(sig) > maxSigLen {
		return nil, fmt.Errorf("sign lease: signature of %d bytes", len(sig))
	}
	b := binary.BigEndian.AppendUint16(body, uint16(len(sig)))
	return append(b, sig...), nil
}

// appendLeaseBody appends the signed part of l's record to b.
func appendLeaseBody(b []byte, l Lease) ([]byte, error) {
	if err := ValidateNamespace(l.Namespace); err != nil {
		return nil, err
	}
	ip := l.IP.Unmap()
	if !ip.Is4() {
		return nil, fmt.Errorf("address %v is not IPv4", l.IP)
	}
	holder := []byte(l.Holder)
	if len(holder) == 0 || len(holder) > maxHolderLen {
		return nil, fmt.Errorf("holder ID of %d bytes is outside [1, %d]", len(holder), maxHolderLen)
	}
	b = append(b, leaseVersion, byte(len(l.Namespace)))
	b = append(b, l.Namespace...)
	a := ip.As4()
	b = append(b, a[:]...)
	b = append(b, byte(len(holder)))
	b = append(b, holder...)
	b = binary.BigEndian.AppendUint64(b, uint64(l.Issued.UnixMilli()))
	b = binary.BigEndian.AppendUint64(b, uint64(l.Expires.UnixMilli()))
	if len(l.Proof) > MaxProofLen {
		return nil, fmt.Errorf("proof of %d bytes, at most %d", len(l.Proof), MaxProofLen)
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(l.Proof)))
	b = append(b, l.Proof...)
	return b, nil
}

func signedLeaseBytes(body []byte) []byte {
	return append([]byte(leaseSigPrefix), body...)
}

// ParseLease decodes a lease record and checks that its holder signed
// it. It does not look at the times: that is LeaseValidator's job.
func ParseLease(b []byte) (Lease, error) {
	l, body, err := decodeLease(b)
	if err != nil {
		return Lease{}, err
	}
	pub, err := l.Holder.ExtractPublicKey()
	if err != nil {
		// A hashed ID (RSA, ECDSA) would need the key from elsewhere;
		// leases must be checkable from the record alone.
		return Lease{}, fmt.Errorf("lease holder %v: %w: %w", l.Holder, ErrBadSignature, err)
	}
	ok, err := pub.Verify(signedLeaseBytes(body), l.Signature)
	if err != nil || !ok {
		return Lease{}, fmt.Errorf("lease on %v by %v: %w", l.IP, l.Holder, ErrBadSignature)
	}
	return l, nil
}

// decodeLease takes the record apart without checking the signature, and
// returns the signed bytes too.
func decodeLease(b []byte) (l Lease, body []byte, err error) {
	if len(b) > MaxLeaseSize {
		return Lease{}, nil, fmt.Errorf("%w: %d bytes, at most %d", ErrMalformed, len(b), MaxLeaseSize)
	}
	r := leaseReader{b: b}
	if v := r.byte(); v != leaseVersion && r.ok() {
		return Lease{}, nil, fmt.Errorf("%w: version %d", ErrMalformed, v)
	}
	ns := r.bytes(int(r.byte()))
	ip := r.bytes(4)
	holder := r.bytes(int(r.byte()))
	issued := int64(r.uint64())
	expires := int64(r.uint64())
	proof := r.bytes(int(r.uint16()))
	bodyLen := r.off
	sig := r.bytes(int(r.uint16()))
	if !r.ok() {
		return Lease{}, nil, fmt.Errorf("%w: truncated (%d bytes)", ErrMalformed, len(b))
	}
	if r.off != len(b) {
		return Lease{}, nil, fmt.Errorf("%w: %d bytes after the signature", ErrMalformed, len(b)-r.off)
	}
	if err := ValidateNamespace(string(ns)); err != nil {
		return Lease{}, nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if len(holder) > maxHolderLen {
		return Lease{}, nil, fmt.Errorf("%w: holder ID of %d bytes, at most %d", ErrMalformed, len(holder), maxHolderLen)
	}
	id, err := peer.IDFromBytes(holder)
	if err != nil {
		return Lease{}, nil, fmt.Errorf("%w: holder: %w", ErrMalformed, err)
	}
	if len(sig) == 0 || len(sig) > maxSigLen {
		return Lease{}, nil, fmt.Errorf("%w: signature of %d bytes", ErrMalformed, len(sig))
	}
	if len(proof) > MaxProofLen {
		return Lease{}, nil, fmt.Errorf("%w: proof of %d bytes, at most %d", ErrMalformed, len(proof), MaxProofLen)
	}
	var pf []byte
	if len(proof) > 0 {
		pf = bytes.Clone(proof)
	}
	return Lease{
		Proof:     pf,
		Namespace: string(ns),
		IP:        netip.AddrFrom4([4]byte(ip)),
		Holder:    id,
		Issued:    time.UnixMilli(issued),
		Expires:   time.UnixMilli(expires),
		Signature: bytes.Clone(sig),
	}, b[:bodyLen], nil
}

// leaseReader reads big-endian fields; past the end it returns zeros
// and ok reports false, so decodeLease checks once.
type leaseReader struct {
	b   []byte
	off int
	bad bool
}

func (r *leaseReader) ok() bool { return !r.bad }

func (r *leaseReader) bytes(n int) []byte {
	if r.bad || n > len(r.b)-r.off {
		r.bad = true
		return make([]byte, n)
	}
	p := r.b[r.off : r.off+n]
	r.off += n
	return p
}

func (r *leaseReader) byte() byte { return r.bytes(1)[0] }

func (r *leaseReader) uint16() uint16 { return binary.BigEndian.Uint16(r.bytes(2)) }

func (r *leaseReader) uint64() uint64 { return binary.BigEndian.Uint64(r.bytes(8)) }

// Wins reports whether a prevails over b when different nodes hold the
// same address: the lease whose SHA-256(holder ID bytes || IPv4 bytes) is
// lower wins, and the higher hash yields. Every node computes the same
// answer from the records alone, with no clocks involved, and a node
// cannot pick a winning hash for an address it already lost without
// making a new identity.
func Wins(a, b Lease) bool {
	ha, hb := leaseHash(a), leaseHash(b)
	return bytes.Compare(ha[:], hb[:]) < 0
}

func leaseHash(l Lease) [sha256.Size]byte {
	h := sha256.New()
	h.Write([]byte(l.Holder))
	ip := l.IP.Unmap().As4()
	h.Write(ip[:])
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return sum
}

// Defaults of LeaseValidator.
const (
	DefaultSkew     = 5 * time.Second
	DefaultMaxLease = 24 * time.Hour
)

// LeaseValidator checks lease records for the DHT (it is a
// record.Validator for the "lease" namespace) and for the claim
// protocol. Its fields must not change while it is in use.
type LeaseValidator struct {
	// Now is this node's clock; nil: time.Now.
	Now func() time.Time
	// Skew is how far ahead of Now a claimant's clock may run; 0:
	// DefaultSkew.
	Skew time.Duration
	// MaxLease is the longest lease; 0: DefaultMaxLease.
	MaxLease time.Duration
	// Member, if set, checks that a record's holder may claim addresses
	// in its namespace (its Proof); an error refuses the record.
	Member func(l Lease, now time.Time) error
	// Subnets maps a namespace to its subnet when this node knows it;
	// claims outside it, or on its network or broadcast address, are
	// refused. Namespaces not in the map are checked without.
	Subnets map[string]netip.Prefix
}

var _ record.Validator = (*LeaseValidator)(nil)

func (v *LeaseValidator) now() time.Time {
	if v.Now == nil {
		return time.Now()
	}
	return v.Now()
}

func (v *LeaseValidator) skew() time.Duration {
	if v.Skew <= 0 {
		return DefaultSkew
	}
	return v.Skew
}

func (v *LeaseValidator) maxLease() time.Duration {
	if v.MaxLease <= 0 {
		return DefaultMaxLease
	}
	return v.MaxLease
}

// Validate checks that value is a lease record for key, signed by its
// holder, and live on our clock. It refuses records issued more than
// Skew ahead of our clock and leases longer than MaxLease; together these
// keep Expires within now+MaxLease+Skew, so a claimant whose clock runs
// ahead cannot make its record live longer than anybody else's.
func (v *LeaseValidator) Validate(key string, value []byte) error {
	_, err := v.parse(key, value)
	return err
}

// parse parses value and applies Validate's rules.
func (v *LeaseValidator) parse(key string, value []byte) (Lease, error) {
	l, err := ParseLease(value)
	if err != nil {
		return Lease{}, fmt.Errorf("%s: %w", key, err)
	}
	if err := v.check(key, l); err != nil {
		return Lease{}, fmt.Errorf("%s: %w", key, err)
	}
	return l, nil
}

func (v *LeaseValidator) check(key string, l Lease) error {
	if want := l.Key(); key != want {
		return fmt.Errorf("record is for %s", want)
	}
	if err := checkLeaseAddr(l.IP, v.Subnets[l.Namespace]); err != nil {
		return err
	}
	if !l.Expires.After(l.Issued) {
		return fmt.Errorf("expires %v, not after issued %v", l.Expires, l.Issued)
	}
	now := v.now()
	if !l.Expires.After(now) {
		return fmt.Errorf("%w at %v", ErrExpired, l.Expires)
	}
	if ahead := l.Issued.Sub(now); ahead > v.skew() {
		return fmt.Errorf("issued %v ahead of our clock, more than %v", ahead, v.skew())
	}
	if d := l.Expires.Sub(l.Issued); d > v.maxLease() {
		return fmt.Errorf("lease of %v, longer than %v", d, v.maxLease())
	}
	if v.Member != nil {
		if err := v.Member(l, now); err != nil {
			return fmt.Errorf("%w: %w", ErrNotMember, err)
		}
	}
	return nil
}

// checkLeaseAddr refuses addresses no VM can hold: not unicast, or,
// when the subnet is known, outside it or its network or broadcast
// address.
func checkLeaseAddr(ip netip.Addr, subnet netip.Prefix) error {
	if !ip.Is4() || ip.IsUnspecified() || ip.IsMulticast() || ip == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return fmt.Errorf("%v is not a unicast IPv4 address", ip)
	}
	if !subnet.IsValid() {
		return nil
	}
	if !subnet.Contains(ip) {
		return fmt.Errorf("%v is outside the subnet %v", ip, subnet)
	}
	if subnet.Bits() <= 30 && (ip == subnet.Masked().Addr() || ip == lastAddr(subnet)) {
		return fmt.Errorf("%v is the network or broadcast address of %v", ip, subnet)
	}
	return nil
}

// lastAddr returns the highest address of an IPv4 prefix.
func lastAddr(p netip.Prefix) netip.Addr {
	a := binary.BigEndian.Uint32(p.Masked().Addr().AsSlice())
	a |= uint32(1)<<(32-p.Bits()) - 1
	return netip.AddrFrom4([4]byte(binary.BigEndian.AppendUint32(nil, a)))
}

// Select returns the index of the best valid record in values: of one
// holder's records the one that expires last (a renewal), and between
// holders the one that Wins. The order is total, so every node picks
// the same record from the same set, whatever order it got them in.
func (v *LeaseValidator) Select(key string, values [][]byte) (int, error) {
	best := -1
	var bestLease Lease
	for i, val := range values {
		l, err := v.parse(key, val)
		if err != nil {
			continue
		}
		if best < 0 || better(l, bestLease) {
			best, bestLease = i, l
		}
	}
	if best < 0 {
		return 0, fmt.Errorf("%s: none of %d lease records is valid", key, len(values))
	}
	return best, nil
}

// better reports whether a is a better record than b for the same key.
func better(a, b Lease) bool {
	if a.Holder == b.Holder {
		return a.Expires.After(b.Expires)
	}
	// A claim that was won carries a full lease; one that lost left only
	// its provisional record, on a minority of replicas.
	if a.Provisional() != b.Provisional() {
		return !a.Provisional()
	}
	return Wins(a, b)
}

// Provisional reports whether l is as short as a claim's provisional
// record: a claim still being decided, or one that lost. (In a namespace
// whose lease time is that short, every record is.)
func (l Lease) Provisional() bool {
	return l.Expires.Sub(l.Issued) <= provisionalLease
}

// Admit decides whether a node that stores lease records takes incoming
// when it stores existing (nil if none) under the same key. A replica
// keeps the first unexpired record it stores for an address and refuses
// other holders' until it expires (ErrHeld): that, and a claimant
// needing a majority of replicas, is what gives an address one holder.
// The holder itself may replace its record with one that expires no
// earlier (ErrStale otherwise), so a replayed old record cannot shorten
// a lease. An existing record that is invalid or expired counts for
// nothing. Admit validates incoming too; the caller checks that its key
// is the one it is stored under.
func (v *LeaseValidator) Admit(existing, incoming []byte) error {
	in, err := ParseLease(incoming)
	if err != nil {
		return err
	}
	key := in.Key()
	if err := v.check(key, in); err != nil {
		return fmt.Errorf("%s: %w", key, err)
	}
	// A claim is stored when it is made: one issued long before by our
	// clock comes from a claimant whose clock lags, or is replayed.
	if behind := v.now().Sub(in.Issued); behind > v.skew() {
		return fmt.Errorf("%s: %w: issued %v before our clock, more than %v", key, ErrStale, behind.Round(time.Second), v.skew())
	}
	if len(existing) == 0 {
		return nil
	}
	old, err := v.parse(key, existing)
	if err != nil {
		return nil
	}
	if old.Holder != in.Holder {
		return fmt.Errorf("%s: %w: %v until %v", key, ErrHeld, old.Holder, old.Expires)
	}
	if in.Expires.Before(old.Expires) {
		return fmt.Errorf("%s: %w: expires %v, the stored one %v", key, ErrStale, in.Expires, old.Expires)
	}
	return nil
}
