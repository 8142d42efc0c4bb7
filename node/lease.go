package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	record "github.com/libp2p/go-libp2p-record"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/routing"

	"github.com/ringnet/ringnet/dhcp"
	"github.com/ringnet/ringnet/overlay"
)

// The VM's address is a lease in the overlay's DHT (dhcp.Claimer): the
// node claims one when it starts, offers it to the VM's DHCP client only
// once the claim is won, renews it, and claims again if it is ever lost.
// The address it held is kept in the state directory, with the time its
// lease runs out. A node that restarts, or is started elsewhere from a
// copy of the directory, puts a lease that has a while to run back to use
// at once and renews it: the replicas keep a live lease's holder and
// refuse everyone else's claims, so the address is still its own, and
// the VM is reachable again as soon as the node is up, not after a claim
// that reads and writes the DHT twice (seconds, and more while nodes
// around it come and go). A lease that ran out, or nearly, is claimed
// again, that address first.

// leaseFile is where the node remembers its address.
const leaseFile = "lease.json"

// resumeMargin is how long a saved lease must still run for the node to
// put it back to use at once: a minute, or a third of a short lease.
func (n *Node) resumeMargin() time.Duration { return min(time.Minute, n.leaseTime()/3) }

// dhtWait bounds how long a node with peers to join waits for the DHT to
// know some before it claims: alone, a claim proves nothing.
const dhtWait = 15 * time.Second

type leaseState struct {
	mu  sync.Mutex
	cur dhcp.Lease // zero until won, and after it is lost
	// changed is closed, and replaced, when cur changes (LeaseWatch).
	changed chan struct{}
	// offers lists the addresses the DHCP server handed the VM, and
	// when, so that an operator (or a test) can check that no address
	// went to two VMs.
	offers []OfferStatus

	claims  atomic.Uint64
	lost    atomic.Uint64
	invalid atomic.Uint64 // DHT records refused (countingValidator)
}

// maxOffers bounds the offer history.
const maxOffers = 16

// offered records that the DHCP server handed ip to the VM now.
func (s *leaseState) offered(ip netip.Addr) {
	now := time.Now().UTC()
	s.mu.Lock()
	defer s.mu.Unlock()
	if k := len(s.offers); k > 0 && s.offers[k-1].Addr == ip.String() {
		s.offers[k-1].Last = now
		return
	}
	if len(s.offers) == maxOffers {
		s.offers = append(s.offers[:0], s.offers[1:]...)
	}
	s.offers = append(s.offers, OfferStatus{Addr: ip.String(), First: now, Last: now})
}

func (s *leaseState) offerHistory() []OfferStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]OfferStatus{}, s.offers...) // [] rather than null in JSON
}

// savedLease is leaseFile's content.
type savedLease struct {
	Namespace string     `json:"namespace"`
	Addr      netip.Addr `json:"addr"`
	// Holder and Expires say whose lease it was and when it runs out;
	// empty in files of nodes from before they were saved.
	Holder  string    `json:"holder,omitempty"`
	Expires time.Time `json:"expires,omitzero"`
}

// Lease returns the VM's current lease; ok is false while there is none.
func (n *Node) Lease() (l dhcp.Lease, ok bool) {
	n.lease.mu.Lock()
	defer n.lease.mu.Unlock()
	return n.lease.cur, n.lease.cur.IP.IsValid()
}

// LeaseWatch returns the VM's current lease (ok false while there is none)
// and a channel that is closed when the lease next changes, so that a
// service manager can be told when the VM's address is ready.
func (n *Node) LeaseWatch() (l dhcp.Lease, ok bool, changed <-chan struct{}) {
	n.lease.mu.Lock()
	defer n.lease.mu.Unlock()
	if n.lease.changed == nil {
		n.lease.changed = make(chan struct{})
	}
	return n.lease.cur, n.lease.cur.IP.IsValid(), n.lease.changed
}

// leaseValidator is the DHT's check of lease records.
func (n *Node) leaseValidator() *dhcp.LeaseValidator {
	return &dhcp.LeaseValidator{Subnets: map[string]netip.Prefix{n.trust.nsID: n.subnet}, Member: n.trust.member}
}

// countingValidator counts the records the DHT refuses: malformed,
// unsigned, expired, or without a valid membership proof.
type countingValidator struct {
	record.Validator
	refused *atomic.Uint64
}

