package overlay

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/ringnet/ringnet/routing"
)

// Dial-me: a node answering a connect-to-me dials the requester; when a
// NAT stops that dial, it routes its answer to the requester instead (a
// dial-me), and the requester, which can dial out, dials the answerer. A
// requester that is not yet in the ring cannot be reached by routing: it
// names its bootstrap node as the relay in its request, the dial-me goes
// to the relay, and the relay passes it on over its leaf link.
//
// A dial-me carries the requester's peer ID and the answer (a
// routing.ConnectToMe from the answerer):
//
//	id-len id answer
//
// The requester dials only for requests it made, at most
// maxAnswerDials at once, so a forged dial-me cannot make it dial at
// will.

var errDialMe = errors.New("malformed dial-me")

// maxDialFailed bounds the answerers a node remembers it could not reach:
// a join asks past each of them.
const maxDialFailed = 8

func marshalDialMe(to peer.ID, ans *routing.ConnectToMe) ([]byte, error) {
	b, err := ans.MarshalBinary()
	if err != nil {
		return nil, err
	}
	if len(to) == 0 || len(to) > 64 {
		return nil, errDialMe
	}
	return append(append([]byte{byte(len(to))}, to...), b...), nil
}

func parseDialMe(b []byte) (peer.ID, *routing.ConnectToMe, error) {
	if len(b) < 1 {
		return "", nil, errDialMe
	}
	// An int: 1+b[0] as a byte wraps to 0 for 255.
	n := int(b[0])
	if n == 0 || len(b) < 1+n {
		return "", nil, errDialMe
	}
	to, err := peer.IDFromBytes(b[1 : 1+n])
	if err != nil {
		return "", nil, fmt.Errorf("%w: %v", errDialMe, err)
	}
	var m routing.ConnectToMe
	if err := m.UnmarshalBinary(b[1+n:]); err != nil {
		return "", nil, err
	}
	return to, &m, nil
}

// dialMe routes an answer to a requester this node could not dial.
func (r *ringManager) dialMe(req, ans *routing.ConnectToMe, dialErr error) error {
	body, err := marshalDialMe(req.Requester, ans)
	if err != nil {
		return err
	}
	dst := req.Addr
	if req.Relay.Peer != "" {
		dst = req.Relay.Addr
	}
	r.counters.dialMeSent.Add(1)
	if err := r.o.sendControl(typeDialMe, dst, body); err != nil {
		return fmt.Errorf("dial failed (%v), and so did the dial-me: %w", dialErr, err)
	}
	return nil
}

// onDialMe handles a dial-me: for this node, it dials the answerer; for a
// leaf link of this node, it passes it on.
func (r *ringManager) onDialMe(rh routing.Header, body []byte) {
	to, m, err := parseDialMe(body)
	if err != nil {
		r.drops.Count(err)
		return
	}
	// The route's source is the answerer, or a relay that passed the
	// message on: it proves nothing, and the dial to the answerer proves
	// who it is.
	self := r.t.Self()
	if to != self.Peer {
		// A relay: pass it to the leaf it names, and only to a link.
		if rh.Dst != self.Addr {
			return
		}
		r.mu.Lock()
		linked := r.t.Link(to) != nil
		r.mu.Unlock()
		if !linked {
			r.counters.answersUnsolicited.Add(1)
			return
		}
		r.o.sendControl(typeDialMe, routing.AddrFromPeer(to), body)
		return
	}
	r.mu.Lock()
	_, ok := r.answeredLocked(m)
	r.mu.Unlock()
	if !ok {
		return
	}
	r.o.noteDialMe(time.Now())
	r.goDial(func() {
		if err := r.dialAnswerer(r.o.ctx, m); err != nil {
			r.counters.dialFailed.Add(1)
			r.mu.Lock()
			if len(r.dialFailed) < maxDialFailed {
				r.dialFailed[m.Requester] = failedDial{at: time.Now(), addr: routing.AddrFromPeer(m.Requester)}
			}
			r.mu.Unlock()
			r.o.log.Debug("dial-me: answerer not reached", "peer", m.Requester, "err", err)
			return
		}
		r.mu.Lock()
		if q, ok := r.answeredLocked(m); ok {
			r.linkAnswerLocked(m, q)
		}
		r.mu.Unlock()
		r.kick()
	})
}

// dialAnswerer dials the node that answered with m.
func (r *ringManager) dialAnswerer(ctx context.Context, m *routing.ConnectToMe) error {
	h := r.o.host
	if h.Network().Connectedness(m.Requester) == network.Connected {
		return nil
	}
	info := peer.AddrInfo{ID: m.Requester}
	for _, ep := range m.Endpoints {
		if !ep.Addr().Is4() || ep.Addr().IsUnspecified() {
			continue
		}
		if a, err := ma.NewMultiaddr(fmt.Sprintf("/ip4/%s/tcp/%d", ep.Addr(), ep.Port())); err == nil {
			info.Addrs = append(info.Addrs, a)
		}
	}
	if len(info.Addrs) == 0 {
		return errors.New("no endpoint to dial")
	}
	ctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	return h.Connect(ctx, info)
}
