package overlay

import (
	"context"
	"fmt"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/transport"
	ma "github.com/multiformats/go-multiaddr"
)

// deadlineTransport records the deadline of the context each dial got.
type deadlineTransport struct {
	transport.Transport
	deadline time.Time
	has      bool
}

func (d *deadlineTransport) Dial(ctx context.Context, _ ma.Multiaddr, _ peer.ID) (transport.CapableConn, error) {
	d.deadline, d.has = ctx.Deadline()
	return nil, fmt.Errorf("not dialled")
}

// TestQUICDialHastyAfterTCPRefused: a refused TCP dial gives QUIC dials to
// the same node, and only to it, a short deadline, for a while.
func TestQUICDialHastyAfterTCPRefused(t *testing.T) {
	refused := new(refusedPeers)
	inner := new(deadlineTransport)
	q := hastyQUIC{inner, refused}
	tcp := watchedTCP{refused: refused}
	dead, live := peer.ID("dead"), peer.ID("live")
	refusal := &net.OpError{Op: "dial", Net: "tcp", Err: fmt.Errorf("connect: %w", syscall.ECONNREFUSED)}
	tcp.note(dead, fmt.Errorf("dial tcp: %w", refusal))
	tcp.note(live, fmt.Errorf("dial tcp: %w", context.DeadlineExceeded))

	q.Dial(context.Background(), nil, live)
	if inner.has {
		t.Errorf("a node that did not refuse TCP got a QUIC deadline")
	}
	q.Dial(context.Background(), nil, dead)
	if left := time.Until(inner.deadline); !inner.has || left > refusedQUICTimeout {
		t.Errorf("a node that refused TCP: QUIC deadline set %v, %v away; want at most %v", inner.has, left, refusedQUICTimeout)
	}
	if refused.recently(dead, time.Now().Add(tcpRefusedFor)) {
		t.Error("the refusal still counts after tcpRefusedFor")
	}
	tcp.note(dead, nil) // it came back
	if refused.recently(dead, time.Now()) {
		t.Error("a node TCP reached again still counts as refusing")
	}
}

// TestDialToDeadNodeEndsSoon: a node whose TCP port refuses and whose
// QUIC port is silent (a node that died on a host that is up) is given
// up on well before the dial timeout.
func TestDialToDeadNodeEndsSoon(t *testing.T) {
	a := newTestNode(t, "10.128.0.1", 0)
	tcpL, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tcpPort := tcpL.Addr().(*net.TCPAddr).Port
	tcpL.Close() // refuses from now on
	silent, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	key, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	info := peer.AddrInfo{ID: id, Addrs: []ma.Multiaddr{
		ma.StringCast(fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", tcpPort)),
		ma.StringCast(fmt.Sprintf("/ip4/127.0.0.1/udp/%d/quic-v1", silent.LocalAddr().(*net.UDPAddr).Port)),
	}}
	start := time.Now()
	if err := a.Host().Connect(context.Background(), info); err == nil {
		t.Fatal("connected to a dead node")
	}
	// The dial timeout is 5 s; the QUIC dial gets refusedQUICTimeout.
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("gave up on the dead node after %v, want about %v", took.Round(time.Millisecond), refusedQUICTimeout)
	}
}