func (v countingValidator) Validate(key string, value []byte) error {
	err := v.Validator.Validate(key, value)
	if err != nil {
		v.refused.Add(1)
	}
	return err
}

// admit is the DHT's replica rule (overlay.DHTConfig.Admit).
func (n *Node) admit(key string, existing, incoming []byte) error {
	if !strings.HasPrefix(key, "/lease/") {
		return nil
	}
	return n.validator.Admit(existing, incoming)
}

// resolve finds the holder of ip in the lease records
// (overlay.Config.Resolve). The best record of the first few replicas to
// answer names the holder when it is a full lease: only a won claim puts
// one. A provisional record may be a claim still being decided, or one
// that lost and lingers on a few replicas: then the holder is the one
// whose record most of the replicas hold, as a claim is won.
func (n *Node) resolve(ctx context.Context, d *overlay.DHT, ip netip.Addr) (peer.ID, error) {
	if d == nil {
		return "", errors.New("no DHT")
	}
	key := dhcp.LeaseKey(n.trust.nsID, ip)
	v, err := d.Get(ctx, key)
	if errors.Is(err, routing.ErrNotFound) {
		return "", overlay.ErrNotHeld
	}
	if err == nil && n.validator.Validate(key, v) == nil {
		if l, err := dhcp.ParseLease(v); err == nil && !l.Provisional() {
			return l.Holder, nil
		}
	}
	values, _, err := d.Replicas(ctx, key)
	if err != nil {
		return "", err
	}
	count := make(map[peer.ID]int)
	best := make(map[peer.ID]dhcp.Lease)
	for _, v := range values {
		if n.validator.Validate(key, v) != nil {
			continue
		}
		l, err := dhcp.ParseLease(v)
		if err != nil {
			continue
		}
		count[l.Holder]++
		best[l.Holder] = l
	}
	var holder peer.ID
	for h, c := range count {
		switch {
		case holder == "", c > count[holder],
			c == count[holder] && dhcp.Wins(best[h], best[holder]):
			holder = h
		}
	}
	if holder == "" {
		return "", overlay.ErrNotHeld
	}
	return holder, nil
}

