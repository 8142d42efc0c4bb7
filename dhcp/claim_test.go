package dhcp

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// memStore is a LeaseStore of in-memory replica nodes. Each applies
// Validate and Admit before it stores a record, as the DHT's nodes do, so
// the claim protocol runs here against the same replica rule.
type memStore struct {
	v      *LeaseValidator
	nodes  []*replica
	k      int           // nodes per key; 0: all
	jitter time.Duration // the most a replica takes to answer
	reads  atomic.Int32  // Replicas calls answered
}

type replica struct {
	mu      sync.Mutex
	records map[string][]byte
}

func newMemStore(n, k int, v *LeaseValidator) *memStore {
	s := &memStore{v: v, k: k}
	for range n {
		s.nodes = append(s.nodes, &replica{records: make(map[string][]byte)})
	}
	return s
}

// closest returns the k nodes for key, ranked by a hash of key and node
// number as a stand-in for XOR distance.
func (s *memStore) closest(key string) []*replica {
	if s.k <= 0 || s.k >= len(s.nodes) {
		return s.nodes
	}
	dist := func(i int) [32]byte {
		return sha256.Sum256(binary.BigEndian.AppendUint32([]byte(key), uint32(i)))
	}
	idx := make([]int, len(s.nodes))
	for i := range idx {
		idx[i] = i
	}
	sort.Slice(idx, func(a, b int) bool {
		da, db := dist(idx[a]), dist(idx[b])
		return bytes.Compare(da[:], db[:]) < 0
	})
	out := make([]*replica, s.k)
	for i := range out {
		out[i] = s.nodes[idx[i]]
	}
	return out
}

func (s *memStore) Put(ctx context.Context, key string, value []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	nodes := s.closest(key)
	var errs []error
	for _, r := range nodes {
		s.delay()
		if err := r.put(s.v, key, value); err != nil {
			errs = append(errs, err)
		}
	}
	if len(nodes) > 0 && len(errs) == len(nodes) {
		return fmt.Errorf("no replica stored %s: %w", key, errors.Join(errs...))
	}
	return nil
}

// delay lets racing claimants reach the replicas in different orders.
func (s *memStore) delay() {
	if s.jitter <= 0 {
		runtime.Gosched()
		return
	}
	time.Sleep(rand.N(s.jitter))
}

func (r *replica) put(v *LeaseValidator, key string, value []byte) error {
	if err := v.Validate(key, value); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := v.Admit(r.records[key], value); err != nil {
		return err
	}
	r.records[key] = bytes.Clone(value)
	return nil
}

func (r *replica) get(key string) []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.records[key]
}

func (r *replica) set(key string, value []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.records[key] = value
}

func (s *memStore) Replicas(ctx context.Context, key string) ([][]byte, int, error) {
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	nodes := s.closest(key)
	var values [][]byte
	for _, r := range nodes {
		s.delay()
		if b := r.get(key); b != nil {
			values = append(values, b)
		}
	}
	s.reads.Add(1)
	return values, len(nodes), nil
}

// holders counts the replicas of key holding a valid record, by holder,
// and returns the latest record each holds.
func (s *memStore) holders(key string) (map[peer.ID]int, map[peer.ID]Lease) {
	n := make(map[peer.ID]int)
	latest := make(map[peer.ID]Lease)
	for _, r := range s.closest(key) {
		l, err := s.v.parse(key, r.get(key))
		if err != nil {
			continue
		}
		n[l.Holder]++
		if l.Expires.After(latest[l.Holder].Expires) {
			latest[l.Holder] = l
		}
	}
	return n, latest
}

// clock is a settable clock for claimers and replicas.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func testLog() *slog.Logger { return slog.New(slog.DiscardHandler) }

// claimEnv is a store and a clock that claimers share.
type claimEnv struct {
	store *memStore
	clock *clock
}

func newClaimEnv(n, k int) *claimEnv {
	c := &clock{t: t0}
	v := &LeaseValidator{Now: c.Now, Subnets: map[string]netip.Prefix{testNS: testSubnet}}
	return &claimEnv{store: newMemStore(n, k, v), clock: c}
}

