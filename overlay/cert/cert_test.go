package cert

import (
	"bytes"
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

var (
	t0  = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	lab = netip.MustParsePrefix("10.128.0.0/16")
)

func newKey(t testing.TB) crypto.PrivKey {
	t.Helper()
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func peerOf(t testing.TB, k crypto.PrivKey) peer.ID {
	t.Helper()
	id, err := peer.IDFromPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// nsCert is a certificate of namespace "lab", valid for a year from t0.
func nsCert(kind Kind, subject crypto.PrivKey) Cert {
	return Cert{
		Kind: kind, Scope: Namespace, Name: "lab", Subnet: lab, LeaseTime: time.Hour,
		Subject: subject.GetPublic(), NotBefore: t0, NotAfter: t0.AddDate(1, 0, 0),
	}
}

func mustIssue(t testing.TB, key crypto.PrivKey, c Cert) Cert {
	t.Helper()
	c, err := Issue(key, c)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func sameCert(a, b Cert) bool {
	return a.Kind == b.Kind && a.Scope == b.Scope && a.Name == b.Name && a.Subnet == b.Subnet &&
		a.LeaseTime == b.LeaseTime && a.Subject.Equals(b.Subject) && a.Issuer.Equals(b.Issuer) &&
		a.Serial == b.Serial && a.NotBefore.Equal(b.NotBefore) && a.NotAfter.Equal(b.NotAfter) &&
		bytes.Equal(a.Signature, b.Signature)
}

func TestCertRoundTrip(t *testing.T) {
	owner, node := newKey(t), newKey(t)
	ring := nsCert(Delegate, node)
	ring.Scope, ring.Subnet, ring.LeaseTime = Ring, netip.Prefix{}, 0
	// Namespaces a node cannot serve are refused when issued.
	for _, bad := range []struct {
		subnet string
		lease  time.Duration
	}{{"fd00:1::/48", time.Hour}, {"10.0.0.0/30", time.Hour}, {"10.0.0.0/7", time.Hour},
		{"10.0.0.0/16", time.Second}, {"10.0.0.0/16", 48 * time.Hour}} {
		c := nsCert(Member, node)
		c.Subnet, c.LeaseTime = netip.MustParsePrefix(bad.subnet), bad.lease
		if _, err := Issue(owner, c); err == nil {
			t.Errorf("issued a namespace of %s with lease %v", bad.subnet, bad.lease)
		}
	}
	for name, c := range map[string]Cert{
		"namespace member": nsCert(Member, node),
		"ring delegate":    ring,
	} {
		t.Run(name, func(t *testing.T) {
			c = mustIssue(t, owner, c)
			b, err := c.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			got, err := ParseCert(b)
			if err != nil {
				t.Fatal(err)
			}
			if !sameCert(got, c) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, c)
			}
			if err := got.CheckSignature(); err != nil {
				t.Fatal(err)
			}
			// Every truncation and any trailing byte is refused.
			for i := range b {
				if _, err := ParseCert(b[:i]); !errors.Is(err, ErrMalformed) {
					t.Fatalf("%d of %d bytes: err %v, want ErrMalformed", i, len(b), err)
				}
			}
			if _, err := ParseCert(append(b, 0)); !errors.Is(err, ErrMalformed) {
				t.Fatalf("trailing byte: err %v, want ErrMalformed", err)
			}
		})
	}
}

func TestIssueRefusesInvalid(t *testing.T) {
	owner, node := newKey(t), newKey(t)
	for name, mutate := range map[string]func(*Cert){
		"no name":            func(c *Cert) { c.Name = "" },
		"slash in name":      func(c *Cert) { c.Name = "a/b" },
		"long name":          func(c *Cert) { c.Name = string(bytes.Repeat([]byte{'a'}, MaxName+1)) },
		"host bits":          func(c *Cert) { c.Subnet = netip.MustParsePrefix("10.128.0.1/16") },
		"no subnet":          func(c *Cert) { c.Subnet = netip.Prefix{} },
		"no lease":           func(c *Cert) { c.LeaseTime = 0 },
		"fractional lease":   func(c *Cert) { c.LeaseTime = 1500 * time.Millisecond },
		"ring with a subnet": func(c *Cert) { c.Scope = Ring },
		"unknown scope":      func(c *Cert) { c.Scope = 9 },
		"unknown kind":       func(c *Cert) { c.Kind = 0 },
		"no subject":         func(c *Cert) { c.Subject = nil },
		"ends before start":  func(c *Cert) { c.NotAfter = c.NotBefore },
	} {
		c := nsCert(Member, node)
		mutate(&c)
		if _, err := Issue(owner, c); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err %v, want ErrMalformed", name, err)
		}
	}
}

func TestChainText(t *testing.T) {
	owner, enroll, node := newKey(t), newKey(t), newKey(t)
	chain := []Cert{mustIssue(t, enroll, nsCert(Member, node)), mustIssue(t, owner, nsCert(Delegate, enroll))}
	text, err := MarshalChainText(chain)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(text, []byte("-----BEGIN RINGNET CERTIFICATE-----\n")) {
		t.Fatalf("text form:\n%s", text)
	}
	got, err := ParseChainText(append([]byte("# a comment is ignored\n"), text...))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || !sameCert(got[0], chain[0]) || !sameCert(got[1], chain[1]) {
		t.Fatalf("round trip: %+v", got)
	}
	if _, err := ParseChainText([]byte("nothing here")); !errors.Is(err, ErrMalformed) {
		t.Fatalf("no blocks: err %v", err)
	}
	r, _ := Revoke(owner, Namespace, "lab", chain[0].Serial, t0)
	revs, _ := MarshalRevocationsText([]Revocation{r})
	if _, err := ParseChainText(append(text, revs...)); !errors.Is(err, ErrMalformed) {
		t.Fatalf("revocation block in a chain: err %v", err)
	}
}

func TestPublicKeyText(t *testing.T) {
	k := newKey(t)
	text, err := FormatPublicKey(k.GetPublic())
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range []string{text, peerOf(t, k).String()} {
		got, err := ParsePublicKey(in)
		if err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		if !got.Equals(k.GetPublic()) {
			t.Fatalf("%s: another key", in)
		}
	}
	for _, in := range []string{"", "CAESIA==", "not a key", text[:len(text)-4]} {
		if _, err := ParsePublicKey(in); err == nil {
			t.Errorf("%q: parsed", in)
		}
	}
}

func TestKeyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "owner.key")
	k := newKey(t)
	if err := WriteKeyFile(path, k); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", fi.Mode().Perm())
	}
	got, err := ReadKeyFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Equals(k) {
		t.Fatal("read another key")
	}
	if err := WriteKeyFile(path, newKey(t)); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("overwrite: err %v, want ErrExist", err)
	}
	if got, _ := ReadKeyFile(path); !got.Equals(k) {
		t.Fatal("key replaced")
	}
	if _, err := os.Stat(path + ".tmp"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("temporary file left: %v", err)
	}
}

func TestSerialText(t *testing.T) {
	s := NewSerial()
	got, err := ParseSerial(s.String())
	if err != nil || got != s {
		t.Fatalf("ParseSerial(%v) = %v, %v", s, got, err)
	}
	for _, in := range []string{"", "00", s.String() + "00", "00000000000000000000000000000000", "zz" + s.String()[2:]} {
		if _, err := ParseSerial(in); err == nil {
			t.Errorf("%q: parsed", in)
		}
	}
}
