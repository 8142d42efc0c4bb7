package node

import (
	"net/netip"
	"time"

	"github.com/ringnet/ringnet/dhcp"
)

// maxVMLease caps the lease time the VM's DHCP client is given, below the
// namespace's: should the node ever lose its address to another claim,
// the VM's next renewal, at most half of this away, is NAKed and it takes
// the new one. Renewals never leave the TAP, so they cost nothing.
const maxVMLease = 10 * time.Minute

// newDHCP makes the server that answers the VM's DHCP client on the TAP:
// it hands out the node's virtual address, the MTU that fits the overlay,
// and the virtual gateway's address as the server's. No router option:
// the gateway answers ARP for the whole virtual subnet, so every address
// in it is on-link for the VM.
func (n *Node) newDHCP() (*dhcp.Server, error) {
	return dhcp.NewServer(dhcp.Config{
		ServerMAC: n.gwMAC,
		ServerIP:  GatewayAddr(n.subnet),
		Subnet:    n.subnet,
		MTU:       n.mtu,
		LeaseTime: min(n.leaseTime(), maxVMLease),
		// The VM gets the node's lease once it is won; until then its
		// client hears nothing and tries again.
		Lease: func(dhcp.ClientID) (netip.Addr, bool) {
			l, ok := n.Lease()
			if ok {
				n.lease.offered(l.IP)
			}
			return l.IP, ok
		},
		Released: func(client dhcp.ClientID, addr netip.Addr, declined bool) {
			if declined {
				// The VM found the address in use on its link: nothing
				// else can hold it there, so say so loudly.
				n.log.Warn("the VM declined its address", "addr", addr, "client", string(client))
				return
			}
			n.log.Info("the VM released its address", "addr", addr, "client", string(client))
		},
	})
}

// dhcpReply hands a frame from the VM to the DHCP server; it reports
// whether the frame was DHCP (and so is done with), writing any answer to
// the VM. vnet is the length of the vnet header in front of frames on this
// TAP (0 without offloads); out has room for it and dhcp.MaxFrameLen.
func (n *Node) dhcpReply(frame []byte, vnet int, out []byte) bool {
	if n.dhcp == nil {
		return false
	}
	reply, handled := n.dhcp.HandleFrame(frame[vnet:], out[vnet:])
	if reply != nil {
		clear(out[:vnet]) // a zero vnet header: the reply is complete
		n.writeVM(out[:vnet+len(reply)])
	}
	return handled
}
