package node

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ringnet/ringnet/dhcp"
	"github.com/ringnet/ringnet/overlay"
	"github.com/ringnet/ringnet/overlay/cert"
)

// Two kinds of trust, kept apart. Ring admission says who may link,
// forward and store DHT records: in a closed ring (the default) each node
// shows a chain from the ring's owner key to its peer ID. Namespace
// membership says who may claim addresses in a namespace: in a closed
// namespace, every lease record carries its holder's chain from the
// namespace's owner key, and replicas refuse records without one. A
// closed namespace's records live under an ID that names its owner key
// (name.hash), so two namespaces of one name never mix.

// trust is what the node checks others with, and shows them.
type trust struct {
	ringOpen  bool
	ringName  string
	ringRoot  crypto.PubKey
	ringProof []byte // our chain, binary
	ringUntil time.Time
	ringRevs  *cert.RevocationList

	nsOpen  bool
	nsName  string
	nsID    string // the DHT's name for the namespace
	nsRoot  crypto.PubKey
	nsProof []byte
	nsUntil time.Time
	nsCert  cert.Cert // our leaf: the namespace's subnet and lease time
	nsRevs  *cert.RevocationList
}

// namespaceID is a closed namespace's name in the DHT: its name and the
// first 8 bytes of the hash of its owner key.
func namespaceID(name string, root crypto.PubKey) (string, error) {
	raw, err := crypto.MarshalPublicKey(root)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(raw)
	return name + "." + hex.EncodeToString(sum[:8]), nil
}

// loadTrust reads the ring's and the namespace's owner keys and this
// node's chains, issuing them from an enrollment key where the config
// gives one.
func loadTrust(cfg *Config, key crypto.PrivKey, now time.Time) (*trust, error) {
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return nil, err
	}
	t := &trust{ringOpen: cfg.Ring.Open, ringName: cfg.Ring.Name, nsOpen: cfg.Namespace.Open, nsName: cfg.Namespace.Name, nsID: cfg.Namespace.Name}
	if !t.ringOpen {
		t.ringRoot, t.ringProof, t.ringUntil, _, err = loadChain(cfg, "ring", cfg.Ring.Root, cfg.Ring.Cert, cfg.Ring.EnrollKey,
			cert.Ring, cfg.Ring.Name, key, id, now)
		if err != nil {
			return nil, err
		}
		t.ringRevs = cert.NewRevocationList(cert.Ring, cfg.Ring.Name, t.ringRoot)
	}
	if !t.nsOpen {
		t.nsRoot, t.nsProof, t.nsUntil, t.nsCert, err = loadChain(cfg, "namespace", cfg.Namespace.Root, cfg.Namespace.Cert,
			cfg.Namespace.EnrollKey, cert.Namespace, cfg.Namespace.Name, key, id, now)
		if err != nil {
			return nil, err
		}
		if t.nsID, err = namespaceID(cfg.Namespace.Name, t.nsRoot); err != nil {
			return nil, fieldErr("namespace.root", "%v", err)
		}
		t.nsRevs = cert.NewRevocationList(cert.Namespace, cfg.Namespace.Name, t.nsRoot)
	}
	return t, nil
}

