package overlay

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// Ring admission: in a closed ring, a node links, forwards and stores
// records only for peers that show a proof (a certificate chain) that
// Config.Admission accepts. Each side of a new connection sends its proof
// over admitProtocol and checks the other's; until a peer's proof checks,
// its streams wait (admitWait), then are refused; a peer whose proof fails
// is disconnected and not let back in for refusedFor. Proofs are checked
// again every admitRecheck, so an expired or revoked one stops working.
const (
	admitProtocol protocol.ID = "/ringnet/admit/1.0.0"
	maxProofLen               = 8 << 10
	admitWait                 = 3 * time.Second
	admitTimeout              = 5 * time.Second
	refusedFor                = 30 * time.Second
	admitRecheck              = 10 * time.Second
)

// AdmissionConfig closes the ring to peers without a proof.
type AdmissionConfig struct {
	// Proof is this node's, as the peers' Verify takes it.
	Proof []byte
	// Verify checks a peer's proof and returns when it stops being
	// valid.
	Verify func(id peer.ID, proof []byte, now time.Time) (until time.Time, err error)
}

type admission struct {
	mu       sync.Mutex
	admitted map[peer.ID]admitted
	refused  map[peer.ID]time.Time // not let in again until then
	waiting  map[peer.ID]chan struct{}

	accepted atomic.Uint64
	refusals atomic.Uint64
	gated    atomic.Uint64 // streams or requests refused
}

type admitted struct {
	until time.Time
	proof []byte
}

func (a *admission) init() {
	a.admitted = make(map[peer.ID]admitted)
	a.refused = make(map[peer.ID]time.Time)
	a.waiting = make(map[peer.ID]chan struct{})
}

func (a *admission) counters(m map[string]uint64) {
	m["admit_accepted"] = a.accepted.Load()
	m["admit_refused"] = a.refusals.Load()
	m["admit_gated"] = a.gated.Load()
}

// startAdmission wires the exchange into the host: a handler, and an
// exchange on every new connection.
func (o *Overlay) startAdmission() {
	o.host.SetStreamHandler(admitProtocol, o.handleAdmit)
	o.host.Network().Notify(&network.NotifyBundle{
		ConnectedF: func(_ network.Network, c network.Conn) {
			id := c.RemotePeer()
			if o.isAdmitted(id, time.Now()) {
				return
			}
			o.spawn(func() {
				o.exchangeProofs(id)
			})
		},
	})
	o.spawn(func() {
		t := time.NewTicker(admitRecheck)
		defer t.Stop()
		for {
			select {
			case <-o.ctx.Done():
				return
			case <-t.C:
				o.recheckAdmissions()
			}
		}
	})
}

// isAdmitted reports whether id's proof checked and is still valid. In
// an open ring, every peer is.
func (o *Overlay) isAdmitted(id peer.ID, now time.Time) bool {
	if o.cfg.Admission == nil {
		return true
	}
	a := &o.admit
	a.mu.Lock()
	defer a.mu.Unlock()
	ad, ok := a.admitted[id]
	return ok && now.Before(ad.until)
}

// waitAdmitted waits up to admitWait for id's proof to check.
func (o *Overlay) waitAdmitted(id peer.ID) bool {
	if o.cfg.Admission == nil {
		return true
	}
	deadline := time.Now().Add(admitWait)
	for {
		if o.isAdmitted(id, time.Now()) {
			return true
		}
		a := &o.admit
		a.mu.Lock()
		if until, ok := a.refused[id]; ok && time.Now().Before(until) {
			a.mu.Unlock()
			return false
		}
		ch, ok := a.waiting[id]
		if !ok {
			ch = make(chan struct{})
			a.waiting[id] = ch
		}
		a.mu.Unlock()
		left := time.Until(deadline)
		if left <= 0 {
			return false
		}
		select {
		case <-ch:
		case <-time.After(left):
		case <-o.ctx.Done():
			return false
		}
	}
}

// gated wraps a stream handler: streams from peers not admitted are
// refused.
func (o *Overlay) gated(h network.StreamHandler) network.StreamHandler {
	if o.cfg.Admission == nil {
		return h
	}
	return func(st network.Stream) {
		if !o.waitAdmitted(st.Conn().RemotePeer()) {
			o.admit.gated.Add(1)
			st.Reset()
			return
		}
		h(st)
	}
}

