package dhcp

import (
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"math"
	"net"
	"net/netip"
	"slices"
	"sync/atomic"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
)

// Config describes what the server hands out.
type Config struct {
	// ServerMAC is the virtual gateway's MAC: replies come from it, and
	// unicast requests are sent to it.
	ServerMAC net.HardwareAddr
	// ServerIP is the server identifier (option 54) and the source
	// address of replies. Clients renew by unicast to it, so the gateway
	// must answer ARP for it.
	ServerIP netip.Addr
	// Subnet is the virtual subnet (masked), for option 1.
	Subnet netip.Prefix
	// Router is option 3; invalid: omit.
	Router netip.Addr
	// MTU is option 26, the interface MTU that fits the overlay.
	MTU int
	// LeaseTime is option 51, in whole seconds; renewal (58) and
	// rebinding (59) come at 1/2 and 7/8 of it.
	LeaseTime time.Duration
	// DNS is option 6 when set.
	DNS []netip.Addr
	// Domain is option 15 when set.
	Domain string
	// Lease picks the address for a client (its client identifier,
	// option 61, or else its MAC). ok=false: no address: DISCOVER gets no
	// offer, REQUEST a NAK. It is called on the goroutine that reads the
	// TAP, so it must not block; the address must be in Subnet.
	Lease func(client ClientID) (addr netip.Addr, ok bool)
	// Released is told when the client releases or declines its address
	// (may be nil). addr is the address the client names, which need not
	// be the one Lease gives it.
	Released func(client ClientID, addr netip.Addr, declined bool)
}

// ClientID identifies a client: the bytes of its client identifier
// (option 61), or "mac:" and its hardware address in the form
// "52:54:00:12:34:56" when it sends none.
type ClientID string

// macClientIDPrefix starts the ClientID of a client without option 61.
const macClientIDPrefix = "mac:"

// String returns the ID in a printable form: hex for option 61 bytes.
func (c ClientID) String() string {
	if len(c) > len(macClientIDPrefix) && c[:len(macClientIDPrefix)] == macClientIDPrefix {
		return string(c)
	}
	return "id:" + hex.EncodeToString([]byte(c))
}

// Limits on Config.
const (
	minMTU      = 68 // RFC 2132 9.x: the smallest legal interface MTU
	maxMTU      = 0xffff
	minLease    = time.Second
	maxLease    = (math.MaxUint32 - 1) * time.Second // MaxUint32 means infinite
	maxDNS      = 32
	maxDomain   = 255
	maxPrefixV4 = 30 // the subnet must hold more than the VM
)

// Server answers a VM's DHCPv4 messages. It is safe for concurrent use
// if Config's callbacks are.
type Server struct {
	mac             [6]byte
	ip              [4]byte
	subnet          netip.Prefix
	subnetBroadcast [4]byte
	lease           func(ClientID) (netip.Addr, bool)
	released        func(ClientID, netip.Addr, bool)
	// options are the configuration options every OFFER and ACK
	// carries; leaseOptions are the lease times, left out of an ACK to
	// an INFORM.
	options      dhcpv4.Options
	leaseOptions dhcpv4.Options

	counters [numCounters]atomic.Uint64
}