// loadChain reads one section's root and chain. With an enrollment key,
// the chain file is the key's delegate chain, and the node issues its own
// member certificate under it.
func loadChain(cfg *Config, section, rootText, chainFile, enrollFile string, scope cert.Scope, name string,
	key crypto.PrivKey, id peer.ID, now time.Time) (crypto.PubKey, []byte, time.Time, cert.Cert, error) {
	fail := func(field string, err error) (crypto.PubKey, []byte, time.Time, cert.Cert, error) {
		return nil, nil, time.Time{}, cert.Cert{}, fieldErr(section+"."+field, "%v", err)
	}
	root, err := cert.ParsePublicKey(rootText)
	if err != nil {
		return fail("root", err)
	}
	text, err := os.ReadFile(statePath(cfg, chainFile))
	if err != nil {
		return fail("cert", err)
	}
	chain, err := cert.ParseChainText(text)
	if err != nil {
		return fail("cert", err)
	}
	if enrollFile != "" {
		enroll, err := cert.ReadKeyFile(statePath(cfg, enrollFile))
		if err != nil {
			return fail("enroll_key", err)
		}
		del, err := cert.VerifyDelegate(chain, root, enroll.GetPublic(), scope, name, now, nil)
		if err != nil {
			return fail("cert", fmt.Errorf("the enrollment key's chain: %w", err))
		}
		leaf, err := cert.Issue(enroll, cert.Cert{
			Kind: cert.Member, Scope: scope, Name: name, Subnet: del.Subnet, LeaseTime: del.LeaseTime,
			Subject: key.GetPublic(), NotBefore: now.Add(-5 * time.Minute), NotAfter: del.NotAfter,
		})
		if err != nil {
			return fail("enroll_key", err)
		}
		chain = append([]cert.Cert{leaf}, chain...)
	}
	leaf, err := cert.Verify(chain, root, id, scope, name, now, nil)
	if err != nil {
		return fail("cert", fmt.Errorf("this node's chain: %w", err))
	}
	proof, err := cert.MarshalChain(chain)
	if err != nil {
		return fail("cert", err)
	}
	return root, proof, chainUntil(chain), leaf, nil
}

// statePath resolves a relative path against the state directory.
func statePath(cfg *Config, p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(cfg.StateDir, p)
}

func chainUntil(chain []cert.Cert) time.Time {
	until := chain[0].NotAfter
	for _, c := range chain[1:] {
		if c.NotAfter.Before(until) {
			until = c.NotAfter
		}
	}
	return until
}

// admission is the overlay's ring admission, nil in an open ring.
func (t *trust) admission() *overlay.AdmissionConfig {
	if t.ringOpen {
		return nil
	}
	return &overlay.AdmissionConfig{
		Proof: t.ringProof,
		Verify: func(id peer.ID, proof []byte, now time.Time) (time.Time, error) {
			chain, err := cert.ParseChain(proof)
			if err != nil {
				return time.Time{}, err
			}
			if _, err := cert.Verify(chain, t.ringRoot, id, cert.Ring, t.ringName, now, t.ringRevs.Revoked); err != nil {
				return time.Time{}, err
			}
			return chainUntil(chain), nil
		},
	}
}

// member checks a lease record's proof (dhcp.LeaseValidator.Member). A
// closed namespace's records must carry a chain from the owner key its ID
// names, for their holder, covering their address; our own namespace's
// revocations apply.
func (t *trust) member(l dhcp.Lease, now time.Time) error {
	dot := strings.LastIndexByte(l.Namespace, '.')
	hash := ""
	if dot >= 0 {
		hash = l.Namespace[dot+1:]
	}
	if len(hash) != 16 || strings.Trim(hash, "0123456789abcdef") != "" {
		// An open namespace: anyone may claim.
		if len(l.Proof) != 0 {
			return errors.New("a proof in an open namespace")
		}
		return nil
	}
	chain, err := cert.ParseChain(l.Proof)
	if err != nil {
		return err
	}
	root := chain[len(chain)-1].Issuer
	if id, err := namespaceID(l.Namespace[:dot], root); err != nil || id != l.Namespace {
		return fmt.Errorf("the chain's owner key is not namespace %s's", l.Namespace)
	}
	var revoked func(cert.Serial) bool
	if l.Namespace == t.nsID && t.nsRevs != nil {
		revoked = t.nsRevs.Revoked
	}
	leaf, err := cert.Verify(chain, root, l.Holder, cert.Namespace, l.Namespace[:dot], now, revoked)
	if err != nil {
		return err
	}
	if !leaf.Subnet.Contains(l.IP) {
		return fmt.Errorf("%v is outside the namespace's subnet %v", l.IP, leaf.Subnet)
	}
	return nil
}
