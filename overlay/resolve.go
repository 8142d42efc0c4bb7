package overlay

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/ringnet/ringnet/routing"
)

// Address records: which node holds a virtual IP. This is the ring's own
// stand-in until leases live in the DHT (the DHCP issue replaces it).
//
// A node registers each of its virtual IPs at the ring address
// vipKey(ip): a register message routed there is stored by the two nodes
// around that address. It registers again every vipRefresh, and whenever
// its near neighbours change (a node joining next to the key takes over
// as its holder). A node that wants to reach an IP no link announced
// routes a lookup to the same key; a holder of the record answers over
// the ring, and the node opens an end-to-end session with the owner. The
// owner's signed hello is what finally binds the IP to it, so a lying
// record only costs a handshake that yields no address; but until the
// DHT brings signed, namespace-checked leases, any node may claim any
// free address, and the last register wins.
const (
	vipRefresh = 15 * time.Second
	// vipTTL is how long a stored record lives without a refresh.
	vipTTL = 60 * time.Second
	// A lookup is sent again every lookupRetry until answered, for at
	// most lookupFor: a node that has just joined registers within a
	// round, and its first ping should not wait for the VM's next ARP.
	lookupRetry = 250 * time.Millisecond
	lookupFor   = 5 * time.Second
	// maxVIPRecords bounds the records one node stores.
	maxVIPRecords = 1 << 16
	// maxVIPLookups bounds the lookups in flight.
	maxVIPLookups = 1024
)

// Operations of an address record message.
const (
	vipRegister byte = 1 // Peer holds IP
	vipLookup   byte = 2 // Peer asks who holds IP
	vipAnswer   byte = 3 // Peer holds IP, TTL seconds left
	vipHandover byte = 4 // a stored record, passed on: Peer holds IP, TTL seconds left
)

// vipMsg is an address record message:
//
//	version op ip(4) id-len id ttl(2)
type vipMsg struct {
	Op   byte
	IP   netip.Addr
	Peer peer.ID
	TTL  uint16 // seconds
}

var errVIPMsg = errors.New("malformed address record message")

func (m *vipMsg) MarshalBinary() ([]byte, error) {
	if m.Op < vipRegister || m.Op > vipHandover || !m.IP.Is4() || len(m.Peer) == 0 || len(m.Peer) > 64 {
		return nil, errVIPMsg
	}
	b := []byte{routing.Version, m.Op}
	b = append(b, m.IP.AsSlice()...)
	b = append(b, byte(len(m.Peer)))
	b = append(b, m.Peer...)
	return binary.BigEndian.AppendUint16(b, m.TTL), nil
}

func (m *vipMsg) UnmarshalBinary(b []byte) error {
	if len(b) < 7 || b[0] != routing.Version || b[1] < vipRegister || b[1] > vipHandover {
		return errVIPMsg
	}
	n := int(b[6])
	if n == 0 || n > 64 || len(b) != 7+n+2 {
		return errVIPMsg
	}
	id, err := peer.IDFromBytes(b[7 : 7+n])
	if err != nil {
		return fmt.Errorf("%w: %v", errVIPMsg, err)
	}
	*m = vipMsg{
		Op:   b[1],
		IP:   netip.AddrFrom4([4]byte(b[2:6])),
		Peer: id,
		TTL:  binary.BigEndian.Uint16(b[7+n:]),
	}
	return nil
}

// vipKey is the ring address where the record for ip is kept.
func vipKey(ip netip.Addr) routing.Addr {
	sum := sha256.Sum256(append([]byte("ringnet/vip/1\x00"), ip.AsSlice()...))
	return routing.AddrFromBytes(sum[:routing.AddrLen])
}

// lookup is a lookup awaiting its answer.
type lookup struct {
	first, last time.Time
}

type vipRecord struct {
	owner   peer.ID
	expires time.Time
}

