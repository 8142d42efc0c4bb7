package node

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ringnet/ringnet/dhcp"
	"github.com/ringnet/ringnet/overlay/cert"
)

var trustNow = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)

func newKey(t *testing.T) crypto.PrivKey {
	t.Helper()
	k, err := cert.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// issue signs a certificate of scope for subject under issuer.
func issue(t *testing.T, issuer crypto.PrivKey, kind cert.Kind, scope cert.Scope, name string, subject crypto.PubKey, until time.Time) cert.Cert {
	t.Helper()
	c := cert.Cert{Kind: kind, Scope: scope, Name: name, Subject: subject,
		NotBefore: trustNow.Add(-time.Hour), NotAfter: until}
	if scope == cert.Namespace {
		c.Subnet, c.LeaseTime = netip.MustParsePrefix("10.140.0.0/16"), time.Hour
	}
	out, err := cert.Issue(issuer, c)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func writeChain(t *testing.T, dir, file string, chain ...cert.Cert) {
	t.Helper()
	text, err := cert.MarshalChainText(chain)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, file), text, 0o600); err != nil {
		t.Fatal(err)
	}
}

func pubText(t *testing.T, k crypto.PrivKey) string {
	t.Helper()
	s, err := cert.FormatPublicKey(k.GetPublic())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestTrustChecksLeaseProofs loads a member's trust from files and checks
// lease records against it: only records whose holder shows a valid chain
// from the namespace's owner, for an address inside its subnet, pass.
func TestTrustChecksLeaseProofs(t *testing.T) {
	dir := t.TempDir()
	ringOwner, nsOwner, other := newKey(t), newKey(t), newKey(t)
	node := newKey(t)
	until := trustNow.Add(24 * time.Hour)
	writeChain(t, dir, "ring.pem", issue(t, ringOwner, cert.Member, cert.Ring, "grid", node.GetPublic(), until))
	writeChain(t, dir, "lab.pem", issue(t, nsOwner, cert.Member, cert.Namespace, "lab", node.GetPublic(), until))
	cfg := &Config{StateDir: dir,
		Ring:      RingConfig{Name: "grid", Root: pubText(t, ringOwner), Cert: "ring.pem"},
		Namespace: NamespaceConfig{Name: "lab", Root: pubText(t, nsOwner), Cert: "lab.pem"}}
	tr, err := loadTrust(cfg, node, trustNow)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(tr.nsID, "lab.") || tr.nsCert.Subnet.String() != "10.140.0.0/16" {
		t.Fatalf("namespace %q, subnet %v", tr.nsID, tr.nsCert.Subnet)
	}

	holder := newKey(t)
	holderID, _ := peer.IDFromPrivateKey(holder)
	proofOf := func(chain ...cert.Cert) []byte {
		b, err := cert.MarshalChain(chain)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	good := proofOf(issue(t, nsOwner, cert.Member, cert.Namespace, "lab", holder.GetPublic(), until))
	cases := []struct {
		name  string
		ns    string
		ip    string
		proof []byte
		ok    bool
	}{
		{"member", tr.nsID, "10.140.0.9", good, true},
		{"no proof", tr.nsID, "10.140.0.9", nil, false},
		{"another owner's chain", tr.nsID, "10.140.0.9",
			proofOf(issue(t, other, cert.Member, cert.Namespace, "lab", holder.GetPublic(), until)), false},
		{"someone else's chain", tr.nsID, "10.140.0.9",
			proofOf(issue(t, nsOwner, cert.Member, cert.Namespace, "lab", node.GetPublic(), until)), false},
		{"expired", tr.nsID, "10.140.0.9",
			proofOf(issue(t, nsOwner, cert.Member, cert.Namespace, "lab", holder.GetPublic(), trustNow.Add(-time.Minute))), false},
		{"outside the subnet", tr.nsID, "10.141.0.9", good, false},
		{"ring certificate", tr.nsID, "10.140.0.9",
			proofOf(issue(t, nsOwner, cert.Member, cert.Ring, "lab", holder.GetPublic(), until)), false},
		{"open namespace", "lab", "10.140.0.9", nil, true},
		{"open namespace with a proof", "lab", "10.140.0.9", good, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l := dhcp.Lease{Namespace: c.ns, IP: netip.MustParseAddr(c.ip), Holder: holderID, Proof: c.proof}
			err := tr.member(l, trustNow)
			if (err == nil) != c.ok {
				t.Fatalf("member = %v, want ok=%v", err, c.ok)
			}
		})
	}

	// A revoked member's records stop passing.
	chain, _ := cert.ParseChain(good)
	rev, err := cert.Revoke(nsOwner, cert.Namespace, "lab", chain[0].Serial, trustNow)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tr.nsRevs.Add(rev); err != nil {
		t.Fatal(err)
	}
	l := dhcp.Lease{Namespace: tr.nsID, IP: netip.MustParseAddr("10.140.0.9"), Holder: holderID, Proof: good}
	if err := tr.member(l, trustNow); err == nil {
		t.Fatal("a revoked member's lease passed")
	}
}

// TestTrustAdmission checks ring proofs as the overlay does, and a node
// that admits itself with an enrollment key.
func TestTrustAdmission(t *testing.T) {
	dir := t.TempDir()
	ringOwner, nsOwner, enroll := newKey(t), newKey(t), newKey(t)
	node := newKey(t)
	until := trustNow.Add(24 * time.Hour)
	// The image carries enrollment keys and their delegate chains only.
	writeChain(t, dir, "ring-enroll.pem", issue(t, ringOwner, cert.Delegate, cert.Ring, "grid", enroll.GetPublic(), until))
	writeChain(t, dir, "lab-enroll.pem", issue(t, nsOwner, cert.Delegate, cert.Namespace, "lab", enroll.GetPublic(), until))
	if err := cert.WriteKeyFile(filepath.Join(dir, "enroll.key"), enroll); err != nil {
		t.Fatal(err)
	}
	cfg := &Config{StateDir: dir,
		Ring:      RingConfig{Name: "grid", Root: pubText(t, ringOwner), Cert: "ring-enroll.pem", EnrollKey: "enroll.key"},
		Namespace: NamespaceConfig{Name: "lab", Root: pubText(t, nsOwner), Cert: "lab-enroll.pem", EnrollKey: "enroll.key"}}
	tr, err := loadTrust(cfg, node, trustNow)
	if err != nil {
		t.Fatal(err)
	}
	adm := tr.admission()
	id, _ := peer.IDFromPrivateKey(node)
	if got, err := adm.Verify(id, tr.ringProof, trustNow); err != nil || !got.Equal(until.Truncate(time.Second)) {
		t.Fatalf("own enrolled proof: until %v, %v", got, err)
	}
	stranger := newKey(t)
	sid, _ := peer.IDFromPrivateKey(stranger)
	if _, err := adm.Verify(sid, tr.ringProof, trustNow); err == nil {
		t.Fatal("another peer passed with this node's proof")
	}
	if _, err := adm.Verify(id, tr.ringProof, until.Add(time.Second)); err == nil {
		t.Fatal("an expired proof passed")
	}
	if _, err := adm.Verify(id, []byte{1, 2, 3}, trustNow); err == nil {
		t.Fatal("garbage passed")
	}
	// A wrong enrollment key is refused at load time, with the field.
	cfg.Ring.EnrollKey = "missing.key"
	if _, err := loadTrust(cfg, node, trustNow); err == nil || !strings.Contains(err.Error(), "ring.enroll_key") {
		t.Fatalf("load with a missing enrollment key: %v", err)
	}
}

// TestRevocationRecords checks the DHT's revocation records: signed by
// the owner the key names, or refused.
func TestRevocationRecords(t *testing.T) {
	owner, other := newKey(t), newKey(t)
	rev, err := cert.Revoke(owner, cert.Namespace, "lab", cert.NewSerial(), trustNow)
	if err != nil {
		t.Fatal(err)
	}
	key, err := revocationKey(cert.Namespace, "lab", owner.GetPublic())
	if err != nil {
		t.Fatal(err)
	}
	good, err := encodeRevocationRecord(owner.GetPublic(), []cert.Revocation{rev})
	if err != nil {
		t.Fatal(err)
	}
	v := revocationValidator{}
	if err := v.Validate(key, good); err != nil {
		t.Fatalf("good record: %v", err)
	}
	empty, _ := encodeRevocationRecord(owner.GetPublic(), nil)
	if i, err := v.Select(key, [][]byte{empty, good}); err != nil || i != 1 {
		t.Fatalf("Select = %d, %v; want the record that revokes more", i, err)
	}
	otherRev, _ := cert.Revoke(other, cert.Namespace, "lab", cert.NewSerial(), trustNow)
	forged, _ := encodeRevocationRecord(other.GetPublic(), []cert.Revocation{otherRev})
	mixed, _ := encodeRevocationRecord(owner.GetPublic(), []cert.Revocation{rev, otherRev})
	for name, value := range map[string][]byte{
		"another owner's record":      forged,
		"a revocation by another key": mixed,
		"garbage":                     []byte{0, 3, 1, 2},
		"empty":                       nil,
	} {
		if err := v.Validate(key, value); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
