package routing

import (
	"crypto/sha256"
	"math/rand/v2"
	"testing"
)

func TestAddrFromPeer(t *testing.T) {
	id := testID(1)
	sum := sha256.Sum256([]byte(id))
	a := AddrFromPeer(id)
	if b := a.Bytes(); string(b[:]) != string(sum[:AddrLen]) {
		t.Fatalf("AddrFromPeer = %s, want the first 20 bytes of %x", a, sum)
	}
	if got := AddrFromBytes(a.AppendBytes(nil)); got != a {
		t.Fatalf("bytes round trip: %s != %s", got, a)
	}
	if len(a.String()) != 2*AddrLen {
		t.Fatalf("String %q: want %d hex digits", a, 2*AddrLen)
	}
}

func TestAddrArithmetic(t *testing.T) {
	max := Addr{}.Sub(Addr{lo: 1})
	one := Addr{lo: 1}
	tests := []struct {
		name       string
		a, b       Addr
		cw, dist   Addr
		aLessThanB bool
	}{
		{"same", at(5), at(5), Addr{}, Addr{}, false},
		{"forward", at(0x10), at(0x30), at(0x20), at(0x20), true},
		{"backward", at(0x30), at(0x10), at(0xe0), at(0x20), false},
		{"wrap forward", at(0xf0), at(0x10), at(0x20), at(0x20), false},
		{"wrap by one", max, Addr{}, one, one, false},
		{"half way", Addr{}, at(0x80), at(0x80), at(0x80), true},
		{"carry through words", Addr{mid: ^uint64(0), lo: ^uint32(0)}, Addr{hi: 1}, one, one, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.a.Clockwise(tt.b); got != tt.cw {
				t.Errorf("Clockwise = %s, want %s", got, tt.cw)
			}
			if got := tt.a.Distance(tt.b); got != tt.dist {
				t.Errorf("Distance = %s, want %s", got, tt.dist)
			}
			if got := tt.b.Distance(tt.a); got != tt.dist {
				t.Errorf("Distance the other way = %s, want %s", got, tt.dist)
			}
			if got := tt.a.Less(tt.b); got != tt.aLessThanB {
				t.Errorf("Less = %v", got)
			}
		})
	}
}

func TestAddrAddSubInverse(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	rnd := func() Addr { return Addr{hi: r.Uint64(), mid: r.Uint64(), lo: r.Uint32()} }
	for range 10000 {
		a, b := rnd(), rnd()
		if a.Add(b).Sub(b) != a || a.Sub(b).Add(b) != a {
			t.Fatalf("Add and Sub not inverse for %s, %s", a, b)
		}
		if d := a.Distance(b); d.hi>>63 == 1 && d != (Addr{hi: 1 << 63}) {
			t.Fatalf("Distance %s is more than half the ring", d)
		}
		if (a.Cmp(b) < 0) != a.Less(b) {
			t.Fatalf("Cmp and Less disagree on %s, %s", a, b)
		}
	}
}

func TestAddrFraction(t *testing.T) {
	for _, f := range []float64{0, 1e-9, 0.25, 0.5, 0.999} {
		if got := AddrFromFraction(f).Fraction(); got < f*(1-1e-12) || got > f*(1+1e-12) {
			t.Errorf("Fraction(AddrFromFraction(%g)) = %g", f, got)
		}
	}
}

func TestPast(t *testing.T) {
	one := Addr{lo: 1}
	for _, tc := range []struct {
		name    string
		self, a Addr
		want    Addr
	}{
		{"clockwise of self", AddrFromFraction(0.5), AddrFromFraction(0.6), AddrFromFraction(0.6).Add(one)},
		{"anticlockwise of self", AddrFromFraction(0.5), AddrFromFraction(0.4), AddrFromFraction(0.4).Sub(one)},
		{"clockwise across zero", AddrFromFraction(0.9), AddrFromFraction(0.1), AddrFromFraction(0.1).Add(one)},
		{"anticlockwise across zero", AddrFromFraction(0.1), AddrFromFraction(0.9), AddrFromFraction(0.9).Sub(one)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.a.Past(tc.self)
			if got != tc.want {
				t.Errorf("Past = %v, want %v", got, tc.want)
			}
			if !tc.self.Distance(tc.a).Less(tc.self.Distance(got)) {
				t.Errorf("Past(%v) = %v is not farther from self", tc.a, got)
			}
		})
	}
}
