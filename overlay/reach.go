package overlay

import (
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
)

// Whether other nodes can dial this one decides whether it serves the
// DHT (dht.go). STUN tells for most nodes: a mapping that is the data
// socket's own address means no NAT, any other a NAT that no peer can
// dial through. Where STUN learns nothing (UDP blocked), a dial-me tells:
// a node that answered this node's request could not dial it.

// dialMeMemory is how long a dial-me counts, for a node STUN cannot place.
const dialMeMemory = 10 * time.Minute

// reachState is the evidence, and when to look at it again.
type reachState struct {
	// changed is set when STUN's view changes or a dial-me arrives.
	changed atomic.Bool
	// dialMeAt is when the last dial-me for this node's own request came
	// (Unix ns; 0 for never).
	dialMeAt atomic.Int64
	// recheck is when a dial-me stops counting; owned by the ring loop.
	recheck time.Time
}

// noteDialMe records that a node answering this node's request could not
// dial it.
func (o *Overlay) noteDialMe(now time.Time) {
	o.reach.dialMeAt.Store(now.UnixNano())
	o.reach.changed.Store(true)
}

// updateReach tells the DHT what the node knows of its reachability, when
// that may have changed. It runs in the ring loop.
func (o *Overlay) updateReach(now time.Time) {
	s := &o.reach
	due := !s.recheck.IsZero() && !now.Before(s.recheck)
	if o.dht == nil || (!s.changed.Swap(false) && !due) {
		return
	}
	var dialMeAt time.Time
	if ns := s.dialMeAt.Load(); ns != 0 {
		dialMeAt = time.Unix(0, ns)
	}
	r, recheck := reachability(o.NAT(), dialMeAt, now)
	s.recheck = recheck
	o.dht.setReachability(r)
}

// reachability decides from STUN's view and the last dial-me; recheck is
// when the answer changes by itself (zero for never).
func reachability(st NATStatus, dialMeAt, now time.Time) (r network.Reachability, recheck time.Time) {
	switch {
	case st.Mapping == MappingNone:
		return network.ReachabilityPublic, time.Time{}
	case st.Public.IsValid():
		return network.ReachabilityPrivate, time.Time{}
	case !dialMeAt.IsZero() && now.Sub(dialMeAt) < dialMeMemory:
		return network.ReachabilityPrivate, dialMeAt.Add(dialMeMemory)
	}
	return network.ReachabilityUnknown, time.Time{}
}