// resolver is a ring manager's share of the address records.
type resolver struct {
	mu         sync.Mutex
	records    map[netip.Addr]vipRecord // stored for others
	lookups    map[netip.Addr]lookup
	registered time.Time
	near       []peer.ID // near neighbours at the last register

	registers, lookupsSent, answers, resolved, refused, malformed atomic.Uint64
}

func (v *resolver) init() {
	v.records = make(map[netip.Addr]vipRecord)
	v.lookups = make(map[netip.Addr]lookup)
}

func (v *resolver) counters(m map[string]uint64) {
	m["vip_registers_stored"] = v.registers.Load()
	m["vip_lookups_sent"] = v.lookupsSent.Load()
	m["vip_answers_sent"] = v.answers.Load()
	m["vip_resolved"] = v.resolved.Load()
	m["vip_refused"] = v.refused.Load()
	m["vip_malformed"] = v.malformed.Load()
}

// register sends this node's address records when they are due.
func (r *ringManager) register(now time.Time, near []peer.ID) {
	if r.o.cfg.Resolve != nil {
		return // lease records in the DHT say who holds what
	}
	v := &r.vips
	v.mu.Lock()
	nearChanged := !slices.Equal(near, v.near)
	due := now.Sub(v.registered) >= vipRefresh || nearChanged
	if due {
		v.registered, v.near = now, near
	}
	v.mu.Unlock()
	if !due {
		return
	}
	if nearChanged {
		r.handOver(now)
	}
	for _, ip := range r.o.VirtualAddrs() {
		if !r.sendVIP(vipKey(ip), &vipMsg{Op: vipRegister, IP: ip, Peer: r.o.host.ID(), TTL: uint16(vipTTL / time.Second)}) {
			v.mu.Lock()
			v.registered = time.Time{} // again next round
			v.mu.Unlock()
		}
	}
}

// handOver routes the records this node stores to their keys again: its
// near neighbours changed, so a new node may be nearer a key now.
func (r *ringManager) handOver(now time.Time) {
	v := &r.vips
	v.mu.Lock()
	var msgs []vipMsg
	for ip, rec := range v.records {
		if left := rec.expires.Sub(now); left > time.Second {
			msgs = append(msgs, vipMsg{Op: vipHandover, IP: ip, Peer: rec.owner, TTL: uint16(left / time.Second)})
		}
	}
	v.mu.Unlock()
	for i := range msgs {
		r.sendVIP(vipKey(msgs[i].IP), &msgs[i])
	}
}

// sendVIP routes an address record message and reports whether it left.
func (r *ringManager) sendVIP(dst routing.Addr, m *vipMsg) bool {
	b, err := m.MarshalBinary()
	if err == nil {
		err = r.o.sendControl(typeVIP, dst, b)
	}
	if err != nil {
		r.o.log.Debug("address record not sent", "ip", m.IP, "err", err)
		return false
	}
	return true
}

// resolve starts looking for the holder of ip, unless a lookup is under
// way. It never blocks: packets for ip are dropped until the holder
// answers and a session with it is up.
func (r *ringManager) resolve(ip netip.Addr) {
	if !ip.Is4() || !slices.ContainsFunc(r.o.cfg.VirtualSubnets, func(p netip.Prefix) bool { return p.Contains(ip) }) ||
		slices.Contains(r.o.VirtualAddrs(), ip) {
		return
	}
	now := time.Now()
	v := &r.vips
	v.mu.Lock()
	if l, ok := v.lookups[ip]; (ok && now.Sub(l.first) < lookupFor) || (!ok && len(v.lookups) >= maxVIPLookups) {
		v.mu.Unlock()
		return
	}
	v.lookups[ip] = lookup{first: now, last: now}
	v.mu.Unlock()
	r.sendLookup(ip)
}

func (r *ringManager) sendLookup(ip netip.Addr) {
	r.vips.lookupsSent.Add(1)
	r.sendVIP(vipKey(ip), &vipMsg{Op: vipLookup, IP: ip, Peer: r.o.host.ID()})
}

