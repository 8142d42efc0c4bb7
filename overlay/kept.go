package overlay

import (
	"sync"
	"time"
)

// A peer that restarted forgot its sessions, and the first packets a node
// sends it afterwards are dropped there: they name keys it no longer
// holds. It says so (a stale-session hint over the ring, a lost-session
// notice on a link), and the node handshakes again; the packets that were
// dropped go again under the new keys, so that a VM's first ping to a
// peer that restarted comes late rather than not at all.
//
// Packets dropped because no session was up yet wait the same way, for
// the first session.
//
// Only packets sent while the peer was quiet are kept: a peer that
// answers holds the session, and copying the packets of a busy flow would
// cost for nothing. A kept packet goes again only when the peer says it
// lost the very session the packet was sealed under, which means it
// opened none of them; and only while young, as the VM's own retries
// take over after that.
const (
	// quietFor is how long the peer must not have been heard for the
	// packets sent to it to be kept.
	quietFor = 2 * time.Second
	// keptFor is how long a kept packet may still go again.
	keptFor = 2 * time.Second
	// maxKept and maxKeptBytes bound the packets kept for one peer.
	maxKept      = 8
	maxKeptBytes = 16 << 10
)

type keptPacket struct {
	remoteIndex uint32 // the session it was sealed under
	typ         byte   // typeData or typeDataPartial
	at          time.Time
	buf         []byte // HeaderLen bytes of room, the packet, TagLen bytes
}

// keptPackets are the packets sent to a quiet peer, for as long as they
// might have to go again.
type keptPackets struct {
	mu      sync.Mutex
	packets []keptPacket
	size    int
	// lost is the remote index of a session the peer said it lost, and
	// lostAt when: the packets kept under it go again under the next
	// session.
	lost   uint32
	lostAt time.Time
}

// keep copies packet, about to be sealed under remoteIndex, if there is
// room. The caller checks that the peer is quiet.
func (p *Peer) keep(remoteIndex uint32, typ byte, packet []byte) {
	if len(packet) > maxKeptBytes {
		return
	}
	k := &p.kept
	now := time.Now()
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(k.packets) > 0 && now.Sub(k.packets[0].at) >= keptFor {
		k.clearLocked() // all too old to go again; make room for new ones
	}
	if len(k.packets) >= maxKept || k.size+len(packet) > maxKeptBytes {
		return
	}
	buf := make([]byte, HeaderLen+len(packet)+TagLen)
	copy(buf[HeaderLen:], packet)
	k.packets = append(k.packets, keptPacket{remoteIndex: remoteIndex, typ: typ, at: now, buf: buf})
	k.size += len(packet)
}

// keepUnsent keeps a packet dropped for want of a session: it goes under
// the first one.
func (p *Peer) keepUnsent(typ byte, packet []byte) { p.keep(0, typ, packet) }

func (k *keptPackets) clearLocked() {
	clear(k.packets)
	k.packets, k.size = k.packets[:0], 0
}

// sessionLost records that the peer holds no session with remoteIndex.
func (p *Peer) sessionLost(remoteIndex uint32) {
	k := &p.kept
	k.mu.Lock()
	k.lost, k.lostAt = remoteIndex, time.Now()
	k.mu.Unlock()
}

// resendKept sends again, under s, the packets takeKept picks.
func (p *Peer) resendKept(s *session) {
	for _, kp := range p.takeKept(s, time.Now()) {
		if err := p.send(kp.typ, kp.buf, len(kp.buf)-HeaderLen-TagLen); err != nil {
			return
		}
		p.o.resentAfterLost.Add(1)
	}
}

// takeKept returns the young packets kept under a session the peer said
// it lost, or under none, and forgets all: the rest went under sessions
// older than s, which the peer holds or held.
func (p *Peer) takeKept(s *session, now time.Time) []keptPacket {
	k := &p.kept
	k.mu.Lock()
	defer k.mu.Unlock()
	var again []keptPacket
	lost := k.lost != 0 && k.lost != s.remoteIndex && now.Sub(k.lostAt) < keptFor
	for _, kp := range k.packets {
		if (kp.remoteIndex == 0 || lost && kp.remoteIndex == k.lost) && now.Sub(kp.at) < keptFor {
			again = append(again, kp)
		}
	}
	k.packets, k.size, k.lost = nil, 0, 0
	return again
}

// expireKept forgets the packets too old to go again.
func (p *Peer) expireKept(now time.Time) {
	k := &p.kept
	k.mu.Lock()
	if len(k.packets) > 0 && now.Sub(k.packets[len(k.packets)-1].at) >= keptFor {
		k.packets, k.size = nil, 0
	}
	k.mu.Unlock()
}
