package overlay

import (
	"crypto/ecdh"
	"fmt"
	"time"
)

// The three steps of a handshake that do not depend on how its messages
// travel, shared by links (a libp2p stream, link.go) and by peers reached
// over the ring (route.go): the initiator greets, the responder answers,
// the initiator finishes. Each step that fails leaves no session behind.

// greeting is the initiator's half of a handshake in flight.
type greeting struct {
	hello   *hello
	priv    *ecdh.PrivateKey
	session *session // keyed by finish
}

// greet makes a signed initiating hello for p, with a fresh ephemeral key
// and the index its session will have.
func (o *Overlay) greet(p *Peer, dataPort uint16, viaRing bool) (*greeting, error) {
	priv, eph, err := newEphemeral()
	if err != nil {
		return nil, err
	}
	s := &session{created: time.Now(), localIndex: o.reserveIndex(p), viaRing: viaRing}
	h := &hello{
		typ:      helloInit,
		suites:   offeredSuites(o.cfg.AEAD),
		hasAES:   hasAESHardware(),
		eph:      eph,
		index:    s.localIndex,
		dataPort: dataPort,
		addrs:    o.VirtualAddrs(),
	}
	if err := h.sign(o.cfg.Identity, o.host.ID(), p.id, nil); err != nil {
		o.dropIndex(s.localIndex)
		return nil, err
	}
	return &greeting{hello: h, priv: priv, session: s}, nil
}

// abandon forgets a greeting that will not be finished.
func (o *Overlay) abandon(g *greeting) { o.dropIndex(g.session.localIndex) }

// answer keys the responder's session for init, an initiating hello from
// p whose signature the caller checked, and makes the signed answer. The
// session is published: it receives at once, and sends once confirmed.
func (o *Overlay) answer(p *Peer, init *hello, dataPort uint16, viaRing bool) (*session, *hello, error) {
	suite, err := chooseSuite(init.suites, init.hasAES, hasAESHardware(), o.cfg.AEAD)
	if err != nil {
		return nil, nil, err
	}
	priv, eph, err := newEphemeral()
	if err != nil {
		return nil, nil, err
	}
	i2r, r2i, err := deriveKeys(priv, init.eph, suite, p.id, o.host.ID(), init.eph, eph)
	if err != nil {
		return nil, nil, err
	}
	s := &session{created: time.Now(), localIndex: o.reserveIndex(p), viaRing: viaRing}
	if err := s.setKeys(suite, init.index, r2i, i2r); err != nil {
		o.dropIndex(s.localIndex)
		return nil, nil, err
	}
	resp := &hello{
		typ:      helloResp,
		suites:   []Suite{suite},
		hasAES:   hasAESHardware(),
		eph:      eph,
		index:    s.localIndex,
		dataPort: dataPort,
		addrs:    o.VirtualAddrs(),
	}
	if err := resp.sign(o.cfg.Identity, p.id, o.host.ID(), &init.eph); err != nil {
		o.dropIndex(s.localIndex)
		return nil, nil, err
	}
	o.publish(s)
	return s, resp, nil
}

// finish checks p's answer to g and keys g's session, which it publishes.
// On failure the greeting is abandoned.
func (o *Overlay) finish(p *Peer, g *greeting, resp *hello) error {
	err := o.finishKeys(p, g, resp)
	if err != nil {
		o.abandon(g)
		return err
	}
	o.publish(g.session)
	return nil
}

func (o *Overlay) finishKeys(p *Peer, g *greeting, resp *hello) error {
	if resp.typ != helloResp {
		return fmt.Errorf("answer is a hello of type %d", resp.typ)
	}
	if err := resp.verify(p.id, o.host.ID(), p.id, &g.hello.eph); err != nil {
		return err
	}
	suite := resp.suites[0]
	if !containsSuite(g.hello.suites, suite) {
		return fmt.Errorf("peer chose %v, which was not offered", suite)
	}
	i2r, r2i, err := deriveKeys(g.priv, resp.eph, suite, o.host.ID(), p.id, g.hello.eph, resp.eph)
	if err != nil {
		return err
	}
	return g.session.setKeys(suite, resp.index, i2r, r2i)
}
