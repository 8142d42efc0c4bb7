package tap

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// The gateway is what the VM sees at the other end of its TAP: one router
// MAC that answers ARP for every address in the virtual subnet that some
// node holds. The VM thus treats the whole subnet as on-link and hands the
// gateway plain IPv4 packets, which FromVM picks out of their frames for
// the overlay; ToVM wraps packets from the overlay back into frames.
//
// Forwarding allocates nothing: FromVM returns a subslice of the frame and
// ToVM fills in the Ethernet header in place (only fragmenting allocates,
// for the slice of fragments). FromVM is called by one goroutine and ToVM
// by another; they share only atomics.

// ReplyBufLen is a replyBuf size for FromVM that always fits a reply frame
// and, with an MTU of at least 576, the fragments of any IPv4 packet (a
// 65535-byte packet with 60-byte headers needs 73155 bytes).
const ReplyBufLen = 72 << 10

// Rate of ICMP "fragmentation needed" messages to the VM. The kernel needs
// only one per destination to lower its path MTU; the limit keeps a VM that
// ignores them from turning the gateway into a packet generator.
const (
	fragNeededPerSecond = 200
	fragNeededBurst     = 50
)

// GatewayConfig describes the virtual gateway.
type GatewayConfig struct {
	// Addr is the VM's own address and the virtual subnet, e.g.
	// 10.128.0.1/16. The prefix must be /30 or shorter.
	Addr netip.Prefix
	// GatewayMAC is the MAC the gateway answers with; it should be
	// locally administered and unicast.
	GatewayMAC net.HardwareAddr
	// VMMAC is the MAC of the VM's interface (the TAP's MAC). It may be
	// nil: the gateway also learns it from the frames the VM sends, and
	// ToVM drops packets until it knows it.
	VMMAC net.HardwareAddr
	// MTU is the largest IPv4 packet the overlay carries (the path MTU),
	// at least 68.
	MTU int
	// Holds reports whether some node holds addr, so that ARP for it gets
	// an answer. nil means every address in the subnet other than the
	// VM's own. It is called from FromVM only, for ARP requests.
	Holds func(addr netip.Addr) bool
	// PathMTU, if set, returns the MTU of the path to dst when it is
	// below MTU (a path over several overlay hops carries more headers),
	// and 0 otherwise. It is called only for packets longer than
	// MinPathMTU.
	PathMTU    func(dst netip.Addr) int
	MinPathMTU int
}

// Verdict is what the caller of FromVM does with a frame.
type Verdict int

const (
	// Drop: nothing to do; the reason has been counted.
	Drop Verdict = iota
	// Forward: send Result.Packet to Result.Dst over the overlay.
	Forward
	// Reply: write Result.Reply back to the VM.
	Reply
	// ForwardFragments: the packet was larger than the MTU and allowed to
	// be fragmented; send each of Result.Fragments, in order, to
	// Result.Dst. Result.Packet is nil.
	ForwardFragments
	// ForwardGSO (FromVMOffload only): Result.Packet is a TCP or UDP
	// packet larger than the MTU, or with its checksum undone, as
	// Result.GSO describes; cut it with Segment and send each segment to
	// Result.Dst.
	ForwardGSO
)

func (v Verdict) String() string {
	switch v {
	case Drop:
		return "drop"
	case Forward:
		return "forward"
	case Reply:
		return "reply"
	case ForwardFragments:
		return "forward-fragments"
	case ForwardGSO:
		return "forward-gso"
	default:
		return fmt.Sprintf("verdict(%d)", int(v))
	}
}

