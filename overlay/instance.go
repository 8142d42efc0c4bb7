package overlay

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	msmux "github.com/multiformats/go-multistream"
)

// Clone detection. A VM image cloned with its state directory starts a
// second node with the first one's identity; two nodes with one peer ID
// would fight over every session and ring link. During its first minute,
// a node asks each peer it connects to whether that peer has another
// live connection to the same peer ID. The peer probes each such
// connection; a node at the other end proves that it holds the identity
// key by signing the asker's nonce with its own instance nonce and start
// time. A proof under the node's own key, for its nonce, from another
// instance, means a clone runs: the node that asks is the newer, and it
// refuses to run. The peer in the middle cannot forge that proof, so a
// lying peer can stop no one.
//
// Messages, all on instanceProtocol:
//
//	ask:   1 ask-nonce(16) instance-nonce(16)   a new node to a peer
//	probe: 2 ask-nonce(16)                      the peer to the other connection
//	proof: instance-nonce(16) started(8, Unix ns) sig-len(2) sig
//	found: n(1), then n times: addr-len(1) addr proof-len(2) proof
const (
	instanceProtocol = protocol.ID("/ringnet/instance/1.0.0")
	// instanceWindow is how long after start a node checks its peers.
	instanceWindow = time.Minute
	// maxInstanceChecks bounds the peers a node asks.
	maxInstanceChecks = 16
	// maxProbedConns bounds the connections a peer probes for one ask.
	maxProbedConns  = 4
	instanceTimeout = 5 * time.Second
	probeTimeout    = 2 * time.Second
	nonceLen        = 16
	instanceDomain  = "ringnet instance proof v1\x00"
)

const (
	instanceAsk   byte = 1
	instanceProbe byte = 2
)

var errInstanceMsg = errors.New("malformed instance message")

// ErrClone is what a node that finds an older instance of itself reports.
var ErrClone = errors.New("another live node holds this identity")

// instanceProof is a node's signed answer to a probe.
type instanceProof struct {
	instance [nonceLen]byte
	started  time.Time
	sig      []byte
}

func signedInstanceBytes(ask [nonceLen]byte, p *instanceProof) []byte {
	b := append([]byte(instanceDomain), ask[:]...)
	b = append(b, p.instance[:]...)
	return binary.BigEndian.AppendUint64(b, uint64(p.started.UnixNano()))
}

