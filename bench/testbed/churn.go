package testbed

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ChurnOptions shapes a churn run.
type ChurnOptions struct {
	// Duration is how long nodes are killed and restarted.
	Duration time.Duration
	// Every is how often a node is killed (and, once MaxDown are down,
	// one restarted).
	Every time.Duration
	// MaxDown bounds the nodes down at once.
	MaxDown int
	// Settle is how long a restarted node must have run before pings to
	// or from it count: it is rejoining until then.
	Settle time.Duration
	// PingEvery is how often a ping starts between a random pair.
	PingEvery time.Duration
	Seed      uint64
	Logf      func(format string, args ...any)
}

// ChurnResult counts the pings between nodes that were both up, from
// before each ping started until it ended.
type ChurnResult struct {
	Pings, Delivered, Duplicates int
	Kills, Restarts              int
	// The pings lost, by what the pair looked like when the ping began:
	// LostYoung where one of the two had (re)started less than
	// youngFor before, LostOld the rest; LostFresh, of all of them, those
	// between a pair with no ping delivered since both last started.
	LostYoung, LostOld, LostFresh int
}

// youngFor is how long after its start a node counts as young in
// ChurnResult: its links, leases and sessions are still forming.
const youngFor = 20 * time.Second

// DeliveredPct is the share of pings delivered, in percent.
func (r ChurnResult) DeliveredPct() float64 {
	if r.Pings == 0 {
		return 0
	}
	return 100 * float64(r.Delivered) / float64(r.Pings)
}

// Churn kills and restarts the nodes of vms (virtual addresses vips, no
// prefix) at random while pinging between random pairs of live nodes,
// and returns the pings' fate. Every node runs again when it returns.
func Churn(ctx context.Context, vms []*VM, vips []string, o ChurnOptions) (ChurnResult, error) {
	rng := rand.New(rand.NewPCG(o.Seed, 7))
	var mu sync.Mutex
	since := make([]time.Time, len(vms)) // zero: down
	now := time.Now()
	for i := range since {
		since[i] = now.Add(-o.Settle)
	}
	upPair := func() (int, int, bool) {
		mu.Lock()
		defer mu.Unlock()
		var up []int
		t := time.Now()
		for i, s := range since {
			if !s.IsZero() && t.Sub(s) >= o.Settle {
				up = append(up, i)
			}
		}
		if len(up) < 2 {
			return 0, 0, false
		}
		a := up[rng.IntN(len(up))]
		b := up[rng.IntN(len(up))]
		return a, b, a != b
	}
	stillUp := func(i int, from time.Time) bool {
		mu.Lock()
		defer mu.Unlock()
		return !since[i].IsZero() && !since[i].After(from)
	}
	// lastDelivered is when a ping between each pair last got through.
	lastDelivered := make(map[[2]int]time.Time)
	pair := func(a, b int) [2]int { return [2]int{min(a, b), max(a, b)} }

	var res ChurnResult
	var wg sync.WaitGroup
	runCtx, stop := context.WithTimeout(ctx, o.Duration)
	defer stop()
	// Pingers.
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(o.PingEvery)
		defer t.Stop()
		for {
			select {
			case <-runCtx.Done():
				return
			case <-t.C:
			}
			a, b, ok := upPair()
			if !ok {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				start := time.Now()
				mu.Lock()
				younger := later(since[a], since[b])
				young := start.Sub(younger) < youngFor
				fresh := !lastDelivered[pair(a, b)].After(younger)
				mu.Unlock()
				out, _ := vms[a].Command(ctx, "ping", "-c", "1", "-W", "2", vips[b]).CombinedOutput()
				if !stillUp(a, start) || !stillUp(b, start) {
					return // one of them went down meanwhile: not counted
				}
				r, err := ParsePing(string(out))
				mu.Lock()
				defer mu.Unlock()
				res.Pings++
				switch {
				case err == nil && r.Received > 0:
					res.Delivered++
					lastDelivered[pair(a, b)] = time.Now()
				case young:
					res.LostYoung++
				default:
					res.LostOld++
				}
				if !(err == nil && r.Received > 0) {
					if fresh {
						res.LostFresh++
					}
					if o.Logf != nil {
						o.Logf("churn: lost %s→%s, sent %s; the younger end started %v before, fresh=%v",
							vms[a].Name(), vms[b].Name(), start.Format("15:04:05.000"), start.Sub(younger).Round(100*time.Millisecond), fresh)
					}
				}
				if strings.Contains(string(out), "duplicates") {
					res.Duplicates++
				}
			}()
		}
	}()
	// Killer.
	var err error
	t := time.NewTicker(o.Every)
loop:
	for {
		select {
		case <-runCtx.Done():
			break loop
		case <-t.C:
		}
		mu.Lock()
		var up, down []int
		for i, s := range since {
			if s.IsZero() {
				down = append(down, i)
			} else {
				up = append(up, i)
			}
		}
		mu.Unlock()
		if len(down) >= o.MaxDown || (len(down) > 0 && rng.IntN(2) == 0) {
			i := down[rng.IntN(len(down))]
			if err = vms[i].StartNode(ctx, vms[i].NodeConfig()); err != nil {
				break
			}
			mu.Lock()
			since[i] = time.Now()
			res.Restarts++
			mu.Unlock()
			if o.Logf != nil {
				o.Logf("churn: restarted %s", vms[i].Name())
			}
			continue
		}
		i := up[rng.IntN(len(up))]
		mu.Lock()
		since[i] = time.Time{}
		res.Kills++
		mu.Unlock()
		if err = vms[i].StopNode(syscall.SIGKILL); err != nil {
			break
		}
		if o.Logf != nil {
			o.Logf("churn: killed %s", vms[i].Name())
		}
	}
	t.Stop()
	stop()
	wg.Wait()
	// Everyone back.
	for i, s := range since {
		if s.IsZero() && err == nil {
			if err = vms[i].StartNode(ctx, vms[i].NodeConfig()); err == nil {
				res.Restarts++
			}
		}
	}
	if err != nil {
		return res, fmt.Errorf("churn: %w", err)
	}
	return res, nil
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