// Result is the outcome of FromVM. Its slices point into the frame or the
// replyBuf passed to FromVM and are valid as long as those are.
type Result struct {
	Verdict Verdict
	// Packet (Forward) is the IPv4 packet, a subslice of the frame cut
	// to the packet's total length; at most MTU bytes.
	Packet []byte
	// Dst (Forward, ForwardFragments) is the packet's destination.
	Dst netip.Addr
	// Reply (Reply) is a frame for the VM, built in replyBuf.
	Reply []byte
	// Fragments (ForwardFragments) are valid IPv4 fragments of at most
	// MTU bytes each, built one after another in replyBuf.
	Fragments [][]byte
	// GSO (ForwardGSO) describes Packet for Segment: the frame's vnet
	// header with its offsets counted from Packet's first byte.
	GSO VirtioNetHdr
}

// Gateway is the VM's virtual gateway. Create it with NewGateway.
type Gateway struct {
	vm        atomic.Uint32 // the VM's address; 0 until it holds one
	mask      uint32        // subnet mask
	network   uint32        // subnet address
	broadcast uint32        // subnet broadcast address
	gwMAC     [6]byte
	mtu       int
	holds     func(netip.Addr) bool
	pathMTU   func(netip.Addr) int
	minPMTU   int

	// vmMAC is the VM's MAC in the low 48 bits; 0 until known. FromVM
	// writes it, ToVM reads it.
	vmMAC atomic.Uint64

	fragNeeded tokenBucket
	now        func() time.Time // time.Now; tests replace it

	// asked holds addresses the VM asked for by ARP that no node was
	// known to hold, and when: Announce tells the VM once one is found,
	// rather than leave it to its next ARP retry a second later.
	askedMu sync.Mutex
	asked   map[uint32]time.Time

	fromVM [numFromVMCounters]atomic.Uint64
	// Keep the two directions' counters, written by different
	// goroutines, off one cache line.
	_    [64]byte
	toVM [numToVMCounters]atomic.Uint64
}

// NewGateway checks cfg and returns a gateway for it.
func NewGateway(cfg GatewayConfig) (*Gateway, error) {
	if !cfg.Addr.IsValid() || !cfg.Addr.Addr().Is4() {
		return nil, fmt.Errorf("gateway: address %v is not an IPv4 prefix", cfg.Addr)
	}
	if cfg.Addr.Bits() > 30 {
		return nil, fmt.Errorf("gateway: subnet %v leaves no room for peers", cfg.Addr)
	}
	if err := checkUnicastMAC(cfg.GatewayMAC); err != nil {
		return nil, fmt.Errorf("gateway: gateway MAC: %w", err)
	}
	if cfg.VMMAC != nil {
		if err := checkUnicastMAC(cfg.VMMAC); err != nil {
			return nil, fmt.Errorf("gateway: VM MAC: %w", err)
		}
		if [6]byte(cfg.VMMAC) == [6]byte(cfg.GatewayMAC) {
			return nil, fmt.Errorf("gateway: VM MAC %v equals the gateway MAC", cfg.VMMAC)
		}
	}
	if cfg.MTU < ipv4MinMTU || cfg.MTU > ipv4MaxLen {
		return nil, fmt.Errorf("gateway: MTU %d is outside [%d, %d]", cfg.MTU, ipv4MinMTU, ipv4MaxLen)
	}

	mask := ^uint32(0) << (32 - cfg.Addr.Bits())
	vm := addrUint32(cfg.Addr.Addr())
	g := &Gateway{
		mask:      mask,
		network:   vm & mask,
		broadcast: vm | ^mask,
		gwMAC:     [6]byte(cfg.GatewayMAC),
		mtu:       cfg.MTU,
		holds:     cfg.Holds,
		fragNeeded: tokenBucket{
			rate:   fragNeededPerSecond,
			burst:  fragNeededBurst,
			tokens: fragNeededBurst,
		},
		now: time.Now,
	}
	if vm == g.network || vm == g.broadcast {
		return nil, fmt.Errorf("gateway: %v is the subnet's network or broadcast address", cfg.Addr)
	}
	g.vm.Store(vm)
	if cfg.VMMAC != nil {
		g.vmMAC.Store(macUint64(cfg.VMMAC))
	}
	if cfg.PathMTU != nil {
		if cfg.MinPathMTU < 68 || cfg.MinPathMTU > cfg.MTU {
			return nil, fmt.Errorf("gateway: MinPathMTU %d is outside 68..MTU", cfg.MinPathMTU)
		}
		g.pathMTU, g.minPMTU = cfg.PathMTU, cfg.MinPathMTU
	}
	return g, nil
}

