package routing

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// testKey returns a fixed Ed25519 identity key: seed picks which.
func testKey(t testing.TB, seed byte) (crypto.PrivKey, peer.ID) {
	t.Helper()
	key, _, err := crypto.GenerateEd25519Key(bytes.NewReader(bytes.Repeat([]byte{seed}, 32)))
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return key, id
}

// unsignedCTM is a valid request but for its signature.
func unsignedCTM(t testing.TB) (*ConnectToMe, crypto.PrivKey) {
	key, id := testKey(t, 1)
	return &ConnectToMe{
		Kind: Near, TTL: 32, Requester: id, Addr: AddrFromPeer(id), Target: AddrFromPeer(id),
		Endpoints: []netip.AddrPort{
			netip.MustParseAddrPort("192.0.2.1:4151"),
			netip.MustParseAddrPort("[2001:db8::1]:4151"),
			netip.MustParseAddrPort("[::ffff:192.0.2.2]:1"),
		},
	}, key
}

// signed signs m with key.
func signed(t testing.TB, m *ConnectToMe, key crypto.PrivKey) *ConnectToMe {
	t.Helper()
	if err := m.Sign(key); err != nil {
		t.Fatal(err)
	}
	return m
}

func validCTM(t testing.TB) *ConnectToMe {
	m, key := unsignedCTM(t)
	return signed(t, m, key)
}

func validList(n int) *NeighbourList {
	id := testID(0)
	m := &NeighbourList{Kinds: Near | Far, Seq: 7, Sender: id, Addr: AddrFromPeer(id)}
	for i := range n {
		p := testID(i + 1)
		m.Neighbours = append(m.Neighbours, Neighbour{Peer: p, Addr: AddrFromPeer(p)})
	}
	return m
}

