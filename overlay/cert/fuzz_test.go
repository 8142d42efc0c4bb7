package cert

import (
	"bytes"
	"net/netip"
	"testing"
)

// FuzzParseCert: malformed certificates are errors, never panics, and
// what parses is the one encoding of its certificate.
func FuzzParseCert(f *testing.F) {
	owner, node := newKey(f), newKey(f)
	member := mustIssue(f, owner, nsCert(Member, node))
	ring := nsCert(Delegate, node)
	ring.Scope, ring.Subnet, ring.LeaseTime = Ring, netip.Prefix{}, 0
	ring = mustIssue(f, owner, ring)
	for _, c := range []Cert{member, ring} {
		b, err := c.MarshalBinary()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	text, _ := MarshalChainText([]Cert{member, ring})
	f.Add(text)
	f.Fuzz(func(t *testing.T, b []byte) {
		ParseChainText(b)
		c, err := ParseCert(b)
		if err != nil {
			return
		}
		c.CheckSignature()
		again, err := c.MarshalBinary()
		if err != nil {
			t.Fatalf("parsed certificate does not encode: %v", err)
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("another encoding of the same certificate:\n got %x\nwant %x", again, b)
		}
	})
}

// FuzzParseRevocation: the same for revocations, alone and as a DHT
// record value.
func FuzzParseRevocation(f *testing.F) {
	owner := newKey(f)
	var rs []Revocation
	for _, scope := range []Scope{Ring, Namespace} {
		r, err := Revoke(owner, scope, "lab", NewSerial(), t0)
		if err != nil {
			f.Fatal(err)
		}
		b, _ := r.MarshalBinary()
		f.Add(b)
		rs = append(rs, r)
	}
	value, _ := EncodeRevocations(rs)
	f.Add(value)
	f.Add([]byte{revocationsVersion, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		ParseRevocationsText(b)
		if r, err := ParseRevocation(b); err == nil {
			r.Verify(owner.GetPublic())
			if again, err := r.MarshalBinary(); err != nil || !bytes.Equal(again, b) {
				t.Fatalf("revocation does not encode back: %v\n got %x\nwant %x", err, again, b)
			}
		}
		if rs, err := ParseRevocations(b); err == nil {
			if again, err := EncodeRevocations(rs); err != nil || !bytes.Equal(again, b) {
				t.Fatalf("record value does not encode back: %v\n got %x\nwant %x", err, again, b)
			}
		}
	})
}

// FuzzParseChain feeds ParseChain what peers send in the admission
// exchange and lease records carry: it must refuse, never panic, and what
// it accepts must encode back to the same bytes.
func FuzzParseChain(f *testing.F) {
	owner, enroll, node := newKey(f), newKey(f), newKey(f)
	del := mustIssue(f, owner, nsCert(Delegate, enroll))
	member := mustIssue(f, enroll, nsCert(Member, node))
	for _, chain := range [][]Cert{{member}, {member, del}} {
		b, err := MarshalChain(chain)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{4})
	f.Add([]byte{1, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		chain, err := ParseChain(b)
		if err != nil {
			return
		}
		again, err := MarshalChain(chain)
		if err != nil {
			t.Fatalf("accepted chain does not encode: %v", err)
		}
		if string(again) != string(b) {
			t.Fatalf("chain re-encodes differently:\n%x\n%x", b, again)
		}
	})
}