// SetVMAddr changes the VM's own address (its lease changed); the zero
// Addr means it holds none, and its packets are dropped.
func (g *Gateway) SetVMAddr(a netip.Addr) error {
	if !a.IsValid() {
		g.vm.Store(0)
		return nil
	}
	v := addrUint32(a)
	if !a.Is4() || v&g.mask != g.network || v == g.network || v == g.broadcast {
		return fmt.Errorf("gateway: %v is not a host address of the subnet", a)
	}
	g.vm.Store(v)
	return nil
}

// mtuTo returns the MTU of the path to dst for a packet of n bytes.
func (g *Gateway) mtuTo(dst netip.Addr, n int) int {
	if g.pathMTU == nil || n <= g.minPMTU {
		return g.mtu
	}
	if m := g.pathMTU(dst); m > 0 && m < g.mtu {
		return max(m, g.minPMTU)
	}
	return g.mtu
}

func checkUnicastMAC(mac net.HardwareAddr) error {
	switch {
	case len(mac) != 6:
		return fmt.Errorf("%v is not a 6-byte Ethernet address", mac)
	case mac[0]&1 != 0:
		return fmt.Errorf("%v is a group address", mac)
	case macUint64(mac) == 0:
		return errors.New("zero address")
	}
	return nil
}

// FromVM handles one frame the VM sent. replyBuf is scratch space for a
// reply frame or for fragments; ReplyBufLen bytes always suffice, and if
// it is too small the frame is dropped and counted. Every call counts
// exactly one outcome in Counters.
func (g *Gateway) FromVM(frame, replyBuf []byte) Result {
	if len(frame) < EthHeaderLen {
		return g.dropFromVM(fromVMDropShortFrame)
	}
	switch binary.BigEndian.Uint16(frame[12:14]) {
	case etherTypeIPv4:
		if !g.learnVMMAC(frame[6:12]) {
			return g.dropFromVM(fromVMDropBadSourceMAC)
		}
		return g.ipv4FromVM(frame, replyBuf)
	case etherTypeARP:
		if !g.learnVMMAC(frame[6:12]) {
			return g.dropFromVM(fromVMDropBadSourceMAC)
		}
		return g.arpFromVM(frame, replyBuf)
	case etherTypeIPv6:
		return g.dropFromVM(fromVMDropIPv6)
	case etherTypeVLAN, etherTypeQinQ, etherTypeQinQ2:
		return g.dropFromVM(fromVMDropVLAN)
	default:
		return g.dropFromVM(fromVMDropUnknownEtherType)
	}
}

// learnVMMAC records src, the source MAC of a frame from the VM, as the
// VM's MAC, and reports whether it is a plausible one (unicast, not zero,
// not ours).
func (g *Gateway) learnVMMAC(src []byte) bool {
	mac := macUint64(src)
	if src[0]&1 != 0 || mac == 0 || [6]byte(src) == g.gwMAC {
		return false
	}
	if g.vmMAC.Load() != mac {
		g.vmMAC.Store(mac)
	}
	return true
}

// acceptDstMAC reports whether a frame to dst is for the gateway: sent to
// its MAC or, if broadcastOK, broadcast. If not, it returns the drop
// counter that says why.
func (g *Gateway) acceptDstMAC(dst []byte, broadcastOK bool) (fromVMCounter, bool) {
	switch {
	case [6]byte(dst) == g.gwMAC:
		return 0, true
	case broadcastOK && [6]byte(dst) == [6]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}:
		return 0, true
	case dst[0]&1 != 0:
		return fromVMDropMulticast, false
	default:
		return fromVMDropNotForGateway, false
	}
}

