package testbed

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ringnet/ringnet/routing"
)

// NewKeys returns n new identity keys and the ring addresses they give.
func NewKeys(n int) ([]crypto.PrivKey, []routing.Addr, error) {
	keys := make([]crypto.PrivKey, n)
	addrs := make([]routing.Addr, n)
	for i := range keys {
		k, _, err := crypto.GenerateEd25519Key(nil)
		if err != nil {
			return nil, nil, err
		}
		id, err := peer.IDFromPrivateKey(k)
		if err != nil {
			return nil, nil, err
		}
		keys[i], addrs[i] = k, routing.AddrFromPeer(id)
	}
	return keys, addrs, nil
}

// KeysApart returns n identity keys of which i and j lie at least gap
// others apart going round the ring either way: their nodes are not near
// neighbours when gap is routing.NearPerSide or more.
func KeysApart(n, i, j, gap int) ([]crypto.PrivKey, error) {
	for range 10000 {
		keys, addrs, err := NewKeys(n)
		if err != nil {
			return nil, err
		}
		a, b := addrs[i], addrs[j]
		cw := 0 // nodes passed going clockwise from a to b
		for k, p := range addrs {
			if k != i && k != j && a.Clockwise(p).Less(a.Clockwise(b)) {
				cw++
			}
		}
		if cw >= gap && n-2-cw >= gap {
			return keys, nil
		}
	}
	return nil, errors.New("testbed: no layout of keys found")
}

// SetIdentity installs key as the identity of the VM's node, as `ringnet
// id` writes it; the node must not have started.
func (vm *VM) SetIdentity(key crypto.PrivKey) error {
	b, err := crypto.MarshalPrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(vm.StateDir(), "identity.key"), b, 0o600); err != nil {
		return fmt.Errorf("testbed: %s: identity: %w", vm.name, err)
	}
	return nil
}
