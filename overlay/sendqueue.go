package overlay

import (
	"fmt"
	"net/netip"
)

// SendQueue gathers sealed datagrams on their way to many peers and sends
// them with one sendmmsg: the send side of batching, for packets that come
// from the VM one frame at a time. One goroutine owns a SendQueue.
type SendQueue struct {
	o *Overlay
	m *mmsgs
	n int
	// peers of the queued datagrams, to count failures against.
	peers []*Peer
}

// NewSendQueue returns a queue that sends after size datagrams, or at
// Flush.
func (o *Overlay) NewSendQueue(size int) *SendQueue {
	return &SendQueue{o: o, m: newMmsgs(size, 0), peers: make([]*Peer, size)}
}

// Send seals the IPv4 packet at buf[HeaderLen:HeaderLen+n] for the node
// that holds dst and queues it. buf (with TagLen bytes of capacity past
// the packet) must stay untouched until the next Flush. Packets for a peer
// on the stream fallback go out at once.
func (q *SendQueue) Send(dst netip.Addr, buf []byte, n int) error {
	o := q.o
	p, err := o.route(dst, 1)
	if err != nil {
		return err
	}
	if Path(p.path.Load()) != PathUDP {
		return p.send(typeData, buf, n)
	}
	s := p.sendSession.Load()
	ep := p.endpoint.Load()
	if s == nil || ep == nil {
		p.drops.Add(1)
		o.drops.noSession.Add(1)
		return ErrNoSession
	}
	dgram, ok := s.seal(typeData, buf, n)
	if !ok {
		p.requestRekey("session spent")
		o.drops.noSession.Add(1)
		return ErrNoSession
	}
	if s.sendCounter.Load() == RekeyAfterMessages {
		p.requestRekey("message limit")
	}
	p.txPackets.Add(1)
	p.txBytes.Add(uint64(n))
	q.m.set(q.n, dgram, *ep)
	q.peers[q.n] = p
	q.n++
	if q.n == len(q.peers) {
		return q.Flush()
	}
	return nil
}

// Flush sends what is queued.
func (q *SendQueue) Flush() error {
	if q.n == 0 {
		return nil
	}
	n := q.n
	q.n = 0
	if err := q.o.udp.sendmmsg(q.m, n); err != nil {
		for _, p := range q.peers[:n] {
			p.drops.Add(1)
		}
		q.o.drops.sendFailed.Add(uint64(n))
		return fmt.Errorf("send batch of %d: %w", n, err)
	}
	q.o.udp.mmsgBatches.Add(1)
	return nil
}
