package overlay

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/pion/stun/v3"

	"github.com/ringnet/ringnet/routing"
)

// sessionPair returns the two ends of one session, with fixed keys.
func sessionPair(t testing.TB, suite Suite) (a, b *session) {
	k1, k2 := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	a = &session{localIndex: 7, created: time.Now()}
	b = &session{localIndex: 9, created: time.Now()}
	if err := a.setKeys(suite, 9, k1, k2); err != nil {
		t.Fatal(err)
	}
	if err := b.setKeys(suite, 7, k2, k1); err != nil {
		t.Fatal(err)
	}
	return a, b
}

func sealed(t testing.TB, s *session, typ byte, payload []byte) []byte {
	buf := make([]byte, HeaderLen+len(payload)+TagLen)
	copy(buf[HeaderLen:], payload)
	d, ok := s.seal(typ, buf, len(payload))
	if !ok {
		t.Fatal("seal refused")
	}
	return d
}

// FuzzOpenDatagram feeds arbitrary datagrams to the receive side of a
// session: nothing may panic, and only what the peer sealed may open.
func FuzzOpenDatagram(f *testing.F) {
	a, _ := sessionPair(f, SuiteAES256GCM)
	f.Add(sealed(f, a, typeData, ipv4("10.128.0.1", "10.128.0.2", "x")))
	f.Add(sealed(f, a, typeDataPartial, ipv4("10.128.0.1", "10.128.0.2", "x")))
	f.Add(sealed(f, a, typePing, make([]byte, pingLen)))
	f.Add([]byte{wireVersion, typeData, 0, 0, 0, 0, 0, 9})
	f.Add(make([]byte, HeaderLen+TagLen))
	f.Fuzz(func(t *testing.T, dgram []byte) {
		a, b := sessionPair(t, SuiteAES256GCM)
		h, err := parseHeader(dgram)
		if err != nil {
			return
		}
		pt, err := b.open(h, append([]byte(nil), dgram...))
		if err != nil {
			return
		}
		// What opens must be exactly what the key's holder seals for that
		// header: nothing else authenticates.
		a.sendCounter.Store(h.counter)
		if again := sealed(t, a, h.typ, pt); !bytes.Equal(again, dgram) {
			t.Fatalf("datagram opened but is not the holder's sealing:\n got %x\nwant %x", dgram, again)
		}
	})
}

func FuzzParseHello(f *testing.F) {
	key, _, _ := crypto.GenerateEd25519Key(nil)
	other, _, _ := crypto.GenerateEd25519Key(nil)
	self, _ := peer.IDFromPrivateKey(key)
	them, _ := peer.IDFromPrivateKey(other)
	h := &hello{
		typ:      helloInit,
		suites:   []Suite{SuiteAES256GCM, SuiteChaCha20Poly1305},
		hasAES:   true,
		index:    42,
		dataPort: 4151,
		addrs:    []netip.Addr{netip.MustParseAddr("10.128.0.1")},
	}
	h.sign(key, self, them, nil)
	f.Add(h.marshal())
	resp := *h
	resp.typ, resp.suites = helloResp, []Suite{SuiteChaCha20Poly1305}
	resp.sign(key, them, self, &h.eph)
	f.Add(resp.marshal())
	f.Add([]byte{wireVersion, helloConfirm})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := parseHello(b)
		if err != nil {
			return
		}
		// What parses must encode back to the same bytes: no field is
		// read loosely.
		if got := h.marshal(); !bytes.Equal(got, b) {
			t.Fatalf("round trip changed the message:\n in %x\nout %x", b, got)
		}
		if len(h.suites) == 0 || len(h.suites) > maxSuites || len(h.addrs) > maxHelloAddrs {
			t.Fatalf("parsed out-of-bounds hello: %+v", h)
		}
		// Verifying arbitrary input must not fail in any way but an error.
		var eph [32]byte
		h.verify(them, self, them, &eph)
		h.verify(them, self, them, nil)
	})
}

func FuzzReadMsg(f *testing.F) {
	f.Add([]byte{0, 2, wireVersion, helloConfirm})
	f.Add([]byte{0xff, 0xff})
	f.Add([]byte{0})
	f.Fuzz(func(t *testing.T, b []byte) {
		msg, err := readMsg(bytes.NewReader(b))
		if err == nil && len(msg) > maxHelloLen {
			t.Fatalf("message of %d bytes accepted", len(msg))
		}
	})
}

