package dhcp

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	record "github.com/libp2p/go-libp2p-record"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// The lease tests' namespace, subnet and clock.
var (
	testNS     = "test-net"
	testSubnet = netip.MustParsePrefix("10.0.0.0/26")
	testGW     = netip.MustParseAddr("10.0.0.1")
	t0         = time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
)

// testKey returns the Ed25519 key made from seed, the same every run.
func testKey(tb testing.TB, seed byte) crypto.PrivKey {
	tb.Helper()
	k, _, err := crypto.GenerateEd25519Key(bytes.NewReader(bytes.Repeat([]byte{seed}, 32)))
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

// rsaKey is made once: its peer ID is a hash, with no key inside.
var rsaKey = sync.OnceValues(func() (crypto.PrivKey, error) {
	k, _, err := crypto.GenerateRSAKeyPair(2048, rand.Reader)
	return k, err
})

func testRSAKey(tb testing.TB) crypto.PrivKey {
	tb.Helper()
	k, err := rsaKey()
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

func keyID(tb testing.TB, k crypto.PrivKey) peer.ID {
	tb.Helper()
	id, err := peer.IDFromPrivateKey(k)
	if err != nil {
		tb.Fatal(err)
	}
	return id
}

// signed returns k's record on ip, live from issued to expires.
func signed(tb testing.TB, k crypto.PrivKey, ip string, issued, expires time.Time) []byte {
	tb.Helper()
	b, err := SignLease(k, Lease{
		Namespace: testNS,
		IP:        netip.MustParseAddr(ip),
		Holder:    keyID(tb, k),
		Issued:    issued,
		Expires:   expires,
	})
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func parsed(tb testing.TB, b []byte) Lease {
	tb.Helper()
	l, err := ParseLease(b)
	if err != nil {
		tb.Fatal(err)
	}
	return l
}

func fixedClock(t time.Time) func() time.Time { return func() time.Time { return t } }

func testValidator(now time.Time) *LeaseValidator {
	return &LeaseValidator{Now: fixedClock(now), Subnets: map[string]netip.Prefix{testNS: testSubnet}}
}

// rawLease builds records field by field, to make malformed ones.
type rawLease struct {
	version         byte
	ns              string
	ip              [4]byte
	holder          []byte
	issued, expires int64
	proof           []byte
	sig             []byte
	signWith        crypto.PrivKey // if set, sig is made with it
}

func (r rawLease) bytes(tb testing.TB) []byte {
	b := []byte{r.version, byte(len(r.ns))}
	b = append(b, r.ns...)
	b = append(b, r.ip[:]...)
	b = append(b, byte(len(r.holder)))
	b = append(b, r.holder...)
	b = binary.BigEndian.AppendUint64(b, uint64(r.issued))
	b = binary.BigEndian.AppendUint64(b, uint64(r.expires))
	b = binary.BigEndian.AppendUint16(b, uint16(len(r.proof)))
	b = append(b, r.proof...)
	sig := r.sig
	if r.signWith != nil {
		var err error
		sig, err = r.signWith.Sign(append([]byte(leaseSigPrefix), b...))
		if err != nil {
			tb.Fatal(err)
		}
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(sig)))
	return append(b, sig...)
}

func goodRaw(tb testing.TB, k crypto.PrivKey) rawLease {
	return rawLease{
		version:  leaseVersion,
		ns:       testNS,
		ip:       [4]byte{10, 0, 0, 5},
		holder:   []byte(keyID(tb, k)),
		issued:   t0.UnixMilli(),
		expires:  t0.Add(time.Hour).UnixMilli(),
		signWith: k,
	}
}

func TestLeaseKey(t *testing.T) {
	ip := netip.MustParseAddr("10.0.0.5")
	if got, want := LeaseKey("vms", ip), "/lease/vms/10.0.0.5"; got != want {
		t.Errorf("LeaseKey = %q, want %q", got, want)
	}
	if got := LeaseKey("vms", netip.AddrFrom16(ip.As16())); got != "/lease/vms/10.0.0.5" {
		t.Errorf("LeaseKey of a mapped address = %q", got)
	}
	// The DHT's namespaced validator must send lease keys to us.
	ns, _, err := record.SplitKey(LeaseKey("vms.a-1", ip))
	if err != nil || ns != LeaseNamespace {
		t.Errorf("SplitKey = %q, %v; want %q", ns, err, LeaseNamespace)
	}
}

func TestValidateNamespace(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"a", true},
		{"vms", true},
		{"lab-2.example", true},
		{strings.Repeat("x", maxNamespaceLen), true},
		{"", false},
		{strings.Repeat("x", maxNamespaceLen+1), false},
		{"Vms", false},
		{"a/b", false},
		{"a b", false},
		{"a_b", false},
		{"é", false},
	} {
		if err := ValidateNamespace(tc.name); (err == nil) != tc.ok {
			t.Errorf("ValidateNamespace(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

func TestSignParseRoundTrip(t *testing.T) {
	k := testKey(t, 1)
	in := Lease{
		Namespace: testNS,
		IP:        netip.MustParseAddr("10.0.0.5"),
		Holder:    keyID(t, k),
		Issued:    t0.Add(123456789 * time.Nanosecond), // truncated to 123 ms
		Expires:   t0.Add(time.Hour),
	}
	b, err := SignLease(k, in)
	if err != nil {
		t.Fatal(err)
	}
	want := 1 + 1 + len(testNS) + 4 + 1 + len(in.Holder) + 8 + 8 + 2 + 2 + 64
	if len(b) != want {
		t.Errorf("record of %d bytes, want %d", len(b), want)
	}
	l := parsed(t, b)
	if l.Namespace != in.Namespace || l.IP != in.IP || l.Holder != in.Holder {
		t.Errorf("parsed %v, want %v", l, in)
	}
	if !l.Issued.Equal(t0.Add(123*time.Millisecond)) || !l.Expires.Equal(in.Expires) {
		t.Errorf("times %v, %v; want %v, %v", l.Issued, l.Expires, t0.Add(123*time.Millisecond), in.Expires)
	}
	if len(l.Signature) != 64 || !bytes.HasSuffix(b, l.Signature) {
		t.Errorf("signature %x", l.Signature)
	}
	if l.Key() != LeaseKey(testNS, in.IP) {
		t.Errorf("Key = %q", l.Key())
	}
	// A mapped address is the IPv4 one.
	in.IP = netip.AddrFrom16(in.IP.As16())
	b2, err := SignLease(k, in)
	if err != nil || !bytes.Equal(b, b2) {
		t.Errorf("mapped address: %v, same record %v", err, bytes.Equal(b, b2))
	}
}

func TestSignLeaseRefuses(t *testing.T) {
	k := testKey(t, 1)
	good := Lease{Namespace: testNS, IP: netip.MustParseAddr("10.0.0.5"), Holder: keyID(t, k), Issued: t0, Expires: t0.Add(time.Hour)}
	rsa := testRSAKey(t)
	for _, tc := range []struct {
		name string
		key  crypto.PrivKey
		mod  func(*Lease)
	}{
		{"another holder", k, func(l *Lease) { l.Holder = keyID(t, testKey(t, 2)) }},
		{"bad namespace", k, func(l *Lease) { l.Namespace = "Test" }},
		{"no namespace", k, func(l *Lease) { l.Namespace = "" }},
		{"IPv6", k, func(l *Lease) { l.IP = netip.MustParseAddr("fd00::5") }},
		{"no address", k, func(l *Lease) { l.IP = netip.Addr{} }},
		{"hashed peer ID", rsa, func(l *Lease) { l.Holder = keyID(t, rsa) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := good
			tc.mod(&l)
			if b, err := SignLease(tc.key, l); err == nil {
				t.Errorf("signed %x", b)
			}
		})
	}
}

func TestParseLeaseRefuses(t *testing.T) {
	k := testKey(t, 1)
	good := goodRaw(t, k).bytes(t)
	parsed(t, good)
	rsa := testRSAKey(t)
	mod := func(f func(*rawLease)) []byte {
		r := goodRaw(t, k)
		f(&r)
		return r.bytes(t)
	}
	flip := func(i int) []byte {
		b := bytes.Clone(good)
		b[i] ^= 1
		return b
	}
	cases := []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, ErrMalformed},
		{"version 2", mod(func(r *rawLease) { r.version = 2 }), ErrMalformed},
		{"version 0", mod(func(r *rawLease) { r.version = 0 }), ErrMalformed},
		{"trailing byte", append(bytes.Clone(good), 0), ErrMalformed},
		{"too long", append(bytes.Clone(good), make([]byte, MaxLeaseSize)...), ErrMalformed},
		{"empty namespace", mod(func(r *rawLease) { r.ns = "" }), ErrMalformed},
		{"namespace too long", mod(func(r *rawLease) { r.ns = strings.Repeat("a", maxNamespaceLen+1) }), ErrMalformed},
		{"namespace with a slash", mod(func(r *rawLease) { r.ns = "a/b" }), ErrMalformed},
		{"no holder", mod(func(r *rawLease) { r.holder = nil }), ErrMalformed},
		{"holder not a multihash", mod(func(r *rawLease) { r.holder = []byte{0xff, 0xff, 0xff} }), ErrMalformed},
		{"holder too long", mod(func(r *rawLease) { r.holder = bytes.Repeat([]byte{1}, 65) }), ErrMalformed},
		{"no signature", mod(func(r *rawLease) { r.signWith, r.sig = nil, nil }), ErrMalformed},
		{"signature too long", mod(func(r *rawLease) { r.signWith, r.sig = nil, make([]byte, maxSigLen+1) }), ErrMalformed},
		{"address changed", flip(2 + len(testNS) + 3), ErrBadSignature},
		{"expiry changed", flip(len(good) - 2 - 64 - 2 - 1), ErrBadSignature},
		{"signature changed", flip(len(good) - 1), ErrBadSignature},
		{"signed by another key", mod(func(r *rawLease) { r.signWith = testKey(t, 2) }), ErrBadSignature},
		{"signed without the prefix", func() []byte {
			r := goodRaw(t, k)
			r.signWith = nil
			body := r.bytes(t)
			body = body[:len(body)-2]
			r.sig, _ = k.Sign(body)
			return r.bytes(t)
		}(), ErrBadSignature},
		{"hashed peer ID", mod(func(r *rawLease) { r.holder, r.signWith = []byte(keyID(t, rsa)), rsa }), peer.ErrNoPublicKey},
	}
	for i := range good {
		cases = append(cases, struct {
			name string
			b    []byte
			want error
		}{"truncated", good[:i], ErrMalformed})
	}
	for _, tc := range cases {
		l, err := ParseLease(tc.b)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s (%d bytes): got %v, %v; want %v", tc.name, len(tc.b), l, err, tc.want)
		}
	}
}

func TestWins(t *testing.T) {
	ip := netip.MustParseAddr("10.0.0.5")
	a := Lease{IP: ip, Holder: keyID(t, testKey(t, 1))}
	b := Lease{IP: ip, Holder: keyID(t, testKey(t, 2))}
	ha := sha256.Sum256(append([]byte(a.Holder), 10, 0, 0, 5))
	hb := sha256.Sum256(append([]byte(b.Holder), 10, 0, 0, 5))
	want := bytes.Compare(ha[:], hb[:]) < 0
	if Wins(a, b) != want || Wins(b, a) == want {
		t.Errorf("Wins(a, b) = %v, Wins(b, a) = %v; the lower hash is a's: %v", Wins(a, b), Wins(b, a), want)
	}
	if Wins(a, a) {
		t.Error("a lease wins over itself")
	}
	// The address is in the hash: the same two holders do not rank the
	// same on every address.
	flipped := false
	for i := range 32 {
		a.IP = netip.AddrFrom4([4]byte{10, 0, 0, byte(i)})
		b.IP = a.IP
		if Wins(a, b) != want {
			flipped = true
		}
	}
	if !flipped {
		t.Error("one holder wins on all of 32 addresses")
	}
}

// rankedKeys returns n keys ordered by how their leases on ip fare under
// Wins: the first wins over all others.
func rankedKeys(tb testing.TB, ip string, n int) []crypto.PrivKey {
	tb.Helper()
	keys := make([]crypto.PrivKey, n)
	for i := range keys {
		keys[i] = testKey(tb, byte(100+i))
	}
	a := netip.MustParseAddr(ip)
	sort.Slice(keys, func(i, j int) bool {
		return Wins(Lease{IP: a, Holder: keyID(tb, keys[i])}, Lease{IP: a, Holder: keyID(tb, keys[j])})
	})
	return keys
}

func TestLeaseValidatorValidate(t *testing.T) {
	k := testKey(t, 1)
	now := t0
	ip := "10.0.0.5"
	key := LeaseKey(testNS, netip.MustParseAddr(ip))
	v := testValidator(now)
	for _, tc := range []struct {
		name  string
		v     *LeaseValidator
		key   string
		value []byte
		want  error // nil: valid; errAny: any error
	}{
		{"valid", v, key, signed(t, k, ip, now, now.Add(time.Hour)), nil},
		{"issued Skew ahead", v, key, signed(t, k, ip, now.Add(5*time.Second), now.Add(time.Hour)), nil},
		{"MaxLease long", v, key, signed(t, k, ip, now, now.Add(24*time.Hour)), nil},
		{"expires in a millisecond", v, key, signed(t, k, ip, now.Add(-time.Hour), now.Add(time.Millisecond)), nil},
		{"bad signature", v, key, func() []byte {
			b := signed(t, k, ip, now, now.Add(time.Hour))
			b[len(b)-1] ^= 1
			return b
		}(), ErrBadSignature},
		{"garbage", v, key, []byte("lease"), ErrMalformed},
		{"key of another address", v, LeaseKey(testNS, netip.MustParseAddr("10.0.0.6")), signed(t, k, ip, now, now.Add(time.Hour)), errAny},
		{"key of another namespace", v, LeaseKey("other", netip.MustParseAddr(ip)), signed(t, k, ip, now, now.Add(time.Hour)), errAny},
		{"key without the namespace", v, "/" + testNS + "/" + ip, signed(t, k, ip, now, now.Add(time.Hour)), errAny},
		{"expires now", v, key, signed(t, k, ip, now.Add(-time.Hour), now), ErrExpired},
		{"expired", v, key, signed(t, k, ip, now.Add(-time.Hour), now.Add(-time.Minute)), ErrExpired},
		{"issued beyond Skew ahead", v, key, signed(t, k, ip, now.Add(5*time.Second+time.Millisecond), now.Add(time.Hour)), errAny},
		{"too long", v, key, signed(t, k, ip, now, now.Add(24*time.Hour+time.Millisecond)), errAny},
		{"expires at issue", v, key, signed(t, k, ip, now.Add(time.Second), now.Add(time.Second)), errAny},
		{"expires before issue", v, key, signed(t, k, ip, now.Add(time.Second), now.Add(time.Millisecond)), errAny},
		{"outside the subnet", v, LeaseKey(testNS, netip.MustParseAddr("10.0.0.64")), signed(t, k, "10.0.0.64", now, now.Add(time.Hour)), errAny},
		{"network address", v, LeaseKey(testNS, netip.MustParseAddr("10.0.0.0")), signed(t, k, "10.0.0.0", now, now.Add(time.Hour)), errAny},
		{"broadcast address", v, LeaseKey(testNS, netip.MustParseAddr("10.0.0.63")), signed(t, k, "10.0.0.63", now, now.Add(time.Hour)), errAny},
		{"subnet unknown", testValidator(now).withSubnets(nil), LeaseKey(testNS, netip.MustParseAddr("10.0.0.64")), signed(t, k, "10.0.0.64", now, now.Add(time.Hour)), nil},
		{"unspecified", testValidator(now).withSubnets(nil), LeaseKey(testNS, netip.MustParseAddr("0.0.0.0")), signed(t, k, "0.0.0.0", now, now.Add(time.Hour)), errAny},
		{"multicast", testValidator(now).withSubnets(nil), LeaseKey(testNS, netip.MustParseAddr("224.0.0.1")), signed(t, k, "224.0.0.1", now, now.Add(time.Hour)), errAny},
		{"custom Skew", &LeaseValidator{Now: fixedClock(now), Skew: time.Minute}, key, signed(t, k, ip, now.Add(time.Minute), now.Add(time.Hour)), nil},
		{"beyond custom Skew", &LeaseValidator{Now: fixedClock(now), Skew: time.Minute}, key, signed(t, k, ip, now.Add(time.Minute+time.Millisecond), now.Add(time.Hour)), errAny},
		{"custom MaxLease", &LeaseValidator{Now: fixedClock(now), MaxLease: time.Hour}, key, signed(t, k, ip, now, now.Add(time.Hour+time.Millisecond)), errAny},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.v.Validate(tc.key, tc.value)
			switch {
			case tc.want == nil && err != nil:
				t.Errorf("refused: %v", err)
			case tc.want == errAny && err == nil, tc.want != nil && tc.want != errAny && !errors.Is(err, tc.want):
				t.Errorf("got %v, want %v", err, tc.want)
			}
		})
	}
}

