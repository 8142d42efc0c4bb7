package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ringnet/ringnet/overlay/cert"
)

// ringnet runs the command line and returns its stdout.
func ringnet(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	err := run(args, &stdout, &stderr)
	return stdout.String(), err
}

func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, err := ringnet(t, args...)
	if err != nil {
		t.Fatalf("ringnet %s: %v", strings.Join(args, " "), err)
	}
	return out
}

func newPeer(t *testing.T) peer.ID {
	t.Helper()
	k, err := cert.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func loadChain(t *testing.T, path string) []cert.Cert {
	t.Helper()
	chain, err := readChain(path)
	if err != nil {
		t.Fatal(err)
	}
	return chain
}

func TestNamespaceCommands(t *testing.T) {
	dir := t.TempDir()
	at := func(name string) string { return filepath.Join(dir, name) }
	ownerKey := at("owner/namespace-lab.key")

	out := mustRun(t, "namespace", "create", "-name", "lab", "-subnet", "10.128.0.0/16", "-lease", "1h", "-out", at("owner"))
	root, err := cert.ParsePublicKey(strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("create printed %q: %v", out, err)
	}
	if fi, err := os.Stat(ownerKey); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("owner key: %v, %v", fi, err)
	}
	if _, err := ringnet(t, "namespace", "create", "-name", "lab", "-subnet", "10.128.0.0/16", "-lease", "1h", "-out", at("owner")); err == nil {
		t.Fatal("a second create for the same name replaced the owner key")
	}

	// The owner admits a node.
	node := newPeer(t)
	mustRun(t, "namespace", "admit", "-key", ownerKey, "-peer", node.String(), "-days", "30", "-out", at("node.chain"))
	chain := loadChain(t, at("node.chain"))
	leaf, err := cert.Verify(chain, root, node, cert.Namespace, "lab", time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if leaf.Subnet.String() != "10.128.0.0/16" || leaf.LeaseTime != time.Hour {
		t.Fatalf("the member learns subnet %v lease %v", leaf.Subnet, leaf.LeaseTime)
	}
	if d := time.Until(leaf.NotAfter); d < 29*24*time.Hour || d > 30*24*time.Hour {
		t.Fatalf("valid for %v, want 30 days", d)
	}
	shown := mustRun(t, "cert", "show", "-root", strings.TrimSpace(out), at("node.chain"))
	for _, want := range []string{`member of namespace "lab"`, node.String(), "10.128.0.0/16", leaf.Serial.String(), "valid now", "signature: good", "verified"} {
		if !strings.Contains(shown, want) {
			t.Errorf("cert show does not say %q:\n%s", want, shown)
		}
	}

	// An enrollment key admits a VM, for no longer than its own
	// certificate lasts.
	mustRun(t, "namespace", "delegate", "-key", ownerKey, "-out-key", at("enroll.key"), "-days", "10", "-out", at("enroll.chain"))
	vm := newPeer(t)
	mustRun(t, "namespace", "admit", "-key", at("enroll.key"), "-chain", at("enroll.chain"), "-peer", vm.String(), "-days", "365", "-out", at("vm.chain"))
	vmChain := loadChain(t, at("vm.chain"))
	if len(vmChain) != 2 {
		t.Fatalf("chain of %d certificates, want 2", len(vmChain))
	}
	if _, err := cert.Verify(vmChain, root, vm, cert.Namespace, "lab", time.Now(), nil); err != nil {
		t.Fatal(err)
	}
	if !vmChain[0].NotAfter.Equal(vmChain[1].NotAfter) {
		t.Fatalf("member until %v, enrollment key until %v", vmChain[0].NotAfter, vmChain[1].NotAfter)
	}
	// An enrollment key is not an owner key.
	if _, err := ringnet(t, "namespace", "admit", "-key", at("enroll.key"), "-peer", vm.String(), "-days", "1", "-out", at("x")); err == nil {
		t.Fatal("admitted with an enrollment key and no chain")
	}
	if _, err := ringnet(t, "namespace", "revoke", "-key", at("enroll.key"), "-cert", at("vm.chain"), "-out", at("revoked")); err == nil {
		t.Fatal("an enrollment key revoked")
	}

	// Revoking the enrollment key's certificate takes back the VM's chain.
	mustRun(t, "namespace", "revoke", "-key", ownerKey, "-cert", at("enroll.chain"), "-out", at("revoked"))
	mustRun(t, "namespace", "revoke", "-key", ownerKey, "-cert", at("enroll.chain"), "-out", at("revoked"))
	mustRun(t, "namespace", "revoke", "-key", ownerKey, "-serial", leaf.Serial.String(), "-out", at("revoked"))
	text, err := os.ReadFile(at("revoked"))
	if err != nil {
		t.Fatal(err)
	}
	revs, err := cert.ParseRevocationsText(text)
	if err != nil || len(revs) != 2 {
		t.Fatalf("revocation list: %d, %v; want 2 (the same revocation once)", len(revs), err)
	}
	list := cert.NewRevocationList(cert.Namespace, "lab", root)
	for _, r := range revs {
		if _, err := list.Add(r); err != nil {
			t.Fatal(err)
		}
	}
	for id, path := range map[peer.ID]string{vm: at("vm.chain"), node: at("node.chain")} {
		if _, err := cert.Verify(loadChain(t, path), root, id, cert.Namespace, "lab", time.Now(), list.Revoked); !errors.Is(err, cert.ErrRevoked) {
			t.Errorf("%s: err %v, want ErrRevoked", path, err)
		}
	}
	if shown := mustRun(t, "cert", "show", at("revoked")); strings.Count(shown, "revocation ") != 2 {
		t.Errorf("cert show of the revocation list:\n%s", shown)
	}

	// A chain checked against another root fails, with status 1.
	other, _ := cert.GenerateKey()
	otherText, _ := cert.FormatPublicKey(other.GetPublic())
	if _, err := ringnet(t, "cert", "show", "-root", otherText, at("node.chain")); !errors.Is(err, cert.ErrUntrusted) {
		t.Fatalf("another root: err %v", err)
	}
}

func TestRingCommands(t *testing.T) {
	dir := t.TempDir()
	at := func(name string) string { return filepath.Join(dir, name) }
	out := mustRun(t, "ring", "create", "-name", "prod", "-out", dir)
	root, err := cert.ParsePublicKey(strings.TrimSpace(out))
	if err != nil {
		t.Fatal(err)
	}
	mustRun(t, "ring", "delegate", "-key", at("ring-prod.key"), "-out-key", at("site.key"), "-days", "90", "-out", at("site.chain"))
	mustRun(t, "ring", "delegate", "-key", at("site.key"), "-chain", at("site.chain"), "-out-key", at("image.key"), "-days", "30", "-out", at("image.chain"))
	node := newPeer(t)
	mustRun(t, "ring", "admit", "-key", at("image.key"), "-chain", at("image.chain"), "-peer", node.String(), "-days", "7", "-out", at("node.chain"))
	chain := loadChain(t, at("node.chain"))
	if len(chain) != 3 {
		t.Fatalf("chain of %d, want 3", len(chain))
	}
	if _, err := cert.Verify(chain, root, node, cert.Ring, "prod", time.Now(), nil); err != nil {
		t.Fatal(err)
	}
	// A third delegate would leave no room for a member.
	if _, err := ringnet(t, "ring", "delegate", "-key", at("image.key"), "-chain", at("image.chain"), "-out-key", at("deep.key"), "-days", "1", "-out", at("deep.chain")); !errors.Is(err, cert.ErrUntrusted) {
		t.Fatalf("third delegate: err %v", err)
	}
	// Ring admission and namespace membership are kept apart.
	if _, err := ringnet(t, "namespace", "admit", "-key", at("image.key"), "-chain", at("image.chain"), "-peer", node.String(), "-days", "1", "-out", at("x")); !errors.Is(err, cert.ErrScope) {
		t.Fatalf("ring chain used for a namespace: err %v", err)
	}
	if _, err := ringnet(t, "ring", "revoke", "-key", at("ring-prod.key"), "-cert", at("node.chain"), "-out", at("revoked")); err != nil {
		t.Fatal(err)
	}
}

func TestCertUsageErrors(t *testing.T) {
	dir := t.TempDir()
	mustRun(t, "namespace", "create", "-name", "lab", "-subnet", "10.128.0.0/16", "-lease", "1h", "-out", dir)
	key := filepath.Join(dir, "namespace-lab.key")
	node := newPeer(t).String()
	rsaKey, _, _ := crypto.GenerateRSAKeyPair(2048, nil)
	rsaPeer, _ := peer.IDFromPrivateKey(rsaKey)
	for _, args := range [][]string{
		{"ring"},
		{"ring", "frob"},
		{"cert"},
		{"cert", "show"},
		{"cert", "show", "a", "b"},
		{"cert", "show", "-root", "nonsense", "a"},
		{"ring", "create", "-out", dir},
		{"ring", "create", "-name", "a/b", "-out", dir},
		{"ring", "create", "-name", "x"},
		{"ring", "create", "-name", "x", "-subnet", "10.0.0.0/8", "-out", dir},
		{"namespace", "create", "-name", "x", "-subnet", "10.128.0.1/16", "-lease", "1h", "-out", dir},
		{"namespace", "create", "-name", "x", "-subnet", "10.128.0.0/16", "-lease", "0s", "-out", dir},
		{"namespace", "create", "-name", "x", "-subnet", "10.128.0.0/16", "-out", dir},
		{"namespace", "admit", "-key", key, "-days", "1", "-out", "x"},
		{"namespace", "admit", "-key", key, "-peer", "nonsense", "-days", "1", "-out", "x"},
		{"namespace", "admit", "-key", key, "-peer", rsaPeer.String(), "-days", "1", "-out", "x"},
		{"namespace", "admit", "-key", key, "-peer", node, "-out", "x"},
		{"namespace", "admit", "-key", key, "-peer", node, "-days", "-3", "-out", "x"},
		{"namespace", "admit", "-peer", node, "-days", "1", "-out", "x"},
		{"namespace", "admit", "-key", key, "-peer", node, "-days", "1"},
		{"namespace", "delegate", "-key", key, "-days", "1", "-out", "x"},
		{"namespace", "revoke", "-key", key, "-out", "x"},
		{"namespace", "revoke", "-key", key, "-serial", "00", "-out", "x"},
		{"namespace", "revoke", "-key", key, "-serial", cert.NewSerial().String(), "-cert", "c", "-out", "x"},
	} {
		_, err := ringnet(t, args...)
		var ue usageError
		if !errors.As(err, &ue) {
			t.Errorf("ringnet %s: err %v, want a usage error", strings.Join(args, " "), err)
		}
	}
}
