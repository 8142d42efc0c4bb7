package testbed

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ringnet/ringnet/node"
	"github.com/ringnet/ringnet/overlay/cert"
)

// Owner holds a ring's or a namespace's owner key, as `ringnet ring
// create` or `ringnet namespace create` would, and admits VMs to it.
type Owner struct {
	Scope     cert.Scope
	Name      string
	Subnet    netip.Prefix  // namespaces only
	LeaseTime time.Duration // namespaces only
	Key       crypto.PrivKey
}

// NewOwner makes a fresh owner key for a ring (subnet invalid) or a
// namespace.
func NewOwner(scope cert.Scope, name string, subnet netip.Prefix, lease time.Duration) (*Owner, error) {
	k, err := cert.GenerateKey()
	if err != nil {
		return nil, err
	}
	return &Owner{Scope: scope, Name: name, Subnet: subnet, LeaseTime: lease, Key: k}, nil
}

// Root is the owner's public key as configs name it.
func (o *Owner) Root() string {
	s, err := cert.FormatPublicKey(o.Key.GetPublic())
	if err != nil {
		panic(err) // an Ed25519 key always formats
	}
	return s
}

// Admit issues vm's node a member certificate valid until until, writes
// the chain into its state directory as file, and returns the file name.
func (o *Owner) Admit(ctx context.Context, vm *VM, file string, until time.Time) (string, error) {
	id, err := vm.PeerID(ctx)
	if err != nil {
		return "", err
	}
	pid, err := peer.Decode(id)
	if err != nil {
		return "", err
	}
	pub, err := pid.ExtractPublicKey()
	if err != nil {
		return "", err
	}
	c, err := cert.Issue(o.Key, cert.Cert{
		Kind: cert.Member, Scope: o.Scope, Name: o.Name, Subnet: o.Subnet, LeaseTime: o.LeaseTime,
		Subject: pub, NotBefore: time.Now().Add(-time.Minute), NotAfter: until,
	})
	if err != nil {
		return "", fmt.Errorf("admit %s: %w", vm.name, err)
	}
	text, err := cert.MarshalChainText([]cert.Cert{c})
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(vm.StateDir(), file), text, 0o600); err != nil {
		return "", fmt.Errorf("admit %s: %w", vm.name, err)
	}
	return file, nil
}

// Configure admits vm to the ring (and to the namespace, if ns is not
// nil), valid for a day, and sets cfg's sections to match.
func Configure(ctx context.Context, vm *VM, cfg *node.Config, ring, ns *Owner) error {
	until := time.Now().Add(24 * time.Hour)
	f, err := ring.Admit(ctx, vm, "ring.pem", until)
	if err != nil {
		return err
	}
	cfg.Ring = node.RingConfig{Name: ring.Name, Root: ring.Root(), Cert: f}
	if ns == nil {
		return nil
	}
	if f, err = ns.Admit(ctx, vm, "namespace.pem", until); err != nil {
		return err
	}
	cfg.Namespace.Name, cfg.Namespace.Root, cfg.Namespace.Cert = ns.Name, ns.Root(), f
	return nil
}
