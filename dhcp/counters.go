package dhcp

// counter names one of the server's counters.
type counter int

const (
	// Messages received, by type; each is also counted as answered or
	// not by the counters below.
	countDiscovers counter = iota
	countRequests
	countReleases
	countDeclines
	countInforms
	// Replies sent.
	countOffers
	countAcks
	countNaks
	// DHCP messages to the server that got no reply.
	countMalformed     // broken frame, headers or DHCP message
	countIgnored       // for another server, relayed, or a type a server does not take
	countNoLease       // DISCOVER while Lease has no address for the client
	countBadLease      // Lease returned an address outside the subnet; treated as none
	countReplyTooLarge // the reply did not fit out or MaxFrameLen

	numCounters
)

func (c counter) String() string {
	switch c {
	case countDiscovers:
		return "discovers"
	case countRequests:
		return "requests"
	case countReleases:
		return "releases"
	case countDeclines:
		return "declines"
	case countInforms:
		return "informs"
	case countOffers:
		return "offers"
	case countAcks:
		return "acks"
	case countNaks:
		return "naks"
	case countMalformed:
		return "malformed"
	case countIgnored:
		return "ignored"
	case countNoLease:
		return "no_lease"
	case countBadLease:
		return "bad_lease"
	case countReplyTooLarge:
		return "reply_too_large"
	}
	return "unknown"
}

// Counters returns a snapshot of the server's counters by their stable
// snake_case names; every name is present, zero or not.
func (s *Server) Counters() map[string]uint64 {
	m := make(map[string]uint64, numCounters)
	for c := range numCounters {
		m[c.String()] = s.counters[c].Load()
	}
	return m
}

func (s *Server) count(c counter) { s.counters[c].Add(1) }