// keepLease claims the VM's address and keeps it until ctx ends.
func (n *Node) keepLease(ctx context.Context) {
	d := n.ov.DHT()
	saved, haveSaved := n.savedLease()
	var resumed dhcp.Lease
	// Only a lease of this very identity: a clone started from a copy of
	// the directory with a new identity.key must claim, not resume.
	if haveSaved && saved.Holder == n.ov.ID().String() && time.Until(saved.Expires) > n.resumeMargin() {
		resumed = dhcp.Lease{Namespace: saved.Namespace, IP: saved.Addr, Holder: n.ov.ID(), Issued: time.Now(), Expires: saved.Expires}
		n.log.Info("resuming the saved lease", "addr", saved.Addr, "expires", saved.Expires.Format(time.RFC3339))
		n.setLease(resumed)
	}
	if len(n.cfg.Bootstrap) > 0 || len(n.cfg.Peers) > 0 || fileExists(filepath.Join(n.cfg.StateDir, "peers.json")) {
		wait, cancel := context.WithTimeout(ctx, dhtWait)
		for d.RoutingTableSize() == 0 && wait.Err() == nil {
			select {
			case <-wait.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
		cancel()
		if d.RoutingTableSize() == 0 && ctx.Err() == nil {
			n.log.Warn("no DHT peers yet: claiming the address alone", "waited", dhtWait)
		}
	}
	var prefer []netip.Addr
	if haveSaved {
		prefer = append(prefer, saved.Addr)
	}
	if a, ok := n.cfg.PreferredAddr(); ok {
		prefer = append(prefer, a)
	}
	newClaimer := func() (*dhcp.Claimer, error) {
		return dhcp.NewClaimer(dhcp.ClaimConfig{
			Store:     d,
			Key:       n.key,
			Namespace: n.trust.nsID,
			Subnet:    n.subnet,
			Proof:     n.trust.nsProof,
			Reserved:  []netip.Addr{GatewayAddr(n.subnet)},
			LeaseTime: n.leaseTime(),
			Settle:    n.cfg.SettleTime(),
			Prefer:    prefer,
			Validator: n.validator,
			Log:       n.log,
		})
	}
	// keep renews l until it is lost (true) or ctx ends (false).
	keep := func(c *dhcp.Claimer, l dhcp.Lease) bool {
		last, err := n.renewLease(ctx, c, l)
		if ctx.Err() != nil {
			return false
		}
		n.lease.lost.Add(1)
		n.log.Warn("address lost; claiming another", "addr", last.IP, "err", err)
		n.setLease(dhcp.Lease{})
		prefer = nil
		return true
	}
	if resumed.IP.IsValid() {
		c, err := newClaimer()
		if err != nil {
			n.log.Error("cannot renew the saved lease", "err", err)
			return
		}
		if l, ok := n.resumeLease(ctx, c, resumed); ok && !keep(c, l) {
			return
		}
	}
	for ctx.Err() == nil {
		c, err := newClaimer()
		if err != nil {
			n.log.Error("cannot claim an address", "err", err)
			return
		}
		n.lease.claims.Add(1)
		start := time.Now()
		l, err := c.Claim(ctx)
		if err != nil {
			if ctx.Err() == nil {
				n.log.Warn("address claim failed; trying again", "err", err)
				sleep(ctx, 5*time.Second)
			}
			continue
		}
		n.log.Info("address claimed", "addr", l.IP, "namespace", l.Namespace, "expires", l.Expires.Format(time.RFC3339),
			"took", time.Since(start).Round(time.Millisecond))
		n.setLease(l)
		if !keep(c, l) {
			return
		}
	}
}

// resumeLease renews l, the saved lease already back in use, until that
// succeeds (true), or the lease is lost or about to run out, when the
// node stops using it and claims afresh (false).
func (n *Node) resumeLease(ctx context.Context, c *dhcp.Claimer, l dhcp.Lease) (dhcp.Lease, bool) {
	start := time.Now()
	for {
		renewed, err := c.Renew(ctx, l)
		switch {
		case err == nil:
			n.log.Info("saved lease renewed", "addr", renewed.IP, "expires", renewed.Expires.Format(time.RFC3339),
				"took", time.Since(start).Round(time.Millisecond))
			n.setLease(renewed)
			return renewed, true
		case ctx.Err() != nil:
			return l, false
		case errors.Is(err, dhcp.ErrLost):
			n.lease.lost.Add(1)
			n.log.Warn("the saved lease is another node's now; claiming afresh", "addr", l.IP, "err", err)
			n.setLease(dhcp.Lease{})
			return l, false
		case time.Until(l.Expires) < n.resumeMargin():
			n.log.Warn("the saved lease could not be renewed before it ran out; claiming afresh", "addr", l.IP, "err", err)
			n.setLease(dhcp.Lease{})
			return l, false
		}
		n.log.Info("renewing the saved lease failed; trying again", "addr", l.IP, "err", err)
		sleep(ctx, 2*time.Second)
	}
}

// renewLease keeps l until ctx ends or it is lost. It renews every third
// of the lease time and, while the DHT knows fewer nodes than a record
// has replicas, whenever it has come to know more: a lease claimed by
// the first node of a ring must reach the nodes that join it.
func (n *Node) renewLease(ctx context.Context, c *dhcp.Claimer, l dhcp.Lease) (dhcp.Lease, error) {
	d := n.ov.DHT()
	every := n.leaseTime() / 3
	last, known := time.Now(), d.RoutingTableSize()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return l, ctx.Err()
		case <-tick.C:
		}
		now := time.Now()
		grown := known < d.BucketSize() && d.RoutingTableSize() > known && now.Sub(last) >= 5*time.Second
		if now.Sub(last) < every && !grown {
			continue
		}
		k := d.RoutingTableSize()
		renewed, err := c.Renew(ctx, l)
		switch {
		case err == nil:
			l, last, known = renewed, now, k
			n.setLease(l)
		case errors.Is(err, dhcp.ErrLost):
			return l, err
		case ctx.Err() != nil:
			return l, ctx.Err()
		case !now.Before(l.Expires):
			return l, fmt.Errorf("renew %v: lease expired: %w", l.IP, err)
		default:
			n.log.Info("lease renewal failed; trying again", "addr", l.IP, "err", err)
		}
	}
}

