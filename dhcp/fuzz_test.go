package dhcp

import (
	"bytes"
	"encoding/binary"
	"hash/fnv"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// fuzzConfig leases by a hash of the client ID: some clients get no
// address, some one outside the subnet, the rest one inside it.
func fuzzConfig() Config {
	cfg := testConfig()
	cfg.Lease = func(c ClientID) (netip.Addr, bool) {
		h := fnv.New32a()
		h.Write([]byte(c))
		v := h.Sum32()
		switch v % 4 {
		case 0:
			return netip.Addr{}, false
		case 1:
			return netip.AddrFrom4([4]byte{192, 168, byte(v >> 8), byte(v >> 16)}), true
		}
		return netip.AddrFrom4([4]byte{10, 128, byte(v >> 8), byte(v>>16) | 1}), true
	}
	cfg.Released = func(ClientID, netip.Addr, bool) {}
	return cfg
}

// seedMessages are one of each message a client sends.
func seedMessages() []*dhcpv4.DHCPv4 {
	return []*dhcpv4.DHCPv4{
		msg(dhcpv4.MessageTypeDiscover),
		msg(dhcpv4.MessageTypeDiscover, withClientID, dhcpv4.WithBroadcast(true)),
		msg(dhcpv4.MessageTypeRequest, withServerID(serverIP), withRequested(vmMACAddr)),
		msg(dhcpv4.MessageTypeRequest, withClientID, withRequested(vmIDAddr)),
		msg(dhcpv4.MessageTypeRequest, withCiaddr(vmMACAddr)),
		msg(dhcpv4.MessageTypeRelease, withServerID(serverIP), withCiaddr(vmMACAddr)),
		msg(dhcpv4.MessageTypeDecline, withServerID(serverIP), withRequested(vmMACAddr)),
		msg(dhcpv4.MessageTypeInform, withCiaddr(vmMACAddr)),
	}
}

// checkHandled checks the contract of HandleFrame for one frame.
func checkHandled(t *testing.T, s *Server, frame []byte) {
	orig := bytes.Clone(frame)
	out := make([]byte, MaxFrameLen)
	r, handled := s.HandleFrame(frame, out)
	if !bytes.Equal(frame, orig) {
		t.Fatal("frame changed")
	}
	if !handled && r != nil {
		t.Fatal("a reply to a frame not handled")
	}
	if r == nil {
		return
	}
	if len(r) > 0 && &r[0] != &out[0] {
		t.Fatal("reply not built in out")
	}
	if _, err := parseReply(r, serverMAC, serverIP); err != nil {
		t.Fatalf("bad reply to %x: %v", frame, err)
	}
}

// FuzzHandleFrame feeds arbitrary frames to the server: it must not
// panic, must leave frames it does not handle alone, and every reply must
// be a well-formed IPv4 UDP frame of at most MaxFrameLen bytes.
func FuzzHandleFrame(f *testing.F) {
	for _, m := range seedMessages() {
		f.Add(clientFrame(m).bytes())
		f.Add(clientFrame(m).unicast().bytes())
	}
	f.Add([]byte{})
	s := newTestServer(f, fuzzConfig())
	f.Fuzz(func(t *testing.T, frame []byte) {
		checkHandled(t, s, frame)
	})
}

// FuzzHandleMessage wraps arbitrary DHCP messages in valid frames, so the
// fuzzer spends its time on the DHCP parsing and the answers rather than
// on getting checksums right.
func FuzzHandleMessage(f *testing.F) {
	for _, m := range seedMessages() {
		f.Add(m.ToBytes(), false)
		f.Add(m.ToBytes(), true)
	}
	s := newTestServer(f, fuzzConfig())
	f.Fuzz(func(t *testing.T, payload []byte, unicast bool) {
		if len(payload) > MaxFrameLen-ethHeaderLen-ipv4MinHeaderLen-udpHeaderLen {
			return
		}
		fr := clientFrame(msg(dhcpv4.MessageTypeDiscover))
		fr.payload = payload
		if unicast {
			fr = fr.unicast()
		}
		checkHandled(t, s, fr.bytes())
	})
}

// FuzzParseLease feeds arbitrary bytes to the lease parser and the
// validator: they must not panic, and a record ParseLease takes must be
// the one encoding of what it parsed to, so a signature cannot cover two
// readings of the same bytes.
func FuzzParseLease(f *testing.F) {
	k1, k2 := testKey(f, 1), testKey(f, 2)
	good := signed(f, k1, "10.0.0.5", t0, t0.Add(time.Hour))
	f.Add(good)
	f.Add(signed(f, k2, "10.0.0.62", t0.Add(-time.Hour), t0.Add(time.Minute)))
	f.Add(signed(f, k1, "10.0.0.0", t0, t0.Add(time.Hour)))
	r := goodRaw(f, k1)
	r.ns = strings.Repeat("z", maxNamespaceLen)
	f.Add(r.bytes(f))
	f.Add(good[:len(good)-1])
	f.Add(good[:2+len(testNS)+4])
	f.Add([]byte{leaseVersion})
	f.Add([]byte{})

	v := testValidator(t0)
	f.Fuzz(func(t *testing.T, b []byte) {
		l, err := ParseLease(b)
		// Any key: a record parsed or not goes through the rules.
		_ = v.Validate(LeaseKey(testNS, netip.MustParseAddr("10.0.0.5")), b)
		_, _ = v.Select(l.Key(), [][]byte{b, good})
		_ = v.Admit(b, good)
		_ = v.Admit(good, b)
		if err != nil {
			if l.IP.IsValid() || l.Holder != "" {
				t.Fatalf("an error and a lease: %v, %v", l, err)
			}
			return
		}
		if ValidateNamespace(l.Namespace) != nil || !l.IP.Is4() {
			t.Fatalf("parsed %v", l)
		}
		body, err := appendLeaseBody(nil, l)
		if err != nil {
			t.Fatalf("parsed %v, which does not encode: %v", l, err)
		}
		body = binary.BigEndian.AppendUint16(body, uint16(len(l.Signature)))
		if re := append(body, l.Signature...); !bytes.Equal(re, b) {
			t.Fatalf("%x parsed to %v, which encodes to %x", b, l, re)
		}
	})
}
