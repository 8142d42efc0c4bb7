package dhcp

// The claim protocol. A node claims an address for its VM like this:
//
//  1. Read the records the k replicas of the address's key store. If any
//     is another node's live lease, the address is taken: next one.
//  2. Put a provisional record, which expires soon (provisionalLease), so
//     an abandoned claim blocks others only briefly.
//  3. Wait Settle, for claims racing ours to reach the replicas.
//  4. Read the replicas again. Each replica keeps the first live record it
//     stores for an address and refuses other holders' (Admit), so at
//     most one claimant can find its record on a strict majority of them:
//     that one has won. The others go on to their next address.
//  5. Put the full lease, which replicas take as a renewal.
//
// The holder then renews every LeaseTime/3 (Run). When a renewal finds
// that another node's claim prevails (after a partition heals, say), it
// reports ErrLost and the node claims again.

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// LeaseStore is where lease records live: the overlay's DHT in a node,
// an in-memory set of replicas in tests.
type LeaseStore interface {
	// Put stores value under key at the k nodes closest to key. Some may
	// refuse it (see LeaseValidator.Admit); Put fails only when nodes
	// were asked and none stored it.
	Put(ctx context.Context, key string, value []byte) error
	// Replicas asks each of the k nodes closest to key for the record it
	// stores, and returns the records it got (nodes with none are left
	// out) and how many nodes it asked. A node alone in the network asks
	// nobody: asked is 0 and err nil. err is for a store that cannot be
	// asked at all.
	Replicas(ctx context.Context, key string) (values [][]byte, asked int, err error)
}

// ErrLost means another node's claim on the address prevails: the VM must
// be told (NAK) and the node must claim again.
var ErrLost = errors.New("lease lost to another node")

// ErrNoAddress means Claim found no address it could win.
var ErrNoAddress = errors.New("no free address")

// Claim protocol constants.
const (
	// DefaultSettle is how long a claimant waits between putting its
	// provisional record and counting the replicas that hold it.
	DefaultSettle = time.Second
	// provisionalLease bounds how long an abandoned claim blocks an
	// address.
	provisionalLease = 30 * time.Second
	// maxPutRounds bounds how often one address's record is put again
	// while no rival's shows up but too few replicas hold ours.
	maxPutRounds = 3
	// maxClaimAttempts bounds the addresses one Claim reads, so a full
	// /16 does not cost thousands of lookups.
	maxClaimAttempts = 64
	// minRenewSpacing is the least time between two renewals, retries
	// included, so a failing store is not hammered.
	minRenewSpacing = time.Second
	// MinLeaseTime leaves room for three renewals in a lease.
	MinLeaseTime = 3 * minRenewSpacing
)

// ClaimConfig configures a Claimer.
type ClaimConfig struct {
	// Store holds the records.
	Store LeaseStore
	// Key signs our records; its peer ID is the holder and must embed
	// the public key (Ed25519).
	Key crypto.PrivKey
	// Namespace and Subnet are where addresses come from. The subnet
	// must be a masked IPv4 prefix of /30 or shorter.
	Namespace string
	Subnet    netip.Prefix
	// Proof goes into every record: the node's membership in Namespace
	// (its certificate chain), or nothing in an open namespace.
	Proof []byte
	// Reserved addresses are never claimed (the virtual gateway, say).
	// They must be in Subnet.
	Reserved []netip.Addr
	// LeaseTime is the length of a lease, at least MinLeaseTime and at
	// most the validator's MaxLease.
	LeaseTime time.Duration
	// Settle is the wait before counting replicas; 0: DefaultSettle.
	Settle time.Duration
	// Prefer lists addresses to try first, in order: the address from
	// the state directory, then a configured one. Those outside Subnet
	// or reserved are skipped.
	Prefer []netip.Addr
	// Validator checks the records read back; nil: one with Now and
	// Subnets of {Namespace: Subnet}.
	Validator *LeaseValidator
	// Log is for claims won and lost; nil: slog.Default().
	Log *slog.Logger
	// Now is the clock that stamps our records; nil: time.Now.
	Now func() time.Time
}