// NewServer checks cfg and returns a server for it.
func NewServer(cfg Config) (*Server, error) {
	if len(cfg.ServerMAC) != 6 || !unicastMAC(cfg.ServerMAC) {
		return nil, fmt.Errorf("dhcp: server MAC %v is not a unicast Ethernet address", cfg.ServerMAC)
	}
	if !cfg.ServerIP.Is4() || cfg.ServerIP.IsUnspecified() || cfg.ServerIP == netip.AddrFrom4(broadcastIP()) {
		return nil, fmt.Errorf("dhcp: server IP %v is not a unicast IPv4 address", cfg.ServerIP)
	}
	if !cfg.Subnet.IsValid() || !cfg.Subnet.Addr().Is4() {
		return nil, fmt.Errorf("dhcp: subnet %v is not an IPv4 prefix", cfg.Subnet)
	}
	if cfg.Subnet != cfg.Subnet.Masked() {
		return nil, fmt.Errorf("dhcp: subnet %v is not masked (%v)", cfg.Subnet, cfg.Subnet.Masked())
	}
	if cfg.Subnet.Bits() > maxPrefixV4 {
		return nil, fmt.Errorf("dhcp: subnet %v is too small", cfg.Subnet)
	}
	if cfg.Router.IsValid() && !cfg.Router.Is4() {
		return nil, fmt.Errorf("dhcp: router %v is not an IPv4 address", cfg.Router)
	}
	if cfg.MTU < minMTU || cfg.MTU > maxMTU {
		return nil, fmt.Errorf("dhcp: MTU %d is outside [%d, %d]", cfg.MTU, minMTU, maxMTU)
	}
	if cfg.LeaseTime < minLease || cfg.LeaseTime > maxLease {
		return nil, fmt.Errorf("dhcp: lease time %v is outside [%v, %v]", cfg.LeaseTime, minLease, maxLease)
	}
	if len(cfg.DNS) > maxDNS {
		return nil, fmt.Errorf("dhcp: %d DNS servers, at most %d fit", len(cfg.DNS), maxDNS)
	}
	for _, a := range cfg.DNS {
		if !a.Is4() {
			return nil, fmt.Errorf("dhcp: DNS server %v is not an IPv4 address", a)
		}
	}
	if len(cfg.Domain) > maxDomain {
		return nil, fmt.Errorf("dhcp: domain %.20q... is longer than %d bytes", cfg.Domain, maxDomain)
	}
	if cfg.Lease == nil {
		return nil, errors.New("dhcp: Lease is nil")
	}

	s := &Server{
		mac:          [6]byte(cfg.ServerMAC),
		ip:           cfg.ServerIP.As4(),
		subnet:       cfg.Subnet,
		lease:        cfg.Lease,
		released:     cfg.Released,
		options:      make(dhcpv4.Options),
		leaseOptions: make(dhcpv4.Options),
	}
	mask := net.CIDRMask(cfg.Subnet.Bits(), 32)
	s.subnetBroadcast = cfg.Subnet.Addr().As4()
	for i := range s.subnetBroadcast {
		s.subnetBroadcast[i] |= ^mask[i]
	}

	s.options.Update(dhcpv4.OptSubnetMask(mask))
	if cfg.Router.IsValid() {
		s.options.Update(dhcpv4.OptRouter(netIP(cfg.Router)))
	}
	if len(cfg.DNS) > 0 {
		ips := make([]net.IP, len(cfg.DNS))
		for i, a := range cfg.DNS {
			ips[i] = netIP(a)
		}
		s.options.Update(dhcpv4.OptDNS(ips...))
	}
	if cfg.Domain != "" {
		s.options.Update(dhcpv4.OptDomainName(cfg.Domain))
	}
	s.options.Update(dhcpv4.OptGeneric(dhcpv4.OptionInterfaceMTU, []byte{byte(cfg.MTU >> 8), byte(cfg.MTU)}))

	lease := cfg.LeaseTime.Truncate(time.Second)
	s.leaseOptions.Update(dhcpv4.OptIPAddressLeaseTime(lease))
	s.leaseOptions.Update(dhcpv4.OptRenewTimeValue((lease / 2).Truncate(time.Second)))
	s.leaseOptions.Update(dhcpv4.OptRebindingTimeValue((lease * 7 / 8).Truncate(time.Second)))
	return s, nil
}

