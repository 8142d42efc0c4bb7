package replay

import "testing"

func TestAccept(t *testing.T) {
	const limit = 1 << 40
	var f Filter
	steps := []struct {
		counter uint64
		want    bool
	}{
		{0, true},
		{0, false},
		{1, true},
		{1, false},
		{9, true},
		{8, true},
		{7, true},
		{7, false},
		{WindowSize + 20, true},
		{20, true},  // exactly WindowSize behind: still inside
		{19, false}, // never seen, but one beyond the window
		{WindowSize + 10, true},
		{WindowSize + 10, false},
		{3 * WindowSize, true},
		{WindowSize + 10, false},
		{3*WindowSize - 1, true},
		{3*WindowSize - 1, false},
		{limit - 1, true},
		{limit, false},
		{limit + 1, false},
	}
	for i, s := range steps {
		if got := f.Accept(s.counter, limit); got != s.want {
			t.Fatalf("step %d: Accept(%d) = %v, want %v", i, s.counter, got, s.want)
		}
	}
}

func TestWindowAtLeast8192(t *testing.T) {
	if WindowSize < 8192 {
		t.Fatalf("window %d is smaller than the 8192 packets required", WindowSize)
	}
}

// TestReorderedBurst accepts every counter of a burst delivered in reverse
// order, once, and none a second time.
func TestReorderedBurst(t *testing.T) {
	var f Filter
	const n = 8192
	for c := uint64(n); c > 0; c-- {
		if !f.Accept(c, 1<<60) {
			t.Fatalf("counter %d refused on first arrival", c)
		}
	}
	for c := uint64(n); c > 0; c-- {
		if f.Accept(c, 1<<60) {
			t.Fatalf("counter %d accepted twice", c)
		}
	}
}

func TestReset(t *testing.T) {
	var f Filter
	f.Accept(5, 100)
	f.Reset()
	if !f.Accept(5, 100) {
		t.Fatal("counter refused after Reset")
	}
}