// Claimer claims and keeps one address for a node. Its methods may be
// called from several goroutines, but one lease wants one Run.
type Claimer struct {
	cfg      ClaimConfig
	id       peer.ID
	v        *LeaseValidator
	log      *slog.Logger
	network  uint32 // the subnet's first address
	hosts    uint64 // addresses between network and broadcast
	reserved map[netip.Addr]bool
}

// NewClaimer checks cfg and returns a Claimer for it.
func NewClaimer(cfg ClaimConfig) (*Claimer, error) {
	if cfg.Store == nil {
		return nil, errors.New("claim: no lease store")
	}
	if cfg.Key == nil {
		return nil, errors.New("claim: no key")
	}
	id, err := peer.IDFromPrivateKey(cfg.Key)
	if err != nil {
		return nil, fmt.Errorf("claim: key: %w", err)
	}
	if _, err := id.ExtractPublicKey(); err != nil {
		return nil, fmt.Errorf("claim: peer ID %v: %w", id, err)
	}
	if err := ValidateNamespace(cfg.Namespace); err != nil {
		return nil, fmt.Errorf("claim: %w", err)
	}
	p := cfg.Subnet
	if !p.IsValid() || !p.Addr().Is4() {
		return nil, fmt.Errorf("claim: subnet %v is not an IPv4 prefix", p)
	}
	if p != p.Masked() {
		return nil, fmt.Errorf("claim: subnet %v is not masked (%v)", p, p.Masked())
	}
	if p.Bits() > maxPrefixV4 {
		return nil, fmt.Errorf("claim: subnet %v has no room for hosts", p)
	}
	if cfg.Settle < 0 {
		return nil, fmt.Errorf("claim: negative settle time %v", cfg.Settle)
	}
	if cfg.Settle == 0 {
		cfg.Settle = DefaultSettle
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	c := &Claimer{
		cfg:      cfg,
		id:       id,
		v:        cfg.Validator,
		log:      cfg.Log,
		network:  binary.BigEndian.Uint32(p.Addr().AsSlice()),
		hosts:    uint64(1)<<(32-p.Bits()) - 2,
		reserved: make(map[netip.Addr]bool),
	}
	if c.v == nil {
		c.v = &LeaseValidator{Now: cfg.Now, Subnets: map[string]netip.Prefix{cfg.Namespace: p}}
	}
	if s, ok := c.v.Subnets[cfg.Namespace]; ok && s.Masked() != p {
		return nil, fmt.Errorf("claim: the validator's subnet %v for %s is not %v", s, cfg.Namespace, p)
	}
	if cfg.LeaseTime < MinLeaseTime || cfg.LeaseTime > c.v.maxLease() {
		return nil, fmt.Errorf("claim: lease time %v is outside [%v, %v]", cfg.LeaseTime, MinLeaseTime, c.v.maxLease())
	}
	if c.log == nil {
		c.log = slog.Default()
	}
	for _, a := range cfg.Reserved {
		a = a.Unmap()
		if !p.Contains(a) {
			return nil, fmt.Errorf("claim: reserved address %v is outside %v", a, p)
		}
		if checkLeaseAddr(a, p) == nil {
			c.reserved[a] = true
		}
	}
	if uint64(len(c.reserved)) >= c.hosts {
		return nil, fmt.Errorf("claim: every address of %v is reserved", p)
	}
	return c, nil
}

// ID returns the peer ID our records name.
func (c *Claimer) ID() peer.ID { return c.id }

// usable reports whether ip may be claimed at all.
func (c *Claimer) usable(ip netip.Addr) bool {
	return checkLeaseAddr(ip, c.cfg.Subnet) == nil && !c.reserved[ip]
}

// Claim finds an address and wins it: first the Prefer addresses, then
// a pseudo-random sequence over the subnet that depends only on our peer
// ID, so a node that restarts tries the same addresses in the same order
// and finds its own record first. It gives up with ErrNoAddress after
// maxClaimAttempts addresses or the whole subnet. A store that cannot be
// read ends the claim with its error.
func (c *Claimer) Claim(ctx context.Context) (Lease, error) {
	tried := make(map[netip.Addr]bool)
	var refused error
	attempt := func(ip netip.Addr) (Lease, bool, error) {
		tried[ip] = true
		return c.try(ctx, ip, &refused)
	}
	for _, ip := range c.cfg.Prefer {
		ip = ip.Unmap()
		if !c.usable(ip) {
			c.log.Info("preferred address not in the subnet or reserved", "addr", ip, "subnet", c.cfg.Subnet)
			continue
		}
		if tried[ip] || len(tried) >= maxClaimAttempts {
			continue
		}
		if l, won, err := attempt(ip); won || err != nil {
			return l, err
		}
	}
	seq := newHostSequence([]byte(c.id), c.hosts)
	for len(tried) < maxClaimAttempts {
		i, ok := seq.next()
		if !ok {
			break
		}
		ip := c.hostAddr(i)
		if tried[ip] || c.reserved[ip] {
			continue
		}
		if l, won, err := attempt(ip); won || err != nil {
			return l, err
		}
	}
	err := fmt.Errorf("claim in %s %v: %w after %d addresses", c.cfg.Namespace, c.cfg.Subnet, ErrNoAddress, len(tried))
	if refused != nil {
		// Replicas that refuse every claim point at our clock or key.
		err = fmt.Errorf("%w; the last claim refused: %w", err, refused)
	}
	return Lease{}, err
}

// try runs the protocol on one address. won=false, err=nil: taken, or
// lost to another claimant. A provisional record no replica stored is
// noted in refused.
func (c *Claimer) try(ctx context.Context, ip netip.Addr, refused *error) (l Lease, won bool, err error) {
	if err := ctx.Err(); err != nil {
		return Lease{}, false, err
	}
	key := LeaseKey(c.cfg.Namespace, ip)
	stages := newStageTimer()
	defer stages.logIfSlow(c.log, ip)
	t, err := c.count(ctx, key)
	stages.done("read")
	if err != nil {
		return Lease{}, false, fmt.Errorf("claim %v: %w", ip, err)
	}
	// A majority holding our record makes the address ours already (we
	// restarted); then a rival's record on a minority is a claim that
	// lost, and blocks nothing.
	if t.others > 0 && !t.majority() {
		c.log.Debug("address taken", "addr", ip, "holder", t.best.Holder)
		return Lease{}, false, nil
	}

	// The replicas can change while we claim (a node joins next to the
	// key and has not seen our record): while no rival shows up, put the
	// record again rather than give the address up.
	for round := 1; ; round++ {
		now := c.cfg.Now()
		prov, err := c.sign(ip, now, now.Add(min(c.cfg.LeaseTime, provisionalLease)), t.mineExpires)
		if err != nil {
			return Lease{}, false, err
		}
		err = c.cfg.Store.Put(ctx, key, prov)
		stages.done("put provisional")
		if err != nil {
			// The replicas may all hold a rival's record by now;
			// counting them tells.
			c.log.Debug("provisional lease not stored", "addr", ip, "err", err)
			*refused = err
		}
		select {
		case <-time.After(c.cfg.Settle):
		case <-ctx.Done():
			return Lease{}, false, ctx.Err()
		}
		stages.done("settle")
		t, err = c.count(ctx, key)
		stages.done("read")
		if err != nil {
			return Lease{}, false, fmt.Errorf("claim %v: %w", ip, err)
		}
		if t.majority() {
			break
		}
		if t.others > 0 || round == maxPutRounds {
			c.log.Debug("claim lost", "addr", ip, "ours", t.mine, "others", t.others, "asked", t.asked)
			return Lease{}, false, nil
		}
	}
	if t.asked == 0 {
		c.log.Warn("no other node to hold the lease: claiming alone", "addr", ip)
	}

	now := c.cfg.Now()
	full, err := c.sign(ip, now, now.Add(c.cfg.LeaseTime), t.mineExpires)
	if err != nil {
		return Lease{}, false, err
	}
	err = c.cfg.Store.Put(ctx, key, full)
	stages.done("put lease")
	if err != nil && t.asked > 0 {
		// Our provisional record holds the address briefly; a new Claim
		// with our key meets it again and finds the address ours.
		return Lease{}, false, fmt.Errorf("claim %v: store lease: %w", ip, err)
	}
	l, err = ParseLease(full)
	if err != nil {
		return Lease{}, false, fmt.Errorf("claim %v: %w", ip, err)
	}
	c.log.Info("address claimed", "addr", ip, "replicas", t.mine, "asked", t.asked, "expires", l.Expires)
	return l, true, nil
}

// Renew extends l, which must be ours, and checks that it still holds.
// It returns the renewed lease, or an error wrapping ErrLost when
// another node's claim prevails: when that node's record is on a strict
// majority of the replicas and ours is not, or when neither is and its
// record Wins over ours. (A holder whose record is on a majority keeps
// the address; so does the winner of a split, so that exactly one of two
// claimants yields.) Other errors are the store's: try again soon.
func (c *Claimer) Renew(ctx context.Context, l Lease) (Lease, error) {
	if l.Holder != c.id || l.Namespace != c.cfg.Namespace {
		return l, fmt.Errorf("renew %v: not our lease", l)
	}
	key := l.Key()
	now := c.cfg.Now()
	rec, err := c.sign(l.IP, now, now.Add(c.cfg.LeaseTime), l.Expires)
	if err != nil {
		return l, err
	}
	putErr := c.cfg.Store.Put(ctx, key, rec)
	t, err := c.count(ctx, key)
	if err != nil {
		return l, fmt.Errorf("renew %v: %w", l.IP, err)
	}
	if !t.majority() && (t.othersMajority() || t.others > 0 && Wins(t.best, l)) {
		return l, fmt.Errorf("renew %v: %w: %v on %d of %d replicas, ours on %d",
			l.IP, ErrLost, t.best.Holder, t.bestCount, t.asked, t.mine)
	}
	renewed, err := ParseLease(rec)
	if err != nil {
		return l, fmt.Errorf("renew %v: %w", l.IP, err)
	}
	// A put refused everywhere is fine when the replicas hold a record
	// of ours that lasts as long (a clock that stepped back); else the
	// lease was not extended.
	if putErr != nil && t.asked > 0 && t.mineExpires.Before(renewed.Expires) {
		return l, fmt.Errorf("renew %v: %w", l.IP, putErr)
	}
	return renewed, nil
}

// Run keeps l, which Claim returned, until ctx is done or the lease is
// lost. It renews every LeaseTime/3, and retries a failed renewal every
// second until it succeeds or the lease expires. It returns the last
// lease it held with ctx's error, or with an error wrapping ErrLost when
// another node prevails or the lease ran out before a renewal got
// through: the caller then tells its VM and claims again. Run blocks
// and starts no goroutines.
func (c *Claimer) Run(ctx context.Context, l Lease) (Lease, error) {
	every := max(c.cfg.LeaseTime/3, minRenewSpacing)
	timer := time.NewTimer(every)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return l, ctx.Err()
		case <-timer.C:
		}
		renewed, err := c.Renew(ctx, l)
		switch {
		case err == nil:
			l = renewed
			timer.Reset(every)
		case errors.Is(err, ErrLost):
			c.log.Warn("lease lost", "addr", l.IP, "err", err)
			return l, err
		case ctx.Err() != nil:
			return l, ctx.Err()
		case !c.cfg.Now().Before(l.Expires):
			return l, fmt.Errorf("renew %v: %w: expired at %v: %w", l.IP, ErrLost, l.Expires, err)
		default:
			c.log.Info("lease renewal failed", "addr", l.IP, "err", err)
			timer.Reset(minRenewSpacing)
		}
	}
}

