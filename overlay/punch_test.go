package overlay

import (
	"crypto/rand"
	"encoding/binary"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"
)

// TestPunchFloodIsBounded: a peer that names other hosts as its
// candidates, and floods punch messages, gets probes sent to them for
// one punch only: at most punchRounds to each of at most maxCandidates
// addresses per punchEvery; the rest are refused and counted.
func TestPunchFloodIsBounded(t *testing.T) {
	a := newTestNode(t, "10.128.0.1", 0)
	b := newTestNode(t, "10.128.0.2", 0)
	// No UDP path between them, as between two NATs before a punch:
	// the punch has something to do.
	linkOverStream(t, a, b)
	pa := a.peer(b.ID())

	// The hosts the lying peer names: listeners that count what reaches
	// them, more of them than a punch may carry.
	var received atomic.Int64
	var cands []netip.AddrPort
	for range maxCandidates + 4 {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		go func() {
			buf := make([]byte, 2048)
			for {
				if _, _, err := c.ReadFromUDP(buf); err != nil {
					return
				}
				received.Add(1)
			}
		}()
		cands = append(cands, c.LocalAddr().(*net.UDPAddr).AddrPort())
	}
	punchOf := func(cands []netip.AddrPort) []byte {
		msg := []byte{0, byte(len(cands))}
		for _, c := range cands {
			msg = append(msg, c.Addr().AsSlice()...)
			msg = binary.BigEndian.AppendUint16(msg, c.Port())
		}
		return msg
	}
	// Too many candidates: the message does not parse.
	if _, _, err := parsePunch(punchOf(cands)); err == nil {
		t.Errorf("a punch with %d candidates parsed", len(cands))
	}
	msg := punchOf(cands[:maxCandidates])
	refused := a.punches.refused.Load()
	const flood = 200
	for range flood {
		pa.onPunch(msg)
	}
	// A punch's rounds take punchRounds×punchGap; wait past them.
	time.Sleep(punchRounds*punchGap + 500*time.Millisecond)
	if got, most := received.Load(), int64(punchRounds*maxCandidates); got == 0 || got > most {
		t.Errorf("the named hosts received %d probes; want 1 to %d", got, most)
	}
	if got := a.punches.refused.Load() - refused; got != flood-1 {
		t.Errorf("%d punches refused, want %d", got, flood-1)
	}
	t.Logf("%d punches naming %d other hosts: %d probes reached them", flood, maxCandidates, received.Load())
}

// TestForgedPongIsIgnored: a probe answer that a third host forges (it
// does not hold the session's keys) is dropped as unauthenticated and
// moves neither the peer's endpoint nor its path.
func TestForgedPongIsIgnored(t *testing.T) {
	a := newTestNode(t, "10.128.0.1", 0)
	b := newTestNode(t, "10.128.0.2", 0)
	link(t, a, b)
	pa := a.peer(b.ID())
	before := *pa.endpoint.Load()
	s := pa.sendSession.Load()

	attacker, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer attacker.Close()
	auth := a.drops.auth.Load()
	for i := range 10 {
		d := make([]byte, HeaderLen+pingLen+TagLen)
		d[0], d[1] = wireVersion, typePong
		binary.BigEndian.PutUint32(d[4:8], s.localIndex)
		binary.BigEndian.PutUint64(d[8:16], uint64(1<<40+i))
		rand.Read(d[HeaderLen:])
		if _, err := attacker.WriteToUDPAddrPort(d, a.DataAddr()); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the forged pongs to be dropped", func() bool { return a.drops.auth.Load()-auth >= 10 })
	if after := *pa.endpoint.Load(); after != before {
		t.Fatalf("a forged pong moved the endpoint from %v to %v", before, after)
	}
	if pathTo(a, b.ID()) != PathUDP {
		t.Fatal("a forged pong changed the path")
	}
}
