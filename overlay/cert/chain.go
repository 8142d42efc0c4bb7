package cert

import (
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// MaxChain is the longest chain accepted: a member certificate and up to
// two delegates above it, so an owner may hand a site its own enrollment
// authority, which signs the keys baked into images. Each more link would
// only lengthen every handshake.
const MaxChain = 3

// Verify reports whether chain, leaf first, admits subject to the scope
// and name at time now, and returns the leaf. The rules:
//
//   - 1 to MaxChain certificates, all for scope and name; in a namespace,
//     all carry the same subnet and lease time;
//   - each is signed by the next one's subject, and the last by root;
//   - every certificate above the leaf is a Delegate, and the leaf a
//     Member whose subject is subject's key;
//   - each is valid at now, so a chain lasts only as long as all its
//     certificates; none outlives its issuer's (NotAfter at most the
//     issuer certificate's), so a delegate cannot extend what it was given;
//   - none is revoked (revoked may be nil).
//
// Errors wrap ErrUntrusted, ErrScope, ErrSubject, ErrExpired,
// ErrNotYetValid, ErrRevoked or ErrMalformed.
func Verify(chain []Cert, root crypto.PubKey, subject peer.ID, scope Scope, name string, now time.Time, revoked func(Serial) bool) (Cert, error) {
	if err := verifyChain(chain, root, scope, name, now, revoked); err != nil {
		return Cert{}, err
	}
	leaf := chain[0]
	if leaf.Kind != Member {
		return Cert{}, fmt.Errorf("%w: the leaf is a %v certificate, not a member", ErrUntrusted, leaf.Kind)
	}
	if !subject.MatchesPublicKey(leaf.Subject) {
		id, _ := leaf.SubjectID()
		return Cert{}, fmt.Errorf("%w: certificate for peer %s, not %s", ErrSubject, id, subject)
	}
	return leaf, nil
}

// VerifyDelegate reports whether chain, leaf first, lets key issue member
// certificates for the scope and name at time now, and returns the leaf.
// The rules are Verify's, except that the leaf is a Delegate for key, and
// the chain must leave room for the member certificate below it.
// A node that admits itself with an enrollment key checks its chain with
// it before signing.
func VerifyDelegate(chain []Cert, root, key crypto.PubKey, scope Scope, name string, now time.Time, revoked func(Serial) bool) (Cert, error) {
	if err := verifyChain(chain, root, scope, name, now, revoked); err != nil {
		return Cert{}, err
	}
	leaf := chain[0]
	if leaf.Kind != Delegate {
		return Cert{}, fmt.Errorf("%w: the leaf is a %v certificate, not a delegate", ErrUntrusted, leaf.Kind)
	}
	if key == nil || !leaf.Subject.Equals(key) {
		return Cert{}, fmt.Errorf("%w: delegate certificate for another key", ErrSubject)
	}
	if len(chain) >= MaxChain {
		return Cert{}, fmt.Errorf("%w: chain of %d certificates leaves no room below it (at most %d)", ErrUntrusted, len(chain), MaxChain)
	}
	return leaf, nil
}

// verifyChain checks all but the leaf's kind and subject.
func verifyChain(chain []Cert, root crypto.PubKey, scope Scope, name string, now time.Time, revoked func(Serial) bool) error {
	switch {
	case len(chain) == 0:
		return fmt.Errorf("%w: empty chain", ErrUntrusted)
	case len(chain) > MaxChain:
		return fmt.Errorf("%w: chain of %d certificates, at most %d", ErrUntrusted, len(chain), MaxChain)
	case root == nil:
		return fmt.Errorf("%w: no root key", ErrUntrusted)
	}
	// From the root down, so that an error names the topmost broken link.
	top := &chain[len(chain)-1]
	for i := len(chain) - 1; i >= 0; i-- {
		if err := verifyLink(chain, i, root, scope, name, top, now, revoked); err != nil {
			c := &chain[i]
			return fmt.Errorf("certificate %d of %d (%v, serial %v): %w", i+1, len(chain), c.Kind, c.Serial, err)
		}
	}
	return nil
}

// verifyLink checks chain[i] and its link to its issuer.
func verifyLink(chain []Cert, i int, root crypto.PubKey, scope Scope, name string, top *Cert, now time.Time, revoked func(Serial) bool) error {
	c := &chain[i]
	if c.Scope != scope || c.Name != name {
		return fmt.Errorf("%w: for %v %q, want %v %q", ErrScope, c.Scope, c.Name, scope, name)
	}
	// The root's certificate sets the namespace; a delegate may not
	// change it for the members it admits.
	if c.Subnet != top.Subnet || c.LeaseTime != top.LeaseTime {
		return fmt.Errorf("%w: subnet %v lease %v, but the chain's root certificate says subnet %v lease %v",
			ErrScope, c.Subnet, c.LeaseTime, top.Subnet, top.LeaseTime)
	}
	issuer := root
	var up *Cert
	if i+1 < len(chain) {
		up = &chain[i+1]
		if up.Kind != Delegate {
			return fmt.Errorf("%w: issued by the subject of a %v certificate, not a delegate", ErrUntrusted, up.Kind)
		}
		issuer = up.Subject
	}
	if c.Issuer == nil || issuer == nil || !c.Issuer.Equals(issuer) {
		if up == nil {
			return fmt.Errorf("%w: not issued by the root key", ErrUntrusted)
		}
		return fmt.Errorf("%w: not issued by the next certificate's subject", ErrUntrusted)
	}
	if err := c.CheckSignature(); err != nil {
		return err
	}
	if up != nil && c.NotAfter.After(up.NotAfter) {
		return fmt.Errorf("%w: valid until %v, after its issuer's certificate (%v)", ErrUntrusted, c.NotAfter, up.NotAfter)
	}
	if now.Before(c.NotBefore) {
		return fmt.Errorf("%w: valid from %v", ErrNotYetValid, c.NotBefore)
	}
	if !now.Before(c.NotAfter) {
		return fmt.Errorf("%w at %v", ErrExpired, c.NotAfter)
	}
	if revoked != nil && revoked(c.Serial) {
		return ErrRevoked
	}
	return nil
}
