package overlay

import (
	"context"
	"errors"
	"sync"
	"syscall"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/transport"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
)

// A node that died leaves its host up: the kernel refuses a TCP dial to
// its control port at once, but a QUIC dial hears nothing back (QUIC
// takes no notice of ICMP) and waits out the whole dial timeout. DHT
// lookups and lease claims that meet dead nodes during churn spent most
// of their time in such dials. So when TCP to a node was refused a moment
// ago, a QUIC dial to it gets a short timeout: a live node answers a QUIC
// handshake within a round trip, and one behind a firewall that resets
// TCP but lets UDP through is still reached.
const (
	// tcpRefusedFor is how long a refused TCP dial shortens QUIC dials to
	// the same node.
	tcpRefusedFor = 10 * time.Second
	// refusedQUICTimeout is the QUIC dial timeout meanwhile.
	refusedQUICTimeout = time.Second
	// maxRefused bounds the nodes remembered.
	maxRefused = 1024
)

// refusedPeers remembers the nodes whose kernel refused a TCP dial.
type refusedPeers struct {
	mu sync.Mutex
	at map[peer.ID]time.Time
}

func (r *refusedPeers) mark(p peer.ID, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.at == nil || len(r.at) >= maxRefused {
		r.at = make(map[peer.ID]time.Time)
	}
	r.at[p] = now
}

func (r *refusedPeers) forget(p peer.ID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.at, p)
}

func (r *refusedPeers) recently(p peer.ID, now time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	at, ok := r.at[p]
	return ok && now.Sub(at) < tcpRefusedFor
}

// watchedTCP is the TCP transport, noting the nodes that refuse it.
type watchedTCP struct {
	*tcp.TcpTransport
	refused *refusedPeers
}

func (t watchedTCP) Dial(ctx context.Context, raddr ma.Multiaddr, p peer.ID) (transport.CapableConn, error) {
	c, err := t.TcpTransport.Dial(ctx, raddr, p)
	t.note(p, err)
	return c, err
}

func (t watchedTCP) DialWithUpdates(ctx context.Context, raddr ma.Multiaddr, p peer.ID, updates chan<- transport.DialUpdate) (transport.CapableConn, error) {
	c, err := t.TcpTransport.DialWithUpdates(ctx, raddr, p, updates)
	t.note(p, err)
	return c, err
}

func (t watchedTCP) note(p peer.ID, err error) {
	switch {
	case err == nil:
		t.refused.forget(p)
	case errors.Is(err, syscall.ECONNREFUSED):
		t.refused.mark(p, time.Now())
	}
}

// hastyQUIC is the QUIC transport, with a short dial timeout for nodes
// that refused TCP a moment ago.
type hastyQUIC struct {
	transport.Transport
	refused *refusedPeers
}

func (t hastyQUIC) Dial(ctx context.Context, raddr ma.Multiaddr, p peer.ID) (transport.CapableConn, error) {
	if t.refused.recently(p, time.Now()) {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, refusedQUICTimeout)
		defer cancel()
	}
	return t.Transport.Dial(ctx, raddr, p)
}

// ListenOrder passes on the QUIC transport's place among the listeners.
func (t hastyQUIC) ListenOrder() int {
	if o, ok := t.Transport.(interface{ ListenOrder() int }); ok {
		return o.ListenOrder()
	}
	return 0
}
