package cert

import (
	"errors"
	"sync"
	"testing"
	"time"
)

func sameRevocation(a, b Revocation) bool {
	return a.Scope == b.Scope && a.Name == b.Name && a.Serial == b.Serial && a.Issued.Equal(b.Issued) &&
		string(a.Signature) == string(b.Signature)
}

func TestRevocation(t *testing.T) {
	f := newFixture(t)
	root := f.owner.GetPublic()
	serial := NewSerial()
	for _, tc := range []struct {
		name string
		make func() (Revocation, error)
		want error
	}{
		{"signed by the owner", func() (Revocation, error) { return Revoke(f.owner, Namespace, "lab", serial, now) }, nil},
		{"signed by a delegate", func() (Revocation, error) { return Revoke(f.enroll, Namespace, "lab", serial, now) }, ErrUntrusted},
		{"signed by another key", func() (Revocation, error) { return Revoke(f.other, Namespace, "lab", serial, now) }, ErrUntrusted},
		{"another namespace", func() (Revocation, error) { return Revoke(f.owner, Namespace, "other", serial, now) }, ErrScope},
		{"a ring of the same name", func() (Revocation, error) { return Revoke(f.owner, Ring, "lab", serial, now) }, ErrScope},
		{"tampered serial", func() (Revocation, error) {
			r, err := Revoke(f.owner, Namespace, "lab", NewSerial(), now)
			r.Serial = serial
			return r, err
		}, ErrUntrusted},
		{"a certificate signature passed off as a revocation's", func() (Revocation, error) {
			c := mustIssue(t, f.owner, nsCert(Member, f.node))
			return Revocation{Scope: Namespace, Name: "lab", Serial: c.Serial, Issued: c.NotBefore, Signature: c.Signature}, nil
		}, ErrUntrusted},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := tc.make()
			if err != nil {
				t.Fatal(err)
			}
			b, err := r.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			if r, err = ParseRevocation(b); err != nil {
				t.Fatal(err)
			}
			l := NewRevocationList(Namespace, "lab", root)
			added, err := l.Add(r)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Add: err %v, want %v", err, tc.want)
			}
			if added != (tc.want == nil) || l.Revoked(r.Serial) != (tc.want == nil) {
				t.Fatalf("added %v, revoked %v", added, l.Revoked(r.Serial))
			}
		})
	}
}

func TestRevocationList(t *testing.T) {
	f := newFixture(t)
	l := NewRevocationList(Namespace, "lab", f.owner.GetPublic())
	chain := f.chain2()
	if _, err := Verify(chain, f.owner.GetPublic(), peerOf(t, f.node), Namespace, "lab", now, l.Revoked); err != nil {
		t.Fatal(err)
	}
	r, err := Revoke(f.owner, Namespace, "lab", chain[1].Serial, now)
	if err != nil {
		t.Fatal(err)
	}
	if added, err := l.Add(r); !added || err != nil {
		t.Fatalf("Add = %v, %v", added, err)
	}
	if added, err := l.Add(r); added || err != nil {
		t.Fatalf("Add again = %v, %v, want false, nil", added, err)
	}
	if _, err := Verify(chain, f.owner.GetPublic(), peerOf(t, f.node), Namespace, "lab", now, l.Revoked); !errors.Is(err, ErrRevoked) {
		t.Fatalf("revoked delegate: err %v", err)
	}

	// A DHT record value carries the list to another node.
	for range 3 {
		r, _ := Revoke(f.owner, Namespace, "lab", NewSerial(), now)
		l.Add(r)
	}
	value, err := EncodeRevocations(l.Revocations())
	if err != nil {
		t.Fatal(err)
	}
	rs, err := ParseRevocations(value)
	if err != nil {
		t.Fatal(err)
	}
	there := NewRevocationList(Namespace, "lab", f.owner.GetPublic())
	for _, r := range rs {
		if _, err := there.Add(r); err != nil {
			t.Fatal(err)
		}
	}
	if there.Len() != 4 || !there.Revoked(chain[1].Serial) {
		t.Fatalf("%d revocations arrived", there.Len())
	}
	again, _ := EncodeRevocations(there.Revocations())
	if string(again) != string(value) {
		t.Fatal("equal lists encode differently")
	}
	for i := range value {
		if _, err := ParseRevocations(value[:i]); !errors.Is(err, ErrMalformed) {
			t.Fatalf("%d of %d bytes: err %v", i, len(value), err)
		}
	}
	if _, err := ParseRevocations(append(value, 0)); !errors.Is(err, ErrMalformed) {
		t.Fatalf("trailing byte: err %v", err)
	}
	if got := RevocationKey(Namespace, "lab"); got != "/revoke/namespace/lab" {
		t.Fatalf("RevocationKey = %q", got)
	}
	if got := RevocationKey(Ring, "prod"); got != "/revoke/ring/prod" {
		t.Fatalf("RevocationKey = %q", got)
	}

	// The text form, for a revocation list file.
	text, err := MarshalRevocationsText(rs)
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseRevocationsText(text)
	if err != nil || len(back) != len(rs) {
		t.Fatalf("ParseRevocationsText: %d, %v", len(back), err)
	}
	for i := range rs {
		if !sameRevocation(back[i], rs[i]) {
			t.Fatalf("revocation %d changed", i)
		}
	}
	if empty, err := ParseRevocationsText(nil); len(empty) != 0 || err != nil {
		t.Fatalf("empty file: %v, %v", empty, err)
	}
	certs, _ := MarshalChainText(chain)
	if _, err := ParseRevocationsText(certs); !errors.Is(err, ErrMalformed) {
		t.Fatalf("certificates in a revocation file: err %v", err)
	}
}

func TestRevocationListConcurrent(t *testing.T) {
	f := newFixture(t)
	l := NewRevocationList(Ring, "prod", f.owner.GetPublic())
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 50 {
				r, err := Revoke(f.owner, Ring, "prod", NewSerial(), time.Now())
				if err != nil {
					t.Error(err)
					return
				}
				l.Add(r)
				l.Revoked(r.Serial)
				l.Revocations()
			}
		})
	}
	wg.Wait()
	if l.Len() != 200 {
		t.Fatalf("%d revocations, want 200", l.Len())
	}
}
