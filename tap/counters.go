package tap

// Gateway counters. Each FromVM call counts exactly one fromVMCounter and
// each ToVM call one toVMCounter, so the counters add up to the frames
// seen. Names are stable: dashboards and tests depend on them.

type fromVMCounter int

const (
	fromVMForwarded fromVMCounter = iota
	fromVMFragmented
	fromVMARPReply
	fromVMFragNeeded
	fromVMFragNeededRateLimited
	fromVMForwardedGSO

	fromVMDropShortFrame
	fromVMDropBadSourceMAC
	fromVMDropIPv6
	fromVMDropVLAN
	fromVMDropUnknownEtherType
	fromVMDropMulticast
	fromVMDropNotForGateway

	fromVMDropARPMalformed
	fromVMDropARPNotRequest
	fromVMDropARPGratuitous
	fromVMDropARPOwnAddress
	fromVMDropARPOutsideSubnet
	fromVMDropARPReserved
	fromVMDropARPNotHeld

	// In the order of ipv4Error, from ipv4Truncated on.
	fromVMDropIPv4Truncated
	fromVMDropIPv4BadVersion
	fromVMDropIPv4BadIHL
	fromVMDropIPv4BadTotalLength
	fromVMDropIPv4BadChecksum

	fromVMDropIPv4BadOptions
	fromVMDropIPv4BadFragmentOffset
	fromVMDropBadSource
	fromVMDropDstOutsideSubnet
	fromVMDropDstOwnAddress
	fromVMDropDstBroadcast
	fromVMDropTooBigNoICMP
	fromVMDropReplyBufSmall
	fromVMDropBadVnetHdr
	fromVMDropGSOTooBig

	numFromVMCounters
)

var fromVMCounterNames = [numFromVMCounters]string{
	fromVMForwarded:             "from_vm_forwarded",
	fromVMFragmented:            "from_vm_fragmented",
	fromVMARPReply:              "from_vm_arp_replies",
	fromVMFragNeeded:            "from_vm_frag_needed_sent",
	fromVMFragNeededRateLimited: "from_vm_frag_needed_rate_limited",
	fromVMForwardedGSO:          "from_vm_forwarded_gso",

	fromVMDropShortFrame:       "from_vm_drop_short_frame",
	fromVMDropBadSourceMAC:     "from_vm_drop_bad_source_mac",
	fromVMDropIPv6:             "from_vm_drop_ipv6",
	fromVMDropVLAN:             "from_vm_drop_vlan",
	fromVMDropUnknownEtherType: "from_vm_drop_unknown_ethertype",
	fromVMDropMulticast:        "from_vm_drop_multicast",
	fromVMDropNotForGateway:    "from_vm_drop_not_for_gateway",

	fromVMDropARPMalformed:     "from_vm_drop_arp_malformed",
	fromVMDropARPNotRequest:    "from_vm_drop_arp_not_request",
	fromVMDropARPGratuitous:    "from_vm_drop_arp_gratuitous",
	fromVMDropARPOwnAddress:    "from_vm_drop_arp_own_address",
	fromVMDropARPOutsideSubnet: "from_vm_drop_arp_outside_subnet",
	fromVMDropARPReserved:      "from_vm_drop_arp_reserved_address",
	fromVMDropARPNotHeld:       "from_vm_drop_arp_not_held",

	fromVMDropIPv4Truncated:      "from_vm_drop_ipv4_truncated",
	fromVMDropIPv4BadVersion:     "from_vm_drop_ipv4_bad_version",
	fromVMDropIPv4BadIHL:         "from_vm_drop_ipv4_bad_ihl",
	fromVMDropIPv4BadTotalLength: "from_vm_drop_ipv4_bad_total_length",
	fromVMDropIPv4BadChecksum:    "from_vm_drop_ipv4_bad_checksum",

	fromVMDropIPv4BadOptions:        "from_vm_drop_ipv4_bad_options",
	fromVMDropIPv4BadFragmentOffset: "from_vm_drop_ipv4_bad_fragment_offset",
	fromVMDropBadSource:             "from_vm_drop_bad_source",
	fromVMDropDstOutsideSubnet:      "from_vm_drop_dst_outside_subnet",
	fromVMDropDstOwnAddress:         "from_vm_drop_dst_own_address",
	fromVMDropDstBroadcast:          "from_vm_drop_dst_broadcast",
	fromVMDropTooBigNoICMP:          "from_vm_drop_too_big_no_icmp",
	fromVMDropReplyBufSmall:         "from_vm_drop_reply_buf_too_small",
	fromVMDropBadVnetHdr:            "from_vm_drop_bad_vnet_hdr",
	fromVMDropGSOTooBig:             "from_vm_drop_gso_too_big",
}

type toVMCounter int

const (
	toVMDelivered toVMCounter = iota

	// In the order of ipv4Error, from ipv4Truncated on.
	toVMDropIPv4Truncated
	toVMDropIPv4BadVersion
	toVMDropIPv4BadIHL
	toVMDropIPv4BadTotalLength
	toVMDropIPv4BadChecksum

	toVMDropNotForVM
	toVMDropBadSource
	toVMDropVMMACUnknown

	numToVMCounters
)

var toVMCounterNames = [numToVMCounters]string{
	toVMDelivered: "to_vm_delivered",

	toVMDropIPv4Truncated:      "to_vm_drop_ipv4_truncated",
	toVMDropIPv4BadVersion:     "to_vm_drop_ipv4_bad_version",
	toVMDropIPv4BadIHL:         "to_vm_drop_ipv4_bad_ihl",
	toVMDropIPv4BadTotalLength: "to_vm_drop_ipv4_bad_total_length",
	toVMDropIPv4BadChecksum:    "to_vm_drop_ipv4_bad_checksum",

	toVMDropNotForVM:     "to_vm_drop_not_for_vm",
	toVMDropBadSource:    "to_vm_drop_bad_source",
	toVMDropVMMACUnknown: "to_vm_drop_vm_mac_unknown",
}

// Counters returns a snapshot of the gateway's counters by name. Every
// counter is present, zero or not; names starting with from_vm_drop_ and
// to_vm_drop_ are drops by reason.
func (g *Gateway) Counters() map[string]uint64 {
	m := make(map[string]uint64, len(g.fromVM)+len(g.toVM))
	for i := range g.fromVM {
		m[fromVMCounterNames[i]] = g.fromVM[i].Load()
	}
	for i := range g.toVM {
		m[toVMCounterNames[i]] = g.toVM[i].Load()
	}
	return m
}