// ARP packet layout for Ethernet and IPv4 (RFC 826).
const (
	arpLen      = 28
	arpRequest  = 1
	arpReply    = 2
	minFrameLen = 60 // Ethernet minimum without FCS
	arpReplyLen = minFrameLen
	arpHTypeEth = 1
	arpOffOp    = 6
	arpOffSHA   = 8
	arpOffSPA   = 14
	arpOffTHA   = 18
	arpOffTPA   = 24
)

// arpFromVM answers the VM's ARP request for an address some node holds.
func (g *Gateway) arpFromVM(frame, replyBuf []byte) Result {
	if c, ok := g.acceptDstMAC(frame[0:6], true); !ok {
		return g.dropFromVM(c)
	}
	arp := frame[EthHeaderLen:]
	if len(arp) < arpLen ||
		binary.BigEndian.Uint16(arp[0:2]) != arpHTypeEth ||
		binary.BigEndian.Uint16(arp[2:4]) != etherTypeIPv4 ||
		arp[4] != 6 || arp[5] != 4 {
		return g.dropFromVM(fromVMDropARPMalformed)
	}
	if binary.BigEndian.Uint16(arp[arpOffOp:]) != arpRequest {
		return g.dropFromVM(fromVMDropARPNotRequest)
	}
	sha := arp[arpOffSHA : arpOffSHA+6]
	spa := arp[arpOffSPA : arpOffSPA+4]
	tpa := arp[arpOffTPA : arpOffTPA+4]
	if sha[0]&1 != 0 || macUint64(sha) == 0 {
		return g.dropFromVM(fromVMDropARPMalformed)
	}
	// An announcement (sender = target) tells, it does not ask.
	if [4]byte(spa) == [4]byte(tpa) {
		return g.dropFromVM(fromVMDropARPGratuitous)
	}
	target := binary.BigEndian.Uint32(tpa)
	switch {
	case target == g.vm.Load():
		// Never claim the VM's own address: its DHCP client and
		// duplicate address detection probe it, and an answer would
		// make the VM decline its address.
		return g.dropFromVM(fromVMDropARPOwnAddress)
	case target&g.mask != g.network:
		return g.dropFromVM(fromVMDropARPOutsideSubnet)
	case target == g.network || target == g.broadcast:
		return g.dropFromVM(fromVMDropARPReserved)
	}
	if g.holds != nil && !g.holds(uint32Addr(target)) {
		g.rememberAsked(target)
		return g.dropFromVM(fromVMDropARPNotHeld)
	}
	if len(replyBuf) < arpReplyLen {
		return g.dropFromVM(fromVMDropReplyBufSmall)
	}

	// A probe (sender 0.0.0.0) for a held address gets an answer too: the
	// address is in use, which is what the prober wants to know. The
	// reply then goes to 0.0.0.0, as RFC 5227 expects.
	r := replyBuf[:arpReplyLen]
	copy(r[0:6], frame[6:12])
	copy(r[6:12], g.gwMAC[:])
	binary.BigEndian.PutUint16(r[12:14], etherTypeARP)
	a := r[EthHeaderLen:]
	copy(a[0:arpOffOp], arp[0:arpOffOp]) // Ethernet, IPv4, 6, 4
	binary.BigEndian.PutUint16(a[arpOffOp:], arpReply)
	copy(a[arpOffSHA:], g.gwMAC[:])
	copy(a[arpOffSPA:], tpa)
	copy(a[arpOffTHA:], sha)
	copy(a[arpOffTPA:], spa)
	clear(a[arpLen:])
	g.fromVM[fromVMARPReply].Add(1)
	return Result{Verdict: Reply, Reply: r}
}

// Bounds of the addresses Announce remembers.
const (
	maxAsked  = 256
	askWindow = 10 * time.Second
)

