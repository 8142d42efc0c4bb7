package cert

import (
	"bytes"
	"encoding/binary"
	"encoding/pem"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
)

// Revocation takes back one certificate of a scope before its NotAfter.
// Only the owner (root) key signs revocations: a delegate's certificates
// are taken back by revoking them, or the delegate, at the owner.
//
// Revocations spread through the DHT: each ring or namespace has one
// record, at RevocationKey, whose value EncodeRevocations makes from all
// its revocations. Every revocation in the value carries its own owner
// signature, so the value needs no signature of its own, and two copies
// merge by union: a node parses a value it receives (ParseRevocations)
// and Adds each revocation to its RevocationList, which checks it.
type Revocation struct {
	Scope     Scope
	Name      string
	Serial    Serial
	Issued    time.Time // to the second
	Signature []byte
}

// Revoke returns a revocation of serial in the scope and name, signed by
// the owner key.
func Revoke(owner crypto.PrivKey, scope Scope, name string, serial Serial, now time.Time) (Revocation, error) {
	if owner == nil {
		return Revocation{}, fmt.Errorf("revoke %v: no key", serial)
	}
	r := Revocation{Scope: scope, Name: name, Serial: serial, Issued: time.Unix(now.Unix(), 0).UTC()}
	msg, err := r.signed()
	if err != nil {
		return Revocation{}, fmt.Errorf("revoke %v: %w", serial, err)
	}
	if r.Signature, err = owner.Sign(msg); err != nil {
		return Revocation{}, fmt.Errorf("revoke %v: %w", serial, err)
	}
	return r, nil
}

// Verify reports whether r is signed by root, the owner key of its scope.
func (r *Revocation) Verify(root crypto.PubKey) error {
	msg, err := r.signed()
	if err != nil {
		return err
	}
	if root == nil {
		return fmt.Errorf("%w: revocation %v: no root key", ErrUntrusted, r.Serial)
	}
	if ok, err := root.Verify(msg, r.Signature); err != nil || !ok {
		return fmt.Errorf("%w: revocation %v: not signed by the owner key", ErrUntrusted, r.Serial)
	}
	return nil
}

// Binary encoding, version 1, integers big-endian:
//
//	version(1)=1 scope(1) name-len(1) name serial(16) issued(8, signed Unix seconds)
//	sig-len(1) sig
//
// The signature is over "ringnet-revoke:" and everything before sig-len,
// so no certificate signature can pass for a revocation's.
const (
	revocationVersion = 1
	revocationDomain  = "ringnet-revoke:"
)

// MarshalBinary encodes a signed revocation.
func (r *Revocation) MarshalBinary() ([]byte, error) {
	b, err := r.appendBody(nil)
	if err != nil {
		return nil, err
	}
	if len(r.Signature) == 0 || len(r.Signature) > 255 {
		return nil, fmt.Errorf("%w: revocation signature of %d bytes", ErrMalformed, len(r.Signature))
	}
	b = append(b, byte(len(r.Signature)))
	return append(b, r.Signature...), nil
}

func (r *Revocation) signed() ([]byte, error) {
	return r.appendBody([]byte(revocationDomain))
}

func (r *Revocation) appendBody(b []byte) ([]byte, error) {
	if err := r.check(); err != nil {
		return nil, err
	}
	b = append(b, revocationVersion, byte(r.Scope), byte(len(r.Name)))
	b = append(b, r.Name...)
	b = append(b, r.Serial[:]...)
	return binary.BigEndian.AppendUint64(b, uint64(r.Issued.Unix())), nil
}

