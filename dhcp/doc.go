// Package dhcp will serve DHCPv4 to the VM on its TAP device and hold leases
// in the overlay's DHT. Until then a node's virtual address comes from its
// config file.
package dhcp