func (e *claimEnv) config(k crypto.PrivKey) ClaimConfig {
	return ClaimConfig{
		Store:     e.store,
		Key:       k,
		Namespace: testNS,
		Subnet:    testSubnet,
		Reserved:  []netip.Addr{testGW},
		LeaseTime: time.Minute,
		Settle:    20 * time.Millisecond,
		Validator: e.store.v,
		Log:       testLog(),
		Now:       e.clock.Now,
	}
}

func (e *claimEnv) claimer(t testing.TB, k crypto.PrivKey, mod func(*ClaimConfig)) *Claimer {
	t.Helper()
	cfg := e.config(k)
	if mod != nil {
		mod(&cfg)
	}
	c, err := NewClaimer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (e *claimEnv) claim(t testing.TB, k crypto.PrivKey, prefer ...string) Lease {
	t.Helper()
	c := e.claimer(t, k, func(cfg *ClaimConfig) {
		for _, a := range prefer {
			cfg.Prefer = append(cfg.Prefer, netip.MustParseAddr(a))
		}
	})
	l, err := c.Claim(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// checkHeld checks that l is the record a strict majority of its
// replicas hold.
func (e *claimEnv) checkHeld(t testing.TB, l Lease) {
	t.Helper()
	n, latest := e.store.holders(l.Key())
	asked := len(e.store.closest(l.Key()))
	if 2*n[l.Holder] <= asked {
		t.Errorf("%v: held by %d of %d replicas (%v)", l, n[l.Holder], asked, n)
	}
	if got := latest[l.Holder]; !got.Expires.Equal(l.Expires) {
		t.Errorf("%v: replicas hold a record to %v", l, got.Expires)
	}
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

func TestClaimPreferred(t *testing.T) {
	e := newClaimEnv(5, 0)
	k := testKey(t, 1)
	// The unusable ones are skipped: outside, the gateway, the network
	// and broadcast addresses.
	l := e.claim(t, k, "10.0.1.7", "10.0.0.1", "10.0.0.0", "10.0.0.63", "10.0.0.40")
	if l.IP != mustAddr("10.0.0.40") {
		t.Fatalf("claimed %v, want 10.0.0.40", l.IP)
	}
	if l.Holder != keyID(t, k) || l.Namespace != testNS || !l.Issued.Equal(t0) || !l.Expires.Equal(t0.Add(time.Minute)) {
		t.Errorf("lease %v issued %v", l, l.Issued)
	}
	e.checkHeld(t, l)
	if n, _ := e.store.holders(l.Key()); n[l.Holder] != 5 {
		t.Errorf("held by %d of 5 replicas", n[l.Holder])
	}
}

func TestClaimTaken(t *testing.T) {
	e := newClaimEnv(5, 0)
	a := e.claim(t, testKey(t, 1), "10.0.0.40")
	b := e.claim(t, testKey(t, 2), "10.0.0.40")
	if b.IP == a.IP || !e.claimer(t, testKey(t, 2), nil).usable(b.IP) {
		t.Fatalf("second claimer got %v, first holds %v", b.IP, a.IP)
	}
	e.checkHeld(t, a)
	e.checkHeld(t, b)

	// Without Prefer, the sequence depends on the key alone.
	e2 := newClaimEnv(5, 0)
	e2.claim(t, testKey(t, 1), "10.0.0.40")
	if again := e2.claim(t, testKey(t, 2)); again.IP != b.IP {
		t.Errorf("the same key claimed %v in an equal network, then %v", b.IP, again.IP)
	}
}

func TestClaimConcurrent(t *testing.T) {
	for _, tc := range []struct{ nodes, k int }{{5, 0}, {9, 5}} {
		t.Run(fmt.Sprintf("%d of %d replicas", tc.k, tc.nodes), func(t *testing.T) {
			e := newClaimEnv(tc.nodes, tc.k)
			e.store.jitter = 300 * time.Microsecond
			const n = 32
			claimers := make([]*Claimer, n)
			for i := range claimers {
				claimers[i] = e.claimer(t, testKey(t, byte(10+i)), func(cfg *ClaimConfig) {
					cfg.Prefer = []netip.Addr{mustAddr("10.0.0.10")}
				})
			}
			leases := make([]Lease, n)
			errs := make([]error, n)
			var wg sync.WaitGroup
			start := make(chan struct{})
			for i, c := range claimers {
				wg.Go(func() {
					<-start
					leases[i], errs[i] = c.Claim(context.Background())
				})
			}
			close(start)
			wg.Wait()

			byIP := make(map[netip.Addr]int)
			for i, l := range leases {
				if errs[i] != nil {
					t.Errorf("claimer %d: %v", i, errs[i])
					continue
				}
				if l.Holder != claimers[i].ID() || !claimers[i].usable(l.IP) {
					t.Errorf("claimer %d: lease %v", i, l)
				}
				if j, ok := byIP[l.IP]; ok {
					t.Errorf("claimers %d and %d both hold %v", j, i, l.IP)
				}
				byIP[l.IP] = i
				e.checkHeld(t, l)
			}
		})
	}
}

func TestClaimRestart(t *testing.T) {
	e := newClaimEnv(5, 0)
	k := testKey(t, 1)
	c := e.claimer(t, k, func(cfg *ClaimConfig) { cfg.LeaseTime = 10 * time.Minute })
	first, err := c.Claim(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	e.claim(t, testKey(t, 2), first.IP.String()) // someone else tries it meanwhile
	e.clock.Add(time.Minute)
	// A rival's claim that lost left its record on a minority.
	rival := signed(t, testKey(t, 3), first.IP.String(), e.clock.Now(), e.clock.Now().Add(time.Minute))
	e.store.nodes[0].set(first.Key(), rival)
	e.store.nodes[1].set(first.Key(), rival)

	// The node comes back with the same key and a shorter lease time: its
	// old record outlasts a provisional one, and must not get in the way.
	again := e.claim(t, k)
	if again.IP != first.IP {
		t.Fatalf("after a restart claimed %v, held %v", again.IP, first.IP)
	}
	if again.Expires.Before(first.Expires) {
		t.Errorf("lease to %v, the replicas hold one to %v", again.Expires, first.Expires)
	}
	e.checkHeld(t, again)
}

func TestClaimAfterExpiry(t *testing.T) {
	e := newClaimEnv(5, 0)
	a := e.claim(t, testKey(t, 1), "10.0.0.20")
	if b := e.claim(t, testKey(t, 2), "10.0.0.20"); b.IP == a.IP {
		t.Fatalf("claimed %v while it was held", b.IP)
	}
	e.clock.Add(a.Expires.Sub(e.clock.Now()))
	c := e.claim(t, testKey(t, 3), "10.0.0.20")
	if c.IP != a.IP {
		t.Fatalf("claimed %v after %v expired", c.IP, a.IP)
	}
	e.checkHeld(t, c)
}

func TestClaimNoAddress(t *testing.T) {
	e := newClaimEnv(3, 0)
	small := netip.MustParsePrefix("10.0.0.0/30")
	e.store.v.Subnets = map[string]netip.Prefix{testNS: small}
	mod := func(cfg *ClaimConfig) {
		cfg.Subnet = small
		cfg.Reserved = []netip.Addr{mustAddr("10.0.0.1")}
	}
	l, err := e.claimer(t, testKey(t, 1), mod).Claim(context.Background())
	if err != nil || l.IP != mustAddr("10.0.0.2") {
		t.Fatalf("claimed %v, %v; want 10.0.0.2", l.IP, err)
	}
	if l, err := e.claimer(t, testKey(t, 2), mod).Claim(context.Background()); !errors.Is(err, ErrNoAddress) {
		t.Fatalf("claimed %v, %v in a full subnet; want ErrNoAddress", l, err)
	}
}

func TestClaimClockAhead(t *testing.T) {
	e := newClaimEnv(3, 0)
	small := netip.MustParsePrefix("10.0.0.0/29")
	e.store.v.Subnets = map[string]netip.Prefix{testNS: small}
	c := e.claimer(t, testKey(t, 1), func(cfg *ClaimConfig) {
		cfg.Subnet = small
		cfg.Now = func() time.Time { return e.clock.Now().Add(time.Minute) }
	})
	l, err := c.Claim(context.Background())
	if !errors.Is(err, ErrNoAddress) || !strings.Contains(err.Error(), "ahead of our clock") {
		t.Fatalf("claimed %v, %v with a clock a minute ahead; want ErrNoAddress, refused", l, err)
	}
}

// takenStore says every address is held by another node.
type takenStore struct {
	other crypto.PrivKey
	now   func() time.Time
	reads atomic.Int32
}

func (s *takenStore) Put(context.Context, string, []byte) error { return nil }

func (s *takenStore) Replicas(_ context.Context, key string) ([][]byte, int, error) {
	s.reads.Add(1)
	ip, err := netip.ParseAddr(strings.TrimPrefix(key, "/lease/"+testNS+"/"))
	if err != nil {
		return nil, 0, err
	}
	b, err := SignLease(s.other, Lease{Namespace: testNS, IP: ip, Holder: peerID(s.other), Issued: s.now(), Expires: s.now().Add(time.Hour)})
	return [][]byte{b}, 3, err
}

func peerID(k crypto.PrivKey) peer.ID {
	id, _ := peer.IDFromPrivateKey(k)
	return id
}

func TestClaimGivesUp(t *testing.T) {
	s := &takenStore{other: testKey(t, 2), now: fixedClock(t0)}
	c, err := NewClaimer(ClaimConfig{
		Store:     s,
		Key:       testKey(t, 1),
		Namespace: testNS,
		Subnet:    netip.MustParsePrefix("10.0.0.0/16"),
		LeaseTime: time.Minute,
		Prefer:    []netip.Addr{mustAddr("10.0.3.3")},
		Log:       testLog(),
		Now:       s.now,
	})
	if err != nil {
		t.Fatal(err)
	}
	if l, err := c.Claim(context.Background()); !errors.Is(err, ErrNoAddress) {
		t.Fatalf("claimed %v, %v; want ErrNoAddress", l, err)
	}
	if n := s.reads.Load(); n != maxClaimAttempts {
		t.Errorf("read %d addresses, want %d", n, maxClaimAttempts)
	}
}

func TestClaimCanceled(t *testing.T) {
	e := newClaimEnv(3, 0)
	ctx, cancel := context.WithCancel(context.Background())
	c := e.claimer(t, testKey(t, 1), func(cfg *ClaimConfig) { cfg.Settle = time.Hour })
	time.AfterFunc(20*time.Millisecond, cancel)
	start := time.Now()
	if l, err := c.Claim(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("claimed %v, %v; want context.Canceled", l, err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %v to stop", d)
	}
}

func TestClaimAlone(t *testing.T) {
	e := newClaimEnv(0, 0)
	l := e.claim(t, testKey(t, 1), "10.0.0.9")
	if l.IP != mustAddr("10.0.0.9") {
		t.Fatalf("claimed %v alone, want 10.0.0.9", l.IP)
	}
}

func TestRenew(t *testing.T) {
	const ip = "10.0.0.5"
	key := LeaseKey(testNS, mustAddr(ip))
	// Ranked by Wins on ip: w wins over ours (a), l and m lose to it.
	ranked := rankedKeys(t, ip, 4)
	holders := map[rune]crypto.PrivKey{'w': ranked[0], 'a': ranked[1], 'l': ranked[2], 'm': ranked[3]}
	for _, tc := range []struct {
		name     string
		replicas string // the holder of each replica's record; '-': none
		lost     bool
	}{
		{"all ours", "aaaaa", false},
		{"ours on a majority, the winner's on the rest", "aaaww", false},
		{"the renewal reaches empty replicas", "aa-ll", false},
		{"nothing held", "-----", false},
		{"a loser's on a majority", "aalll", true},
		{"a loser's on a majority, ours gone", "lll--", true},
		{"the winner's on a majority", "aawww", true},
		{"split, the winner's seen", "aallw", true},
		{"split, ours wins over all seen", "aallm", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newClaimEnv(len(tc.replicas), 0)
			for i, h := range tc.replicas {
				if h != '-' {
					e.store.nodes[i].set(key, signed(t, holders[h], ip, t0.Add(-time.Minute), t0.Add(time.Minute)))
				}
			}
			old := parsed(t, signed(t, holders['a'], ip, t0.Add(-time.Minute), t0.Add(time.Minute)))
			e.clock.Add(10 * time.Second)
			l, err := e.claimer(t, holders['a'], nil).Renew(context.Background(), old)
			if tc.lost {
				if !errors.Is(err, ErrLost) {
					t.Fatalf("renewed %v, %v; want ErrLost", l, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if want := t0.Add(10*time.Second + time.Minute); !l.Expires.Equal(want) || l.IP != old.IP {
				t.Errorf("renewed %v, want it to %v", l, want)
			}
			n, latest := e.store.holders(key)
			if 2*n[old.Holder] <= len(tc.replicas) && !latest[old.Holder].Expires.Equal(l.Expires) {
				t.Errorf("replicas hold %v of ours to %v", n[old.Holder], latest[old.Holder].Expires)
			}
		})
	}
}

// failingStore stores nothing and holds nothing.
type failingStore struct{}

func (failingStore) Put(context.Context, string, []byte) error { return errors.New("unreachable") }

func (failingStore) Replicas(context.Context, string) ([][]byte, int, error) { return nil, 5, nil }

func TestRenewStoreFails(t *testing.T) {
	e := newClaimEnv(5, 0)
	l := e.claim(t, testKey(t, 1))
	c := e.claimer(t, testKey(t, 1), func(cfg *ClaimConfig) { cfg.Store = failingStore{} })
	got, err := c.Renew(context.Background(), l)
	if err == nil || errors.Is(err, ErrLost) {
		t.Fatalf("renewed %v, %v; want a store error", got, err)
	}
	if got.Expires != l.Expires {
		t.Errorf("a failed renewal returned a lease to %v, not the old one to %v", got.Expires, l.Expires)
	}
}

func TestRun(t *testing.T) {
	t.Parallel() // it mostly waits
	// Real time: Run renews every second at this lease time.
	v := &LeaseValidator{Subnets: map[string]netip.Prefix{testNS: testSubnet}}
	s := newMemStore(3, 0, v)
	newClaimer := func(k crypto.PrivKey) *Claimer {
		c, err := NewClaimer(ClaimConfig{
			Store: s, Key: k, Namespace: testNS, Subnet: testSubnet,
			LeaseTime: MinLeaseTime, Settle: 10 * time.Millisecond,
			Prefer: []netip.Addr{mustAddr("10.0.0.30")}, Validator: v, Log: testLog(),
		})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	c := newClaimer(testKey(t, 1))
	l, err := c.Claim(context.Background())
	if err != nil {
		t.Fatal(err)
	}

	type result struct {
		l   Lease
		err error
	}
	reads := s.reads.Load()
	done := make(chan result, 1)
	go func() {
		l, err := c.Run(context.Background(), l)
		done <- result{l, err}
	}()

	// Wait for a renewal to be checked, then hand the address to another
	// node, as a healed partition would.
	deadline := time.Now().Add(5 * time.Second)
	for s.reads.Load() == reads {
		if time.Now().After(deadline) {
			t.Fatal("no renewal within 5 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, latest := s.holders(l.Key()); !latest[c.ID()].Expires.After(l.Expires) {
		t.Fatalf("the replicas hold %v, not a renewal", latest[c.ID()])
	}
	other := testKey(t, 2)
	now := time.Now()
	for _, r := range s.nodes {
		r.set(l.Key(), signed(t, other, "10.0.0.30", now, now.Add(time.Minute)))
	}
	select {
	case r := <-done:
		if !errors.Is(r.err, ErrLost) {
			t.Fatalf("Run returned %v, want ErrLost", r.err)
		}
		if !r.l.Expires.After(l.Expires) {
			t.Errorf("Run returned %v, not the renewed lease", r.l)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not see the loss within 5 s")
	}

	// Run stops with its context.
	c2 := newClaimer(testKey(t, 3))
	l2, err := c2.Claim(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	if _, err := c2.Run(ctx, l2); !errors.Is(err, context.Canceled) {
		t.Errorf("Run returned %v, want context.Canceled", err)
	}
}

func TestNewClaimer(t *testing.T) {
	e := newClaimEnv(1, 0)
	for _, tc := range []struct {
		name string
		mod  func(*ClaimConfig)
	}{
		{"no store", func(c *ClaimConfig) { c.Store = nil }},
		{"no key", func(c *ClaimConfig) { c.Key = nil }},
		{"hashed peer ID", func(c *ClaimConfig) { c.Key = testRSAKey(t) }},
		{"bad namespace", func(c *ClaimConfig) { c.Namespace = "A" }},
		{"no subnet", func(c *ClaimConfig) { c.Subnet = netip.Prefix{} }},
		{"IPv6 subnet", func(c *ClaimConfig) { c.Subnet = netip.MustParsePrefix("fd00::/64") }},
		{"unmasked subnet", func(c *ClaimConfig) { c.Subnet = netip.MustParsePrefix("10.0.0.5/26") }},
		{"/31", func(c *ClaimConfig) { c.Subnet = netip.MustParsePrefix("10.0.0.0/31") }},
		{"another subnet than the validator's", func(c *ClaimConfig) { c.Subnet = netip.MustParsePrefix("10.0.0.0/24") }},
		{"all reserved", func(c *ClaimConfig) {
			c.Subnet = netip.MustParsePrefix("10.0.0.0/30")
			c.Validator = nil
			c.Reserved = []netip.Addr{mustAddr("10.0.0.1"), mustAddr("10.0.0.2")}
		}},
		{"reserved outside", func(c *ClaimConfig) { c.Reserved = []netip.Addr{mustAddr("10.0.1.1")} }},
		{"lease too short", func(c *ClaimConfig) { c.LeaseTime = MinLeaseTime - 1 }},
		{"lease too long", func(c *ClaimConfig) { c.LeaseTime = DefaultMaxLease + 1 }},
		{"negative settle", func(c *ClaimConfig) { c.Settle = -1 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := e.config(testKey(t, 1))
			tc.mod(&cfg)
			if c, err := NewClaimer(cfg); err == nil {
				t.Errorf("accepted %+v", c.cfg)
			}
		})
	}
	// The base config is fine, defaults included.
	cfg := e.config(testKey(t, 1))
	cfg.Settle, cfg.Validator, cfg.Log, cfg.Now = 0, nil, nil, nil
	c, err := NewClaimer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if c.cfg.Settle != DefaultSettle || c.v.Subnets[testNS] != testSubnet || c.hosts != 62 {
		t.Errorf("settle %v, subnets %v, %d hosts", c.cfg.Settle, c.v.Subnets, c.hosts)
	}
}

func TestHostSequence(t *testing.T) {
	for _, n := range []uint64{1, 2, 61, 62, 1000} {
		seen := make([]bool, n)
		s := newHostSequence([]byte("seed"), n)
		var order []uint64
		for {
			i, ok := s.next()
			if !ok {
				break
			}
			if i >= n || seen[i] {
				t.Fatalf("n=%d: %d out of range or seen twice", n, i)
			}
			seen[i] = true
			order = append(order, i)
		}
		if uint64(len(order)) != n {
			t.Fatalf("n=%d: visited %d", n, len(order))
		}
		if len(s.swapped) > int(n) {
			t.Errorf("n=%d: %d swaps kept", n, len(s.swapped))
		}
		same := newHostSequence([]byte("seed"), n)
		other := newHostSequence([]byte("other"), n)
		differs := false
		for _, want := range order {
			i, _ := same.next()
			j, _ := other.next()
			if i != want {
				t.Fatalf("n=%d: the same seed gave another order", n)
			}
			differs = differs || j != want
		}
		if n > 2 && !differs {
			t.Errorf("n=%d: two seeds gave the same order", n)
		}
	}
}