func TestSealOpenRoundTrip(t *testing.T) {
	for _, suite := range []Suite{SuiteAES256GCM, SuiteChaCha20Poly1305} {
		a, b := sessionPair(t, suite)
		d := sealed(t, a, typeData, []byte("payload"))
		h, err := parseHeader(d)
		if err != nil {
			t.Fatal(err)
		}
		pt, err := b.open(h, append([]byte(nil), d...))
		if err != nil || string(pt) != "payload" {
			t.Fatalf("%v: open = %q, %v", suite, pt, err)
		}
		if _, err := b.open(h, append([]byte(nil), d...)); err != errReplay {
			t.Fatalf("%v: second open = %v, want errReplay", suite, err)
		}
		// The header is authenticated: changing the type breaks the tag.
		d2 := sealed(t, a, typeData, []byte("payload"))
		d2[1] = typePing
		h2, _ := parseHeader(d2)
		if _, err := b.open(h2, d2); err != errAuth {
			t.Fatalf("%v: altered header opened: %v", suite, err)
		}
	}
}

func TestParseHelloRejects(t *testing.T) {
	good := (&hello{typ: helloInit, suites: []Suite{SuiteAES256GCM}, sig: make([]byte, 64)}).marshal()
	if _, err := parseHello(good); err != nil {
		t.Fatalf("good hello refused: %v", err)
	}
	cases := map[string][]byte{
		"empty":          {},
		"bad version":    append([]byte{9}, good[1:]...),
		"confirm type":   append([]byte{wireVersion, helloConfirm}, good[2:]...),
		"unknown flags":  append([]byte{wireVersion, helloInit, 0x80}, good[3:]...),
		"no suites":      append([]byte{wireVersion, helloInit, 0, 0}, good[4:]...),
		"too many addrs": func() []byte { b := bytes.Clone(good); b[4+1+32+4+2] = 200; return b }(),
		"truncated":      good[:len(good)-1],
		"trailing":       append(bytes.Clone(good), 0),
	}
	for name, b := range cases {
		if _, err := parseHello(b); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
}

// FuzzGROSegmentSize parses arbitrary control-message buffers as the
// kernel might hand them over: it must never read out of bounds.
func FuzzGROSegmentSize(f *testing.F) {
	f.Add([]byte{20, 0, 0, 0, 0, 0, 0, 0, 17, 0, 0, 0, 104, 0, 0, 0, 0xa0, 5, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{16, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 17, 0, 0, 0, 104, 0, 0, 0})
	f.Fuzz(func(t *testing.T, oob []byte) {
		if s := groSegmentSize(oob); s < 0 {
			t.Fatalf("negative segment size %d", s)
		}
	})
}

func TestSealAndOpenDoNotAllocate(t *testing.T) {
	a, b := sessionPair(t, SuiteAES256GCM)
	buf := make([]byte, HeaderLen+1400+TagLen)
	work := make([]byte, len(buf))
	allocs := testing.AllocsPerRun(100, func() {
		d, _ := a.seal(typeData, buf, 1400)
		copy(work, d)
		h, _ := parseHeader(work)
		if _, err := b.open(h, work); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("seal and open allocate %.1f times per datagram", allocs)
	}
}

// FuzzVIPMsg decodes arbitrary address record messages: what decodes
// encodes back to the same bytes.
func FuzzVIPMsg(f *testing.F) {
	key, _, _ := crypto.GenerateEd25519Key(nil)
	id, _ := peer.IDFromPrivateKey(key)
	for _, op := range []byte{vipRegister, vipLookup, vipAnswer, vipHandover} {
		m := vipMsg{Op: op, IP: netip.MustParseAddr("10.128.0.7"), Peer: id, TTL: 60}
		b, err := m.MarshalBinary()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var m vipMsg
		if m.UnmarshalBinary(b) != nil {
			return
		}
		again, err := m.MarshalBinary()
		if err != nil {
			t.Fatalf("decoded %+v does not encode: %v", m, err)
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("round trip:\n got %x\nwant %x", again, b)
		}
	})
}

// FuzzPunch decodes arbitrary punch messages: what decodes has at most
// maxCandidates candidates, none unspecified.
func FuzzPunch(f *testing.F) {
	f.Add(marshalPunch(0, []netip.AddrPort{netip.MustParseAddrPort("100.64.3.2:4151"), netip.MustParseAddrPort("192.168.3.10:4151")}))
	f.Add(marshalPunch(punchReply, nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, cands, err := parsePunch(b)
		if err != nil {
			return
		}
		if len(cands) > maxCandidates {
			t.Fatalf("%d candidates", len(cands))
		}
		for _, c := range cands {
			if c.Addr().IsUnspecified() || c.Port() == 0 {
				t.Fatalf("accepted candidate %v", c)
			}
		}
	})
}

// FuzzDialMe decodes arbitrary dial-me messages without panicking, and
// what decodes encodes back the same.
func FuzzDialMe(f *testing.F) {
	key, _, _ := crypto.GenerateEd25519Key(nil)
	id, _ := peer.IDFromPrivateKey(key)
	ans := routing.ConnectToMe{Kind: routing.Near, TTL: 1, Requester: id, Addr: routing.AddrFromPeer(id),
		Target: routing.AddrFromPeer(id), Endpoints: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:4150")}}
	if err := ans.Sign(key); err != nil {
		f.Fatal(err)
	}
	b, err := marshalDialMe(id, &ans)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		to, m, err := parseDialMe(b)
		if err != nil {
			return
		}
		again, err := marshalDialMe(to, m)
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("round trip: %x, %v; want %x", again, err, b)
		}
	})
}