func (r *Revocation) check() error {
	if r.Scope != Ring && r.Scope != Namespace {
		return fmt.Errorf("%w: revocation for %v", ErrMalformed, r.Scope)
	}
	if err := CheckName(r.Name); err != nil {
		return fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if r.Serial.IsZero() {
		return fmt.Errorf("%w: revocation of the zero serial", ErrMalformed)
	}
	if r.Issued.Nanosecond() != 0 {
		return fmt.Errorf("%w: revocation time not in whole seconds", ErrMalformed)
	}
	return nil
}

// ParseRevocation decodes a revocation made by MarshalBinary. It checks
// the fields, not the signature: see Verify.
func ParseRevocation(b []byte) (Revocation, error) {
	rd := reader{b: b}
	var r Revocation
	if v := rd.byte(); v != revocationVersion && rd.ok() {
		return Revocation{}, fmt.Errorf("%w: revocation version %d", ErrMalformed, v)
	}
	r.Scope = Scope(rd.byte())
	r.Name = string(rd.short())
	copy(r.Serial[:], rd.bytes(len(r.Serial)))
	r.Issued = time.Unix(int64(rd.uint64()), 0).UTC()
	r.Signature = bytes.Clone(rd.short())
	if err := rd.end(); err != nil {
		return Revocation{}, err
	}
	if len(r.Signature) == 0 {
		return Revocation{}, fmt.Errorf("%w: revocation without a signature", ErrMalformed)
	}
	if err := r.check(); err != nil {
		return Revocation{}, err
	}
	return r, nil
}

// RevocationKey is the DHT key of the revocations of a ring or namespace:
// "/revoke/<scope>/<name>". Nodes pass the name with the owner key's hash
// (node/revoke.go), e.g. "/revoke/namespace/lab.1f2e3d4c5b6a7980".
func RevocationKey(scope Scope, name string) string {
	return "/revoke/" + scope.String() + "/" + name
}

// MaxRevocations bounds the revocations in one DHT record value, each
// 95 to 160 bytes long.
const MaxRevocations = 1024

// Encoding of a DHT record value, version 1, integers big-endian:
//
//	version(1)=1 count(2) count × (len(2) revocation)
const revocationsVersion = 1

// EncodeRevocations encodes revocations as one DHT record value.
func EncodeRevocations(rs []Revocation) ([]byte, error) {
	if len(rs) > MaxRevocations {
		return nil, fmt.Errorf("%w: %d revocations, at most %d in a record", ErrMalformed, len(rs), MaxRevocations)
	}
	b := binary.BigEndian.AppendUint16([]byte{revocationsVersion}, uint16(len(rs)))
	for i := range rs {
		rb, err := rs[i].MarshalBinary()
		if err != nil {
			return nil, fmt.Errorf("revocation %d: %w", i, err)
		}
		b = binary.BigEndian.AppendUint16(b, uint16(len(rb)))
		b = append(b, rb...)
	}
	return b, nil
}

// ParseRevocations decodes a DHT record value made by EncodeRevocations.
// It checks the fields, not the signatures: add each revocation to a
// RevocationList, which does.
func ParseRevocations(b []byte) ([]Revocation, error) {
	r := reader{b: b}
	if v := r.byte(); v != revocationsVersion && r.ok() {
		return nil, fmt.Errorf("%w: revocation record version %d", ErrMalformed, v)
	}
	n := int(r.uint16())
	if n > MaxRevocations {
		return nil, fmt.Errorf("%w: %d revocations, at most %d in a record", ErrMalformed, n, MaxRevocations)
	}
	var rs []Revocation
	for i := 0; i < n && r.ok(); i++ {
		rb := r.bytes(int(r.uint16()))
		if !r.ok() {
			break
		}
		rev, err := ParseRevocation(rb)
		if err != nil {
			return nil, fmt.Errorf("revocation %d: %w", i, err)
		}
		rs = append(rs, rev)
	}
	if err := r.end(); err != nil {
		return nil, err
	}
	return rs, nil
}

// MarshalRevocationsText encodes revocations as PEM blocks, for a
// revocation list file.
func MarshalRevocationsText(rs []Revocation) ([]byte, error) {
	var out []byte
	for i := range rs {
		b, err := rs[i].MarshalBinary()
		if err != nil {
			return nil, fmt.Errorf("revocation %d: %w", i, err)
		}
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: RevocationBlock, Bytes: b})...)
	}
	return out, nil
}

// ParseRevocationsText decodes the PEM blocks of a revocation list file;
// a file without blocks is an empty list. Any other block type is an
// error; text between blocks is ignored.
func ParseRevocationsText(text []byte) ([]Revocation, error) {
	var rs []Revocation
	for {
		block, rest := pem.Decode(text)
		if block == nil {
			return rs, nil
		}
		text = rest
		if block.Type != RevocationBlock {
			return nil, fmt.Errorf("%w: block %d is %q, want %q", ErrMalformed, len(rs), block.Type, RevocationBlock)
		}
		r, err := ParseRevocation(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("revocation %d: %w", len(rs), err)
		}
		rs = append(rs, r)
	}
}

// RevocationList is the set of revoked serials of one ring or namespace,
// safe for concurrent use. Its Revoked method is what Verify takes.
type RevocationList struct {
	scope Scope
	name  string
	root  crypto.PubKey

	mu   sync.RWMutex
	revs map[Serial]Revocation
}

// NewRevocationList returns an empty list for the scope and name, whose
// revocations must be signed by root.
func NewRevocationList(scope Scope, name string, root crypto.PubKey) *RevocationList {
	return &RevocationList{scope: scope, name: name, root: root, revs: make(map[Serial]Revocation)}
}

// Add verifies r against the list's root, scope and name, and adds it. It
// reports whether r was new.
func (l *RevocationList) Add(r Revocation) (bool, error) {
	if r.Scope != l.scope || r.Name != l.name {
		return false, fmt.Errorf("%w: revocation for %v %q, want %v %q", ErrScope, r.Scope, r.Name, l.scope, l.name)
	}
	if err := r.Verify(l.root); err != nil {
		return false, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.revs[r.Serial]; ok {
		return false, nil
	}
	l.revs[r.Serial] = r
	return true, nil
}

// Revoked reports whether serial is revoked.
func (l *RevocationList) Revoked(serial Serial) bool {
	l.mu.RLock()
	defer l.mu.RUnlock()
	_, ok := l.revs[serial]
	return ok
}

// Len is the number of revoked serials.
func (l *RevocationList) Len() int {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return len(l.revs)
}

// Revocations returns the list's revocations in order of serial, so that
// equal lists encode to equal records.
func (l *RevocationList) Revocations() []Revocation {
	l.mu.RLock()
	rs := make([]Revocation, 0, len(l.revs))
	for _, r := range l.revs {
		rs = append(rs, r)
	}
	l.mu.RUnlock()
	slices.SortFunc(rs, func(a, b Revocation) int { return bytes.Compare(a.Serial[:], b.Serial[:]) })
	return rs
}