func (g *Gateway) rememberAsked(target uint32) {
	now := g.now()
	g.askedMu.Lock()
	defer g.askedMu.Unlock()
	if g.asked == nil {
		g.asked = make(map[uint32]time.Time)
	}
	if len(g.asked) >= maxAsked {
		for a, at := range g.asked {
			if now.Sub(at) > askWindow {
				delete(g.asked, a)
			}
		}
		if len(g.asked) >= maxAsked {
			return
		}
	}
	g.asked[target] = now
}

// Announce returns an ARP reply telling the VM that addr is at the
// gateway, if the VM asked for addr in the last few seconds and got no
// answer because no node was known to hold it; nil otherwise. Call it when
// a node turns out to hold addr. buf needs ReplyBufLen bytes.
func (g *Gateway) Announce(addr netip.Addr, buf []byte) []byte {
	if !addr.Is4() || len(buf) < arpReplyLen {
		return nil
	}
	target := binary.BigEndian.Uint32(addr.AsSlice())
	vmMAC := g.vmMAC.Load()
	g.askedMu.Lock()
	at, ok := g.asked[target]
	delete(g.asked, target)
	g.askedMu.Unlock()
	if !ok || g.now().Sub(at) > askWindow || vmMAC == 0 {
		return nil
	}
	var mac [8]byte
	binary.BigEndian.PutUint64(mac[:], vmMAC)
	vm := binary.BigEndian.AppendUint32(nil, g.vm.Load())
	r := buf[:arpReplyLen]
	copy(r[0:6], mac[2:])
	copy(r[6:12], g.gwMAC[:])
	binary.BigEndian.PutUint16(r[12:14], etherTypeARP)
	a := r[EthHeaderLen:]
	binary.BigEndian.PutUint16(a[0:], arpHTypeEth)
	binary.BigEndian.PutUint16(a[2:], etherTypeIPv4)
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[arpOffOp:], arpReply)
	copy(a[arpOffSHA:], g.gwMAC[:])
	copy(a[arpOffSPA:], addr.AsSlice())
	copy(a[arpOffTHA:], mac[2:])
	copy(a[arpOffTPA:], vm)
	clear(a[arpLen:])
	g.fromVM[fromVMARPReply].Add(1)
	return r
}

// ipv4FromVM takes an IPv4 packet for the overlay out of its frame.
func (g *Gateway) ipv4FromVM(frame, replyBuf []byte) Result {
	pkt, dstAddr, c := g.checkIPv4FromVM(frame)
	if c != 0 {
		return g.dropFromVM(c)
	}

	mtu := g.mtuTo(dstAddr, len(pkt))
	if len(pkt) <= mtu {
		g.fromVM[fromVMForwarded].Add(1)
		return Result{Verdict: Forward, Packet: pkt, Dst: dstAddr}
	}
	// The VM's interface MTU can be larger than the overlay's (its DHCP
	// client may ignore the MTU option), and a path over several hops
	// carries less, so this is the normal way the VM learns the path MTU.
	if binary.BigEndian.Uint16(pkt[6:8])&ipv4FlagDF != 0 {
		return g.fragNeededFromVM(frame, pkt, replyBuf, mtu)
	}
	frags, err := fragment(pkt, mtu, replyBuf)
	switch {
	case errors.Is(err, errBadOptions):
		return g.dropFromVM(fromVMDropIPv4BadOptions)
	case errors.Is(err, errOffsetOverflow):
		return g.dropFromVM(fromVMDropIPv4BadFragmentOffset)
	case err != nil:
		return g.dropFromVM(fromVMDropReplyBufSmall)
	}
	g.fromVM[fromVMFragmented].Add(1)
	return Result{Verdict: ForwardFragments, Dst: dstAddr, Fragments: frags}
}

