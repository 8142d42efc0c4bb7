package testbed

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/ringnet/ringnet/node"
	"github.com/ringnet/ringnet/routing"
)

// RingConsistent reports whether the ring of the given VMs' nodes is
// consistent: each node's near neighbours, as `ringnet status` reports
// them, are the true nearest of these nodes on each side. It returns the
// statuses it read.
func RingConsistent(ctx context.Context, vms []*VM) (map[*VM]node.Status, error) {
	sts := make(map[*VM]node.Status, len(vms))
	for _, vm := range vms {
		st, err := vm.Status(ctx)
		if err != nil {
			return nil, err
		}
		sts[vm] = st
	}
	sorted := slices.Clone(vms)
	// Ring addresses are fixed-length hex: they sort as numbers.
	slices.SortFunc(sorted, func(a, b *VM) int { return strings.Compare(sts[a].Ring.Addr, sts[b].Ring.Addr) })
	n := len(sorted)
	k := min(routing.NearPerSide, n-1)
	for i, vm := range sorted {
		st := sts[vm]
		var cw, ccw []string
		for j := range k {
			cw = append(cw, sts[sorted[(i+1+j)%n]].PeerID)
			ccw = append(ccw, sts[sorted[(i-1-j+n)%n]].PeerID)
		}
		if !slices.Equal(st.Ring.NearCW, cw) || !slices.Equal(st.Ring.NearCCW, ccw) {
			return sts, fmt.Errorf("%s (%s): near neighbours %v / %v, want %v / %v",
				vm.Name(), st.VirtualIP, st.Ring.NearCW, st.Ring.NearCCW, cw, ccw)
		}
	}
	return sts, nil
}
