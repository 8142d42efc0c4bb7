package sim

import (
	"fmt"
	"math"
	"slices"
)

// Config is one simulator run.
type Config struct {
	N     int    // nodes to grow the ring to
	Seed  uint64 // every random choice derives from it
	Pairs int    // routes to measure between random pairs
	// FailFrac of the nodes fail at once after the measurements.
	FailFrac float64
	// MaxHealRounds bounds the wait for the ring to heal.
	MaxHealRounds int
}

// Result is what a run measured.
type Result struct {
	N              int
	MeanHops       float64
	P99Hops        float64
	MaxHops        int
	LinksPerNode   float64
	JoinMsgs       float64 // mean over the last tenth of the joins
	HealRounds     int     // rounds until consistent again; -1 if it never was
	RouteFailures  int
	SettleRounds   int // maintenance rounds after the last join
	ConsistentGrow bool
}

// Run grows a ring of cfg.N nodes and measures it.
func Run(cfg Config) (Result, error) {
	if cfg.N < 2 {
		return Result{}, fmt.Errorf("sim: %d nodes: need at least 2", cfg.N)
	}
	nw := New(cfg.Seed)
	res := Result{N: cfg.N}

	// Grow by joins. Each time the ring doubles, one maintenance round
	// lets the nodes already in it redraw far links for the larger N, as
	// nodes do as time passes in a real ring.
	var joinMsgs int64
	var joins int
	nextRound := 16
	for i := range cfg.N {
		m := nw.Join()
		if i >= cfg.N-cfg.N/10 {
			joinMsgs += m
			joins++
		}
		if nw.Len() == nextRound && nw.Len() < cfg.N {
			nw.Round()
			nextRound *= 2
		}
	}
	res.JoinMsgs = float64(joinMsgs) / float64(joins)
	res.ConsistentGrow = nw.Consistent()
	for res.SettleRounds < 3 {
		nw.Round()
		res.SettleRounds++
	}
	if !nw.Consistent() {
		return res, fmt.Errorf("sim: ring of %d not consistent after %d rounds", cfg.N, res.SettleRounds)
	}

	res.LinksPerNode = nw.LinksPerNode()
	hops := make([]int, 0, cfg.Pairs)
	for range cfg.Pairs {
		h, err := nw.Route()
		if err != nil {
			res.RouteFailures++
			continue
		}
		hops = append(hops, h)
	}
	if len(hops) > 0 {
		slices.Sort(hops)
		sum := 0
		for _, h := range hops {
			sum += h
		}
		res.MeanHops = float64(sum) / float64(len(hops))
		res.P99Hops = float64(hops[int(math.Ceil(0.99*float64(len(hops))))-1])
		res.MaxHops = hops[len(hops)-1]
	}

	res.HealRounds = -1
	if cfg.FailFrac > 0 {
		nw.Fail(cfg.FailFrac)
		for r := 1; r <= cfg.MaxHealRounds; r++ {
			nw.Round()
			if nw.Consistent() {
				res.HealRounds = r
				break
			}
		}
	}
	return res, nil
}
