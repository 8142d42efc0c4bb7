// Package routing holds the ring's pure logic: ring addresses, the routing
// table of leaf, near, far and shortcut links, greedy next-hop choice, the
// link policy and the ring's control messages. It does no I/O, so the
// simulator in bench/sim runs the same code as the nodes.
//
// # Addresses
//
// A node's ring address (Addr) is the first 160 bits of SHA-256 over its
// libp2p peer ID, so it follows from the node's key and cannot be chosen.
// Addresses form a ring modulo 2^160; the distance between two addresses
// is the shorter way round. Of two nodes equally far from an address,
// either side of it, the one clockwise of it is nearer: every node ranks
// the same way.
//
// # Links
//
// A link is kept for one or more kinds: Leaf (to a bootstrap node while
// joining; never used for routing), Near (the NearPerSide = 2 nearest
// nodes on each side, which make the ring a ring), Far (about log2(N)/2
// per node, drawn from the harmonic distribution, which make routes short)
// and Shortcut (to heavy traffic partners, added later). Each end records
// what it keeps the link for and what its peer does; the link closes when
// neither keeps it. Links carry the peer's advertised neighbour list.
//
// # Routing
//
// NextHop is greedy over two hops (neighbour of neighbour): the packet
// goes to the link that is, or knows, the node nearest the destination,
// never back where it came from. A destination that lies between a node
// and its nearest neighbour on one side is absent: both nodes around it
// get the packet (the nearer one is Nearest), which is how a joining node
// finds its neighbours and a far-link request finds its target's owner.
//
// # Policy
//
// A node estimates the ring's size N from the spacing of its near
// neighbours, wants ceil(log2(N)/2) far links (so with the ones others make
// to it and its near links it keeps about log2(N)+4), draws their targets
// with density ∝ 1/x for a distance x in [1/N, 1/2] of the ring on either
// side, and redraws a far link when the estimate moves by a factor of 4
// from the one it was drawn for. MaxLinks = 24 caps a node's links of all
// kinds in both directions: above it, AcceptFar refuses far-link requests,
// and Tidy drops this node's far links first, then far links its peers
// made. Near links are never refused.
//
// # Messages
//
// ConnectToMe, NeighbourList and the data packet's Header (wire.go) each
// start with a version byte and bound their lists; a ring address that is
// not the hash of the peer ID it is claimed for, a TTL of zero and an
// oversized list are errors, which Drops counts by cause.
package routing