func mustMarshal(t testing.TB, m interface{ MarshalBinary() ([]byte, error) }) []byte {
	t.Helper()
	b, err := m.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestWireRoundTrip(t *testing.T) {
	ctm, key := unsignedCTM(t)
	signed(t, ctm, key)
	var ctm2 ConnectToMe
	if err := ctm2.UnmarshalBinary(mustMarshal(t, ctm)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(mustMarshal(t, &ctm2), mustMarshal(t, ctm)) || ctm2.Endpoints[2] != ctm.Endpoints[2] {
		t.Fatalf("connect-to-me round trip: %+v != %+v", ctm2, *ctm)
	}
	ctm.Relay = Neighbour{Peer: testID(5), Addr: AddrFromPeer(testID(5))}
	signed(t, ctm, key)
	if err := ctm2.UnmarshalBinary(mustMarshal(t, ctm)); err != nil || ctm2.Relay != ctm.Relay {
		t.Fatalf("connect-to-me with a relay: %+v, %v", ctm2.Relay, err)
	}

	list := validList(MaxNeighbours)
	var list2 NeighbourList
	if err := list2.UnmarshalBinary(mustMarshal(t, list)); err != nil {
		t.Fatal(err)
	}
	if len(list2.Neighbours) != MaxNeighbours || list2.Neighbours[5] != list.Neighbours[5] ||
		list2.Kinds != list.Kinds || list2.Seq != list.Seq {
		t.Fatalf("neighbour list round trip: %+v", list2)
	}

	h := &Header{TTL: 9, Src: at(1), Dst: at(2)}
	var h2 Header
	b := mustMarshal(t, h)
	if len(b) != HeaderLen {
		t.Fatalf("header is %d bytes, want %d", len(b), HeaderLen)
	}
	if err := h2.UnmarshalBinary(b); err != nil || h2 != *h {
		t.Fatalf("header round trip: %+v, %v", h2, err)
	}
}

func TestWireRejects(t *testing.T) {
	lying := validCTM(t)
	lying.Addr = AddrFromPeer(testID(2)) // another node's address
	lyingBytes := mustMarshal(t, validCTM(t))
	copy(lyingBytes[3+1+len(lying.Requester):], lying.Addr.AppendBytes(nil))

	listLie := mustMarshal(t, validList(3))
	listLie[len(listLie)-1] ^= 1 // the last neighbour's address

	tooMany := validList(MaxNeighbours)
	b := mustMarshal(t, tooMany)
	off := 1 + 1 + 8 + 1 + len(tooMany.Sender) + AddrLen
	b[off] = MaxNeighbours + 1
	last := validList(1).Neighbours[0]
	b = appendPeer(b, last.Peer, last.Addr)

	ctm := mustMarshal(t, validCTM(t))
	ttl0 := bytes.Clone(ctm)
	ttl0[2] = 0
	v2 := bytes.Clone(ctm)
	v2[0] = 2
	kind := bytes.Clone(ctm)
	kind[1] = byte(Leaf)

	eps, key := unsignedCTM(t)
	for len(eps.Endpoints) < MaxEndpoints {
		eps.Endpoints = append(eps.Endpoints, eps.Endpoints[0])
	}
	manyEps := mustMarshal(t, signed(t, eps, key))
	manyEps[3+1+len(eps.Requester)+2*AddrLen] = MaxEndpoints + 1

	relayed, key := unsignedCTM(t)
	relayed.Relay = Neighbour{Peer: testID(5), Addr: AddrFromPeer(testID(5))}
	relayLie := mustMarshal(t, signed(t, relayed, key))
	relayLie[len(relayLie)-1-1-len(relayed.Sig)] ^= 1 // the relay's address

	forged := bytes.Clone(ctm)
	forged[len(forged)-1] ^= 1 // the signature
	moved := bytes.Clone(ctm)
	moved[3+1+len(lying.Requester)+2*AddrLen+2] ^= 1 // the first endpoint, after signing
	other, otherKey := unsignedCTM(t)
	_, otherID := testKey(t, 2)
	other.Requester, other.Addr = otherID, AddrFromPeer(otherID)
	if err := other.Sign(otherKey); !errors.Is(err, ErrSignature) {
		t.Fatalf("signing with another node's key: %v", err)
	}
	other.Sig = validCTM(t).Sig // the first node's signature, on a request in the second's name
	impostor := mustMarshal(t, other)
	unsigned := bytes.Clone(ctm)
	unsigned = append(unsigned[:len(unsigned)-1-len(lying.Sig)], 0)

	badKinds := mustMarshal(t, validList(1))
	badKinds[1] = 0x80

	hdr := mustMarshal(t, &Header{TTL: 1})
	hdr0 := bytes.Clone(hdr)
	hdr0[1] = 0

	tests := []struct {
		name string
		msg  interface{ UnmarshalBinary([]byte) error }
		b    []byte
		want error
	}{
		{"ctm: address not the hash of the peer ID", &ConnectToMe{}, lyingBytes, ErrAddr},
		{"ctm: TTL zero", &ConnectToMe{}, ttl0, ErrTTL},
		{"ctm: unknown version", &ConnectToMe{}, v2, ErrVersion},
		{"ctm: leaf is not a kind to ask for", &ConnectToMe{}, kind, ErrMalformed},
		{"ctm: too many endpoints", &ConnectToMe{}, manyEps, ErrTooMany},
		{"ctm: truncated", &ConnectToMe{}, ctm[:len(ctm)-1], ErrMalformed},
		{"ctm: the relay's address lies", &ConnectToMe{}, relayLie, ErrAddr},
		{"ctm: trailing bytes", &ConnectToMe{}, append(bytes.Clone(ctm), 0), ErrMalformed},
		{"ctm: empty", &ConnectToMe{}, nil, ErrMalformed},
		{"ctm: signature altered", &ConnectToMe{}, forged, ErrSignature},
		{"ctm: endpoint altered after signing", &ConnectToMe{}, moved, ErrSignature},
		{"ctm: signed by another node", &ConnectToMe{}, impostor, ErrSignature},
		{"ctm: no signature", &ConnectToMe{}, unsigned, ErrMalformed},
		{"list: a neighbour's address lies", &NeighbourList{}, listLie, ErrAddr},
		{"list: too long", &NeighbourList{}, b, ErrTooMany},
		{"list: unknown kind", &NeighbourList{}, badKinds, ErrMalformed},
		{"header: TTL zero", &Header{}, hdr0, ErrTTL},
		{"header: short", &Header{}, hdr[:HeaderLen-1], ErrMalformed},
	}
	var drops Drops
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.msg.UnmarshalBinary(tt.b)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			drops.Count(err)
		})
	}
	if got := drops.Addr.Load() + drops.TTL.Load() + drops.Version.Load() + drops.TooMany.Load() + drops.Malformed.Load() + drops.Signature.Load(); got != uint64(len(tests)) {
		t.Errorf("counted %d drops, want %d", got, len(tests))
	}
	if drops.Addr.Load() != 3 || drops.TTL.Load() != 2 || drops.TooMany.Load() != 2 || drops.Signature.Load() != 3 {
		t.Errorf("drops by cause: addr %d ttl %d too many %d signature %d",
			drops.Addr.Load(), drops.TTL.Load(), drops.TooMany.Load(), drops.Signature.Load())
	}
}

