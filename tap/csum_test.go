package tap

import (
	"math/rand/v2"
	"testing"
)

// refSum16 is RFC 1071 word by word, the obviously correct way.
func refSum16(b []byte, initial uint16) uint16 {
	sum := uint32(initial)
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return uint16(sum)
}

func TestSum16MatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for n := range 300 {
		for _, fill := range []string{"random", "ones", "zeros"} {
			b := make([]byte, n)
			for i := range b {
				switch fill {
				case "random":
					b[i] = byte(r.Uint32())
				case "ones":
					b[i] = 0xff
				}
			}
			for _, init := range []uint16{0, 1, 0xfffe, 0xffff} {
				if got, want := sum16(b, init), refSum16(b, init); got != want && !(got == 0xffff && want == 0 || got == 0 && want == 0xffff) {
					t.Fatalf("len %d %s init %#x: sum16 %#x, want %#x", n, fill, init, got, want)
				}
			}
		}
	}
}

func BenchmarkSum16(b *testing.B) {
	buf := make([]byte, 1400)
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		sum16(buf, 0)
	}
}
