package overlay

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// TestCloneDetected starts a node, then a second node with the same
// identity (a cloned VM): the peer both connect to finds the first one
// alive, and the clone, the newer, is told; the first is not. A node that
// restarts after the first one has gone is no clone.
func TestCloneDetected(t *testing.T) {
	key, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	instance := func(errs chan error) func(*Config) {
		return func(c *Config) {
			c.Identity = key
			c.OnClone = func(err error) { errs <- err }
		}
	}
	connect := func(n, to *testNode) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := n.Host().Connect(ctx, peer.AddrInfo{ID: to.ID(), Addrs: to.Host().Addrs()}); err != nil {
			t.Fatal(err)
		}
	}
	q := newTestNode(t, "10.128.0.1", 0)
	firstErrs, cloneErrs := make(chan error, 4), make(chan error, 4)
	first := newTestNode(t, "10.128.0.2", 0, instance(firstErrs))
	connect(first, q)
	waitFor(t, "the first instance's check", func() bool { return q.instance.asks.Load() == 1 })

	clone := newTestNode(t, "10.128.0.2", 0, instance(cloneErrs))
	connect(clone, q)
	select {
	case err := <-cloneErrs:
		if !errors.Is(err, ErrClone) {
			t.Fatalf("the clone was told %v, want ErrClone", err)
		}
		t.Logf("clone told: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the clone was not told that an older instance runs")
	}
	if q.instance.found.Load() != 1 || first.instance.probes.Load() == 0 {
		t.Fatalf("q found %d other instances; the first answered %d probes", q.instance.found.Load(), first.instance.probes.Load())
	}
	select {
	case err := <-firstErrs:
		t.Fatalf("the first instance, the older, was told: %v", err)
	default:
	}

	// Both gone, the identity starts again: no clone.
	first.Close()
	clone.Close()
	waitFor(t, "q to see both instances go", func() bool { return len(q.Host().Network().ConnsToPeer(first.ID())) == 0 })
	againErrs := make(chan error, 4)
	again := newTestNode(t, "10.128.0.2", 0, instance(againErrs))
	connect(again, q)
	waitFor(t, "the restarted node's check", func() bool { return q.instance.asks.Load() == 3 })
	if q.instance.found.Load() != 1 {
		t.Fatalf("q found another instance of a node that restarted alone")
	}
	select {
	case err := <-againErrs:
		t.Fatalf("a node that restarted alone was told: %v", err)
	case <-time.After(500 * time.Millisecond):
	}
}

// A peer that lies cannot make a node believe it is a clone: the proof
// must be signed with the node's own key over its nonce.
func TestInstanceProofChecks(t *testing.T) {
	key, _, _ := crypto.GenerateEd25519Key(nil)
	other, _, _ := crypto.GenerateEd25519Key(nil)
	var ask [nonceLen]byte
	ask[0] = 7
	p := instanceProof{instance: [nonceLen]byte{1}, started: time.Unix(1700000000, 0)}
	sign := func(k crypto.PrivKey, nonce [nonceLen]byte) []byte {
		s, err := k.Sign(signedInstanceBytes(nonce, &p))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	for _, tc := range []struct {
		name string
		sig  []byte
		ok   bool
	}{
		{"signed by the key, for the nonce", sign(key, ask), true},
		{"signed by another key", sign(other, ask), false},
		{"signed for another nonce", sign(key, [nonceLen]byte{8}), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := p
			q.sig = tc.sig
			got, err := parseInstanceProof(q.marshal())
			if err != nil {
				t.Fatal(err)
			}
			if err := got.verify(key.GetPublic(), ask); (err == nil) != tc.ok {
				t.Fatalf("verify = %v, want ok %v", err, tc.ok)
			}
		})
	}
}
