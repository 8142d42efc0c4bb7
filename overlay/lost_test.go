package overlay

import (
	"net/netip"
	"testing"
	"time"
)

// TestLostNoticesAreRateLimited: however many datagrams name sessions a
// node does not hold, it tells one address at most once per lostEvery,
// and all addresses together at most lostPerSecond times a second.
func TestLostNoticesAreRateLimited(t *testing.T) {
	a := newTestNode(t, "10.128.0.1", 0)
	sink := netip.MustParseAddrPort("127.0.0.1:9") // discard: nothing listens
	for range 100 {
		a.tellLost(42, PathUDP, sink, nil)
	}
	if got := a.lost.told.Load(); got != 1 {
		t.Fatalf("100 unknown datagrams from one address: told it %d times, want 1", got)
	}
	for i := range 1000 {
		from := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(10000+i))
		a.tellLost(42, PathUDP, from, nil)
	}
	// All within a second or two of the first notice: one or two windows.
	if got := a.lost.told.Load(); got > 1+2*lostPerSecond {
		t.Fatalf("1000 addresses told %d times, want at most %d", got, 1+2*lostPerSecond)
	}
}

// TestLostNoticeTakenOnlyFromThePeer: a notice over UDP counts only when
// it names the session we send the peer under and comes from the peer's
// address; then the link handshakes again.
func TestLostNoticeTakenOnlyFromThePeer(t *testing.T) {
	a := newTestNode(t, "10.128.0.1", 0)
	b := newTestNode(t, "10.128.0.2", 0)
	link(t, a, b)
	// Let the handshakes of link set-up settle past minRekeyGap.
	time.Sleep(minRekeyGap)
	pa := a.peer(b.ID())
	s := pa.sendSession.Load()
	ep := *pa.endpoint.Load()
	other := netip.AddrPortFrom(ep.Addr(), ep.Port()+1)

	a.onLost(s.remoteIndex, PathUDP, other, nil)
	a.onLost(s.remoteIndex+1, PathUDP, ep, nil)
	if got := a.lost.heard.Load(); got != 0 {
		t.Fatalf("a notice from another address, or naming another index, was taken (%d)", got)
	}
	a.onLost(s.remoteIndex, PathUDP, ep, nil)
	if got := a.lost.heard.Load(); got != 1 {
		t.Fatalf("the peer's notice was not taken (%d)", got)
	}
	waitFor(t, "a new session", func() bool {
		cur := pa.sendSession.Load()
		return cur != nil && cur != s
	})
}