// checkIPv4FromVM checks that an IPv4 frame from the VM is for the
// gateway, well formed and addressed to a peer in the subnet. It returns
// the packet cut to its length and its destination, or the drop counter
// that says why not (never 0, which is fromVMForwarded).
func (g *Gateway) checkIPv4FromVM(frame []byte) ([]byte, netip.Addr, fromVMCounter) {
	if c, ok := g.acceptDstMAC(frame[0:6], false); !ok {
		return nil, netip.Addr{}, c
	}
	pkt, perr := checkIPv4(frame[EthHeaderLen:])
	if perr != ipv4OK {
		return nil, netip.Addr{}, fromVMDropIPv4Truncated + fromVMCounter(perr-ipv4Truncated)
	}
	src := binary.BigEndian.Uint32(pkt[12:16])
	dst := binary.BigEndian.Uint32(pkt[16:20])
	vm := g.vm.Load()
	switch {
	case vm == 0 || src != vm:
		// The far end would drop it (the source must be leased to the
		// sender); spare the overlay the trip.
		return nil, netip.Addr{}, fromVMDropBadSource
	case dst&g.mask != g.network:
		return nil, netip.Addr{}, fromVMDropDstOutsideSubnet
	case dst == vm:
		return nil, netip.Addr{}, fromVMDropDstOwnAddress
	case dst == g.network || dst == g.broadcast:
		return nil, netip.Addr{}, fromVMDropDstBroadcast
	}
	return pkt, uint32Addr(dst), 0
}

// ICMP "destination unreachable, fragmentation needed" (RFC 792, RFC 1191).
const (
	icmpHeaderLen        = 8
	icmpDestUnreachable  = 3
	icmpCodeFragNeeded   = 4
	icmpQuoteExtra       = 8    // bytes of the offending payload quoted
	ipTOSInternetControl = 0xc0 // precedence for ICMP errors, as Linux sends them
	fragNeededTTL        = 64
)

// fragNeededFromVM answers a too-big DF packet with ICMP "fragmentation
// needed" carrying the path's MTU, so the VM's kernel lowers its path MTU.
func (g *Gateway) fragNeededFromVM(frame, pkt, replyBuf []byte, mtu int) Result {
	ihl := int(pkt[0]&0x0f) * 4
	// RFC 1812 4.3.2.7: no ICMP error about a non-first fragment or
	// about an ICMP error. pkt is longer than the MTU (>= 68), so the
	// ICMP type byte after a header of at most 60 bytes is there.
	if binary.BigEndian.Uint16(pkt[6:8])&ipv4OffsetMask != 0 ||
		pkt[9] == protoICMP && isICMPError(pkt[ihl]) {
		return g.dropFromVM(fromVMDropTooBigNoICMP)
	}
	quote := pkt[:ihl+icmpQuoteExtra]
	n := EthHeaderLen + ipv4MinHeaderLen + icmpHeaderLen + len(quote)
	if len(replyBuf) < n {
		return g.dropFromVM(fromVMDropReplyBufSmall)
	}
	if !g.fragNeeded.allow(g.now()) {
		return g.dropFromVM(fromVMFragNeededRateLimited)
	}

	r := replyBuf[:n]
	copy(r[0:6], frame[6:12])
	copy(r[6:12], g.gwMAC[:])
	binary.BigEndian.PutUint16(r[12:14], etherTypeIPv4)

	ip := r[EthHeaderLen : EthHeaderLen+ipv4MinHeaderLen]
	ip[0] = 0x45
	ip[1] = ipTOSInternetControl
	binary.BigEndian.PutUint16(ip[2:4], uint16(n-EthHeaderLen))
	binary.BigEndian.PutUint16(ip[4:6], 0) // ID: unused with DF (RFC 6864)
	binary.BigEndian.PutUint16(ip[6:8], ipv4FlagDF)
	ip[8] = fragNeededTTL
	ip[9] = protoICMP
	// Source: the destination the VM tried to reach. The VM sees the whole
	// subnet as on-link, so there is no router address to use; the
	// destination is routed through this interface, so it passes the
	// VM's reverse-path filter, whereas the VM's own address would be
	// dropped as a martian. Linux does not check who sends the error, only
	// that the quoted header matches one of its sockets.
	copy(ip[12:16], pkt[16:20])
	copy(ip[16:20], pkt[12:16])
	setIPv4Checksum(ip)

	icmp := r[EthHeaderLen+ipv4MinHeaderLen:]
	icmp[0] = icmpDestUnreachable
	icmp[1] = icmpCodeFragNeeded
	binary.BigEndian.PutUint16(icmp[2:4], 0)
	binary.BigEndian.PutUint16(icmp[4:6], 0)
	binary.BigEndian.PutUint16(icmp[6:8], uint16(mtu))
	copy(icmp[icmpHeaderLen:], quote)
	binary.BigEndian.PutUint16(icmp[2:4], checksum(icmp, 0))

	g.fromVM[fromVMFragNeeded].Add(1)
	return Result{Verdict: Reply, Reply: r}
}

