// Package dhcp serves DHCPv4 to the VM on its TAP device.
//
// The server works on raw Ethernet frames, not sockets: the node hands it
// every frame the VM sends, before the virtual gateway sees it, and writes
// back the reply frame it returns. A frame the server does not claim goes
// on to the gateway untouched.
//
// The server holds no leases of its own. Config.Lease says which address
// a client gets (the node claims it in the overlay's DHT), and every
// DISCOVER and REQUEST is answered against it, so the server keeps no
// state between messages beyond its counters.
package dhcp