// HandleFrame looks at a frame the VM sent. If it is a DHCP message to a
// server (UDP port 67, IPv4, broadcast or to ServerIP, in a frame to the
// broadcast MAC or ServerMAC), it returns handled=true and, when there is
// an answer, the reply frame built in out (len(out) >= MaxFrameLen always
// fits). Frames that are not DHCP return handled=false untouched: IP
// fragments, non-IPv4, non-UDP, UDP not to port 67, or too short to tell.
// A malformed DHCP message is counted and handled with no reply.
func (s *Server) HandleFrame(frame, out []byte) (reply []byte, handled bool) {
	in, class := s.parseFrame(frame)
	switch class {
	case notDHCP:
		return nil, false
	case malformed:
		s.count(countMalformed)
		return nil, true
	}
	msg, err := dhcpv4.FromBytes(in.payload)
	if err != nil || msg.OpCode != dhcpv4.OpcodeBootRequest {
		s.count(countMalformed)
		return nil, true
	}
	typ := msg.Options.Get(dhcpv4.OptionDHCPMessageType)
	if len(typ) != 1 || !validAddrOption(msg, dhcpv4.OptionServerIdentifier) ||
		!validAddrOption(msg, dhcpv4.OptionRequestedIPAddress) {
		s.count(countMalformed)
		return nil, true
	}
	if !msg.GatewayIPAddr.IsUnspecified() {
		// A relay on a point-to-point TAP is not something to answer.
		s.count(countIgnored)
		return nil, true
	}
	r := request{msg: msg, clientMAC: clientMAC(msg, in.srcMAC)}
	r.client = clientID(msg, r.clientMAC)

	var resp *response
	switch dhcpv4.MessageType(typ[0]) {
	case dhcpv4.MessageTypeDiscover:
		s.count(countDiscovers)
		resp = s.discover(r)
	case dhcpv4.MessageTypeRequest:
		s.count(countRequests)
		resp = s.request(r)
	case dhcpv4.MessageTypeRelease:
		s.count(countReleases)
		s.release(r, false)
	case dhcpv4.MessageTypeDecline:
		s.count(countDeclines)
		s.release(r, true)
	case dhcpv4.MessageTypeInform:
		s.count(countInforms)
		resp = s.inform(r)
	default:
		s.count(countIgnored)
	}
	if resp == nil {
		return nil, true
	}
	f, ok := s.buildFrame(out, resp.dstMAC, resp.dstIP, resp.msg.ToBytes())
	if !ok {
		s.count(countReplyTooLarge)
		return nil, true
	}
	switch resp.msg.MessageType() {
	case dhcpv4.MessageTypeOffer:
		s.count(countOffers)
	case dhcpv4.MessageTypeAck:
		s.count(countAcks)
	case dhcpv4.MessageTypeNak:
		s.count(countNaks)
	}
	return f, true
}

// request is a DHCP message from the VM with what the handlers need.
type request struct {
	msg       *dhcpv4.DHCPv4
	client    ClientID
	clientMAC [6]byte
}

// response is a reply and where it goes.
type response struct {
	msg    *dhcpv4.DHCPv4
	dstMAC [6]byte
	dstIP  [4]byte
}

func (s *Server) discover(r request) *response {
	addr, ok := s.leaseFor(r.client)
	if !ok {
		s.count(countNoLease)
		return nil
	}
	return s.respond(r, dhcpv4.MessageTypeOffer, addr)
}

// request answers a REQUEST in any of its states (RFC 2131 4.3.2).
// SELECTING names our server ID and the offered address; INIT-REBOOT
// names only the address it had; RENEWING and REBINDING name neither and
// put the address in ciaddr.
func (s *Server) request(r request) *response {
	if id, ok := optionAddr(r.msg, dhcpv4.OptionServerIdentifier); ok && id != s.ip {
		// The client chose another server's offer.
		s.count(countIgnored)
		return nil
	}
	want, ok := optionAddr(r.msg, dhcpv4.OptionRequestedIPAddress)
	if !ok {
		want = [4]byte(r.msg.ClientIPAddr.To4())
	}
	addr, ok := s.leaseFor(r.client)
	if !ok || want != addr.As4() {
		return s.respond(r, dhcpv4.MessageTypeNak, netip.Addr{})
	}
	return s.respond(r, dhcpv4.MessageTypeAck, addr)
}

// release passes a RELEASE (address in ciaddr) or DECLINE (address in
// option 50) on to Config.Released.
func (s *Server) release(r request, declined bool) {
	if id, ok := optionAddr(r.msg, dhcpv4.OptionServerIdentifier); ok && id != s.ip {
		s.count(countIgnored)
		return
	}
	var addr [4]byte
	if declined {
		addr, _ = optionAddr(r.msg, dhcpv4.OptionRequestedIPAddress)
	} else {
		addr = [4]byte(r.msg.ClientIPAddr.To4())
	}
	if addr == [4]byte{} {
		s.count(countMalformed)
		return
	}
	if s.released != nil {
		s.released(r.client, netip.AddrFrom4(addr), declined)
	}
}

func (s *Server) inform(r request) *response {
	return s.respond(r, dhcpv4.MessageTypeAck, netip.Addr{})
}