// retryLookups sends unanswered lookups again, and gives up on those
// older than lookupFor.
func (r *ringManager) retryLookups(now time.Time) {
	v := &r.vips
	var again []netip.Addr
	v.mu.Lock()
	for ip, l := range v.lookups {
		switch {
		case now.Sub(l.first) >= lookupFor:
			delete(v.lookups, ip)
		case now.Sub(l.last) >= lookupRetry:
			v.lookups[ip] = lookup{first: l.first, last: now}
			again = append(again, ip)
		}
	}
	v.mu.Unlock()
	for _, ip := range again {
		r.sendLookup(ip)
	}
}

// onVIP handles an address record message routed to this node, or to a
// key this node is next to.
func (r *ringManager) onVIP(rh routing.Header, body []byte) {
	v := &r.vips
	var m vipMsg
	if err := m.UnmarshalBinary(body); err != nil {
		v.malformed.Add(1)
		return
	}
	now := time.Now()
	switch m.Op {
	case vipRegister, vipLookup:
		// The route's source must be the node the message speaks for,
		// and the key the one for the address.
		if routing.AddrFromPeer(m.Peer) != rh.Src || rh.Dst != vipKey(m.IP) {
			v.refused.Add(1)
			return
		}
	case vipAnswer:
		if rh.Dst != r.o.ringAddr {
			return
		}
	case vipHandover:
		if rh.Dst != vipKey(m.IP) {
			v.refused.Add(1)
			return
		}
	}
	switch m.Op {
	case vipRegister, vipHandover:
		v.mu.Lock()
		defer v.mu.Unlock()
		old, ok := v.records[m.IP]
		if m.Op == vipHandover && ok && now.Before(old.expires) {
			return // the owner's own register wins over a passed-on copy
		}
		if !ok && len(v.records) >= maxVIPRecords {
			v.expireLocked(now)
			if len(v.records) >= maxVIPRecords {
				v.refused.Add(1)
				return
			}
		}
		ttl := min(time.Duration(m.TTL)*time.Second, vipTTL)
		v.records[m.IP] = vipRecord{owner: m.Peer, expires: now.Add(ttl)}
		v.registers.Add(1)
	case vipLookup:
		owner, left := r.ownerOf(m.IP, now)
		if owner == "" {
			return // the other node around the key may know
		}
		v.answers.Add(1)
		r.sendVIP(rh.Src, &vipMsg{Op: vipAnswer, IP: m.IP, Peer: owner, TTL: uint16(left / time.Second)})
	case vipAnswer:
		v.mu.Lock()
		_, asked := v.lookups[m.IP]
		delete(v.lookups, m.IP)
		v.mu.Unlock()
		if !asked || m.Peer == r.o.host.ID() {
			return
		}
		v.resolved.Add(1)
		if err := r.o.AddRingPeer(m.Peer); err != nil {
			r.o.log.Debug("address holder", "ip", m.IP, "err", err)
		}
	}
}

// ownerOf returns who holds ip by the records this node stores, or this
// node itself.
func (r *ringManager) ownerOf(ip netip.Addr, now time.Time) (peer.ID, time.Duration) {
	if slices.Contains(r.o.VirtualAddrs(), ip) {
		return r.o.host.ID(), vipTTL
	}
	v := &r.vips
	v.mu.Lock()
	defer v.mu.Unlock()
	rec, ok := v.records[ip]
	if !ok || !now.Before(rec.expires) {
		delete(v.records, ip)
		return "", 0
	}
	return rec.owner, rec.expires.Sub(now)
}

// expire drops records that ran out.
func (v *resolver) expire(now time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.expireLocked(now)
}

func (v *resolver) expireLocked(now time.Time) {
	for ip, rec := range v.records {
		if !now.Before(rec.expires) {
			delete(v.records, ip)
		}
	}
}
