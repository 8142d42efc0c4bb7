package overlay

import (
	"context"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ringnet/ringnet/routing"
)

// Shortcuts: two nodes that exchange packets over the ring link directly
// once their traffic passes the policy's threshold (routing.ShortcutPolicy).
// The node counts every packet it sends to or receives from each peer (it
// reads the peers' counters every lookupRetry, so the data path pays
// nothing), and for a peer over the threshold routes a connect-to-me of
// kind Shortcut to the peer's own ring address. Only that node answers:
// it dials back and sends its answer on the new connection, and the
// requester keeps the link as a shortcut. The peer's packets then move
// from the ring to the link's own session (UDP, or its stream) with the
// link's handshake; when the link goes, they fall back to the ring at
// once. A shortcut that carries nothing for the idle timeout is dropped.

// countTraffic feeds the peers' packet counts to the shortcut policy and
// asks for the shortcuts it wants.
func (r *ringManager) countTraffic(ctx context.Context, now time.Time) {
	o := r.o
	o.mu.RLock()
	peers := make([]*Peer, 0, len(o.peers))
	for _, p := range o.peers {
		peers = append(peers, p)
	}
	o.mu.RUnlock()

	type ask struct {
		id   peer.ID
		body []byte
	}
	var asks []ask
	r.mu.Lock()
	for _, p := range peers {
		n := p.txPackets.Load() + p.rxPackets.Load()
		if last, ok := r.counted[p.id]; n != last || !ok {
			r.counted[p.id] = n
			r.shortcuts.Count(p.id, n-last, now)
		}
		if at := p.directAt.Load(); at != 0 {
			if first := p.firstRingTx.Load(); first != 0 && at > first && r.t.Link(p.id) != nil {
				r.counters.timeToDirectMs.Store((at - first) / int64(time.Millisecond))
				p.firstRingTx.Store(0)
			}
		}
	}
	for _, id := range r.shortcuts.Want(now) {
		target := routing.AddrFromPeer(id)
		if _, pending := r.pending[target]; pending {
			continue
		}
		if r.t.Link(id) != nil {
			continue // a ring link carries the traffic already
		}
		body, err := r.connectToMe(routing.Shortcut, target)
		if err != nil {
			continue
		}
		r.pending[target] = request{kind: routing.Shortcut, sent: now, peer: id}
		asks = append(asks, ask{id, body})
	}
	if r.rounds%sweepEvery == 0 {
		r.shortcuts.Forget(now)
		for id := range r.counted {
			if r.shortcuts.Score(id, now) == 0 && !r.hasPeer(peers, id) {
				delete(r.counted, id)
			}
		}
	}
	r.mu.Unlock()

	for _, a := range asks {
		r.counters.connectSent.Add(1)
		r.o.log.Debug("asking for a shortcut", "peer", a.id)
		if err := r.o.sendControl(typeConnect, routing.AddrFromPeer(a.id), a.body); err != nil {
			r.mu.Lock()
			delete(r.pending, routing.AddrFromPeer(a.id))
			r.mu.Unlock()
		}
	}
}

func (r *ringManager) hasPeer(peers []*Peer, id peer.ID) bool {
	for _, p := range peers {
		if p.id == id {
			return true
		}
	}
	return false
}
