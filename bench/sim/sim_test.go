package sim

import (
	"testing"
)

func TestRun(t *testing.T) {
	tests := []struct {
		n         int
		maxMean   float64
		maxLinks  float64
		maxJoinMs float64
	}{
		{n: 2, maxMean: 1, maxLinks: 1, maxJoinMs: 10},
		{n: 50, maxMean: 3, maxLinks: 24, maxJoinMs: 200},
		{n: 500, maxMean: 4, maxLinks: 24, maxJoinMs: 300},
	}
	for _, tt := range tests {
		res, err := Run(Config{N: tt.n, Seed: 1, Pairs: 2000, FailFrac: 0.1, MaxHealRounds: 20})
		if err != nil {
			t.Fatalf("n=%d: %v", tt.n, err)
		}
		t.Logf("%+v", res)
		if res.RouteFailures != 0 {
			t.Errorf("n=%d: %d routes failed", tt.n, res.RouteFailures)
		}
		if !res.ConsistentGrow {
			t.Errorf("n=%d: ring not consistent right after the joins", tt.n)
		}
		if res.MeanHops > tt.maxMean || res.LinksPerNode > tt.maxLinks || res.JoinMsgs > tt.maxJoinMs {
			t.Errorf("n=%d: mean hops %.2f (max %.1f), links %.2f (max %.1f), join msgs %.1f (max %.1f)",
				tt.n, res.MeanHops, tt.maxMean, res.LinksPerNode, tt.maxLinks, res.JoinMsgs, tt.maxJoinMs)
		}
		if tt.n >= 50 && (res.HealRounds < 0 || res.HealRounds > 10) {
			t.Errorf("n=%d: healed after %d rounds", tt.n, res.HealRounds)
		}
	}
}

// TestDeterministic checks that a seed fixes a run, so figures compare
// across runs.
func TestDeterministic(t *testing.T) {
	a, errA := Run(Config{N: 300, Seed: 7, Pairs: 500, FailFrac: 0.1, MaxHealRounds: 20})
	b, errB := Run(Config{N: 300, Seed: 7, Pairs: 500, FailFrac: 0.1, MaxHealRounds: 20})
	if errA != nil || errB != nil || a != b {
		t.Fatalf("two runs with one seed differ:\n%+v %v\n%+v %v", a, errA, b, errB)
	}
}

func TestJoinOneByOneStaysConsistent(t *testing.T) {
	nw := New(3)
	for i := range 200 {
		nw.Join()
		if !nw.Consistent() {
			t.Fatalf("ring inconsistent after join %d", i)
		}
	}
}