// leaseTime is the namespace's lease time: its certificate's in a closed
// namespace, else tap.lease_time.
func (n *Node) leaseTime() time.Duration {
	if !n.trust.nsOpen && n.trust.nsCert.LeaseTime > 0 {
		return n.trust.nsCert.LeaseTime
	}
	return n.cfg.LeaseDuration()
}

// setLease makes l the VM's address (the zero Lease: none).
func (n *Node) setLease(l dhcp.Lease) {
	n.lease.mu.Lock()
	n.lease.cur = l
	if n.lease.changed != nil {
		close(n.lease.changed)
		n.lease.changed = nil
	}
	n.lease.mu.Unlock()
	var addrs []netip.Addr
	var pfx netip.Prefix
	if l.IP.IsValid() {
		addrs = []netip.Addr{l.IP}
		pfx = netip.PrefixFrom(l.IP, n.subnet.Bits())
	}
	if err := n.gw.SetVMAddr(l.IP); err != nil {
		n.log.Error("gateway address", "err", err)
	}
	n.ov.SetVirtualAddrs(addrs)
	if *n.cfg.TAP.ConfigureAddress {
		if d, ok := n.dev.(interface{ SetAddr(netip.Prefix) error }); ok {
			if err := d.SetAddr(pfx); err != nil {
				n.log.Error("TAP address", "err", err)
			}
		}
	}
	if l.IP.IsValid() {
		n.saveLease(l)
	}
}

func (n *Node) savedLease() (savedLease, bool) {
	b, err := os.ReadFile(filepath.Join(n.cfg.StateDir, leaseFile))
	if err != nil {
		return savedLease{}, false
	}
	var s savedLease
	if err := json.Unmarshal(b, &s); err != nil || s.Namespace != n.trust.nsID || !n.subnet.Contains(s.Addr) {
		n.log.Info("ignoring the saved lease", "file", leaseFile, "err", err)
		return savedLease{}, false
	}
	return s, true
}

func (n *Node) saveLease(l dhcp.Lease) {
	b, _ := json.Marshal(savedLease{Namespace: n.trust.nsID, Addr: l.IP, Holder: l.Holder.String(), Expires: l.Expires.UTC()})
	path := filepath.Join(n.cfg.StateDir, leaseFile)
	tmp := path + ".tmp"
	err := os.WriteFile(tmp, b, 0o600)
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		n.log.Warn("cannot save the lease: a restart may get another address", "err", err)
	}
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// LeaseInfo is one lease of the namespace that the node can see.
type LeaseInfo struct {
	Addr    string `json:"addr"`
	Holder  string `json:"holder"`
	Expires string `json:"expires,omitempty"` // RFC 3339; empty for a binding
	// Seen says how the node knows it: "own" (its VM's), "replica" (it
	// stores the record for the DHT), "bound" (it sends to the address).
	Seen string `json:"seen"`
}

// Leases lists the namespace's leases the node can see: its own, the
// records it stores as a DHT replica, and the addresses it sends to.
func (n *Node) Leases(ctx context.Context) []LeaseInfo {
	var out []LeaseInfo
	seen := make(map[string]bool)
	if l, ok := n.Lease(); ok {
		out = append(out, LeaseInfo{Addr: l.IP.String(), Holder: l.Holder.String(),
			Expires: l.Expires.UTC().Format(time.RFC3339), Seen: "own"})
		seen[l.IP.String()] = true
	}
	values, err := n.ov.DHT().LocalRecords(ctx, dhcp.LeaseNamespace)
	if err != nil {
		n.log.Warn("listing lease records", "err", err)
	}
	for _, v := range values {
		l, err := dhcp.ParseLease(v)
		if err != nil || l.Namespace != n.trust.nsID || n.validator.Validate(l.Key(), v) != nil || seen[l.IP.String()] {
			continue
		}
		seen[l.IP.String()] = true
		out = append(out, LeaseInfo{Addr: l.IP.String(), Holder: l.Holder.String(),
			Expires: l.Expires.UTC().Format(time.RFC3339), Seen: "replica"})
	}
	for a, id := range n.ov.Bindings() {
		if !seen[a.String()] {
			seen[a.String()] = true
			out = append(out, LeaseInfo{Addr: a.String(), Holder: id.String(), Seen: "bound"})
		}
	}
	slices.SortFunc(out, func(a, b LeaseInfo) int {
		return netip.MustParseAddr(a.Addr).Compare(netip.MustParseAddr(b.Addr))
	})
	return out
}
