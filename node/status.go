package node

// Status is what `ringnet status --json` prints: a snapshot of a running
// node. docs/operations.md documents each field; fields are only added,
// never renamed, so scripts keep working.
type Status struct {
	Version   string       `json:"version"`
	PeerID    string       `json:"peer_id"`
	Addresses []string     `json:"addresses"` // control multiaddrs
	DataAddr  string       `json:"data_addr"` // UDP data socket
	VirtualIP string       `json:"virtual_ip"`
	Subnet    string       `json:"subnet"`
	TAP       TAPStatus    `json:"tap"`
	Peers     []PeerStatus `json:"peers"`
	// Drops counts datagrams the data path refused, by reason.
	Drops map[string]uint64 `json:"drops"`
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

// PeerStatus is one peer's link.
type PeerStatus struct {
	PeerID    string `json:"peer_id"`
	VirtualIP string `json:"virtual_ip,omitempty"`
	// Link is the kind of link: "static" for a configured peer.
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