// sign makes and signs our record on ip. Expires is at least atLeast (a
// record of ours the replicas already hold, which they would not trade
// for an earlier one) as long as the lease stays within MaxLease.
func (c *Claimer) sign(ip netip.Addr, issued, expires, atLeast time.Time) ([]byte, error) {
	if atLeast.After(expires) && atLeast.Sub(issued) <= c.v.maxLease() {
		expires = atLeast
	}
	b, err := SignLease(c.cfg.Key, Lease{
		Namespace: c.cfg.Namespace,
		IP:        ip,
		Holder:    c.id,
		Issued:    issued,
		Expires:   expires,
		Proof:     c.cfg.Proof,
	})
	if err != nil {
		return nil, fmt.Errorf("claim %v: %w", ip, err)
	}
	return b, nil
}

// tally counts the valid records the replicas of one key returned.
type tally struct {
	asked       int
	mine        int       // records naming us
	mineExpires time.Time // the latest of them
	others      int       // records naming other holders
	best        Lease     // the other holders' record that Wins
	bestCount   int       // replicas holding best's holder
	byHolder    map[peer.ID]int
}

func (t *tally) majority() bool { return t.asked == 0 || 2*t.mine > t.asked }

func (t *tally) othersMajority() bool {
	for _, n := range t.byHolder {
		if 2*n > t.asked {
			return true
		}
	}
	return false
}

