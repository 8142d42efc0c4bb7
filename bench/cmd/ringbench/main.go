// Command ringbench runs ringnet's benchmarks in a test bed of network
// namespaces (bench/testbed). It needs root. scripts/bench builds ringnet
// and runs it:
//
//	./scripts/bench throughput
//	./scripts/bench peers
//	./scripts/bench ring
//
// Benchmarks:
//
//	throughput  single-stream TCP and ping RTT between two VMs at two public
//	            sites, through the overlay and on the raw underlay path
//	peers       the same pair through ringnet and through wireguard-go, and
//	            the raw underlay; then both tunnels with 1% underlay loss
//	migration   the stall of a TCP stream whose VM moves, live, between
//	            two NATed sites (median of 5 moves)
//	join        how soon a node joining a running 24-node ring answers a
//	            random member's ping (median of 10 joins)
//	shortcut    time from a flow's first packet to a punched shortcut between
//	            two VMs behind NATs (median of 10 flows), and TCP on that
//	            shortcut, on a ring path and relayed by the ring, against
//	            the raw underlay
//	churn       pings between random live nodes of a 32-node ring while
//	            nodes are killed and restarted, for 10 minutes
//	idle        memory, CPU and uplink traffic of an idle node in a
//	            32-node ring
//	ring        the ring's routing code over 100 to 100,000 simulated nodes
//	            (bench/sim): hops, links per node, messages per join, rounds
//	            to heal after 10% of the nodes fail; no test bed needed
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/ringnet/ringnet/bench/testbed"
	"github.com/ringnet/ringnet/node"
)

func main() {
	ringnet := flag.String("ringnet", "ringnet", "path of the ringnet binary")
	runs := flag.Int("runs", 3, "iperf3 runs per path; the median is reported")
	seconds := flag.Int("seconds", 10, "length of each iperf3 run")
	pings := flag.Int("pings", 200, "pings per path for the RTT")
	wireguardGo := flag.String("wireguard-go", "wireguard-go", "path of the wireguard-go binary (peers)")
	seed := flag.Uint64("seed", 1, "random seed of the simulated ring (ring)")
	churnFor := flag.Duration("churn-for", 10*time.Minute, "how long nodes are killed and restarted (churn)")
	idleSettle := flag.Duration("idle-settle", 4*time.Minute, "how long the ring settles before the idle window (idle): long enough for the DHT to converge after the boot")
	image := flag.String("image", "", "directory of the appliance image (condor): built there unless a finished build is there; empty builds one in a temporary directory")
	mirror := flag.String("mirror", "http://deb.debian.org/debian", "Debian mirror the appliance image is built from (condor)")
	hold := flag.Duration("hold", 0, "keep the pools up this long after the measurements (condor)")
	workDir := flag.String("workdir", "", "keep the nodes' configs, state and logs in this directory (default: a temporary one, removed afterwards)")
	offloads := flag.Bool("offloads", true, "open the nodes' TAP devices with offloads (tap.offloads)")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: ringbench [flags] BENCHMARK\n\nBenchmarks: throughput, peers, ring, migration, join, shortcut, idle, churn, contact, dhcp, condor\n\nFlags:\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	opts := testbed.Options{
		RingnetPath: *ringnet,
		WorkDir:     *workDir,
		Logf:        func(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) },
	}
	base := node.Config{TAP: node.TAPConfig{Offloads: offloads}}
	var err error
	switch name := flag.Arg(0); name {
	case "throughput":
		err = throughput(ctx, opts, base, *runs, *seconds, *pings)
	case "migration":
		err = migration(ctx, opts, base, 5)
	case "peers":
		err = peers(ctx, opts, base, *wireguardGo, *runs, *seconds, *pings)
	case "ring":
		err = ring(ctx, os.Stdout, *seed)
	case "join":
		err = join(ctx, opts, base, 24, 10)
	case "shortcut":
		err = shortcutBench(ctx, opts, base, 10, *runs, *seconds)
	case "idle":
		err = idle(ctx, opts, base, 32, *idleSettle, 60*time.Second)
	case "churn":
		err = churn(ctx, opts, base, 32, *churnFor)
	case "contact":
		err = contact(ctx, opts, base, 32, 15)
	case "dhcp":
		err = dhcpBench(ctx, opts, base, 20, 32)
	case "condor":
		err = condorBench(ctx, opts, *image, *mirror, *hold)
	default:
		fmt.Fprintf(os.Stderr, "ringbench: no benchmark %q\n", name)
		flag.Usage()
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "ringbench: %v\n", err)
		stop()
		os.Exit(1)
	}
}

// newPair builds a bed with two VMs at two public sites whose nodes are
// static peers of each other, with base as the start of their config, and
// waits until the overlay carries a ping. The caller closes the bed.
func newPair(ctx context.Context, opts testbed.Options, base node.Config) (bed *testbed.Bed, a, b *testbed.VM, err error) {
	made, err := testbed.New(ctx, opts)
	if err != nil {
		return nil, nil, nil, err
	}
	// made, not bed: a failing return sets bed to nil before this runs.
	defer func() {
		if err != nil {
			made.DumpLogs(30)
			made.Close()
		}
	}()
	bed = made
	var vms [2]*testbed.VM
	for i, name := range []string{"a", "b"} {
		site, err := bed.AddSite(ctx, "site"+name, testbed.NATNone)
		if err != nil {
			return nil, nil, nil, err
		}
		if vms[i], err = bed.AddVM(ctx, site, "vm"+name); err != nil {
			return nil, nil, nil, err
		}
	}
	if err := testbed.StartMesh(ctx, base, vms[:], []string{vipA + "/16", vipB + "/16"}); err != nil {
		return nil, nil, nil, err
	}
	return bed, vms[0], vms[1], nil
}
