package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/ringnet/ringnet/bench/testbed"
	"github.com/ringnet/ringnet/node"
)

// Addresses of the pair's wireguard-go interfaces, beside the overlay's
// 10.128.0.0/16.
const (
	wgA = "10.129.0.1"
	wgB = "10.129.0.2"
)

// The loss runs drop lossShare of the underlay packets, and fail unless the
// bed's counters saw a share within [lossMin, lossMax] dropped.
const (
	lossShare = 0.01
	lossMin   = 0.008
	lossMax   = 0.012
)

// path is one way from VM a to VM b.
type path struct{ name, addr string }

// peers compares ringnet with wireguard-go on the same pair of VMs: single-
// stream TCP (median of runs iperf3 runs) and ping RTT through each tunnel
// and on the raw underlay, then TCP through each tunnel again with 1% of the
// underlay packets dropped. Paths alternate within each round so that all
// see the same machine; the tunnels run side by side but are measured one
// at a time.
//
// The loss sits on VM a's uplink alone, in both directions, so every
// underlay packet between the VMs crosses exactly one lossy hook: 1% loss on
// the path. VM b's uplink gets a rule that drops nothing, so that both
// uplinks have their segmentation offloads off alike.
func peers(ctx context.Context, opts testbed.Options, base node.Config, wireguardGo string, runs, seconds, pings int) error {
	wgPath, err := exec.LookPath(wireguardGo)
	if err == nil {
		wgPath, err = filepath.Abs(wgPath)
	}
	if err != nil {
		return fmt.Errorf("wireguard-go: %w (scripts/bench installs it; or pass -wireguard-go)", err)
	}
	version, err := exec.CommandContext(ctx, wgPath, "--version").Output()
	if err != nil {
		return fmt.Errorf("%s --version: %w", wgPath, err)
	}
	bed, a, b, err := newPair(ctx, opts, base)
	if err != nil {
		return err
	}
	defer bed.Close()
	wgs, err := testbed.StartWireGuard(ctx, wgPath, []*testbed.VM{a, b}, []string{wgA + "/24", wgB + "/24"})
	if err != nil {
		return err
	}
	fmt.Printf("%s: interfaces %s (vm a) and %s (vm b), MTU %d\n",
		firstLine(string(version)), wgs[0].Name(), wgs[1].Name(), testbed.WireGuardMTU)
	for _, w := range wgs {
		f, err := w.Offloads(ctx)
		if err != nil {
			return err
		}
		fmt.Printf("%s offloads: tcp-segmentation-offload=%s generic-receive-offload=%s tx-udp-segmentation=%s\n",
			w.Name(), onOff(f["tcp-segmentation-offload"]), onOff(f["generic-receive-offload"]), onOff(f["tx-udp-segmentation"]))
	}
	if _, err := b.StartIperf3Server(false); err != nil {
		return err
	}
	iperf := func(label string, p path) (gbps float64, retransmits int, err error) {
		r, err := a.Iperf3(ctx, p.addr, "-t", strconv.Itoa(seconds))
		if err != nil {
			return 0, 0, fmt.Errorf("%s %s: %w", label, p.name, err)
		}
		return r.BitsPerSecond / 1e9, r.Retransmits, nil
	}

	ringnet := path{"ringnet", vipB}
	wireguard := path{"wireguard", wgB}
	raw := path{"raw", b.UnderlayIP().String()}
	gbps := map[string][]float64{}
	for i := range runs {
		for _, p := range []path{ringnet, wireguard, raw} {
			g, retrans, err := iperf(fmt.Sprintf("run %d", i+1), p)
			if err != nil {
				return err
			}
			gbps[p.name] = append(gbps[p.name], g)
			fmt.Printf("run %d %-9s tcp %6.2f Gbit/s  (%d retransmits)\n", i+1, p.name, g, retrans)
		}
	}
	rtt, err := pingPaths(ctx, a, []path{raw, ringnet, wireguard}, pings, 9)
	if err != nil {
		return err
	}

	if err := bed.SetLoss(ctx, b, 0); err != nil {
		return err
	}
	fmt.Printf("loss1: %.0f%% of packets dropped on vm a's uplink, both directions, offloads off on both uplinks; counted per run\n", 100*lossShare)
	lossGbps := map[string][]float64{}
	for i := range runs {
		for _, p := range []path{ringnet, wireguard} {
			label := fmt.Sprintf("loss1 run %d", i+1)
			// SetLoss starts the counters from zero: the share below is
			// this run's alone.
			if err := bed.SetLoss(ctx, a, lossShare); err != nil {
				return err
			}
			g, retrans, err := iperf(label, p)
			if err != nil {
				return err
			}
			dropped, total, share, err := bed.MeasuredLoss(ctx, a)
			if err != nil {
				return err
			}
			fmt.Printf("%s %-9s tcp %6.2f Gbit/s  (%d retransmits; %d of %d underlay packets dropped, %.2f%%)\n",
				label, p.name, g, retrans, dropped, total, 100*share)
			if share < lossMin || share > lossMax {
				return fmt.Errorf("%s %s: the bed dropped %.2f%% of underlay packets (%d of %d) on vm a's uplink, want %.1f%% to %.1f%%: the loss figures would mean nothing",
					label, p.name, 100*share, dropped, total, 100*lossMin, 100*lossMax)
			}
			lossGbps[p.name] = append(lossGbps[p.name], g)
		}
	}
	for _, w := range wgs {
		log, err := os.ReadFile(w.LogPath())
		if err != nil {
			return err
		}
		for line := range strings.Lines(string(log)) {
			if strings.Contains(line, "disabled UDP GSO") {
				fmt.Printf("note: wireguard-go on %s: %s", w.Name(), line)
				break
			}
		}
	}

	rn, wg := median(gbps["ringnet"]), median(gbps["wireguard"])
	if wg == 0 {
		return fmt.Errorf("wireguard measured 0 Gbit/s")
	}
	fmt.Printf("peers: ringnet_gbps=%.2f wireguard_gbps=%.2f ratio=%.3f raw_rtt_ms=%.3f ringnet_rtt_ms=%.3f wireguard_rtt_ms=%.3f loss1_ringnet_gbps=%.2f loss1_wireguard_gbps=%.2f\n",
		rn, wg, rn/wg, rtt["raw"], rtt["ringnet"], rtt["wireguard"], median(lossGbps["ringnet"]), median(lossGbps["wireguard"]))
	return nil
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	return line
}

func onOff(on bool) string {
	if on {
		return "on"
	}
	return "off"
}