// count reads the replicas of key and tallies what they hold.
func (c *Claimer) count(ctx context.Context, key string) (tally, error) {
	values, asked, err := c.cfg.Store.Replicas(ctx, key)
	if err != nil {
		return tally{}, fmt.Errorf("read replicas: %w", err)
	}
	// A store that returns more records than it asked nodes has its
	// count wrong; do not let that make a minority look like a majority.
	t := tally{asked: max(asked, len(values)), byHolder: make(map[peer.ID]int)}
	for _, val := range values {
		l, err := c.v.parse(key, val)
		if err != nil {
			continue
		}
		if l.Holder == c.id {
			t.mine++
			if l.Expires.After(t.mineExpires) {
				t.mineExpires = l.Expires
			}
			continue
		}
		t.others++
		t.byHolder[l.Holder]++
		if t.others == 1 || Wins(l, t.best) {
			t.best = l
		}
	}
	t.bestCount = t.byHolder[t.best.Holder]
	return t, nil
}

// hostAddr returns the i-th host address of the subnet (0: the first
// after the network address).
func (c *Claimer) hostAddr(i uint64) netip.Addr {
	return netip.AddrFrom4([4]byte(binary.BigEndian.AppendUint32(nil, c.network+1+uint32(i))))
}

// hostSequence visits 0..n-1 once each, in an order that depends only on
// seed: a Fisher-Yates shuffle done lazily, step i drawing from
// SHA-256(seed || i), with only the swapped positions kept in a map, so
// a /8 costs no more than a /26.
type hostSequence struct {
	seed    []byte
	n, i    uint64
	swapped map[uint64]uint64
}

