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
	peers := r.o.peerList()

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
			if n < last {
				last = 0 // a new peer with the same ID counts from zero
			}
			r.shortcuts.Count(p.id, n-last, now)
		}
		if at := p.directAt.Load(); at != 0 {
			if first := p.firstRingTx.Load(); first != 0 && at > first && (r.t.Link(p.id) != nil || p.punched()) {
				r.counters.timeToDirectMs.Store((at - first) / int64(time.Millisecond))
				r.counters.timeToDirectSamples.Add(1)
				p.firstRingTx.Store(0)
			}
		}
	}
	byID := make(map[peer.ID]*Peer, len(peers))
	for _, p := range peers {
		byID[p.id] = p
	}
	// A pending shortcut whose peer answered probes on a punched path is
	// formed: the packets go over UDP, under the ring session's keys.
	for target, q := range r.pending {
		if p := byID[q.peer]; q.kind == routing.Shortcut && p != nil && p.punched() {
			delete(r.pending, target)
			r.shortcuts.Linked(q.peer, now)
			r.counters.shortcutsPunched.Add(1)
			r.counters.shortcutsFormed.Add(1)
			r.o.log.Info("shortcut punched", "peer", q.peer, "endpoint", p.endpoint.Load())
		}
	}
	natted := false
	switch r.o.NAT().Mapping {
	case MappingIndependent, MappingDependent:
		natted = true
	}
	var punch []*Peer
	for _, id := range r.shortcuts.Want(now) {
		target := routing.AddrFromPeer(id)
		key := pendingKey{target, routing.Shortcut}
		if _, pending := r.pending[key]; pending {
			continue
		}
		if p := byID[id]; p != nil && natted && p.currentViaRing() {
			// Behind a NAT: the peer may not be able to dial back, so
			// punch a UDP path as well.
			punch = append(punch, p)
		}
		if r.t.Link(id) != nil {
			continue // a ring link carries the traffic already
		}
		body, public, err := r.connectToMe(routing.Shortcut, target)
		if err != nil {
			continue
		}
		r.pending[key] = request{kind: routing.Shortcut, sent: now, peer: id, public: public}
		asks = append(asks, ask{id, body})
	}
	if r.rounds%sweepEvery == 0 {
		r.shortcuts.Forget(now)
		for id := range r.counted {
			if byID[id] == nil {
				delete(r.counted, id) // the peer is gone
			}
		}
	}
	r.mu.Unlock()

	for _, p := range punch {
		p.startPunch(0)
	}
	for _, a := range asks {
		r.counters.connectSent.Add(1)
		r.o.log.Debug("asking for a shortcut", "peer", a.id)
		if err := r.o.sendControl(typeConnect, routing.AddrFromPeer(a.id), a.body); err != nil {
			r.mu.Lock()
			delete(r.pending, pendingKey{routing.AddrFromPeer(a.id), routing.Shortcut})
			r.mu.Unlock()
		}
	}
}