// errAny in a test case wants an error, whichever.
var errAny = errors.New("any error")

func (v *LeaseValidator) withSubnets(m map[string]netip.Prefix) *LeaseValidator {
	v.Subnets = m
	return v
}

func TestLeaseValidatorSelect(t *testing.T) {
	const ip = "10.0.0.5"
	key := LeaseKey(testNS, netip.MustParseAddr(ip))
	keys := rankedKeys(t, ip, 2)
	win, lose := keys[0], keys[1]
	now := t0
	v := testValidator(now)
	w1 := signed(t, win, ip, now.Add(-time.Minute), now.Add(time.Hour))
	w2 := signed(t, win, ip, now, now.Add(2*time.Hour))
	l1 := signed(t, lose, ip, now.Add(-time.Hour), now.Add(20*time.Hour))
	wExpired := signed(t, win, ip, now.Add(-2*time.Hour), now.Add(-time.Hour))
	wOther := signed(t, win, "10.0.0.6", now, now.Add(time.Hour))
	for _, tc := range []struct {
		name   string
		values [][]byte
		want   int // -1: an error
	}{
		{"one", [][]byte{w1}, 0},
		{"renewal last", [][]byte{w1, w2}, 1},
		{"renewal first", [][]byte{w2, w1}, 0},
		{"conflict, winner first", [][]byte{w1, l1}, 0},
		{"conflict, winner last", [][]byte{l1, w1}, 1},
		{"conflict and renewal", [][]byte{l1, w1, w2}, 2},
		{"the same record twice", [][]byte{w1, w1}, 0},
		{"invalid ones skipped", [][]byte{[]byte("x"), wExpired, wOther, nil, l1}, 4},
		{"none valid", [][]byte{wExpired, wOther}, -1},
		{"none", nil, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := v.Select(key, tc.values)
			if tc.want < 0 {
				if err == nil {
					t.Errorf("selected %d, want an error", got)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("Select = %d, %v; want %d", got, err, tc.want)
			}
		})
	}

	// Every node picks the same record, whatever order it got them in.
	set := [][]byte{l1, w1, wExpired, signed(t, lose, ip, now, now.Add(21*time.Hour)), w2}
	for range 20 {
		perm := slices.Clone(set)
		for i := range perm {
			j := i + int(randByte(t))%(len(perm)-i)
			perm[i], perm[j] = perm[j], perm[i]
		}
		i, err := v.Select(key, perm)
		if err != nil || !bytes.Equal(perm[i], w2) {
			t.Fatalf("Select picked %d (%v) of a permutation, not the winner's renewal", i, err)
		}
	}
}