// FuzzSTUN hands arbitrary datagrams that look like STUN to the data
// socket's STUN handling: nothing may panic, and none is answered, since
// none carries credentials this node handed out.
func FuzzSTUN(f *testing.F) {
	n := newTestNode(f, "10.128.0.9", 0)
	req, _ := stun.Build(stun.TransactionID, stun.BindingRequest, stun.NewUsername("abcd"),
		stun.NewShortTermIntegrity("secret"), stun.Fingerprint)
	f.Add(req.Raw)
	resp, _ := stun.Build(stun.TransactionID, stun.BindingSuccess,
		&stun.XORMappedAddress{IP: net.IPv4(192, 0, 2, 1), Port: 4151}, stun.Fingerprint)
	f.Add(resp.Raw)
	from := netip.MustParseAddrPort("192.0.2.7:4151")
	f.Fuzz(func(t *testing.T, b []byte) {
		if !isSTUN(b) {
			return
		}
		before := n.NAT().Answered
		n.handleSTUN(b, from)
		if n.NAT().Answered != before {
			t.Fatal("answered a request without credentials")
		}
	})
}

// FuzzInstanceMsgs parses arbitrary clone-check answers and proofs:
// nothing may panic, and what parses marshals back to the same bytes.
func FuzzInstanceMsgs(f *testing.F) {
	p := instanceProof{instance: [nonceLen]byte{1, 2}, started: time.Unix(1700000000, 5), sig: []byte("sig")}
	f.Add(marshalFound([]otherInstance{{addr: "/ip4/192.0.2.1/tcp/4150", proof: p.marshal()}}))
	f.Add(marshalFound(nil))
	f.Add(p.marshal())
	f.Fuzz(func(t *testing.T, b []byte) {
		if found, err := parseFound(b); err == nil {
			if again := marshalFound(found); !bytes.Equal(again, b) {
				t.Fatalf("found round trip: %x; want %x", again, b)
			}
		}
		if q, err := parseInstanceProof(b); err == nil {
			if again := q.marshal(); !bytes.Equal(again, b) {
				t.Fatalf("proof round trip: %x; want %x", again, b)
			}
		}
	})
}

// FuzzReceive feeds arbitrary datagrams to a node's receive path, over
// UDP and over the stream from a peer it knows: nothing may panic, and
// lost-session notices stay within their rate limit.
func FuzzReceive(f *testing.F) {
	a := newTestNode(f, "10.128.0.1", 0)
	b := newTestNode(f, "10.128.0.2", 0)
	sender := a.peer(b.ID())
	rx := a.cfg.NewReceiver()
	lost := make([]byte, HeaderLen+TagLen)
	header{typ: typeLost, receiver: 7}.put(lost)
	unknown := make([]byte, HeaderLen+40+TagLen)
	header{typ: typeData, receiver: 7}.put(unknown)
	for _, seed := range [][]byte{lost, unknown, {1, 11, 0, 0}, make([]byte, HeaderLen+TagLen)} {
		f.Add(seed, false)
		f.Add(seed, true)
	}
	from := netip.MustParseAddrPort("127.0.0.1:9")
	f.Fuzz(func(t *testing.T, dgram []byte, stream bool) {
		if stream {
			a.receive(rx, nil, dgram, PathStream, netip.AddrPort{}, sender)
		} else {
			a.receive(rx, &lookups{}, dgram, PathUDP, from, nil)
		}
	})
}