func TestWireMarshalRefuses(t *testing.T) {
	lie := validCTM(t)
	lie.Addr = at(1)
	ttl := validCTM(t)
	ttl.TTL = 0
	zone := validCTM(t)
	zone.Endpoints = []netip.AddrPort{netip.MustParseAddrPort("[fe80::1%eth0]:1")}
	unsigned, _ := unsignedCTM(t)
	for name, m := range map[string]interface{ MarshalBinary() ([]byte, error) }{
		"unsigned":       unsigned,
		"lying address":  lie,
		"TTL zero":       ttl,
		"zoned endpoint": zone,
		"long list":      validList(MaxNeighbours + 1),
		"header TTL 0":   &Header{},
	} {
		if _, err := m.MarshalBinary(); err == nil {
			t.Errorf("%s: marshalled", name)
		}
	}
}

// The fuzz tests check that nothing panics and that whatever parses is
// canonical: it marshals back to exactly the bytes it came from.

func FuzzConnectToMe(f *testing.F) {
	f.Add(mustMarshal(f, validCTM(f)))
	f.Add([]byte{Version, byte(Far), 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		var m ConnectToMe
		if m.UnmarshalBinary(b) != nil {
			return
		}
		if m.TTL == 0 || AddrFromPeer(m.Requester) != m.Addr || len(m.Endpoints) > MaxEndpoints {
			t.Fatalf("accepted an invalid request: %+v", m)
		}
		if again := mustMarshal(t, &m); !bytes.Equal(again, b) {
			t.Fatalf("round trip:\n got %x\nwant %x", again, b)
		}
	})
}

func FuzzNeighbourList(f *testing.F) {
	f.Add(mustMarshal(f, validList(3)))
	f.Add(mustMarshal(f, validList(0)))
	f.Fuzz(func(t *testing.T, b []byte) {
		var m NeighbourList
		if m.UnmarshalBinary(b) != nil {
			return
		}
		if len(m.Neighbours) > MaxNeighbours {
			t.Fatalf("accepted %d neighbours", len(m.Neighbours))
		}
		for _, n := range m.Neighbours {
			if AddrFromPeer(n.Peer) != n.Addr {
				t.Fatalf("accepted a lying entry %+v", n)
			}
		}
		if again := mustMarshal(t, &m); !bytes.Equal(again, b) {
			t.Fatalf("round trip:\n got %x\nwant %x", again, b)
		}
	})
}

func FuzzHeader(f *testing.F) {
	f.Add(mustMarshal(f, &Header{TTL: 64, Src: at(1), Dst: at(2)}))
	f.Fuzz(func(t *testing.T, b []byte) {
		var h Header
		if h.UnmarshalBinary(b) != nil {
			return
		}
		if h.TTL == 0 {
			t.Fatal("accepted TTL 0")
		}
		if again := mustMarshal(t, &h); !bytes.Equal(again, b) {
			t.Fatalf("round trip:\n got %x\nwant %x", again, b)
		}
	})
}