// isICMPError reports whether an ICMP type is an error message (RFC 1812
// 4.3.2.7), which must never trigger another error.
func isICMPError(typ byte) bool {
	switch typ {
	case 3, 4, 5, 11, 12:
		return true
	}
	return false
}

// ToVM turns the IPv4 packet at buf[EthHeaderLen:] into a frame for the VM
// by filling buf[:EthHeaderLen] in place. It returns the frame, cut to the
// packet's total length, or ok=false if the packet is dropped (counted):
// malformed, not for the VM's address, from outside the subnet, or the
// VM's MAC is not known yet. The packet itself is not modified.
func (g *Gateway) ToVM(buf []byte) (frame []byte, ok bool) {
	if len(buf) < EthHeaderLen {
		g.toVM[toVMDropIPv4Truncated].Add(1)
		return nil, false
	}
	pkt, perr := checkIPv4(buf[EthHeaderLen:])
	if perr != ipv4OK {
		g.toVM[toVMDropIPv4Truncated+toVMCounter(perr-ipv4Truncated)].Add(1)
		return nil, false
	}
	src := binary.BigEndian.Uint32(pkt[12:16])
	dst := binary.BigEndian.Uint32(pkt[16:20])
	vm := g.vm.Load()
	if vm == 0 || dst != vm {
		g.toVM[toVMDropNotForVM].Add(1)
		return nil, false
	}
	if src&g.mask != g.network || src == vm || src == g.network || src == g.broadcast {
		// The VM would not route a reply back here.
		g.toVM[toVMDropBadSource].Add(1)
		return nil, false
	}
	mac := g.vmMAC.Load()
	if mac == 0 {
		g.toVM[toVMDropVMMACUnknown].Add(1)
		return nil, false
	}
	putMAC(buf[0:6], mac)
	copy(buf[6:12], g.gwMAC[:])
	binary.BigEndian.PutUint16(buf[12:14], etherTypeIPv4)
	g.toVM[toVMDelivered].Add(1)
	return buf[:EthHeaderLen+len(pkt)], true
}

func (g *Gateway) dropFromVM(c fromVMCounter) Result {
	g.fromVM[c].Add(1)
	return Result{Verdict: Drop}
}

func addrUint32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

func uint32Addr(v uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

func macUint64(mac []byte) uint64 {
	return uint64(mac[0])<<40 | uint64(mac[1])<<32 | uint64(mac[2])<<24 |
		uint64(mac[3])<<16 | uint64(mac[4])<<8 | uint64(mac[5])
}

func putMAC(b []byte, mac uint64) {
	_ = b[5]
	b[0], b[1], b[2] = byte(mac>>40), byte(mac>>32), byte(mac>>24)
	b[3], b[4], b[5] = byte(mac>>16), byte(mac>>8), byte(mac)
}