// refusedPeer reports whether connections from id are refused for now.
func (o *Overlay) refusedPeer(id peer.ID) bool {
	if o.cfg.Admission == nil {
		return false
	}
	a := &o.admit
	a.mu.Lock()
	defer a.mu.Unlock()
	until, ok := a.refused[id]
	if ok && time.Now().After(until) {
		delete(a.refused, id)
		return false
	}
	return ok
}

// exchangeProofs opens the admission stream to id: we send our proof,
// read and check theirs.
func (o *Overlay) exchangeProofs(id peer.ID) {
	ctx, cancel := context.WithTimeout(o.ctx, admitTimeout)
	defer cancel()
	st, err := o.host.NewStream(network.WithNoDial(ctx, "admission"), id, admitProtocol)
	if err != nil {
		o.log.Debug("admission stream", "peer", id, "err", err)
		return
	}
	defer st.Close()
	st.SetDeadline(time.Now().Add(admitTimeout))
	if err := writeProof(st, o.cfg.Admission.Proof); err != nil {
		st.Reset()
		return
	}
	proof, err := readProof(st)
	if err != nil {
		st.Reset()
		o.refuse(id, fmt.Errorf("reading its proof: %w", err))
		return
	}
	o.checkProof(id, proof)
}

func (o *Overlay) handleAdmit(st network.Stream) {
	defer st.Close()
	id := st.Conn().RemotePeer()
	st.SetDeadline(time.Now().Add(admitTimeout))
	proof, err := readProof(st)
	if err != nil {
		st.Reset()
		o.refuse(id, fmt.Errorf("reading its proof: %w", err))
		return
	}
	if err := writeProof(st, o.cfg.Admission.Proof); err != nil {
		st.Reset()
		return
	}
	o.checkProof(id, proof)
}

func (o *Overlay) checkProof(id peer.ID, proof []byte) {
	until, err := o.cfg.Admission.Verify(id, proof, time.Now())
	if err != nil {
		o.refuse(id, err)
		return
	}
	a := &o.admit
	a.mu.Lock()
	first := a.admitted[id].until.IsZero()
	a.admitted[id] = admitted{until: until, proof: proof}
	delete(a.refused, id)
	ch := a.waiting[id]
	delete(a.waiting, id)
	a.mu.Unlock()
	if ch != nil {
		close(ch)
	}
	if first {
		a.accepted.Add(1)
		if o.dht != nil {
			o.spawn(func() {
				o.dht.peerAdmitted(o.ctx, id)
			})
		}
	}
}

// refuse disconnects id and keeps it out for refusedFor.
func (o *Overlay) refuse(id peer.ID, why error) {
	a := &o.admit
	a.mu.Lock()
	delete(a.admitted, id)
	a.refused[id] = time.Now().Add(refusedFor)
	ch := a.waiting[id]
	delete(a.waiting, id)
	a.mu.Unlock()
	if ch != nil {
		close(ch)
	}
	a.refusals.Add(1)
	o.log.Warn("peer refused: no valid ring admission", "peer", id, "err", why)
	o.host.Network().ClosePeer(id)
	// Its sessions go too: a session outlives the connection it was
	// made on.
	o.mu.RLock()
	p := o.peers[id]
	o.mu.RUnlock()
	if p != nil {
		o.removePeer(p)
	}
}

// recheckAdmissions checks every admitted peer's proof again: it may have
// expired, or been revoked.
func (o *Overlay) recheckAdmissions() {
	a := &o.admit
	a.mu.Lock()
	all := make(map[peer.ID][]byte, len(a.admitted))
	for id, ad := range a.admitted {
		all[id] = ad.proof
	}
	a.mu.Unlock()
	now := time.Now()
	for id, proof := range all {
		until, err := o.cfg.Admission.Verify(id, proof, now)
		if err != nil {
			o.refuse(id, err)
			continue
		}
		a.mu.Lock()
		if ad, ok := a.admitted[id]; ok {
			ad.until = until
			a.admitted[id] = ad
		}
		a.mu.Unlock()
	}
}

func writeProof(w io.Writer, proof []byte) error {
	b := binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(proof)), uint16(len(proof)))
	_, err := w.Write(append(b, proof...))
	return err
}

var errProofLen = errors.New("proof too long")

func readProof(r io.Reader) ([]byte, error) {
	var n [2]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return nil, err
	}
	l := int(binary.BigEndian.Uint16(n[:]))
	if l > maxProofLen {
		return nil, errProofLen
	}
	b := make([]byte, l)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, err
	}
	return b, nil
}