func randByte(tb testing.TB) byte {
	var b [1]byte
	if _, err := rand.Read(b[:]); err != nil {
		tb.Fatal(err)
	}
	return b[0]
}

func TestLeaseValidatorAdmit(t *testing.T) {
	const ip = "10.0.0.5"
	keys := rankedKeys(t, ip, 2)
	win, lose := keys[0], keys[1]
	now := t0
	v := testValidator(now)
	in := signed(t, lose, ip, now, now.Add(time.Hour))
	for _, tc := range []struct {
		name               string
		existing, incoming []byte
		want               error // errAny: any error
	}{
		{"nothing stored", nil, in, nil},
		{"another holder's", signed(t, win, ip, now, now.Add(time.Minute)), in, ErrHeld},
		// First come holds, even against a record that would win Select.
		{"another holder's, the winner's incoming", in, signed(t, win, ip, now, now.Add(time.Hour)), ErrHeld},
		{"another holder's, expired", signed(t, win, ip, now.Add(-time.Hour), now), in, nil},
		{"another holder's, issued too far ahead", signed(t, win, ip, now.Add(time.Minute), now.Add(time.Hour)), in, nil},
		{"garbage", []byte("x"), in, nil},
		{"another address's", signed(t, win, "10.0.0.6", now, now.Add(time.Hour)), in, nil},
		{"renewal", signed(t, lose, ip, now.Add(-time.Minute), now.Add(time.Minute)), in, nil},
		{"the same record", in, in, nil},
		{"provisional after a longer lease", signed(t, lose, ip, now.Add(-time.Minute), now.Add(2*time.Hour)), in, ErrStale},
		{"incoming expired", nil, signed(t, lose, ip, now.Add(-time.Hour), now), ErrExpired},
		// The claimant's clock lags ours by a minute: its claim is stale
		// when it arrives, though it has not expired.
		{"incoming issued a minute ago", nil, signed(t, lose, ip, now.Add(-time.Minute), now.Add(time.Hour)), ErrStale},
		{"incoming issued within the skew", nil, signed(t, lose, ip, now.Add(-3*time.Second), now.Add(time.Hour)), nil},
		{"incoming garbage", nil, []byte("x"), ErrMalformed},
		{"incoming outside the subnet", nil, signed(t, lose, "10.0.1.5", now, now.Add(time.Hour)), errAny},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := v.Admit(tc.existing, tc.incoming)
			switch {
			case tc.want == nil && err != nil:
				t.Errorf("refused: %v", err)
			case tc.want == errAny && err == nil, tc.want != nil && tc.want != errAny && !errors.Is(err, tc.want):
				t.Errorf("got %v, want %v", err, tc.want)
			}
		})
	}
}