func newHostSequence(seed []byte, n uint64) *hostSequence {
	return &hostSequence{seed: seed, n: n, swapped: make(map[uint64]uint64)}
}

func (s *hostSequence) next() (uint64, bool) {
	if s.i >= s.n {
		return 0, false
	}
	h := sha256.New()
	h.Write(s.seed)
	h.Write(binary.BigEndian.AppendUint64(nil, s.i))
	// n < 2^32, so the modulo bias is below 2^-32.
	j := s.i + binary.BigEndian.Uint64(h.Sum(nil))%(s.n-s.i)
	vj := s.at(j)
	s.swapped[j] = s.at(s.i)
	delete(s.swapped, s.i) // position i is never read again
	s.i++
	return vj, true
}

func (s *hostSequence) at(i uint64) uint64 {
	if v, ok := s.swapped[i]; ok {
		return v
	}
	return i
}

// slowClaim is how long one address's claim may take before its stages
// are logged.
const slowClaim = 5 * time.Second

// stageTimer times the stages of a claim.
type stageTimer struct {
	start, last time.Time
	stages      []any // name, duration pairs, for the log
}

func newStageTimer() *stageTimer {
	now := time.Now()
	return &stageTimer{start: now, last: now}
}

func (s *stageTimer) done(name string) {
	now := time.Now()
	s.stages = append(s.stages, name, now.Sub(s.last).Round(time.Millisecond))
	s.last = now
}

func (s *stageTimer) logIfSlow(log *slog.Logger, ip netip.Addr) {
	if s.last.Sub(s.start) < slowClaim {
		return
	}
	log.Info("slow claim", append([]any{"addr", ip, "took", s.last.Sub(s.start).Round(time.Millisecond)}, s.stages...)...)
}