// respond builds the reply of type typ and picks its destination (RFC
// 2131 4.1, with giaddr zero). An OFFER or ACK with a valid yiaddr hands
// out that address with its lease times; an ACK without is the answer to
// an INFORM; a NAK carries no configuration.
func (s *Server) respond(r request, typ dhcpv4.MessageType, yiaddr netip.Addr) *response {
	req := r.msg
	ciaddr := [4]byte(req.ClientIPAddr.To4())
	m := &dhcpv4.DHCPv4{
		OpCode:        dhcpv4.OpcodeBootReply,
		HWType:        req.HWType,
		TransactionID: req.TransactionID,
		Flags:         req.Flags,
		ClientIPAddr:  net.IPv4zero,
		YourIPAddr:    net.IPv4zero,
		ServerIPAddr:  net.IPv4zero,
		GatewayIPAddr: net.IPv4zero,
		ClientHWAddr:  req.ClientHWAddr,
		Options:       make(dhcpv4.Options),
	}
	if typ == dhcpv4.MessageTypeAck {
		m.ClientIPAddr = req.ClientIPAddr
	}
	if typ != dhcpv4.MessageTypeNak {
		maps.Copy(m.Options, s.options)
		if yiaddr.IsValid() {
			m.YourIPAddr = netIP(yiaddr)
			maps.Copy(m.Options, s.leaseOptions)
		}
	}
	m.UpdateOption(dhcpv4.OptMessageType(typ))
	m.UpdateOption(dhcpv4.OptServerIdentifier(net.IP(s.ip[:])))
	if id := req.Options.Get(dhcpv4.OptionClientIdentifier); id != nil {
		m.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionClientIdentifier, slices.Clone(id)))
	}

	resp := &response{msg: m, dstMAC: r.clientMAC, dstIP: ciaddr}
	switch {
	case typ == dhcpv4.MessageTypeNak || req.IsBroadcast():
		// A NAK goes to a client whose address is in doubt; a client
		// that sets the broadcast flag cannot take unicast yet.
		resp.dstMAC, resp.dstIP = broadcastMAC(), broadcastIP()
	case ciaddr == [4]byte{}:
		// No address yet, but the TAP reaches only the VM, and a client
		// that clears the flag takes a frame to its own MAC.
		resp.dstIP = broadcastIP()
	}
	return resp
}

// leaseFor asks Config.Lease for the client's address and checks that it
// can be handed out on the subnet.
func (s *Server) leaseFor(client ClientID) (netip.Addr, bool) {
	addr, ok := s.lease(client)
	if !ok {
		return netip.Addr{}, false
	}
	addr = addr.Unmap()
	if !addr.Is4() || !s.subnet.Contains(addr) || addr == s.subnet.Addr() ||
		addr.As4() == s.subnetBroadcast || addr.As4() == s.ip {
		s.count(countBadLease)
		return netip.Addr{}, false
	}
	return addr, true
}

// clientMAC is where unicast replies go: chaddr if it is an Ethernet
// address, else the frame's source.
func clientMAC(m *dhcpv4.DHCPv4, src [6]byte) [6]byte {
	if m.HWType == iana.HWTypeEthernet && unicastMAC(m.ClientHWAddr) {
		return [6]byte(m.ClientHWAddr)
	}
	return src
}

func clientID(m *dhcpv4.DHCPv4, mac [6]byte) ClientID {
	if id := m.Options.Get(dhcpv4.OptionClientIdentifier); len(id) > 0 {
		return ClientID(id)
	}
	return ClientID(macClientIDPrefix + net.HardwareAddr(mac[:]).String())
}

// optionAddr returns an address option of m; ok=false if it is absent.
func optionAddr(m *dhcpv4.DHCPv4, code dhcpv4.OptionCode) ([4]byte, bool) {
	v := m.Options.Get(code)
	if len(v) != 4 {
		return [4]byte{}, false
	}
	return [4]byte(v), true
}

// validAddrOption reports whether an address option of m is absent or
// four bytes long.
func validAddrOption(m *dhcpv4.DHCPv4, code dhcpv4.OptionCode) bool {
	return !m.Options.Has(code) || len(m.Options.Get(code)) == 4
}

func netIP(a netip.Addr) net.IP {
	b := a.As4()
	return net.IP(b[:])
}
