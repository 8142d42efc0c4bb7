package overlay

import (
	"net/netip"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
)

func TestReachability(t *testing.T) {
	now := time.Now()
	public := netip.MustParseAddrPort("192.0.2.1:4151")
	for _, tc := range []struct {
		name     string
		st       NATStatus
		dialMeAt time.Time
		want     network.Reachability
		recheck  time.Time
	}{
		{"nothing known", NATStatus{Mapping: MappingUnknown}, time.Time{}, network.ReachabilityUnknown, time.Time{}},
		{"no NAT", NATStatus{Public: public, Mapping: MappingNone}, time.Time{}, network.ReachabilityPublic, time.Time{}},
		// STUN outranks a dial-me: a dial that failed once does not make
		// a public node a client.
		{"no NAT, dial-me", NATStatus{Public: public, Mapping: MappingNone}, now, network.ReachabilityPublic, time.Time{}},
		{"one server saw a NAT", NATStatus{Public: public, Mapping: MappingUnknown}, time.Time{}, network.ReachabilityPrivate, time.Time{}},
		{"cone NAT", NATStatus{Public: public, Mapping: MappingIndependent}, time.Time{}, network.ReachabilityPrivate, time.Time{}},
		{"symmetric NAT", NATStatus{Public: public, Mapping: MappingDependent}, time.Time{}, network.ReachabilityPrivate, time.Time{}},
		{"UDP blocked, recent dial-me", NATStatus{Mapping: MappingUnknown}, now.Add(-time.Minute),
			network.ReachabilityPrivate, now.Add(-time.Minute + dialMeMemory)},
		{"UDP blocked, old dial-me", NATStatus{Mapping: MappingUnknown}, now.Add(-dialMeMemory),
			network.ReachabilityUnknown, time.Time{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, recheck := reachability(tc.st, tc.dialMeAt, now)
			if r != tc.want || !recheck.Equal(tc.recheck) {
				t.Errorf("reachability = %v, recheck %v; want %v, %v", r, recheck, tc.want, tc.recheck)
			}
		})
	}
}