func (p *instanceProof) marshal() []byte {
	b := append([]byte(nil), p.instance[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(p.started.UnixNano()))
	b = binary.BigEndian.AppendUint16(b, uint16(len(p.sig)))
	return append(b, p.sig...)
}

func parseInstanceProof(b []byte) (*instanceProof, error) {
	if len(b) < nonceLen+8+2 {
		return nil, errInstanceMsg
	}
	var p instanceProof
	copy(p.instance[:], b)
	p.started = time.Unix(0, int64(binary.BigEndian.Uint64(b[nonceLen:])))
	n := int(binary.BigEndian.Uint16(b[nonceLen+8:]))
	if len(b) != nonceLen+8+2+n || n == 0 {
		return nil, errInstanceMsg
	}
	p.sig = b[nonceLen+8+2:]
	return &p, nil
}

// verify checks that the holder of key signed p for the ask nonce.
func (p *instanceProof) verify(key crypto.PubKey, ask [nonceLen]byte) error {
	ok, err := key.Verify(signedInstanceBytes(ask, p), p.sig)
	if err != nil || !ok {
		return fmt.Errorf("%w: bad signature", errInstanceMsg)
	}
	return nil
}

// otherInstance is a live instance a peer found: where it saw it, and
// its proof.
type otherInstance struct {
	addr  string
	proof []byte
}

func marshalFound(found []otherInstance) []byte {
	b := []byte{byte(len(found))}
	for _, f := range found {
		addr := f.addr[:min(len(f.addr), 255)]
		b = append(b, byte(len(addr)))
		b = append(b, addr...)
		b = binary.BigEndian.AppendUint16(b, uint16(len(f.proof)))
		b = append(b, f.proof...)
	}
	return b
}

func parseFound(b []byte) ([]otherInstance, error) {
	if len(b) < 1 || int(b[0]) > maxProbedConns {
		return nil, errInstanceMsg
	}
	n := int(b[0])
	b = b[1:]
	var out []otherInstance
	for range n {
		if len(b) < 1 {
			return nil, errInstanceMsg
		}
		al := int(b[0]) // an int: 1+b[0] as a byte wraps to 0 for 255
		if len(b) < 1+al+2 {
			return nil, errInstanceMsg
		}
		addr := string(b[1 : 1+al])
		b = b[1+al:]
		pl := int(binary.BigEndian.Uint16(b))
		if len(b) < 2+pl {
			return nil, errInstanceMsg
		}
		out = append(out, otherInstance{addr: addr, proof: b[2 : 2+pl]})
		b = b[2+pl:]
	}
	if len(b) != 0 {
		return nil, errInstanceMsg
	}
	return out, nil
}

// instanceState is this node's instance, and the peers it asked.
type instanceState struct {
	nonce   [nonceLen]byte
	started time.Time
	mu      sync.Mutex
	asked   map[peer.ID]bool
	// probes counts probes answered, asks served, and asks that found
	// another instance of the asker.
	probes, asks, found atomic.Uint64
}

func (s *instanceState) init(now time.Time) {
	rand.Read(s.nonce[:])
	s.started = now
	s.asked = make(map[peer.ID]bool)
}

// startInstanceChecks serves the protocol and asks each peer this node
// connects to during its first minute.
func (o *Overlay) startInstanceChecks() {
	o.instance.init(time.Now())
	o.host.SetStreamHandler(instanceProtocol, o.gated(o.handleInstance))
	if o.cfg.OnClone == nil {
		return
	}
	o.host.Network().Notify(&network.NotifyBundle{
		ConnectedF: func(_ network.Network, c network.Conn) {
			id := c.RemotePeer()
			s := &o.instance
			if time.Since(s.started) > instanceWindow {
				return
			}
			s.mu.Lock()
			ask := !s.asked[id] && len(s.asked) < maxInstanceChecks
			if ask {
				s.asked[id] = true
			}
			s.mu.Unlock()
			if !ask {
				return
			}
			o.spawn(func() {
				if err := o.askInstance(id); errors.Is(err, ErrClone) {
					o.cfg.OnClone(err)
				} else if err != nil {
					o.log.Debug("instance check", "peer", id, "err", err)
				}
			})
		},
	})
}

// askInstance asks peer id whether it sees another live instance of this
// node. It returns an error wrapping ErrClone if it does.
func (o *Overlay) askInstance(id peer.ID) error {
	ctx, cancel := context.WithTimeout(o.ctx, instanceTimeout)
	defer cancel()
	st, err := o.host.NewStream(network.WithNoDial(ctx, "instance check"), id, instanceProtocol)
	if err != nil {
		return err
	}
	defer st.Close()
	st.SetDeadline(time.Now().Add(instanceTimeout))
	var ask [nonceLen]byte
	rand.Read(ask[:])
	msg := append(append([]byte{instanceAsk}, ask[:]...), o.instance.nonce[:]...)
	if _, err := st.Write(msg); err != nil {
		return err
	}
	st.CloseWrite()
	b, err := io.ReadAll(io.LimitReader(st, 4096))
	if err != nil {
		return err
	}
	found, err := parseFound(b)
	if err != nil {
		return err
	}
	key := o.cfg.Identity.GetPublic()
	for _, f := range found {
		p, err := parseInstanceProof(f.proof)
		if err != nil || p.verify(key, ask) != nil || p.instance == o.instance.nonce {
			continue // a lie, or this node's own other connection
		}
		return fmt.Errorf("%w: peer %s sees it at %s, running since %s; this node started at %s and is the newer: "+
			"a VM cloned with its state directory must get its own identity (remove identity.key from the clone's state directory)",
			ErrClone, id, f.addr, p.started.UTC().Format(time.RFC3339), o.instance.started.UTC().Format(time.RFC3339))
	}
	return nil
}

// handleInstance serves asks and probes.
func (o *Overlay) handleInstance(st network.Stream) {
	defer st.Close()
	st.SetDeadline(time.Now().Add(instanceTimeout))
	var hdr [1 + 2*nonceLen]byte
	if _, err := io.ReadFull(st, hdr[:1+nonceLen]); err != nil {
		st.Reset()
		return
	}
	ask := [nonceLen]byte(hdr[1 : 1+nonceLen])
	switch hdr[0] {
	case instanceProbe:
		p := instanceProof{instance: o.instance.nonce, started: o.instance.started}
		sig, err := o.cfg.Identity.Sign(signedInstanceBytes(ask, &p))
		if err != nil {
			st.Reset()
			return
		}
		p.sig = sig
		o.instance.probes.Add(1)
		st.Write(p.marshal())
	case instanceAsk:
		if _, err := io.ReadFull(st, hdr[1+nonceLen:]); err != nil {
			st.Reset()
			return
		}
		o.instance.asks.Add(1)
		asker := [nonceLen]byte(hdr[1+nonceLen:])
		found := o.probeOthers(st.Conn(), ask, asker)
		if len(found) > 0 {
			o.instance.found.Add(1)
		}
		st.Write(marshalFound(found))
	default:
		st.Reset()
	}
}

// probeOthers probes the other connections to the peer at the far end of
// conn, and returns the valid proofs of instances other than the asker's.
func (o *Overlay) probeOthers(conn network.Conn, ask, asker [nonceLen]byte) []otherInstance {
	id := conn.RemotePeer()
	key, err := id.ExtractPublicKey()
	if err != nil {
		return nil
	}
	var others []network.Conn
	for _, c := range o.host.Network().ConnsToPeer(id) {
		if c != conn && len(others) < maxProbedConns {
			others = append(others, c)
		}
	}
	var mu sync.Mutex
	var found []otherInstance
	var wg sync.WaitGroup
	for _, c := range others {
		wg.Go(func() {
			b, err := o.probe(c, ask)
			if err != nil {
				return
			}
			p, err := parseInstanceProof(b)
			if err != nil || p.verify(key, ask) != nil || p.instance == asker {
				return
			}
			mu.Lock()
			found = append(found, otherInstance{addr: c.RemoteMultiaddr().String(), proof: b})
			mu.Unlock()
		})
	}
	wg.Wait()
	return found
}

// probe asks the node at the far end of c for its proof.
func (o *Overlay) probe(c network.Conn, ask [nonceLen]byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(o.ctx, probeTimeout)
	defer cancel()
	st, err := c.NewStream(ctx)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	st.SetDeadline(time.Now().Add(probeTimeout))
	if err := msmux.SelectProtoOrFail(instanceProtocol, st); err != nil {
		st.Reset()
		return nil, err
	}
	st.SetProtocol(instanceProtocol)
	if _, err := st.Write(append([]byte{instanceProbe}, ask[:]...)); err != nil {
		st.Reset()
		return nil, err
	}
	st.CloseWrite()
	return io.ReadAll(io.LimitReader(st, 1024))
}
