// Package routing holds the ring's pure logic: ring addresses, the routing
// table of near, far and shortcut links, greedy next-hop choice and the
// shortcut policy. It does no I/O, so the simulator in bench/ runs the same
// code as the nodes.
//
// The static two-node links of the first release do not route; the ring
// fills this package.
package routing
