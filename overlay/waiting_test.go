package overlay

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// TestFirstPacketWaitsForLookupAndSession: a's first packet to c's
// address, with neither the holder known nor a session up, waits for the
// lookup and then for the session over the ring, and arrives; a packet
// to an address no one holds is dropped once the lookup says so.
func TestFirstPacketWaitsForLookupAndSession(t *testing.T) {
	var ids sync.Map // address -> holder, as the lease records say
	resolve := func(c *Config) {
		c.VirtualSubnets = []netip.Prefix{netip.MustParsePrefix("10.128.0.0/16")}
		c.Resolve = func(_ context.Context, _ *DHT, ip netip.Addr) (peer.ID, error) {
			time.Sleep(100 * time.Millisecond) // a lookup takes a while
			if id, ok := ids.Load(ip); ok {
				return id.(peer.ID), nil
			}
			return "", ErrNotHeld
		}
	}
	a, _, c := chain(t, resolve)
	ids.Store(netip.MustParseAddr("10.128.0.1"), a.ID())
	ids.Store(netip.MustParseAddr("10.128.0.3"), c.ID())

	pkt := ipv4("10.128.0.1", "10.128.0.3", "the first packet")
	sendPacket(t, a, pkt) // neither bound nor with a session: it waits
	expectPacket(t, c, pkt)
	if peerStatus(a, c.ID()).Path != PathRing {
		t.Errorf("a reaches c over %v, want the ring", peerStatus(a, c.ID()).Path)
	}
	m := a.AddrCounters()
	if m["waiting_queued"] != 2 || m["waiting_sent"] != 2 || m["waiting_dropped"] != 0 {
		t.Errorf("waiting counters %d queued, %d sent, %d dropped; want the packet queued for the lookup, then for the session",
			m["waiting_queued"], m["waiting_sent"], m["waiting_dropped"])
	}

	for range waitPackets + 2 {
		trySend(a, ipv4("10.128.0.1", "10.128.0.99", "to no one"))
	}
	waitFor(t, "the packets for no one dropped", func() bool {
		return a.AddrCounters()["waiting_dropped"] == waitPackets+2
	})
	if got := a.waiting.bytes.Load(); got != 0 {
		t.Errorf("%d bytes still counted as waiting", got)
	}
}
