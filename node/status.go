package node

import "time"

// Status is what `ringnet status --json` prints: a snapshot of a running
// node. docs/operations.md documents each field; fields are only added,
// never renamed, so scripts keep working.
type Status struct {
	Version   string   `json:"version"`
	PeerID    string   `json:"peer_id"`
	Addresses []string `json:"addresses"` // control multiaddrs
	DataAddr  string   `json:"data_addr"` // UDP data socket
	// VirtualIP is the VM's address, empty until the lease is won.
	VirtualIP string       `json:"virtual_ip"`
	Subnet    string       `json:"subnet"`
	Namespace string       `json:"namespace"`
	Lease     LeaseStatus  `json:"lease"`
	TAP       TAPStatus    `json:"tap"`
	Ring      RingStatus   `json:"ring"`
	NAT       NATStatus    `json:"nat"`
	Peers     []PeerStatus `json:"peers"`
	// Drops counts datagrams the data path refused, by reason.
	Drops map[string]uint64 `json:"drops"`
	// ControlTraffic is the bytes the control plane's streams carried
	// since the node started, both ways, by libp2p protocol, without
	// transport framing.
	ControlTraffic map[string]uint64 `json:"control_traffic"`
	Memory         MemoryStatus      `json:"memory"`
	// GOMAXPROCS is how many threads run the node's Go code at once.
	GOMAXPROCS int `json:"gomaxprocs"`
}

// LeaseStatus is the VM's lease in the DHT, and how addresses resolve.
type LeaseStatus struct {
	Addr    string `json:"addr,omitempty"`
	Expires string `json:"expires,omitempty"` // RFC 3339
	// Claims counts claims started, Lost leases lost to another node.
	Claims uint64 `json:"claims"`
	Lost   uint64 `json:"lost"`
	// Offers lists the addresses the DHCP server handed the VM, oldest
	// first (at most 16).
	Offers []OfferStatus `json:"offers"`
	// DHT is "server" when this node stores records for others and
	// answers their lookups, "client" when it is behind a NAT and only
	// asks.
	DHT string `json:"dht"`
	// Counters count address lookups and the DHT's refusals.
	Counters map[string]uint64 `json:"counters"`
}

// OfferStatus is one address the VM was offered, and when.
type OfferStatus struct {
	Addr  string    `json:"addr"`
	First time.Time `json:"first"`
	Last  time.Time `json:"last"`
}

// TAPStatus describes the VM's device and the virtual gateway.
type TAPStatus struct {
	Name       string `json:"name"`
	MTU        int    `json:"mtu"`
	GatewayMAC string `json:"gateway_mac"`
	// Offloads says whether the TAP runs with vnet headers and TSO;
	// OffloadSet lists what the kernel accepted ("off" when nothing).
	Offloads   bool              `json:"offloads"`
	OffloadSet string            `json:"offload_set"`
	Counters   map[string]uint64 `json:"counters"`
	// DataPath tells whether the data socket batches with UDP_SEGMENT and
	// UDP_GRO, and how many batches each carried.
	DataPath map[string]uint64 `json:"data_path"`
}

// RingStatus is the node's place in the ring.
type RingStatus struct {
	// Addr is the node's ring address (hex), the hash of its peer ID.
	Addr string `json:"addr"`
	// EstimateN is the node's estimate of the number of nodes.
	EstimateN float64 `json:"estimate_n"`
	FarWanted int     `json:"far_wanted"`
	FarHave   int     `json:"far_have"`
	// NearCW and NearCCW are the near neighbours clockwise and
	// anticlockwise, nearest first, as peer IDs.
	NearCW  []string   `json:"near_cw"`
	NearCCW []string   `json:"near_ccw"`
	Links   []RingLink `json:"links"`
	// OtherConns counts control connections that are not ring links:
	// static peers, nodes answering a request, the DHT.
	OtherConns int               `json:"other_conns"`
	Counters   map[string]uint64 `json:"counters"`
}

// NATStatus is what the node learned with STUN from its ring links.
type NATStatus struct {
	// Public is the data socket's address as peers see it ("" until
	// known).
	Public string `json:"public,omitempty"`
	// Mapping is "none" (no NAT), "endpoint-independent" (one mapping
	// for every destination: hole punching works), "address-dependent"
	// (a mapping per destination) or "unknown".
	Mapping  string            `json:"mapping"`
	Counters map[string]uint64 `json:"counters"`
}

// RingLink is one ring link.
type RingLink struct {
	PeerID string `json:"peer_id"`
	Addr   string `json:"addr"`
	// Kinds is why this node keeps the link ("leaf", "near", "far",
	// "shortcut", joined by "+"; "none" when only the peer wants it);
	// PeerKinds why the peer does.
	Kinds     string  `json:"kinds"`
	PeerKinds string  `json:"peer_kinds"`
	AgeS      float64 `json:"age_s"`
	Remote    string  `json:"remote,omitempty"` // control connection's remote address
}

// PeerStatus is one peer's link.
type PeerStatus struct {
	PeerID    string `json:"peer_id"`
	VirtualIP string `json:"virtual_ip,omitempty"`
	// Link is the kind of link: "static" for a configured peer, "ring"
	// for a ring link (see ring.links for its kinds), "routed" for a
	// peer reached over the ring, "punched" for one reached over a UDP
	// path that hole punching opened, "direct" for a link outside the ring's
	// table (the peer dialled us, or a former ring link that still
	// carries packets).
	Link string `json:"link"`
	// Path is how packets travel: "udp", "stream" (libp2p fallback) or
	// "none" while no session is up.
	Path     string  `json:"path"`
	Endpoint string  `json:"endpoint,omitempty"` // peer's UDP data address
	AEAD     string  `json:"aead,omitempty"`
	Hops     int     `json:"hops"`
	RTTMs    float64 `json:"rtt_ms"`
	// SessionAgeS is how old the current session keys are, in seconds.
	SessionAgeS float64 `json:"session_age_s"`
	Rekeys      uint64  `json:"rekeys"`
	TxPackets   uint64  `json:"tx_packets"`
	TxBytes     uint64  `json:"tx_bytes"`
	RxPackets   uint64  `json:"rx_packets"`
	RxBytes     uint64  `json:"rx_bytes"`
	Drops       uint64  `json:"drops"`
}
