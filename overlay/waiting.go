package overlay

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Packets that cannot go yet wait a little rather than be lost: those for
// an address whose holder is being looked up, and those for a peer whose
// session is still being set up. Without this, a VM's first packet to a
// peer it has not spoken to since either started (a TCP SYN, a ping) was
// dropped, and cost the VM a retransmission a second or more later; the
// kernel keeps packets for a neighbour it is still resolving the same way.
// The queues are small, bounded in all, and short-lived.
const (
	// waitPackets and waitBytes bound one address's or peer's queue.
	waitPackets = 8
	waitBytes   = 64 << 10
	// waitTotal bounds the bytes waiting in all queues of a node.
	waitTotal = 1 << 20
	// maxWaitAddrs bounds the addresses with packets waiting at once.
	maxWaitAddrs = 64
	// maxWait is how long a packet may wait: one older is dropped rather
	// than sent late (the VM has retransmitted it by then).
	maxWait = 3 * time.Second
)

type waitingPacket struct {
	at  time.Time
	buf []byte // HeaderLen bytes of room, the packet, TagLen bytes of room
	n   int
}

// waitQueue is one address's or peer's waiting packets.
type waitQueue struct {
	pkts []waitingPacket
	size int
}

// waiting holds a node's queues of packets for addresses being looked up,
// and counts what became of the packets of all queues.
type waiting struct {
	mu     sync.Mutex
	byAddr map[netip.Addr]*waitQueue

	bytes                   atomic.Int64 // in all queues, the peers' too
	queued, sent, discarded atomic.Uint64
}

func (w *waiting) counters(m map[string]uint64) {
	m["waiting_queued"] = w.queued.Load()
	m["waiting_sent"] = w.sent.Load()
	m["waiting_dropped"] = w.discarded.Load()
}

// add copies the packet at buf[HeaderLen:HeaderLen+n] into q; it reports
// false, and counts the packet dropped, when q or the node's queues are
// full.
func (w *waiting) add(q *waitQueue, buf []byte, n int, now time.Time) bool {
	if len(q.pkts) >= waitPackets || q.size+n > waitBytes {
		w.discarded.Add(1)
		return false
	}
	if w.bytes.Add(int64(n)) > waitTotal {
		w.bytes.Add(-int64(n))
		w.discarded.Add(1)
		return false
	}
	b := make([]byte, HeaderLen+n+TagLen)
	copy(b[HeaderLen:], buf[HeaderLen:HeaderLen+n])
	q.pkts = append(q.pkts, waitingPacket{at: now, buf: b, n: n})
	q.size += n
	w.queued.Add(1)
	return true
}

// take empties q and returns its packets young enough to send, counting
// the rest dropped.
func (w *waiting) take(q *waitQueue, now time.Time) []waitingPacket {
	pkts := q.pkts
	w.bytes.Add(-int64(q.size))
	q.pkts, q.size = nil, 0
	fresh := pkts[:0]
	for _, pkt := range pkts {
		if now.Sub(pkt.at) <= maxWait {
			fresh = append(fresh, pkt)
		} else {
			w.discarded.Add(1)
		}
	}
	return fresh
}

// waitForAddr keeps a copy of a packet for dst, whose holder is being
// looked up; it reports whether it did.
func (o *Overlay) waitForAddr(dst netip.Addr, buf []byte, n int) bool {
	w := &o.waiting
	w.mu.Lock()
	defer w.mu.Unlock()
	q := w.byAddr[dst]
	if q == nil {
		if len(w.byAddr) >= maxWaitAddrs {
			w.discarded.Add(1)
			return false
		}
		if w.byAddr == nil {
			w.byAddr = make(map[netip.Addr]*waitQueue)
		}
		q = &waitQueue{}
		w.byAddr[dst] = q
	}
	return w.add(q, buf, n, time.Now())
}

// releaseAddr hands the packets waiting for ip to p, its holder now; with
// p nil (no one holds ip, or the lookup failed) it drops them.
func (o *Overlay) releaseAddr(ip netip.Addr, p *Peer) {
	w := &o.waiting
	w.mu.Lock()
	q := w.byAddr[ip]
	delete(w.byAddr, ip)
	var pkts []waitingPacket
	if q != nil {
		pkts = w.take(q, time.Now())
	}
	w.mu.Unlock()
	if p == nil {
		w.discarded.Add(uint64(len(pkts)))
		return
	}
	for _, pkt := range pkts {
		if p.send(typeData, pkt.buf, pkt.n) == nil {
			w.sent.Add(1)
		}
	}
}

// waitForSession keeps a copy of a packet for p until a session to it is
// up; it reports whether it did.
func (p *Peer) waitForSession(buf []byte, n int) bool {
	p.waitMu.Lock()
	defer p.waitMu.Unlock()
	return p.o.waiting.add(&p.waiting, buf, n, time.Now())
}

// dropWaiting drops the packets that wait for p's session (p is going).
func (p *Peer) dropWaiting() {
	w := &p.o.waiting
	p.waitMu.Lock()
	pkts := w.take(&p.waiting, time.Now())
	p.waitMu.Unlock()
	w.discarded.Add(uint64(len(pkts)))
}

// flushWaiting sends the packets that waited for a session; the path is
// up now.
func (p *Peer) flushWaiting() {
	w := &p.o.waiting
	p.waitMu.Lock()
	pkts := w.take(&p.waiting, time.Now())
	p.waitMu.Unlock()
	for _, pkt := range pkts {
		if p.send(typeData, pkt.buf, pkt.n) == nil {
			w.sent.Add(1)
		}
	}
}
