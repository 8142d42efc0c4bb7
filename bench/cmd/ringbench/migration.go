package main

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"syscall"
	"time"

	"github.com/ringnet/ringnet/bench/testbed"
	"github.com/ringnet/ringnet/node"
)

// migration measures how long a TCP stream through ringnet stalls when its
// sender's VM moves, live, from one NATed site to another: runs moves, each
// in the middle of an iperf3 stream, alternating between the two sites.
// The gap is the longer of two views of the stall: the longest run of the
// receiver's 0.1 s iperf3 intervals with nothing in them, and the longest
// run of unanswered pings sent every 10 ms beside the stream (so its
// resolution is 10 ms). Lost bytes are those sent but never received.
func migration(ctx context.Context, opts testbed.Options, base node.Config, runs int) error {
	bed, err := testbed.New(ctx, opts)
	if err != nil {
		return err
	}
	defer bed.Close()
	var sites [2]*testbed.Site
	for i := range sites {
		if sites[i], err = bed.AddSite(ctx, "nat"+strconv.Itoa(i+1), testbed.NATCone); err != nil {
			return err
		}
	}
	public, err := bed.AddSite(ctx, "pub", testbed.NATNone)
	if err != nil {
		return err
	}
	a, err := bed.AddVM(ctx, sites[0], "a")
	if err != nil {
		return err
	}
	b, err := bed.AddVM(ctx, public, "b")
	if err != nil {
		return err
	}
	peerB, err := b.PeerEntry(ctx)
	if err != nil {
		return err
	}
	cfgB := base
	cfgB.TAP.Address = vipB + "/16"
	if err := b.StartNode(ctx, cfgB); err != nil {
		return err
	}
	cfgA := base
	cfgA.TAP.Address = vipA + "/16"
	cfgA.Peers = []node.Peer{peerB}
	if err := a.StartNode(ctx, cfgA); err != nil {
		return err
	}
	if err := a.WaitReachable(ctx, vipB); err != nil {
		return err
	}
	var gaps []float64
	var lost uint64
	for i := range runs {
		srv, err := b.Start("iperf3", "-s", "-1", "-J", "-i", "0.1")
		if err != nil {
			return err
		}
		time.Sleep(300 * time.Millisecond)
		client, err := a.Start("iperf3", "-c", vipB, "-J", "-t", "6", "-i", "0.1", "-b", "300M", "--get-server-output")
		if err != nil {
			return err
		}
		pinger, err := a.Start("ping", "-i", "0.01", "-c", "400", "-W", "1", vipB)
		if err != nil {
			return err
		}
		time.Sleep(2 * time.Second)
		to := sites[(i+1)%2]
		if err := bed.MoveVM(ctx, a, to); err != nil {
			return err
		}
		werr := client.Wait(ctx)
		srv.Stop(syscall.SIGTERM, time.Second)
		pinger.Wait(ctx)
		pingGap := longestPingGap(pinger.Output(), 400, 10*time.Millisecond)
		if werr != nil {
			return fmt.Errorf("run %d: iperf3 across the move: %w\n%s", i+1, werr, client.Output())
		}
		out := []byte(client.Output())
		r, err := testbed.ParseIperf3(out)
		if err != nil {
			return fmt.Errorf("run %d: %w", i+1, err)
		}
		gap, err := testbed.ServerGap(out)
		if err != nil {
			return fmt.Errorf("run %d: %w", i+1, err)
		}
		worst := max(gap, pingGap)
		gaps = append(gaps, float64(worst.Milliseconds()))
		lost += r.SentBytes - min(r.SentBytes, r.Bytes)
		fmt.Printf("run %d: moved a to %s (%s): iperf3 gap %d ms, ping gap %d ms, %d bytes sent, %d received\n",
			i+1, to.Name(), a.UnderlayIP(), gap.Milliseconds(), pingGap.Milliseconds(), r.SentBytes, r.Bytes)
	}
	slices.Sort(gaps)
	fmt.Printf("migration: gap_ms=%.0f lost_bytes=%d\n", median(gaps), lost)
	return nil
}

var icmpSeq = regexp.MustCompile(`icmp_seq=(\d+)`)

// longestPingGap reads ping's output for count pings sent every interval
// and returns the longest run of unanswered ones, as time.
func longestPingGap(out string, count int, interval time.Duration) time.Duration {
	answered := make([]bool, count+1)
	for _, m := range icmpSeq.FindAllStringSubmatch(out, -1) {
		if n, err := strconv.Atoi(m[1]); err == nil && n >= 1 && n <= count {
			answered[n] = true
		}
	}
	longest, run := 0, 0
	for seq := 1; seq <= count; seq++ {
		if answered[seq] {
			run = 0
			continue
		}
		run++
		longest = max(longest, run)
	}
	return time.Duration(longest) * interval
}
